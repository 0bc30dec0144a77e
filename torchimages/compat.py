"""The compatibility table (torch ↔ CUDA ↔ cuDNN ↔ python ↔ base OS) as data, and queries on it."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from .model import BaseImage

PYTORCH_INDEX = "https://download.pytorch.org/whl"


def version_key(version: str) -> tuple[int, ...]:
    """Numeric sort key for dotted versions ('2.10.0' after '2.9.1')."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0]))


@dataclass(frozen=True)
class WheelFiles:
    """How the indexes name and pin a release's Linux x86_64 wheels: facts the resolver and the index replica share."""

    pypi_platform: str  # the platform tag of PyPI's wheels, e.g. manylinux1_x86_64
    index_platform: dict[str, str]  # variant (cuXYZ or cpu) -> platform tag of torch on the PyTorch index, e.g. linux_x86_64
    companion_platform: dict[str, str]  # ... of torchvision and torchaudio, where it differs from torch's (2.6.0 cu126)
    no_local: tuple[str, ...]  # variants whose index files carry no +<variant> (1.8.0 cu102, the PyPI build)
    torchaudio_local: bool  # torchaudio on the PyTorch index carries +<variant> (before 1.10 it did not)
    requires: dict[str, tuple[str, ...]]  # variant -> Requires-Dist of the index's torch wheel, where a source records it


@dataclass(frozen=True)
class TorchRelease:
    """One torch release and what its wheels were published for."""

    version: str
    torchvision: str | None
    torchaudio: str | None
    python: tuple[str, ...]  # CPython versions torch itself has wheels for
    torchvision_python: tuple[str, ...]  # ... and its torchvision
    torchaudio_python: tuple[str, ...]  # ... and its torchaudio (for a torchaudio of another release: that release's)
    variants: dict[str, str]  # cuXYZ -> cuDNN major carried by those wheels
    cudnn_versions: dict[str, str]  # cuXYZ -> the cuDNN version, where a source gives it
    cpu: bool
    pypi_default: str | None
    files: WheelFiles
    pending: str | None = None  # why images of this release cannot be built yet

    @property
    def all_variants(self) -> tuple[str, ...]:
        """Every variant with wheels: the CUDA ones, then cpu."""
        return tuple(self.variants) + (("cpu",) if self.cpu else ())


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
    torch = {str(v): _torch_release(str(v), row) for v, row in raw["torch"].items()}
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


def _torch_release(version: str, row: dict[str, Any]) -> TorchRelease:
    python = tuple(str(p) for p in row["python"])
    files = row["files"]
    return TorchRelease(
        version=version,
        torchvision=_str_or_none(row["torchvision"]),
        torchaudio=_str_or_none(row["torchaudio"]),
        python=python,
        torchvision_python=tuple(str(p) for p in row.get("torchvision_python", python)),
        torchaudio_python=tuple(str(p) for p in row.get("torchaudio_python", python)),
        variants={str(k): str(val["cudnn"]) for k, val in row["variants"].items()},
        cudnn_versions={str(k): str(val["cudnn_version"]) for k, val in row["variants"].items() if "cudnn_version" in val},
        cpu=bool(row["cpu"]),
        pypi_default=_str_or_none(row.get("pypi_default")),
        files=WheelFiles(
            pypi_platform=str(files["pypi"]),
            index_platform={str(k): str(v) for k, v in files["index"].items()},
            companion_platform={str(k): str(v) for k, v in (files.get("index_companions") or {}).items()},
            no_local=tuple(str(v) for v in files.get("no_local", ())),
            torchaudio_local=bool(files.get("torchaudio_local", True)),
            requires={str(k): tuple(str(r) for r in v) for k, v in (files.get("requires") or {}).items()},
        ),
        pending=_str_or_none(row.get("pending")),
    )


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


def describe_variants(release: TorchRelease) -> str:
    """'11.8, 12.1, 12.4' (and 'cpu')."""
    names = sorted((cuda_from_tag(v) for v in release.variants), key=version_key)
    return ", ".join(names + (["cpu"] if release.cpu else []))


BASE_FLAVOURS = ("base", "runtime", "devel", "cudnn-runtime", "cudnn-devel")


def cuda_base(cuda: CudaRelease, kind: str, os_name: str, *, repository: str = "nvidia/cuda", mirror: str = "") -> BaseImage:
    """The nvidia/cuda image of a CUDA release, flavour and os, named as NVIDIA tags it (cudnn8/cudnn9/cudnn over time)."""
    part = kind.replace("cudnn-", f"{cuda.cudnn_tag}-")
    return BaseImage(repository=repository, tag=f"{cuda.full}-{part}-{os_name}", kind=kind, os=os_name, cuda_full=cuda.full, mirror=mirror)


def os_base(osr: OsRelease, *, mirror: str = "") -> BaseImage:
    """A distribution's own image (CPU images): library/ubuntu:24.04."""
    repository, tag = osr.image.rsplit(":", 1)
    return BaseImage(repository=repository, tag=tag, kind="os", os=osr.name, mirror=mirror)


def base_tags(cuda: CudaRelease) -> dict[str, list[str]]:
    """Every nvidia/cuda tag of a CUDA release by flavour: base, runtime, devel, and the cuDNN ones."""
    return {kind: [cuda_base(cuda, kind, os_name).tag for os_name in cuda.os] for kind in BASE_FLAVOURS}
