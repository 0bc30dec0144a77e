"""`invoke doctor`: can this host `docker run --gpus all` the matrix's images, and which ones?

gather_facts() is the only part that touches the host (the Docker engine, nvidia-smi, /dev/shm);
everything after it is pure functions over plain data, so the tests need neither Docker nor a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from .compat import version_key
from .engine import NVIDIA_HOOK, Engine, EngineError
from .matrix import load_matrix
from .model import ImageSpec

NVIDIA_SMI = ("nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader")
SMI_TIMEOUT_S = 20
ENGINE_TIMEOUT_S = 15
DRIVER_RE = re.compile(r"^\d+(\.\d+)+$")
GIB = 1024**3
NO_GPU = "no NVIDIA GPU: only the CPU images can use this host; CUDA images run without --gpus for CPU work"
RUNTIME_FIX = (
    "install nvidia-container-toolkit, run `sudo nvidia-ctk runtime configure --runtime=docker`, "
    "then restart docker (`sudo systemctl restart docker`)"
)
SHM_ADVICE = (
    "Docker gives a container 64 MB of /dev/shm by default, and PyTorch DataLoader workers die in it "
    '("bus error ... insufficient shared memory"): run with --ipc=host or --shm-size=8g'
)


class EngineInfo(Protocol):
    """What the doctor needs of an engine: docker's info dict (Engine has it)."""

    def info(self) -> dict[str, Any]: ...


@dataclass(frozen=True, kw_only=True)
class GpuFacts:
    """What nvidia-smi said: the driver and each GPU, or why there is no usable GPU."""

    driver: str | None
    gpus: tuple[str, ...] = ()
    problem: str | None = None


@dataclass(frozen=True, kw_only=True)
class HostFacts:
    """Everything the doctor reads from the host, as plain data."""

    engine_error: str | None
    engine_version: str | None = None
    runtimes: tuple[str, ...] = ()
    default_runtime: str = ""
    cdi_devices: tuple[str, ...] = ()  # CDI devices the engine discovered (DiscoveredDevices, Docker 28.2+)
    nvidia_hook: str | None = None  # NVIDIA_HOOK on this machine's PATH, where the engine is local
    remote_engine: str | None = None  # DOCKER_HOST when it names another machine
    driver: str | None = None
    gpus: tuple[str, ...] = ()
    gpu_problem: str | None = None
    shm_bytes: int | None = None

    @property
    def gpu_path(self) -> str | None:
        """How Docker hands this host's GPUs to a container, or None when it cannot."""
        if "nvidia" in self.runtimes:
            return "the nvidia runtime"
        if any(d.startswith("nvidia.com/") for d in self.cdi_devices):
            return "CDI devices"
        if self.nvidia_hook:
            return f"{NVIDIA_HOOK} ({self.nvidia_hook})"
        return None

    @property
    def gpu_flag(self) -> str:
        """The docker run flag that hands every GPU over: --gpus, or the CDI device where only CDI can."""
        return "--device nvidia.com/gpu=all" if self.gpu_path == "CDI devices" else "--gpus all"


@dataclass(frozen=True)
class Verdict:
    """One image and why it can, cannot, or may run here."""

    spec: ImageSpec
    reason: str


@dataclass(frozen=True, kw_only=True)
class Diagnosis:
    """The doctor's findings: per image, the newest runnable one, advice, and the exit flag."""

    facts: HostFacts
    runnable: tuple[Verdict, ...]
    unrunnable: tuple[Verdict, ...]
    unknown: tuple[Verdict, ...]
    newest: ImageSpec | None
    newest_gpu: ImageSpec | None  # the newest CUDA image among them, when it is not the newest overall
    findings: tuple[str, ...]
    advice: tuple[str, ...]
    ok: bool


def driver_key(version: str) -> tuple[int, ...]:
    """'570.124.06' -> (570, 124, 6); ValueError for anything that is not a dotted driver version."""
    if not DRIVER_RE.match(version.strip()):
        raise ValueError(f"not a driver version: {version!r}")
    return tuple(int(part) for part in version.strip().split("."))


def driver_at_least(driver: str, minimum: str) -> bool:
    """True when driver is minimum or newer, compared as integer tuples (570.26 < 570.124.06)."""
    return driver_key(driver) >= driver_key(minimum)


def parse_nvidia_smi(stdout: str) -> GpuFacts:
    """The driver and GPU names from `nvidia-smi --query-gpu=driver_version,name --format=csv,noheader`."""
    rows = [line.split(",", 1) for line in stdout.splitlines() if line.strip()]
    if not rows:
        return GpuFacts(driver=None, problem="nvidia-smi listed no GPU")
    drivers = {row[0].strip() for row in rows}
    if bad := sorted(d for d in drivers if not DRIVER_RE.match(d)):
        return GpuFacts(driver=None, problem=f"nvidia-smi printed no driver version ({bad[0]!r})")
    # One driver serves every GPU; were two ever reported, the older one is the one that counts.
    driver = min(drivers, key=driver_key)
    return GpuFacts(driver=driver, gpus=tuple(row[1].strip() if len(row) > 1 else "unnamed GPU" for row in rows))


def probe_gpus(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> GpuFacts:
    """Ask nvidia-smi, with a timeout; every way of failing becomes a plain reason."""
    try:
        done = run(list(NVIDIA_SMI), capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False)
    except FileNotFoundError:
        return GpuFacts(driver=None, problem="nvidia-smi is not installed: no NVIDIA driver on this host")
    except subprocess.TimeoutExpired:
        return GpuFacts(driver=None, problem=f"nvidia-smi did not answer within {SMI_TIMEOUT_S} s")
    except OSError as exc:
        return GpuFacts(driver=None, problem=f"nvidia-smi could not run: {exc}")
    said = " ".join(f"{done.stdout or ''} {done.stderr or ''}".split())
    if "No devices were found" in said:
        return GpuFacts(driver=None, problem="nvidia-smi found no NVIDIA GPU (No devices were found)")
    if "couldn't communicate with the NVIDIA driver" in said:
        return GpuFacts(driver=None, problem=f"nvidia-smi is installed but the NVIDIA driver is not running: {said}")
    if done.returncode != 0:
        return GpuFacts(driver=None, problem=f"nvidia-smi failed (exit {done.returncode}): {said or 'no output'}")
    return parse_nvidia_smi(done.stdout)


def _local_engine() -> Engine:
    return Engine(timeout=ENGINE_TIMEOUT_S)


def gather_facts(
    *,
    engine_factory: Callable[[], EngineInfo] = _local_engine,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    which: Callable[[str], str | None] = shutil.which,
    shm_path: str = "/dev/shm",
    environ: Mapping[str, str] = os.environ,
) -> HostFacts:
    """Read the host: the engine's info, nvidia-smi, this machine's PATH and /dev/shm."""
    docker_host = environ.get("DOCKER_HOST", "")
    remote = docker_host if docker_host and not docker_host.startswith("unix://") else None
    gpu = probe_gpus(run)
    host = HostFacts(
        engine_error=None,
        remote_engine=remote,
        nvidia_hook=None if remote else which(NVIDIA_HOOK),
        driver=gpu.driver,
        gpus=gpu.gpus,
        gpu_problem=gpu.problem,
        shm_bytes=_shm_bytes(shm_path),
    )
    try:
        info = engine_factory().info()
    except EngineError as exc:
        return replace(host, engine_error=str(exc))
    devices = info.get("DiscoveredDevices") or []
    return replace(
        host,
        engine_version=str(info.get("ServerVersion") or "") or None,
        runtimes=tuple(sorted(info.get("Runtimes") or {})),
        default_runtime=str(info.get("DefaultRuntime") or ""),
        cdi_devices=tuple(str(d["ID"]) for d in devices if isinstance(d, dict) and d.get("ID")),
    )


def _shm_bytes(path: str) -> int | None:
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_frsize * stat.f_blocks


def judge(spec: ImageSpec, facts: HostFacts) -> tuple[bool | None, str]:
    """(True: runs here, False: does not, None: unknown) and why, for one image."""
    if not spec.cuda:
        return True, "CPU image"
    if facts.remote_engine:  # the GPUs that count are the engine's machine's, which nvidia-smi here does not see
        return None, f"the engine is on another machine ({facts.remote_engine}): run `docker run --rm --gpus all IMAGE nvidia-smi` there"
    if facts.driver is None:
        return False, f"needs an NVIDIA GPU ({facts.gpu_problem or 'none found'})"
    # NVIDIA's CUDA bases set NVIDIA_REQUIRE_CUDA="cuda>=X.Y ..." (our stand-in bases too: testing/standins.py),
    # and the container toolkit refuses to start such a container on a driver whose CUDA is older: "requirement
    # error: unsatisfied condition: cuda>=12.8, please update your driver" (NVIDIA/nvidia-container-toolkit#940,
    # #152). Each CUDA release's minimum Linux driver is Table 3 of the CUDA Toolkit release notes (the shared
    # reference's compat-notes.md, "min Linux driver GA / latest update"); min_driver is the update release of
    # the base's, at or above the X.Y GA driver the toolkit checks, so it is the threshold that surely holds.
    too_old = spec.min_driver is not None and not driver_at_least(facts.driver, spec.min_driver)
    driver_why = f"driver {facts.driver} is older than {spec.min_driver}, the minimum for CUDA {spec.cuda_full or spec.cuda}"
    if facts.engine_error is None and facts.gpu_path is None:
        return False, "Docker has no NVIDIA container runtime to hand the GPU over" + (f"; and {driver_why}" if too_old else "")
    if spec.min_driver is None:
        return None, f"the matrix records no minimum driver for CUDA {spec.cuda}"
    if too_old:
        return False, driver_why
    return True, f"driver {facts.driver} >= {spec.min_driver} (CUDA {spec.cuda_full or spec.cuda})"


def newest_key(spec: ImageSpec) -> tuple[tuple[int, ...], ...]:
    """Newest torch, then CUDA (CPU last), then python, then runtime before devel."""
    return (version_key(spec.torch), version_key(spec.cuda or ""), version_key(spec.python), (int(spec.flavour != "devel"),))


def assess(facts: HostFacts, specs: Iterable[ImageSpec]) -> Diagnosis:
    """Which images this host can run, the newest of them, what to fix, and whether it can run any."""
    specs = tuple(specs)
    verdicts = [(judge(spec, facts), spec) for spec in specs]
    runnable = tuple(Verdict(spec, why) for (can, why), spec in verdicts if can is True)
    unrunnable = tuple(Verdict(spec, why) for (can, why), spec in verdicts if can is False)
    unknown = tuple(Verdict(spec, why) for (can, why), spec in verdicts if can is None)
    newest = max((v.spec for v in runnable), key=newest_key, default=None)
    newest_gpu = max((v.spec for v in runnable if v.spec.cuda), key=newest_key, default=None)
    return Diagnosis(
        facts=facts,
        runnable=runnable,
        unrunnable=unrunnable,
        unknown=unknown,
        newest=newest,
        newest_gpu=None if newest_gpu == newest else newest_gpu,
        findings=_findings(facts),
        advice=_advice(facts, specs, unknown),
        ok=facts.engine_error is None and bool(runnable),
    )


def _findings(facts: HostFacts) -> tuple[str, ...]:
    lines = []
    if facts.engine_error:
        lines.append(f"Docker engine: not reachable: {facts.engine_error}")
    else:
        lines.append(f"Docker engine: reachable (Docker {facts.engine_version or 'of unknown version'})")
    if facts.remote_engine:
        lines.append(f"DOCKER_HOST: {facts.remote_engine} (another machine: the driver and GPUs below are this machine's)")
    if facts.engine_error is None:
        runtimes = f"runtimes: {', '.join(facts.runtimes) or 'none'}; default runtime: {facts.default_runtime or 'unknown'}"
        state = f"yes, through {facts.gpu_path}" if facts.gpu_path else "not configured"
        lines.append(f"NVIDIA container runtime: {state} ({runtimes})")
        if facts.cdi_devices:
            lines.append(f"CDI devices: {', '.join(facts.cdi_devices)}")
    lines.append(f"NVIDIA driver: {facts.driver}" if facts.driver else f"NVIDIA driver: none ({facts.gpu_problem})")
    lines.extend(f"GPU {i}: {name}" for i, name in enumerate(facts.gpus))
    shm = "unknown" if facts.shm_bytes is None else f"{facts.shm_bytes / GIB:.1f} GiB"
    lines.append(f"/dev/shm on this host: {shm} (shared with containers run with --ipc=host)")
    return tuple(lines)


def _advice(facts: HostFacts, specs: tuple[ImageSpec, ...], unknown: tuple[Verdict, ...]) -> tuple[str, ...]:
    advice = []
    if facts.engine_error:
        advice.append("start a Docker engine (or point DOCKER_HOST at one), then run this again")
    if facts.driver is None:
        advice.append(NO_GPU)
    elif facts.engine_error is None and facts.gpu_path is None:
        advice.append(f"the GPU is there but Docker cannot hand it to containers: {RUNTIME_FIX}")
    minimums = [s.min_driver for s in specs if s.cuda and s.min_driver]
    if facts.driver is not None and any(not driver_at_least(facts.driver, m) for m in minimums):
        highest = max(minimums, key=driver_key)
        advice.append(
            f"driver {highest} or newer runs every CUDA image of the matrix (datacenter GPUs on an older long-term "
            "driver branch may still run some through CUDA forward compatibility; this check does not count on it)"
        )
    for cuda in sorted({v.spec.cuda or "" for v in unknown}, key=version_key):
        advice.append(f"CUDA {cuda} images have no recorded minimum driver: try one with `docker run --rm --gpus all IMAGE torch-verify`")
    advice.append(
        SHM_ADVICE + ("" if facts.shm_bytes is None or facts.shm_bytes >= GIB else " (prefer --shm-size here: the host's is small)")
    )
    return tuple(advice)


def run_command(spec: ImageSpec, facts: HostFacts) -> str:
    """The docker run line for an image on this host."""
    gpus = f"{facts.gpu_flag} " if spec.cuda else ""
    return f"docker run --rm -it {gpus}--ipc=host {spec.refs[0]}"


def format_diagnosis(diagnosis: Diagnosis) -> str:
    """The report a person reads."""
    d, facts = diagnosis, diagnosis.facts
    total = len(d.runnable) + len(d.unrunnable) + len(d.unknown)
    out = ["Host", *(f"  {line}" for line in d.findings), ""]
    heading = "can run" if facts.engine_error is None else "could run once a Docker engine answers"
    out.append(f"Images this host {heading} ({len(d.runnable)} of {total}):")
    out.extend([f"  {v.spec.name}  ({v.reason})" for v in d.runnable] or ["  none"])
    for title, group in (("Not runnable here", d.unrunnable), ("Unknown", d.unknown)):
        if group:
            out.append(f"{title} ({len(group)}):")
            for reason in dict.fromkeys(v.reason for v in group):
                out.append(f"  {reason}:")
                out.extend(_names([v.spec for v in group if v.reason == reason]))
    if d.newest is not None:
        out += ["", f"Newest image this host {heading}: {d.newest.refs[0]}", f"  {run_command(d.newest, facts)}"]
    if d.newest_gpu is not None:
        out += [f"Newest with the GPU: {d.newest_gpu.refs[0]}", f"  {run_command(d.newest_gpu, facts)}"]
    out += ["", "Advice", *(f"  - {line}" for line in d.advice), ""]
    if d.ok:
        out.append(f"OK: this host can run {len(d.runnable)} of {total} images.")
    else:
        why = "no Docker engine answered" if facts.engine_error else "no image of the matrix can run here"
        out.append(f"NOT OK: {why}.")
    return "\n".join(out)


def _names(specs: list[ImageSpec], limit: int = 6) -> list[str]:
    """One line per image, or one line in all for more than limit of them."""
    if len(specs) <= limit:
        return [f"    {spec.name}" for spec in specs]
    torches = ", ".join(sorted({s.torch for s in specs}, key=version_key))
    cudas = ", ".join(sorted({s.cuda or "cpu" for s in specs}, key=version_key))
    return [f"    {len(specs)} images: torch {torches}; CUDA {cudas}"]


def diagnose(config: str | Path) -> Diagnosis:
    """The whole check for `invoke doctor`: the matrix in config against this host (ConfigError for a bad file)."""
    return assess(gather_facts(), load_matrix(config).images)
