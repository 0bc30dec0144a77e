"""The next image of a venv group starts its build as soon as the previous image's build reports the venv stage's
install step done; it takes the step from the engine's cache, also when the previous build then fails.

Why not sooner: two builds in flight share such a step (BuildKit merges steps with the same cache key, "Merging
edges" in moby/buildkit's docs/dev/solver.md), and dockerd 20.10's BuildKit then kills the step for both builds
when the build that runs it fails in a step of its own (the second test shows it, so that an engine that stops
doing so is noticed). Done and cached, the step is safe.
"""

from __future__ import annotations

import io
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from torchimages.engine import BuildError, Engine
from torchimages.model import BuildResult
from torchimages.render import context_stream

pytestmark = pytest.mark.integration


def _context(base: str, stage: str, flavour: str, *, own_step: str = "", beside: str = "", seconds: int = 3) -> bytes:
    """Two stages, as the images have: a first one that mounts the context's wheels folder and, after `seconds`,
    writes a random stamp (two runs of the step would write two stamps), and the image, which differs per flavour,
    runs `beside` (a step that need not wait for the first stage), copies the stamp, then runs own_step."""
    dockerfile = (
        f"FROM {base} AS venv\n"
        f"RUN --mount=type=bind,source=wheels,target=/tmp/wheels set -eu; : {stage}; sleep {seconds}; "
        "od -An -N8 -tx1 /dev/urandom > /stamp; cat /tmp/wheels/w >> /stamp\n"
        f"FROM {base}\n"
        "COPY flavour /flavour\n"
        f"{beside}"
        "COPY --from=venv /stamp /stamp\n"
        f"{own_step}"
    )
    return b"".join(context_stream({"Dockerfile": dockerfile.encode(), "flavour": flavour.encode(), "wheels/w": b"same\n"}))


@dataclass
class Shared:
    base: str
    stage: str  # new in every run: no earlier run's cache can answer
    images: dict[str, str] = field(default_factory=dict)


@pytest.fixture()
def shared(engine: Engine, built: list[BuildResult]) -> Iterator[Shared]:
    """A stage mark of the test's own; afterwards its builds' cache records and images are gone."""
    before = engine.build_cache_ids()
    base = next(r.spec for r in built if r.spec.cuda is None).venv_base_image
    case = Shared(base=base, stage=f"venv-stage shared-{uuid.uuid4().hex[:12]}")
    yield case
    engine.prune_build_cache(f"{case.stage};")
    engine.drop_build_cache(before, settle=3)
    for image in case.images.values():
        engine.remove_image(image, force=True)


def _joined(*threads: threading.Thread) -> None:
    for thread in threads:
        if thread.ident is not None:
            thread.join()


def test_the_next_build_takes_the_stage_once_reported_done_even_when_the_first_build_then_fails(engine: Engine, shared: Shared) -> None:
    base, stage, images = shared.base, shared.stage, shared.images
    errors: dict[str, str] = {}
    events: list[str] = []
    logs = {"runtime": io.StringIO(), "devel": io.StringIO()}
    stage_done = threading.Event()

    def build(flavour: str, own_step: str = "") -> None:
        def done(name: str) -> None:
            if f"{stage};" in name and not stage_done.is_set():
                events.append(f"{flavour}: stage done")
                stage_done.set()

        events.append(f"{flavour}: build starts")
        try:
            context = _context(base, stage, flavour, own_step=own_step)
            images[flavour] = engine.build(context, log=logs[flavour], keep="venv-stage ", on_done=done)
        except BuildError as exc:
            errors[flavour] = str(exc)
        events.append(f"{flavour}: build ends")

    first = threading.Thread(target=build, args=("runtime", "RUN sleep 6; exit 3\n"))
    second = threading.Thread(target=build, args=("devel",))
    try:
        first.start()
        assert stage_done.wait(120), f"the stage was not reported done: {errors}"
        second.start()
        first.join()
        second.join()
        assert events.index("runtime: stage done") < events.index("devel: build starts") < events.index("runtime: build ends"), events
        assert "exited 3" in errors.get("runtime", ""), errors
        assert "devel" in images, f"the devel build failed with the runtime build: {errors}"
        assert engine.run(images["devel"], ["cat", "/stamp"]).output.endswith("same\n")
        step = re.search(r"^#(\d+) \[venv 2/2\] RUN", logs["devel"].getvalue(), re.M)
        assert step and f"#{step.group(1)} CACHED" in logs["devel"].getvalue(), logs["devel"].getvalue()
    finally:
        _joined(first, second)


def test_on_this_engine_a_step_two_builds_share_in_flight_fails_with_the_build_that_runs_it(engine: Engine, shared: Shared) -> None:
    """Why the next image does not start sooner: the second build, started while the first runs the stage's step,
    fails when the first fails in a step of its own, although nothing of its own failed."""
    base, stage, images = shared.base, shared.stage, shared.images
    errors: dict[str, str] = {}

    def build(flavour: str, beside: str) -> None:
        try:
            context = _context(base, stage, flavour, beside=beside, seconds=8)
            images[flavour] = engine.build(context, log=io.StringIO())
        except BuildError as exc:
            errors[flavour] = str(exc)

    first = threading.Thread(target=build, args=("runtime", "RUN sleep 4; exit 3\n"))
    second = threading.Thread(target=build, args=("devel", ""))
    try:
        first.start()
        time.sleep(2)  # the second starts while the first runs the stage's 8 s step, and its own fails at 4 s
        second.start()
        first.join()
        second.join()
        assert "exited 3" in errors.get("runtime", ""), errors
        assert "devel" in errors, "the devel build survived: this engine no longer kills a shared step with its build"
    finally:
        _joined(first, second)
