"""(a) A no-op `invoke build` against Docker's own cached rebuild of the same build contexts.

The test matrix is built once (reused when its images are there). Then, alternating, each side runs
RUNS times on the same engine:

- ours: `invoke build` with nothing changed, as a whole process, inside `unshare --net` (a network
  namespace with no interface up), so it provably asks no index, registry or wheel server for
  anything: it decides from the locks and the engine's labels alone;
- Docker's: a build of each image's context (the Dockerfile and the lock) through the engine API, every
  step a cache hit; the wheels images the builds name (one per venv group) are sent beforehand, untimed.

Prints each side's median and the ratio. Run as root after `invoke testenv`:
    .venv/bin/python benchmarks/noop_build.py
"""

from __future__ import annotations

import io
import os
import re
import statistics
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchimages.engine import EngineError  # noqa: E402
from torchimages.lock import read_lock  # noqa: E402
from torchimages.matrix import load_matrix  # noqa: E402
from torchimages.model import ImageSpec  # noqa: E402
from torchimages.pipeline import BuildOptions, build_images, venv_groups, venv_id  # noqa: E402
from torchimages.render import context_files, context_stream, context_tar, render_dockerfile  # noqa: E402
from torchimages.testing import testenv  # noqa: E402
from torchimages.testing.containers import dangling_images  # noqa: E402
from torchimages.wheels import WheelSet  # noqa: E402

RUNS = 3
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"
OUT = ROOT / "build" / "bench" / "noop"
WHEELHOUSE = ROOT / "build" / "wheelhouse"


def main() -> int:
    matrix = load_matrix(FIXTURE)
    engine = testenv.setup(list(matrix.images), say=print)
    first = build_images(matrix, list(matrix.images), BuildOptions(out_dir=OUT, shared_wheelhouse=WHEELHOUSE, jobs=2), engine=engine)
    if not all(r.verified for r in first):
        print("the test matrix did not build; see build/bench/noop/logs")
        return 1
    wheel_sets = {r.spec.name: _wheel_set(r.spec) for r in first}

    def ours() -> float:
        command = ["unshare", "--net", sys.executable, "-m", "invoke", "build", "--config", str(FIXTURE)]
        started = time.monotonic()
        done = subprocess.run([*command, "--out-dir", str(OUT), "--wheelhouse", str(WHEELHOUSE)], cwd=ROOT, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        if done.returncode != 0 or done.stdout.count("unchanged") < len(first):
            raise SystemExit(f"the no-op build did not find every image unchanged:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return elapsed

    # The Dockerfiles our build renders, each with its venv stage's id.
    stages = {spec.name: venv_id(key) for key, group in venv_groups(list(matrix.images), dict(wheel_sets)).items() for spec in group}

    def dockers(*, cached: bool = True) -> float:
        started = time.monotonic()
        for spec in matrix.images:
            wheel_set = wheel_sets[spec.name]
            dockerfile = render_dockerfile(spec, venv_id=stages[spec.name])
            files = context_files(spec, dockerfile=dockerfile, requirements=wheel_set.lock, installer=wheel_set.installer)
            log = io.StringIO()
            engine.build(context_tar(files), log=log, drop_cache=False, buildargs={"WHEELS": wheels_images[stages[spec.name]]})
            if cached and (ran := _ran(log.getvalue())):
                raise SystemExit(f"{spec.name}: steps ran ({', '.join(ran)}), so this is not a cached rebuild:\n{log.getvalue()[-2000:]}")
        return time.monotonic() - started

    # Our builds leave nothing in the engine's build cache, so Docker's first build of the same contexts makes every
    # step again: that build fills the cache and is not timed. It keeps its cache (Docker's default) until the end.
    before, untagged = engine.build_cache_ids(), dangling_images()
    wheels_images: dict[str, str] = {}
    times: dict[str, list[float]] = {"ours": [], "docker": []}
    try:
        for spec in matrix.images:
            if (stage := stages[spec.name]) not in wheels_images:
                wheels_images[stage] = f"torch-images-wheels:{stage}-noop-benchmark"
                wheels = {name: WHEELHOUSE / name for name in wheel_sets[spec.name].files}
                engine.import_image(context_stream({}, wheels=wheels), wheels_images[stage])
        dockers(cached=False)
        os.sync()  # the wheels images' gigabytes reach the disk before anything is timed, not during the first run
        for _ in range(RUNS):
            times["ours"].append(ours())
            times["docker"].append(dockers())
    finally:
        with suppress(EngineError):  # what Docker's builds kept in the engine's build cache, and images no tag names
            engine.drop_build_cache(before)
            for ref in wheels_images.values():
                engine.remove_image(ref, force=True)
            for image in dangling_images() - untagged:
                engine.remove_image(image)
    a, b = statistics.median(times["ours"]), statistics.median(times["docker"])
    print(f"images: {len(first)}, runs per side: {RUNS}")
    print(f"no-op invoke build (no network):            median {a:7.2f} s   {_runs(times['ours'])}")
    print(f"docker's cached rebuild of the same contexts: median {b:7.2f} s   {_runs(times['docker'])}")
    print(f"ratio ours / docker = {a / b:.3f}")
    return 0


def _ran(log: str) -> list[str]:
    """The Dockerfile steps a build log (`--progress=plain`) shows running rather than CACHED. A FROM step does no
    work (it names its image, DONE 0.0s): BuildKit shows it CACHED or not depending on what else the build mounts."""
    steps = dict(re.findall(r"^#(\d+) (\[[^\]]*\d+/\d+\] .*)$", log, re.MULTILINE))
    cached = set(re.findall(r"^#(\d+) CACHED$", log, re.MULTILINE))
    return [step[:60] for number, step in steps.items() if number not in cached and " FROM " not in step[:40]]


def _wheel_set(spec: ImageSpec) -> WheelSet:
    """The lock the first build wrote, as the build's wheel set."""
    lock = read_lock(OUT / "locks", spec)
    if lock is None:
        raise SystemExit(f"{spec.name}: no lock under {OUT / 'locks'}")
    return WheelSet(lock=lock.requirements, files=tuple(f.filename for f in lock.files), installer=lock.installer)


def _runs(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"


if __name__ == "__main__":
    raise SystemExit(main())
