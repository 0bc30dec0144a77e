"""Expand one entry of images.yaml (torch × cuda × python × os × flavours) into ImageSpecs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import compat as compat_mod
from .compat import Compat
from .config import Path_, Reader, did_you_mean
from .family import FamilyError, family_builds, missing_python
from .model import BaseImage, FamilyBuild, ImageSpec, Package
from .schema import boolean, choices, packages, unknown_keys, versions, words
from .tags import full_tag

ENTRY_KEYS = ("torch", "cuda", "python", "os", "flavours", "packages", "apt_packages", "omit", "deprecated")
REQUIRED_ENTRY_KEYS = ("torch", "cuda", "python")
OMITTABLE = ("torchvision", "torchaudio")
CPU = "cpu"  # the `cuda` value of a CPU image
CUDA_FLAVOURS = ("runtime", "devel")  # the first is the default
CPU_FLAVOURS = ("cpu",)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Matrix-wide settings every entry uses, and the compatibility table entries are checked against."""

    table: Compat
    packages: tuple[Package, ...]
    apt_packages: tuple[str, ...]
    target_repo: str
    base_repo: str
    mirror: str
    pytorch_index: str | None
    check_base_tags: bool


@dataclass
class Exclusion:
    """One `exclude:` pattern: a combination matching every given field is not built (nor validated)."""

    path: Path_
    fields: dict[str, set[str]]
    used: bool = False


def excluded(exclusions: list[Exclusion], **known: str) -> bool:
    """True when a pattern that names only known fields matches them all (and marks it used)."""
    hit = False
    for pattern in exclusions:
        if pattern.fields.keys() <= known.keys() and all(known[k] in v for k, v in pattern.fields.items()):
            pattern.used = hit = True
    return hit


def os_packages(python: str) -> tuple[str, ...]:
    """What every image needs from the distribution: its python, venv, CA roots and useradd."""
    return (f"python{python}", f"python{python}-venv", "ca-certificates", "passwd")


def expand_entry(r: Reader, path: Path_, entry: dict[str, Any], settings: Settings, exclusions: list[Exclusion]) -> list[ImageSpec]:
    """Every image an entry defines; problems go to the reader, positioned at the value that causes them."""
    table = settings.table
    unknown_keys(r, path, entry, ENTRY_KEYS)
    for key in REQUIRED_ENTRY_KEYS:
        if key not in entry:
            r.add(path, f"missing required field '{key}'")
    if any(key not in entry for key in REQUIRED_ENTRY_KEYS):
        return []
    torches = versions(r, (*path, "torch"), entry["torch"])
    cudas = versions(r, (*path, "cuda"), entry["cuda"])
    pythons = versions(r, (*path, "python"), entry["python"])
    oses = versions(r, (*path, "os"), entry["os"]) if "os" in entry else None
    if "deprecated" in entry:
        boolean(r, (*path, "deprecated"), entry["deprecated"])
    kinds = {cuda == CPU for cuda, _ in cudas}
    if len(kinds) > 1:
        r.add((*path, "cuda"), "cpu and CUDA versions need separate entries (their flavours differ)")
        return []
    is_cpu = kinds == {True}
    valid = CPU_FLAVOURS if is_cpu else CUDA_FLAVOURS
    context = "for a CPU image" if is_cpu else "for a CUDA image"
    flavours = choices(r, (*path, "flavours"), entry.get("flavours", list(valid[:1])), valid, what="flavour", context=context)
    extra = packages(r, (*path, "packages"), entry.get("packages", []))
    apt = words(r, (*path, "apt_packages"), entry.get("apt_packages", []))
    omit = words(r, (*path, "omit"), entry.get("omit", []))
    for i, name in enumerate(omit):
        if name not in OMITTABLE:
            r.add((*path, "omit", i), f"can omit only {', '.join(OMITTABLE)}, not {name!r}")
    specs = []
    for torch_v, torch_path in torches:
        release = table.torch.get(torch_v)
        if release is None:
            known = sorted(table.torch, key=compat_mod.version_key)
            r.add(torch_path, f"unknown torch release {torch_v!r}{did_you_mean(torch_v, known)}; known: {known[0]} … {known[-1]}")
            continue
        if excluded(exclusions, torch=torch_v):
            continue
        if release.pending:
            r.add(torch_path, f"torch {torch_v} cannot be built yet: {release.pending}")
            continue
        for cuda_v, cuda_path in cudas:
            if excluded(exclusions, torch=torch_v, cuda=cuda_v):
                continue
            wheel = _wheel(r, cuda_path, table, release, cuda_v, omit)
            if wheel is None:
                continue
            for python_v, python_path in pythons:
                if excluded(exclusions, torch=torch_v, cuda=cuda_v, python=python_v):
                    continue
                if (missing := missing_python(table, release, wheel.family, python_v)) is not None:
                    r.add(python_path, f"torch {torch_v}: {missing}")
                    continue
                for os_v in _oses(r, oses, python_v, python_path, cuda_v, settings):
                    for flavour in flavours:
                        if excluded(exclusions, torch=torch_v, cuda=cuda_v, python=python_v, os=os_v, flavour=flavour):
                            continue
                        specs.append(_spec(r, path, release, wheel, python_v, os_v, flavour, settings, extra, apt))
    return specs


@dataclass(frozen=True)
class _Wheel:
    cuda: compat_mod.CudaRelease | None
    variant: str
    reason: str
    family: tuple[FamilyBuild, ...]


def _wheel(r: Reader, path: Path_, table: Compat, release: compat_mod.TorchRelease, cuda_v: str, omit: tuple[str, ...]) -> _Wheel | None:
    if cuda_v == CPU:
        if not release.cpu:
            r.add(path, f"torch {release.version} has no CPU build")
            return None
        cuda_rel, variant, reason = None, "cpu", "CPU image: torch CPU build"
    else:
        cuda_rel = table.cuda.get(cuda_v)
        if cuda_rel is None:
            known = sorted(table.cuda, key=compat_mod.version_key)
            r.add(path, f'unknown CUDA version {cuda_v!r}{did_you_mean(cuda_v, known)}; valid: {", ".join(known)} or "{CPU}"')
            return None
        found, reason = compat_mod.wheel_variant_for(release, cuda_v)
        if found is None:
            r.add(path, f"{reason}; it has {compat_mod.describe_variants(release)}")
            return None
        variant = found
    try:
        family = family_builds(table, release, variant, omit=omit)
    except FamilyError as exc:
        r.add(path, f"torch {release.version}: {exc}")
        return None
    return _Wheel(cuda_rel, variant, reason, family)


def _oses(r: Reader, oses: list[tuple[str, Path_]] | None, python_v: str, python_path: Path_, cuda_v: str, settings: Settings) -> list[str]:
    """The given os values that fit, or, when none are given, the newest os that ships this python."""
    table = settings.table
    cuda_rel = table.cuda.get(cuda_v)
    published = tuple(o for o in (cuda_rel.os if cuda_rel and settings.check_base_tags else table.os) if o in table.os)
    if oses is None:
        fitting = [name for name in published if table.os[name].python == python_v]
        if not fitting:
            shipped = ", ".join(f"{name} ({table.os[name].python})" for name in published)
            r.add(python_path, f"no base os ships python {python_v}; available: {shipped}")
            return []
        return [fitting[-1]]
    out = []
    for os_v, os_path in oses:
        osr = table.os.get(os_v)
        if osr is None:
            r.add(os_path, f"unknown os {os_v!r}{did_you_mean(os_v, list(table.os))}; valid: {', '.join(table.os)}")
        elif osr.python != python_v:
            r.add(python_path, f'{os_v} provides python {osr.python}, not {python_v}; use python "{osr.python}" or another os')
        elif cuda_rel is not None and settings.check_base_tags and os_v not in cuda_rel.os:
            r.add(os_path, f"nvidia/cuda has no CUDA {cuda_v} images for {os_v}; it has {', '.join(cuda_rel.os)}")
        else:
            out.append(os_v)
    return out


def _spec(
    r: Reader,
    path: Path_,
    release: compat_mod.TorchRelease,
    wheel: _Wheel,
    python_v: str,
    os_v: str,
    flavour: str,
    settings: Settings,
    extra: tuple[Package, ...],
    apt: tuple[str, ...],
) -> ImageSpec:
    osr = settings.table.os[os_v]
    base: BaseImage
    if wheel.cuda is None:
        base = compat_mod.os_base(osr, mirror=settings.mirror)
        cudnn, wheel_cuda = None, None
    else:
        kind = "base" if flavour == "runtime" else "devel"
        base = compat_mod.cuda_base(wheel.cuda, kind, os_v, repository=settings.base_repo, mirror=settings.mirror)
        cudnn, wheel_cuda = release.variants[wheel.variant], compat_mod.cuda_from_tag(wheel.variant)
    builds = {b.name: b for b in wheel.family}
    index = settings.pytorch_index
    spec = ImageSpec(
        name="",
        torch=release.version,
        torch_build=builds["torch"].version,
        torchvision=builds["torchvision"].version if "torchvision" in builds else None,
        torchaudio=builds["torchaudio"].version if "torchaudio" in builds else None,
        family=wheel.family,
        python=python_v,
        os=os_v,
        flavour=flavour,
        cuda=wheel.cuda.version if wheel.cuda else None,
        cuda_full=wheel.cuda.full if wheel.cuda else None,
        min_driver=wheel.cuda.min_driver if wheel.cuda else None,
        wheel_variant=wheel.variant,
        wheel_cuda=wheel_cuda,
        wheel_reason=wheel.reason,
        wheel_indexes={b.name: f"{index.rstrip('/')}/{b.variant}" for b in wheel.family if index and not b.on_pypi},
        cudnn=cudnn,
        base=base,
        glibc=osr.glibc,
        packages=settings.packages + extra,
        apt_packages=tuple(sorted(set(settings.apt_packages + apt + os_packages(python_v)))),
        repository=settings.target_repo,
        tags=(),
        source=(r.file, r.line(path)),
    )
    return replace(spec, name=full_tag(spec), tags=(full_tag(spec),))
