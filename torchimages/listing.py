"""invoke matrix output: a table for people, JSON for tools, a GitHub Actions matrix for CI fan-out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .config import mask_credentials
from .lock import Lock
from .model import ImageSpec
from .wheels import WheelError


def spec_record(spec: ImageSpec) -> dict[str, Any]:
    """What `invoke matrix --format json` shows for one image."""
    return {
        "name": spec.name,
        "torch": spec.torch,
        "torch_build": spec.torch_build,
        "torchvision": spec.torchvision,
        "torchaudio": spec.torchaudio,
        "python": spec.python,
        "cuda": spec.cuda,
        "wheel_cuda": spec.wheel_cuda,
        "wheel_variant": spec.wheel_variant,
        "wheel_reason": spec.wheel_reason,
        "wheel_index": mask_credentials(spec.wheel_index) if spec.wheel_index else "pip default (PyPI)",
        "requirements": [b.requirement for b in spec.family],
        "wheel_indexes": {name: mask_credentials(url) for name, url in spec.wheel_indexes.items()},
        "cudnn": spec.cudnn,
        "min_driver": spec.min_driver,
        "flavour": spec.flavour,
        "os": spec.os,
        "base_image": spec.base_image,
        "tags": list(spec.refs),
    }


def format_matrix(specs: Sequence[ImageSpec], fmt: str, *, config: str) -> str:
    """Render the selected images in one of: table, json, github."""
    if fmt == "json":
        return json.dumps({"images": [spec_record(s) for s in specs]}, indent=2)
    if fmt == "github":
        # One job per venv: the flavours of one torch, python and CUDA build on one runner, so they share the venv
        # stage and the registry stores their venv layer once. Each job selects its slice with the build filters.
        groups: dict[tuple[str, str, str], list[ImageSpec]] = {}
        for s in specs:
            groups.setdefault((s.cuda or "cpu", s.torch, s.python), []).append(s)
        include = [
            {
                "name": f"{torch}-py{python}-" + (cuda if cuda == "cpu" else f"cuda{cuda}"),
                "config": config,
                "cuda": cuda,
                "torch": torch,
                "python": python,
                "flavours": " ".join(dict.fromkeys(s.flavour for s in group)),
            }
            for (cuda, torch, python), group in groups.items()
        ]
        return json.dumps({"include": include}, separators=(",", ":"))
    header = ("image", "torch", "python", "base CUDA", "wheel", "cuDNN", "base image")
    rows = [(s.name, s.torch_build, s.python, s.cuda or "cpu", s.wheel_variant, s.cudnn or "-", s.base_image) for s in specs]
    lines = _table(header, rows)
    reasons = [f"  {s.name}: {s.wheel_reason}" for s in specs if s.cuda and s.wheel_variant != f"cu{s.cuda.replace('.', '')}"]
    if reasons:
        lines += ["", "wheels that differ from the base CUDA:", *reasons]
    return "\n".join(lines)


def format_locks(specs: Sequence[ImageSpec], results: dict[str, Lock | WheelError], fmt: str) -> str:
    """invoke lock output: per image, whether it resolved and to which torch, torchvision and torchaudio."""
    records: list[dict[str, Any]] = []
    for spec in specs:
        outcome = results[spec.name]
        resolved = isinstance(outcome, Lock)
        records.append(
            {
                "name": spec.name,
                "resolved": resolved,
                "error": None if resolved else str(outcome),
                "packages": outcome.packages if isinstance(outcome, Lock) else {},
            }
        )
    if fmt == "json":
        return json.dumps({"images": records}, indent=2)
    header = ("image", "torch", "torchvision", "torchaudio", "files")
    rows = [
        (r["name"], *(r["packages"].get(n, "-") for n in ("torch", "torchvision", "torchaudio")), str(len(r["packages"])))
        for r in records
        if r["resolved"]
    ]
    lines = _table(header, rows)
    failures = [f"  {r['name']}: {r['error']}" for r in records if not r["resolved"]]
    if failures:
        lines += ["", "did not resolve:", *failures]
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns two spaces apart, the header first."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
