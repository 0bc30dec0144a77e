"""Run torch-verify inside an image, parse its JSON, and hold it against what the matrix promised."""

from __future__ import annotations

import json
from typing import Any

from .engine import Engine, EngineError
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
    except EngineError as exc:
        raise VerifyError(str(exc)) from None
    return parse_report(result.output, result.exit_code)


def parse_report(output: str, exit_code: int) -> VerifyReport:
    """The JSON document is the last line starting with '{' (the script prints nothing else on stdout)."""
    start = output.find('{"')
    if start < 0:
        raise VerifyError(f"torch-verify printed no JSON (exit {exit_code}): {output.strip()[-500:]}")
    try:
        data, _end = json.JSONDecoder().raw_decode(output[start:])
    except json.JSONDecodeError as exc:
        raise VerifyError(f"torch-verify printed unreadable JSON ({exc}): {output.strip()[-500:]}") from None
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


def verified_labels(report: VerifyReport) -> dict[str, str]:
    """Labels that record what verification saw; they replace the promised values on the released image."""
    labels = {
        "org.torch-images.verified": "true",
        "org.torch-images.torch": report.torch or "none",
        "org.torch-images.cuda": report.torch_cuda or "none",
        "org.torch-images.cudnn": report.cudnn or "none",
        "org.torch-images.python": report.python or "none",
    }
    for module in ("torchvision", "torchaudio"):
        if report.packages.get(module):
            labels[f"org.torch-images.{module}"] = str(report.packages[module])
    return labels


def report_from_labels(labels: dict[str, str]) -> VerifyReport:
    """The inverse of verified_labels: what verification saw when a reused image was built."""

    def seen(key: str) -> str | None:
        value = labels.get(f"org.torch-images.{key}")
        return None if value in (None, "none") else value

    return VerifyReport(
        ok=True, exit_code=0, torch=seen("torch"), torch_cuda=seen("cuda"), cudnn=seen("cudnn"), python=seen("python"), gpu=False,
        packages={m: v for m in ("torchvision", "torchaudio") if (v := seen(m))}, output="reused: verified when it was built",
    )  # fmt: skip
