"""The plain frozen records passed between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

PIP = "pip"  # locked with every image and shipped in its venv, so that derived images can `pip install`
# The build installs the lock with uv (1.41x faster than pip, benchmarks/installer.py), hash-checked and with --no-deps,
# so no resolution of uv's own is involved: pip resolves every lock. uv stays in the build's venv stage. Its wheel
# declares Requires-Python >=3.8 and uv supports no older python: an older image's lock is installed by its locked pip.
UV = "uv"
UV_VERSION = "0.13.9"
UV_PYTHON = (3, 8)


@dataclass(frozen=True)
class Package:
    """A pip requirement shipped in an image, and the module verification imports for it."""

    requirement: str
    module: str | None


def exact_requirement(name: str, version: str) -> str:
    """A requirement for exactly this version: == with a local part, else === (==2.11.0 admits 2.11.0+cu126 too)."""
    return f"{name}=={version}" if "+" in version else f"{name}==={version}"


@dataclass(frozen=True)
class FamilyBuild:
    """One exact build of torch, torchvision or torchaudio."""

    name: str
    version: str  # as the wheel's metadata names it: 2.11.0+cu126, or 2.11.0 for PyPI's build
    variant: str  # what it was built for: cu126, cpu
    on_pypi: bool  # PyPI's build (else the PyTorch index's)

    @property
    def requirement(self) -> str:
        """The pip requirement that admits this build and no other variant."""
        return exact_requirement(self.name, self.version)


@dataclass(frozen=True, kw_only=True)
class BaseImage:
    """A base image as the compatibility table names it, built once: nvidia/cuda:<full>-<kind>-<os> or a distribution's."""

    repository: str  # nvidia/cuda, library/debian
    tag: str
    kind: str  # base | runtime | devel | cudnn-runtime | cudnn-devel for nvidia/cuda; os for a distribution image
    os: str
    cuda_full: str | None = None
    mirror: str = ""  # a registry mirror that FROM pulls through

    @property
    def upstream(self) -> str:
        """The name upstream publishes, recorded in labels."""
        return f"{self.repository}:{self.tag}"

    @property
    def qualified(self) -> str:
        """The upstream name with its registry, as the OCI base.name label wants it (docker.io/nvidia/cuda:...)."""
        first = self.repository.split("/", 1)[0]
        has_host = "/" in self.repository and ("." in first or ":" in first or first == "localhost")
        return self.upstream if has_host else f"docker.io/{self.upstream}"

    @property
    def ref(self) -> str:
        """What FROM pulls: the upstream name behind the mirror, if any."""
        return f"{self.mirror.rstrip('/')}/{self.upstream}" if self.mirror else self.upstream


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """Everything needed to render, build, verify and tag one image."""

    name: str
    torch: str  # the release, e.g. 2.11.0
    torch_build: str  # what torch.__version__ must match: 2.11.0 (any local part), 2.13.0+cpu (exactly)
    torchvision: str | None  # the exact build: 0.26.0+cu126, or 0.26.0 for PyPI's
    torchaudio: str | None
    family: tuple[FamilyBuild, ...]  # torch, torchvision, torchaudio: what pip must resolve, exactly
    python: str
    os: str
    flavour: str  # runtime | devel | cpu
    cuda: str | None  # the base image's CUDA major.minor
    cuda_full: str | None
    min_driver: str | None  # the minimum Linux driver for the base's CUDA (CUDA release notes, Table 3)
    wheel_variant: str  # cu130 | cpu
    wheel_cuda: str | None
    wheel_reason: str
    wheel_indexes: dict[str, str]  # family member -> the PyTorch index folder it comes from (none: PyPI, or pip's configuration)

    @property
    def wheel_index(self) -> str | None:
        """The PyTorch index folder torch comes from, if any."""
        return self.wheel_indexes.get("torch")

    cudnn: str | None  # cuDNN major the wheels carry
    base: BaseImage
    glibc: str
    packages: tuple[Package, ...]
    apt_packages: tuple[str, ...]
    repository: str  # registry/repo the release tags go to
    tags: tuple[str, ...]
    source: tuple[str, int]  # config file and line of the entry

    @property
    def installer(self) -> str:
        """What installs the lock in the build: uv, or pip for a python uv does not run."""
        return UV if tuple(int(part) for part in self.python.split(".")) >= UV_PYTHON else PIP

    @property
    def requirements(self) -> tuple[str, ...]:
        """Every pip requirement of the image, torch first, then pip itself (shipped), then uv (the build's installer)."""
        installer = (f"{UV}=={UV_VERSION}",) if self.installer == UV else ()
        return tuple(b.requirement for b in self.family) + tuple(p.requirement for p in self.packages) + (PIP, *installer)

    @property
    def modules(self) -> tuple[str, ...]:
        """Modules that must import in the image."""
        family = tuple(name for name, version in (("torchvision", self.torchvision), ("torchaudio", self.torchaudio)) if version)
        return family + tuple(p.module for p in self.packages if p.module)

    @property
    def base_image(self) -> str:
        """What FROM pulls (mirror applied)."""
        return self.base.ref

    @property
    def venv_base(self) -> BaseImage:
        """What the venv stage is built FROM: nvidia/cuda's -base- image of this CUDA and OS (the one every flavour's
        base is built on), or a CPU image's own base. One venv stage thus serves the runtime and the devel image."""
        if self.base.cuda_full is None:
            return self.base
        return replace(self.base, kind="base", tag=f"{self.base.cuda_full}-base-{self.base.os}")

    @property
    def venv_base_image(self) -> str:
        """What the venv stage's FROM pulls (mirror applied)."""
        return self.venv_base.ref

    @property
    def base_upstream(self) -> str:
        """The base's upstream name, recorded in labels."""
        return self.base.upstream

    @property
    def refs(self) -> tuple[str, ...]:
        """Full references of every release tag."""
        return tuple(f"{self.repository}:{tag}" for tag in self.tags)


@dataclass(frozen=True)
class Check:
    """One check torch-verify ran."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True, kw_only=True)
class VerifyReport:
    """What torch-verify saw inside an image."""

    ok: bool
    exit_code: int
    torch: str | None
    torch_cuda: str | None
    cudnn: str | None
    python: str | None
    gpu: bool
    packages: dict[str, str | None] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    output: str = ""

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "fail")


@dataclass(frozen=True)
class PushResult:
    """One reference pushed, and the digest the registry reports for it."""

    ref: str
    digest: str


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    """The outcome of one image through the whole pipeline."""

    spec: ImageSpec
    status: str  # built | unchanged | failed | cancelled (an interrupt stopped it; see error for where)
    image_id: str | None = None
    verified: bool = False
    verify: VerifyReport | None = None
    tags: tuple[str, ...] = ()
    pushed: tuple[PushResult, ...] = ()
    size: int | None = None
    error: str | None = None
    seconds: float = 0.0
    registry_digest: str | None = None  # set when the registry already served this very build: neither built nor pushed
