"""Expand one entry of images.yaml (torch × cuda × python × os × flavours) into ImageSpecs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from . import compat as compat_mod
from .config import Document, Path_, Problem, did_you_mean
from .model import ImageSpec, Package
from .schema import boolean, choices, packages, unknown_keys, versions, words
from .tags import full_tag

ENTRY_KEYS = ("torch", "cuda", "python", "os", "flavours", "packages", "apt_packages", "omit", "deprecated")
OMITTABLE = ("torchvision", "torchaudio")
CUDA_FLAVOURS = ("runtime", "devel")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Matrix-wide settings every entry uses."""

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


def expand_entry(
    doc: Document, path: Path_, entry: dict[str, Any], settings: Settings, exclusions: list[Exclusion], problems: list[Problem]
) -> list[ImageSpec]:
    """Every image an entry defines; problems go to the list, positioned at the value that causes them."""
    table = compat_mod.load_compat()
    unknown_keys(doc, path, entry, ENTRY_KEYS, problems)
    for key in ("torch", "cuda", "python"):
        if key not in entry:
            problems.append(doc.problem(path, f"missing required field '{key}'"))
    if any(key not in entry for key in ("torch", "cuda", "python")):
        return []
    torches = versions(doc, (*path, "torch"), entry["torch"], problems)
    cudas = versions(doc, (*path, "cuda"), entry["cuda"], problems)
    pythons = versions(doc, (*path, "python"), entry["python"], problems)
    oses = versions(doc, (*path, "os"), entry["os"], problems) if "os" in entry else None
    if "deprecated" in entry:
        boolean(doc, (*path, "deprecated"), entry["deprecated"], problems)
    kinds = {cuda == "cpu" for cuda, _ in cudas}
    if len(kinds) > 1:
        problems.append(doc.problem((*path, "cuda"), "cpu and CUDA versions need separate entries (their flavours differ)"))
        return []
    is_cpu = kinds == {True}
    valid = ("cpu",) if is_cpu else CUDA_FLAVOURS
    context = "for a CPU image" if is_cpu else "for a CUDA image"
    flavours = choices(doc, (*path, "flavours"), entry.get("flavours", list(valid[:1])), valid, problems, what="flavour", context=context)
    extra = packages(doc, (*path, "packages"), entry.get("packages", []), problems)
    apt = words(doc, (*path, "apt_packages"), entry.get("apt_packages", []), problems)
    omit = words(doc, (*path, "omit"), entry.get("omit", []), problems)
    for i, name in enumerate(omit):
        if name not in OMITTABLE:
            problems.append(doc.problem((*path, "omit", i), f"can omit only {', '.join(OMITTABLE)}, not {name!r}"))
    specs = []
    for torch_v, torch_path in torches:
        release = table.torch.get(torch_v)
        if release is None:
            known = sorted(table.torch, key=compat_mod.version_key)
            problems.append(
                doc.problem(
                    torch_path,
                    f"unknown torch release {torch_v!r}{did_you_mean(torch_v, known)}; known: {known[0]} … {known[-1]}",
                )
            )
            continue
        if excluded(exclusions, torch=torch_v):
            continue
        if release.pending:
            problems.append(doc.problem(torch_path, f"torch {torch_v} cannot be built yet: {release.pending}"))
            continue
        for cuda_v, cuda_path in cudas:
            if excluded(exclusions, torch=torch_v, cuda=cuda_v):
                continue
            wheel = _wheel(doc, cuda_path, release, cuda_v, settings, problems)
            if wheel is None:
                continue
            for python_v, python_path in pythons:
                if excluded(exclusions, torch=torch_v, cuda=cuda_v, python=python_v):
                    continue
                if python_v not in release.python:
                    problems.append(
                        doc.problem(
                            python_path,
                            f"torch {torch_v} has no wheels for python {python_v}; it has {', '.join(release.python)}",
                        )
                    )
                    continue
                for os_v in _oses(doc, oses, python_v, python_path, cuda_v, settings, problems):
                    for flavour in flavours:
                        if excluded(exclusions, torch=torch_v, cuda=cuda_v, python=python_v, os=os_v, flavour=flavour):
                            continue
                        spec = _spec(doc, path, release, wheel, python_v, os_v, flavour, settings, extra, apt, omit)
                        specs.append(spec)
    return specs


@dataclass(frozen=True)
class _Wheel:
    cuda: compat_mod.CudaRelease | None
    variant: str
    reason: str


def _wheel(
    doc: Document, path: Path_, release: compat_mod.TorchRelease, cuda_v: str, settings: Settings, problems: list[Problem]
) -> _Wheel | None:
    table = compat_mod.load_compat()
    if cuda_v == "cpu":
        if not release.cpu:
            problems.append(doc.problem(path, f"torch {release.version} has no CPU build"))
            return None
        return _Wheel(None, "cpu", "CPU image: torch CPU build")
    cuda_rel = table.cuda.get(cuda_v)
    if cuda_rel is None:
        known = sorted(table.cuda, key=compat_mod.version_key)
        problems.append(
            doc.problem(path, f'unknown CUDA version {cuda_v!r}{did_you_mean(cuda_v, known)}; valid: {", ".join(known)} or "cpu"')
        )
        return None
    variant, reason = compat_mod.wheel_variant_for(release, cuda_v)
    if variant is None:
        problems.append(doc.problem(path, f"{reason}; it has {compat_mod.describe_variants(release)}"))
        return None
    return _Wheel(cuda_rel, variant, reason)


def _oses(
    doc: Document,
    oses: list[tuple[str, Path_]] | None,
    python_v: str,
    python_path: Path_,
    cuda_v: str,
    settings: Settings,
    problems: list[Problem],
) -> list[str]:
    """The given os values that fit, or, when none are given, the newest os that ships this python."""
    table = compat_mod.load_compat()
    cuda_rel = table.cuda.get(cuda_v)
    published = tuple(o for o in (cuda_rel.os if cuda_rel and settings.check_base_tags else table.os) if o in table.os)
    if oses is None:
        fitting = [name for name in published if table.os[name].python == python_v]
        if not fitting:
            shipped = ", ".join(f"{name} ({table.os[name].python})" for name in published)
            problems.append(doc.problem(python_path, f"no base os ships python {python_v}; available: {shipped}"))
            return []
        return [fitting[-1]]
    out = []
    for os_v, os_path in oses:
        osr = table.os.get(os_v)
        if osr is None:
            problems.append(doc.problem(os_path, f"unknown os {os_v!r}{did_you_mean(os_v, list(table.os))}; valid: {', '.join(table.os)}"))
        elif osr.python != python_v:
            problems.append(
                doc.problem(python_path, f'{os_v} provides python {osr.python}, not {python_v}; use python "{osr.python}" or another os')
            )
        elif cuda_rel is not None and settings.check_base_tags and os_v not in cuda_rel.os:
            problems.append(doc.problem(os_path, f"nvidia/cuda has no CUDA {cuda_v} images for {os_v}; it has {', '.join(cuda_rel.os)}"))
        else:
            out.append(os_v)
    return out


def _spec(
    doc: Document,
    path: Path_,
    release: compat_mod.TorchRelease,
    wheel: _Wheel,
    python_v: str,
    os_v: str,
    flavour: str,
    settings: Settings,
    extra: tuple[Package, ...],
    apt: tuple[str, ...],
    omit: tuple[str, ...],
) -> ImageSpec:
    table = compat_mod.load_compat()
    osr = table.os[os_v]
    index = settings.pytorch_index
    if wheel.cuda is None:
        base_upstream = osr.image
        wheel_index = f"{index.rstrip('/')}/cpu" if index else None
        torch_build, cudnn, wheel_cuda = f"{release.version}+cpu", None, None
    else:
        kind = "base" if flavour == "runtime" else "devel"
        base_upstream = f"{settings.base_repo}:{wheel.cuda.full}-{kind}-{os_v}"
        wheel_index = compat_mod.wheel_index_for(release, wheel.variant, index)
        torch_build = compat_mod.torch_requirement(release, wheel.variant).split("==", 1)[1]
        cudnn, wheel_cuda = release.variants[wheel.variant], compat_mod.cuda_from_tag(wheel.variant)
    spec = ImageSpec(
        name="",
        torch=release.version,
        torch_build=torch_build,
        torchvision=None if "torchvision" in omit else release.torchvision,
        torchaudio=None if "torchaudio" in omit else release.torchaudio,
        python=python_v,
        os=os_v,
        flavour=flavour,
        cuda=wheel.cuda.version if wheel.cuda else None,
        cuda_full=wheel.cuda.full if wheel.cuda else None,
        min_driver=wheel.cuda.min_driver if wheel.cuda else None,
        wheel_variant=wheel.variant,
        wheel_cuda=wheel_cuda,
        wheel_reason=wheel.reason,
        wheel_index=wheel_index,
        cudnn=cudnn,
        base_image=f"{settings.mirror.rstrip('/')}/{base_upstream}" if settings.mirror else base_upstream,
        base_upstream=base_upstream,
        glibc=osr.glibc,
        packages=settings.packages + extra,
        apt_packages=tuple(sorted(set(settings.apt_packages + apt + os_packages(python_v)))),
        repository=settings.target_repo,
        tags=(),
        source=(doc.file, doc.where(path)[0]),
    )
    return replace(spec, name=full_tag(spec), tags=(full_tag(spec),))
