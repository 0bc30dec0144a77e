"""Tag names: the full tag, and short aliases assigned across the whole matrix."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

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


def with_aliases(specs: Iterable[ImageSpec]) -> list[ImageSpec]:
    """Give each short alias to one image: the one with the newest python (then the newest os)."""
    specs = list(specs)
    owner: dict[str, ImageSpec] = {}
    for spec in specs:
        alias = short_tag(spec)
        best = owner.get(alias)
        if best is None or (version_key(spec.python), spec.os) > (version_key(best.python), best.os):
            owner[alias] = spec
    out = []
    for spec in specs:
        tags = [full_tag(spec)]
        alias = short_tag(spec)
        if owner[alias] is spec:
            tags.append(alias)
        out.append(replace(spec, name=tags[0], tags=tuple(tags)))
    return out
