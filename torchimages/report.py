"""build/report.json for machines and build/report.md for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .model import BuildResult


def result_record(result: BuildResult) -> dict[str, Any]:
    """One image as report.json shows it."""
    spec, seen = result.spec, result.verify
    return {
        "name": spec.name,
        "status": result.status + (" (registry)" if result.registry_digest else ""),
        "image_id": result.image_id,
        "tags": list(result.tags),
        "verified": result.verified,
        "pushed": [{"ref": p.ref, "digest": p.digest} for p in result.pushed],
        "registry_digest": result.registry_digest,
        "error": result.error,
        "torch": seen.torch if seen else spec.torch_build,
        "torchvision": seen.packages.get("torchvision") if seen else spec.torchvision,
        "torchaudio": seen.packages.get("torchaudio") if seen else spec.torchaudio,
        "cuda": seen.torch_cuda if seen else spec.wheel_cuda,
        "cudnn": seen.cudnn if seen else spec.cudnn,
        "python": seen.python if seen else spec.python,
        "flavour": spec.flavour,
        "base_image": spec.base_upstream,
        "size": result.size,
        "seconds": round(result.seconds, 1),
    }


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.2f} {unit}"
        value /= 1000
    return f"{size} B"


def markdown(records: Sequence[dict[str, Any]]) -> str:
    """A table a person reads."""
    lines = [
        "# torch-images build report",
        "",
        "| image | status | torch | CUDA | cuDNN | python | size | verified | digest |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        digest = (r["registry_digest"] or (r["pushed"][0]["digest"] if r["pushed"] else "-"))[:19]
        lines.append(
            f"| {r['name']} | {r['status']} | {r['torch']} | {r['cuda'] or 'cpu'} | {r['cudnn'] or '-'} | {r['python']} "
            f"| {human_size(r['size'])} | {'yes' if r['verified'] else 'no'} | {digest} |"
        )
    errors = [r for r in records if r["error"]]
    if errors:
        lines += ["", "## Failures", ""]
        lines += [f"- **{r['name']}**: {r['error'].splitlines()[0]}" for r in errors]
    return "\n".join(lines) + "\n"


def write_reports(results: Sequence[BuildResult], out_dir: Path) -> tuple[Path, Path]:
    """Write both reports; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [result_record(r) for r in results]
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps({"images": records}, indent=2) + "\n")
    md_path.write_text(markdown(records))
    return json_path, md_path
