"""Two builds in flight that share a stage run it once: the engine's BuildKit merges steps with the same cache key
("Merging edges" in moby/buildkit's docs/dev/solver.md: the same source files from different sources are its case).

With `--jobs 2` a venv group's images build side by side and neither waits for the other; what keeps the venv
install from running twice is this behaviour of the engine, so it is tested on the real one.
"""

from __future__ import annotations

import io
import threading
import time
import uuid

import pytest

from torchimages.engine import Engine
from torchimages.model import BuildResult
from torchimages.render import context_stream

pytestmark = pytest.mark.integration


def _context(base: str, stage: str, flavour: str) -> bytes:
    """Two stages, as the images have: a first one that mounts the context's wheels folder and writes a random stamp
    (two runs of the step would write two stamps), and the image, which differs per flavour and copies the stamp."""
    dockerfile = (
        f"FROM {base} AS venv\n"
        f"RUN --mount=type=bind,source=wheels,target=/tmp/wheels set -eu; : {stage}; sleep 8; "
        "od -An -N8 -tx1 /dev/urandom > /stamp; cat /tmp/wheels/w >> /stamp\n"
        f"FROM {base}\n"
        "COPY flavour /flavour\n"
        "COPY --from=venv /stamp /stamp\n"
    )
    return b"".join(context_stream({"Dockerfile": dockerfile.encode(), "flavour": flavour.encode(), "wheels/w": b"same\n"}))


def test_two_builds_in_flight_run_their_shared_stage_once(engine: Engine, built: list[BuildResult]) -> None:
    base = next(r.spec for r in built if r.spec.cuda is None).venv_base_image
    stage = f"venv-stage shared-{uuid.uuid4().hex[:12]}"  # new in every run: no earlier run's cache can answer
    before, images, spans = engine.build_cache_ids(), {}, {}

    def build(flavour: str) -> None:
        started = time.monotonic()
        images[flavour] = engine.build(_context(base, stage, flavour), log=io.StringIO(), keep="venv-stage ")
        spans[flavour] = (started, time.monotonic())

    threads = [threading.Thread(target=build, args=(flavour,)) for flavour in ("runtime", "devel")]
    try:
        for thread in threads:
            thread.start()
            time.sleep(2)  # the second starts while the first runs the stage's 8 s step
        for thread in threads:
            thread.join()
        assert set(images) == {"runtime", "devel"}, "a build failed (its exception is printed above)"
        assert spans["devel"][0] < spans["runtime"][1], "the builds were not in flight together"
        stamps = {flavour: engine.run(image, ["cat", "/stamp"]).output for flavour, image in images.items()}
        assert stamps["runtime"].endswith("same\n"), stamps
        assert stamps["runtime"] == stamps["devel"], f"the shared step ran twice: {stamps}"
    finally:
        for thread in threads:
            thread.join()
        engine.prune_build_cache(f"{stage};")
        engine.drop_build_cache(before, settle=3)
        for image in images.values():
            engine.remove_image(image, force=True)
