"""What more than one benchmark needs."""

from __future__ import annotations

import zipfile
from pathlib import Path


def uv_binary(wheel: Path, folder: Path) -> Path:
    """uv's static binary out of its PyPI wheel (`<name>.data/scripts/uv`), as the build's venv stage unpacks it."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".data/scripts/uv"))
        target = folder / "uv"
        target.write_bytes(archive.read(name))
    target.chmod(0o755)
    return target
