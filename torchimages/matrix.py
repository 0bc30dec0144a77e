"""Validate images.yaml against the compatibility table and expand it into ImageSpecs."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import compat as compat_mod
from .config import ConfigError, Document, Path_, Problem, Reader, load_document, scalar_kind
from .entries import Exclusion, Settings, expand_entry
from .model import ImageSpec
from .schema import boolean, packages, reference, section, string, unknown_keys, versions, words
from .tags import with_aliases

TOP_KEYS = ("target", "base", "wheels", "packages", "apt_packages", "exclude", "images")
TARGET_KEYS = ("registry", "repository")
BASE_KEYS = ("repository", "mirror", "check_tags")
WHEELS_KEYS = ("pytorch_index",)
EXCLUDE_KEYS = ("torch", "cuda", "python", "os", "flavour")
MIRROR_ENV = "TORCH_IMAGES_BASE_MIRROR"


@dataclass(frozen=True)
class Matrix:
    """A validated matrix: every image it builds and the deprecated ones it keeps."""

    file: str
    images: tuple[ImageSpec, ...]
    deprecated: tuple[ImageSpec, ...]


@dataclass(frozen=True)
class Filters:
    """Command-line selection; an empty tuple selects everything."""

    cuda: tuple[str, ...] = ()
    torch: tuple[str, ...] = ()
    python: tuple[str, ...] = ()
    flavour: tuple[str, ...] = ()

    def select(self, spec: ImageSpec) -> bool:
        return (
            (not self.cuda or (spec.cuda or "cpu") in self.cuda)
            and (not self.torch or spec.torch in self.torch or _minor(spec.torch) in self.torch)
            and (not self.python or spec.python in self.python)
            and (not self.flavour or spec.flavour in self.flavour)
        )


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def load_matrix(
    path: Path | str, *, base_mirror: str | None = None, use_environment: bool = True, pytorch_index: str | None = None
) -> Matrix:
    """Read and validate a matrix file; raises ConfigError with every problem found."""
    doc = load_document(path)
    return build_matrix(doc, base_mirror=base_mirror, use_environment=use_environment, pytorch_index=pytorch_index)


def build_matrix(
    doc: Document,
    *,
    base_mirror: str | None = None,
    use_environment: bool = True,
    pytorch_index: str | None = None,
    table: compat_mod.Compat | None = None,
) -> Matrix:
    """Validate a parsed document and expand it.

    The base mirror comes from base_mirror, else $TORCH_IMAGES_BASE_MIRROR, else the file; the PyTorch index
    from pytorch_index (the test environment's replica), else the file.
    """
    r = Reader(doc)
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError([doc.problem((), f"expected a mapping with keys {', '.join(TOP_KEYS)}, got {scalar_kind(data)}")])
    unknown_keys(r, (), data, TOP_KEYS)
    settings = _settings(r, data, base_mirror=base_mirror, use_environment=use_environment, pytorch_index=pytorch_index)
    if table is not None:
        settings = replace(settings, table=table)
    images_raw = data.get("images")
    if not isinstance(images_raw, list) or not images_raw:
        r.add(("images",), "must be a non-empty list of image entries")
        images_raw = []
    exclusions = _exclusions(r, data.get("exclude", []))
    specs: list[ImageSpec] = []
    deprecated: list[ImageSpec] = []
    for index, entry in enumerate(images_raw):
        path: Path_ = ("images", index)
        if not isinstance(entry, dict):
            r.add(path, f"each image entry must be a mapping, got {scalar_kind(entry)}")
            continue
        expanded = expand_entry(r, path, entry, settings, exclusions)
        (deprecated if entry.get("deprecated") is True else specs).extend(expanded)
    for e in exclusions:
        if not e.used:
            r.add(e.path, "matches no image; remove it or fix its fields")
    _check_unique_tags(r, specs + deprecated)
    if r.problems:
        raise ConfigError(list(dict.fromkeys(r.problems)))  # a bad value shared by many combinations is told once
    aliased = with_aliases(specs + deprecated, released=len(specs))
    return Matrix(file=doc.file, images=tuple(aliased[: len(specs)]), deprecated=tuple(aliased[len(specs) :]))


def _settings(r: Reader, data: dict[str, Any], *, base_mirror: str | None, use_environment: bool, pytorch_index: str | None) -> Settings:
    target = section(r, data, "target", TARGET_KEYS)
    base = section(r, data, "base", BASE_KEYS)
    if isinstance(data.get("wheels"), dict) and "port" in data["wheels"]:
        r.add(("wheels", "port"), "is gone: builds get their wheels in the build context, not from a server on a port; remove it")
        data = {**data, "wheels": {key: value for key, value in data["wheels"].items() if key != "port"}}
    wheels = section(r, data, "wheels", WHEELS_KEYS)
    repository = reference(r, ("target", "repository"), target.get("repository"), "repository", required=True)
    registry = reference(r, ("target", "registry"), target.get("registry", ""), "registry")
    mirror_path: Path_ = ("base", "mirror")
    mirror = base_mirror if base_mirror is not None else (os.environ.get(MIRROR_ENV) if use_environment else None)
    if mirror is not None:  # from outside the file: checked all the same, it goes into FROM lines
        outside = Reader(r.doc)
        mirror = reference(outside, mirror_path, mirror, "mirror")
        r.problems += [replace(p, field=f"{p.field} (from ${MIRROR_ENV} or the command line)") for p in outside.problems]
    else:
        mirror = reference(r, mirror_path, base.get("mirror", ""), "mirror")
    if pytorch_index is None:
        pytorch_index = wheels.get("pytorch_index", compat_mod.PYTORCH_INDEX)
        if pytorch_index is not None:
            pytorch_index = string(r, ("wheels", "pytorch_index"), pytorch_index)
    settings = Settings(
        table=compat_mod.load_compat(),
        packages=packages(r, ("packages",), data.get("packages", [])),
        apt_packages=words(r, ("apt_packages",), data.get("apt_packages", [])),
        target_repo=f"{registry.rstrip('/')}/{repository}" if registry else repository,
        base_repo=reference(r, ("base", "repository"), base.get("repository", "nvidia/cuda"), "repository", required=True),
        mirror=mirror,
        pytorch_index=pytorch_index,
        check_base_tags=boolean(r, ("base", "check_tags"), base.get("check_tags", True)),
    )
    return settings


def _exclusions(r: Reader, raw: Any) -> list[Exclusion]:
    """exclude: a list of {torch, cuda, python, os, flavour} patterns, each value a version or a list."""
    if not isinstance(raw, list):
        r.add(("exclude",), f"must be a list of patterns, got {scalar_kind(raw)}")
        return []
    out = []
    for index, pattern in enumerate(raw):
        path: Path_ = ("exclude", index)
        if not isinstance(pattern, dict) or not pattern:
            r.add(path, f"must be a mapping with some of {', '.join(EXCLUDE_KEYS)}")
            continue
        unknown_keys(r, path, pattern, EXCLUDE_KEYS)
        fields = {key: {v for v, _ in versions(r, (*path, key), value)} for key, value in pattern.items() if key in EXCLUDE_KEYS}
        out.append(Exclusion(path=path, fields=fields))
    return out


def _check_unique_tags(r: Reader, specs: list[ImageSpec]) -> None:
    seen: dict[str, ImageSpec] = {}
    for spec in specs:
        for tag in spec.tags:
            first = seen.setdefault(tag, spec)
            if first is not spec:
                message = f"tag {tag!r} is also produced by the entry on line {first.source[1]}"
                r.problems.append(Problem(r.file, spec.source[1], 3, "images", message))
