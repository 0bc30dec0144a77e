"""pip against uv for resolving (point 5's other half): the test matrix's CUDA runtime image, from index metadata.

Both sides resolve the image's requirements for its python and glibc (binary wheels only) against the PyPI replica
that `invoke testenv` starts on 127.0.0.1:5003, with no cache, RUNS times each, alternating:

- pip: what `invoke lock` runs (torchimages.lock): `pip install --dry-run --report --ignore-installed` with the
  image's target options (`--platform` for each manylinux tag its glibc runs, `--python-version`, `--only-binary`);
- uv: the lock's own uv, `uv pip compile` with `--python-version`, `--python-platform x86_64-manylinux_<glibc>`,
  `--only-binary :all:` and `--index-strategy unsafe-best-match` (pip's way with several indexes: every index's
  versions count, not only the first index that has the project).

Prints both medians, the ratio, and whether the two pinned the same set of (name, version): a faster resolver is of
use only if it picks what pip picks. Run after `invoke testenv`:
    .venv/bin/python benchmarks/resolver.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import uv_binary  # noqa: E402

from torchimages.lock import Indexes, index_args, target_args  # noqa: E402
from torchimages.matrix import load_matrix  # noqa: E402
from torchimages.model import UV, UV_VERSION  # noqa: E402
from torchimages.testing import services  # noqa: E402

RUNS = int(os.environ.get("RUNS", "3"))
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"
WHEELHOUSE = ROOT / "build" / "wheelhouse"


def main() -> int:
    if not services.replica_up():
        print(f"no index replica answers on {services.REPLICA}; run `invoke testenv` first")
        return 1
    spec = next(s for s in load_matrix(FIXTURE).images if s.flavour == "runtime")
    indexes = Indexes(index_url=f"{services.REPLICA}/pypi/simple", isolated=True)
    wheel = next(iter(sorted(WHEELHOUSE.glob(f"{UV}-{UV_VERSION}-*.whl"))), None)
    if wheel is None:
        print(f"uv {UV_VERSION}'s wheel is not in {WHEELHOUSE}; run `invoke test` (or a build of the test matrix) first")
        return 1
    requirements = [r for r in spec.requirements if not r.startswith(f"{UV}==")]
    glibc = spec.glibc.replace(".", "_")
    with tempfile.TemporaryDirectory(prefix="ti-bench-") as name:
        folder = Path(name)
        uv = uv_binary(wheel, folder)
        (folder / "requirements.in").write_text("\n".join(requirements) + "\n")
        report, pinned = folder / "report.json", folder / "pinned.txt"
        pip = [
            sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", *index_args(spec, indexes)[0], "--dry-run",
            "--ignore-installed", "--quiet", "--target", str(folder / "target"), "--report", str(report), *target_args(spec),
            *requirements,
        ]  # fmt: skip
        uv_command = [
            str(uv), "pip", "compile", "--quiet", "--no-config", "--no-cache", "--index-url", indexes.index_url or "",
            "--index-strategy", "unsafe-best-match", "--python-version", spec.python,
            "--python-platform", f"x86_64-manylinux_{glibc}", "--only-binary", ":all:", "--no-header", "--no-annotate",
            "-o", str(pinned), str(folder / "requirements.in"),
        ]  # fmt: skip
        times: dict[str, list[float]] = {"pip": [], "uv": []}
        for _ in range(RUNS):
            for side, command in (("pip", pip), ("uv", uv_command)):
                started = time.monotonic()
                done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "NO_COLOR": "1"})
                times[side].append(time.monotonic() - started)
                if done.returncode != 0:
                    raise SystemExit(f"{side} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        items = json.loads(report.read_text())["install"]
        by_pip = {(str(i["metadata"]["name"]).lower().replace("_", "-"), str(i["metadata"]["version"])) for i in items}
        by_uv = set()
        for line in pinned.read_text().splitlines():
            if "==" in line and not line.lstrip().startswith("#"):
                project, version = line.split(";")[0].strip().split("==")
                by_uv.add((project.lower().replace("_", "-"), version))
    a, b = statistics.median(times["pip"]), statistics.median(times["uv"])
    print(f"image: {spec.name}, {len(requirements)} requirements; runs per side: {RUNS}; no cache on either side")
    print(f"pip (what `invoke lock` runs): median {a:6.2f} s   ({', '.join(f'{t:.2f}' for t in times['pip'])})")
    print(f"uv {UV_VERSION} pip compile:       median {b:6.2f} s   ({', '.join(f'{t:.2f}' for t in times['uv'])})")
    print(f"ratio pip / uv = {a / b:.2f}")
    print(f"pinned: pip {len(by_pip)}, uv {len(by_uv)}, the same set: {by_pip == by_uv}")
    for project, version in sorted(by_pip ^ by_uv):
        print(f"  only {'pip' if (project, version) in by_pip else 'uv '}: {project}=={version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
