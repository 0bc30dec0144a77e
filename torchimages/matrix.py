"""Validate images.yaml against the compatibility table and expand it into ImageSpecs."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import compat as compat_mod
from .config import ConfigError, Document, Path_, Problem, did_you_mean, load_document, scalar_kind, version_problem
from .model import ImageSpec, Package
from .tags import full_tag, with_aliases

TOP_KEYS = ("target", "base", "wheels", "packages", "apt_packages", "images")
TARGET_KEYS = ("registry", "repository")
BASE_KEYS = ("repository", "mirror")
WHEELS_KEYS = ("pytorch_index", "port")
ENTRY_KEYS = ("torch", "cuda", "python", "os", "flavours", "packages", "apt_packages", "omit", "deprecated")
OMITTABLE = ("torchvision", "torchaudio")
CUDA_FLAVOURS = ("runtime", "devel")
MIRROR_ENV = "TORCH_IMAGES_BASE_MIRROR"

# Import names for requirements whose module differs from the distribution name.
KNOWN_MODULES = {"pyyaml": "yaml", "jupyter": "jupyterlab", "pillow": "PIL", "scikit-learn": "sklearn"}


@dataclass(frozen=True)
class Matrix:
    """A validated matrix: settings and every image it defines."""

    file: str
    images: tuple[ImageSpec, ...]
    deprecated: tuple[ImageSpec, ...]
    wheel_port: int


@dataclass(frozen=True)
class Filters:
    """Command-line selection; an empty tuple selects everything."""

    cuda: tuple[str, ...] = ()
    torch: tuple[str, ...] = ()
    python: tuple[str, ...] = ()
    flavour: tuple[str, ...] = ()

    def select(self, spec: ImageSpec) -> bool:
        cuda = spec.cuda or "cpu"
        return (
            (not self.cuda or cuda in self.cuda)
            and (not self.torch or spec.torch in self.torch or _minor(spec.torch) in self.torch)
            and (not self.python or spec.python in self.python)
            and (not self.flavour or spec.flavour in self.flavour)
        )


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def load_matrix(path: Path | str, *, base_mirror: str | None = None, use_environment: bool = True) -> Matrix:
    """Read and validate a matrix file; raises ConfigError with every problem found."""
    doc = load_document(path)
    return build_matrix(doc, base_mirror=base_mirror, use_environment=use_environment)


def build_matrix(doc: Document, *, base_mirror: str | None = None, use_environment: bool = True) -> Matrix:
    """Validate a parsed document and expand it.

    The base mirror comes from base_mirror, else $TORCH_IMAGES_BASE_MIRROR, else the file.
    """
    problems: list[Problem] = []
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError([doc.problem((), f"expected a mapping with keys {', '.join(TOP_KEYS)}, got {scalar_kind(data)}")])
    _unknown_keys(doc, (), data, TOP_KEYS, problems)
    target = _section(doc, data, "target", TARGET_KEYS, problems)
    base = _section(doc, data, "base", BASE_KEYS, problems)
    wheels = _section(doc, data, "wheels", WHEELS_KEYS, problems)
    repository = _string(doc, ("target", "repository"), target.get("repository"), problems, required=True)
    registry = _string(doc, ("target", "registry"), target.get("registry", ""), problems)
    base_repo = _string(doc, ("base", "repository"), base.get("repository", "nvidia/cuda"), problems)
    mirror = base_mirror if base_mirror is not None else (os.environ.get(MIRROR_ENV) if use_environment else None)
    if mirror is None:
        mirror = _string(doc, ("base", "mirror"), base.get("mirror", ""), problems)
    pytorch_index = wheels.get("pytorch_index", compat_mod.PYTORCH_INDEX)
    if pytorch_index is not None:
        pytorch_index = _string(doc, ("wheels", "pytorch_index"), pytorch_index, problems)
    port = wheels.get("port", 8731)
    if not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 65535:
        problems.append(doc.problem(("wheels", "port"), f"must be a port number 1024-65535, got {port!r}"))
        port = 8731
    common_packages = _packages(doc, ("packages",), data.get("packages", []), problems)
    common_apt = _words(doc, ("apt_packages",), data.get("apt_packages", []), problems)
    images_raw = data.get("images")
    if not isinstance(images_raw, list) or not images_raw:
        problems.append(doc.problem(("images",), "must be a non-empty list of image entries"))
        images_raw = []
    target_repo = f"{registry.rstrip('/')}/{repository}" if registry else repository
    specs: list[ImageSpec] = []
    deprecated: list[ImageSpec] = []
    for index, entry in enumerate(images_raw):
        path: Path_ = ("images", index)
        if not isinstance(entry, dict):
            problems.append(doc.problem(path, f"each image entry must be a mapping, got {scalar_kind(entry)}"))
            continue
        entry_specs = _expand_entry(
            doc, path, entry, problems,
            common_packages=common_packages, common_apt=common_apt, target_repo=target_repo,
            base_repo=base_repo, mirror=mirror, pytorch_index=pytorch_index,
        )  # fmt: skip
        (deprecated if entry.get("deprecated") is True else specs).extend(entry_specs)
    _check_unique_tags(doc, specs + deprecated, problems)
    if problems:
        raise ConfigError(problems)
    aliased = with_aliases(specs + deprecated, released=len(specs))
    specs, deprecated = aliased[: len(specs)], aliased[len(specs) :]
    return Matrix(file=doc.file, images=tuple(specs), deprecated=tuple(deprecated), wheel_port=port)


def _expand_entry(
    doc: Document,
    path: Path_,
    entry: dict[str, Any],
    problems: list[Problem],
    *,
    common_packages: tuple[Package, ...],
    common_apt: tuple[str, ...],
    target_repo: str,
    base_repo: str,
    mirror: str,
    pytorch_index: str | None,
) -> list[ImageSpec]:
    table = compat_mod.load_compat()
    before = len(problems)
    _unknown_keys(doc, path, entry, ENTRY_KEYS, problems)
    bad_keys = set()
    for key in ("torch", "cuda", "python", "os"):
        if key not in entry:
            problems.append(doc.problem(path, f"missing required field '{key}'"))
            bad_keys.add(key)
        elif (bad := version_problem(doc, (*path, key), entry[key])) is not None:
            problems.append(bad)
            bad_keys.add(key)
    if "deprecated" in entry and not isinstance(entry["deprecated"], bool):
        problems.append(doc.problem((*path, "deprecated"), f"must be true or false, got {scalar_kind(entry['deprecated'])}"))
    if bad_keys - {"python"}:
        return []  # the combination checks below need torch, cuda and os
    torch_v, cuda_v, os_v = (str(entry[k]) for k in ("torch", "cuda", "os"))
    python_v = None if "python" in bad_keys else str(entry["python"])
    release = table.torch.get(torch_v)
    if release is None:
        known = sorted(table.torch, key=compat_mod.version_key)
        problems.append(
            doc.problem((*path, "torch"), f"unknown torch release {torch_v!r}{did_you_mean(torch_v, known)}; "
                        f"known: {known[0]} … {known[-1]}")
        )  # fmt: skip
        return []
    osr = table.os.get(os_v)
    if osr is None:
        problems.append(
            doc.problem((*path, "os"), f"unknown os {os_v!r}{did_you_mean(os_v, list(table.os))}; valid: {', '.join(table.os)}")
        )
        return []
    if python_v is not None and python_v not in release.python:
        problems.append(
            doc.problem(
                (*path, "python"), f"torch {torch_v} has no wheels for python {python_v}; it has {', '.join(release.python)}"
            )
        )
    if python_v is not None and python_v != osr.python:
        problems.append(
            doc.problem(
                (*path, "python"), f'{os_v} provides python {osr.python}, not {python_v}; use python "{osr.python}" or another os'
            )
        )
    flavours = _flavours(doc, path, entry, cuda_v, problems)
    if cuda_v == "cpu":
        cuda_rel, variant, reason = None, "cpu", "CPU image: torch CPU build"
        if not release.cpu:
            problems.append(doc.problem((*path, "cuda"), f"torch {torch_v} has no CPU build"))
    else:
        cuda_rel = table.cuda.get(cuda_v)
        if cuda_rel is None:
            known = sorted(table.cuda, key=compat_mod.version_key)
            problems.append(
                doc.problem((*path, "cuda"), f"unknown CUDA version {cuda_v!r}{did_you_mean(cuda_v, known)}; "
                            f"valid: {', '.join(known)} or \"cpu\"")
            )  # fmt: skip
            return []
        found, reason = compat_mod.wheel_variant_for(release, cuda_v)
        if found is None:
            problems.append(doc.problem((*path, "cuda"), f"{reason}; it has {compat_mod.describe_variants(release)}"))
            return []
        variant = found
    if len(problems) > before or python_v is None:
        return []
    extra = _packages(doc, (*path, "packages"), entry.get("packages", []), problems)
    apt = _words(doc, (*path, "apt_packages"), entry.get("apt_packages", []), problems)
    omit = _words(doc, (*path, "omit"), entry.get("omit", []), problems)
    for i, name in enumerate(omit):
        if name not in OMITTABLE:
            problems.append(doc.problem((*path, "omit", i), f"can omit only {', '.join(OMITTABLE)}, not {name!r}"))
    if cuda_rel is None:
        base_upstream = osr.image
        wheel_index = f"{pytorch_index.rstrip('/')}/cpu" if pytorch_index else None
        torch_build, cudnn, wheel_cuda = f"{torch_v}+cpu", None, None
    else:
        base_upstream = f"{base_repo}:{cuda_rel.full}-{'base' if flavours[0] == 'runtime' else 'devel'}-{os_v}"
        wheel_index = compat_mod.wheel_index_for(release, variant, pytorch_index)
        torch_build = compat_mod.torch_requirement(release, variant).split("==", 1)[1]
        cudnn, wheel_cuda = release.variants[variant], compat_mod.cuda_from_tag(variant)
    specs = []
    for flavour in flavours:
        if cuda_rel is not None:
            kind = "base" if flavour == "runtime" else "devel"
            base_upstream = f"{base_repo}:{cuda_rel.full}-{kind}-{os_v}"
        spec = ImageSpec(
            name="",
            torch=torch_v,
            torch_build=torch_build,
            torchvision=None if "torchvision" in omit else release.torchvision,
            torchaudio=None if "torchaudio" in omit else release.torchaudio,
            python=python_v,
            os=os_v,
            flavour=flavour,
            cuda=cuda_v if cuda_rel else None,
            cuda_full=cuda_rel.full if cuda_rel else None,
            wheel_variant=variant,
            wheel_cuda=wheel_cuda,
            wheel_reason=reason,
            wheel_index=wheel_index,
            cudnn=cudnn,
            base_image=f"{mirror.rstrip('/')}/{base_upstream}" if mirror else base_upstream,
            base_upstream=base_upstream,
            glibc=osr.glibc,
            packages=common_packages + extra,
            apt_packages=tuple(sorted(set(common_apt + apt + os_packages(python_v)))),
            repository=target_repo,
            tags=(),
            source=(doc.file, doc.where(path)[0]),
        )
        specs.append(replace(spec, name=full_tag(spec), tags=(full_tag(spec),)))
    return specs


def os_packages(python: str) -> tuple[str, ...]:
    """What every image needs from the distribution: its python, venv, CA roots and useradd."""
    return (f"python{python}", f"python{python}-venv", "ca-certificates", "passwd")


def _flavours(doc: Document, path: Path_, entry: dict[str, Any], cuda_v: str, problems: list[Problem]) -> tuple[str, ...]:
    valid = ("cpu",) if cuda_v == "cpu" else CUDA_FLAVOURS
    raw = entry.get("flavours", list(valid[:1]))
    if not isinstance(raw, list) or not raw:
        problems.append(doc.problem((*path, "flavours"), f"must be a list of {', '.join(valid)}"))
        return ()
    out: list[str] = []
    for i, item in enumerate(raw):
        if item not in valid:
            problems.append(
                doc.problem((*path, "flavours", i), f"unknown flavour {item!r}{did_you_mean(str(item), valid)}; "
                            f"valid for {'a CPU' if cuda_v == 'cpu' else 'a CUDA'} image: {', '.join(valid)}")
            )  # fmt: skip
        elif item in out:
            problems.append(doc.problem((*path, "flavours", i), f"flavour {item!r} given twice"))
        else:
            out.append(item)
    return tuple(out)


def _section(doc: Document, data: dict[str, Any], key: str, keys: tuple[str, ...], problems: list[Problem]) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.append(doc.problem((key,), f"must be a mapping with keys {', '.join(keys)}, got {scalar_kind(value)}"))
        return {}
    _unknown_keys(doc, (key,), value, keys, problems)
    return value


def _unknown_keys(doc: Document, path: Path_, data: dict[str, Any], keys: tuple[str, ...], problems: list[Problem]) -> None:
    for key in data:
        if key not in keys:
            problems.append(
                doc.problem((*path, key), f"unknown key {key!r}{did_you_mean(key, keys)}; valid: {', '.join(keys)}", key=True)
            )


def _string(doc: Document, path: Path_, value: Any, problems: list[Problem], *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        problems.append(doc.problem(path, f"must be a string, got {scalar_kind(value)}"))
        return ""
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        problems.append(doc.problem(path, f"must not contain whitespace or control characters: {value!r}"))
        return ""
    return value


def _words(doc: Document, path: Path_, value: Any, problems: list[Problem]) -> tuple[str, ...]:
    if not isinstance(value, list):
        problems.append(doc.problem(path, f"must be a list of names, got {scalar_kind(value)}"))
        return ()
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item or not all(ch.isalnum() or ch in "+-._:" for ch in item):
            problems.append(doc.problem((*path, i), f"not a package name: {item!r}"))
        else:
            out.append(item)
    return tuple(out)


def _packages(doc: Document, path: Path_, value: Any, problems: list[Problem]) -> tuple[Package, ...]:
    """Strings are pip requirements; {pip: ..., import: ...} names the module when it differs."""
    if not isinstance(value, list):
        problems.append(doc.problem(path, f"must be a list of pip requirements, got {scalar_kind(value)}"))
        return ()
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            _unknown_keys(doc, (*path, i), item, ("pip", "import"), problems)
            req, module = item.get("pip"), item.get("import")
        else:
            req, module = item, None
        if not isinstance(req, str) or not req.strip() or any(ch.isspace() or ch in "\"'`$\\;" for ch in req):
            problems.append(doc.problem((*path, i), f'not a pip requirement: {req!r} (write e.g. "pandas" or "scipy>=1.11")'))
            continue
        dist = req
        for sep in "<>=!~[;@":
            dist = dist.split(sep, 1)[0]
        module = module if isinstance(module, str) else KNOWN_MODULES.get(dist.lower(), dist.replace("-", "_"))
        out.append(Package(requirement=req, module=module))
    return tuple(out)


def _check_unique_tags(doc: Document, specs: list[ImageSpec], problems: list[Problem]) -> None:
    seen: dict[str, ImageSpec] = {}
    for spec in specs:
        for tag in spec.tags:
            if tag in seen:
                first = seen[tag]
                problems.append(
                    Problem(
                        doc.file,
                        spec.source[1],
                        3,
                        "images",
                        f"tag {tag!r} is also produced by the entry on line {first.source[1]}",
                    )
                )
            else:
                seen[tag] = spec
