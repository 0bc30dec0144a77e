"""Tag names: the full tag, and short aliases assigned across the whole matrix."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from .compat import version_key
from .model import ImageSpec


def full_tag(spec: ImageSpec) -> str:
    """2.11.0-py3.12-cuda13.0-cudnn9-runtime-ubuntu24.04, or 2.13.0-py3.11-cpu-debian12."""
    if spec.cuda is None:
        return f"{spec.torch}-py{spec.python}-cpu-{spec.os}"
    return f"{spec.torch}-py{spec.python}-cuda{spec.cuda}-cudnn{spec.cudnn}-{spec.flavour}-{spec.os}"


def short_tag(spec: ImageSpec) -> str:
    """2.11.0-cuda13.0-runtime, or 2.13.0-cpu."""
    return f"{spec.torch}-cpu" if spec.cuda is None else f"{spec.torch}-cuda{spec.cuda}-{spec.flavour}"


def latest_tag(spec: ImageSpec) -> str:
    """latest (CUDA runtime), latest-devel, latest-cpu."""
    return {"runtime": "latest", "devel": "latest-devel", "cpu": "latest-cpu"}[spec.flavour]


def _python_rank(spec: ImageSpec) -> tuple[Any, ...]:
    return (version_key(spec.python), spec.os)


def _newest(spec: ImageSpec) -> tuple[Any, ...]:
    return (version_key(spec.torch), version_key(spec.cuda or "0"), version_key(spec.python), spec.os)


def with_aliases(specs: Iterable[ImageSpec], *, released: int | None = None) -> list[ImageSpec]:
    """Add the short alias and the latest tags, each to exactly one image.

    A short alias goes to the image with the newest python (then os) among those sharing it;
    latest / latest-devel / latest-cpu to the newest torch, then CUDA, then python, of that flavour.
    Only the first `released` specs (the ones that are not deprecated) compete for aliases.
    """
    specs = list(specs)
    competing = specs if released is None else specs[:released]
    owner: dict[str, ImageSpec] = {}
    for alias_of, rank in ((short_tag, _python_rank), (latest_tag, _newest)):
        for spec in competing:
            best = owner.get(alias_of(spec))
            if best is None or rank(spec) > rank(best):
                owner[alias_of(spec)] = spec
    out = []
    for spec in specs:
        tags = [full_tag(spec)] + [alias for alias in (short_tag(spec), latest_tag(spec)) if owner.get(alias) is spec]
        out.append(replace(spec, name=tags[0], tags=tuple(tags)))
    return out
