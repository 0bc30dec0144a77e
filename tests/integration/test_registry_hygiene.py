"""What tests push to the loopback registry does not pile up: tests delete their tags, testenv sweeps the rest."""

from __future__ import annotations

import io
import json
import tarfile
import time
import urllib.request
import uuid
from pathlib import Path

from torchimages.engine import Engine
from torchimages.labels import BUILD_HASH
from torchimages.pipeline import WHEELS_REPOSITORY, remove_stale_wheels
from torchimages.render import context_stream
from torchimages.testing import services
from torchimages.testing.containers import prune_untagged_builds
from torchimages.testing.services import ScratchRegistry
from torchimages.testing.testenv import MIRROR


def _context(dockerfile: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _blob(registry: ScratchRegistry, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":")
    return registry.data / "docker" / "registry" / "v2" / "blobs" / algorithm / hexdigest[:2] / hexdigest / "data"


def _manifest(ref: str) -> dict:
    host, _, rest = ref.partition("/")
    name, tag = rest.rsplit(":", 1)
    request = urllib.request.Request(
        f"http://{host}/v2/{name}/manifests/{tag}", headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def test_deleting_a_tag_and_sweeping_leave_only_what_is_kept(engine: Engine, tmp_path: Path, scratch_registry: ScratchRegistry) -> None:
    registry = scratch_registry
    keep, stale, deleted = (f"{registry.address}/{services.TEST_NAMESPACE}/{name}:1" for name in ("keep", "stale", "deleted"))
    try:
        for ref in (keep, stale, deleted):  # three images, each with a layer of its own (random bytes)
            dockerfile = f"FROM {MIRROR}/library/debian:12\nRUN head -c 4000000 /dev/urandom > /{ref.split('/')[-1].split(':')[0]}\n"
            with open(tmp_path / "build.log", "a") as log:
                engine.tag(engine.build(_context(dockerfile), log=log), ref)
            engine.push(ref)
        own = {ref: _manifest(ref)["layers"][-1]["digest"] for ref in (keep, stale, deleted)}
        assert all(_blob(registry, digest).exists() for digest in own.values())

        assert services.delete_from_registry(deleted) is True
        assert registry.tags(f"{services.TEST_NAMESPACE}/deleted") == []
        assert services.delete_from_registry(deleted) is False  # nothing left to delete: no error either

        registry.kill()
        said: list[str] = []
        services.sweep_registry(registry.config, registry.data, {f"{services.TEST_NAMESPACE}/keep"}, said.append)
        registry.start()
        assert registry.tags(f"{services.TEST_NAMESPACE}/stale") == []
        assert registry.manifest_complete(f"{services.TEST_NAMESPACE}/keep", "1")
        assert _blob(registry, own[keep]).exists()
        assert not _blob(registry, own[stale]).exists() and not _blob(registry, own[deleted]).exists()
        assert any("dropped test repositories: deleted, stale;" in line for line in said), said
    finally:
        for ref in (keep, stale, deleted):
            engine.remove_image(ref)


def test_testenv_prunes_untagged_builds_of_ours_once_they_are_old_enough(engine: Engine) -> None:
    """What a changed build hash or a killed run leaves goes; a tagged image, or one made just now, stays."""
    build_hash = f"test-{uuid.uuid4().hex}"
    # Made as the seal makes an image of ours (a classic LABEL step, which records when it ran; BuildKit dates an
    # image with no layers at year 1, which no age filter keeps).
    dockerfiles = [f"FROM scratch\nLABEL {BUILD_HASH}={build_hash} n={n}\n" for n in (1, 2)]
    ids = [engine.build(_context(dockerfile), log=io.StringIO(), classic=True) for dockerfile in dockerfiles]
    tag = f"torch-images-test-prune:{build_hash}"
    engine.tag(ids[1], tag)
    try:
        prune_untagged_builds(build_hash=build_hash)  # two hours by default: both are younger
        assert engine.image(ids[0]) is not None
        time.sleep(2)  # the engine compares creation times in whole seconds
        prune_untagged_builds(build_hash=build_hash, older_than="1s")
        assert engine.image(ids[0]) is None and engine.image(tag) is not None
    finally:
        for ref in (tag, *ids):
            engine.remove_image(ref, force=True)


def test_a_wheels_image_a_killed_run_left_goes_once_it_is_old_enough(engine: Engine) -> None:
    """A run removes its wheels image when the group is done; one that a killed run left goes at a later run's start
    once it is old, and one made just now (another run's, in use) stays."""
    ref = f"{WHEELS_REPOSITORY}:test-{uuid.uuid4().hex[:12]}"
    engine.import_image(context_stream({}, wheels={}), ref)
    try:
        assert ref not in remove_stale_wheels(engine)  # six hours by default: this one is younger
        assert engine.image(ref) is not None
        time.sleep(2)  # the engine dates images in whole seconds
        assert ref in remove_stale_wheels(engine, older_than=1)
        assert engine.image(ref) is None
    finally:
        engine.remove_image(ref, force=True)
