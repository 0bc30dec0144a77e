"""(b) A fresh engine with a populated registry, against a full build on a fresh engine.

The test matrix is built and pushed once from the session engine to a repository of this script's own on
the loopback registry. Then, each on a new, empty dockerd in a network namespace of its own (a fresh CI
runner: nothing in its engine, nothing in its layer cache):

- ours (RUNS times): `invoke build --push`: every image is found in the registry by its build hash,
  nothing is pulled, built or pushed;
- the baseline (once): `invoke build --rebuild` of the same matrix, from bases copied in beforehand.
  It cannot push (the engine cannot reach this machine's loopback), and copying the bases is not
  timed, so the baseline leaves out the base pull and the push a real runner pays: the ratio is
  the baseline's best case.

Prints both times and the ratio. Run as root after `invoke testenv`:
    .venv/bin/python benchmarks/registry_reuse.py
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchimages.matrix import load_matrix  # noqa: E402
from torchimages.pipeline import BuildOptions, build_images  # noqa: E402
from torchimages.testing import testenv  # noqa: E402
from torchimages.testing.engines import ScratchEngine, copy_image, scratch_engine  # noqa: E402

RUNS = 3
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"
OUT = ROOT / "build" / "bench" / "registry"
WHEELHOUSE = ROOT / "build" / "wheelhouse"
REPOSITORY = "torch-images-test/bench-registry"  # under torch-images-test/: `invoke testenv` sweeps it if this run is killed


def _invoke(engine: ScratchEngine, config: Path, out: Path, *flags: str) -> tuple[float, list[dict[str, object]], str]:
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(OUT / "first" / "locks", out / "locks")  # the locks the first build wrote: no index is asked
    command = [sys.executable, "-m", "invoke", "build", *flags, "--config", str(config), "--out-dir", str(out)]
    command += ["--wheelhouse", str(WHEELHOUSE)]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=engine.environment(), capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(flags)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return elapsed, json.loads((out / "report.json").read_text())["images"], done.stdout


def main() -> int:
    data = yaml.safe_load(FIXTURE.read_text())
    data["target"]["repository"] = REPOSITORY
    with tempfile.TemporaryDirectory(prefix="ti-bench-") as folder:
        config = Path(folder) / "images.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        matrix = load_matrix(config)
        engine = testenv.setup(list(matrix.images), say=print)
        options = BuildOptions(out_dir=OUT / "first", shared_wheelhouse=WHEELHOUSE, jobs=2, push=True)
        first = build_images(matrix, list(matrix.images), options, engine=engine)
        refs = [ref for spec in matrix.images for ref in spec.refs]
        try:
            if not all(r.verified and (r.pushed or r.registry_digest) for r in first):
                print(f"the test matrix did not build and push; see {OUT / 'first' / 'logs'}")
                return 1
            ours: list[float] = []
            for run in range(RUNS):
                with scratch_engine() as fresh:
                    elapsed, records, stdout = _invoke(fresh, config, OUT / f"ours{run}", "--push")
                    statuses = {r["status"] for r in records}
                    if statuses != {"unchanged (registry)"} or fresh.client().images.list(all=True):
                        raise SystemExit(f"not every image was taken from the registry ({statuses}):\n{stdout[-3000:]}")
                ours.append(elapsed)
                print(f"fresh engine, populated registry, run {run + 1}: {elapsed:.2f} s", flush=True)
            with scratch_engine() as fresh:
                for ref in dict.fromkeys(ref for spec in matrix.images for ref in (spec.base_image, spec.venv_base_image)):
                    copy_image(engine, fresh, ref)
                baseline, records, stdout = _invoke(fresh, config, OUT / "baseline", "--rebuild")
                if {r["status"] for r in records} != {"built"}:
                    raise SystemExit(f"the baseline did not build every image:\n{stdout[-3000:]}")
        finally:
            for ref in refs:
                testenv.delete_from_registry(ref)
                engine.remove_image(ref)  # the tag only: the images are the session's
    mine = statistics.median(ours)
    print(f"images: {len(first)}")
    print(f"fresh engine, populated registry (invoke build --push): median {mine:7.2f} s   ({', '.join(f'{t:.2f}' for t in ours)})")
    print(f"fresh engine, full build (invoke build --rebuild, no push): {baseline:7.2f} s   (1 run)")
    print(f"ratio ours / full build = {mine / baseline:.4f}   (target: ours <= 15 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
