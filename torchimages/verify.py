"""Run torch-verify inside an image, parse its JSON, and hold it against what the matrix promised."""

from __future__ import annotations

import json
from typing import Any

from .engine import Cancelled, Engine, EngineError
from .model import Check, FamilyBuild, ImageSpec, VerifyReport

VERIFY_TIMEOUT = 600


class VerifyError(Exception):
    """torch-verify could not run or said something unreadable."""


def gpus_wanted(engine: Engine, mode: str) -> bool:
    """auto: hand GPUs in when the engine has the nvidia runtime; all/none force it."""
    if mode == "all":
        return True
    if mode == "none":
        return False
    return engine.has_nvidia_runtime()


def run_verify(engine: Engine, image: str, *, gpus: bool, extra_args: tuple[str, ...] = ()) -> VerifyReport:
    """torch-verify --json in a fresh container."""
    command = ["torch-verify", "--json", *(["--require-gpu"] if gpus else []), *extra_args]
    try:
        result = engine.run(image, command, timeout=VERIFY_TIMEOUT, gpus=gpus)
    except Cancelled:
        raise
    except EngineError as exc:
        raise VerifyError(str(exc)) from None
    return parse_report(result.output, result.exit_code)


def parse_report(output: str, exit_code: int) -> VerifyReport:
    """torch-verify's document: the last line of the output that is a JSON object with "ok" and "checks".

    Packages imported during verification may log lines of JSON of their own, before it or at exit.
    """
    data: dict[str, Any] | None = None
    for line in reversed(output.splitlines()):
        if not line.startswith("{"):
            continue
        try:
            candidate = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(candidate, dict) and "ok" in candidate and "checks" in candidate:
            data = candidate
            break
    if data is None:
        raise VerifyError(f"torch-verify printed no report (exit {exit_code}): {output.strip()[-500:]}")
    if exit_code not in (0, 1):
        raise VerifyError(f"torch-verify exited {exit_code}: {output.strip()[-500:]}")
    gpu = data.get("gpu") or {}
    checks = tuple(
        Check(name=str(c.get("name")), status=str(c.get("status")), detail=str(c.get("detail", ""))) for c in data.get("checks", [])
    )
    return VerifyReport(
        ok=bool(data.get("ok")) and exit_code == 0,
        exit_code=exit_code,
        torch=_str(data.get("torch")),
        torch_cuda=_str(data.get("torch_cuda")),
        cudnn=_str(data.get("cudnn")),
        python=_str(data.get("python")),
        gpu=bool(gpu.get("available")),
        packages={str(k): _str(v) for k, v in (data.get("packages") or {}).items()},
        checks=checks,
        output=output,
    )


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def build_matches(build: FamilyBuild, seen: str | None) -> bool:
    """The version an image reports against the build it promised: the same release, and the same variant where it says one."""
    if seen is None:
        return False
    public, _, local = seen.partition("+")
    return public == build.version.split("+")[0] and (not local or local == build.variant)


def promise_problems(spec: ImageSpec, report: VerifyReport) -> list[str]:
    """What the image says against what the matrix promised; a second opinion beside the in-image checks."""
    problems = []
    for build in spec.family:
        seen = report.torch if build.name == "torch" else report.packages.get(build.name)
        if not build_matches(build, seen):
            problems.append(f"{build.name} is {seen}, the matrix promised {build.version} (built for {build.variant})")
    if spec.wheel_cuda is None and report.torch_cuda is not None:
        problems.append(f"a CPU image holds a CUDA build of torch (CUDA {report.torch_cuda})")
    if spec.wheel_cuda is not None and report.torch_cuda != spec.wheel_cuda:
        built = "a CPU build" if report.torch_cuda is None else f"built for CUDA {report.torch_cuda}"
        problems.append(f"torch is {built}, the matrix promised CUDA {spec.wheel_cuda} ({spec.wheel_variant})")
    if spec.cudnn is not None and (report.cudnn or "").split(".")[0] != spec.cudnn:
        problems.append(f"cuDNN is {report.cudnn}, the matrix promised cuDNN {spec.cudnn}")
    if report.python != spec.python:
        problems.append(f"python is {report.python}, the matrix promised {spec.python}")
    for module in spec.modules:
        if report.packages.get(module) is None:
            problems.append(f"package {module} did not report a version")
    return problems
