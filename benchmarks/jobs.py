"""(e) `invoke build --jobs 2` against `--jobs 1`, each a full build of the test matrix on a new, empty engine.

Each side gets a new dockerd in a network namespace of its own (no layer cache), its bases copied in
beforehand (not timed), the session's locks and wheelhouse (no index is asked), and builds and verifies
the three images with `--rebuild`, without pushing. The test matrix has two venv groups (the CPU image;
the CUDA runtime and devel images, which share one venv stage): two jobs overlap the CPU group with the
CUDA group, and the devel image's build with the runtime image's verification and seal (it waits for the
runtime image's build, which leaves the venv stage in the cache). The sides alternate, RUNS times each.

Prints each side's median, the ratio, how much the machine's disks were written per second (a build that
writes as fast as the disk allows is disk-bound) and how busy its cores were (a build that keeps every core
busy with one job is CPU-bound): where either holds, more jobs cannot help.
Run as root after `invoke testenv`:  .venv/bin/python benchmarks/jobs.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchimages.matrix import load_matrix  # noqa: E402
from torchimages.pipeline import BuildOptions, build_images  # noqa: E402
from torchimages.testing import testenv  # noqa: E402
from torchimages.testing.engines import copy_image, scratch_engine  # noqa: E402

RUNS = int(os.environ.get("RUNS", "2"))  # runs per side; RUNS=1 for a first reading
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"
OUT = ROOT / "build" / "bench" / "jobs"
WHEELHOUSE = ROOT / "build" / "wheelhouse"


def _written(device_stats: Path) -> int:
    """Bytes written to the machine's disks so far (/proc/diskstats: sectors written, 512 bytes each)."""
    total = 0
    for line in device_stats.read_text().splitlines():
        fields = line.split()
        if len(fields) > 9 and not fields[2].startswith(("loop", "ram")) and not fields[2][-1].isdigit():
            total += int(fields[9]) * 512
    return total


def _cpu() -> tuple[int, int]:
    """(busy, all) CPU time of the whole machine so far (/proc/stat's first line; idle and iowait are not busy)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def main() -> int:
    matrix = load_matrix(FIXTURE)
    engine = testenv.setup(list(matrix.images), say=print)
    first = build_images(
        matrix, list(matrix.images), BuildOptions(out_dir=OUT / "first", shared_wheelhouse=WHEELHOUSE, jobs=2), engine=engine
    )
    if not all(r.verified for r in first):
        print(f"the test matrix did not build; see {OUT / 'first' / 'logs'}")
        return 1
    bases = dict.fromkeys(ref for spec in matrix.images for ref in (spec.base_image, spec.venv_base_image))
    times: dict[int, list[float]] = {1: [], 2: []}
    rates: dict[int, list[float]] = {1: [], 2: []}
    busy: dict[int, list[float]] = {1: [], 2: []}  # the share of all cores' time spent working
    for _ in range(RUNS):
        for jobs in (1, 2):
            with scratch_engine() as fresh:
                for ref in bases:
                    copy_image(engine, fresh, ref)
                out = OUT / f"jobs{jobs}"
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(OUT / "first" / "locks", out / "locks")
                command = [sys.executable, "-m", "invoke", "build", "--rebuild", "--jobs", str(jobs), "--config", str(FIXTURE)]
                command += ["--out-dir", str(out), "--wheelhouse", str(WHEELHOUSE)]
                written, cpu, started = _written(Path("/proc/diskstats")), _cpu(), time.monotonic()
                done = subprocess.run(command, cwd=ROOT, env=fresh.environment(), capture_output=True, text=True, check=False)
                elapsed = time.monotonic() - started
                if done.returncode != 0:
                    raise SystemExit(f"--jobs {jobs} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
                times[jobs].append(elapsed)
                rates[jobs].append((_written(Path("/proc/diskstats")) - written) / elapsed)
                now = _cpu()
                busy[jobs].append((now[0] - cpu[0]) / max(1, now[1] - cpu[1]))
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"images: {len(first)}, runs per side: {RUNS}")
    for jobs in (1, 2):
        runs = ", ".join(f"{t:.1f}" for t in times[jobs])
        median, rate = statistics.median(times[jobs]), statistics.median(rates[jobs]) / 1e6
        cores = statistics.median(busy[jobs])
        usage = f"disk writes {rate:.0f} MB/s, {cores:.0%} of {os.cpu_count()} cores busy"
        print(f"--jobs {jobs}: median {median:7.1f} s   ({runs})   {usage}")
    print(f"speed-up --jobs 2 over --jobs 1 = {one / two:.2f}   (target >= 1.6 where the work is not disk-bound)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
