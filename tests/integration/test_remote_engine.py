"""Builds run on any engine: one in a network namespace of its own cannot reach this machine's loopback, and
still builds and verifies an image of the test matrix, its wheels arriving in the build context."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from torchimages.engine import Engine
from torchimages.matrix import load_matrix
from torchimages.model import BuildResult
from torchimages.registry import RegistryClient
from torchimages.testing.engines import ScratchEngine, copy_image, scratch_engine

ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"
WHEELHOUSE = ROOT / "build" / "wheelhouse"


@pytest.fixture()
def remote() -> Iterator[ScratchEngine]:
    if os.geteuid() != 0:
        pytest.skip("a second dockerd in a network namespace needs root")
    with scratch_engine() as engine:
        yield engine


def test_an_engine_in_its_own_network_namespace_builds_and_verifies_an_image(
    engine: Engine, built: list[BuildResult], remote: ScratchEngine, tmp_path: Path
) -> None:
    bridge = Path("/sys/class/net/docker0")
    assert bridge.exists(), "the session engine's bridge is missing before the test"
    data = yaml.safe_load(FIXTURE.read_text())
    data["images"] = data["images"][:1]  # the CPU image
    config = tmp_path / "images.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    (spec,) = load_matrix(config).images
    for ref in dict.fromkeys((spec.base_image, spec.venv_base_image)):
        copy_image(engine, remote, ref)

    # The engine really is elsewhere: from its network, this machine's registry on 127.0.0.1:5000 does not answer.
    probe = (
        "import socket\n"
        "try:\n    socket.create_connection(('127.0.0.1', 5000), 3)\n    print('reached')\n"
        "except OSError as e:\n    print('unreachable', e)"
    )
    seen = remote.client().containers.run(spec.base_image, ["python3", "-c", probe], network_mode="host", remove=True)
    assert seen.decode().startswith("unreachable"), seen

    out = tmp_path / "out"
    command = [sys.executable, "-m", "invoke", "build", "--config", str(config), "--out-dir", str(out), "--wheelhouse", str(WHEELHOUSE)]
    done = subprocess.run(command, cwd=ROOT, env=remote.environment(), capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "report.json").read_text())["images"][0]
    assert (record["status"], record["verified"]) == ("built", True), record
    tagged = {tag for image in remote.client().images.list() for tag in image.tags}
    assert set(spec.refs) <= tagged
    assert engine.image(record["image_id"]) is None  # built there, not here
    # The venv stage (the wheels, and the venv before it was copied) is removed after the build: the engine holds
    # the image's layers (its base among them) and nothing else of size.
    image = remote.client().images.get(spec.refs[0])
    usage = remote.client().df()
    assert usage["LayersSize"] < image.attrs["Size"] + 50_000_000, (usage["LayersSize"], image.attrs["Size"])
    # BuildKit keeps every step's result (the context twice over) unless told otherwise: the build left no record.
    assert [record["Description"] for record in usage.get("BuildCache") or []] == [], usage["BuilderSize"]
    assert bridge.exists(), "the second engine took the session engine's bridge"
    # Built apart (another engine, no cache, another time), the venv layer is the same bytes as the session's: the
    # largest layer of the session's CPU image that its base lacks is in this image too, by diff ID.
    session = next(result for result in built if result.spec.name == spec.name)
    assert session.pushed, session.error
    pushed = RegistryClient().image(session.pushed[0].ref)
    assert pushed is not None
    sizes = {diff_id: size for diff_id, (_, size) in pushed.layers.items()}
    base_layers = set(remote.client().api.inspect_image(spec.base_image)["RootFS"]["Layers"])
    venv = max(set(sizes) - base_layers, key=sizes.__getitem__)
    assert sizes[venv] > 300_000_000, sizes
    assert venv in image.attrs["RootFS"]["Layers"], (venv, image.attrs["RootFS"]["Layers"])


def test_a_fresh_engine_takes_what_the_registry_already_serves(
    built: list[BuildResult], build_dir: Path, remote: ScratchEngine, tmp_path: Path
) -> None:
    """A new CI runner: its engine holds nothing, the registry holds the session's pushes. Every image is found there
    by its build hash: nothing is pulled, built or pushed, and an alias that pointed elsewhere is moved back."""
    assert all(result.pushed for result in built), [result.error for result in built]
    cpu, cuda = next(r for r in built if r.spec.cuda is None), next(r for r in built if r.spec.cuda)
    alias = cpu.spec.refs[-1]
    registry = RegistryClient()
    moved_away = registry.manifest(cuda.pushed[0].ref)
    cpu_manifest = registry.manifest(cpu.pushed[0].ref)
    assert moved_away is not None and cpu_manifest is not None
    registry.put_manifest(alias, moved_away)  # someone re-pointed the alias
    try:
        out = tmp_path / "out"
        shutil.copytree(build_dir / "locks", out / "locks")
        command = [sys.executable, "-m", "invoke", "build", "--push", "--config", str(FIXTURE), "--out-dir", str(out)]
        done = subprocess.run(
            [*command, "--wheelhouse", str(WHEELHOUSE)], cwd=ROOT, env=remote.environment(), capture_output=True, text=True,
            timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        records = {r["name"]: r for r in json.loads((out / "report.json").read_text())["images"]}
        for result in built:
            record = records[result.spec.name]
            assert (record["status"], record["verified"]) == ("unchanged (registry)", True), record
            assert record["registry_digest"] == result.pushed[0].digest
            expected = [{"ref": alias, "digest": cpu_manifest.digest}] if result is cpu else []
            assert record["pushed"] == expected, record
        assert registry.digest(alias) == cpu_manifest.digest
        assert "building" not in done.stdout and "pulling" not in done.stdout, done.stdout
        assert remote.client().images.list(all=True) == [], "the fresh engine pulled or built something"
    finally:
        registry.put_manifest(alias, cpu_manifest)
