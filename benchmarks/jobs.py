"""(e) `invoke build --jobs 2` against `--jobs 1`, each a full build of the test matrix on a new, empty engine.

Each side gets a new dockerd in a network namespace of its own (no layer cache), its bases copied in
beforehand (not timed), the session's locks and wheelhouse (no index is asked), and builds and verifies
the three images with `--rebuild`, without pushing. The test matrix has two venv groups (the CPU image;
the CUDA runtime and devel images, which share one venv stage): with two jobs, the CPU image and the runtime
image start together, and the devel image once a worker is free and the runtime image's build has built the venv
stage (which it takes from the cache), beside the rest of that build. The sides alternate, RUNS times each.

Prints each side's median, the ratio, and what bounds it on this machine: how much the disks were written per
second and how much of the time the busiest one had I/O in flight (a build that keeps the disk busy all the time
is disk-bound), how busy the cores were, and the share idle waiting for I/O. CPU time is work a second job cannot
add cores for: `--jobs 2` cannot take less than the `--jobs 1` run's busy core-seconds spread over all cores,
which puts the best possible speed-up at 1 / (the `--jobs 1` run's busy share); printed as "ceiling". Each
side's console is kept in build/bench/jobs/jobs<N>/console.log, every line with its time and how busy the cores
were until the next line (a step that keeps every core busy is CPU-bound).
Run as root after `invoke testenv`:  .venv/bin/python benchmarks/jobs.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
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


def _disks() -> dict[str, tuple[int, int]]:
    """Each whole disk's (bytes written, milliseconds it had I/O in flight) so far (/proc/diskstats: sectors
    written, 512 bytes each, and io_ticks). A disk in flight all the time is saturated, whatever its byte rate."""
    disks = {}
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if len(fields) > 12 and not fields[2].startswith(("loop", "ram")) and not fields[2][-1].isdigit():
            disks[fields[2]] = (int(fields[9]) * 512, int(fields[12]))
    return disks


def _disk_use(before: dict[str, tuple[int, int]], seconds: float) -> tuple[float, float]:
    """Bytes written per second over all disks, and the busiest disk's share of the time with I/O in flight."""
    after = _disks()
    written = sum(after[d][0] - before[d][0] for d in after if d in before)
    busiest = max((after[d][1] - before[d][1] for d in after if d in before), default=0)
    return written / seconds, busiest / 1000 / seconds


def _cpu() -> tuple[int, int, int]:
    """(busy, iowait, all) CPU time of the whole machine so far (/proc/stat's first line; idle and iowait are not
    busy; iowait is time a core sat idle with I/O of its own outstanding)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], ticks[4], sum(ticks)


def _timed(command: list[str], env: dict[str, str], log: Path) -> tuple[int, str]:
    """Run the build; write its console to `log`, each line prefixed with the seconds since the start and how busy
    the cores were from that line to the next (so that a step can be seen to be CPU-bound, or not)."""
    started, lines, samples, done = time.monotonic(), [], [], threading.Event()

    def sample() -> None:  # the machine's (seconds, busy ticks, all ticks), twice a second
        while not done.wait(0.5):
            busy, _, every = _cpu()
            samples.append((time.monotonic() - started, busy, every))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
        assert run.stdout is not None
        for line in run.stdout:
            lines.append((time.monotonic() - started, line))
    done.set()
    sampler.join()

    def busy_between(start: float, end: float) -> str:
        inside = [s for s in samples if start - 0.5 <= s[0] <= end + 0.5]
        if len(inside) < 2 or inside[-1][2] == inside[0][2]:
            return "    "
        return f"{(inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2]):4.0%}"

    ends = [at for at, _ in lines[1:]] + [time.monotonic() - started]
    text = [f"{at:7.1f}  {busy_between(at, end)}  {line}" for (at, line), end in zip(lines, ends, strict=True)]
    log.write_text("".join(text))
    return run.returncode, "".join(text[-40:])


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
    iowait: dict[int, list[float]] = {1: [], 2: []}  # the share of all cores' time idle, waiting for their I/O
    in_flight: dict[int, list[float]] = {1: [], 2: []}  # the share of the time the busiest disk had I/O in flight
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
                disks, cpu, started = _disks(), _cpu(), time.monotonic()
                returncode, tail = _timed(command, fresh.environment(), out / "console.log")
                elapsed = time.monotonic() - started
                if returncode != 0:
                    raise SystemExit(f"--jobs {jobs} failed:\n{tail}")
                times[jobs].append(elapsed)
                rate, disk_busy = _disk_use(disks, elapsed)
                rates[jobs].append(rate)
                in_flight[jobs].append(disk_busy)
                now = _cpu()
                busy[jobs].append((now[0] - cpu[0]) / max(1, now[2] - cpu[2]))
                iowait[jobs].append((now[1] - cpu[1]) / max(1, now[2] - cpu[2]))
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"images: {len(first)}, runs per side: {RUNS}")
    for jobs in (1, 2):
        runs = ", ".join(f"{t:.1f}" for t in times[jobs])
        median, rate = statistics.median(times[jobs]), statistics.median(rates[jobs]) / 1e6
        cores, waiting, disk = statistics.median(busy[jobs]), statistics.median(iowait[jobs]), statistics.median(in_flight[jobs])
        usage = f"disk writes {rate:.0f} MB/s, disk busy {disk:.0%} of the time; "
        usage += f"{cores:.0%} of {os.cpu_count()} cores busy, {waiting:.0%} in iowait"
        print(f"--jobs {jobs}: median {median:7.1f} s   ({runs})   {usage}")
    ceiling = 1 / max(statistics.median(busy[1]), 1e-9)
    print(f"speed-up --jobs 2 over --jobs 1 = {one / two:.2f}   (target >= 1.6 where the work is not disk-bound)")
    print(f"ceiling on these cores: 1 / {statistics.median(busy[1]):.0%} busy with one job = {ceiling:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
