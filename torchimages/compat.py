"""The compatibility table (torch ↔ CUDA ↔ cuDNN ↔ python ↔ base OS) as data, and queries on it."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

import yaml

PYTORCH_INDEX = "https://download.pytorch.org/whl"


def version_key(version: str) -> tuple[int, ...]:
    """Numeric sort key for dotted versions ('2.10.0' after '2.9.1')."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0]))


@dataclass(frozen=True)
class TorchRelease:
    """One torch release and what its wheels were published for."""

    version: str
    torchvision: str | None
    torchaudio: str | None
    python: tuple[str, ...]
    variants: dict[str, str]  # cuXYZ -> cuDNN major carried by those wheels
    cudnn_versions: dict[str, str]  # cuXYZ -> the cuDNN version, where a source gives it
    cpu: bool
    pypi_default: str | None
    pending: str | None = None  # why images of this release cannot be built yet


@dataclass(frozen=True)
class CudaRelease:
    """One CUDA major.minor as NVIDIA publishes it in nvidia/cuda."""

    version: str
    full: str
    cudnn: str
    cudnn_tag: str  # how the tag names cuDNN: cudnn8, cudnn9, or plain cudnn
    os: tuple[str, ...]
    min_driver: str | None


@dataclass(frozen=True)
class OsRelease:
    """A base distribution: its python3 and glibc."""

    name: str
    python: str
    glibc: str
    image: str


@dataclass(frozen=True)
class Compat:
    """The whole table."""

    torch: dict[str, TorchRelease]
    cuda: dict[str, CudaRelease]
    os: dict[str, OsRelease]


@functools.cache
def load_compat() -> Compat:
    """The table shipped in torchimages/data/compat.yaml."""
    raw = yaml.safe_load(resources.files("torchimages").joinpath("data/compat.yaml").read_text("utf-8"))
    torch = {
        str(v): TorchRelease(
            version=str(v),
            torchvision=_str_or_none(row["torchvision"]),
            torchaudio=_str_or_none(row["torchaudio"]),
            python=tuple(str(p) for p in row["python"]),
            variants={str(k): str(val["cudnn"]) for k, val in row["variants"].items()},
            cudnn_versions={str(k): str(val["cudnn_version"]) for k, val in row["variants"].items() if "cudnn_version" in val},
            cpu=bool(row["cpu"]),
            pypi_default=_str_or_none(row.get("pypi_default")),
            pending=_str_or_none(row.get("pending")),
        )
        for v, row in raw["torch"].items()
    }
    cuda = {
        str(v): CudaRelease(
            version=str(v),
            full=str(row["full"]),
            cudnn=str(row["cudnn"]),
            cudnn_tag=str(row["cudnn_tag"]),
            os=tuple(row["os"]),
            min_driver=_str_or_none(row.get("min_driver")),
        )
        for v, row in raw["cuda"].items()
    }
    oses = {
        name: OsRelease(name=name, python=str(row["python"]), glibc=str(row["glibc"]), image=row["image"])
        for name, row in raw["os"].items()
    }
    return Compat(torch=torch, cuda=cuda, os=oses)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def cuda_tag(cuda: str) -> str:
    """'13.0' -> 'cu130'."""
    major, minor = cuda.split(".")[:2]
    return f"cu{major}{minor}"


def cuda_from_tag(tag: str) -> str:
    """'cu130' -> '13.0', 'cu92' -> '9.2'."""
    digits = tag[2:]
    return f"{digits[:-1]}.{digits[-1]}"


def wheel_variant_for(release: TorchRelease, base_cuda: str) -> tuple[str | None, str]:
    """The wheel variant for a CUDA base, and why: exact match, else the newest same-major older minor."""
    exact = cuda_tag(base_cuda)
    if exact in release.variants:
        return exact, f"torch {release.version} publishes {exact} wheels"
    major, minor = (int(x) for x in base_cuda.split(".")[:2])
    older = [v for v in release.variants if int(cuda_from_tag(v).split(".")[0]) == major and int(cuda_from_tag(v).split(".")[1]) < minor]
    if older:
        best = max(older, key=lambda v: version_key(cuda_from_tag(v)))
        return best, (
            f"no {exact} wheel for torch {release.version}; {best} wheels run on a CUDA {base_cuda} "
            f"base (same major, older minor: CUDA minor-version compatibility)"
        )
    return None, f"torch {release.version} has no wheel for CUDA {base_cuda}"


def wheel_index_for(release: TorchRelease, variant: str, pytorch_index: str | None) -> str | None:
    """Where the wheel lives: None for PyPI's default variant, else the PyTorch index for it."""
    if variant == release.pypi_default:
        return None
    return f"{pytorch_index.rstrip('/')}/{variant}" if pytorch_index else None


def torch_requirement(release: TorchRelease, variant: str) -> str:
    """The pip requirement that gets exactly this build."""
    if variant == release.pypi_default:
        return f"torch=={release.version}"
    return f"torch=={release.version}+{variant}"


def describe_variants(release: TorchRelease) -> str:
    """'11.8, 12.1, 12.4' (and 'cpu')."""
    names = sorted((cuda_from_tag(v) for v in release.variants), key=version_key)
    return ", ".join(names + (["cpu"] if release.cpu else []))


BASE_FLAVOURS = ("base", "runtime", "devel", "cudnn-runtime", "cudnn-devel")


def base_tags(cuda: CudaRelease) -> dict[str, list[str]]:
    """Every nvidia/cuda tag of a CUDA release by flavour: base, runtime, devel, and the cuDNN ones."""
    tags: dict[str, list[str]] = {}
    for flavour in BASE_FLAVOURS:
        part = flavour.replace("cudnn-", f"{cuda.cudnn_tag}-")
        tags[flavour] = [f"{cuda.full}-{part}-{os_name}" for os_name in cuda.os]
    return tags
