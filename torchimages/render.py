"""Render an ImageSpec to Dockerfile text, deterministically, and lay out its build context."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import jinja2

from .labels import expected_labels
from .model import UV, ImageSpec

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "dockerfiles" / "templates"
GENERATED = ROOT / "dockerfiles" / "generated"
VERIFY_SCRIPT = ROOT / "scripts" / "verify.py"
PROFILE_SCRIPT = TEMPLATES / "profile.sh"
USER = "researcher"


class RenderError(Exception):
    """A template or a value could not be rendered."""


def dockerfile_quote(value: object) -> str:
    """Quote a value for a Dockerfile LABEL/ENV: double quotes, with \\, " and $ escaped."""
    text = str(value)
    if any(ch in text for ch in "\n\r\x00"):
        raise RenderError(f"value cannot go into a Dockerfile (it has a line break or NUL): {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["dockerfile_quote"] = dockerfile_quote
    return env


_RAW_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")


def render_dockerfile(spec: ImageSpec, *, venv_id: str = "unlocked") -> str:
    """The Dockerfile for one image; the same spec always gives the same bytes.

    Nothing of where the spec was read (the config's name or folder) goes in: the bytes are part of the build hash,
    and the same entry in another file, or in a clone elsewhere, is the same image. venv_id names the venv stage
    (pipeline.venv_id: its base, python and locked files); a Dockerfile rendered without a lock says "unlocked"."""
    # Values that go into the Dockerfile unquoted (FROM, the apt package list) must be plain words.
    for value in (spec.base_image, spec.venv_base_image, spec.python, *spec.apt_packages, venv_id):
        if not _RAW_SAFE.fullmatch(value):
            raise RenderError(f"{spec.name}: refusing to put {value!r} into a Dockerfile unquoted")
    try:
        template = _environment().get_template("Dockerfile.j2")
        return template.render(
            spec=spec,
            installer_file=installer_file(spec),
            apt_packages=sorted(spec.apt_packages),
            labels=sorted(expected_labels(spec).items()),
            user=USER,
            venv_id=venv_id,
        )
    except jinja2.TemplateError as exc:
        raise RenderError(f"{spec.name}: template error: {exc}") from exc


def generated_path(spec: ImageSpec, root: Path = GENERATED) -> Path:
    """dockerfiles/generated/<image>/Dockerfile."""
    return root / spec.name / "Dockerfile"


def installer_file(spec: ImageSpec) -> str:
    """The context file naming what installs the lock (Lock.installer): uv's wheel and hash, or the locked pip."""
    return "uv.sha256" if spec.installer == UV else "pip.txt"


def context_files(spec: ImageSpec, *, dockerfile: str, requirements: str, installer: str) -> dict[str, bytes]:
    """Every file of the build context, by name."""
    return {
        "Dockerfile": dockerfile.encode(),
        "requirements.txt": requirements.encode(),
        installer_file(spec): installer.encode(),
        "verify.py": VERIFY_SCRIPT.read_bytes(),
        "profile.sh": PROFILE_SCRIPT.read_bytes(),
        "labels.json": (json.dumps(expected_labels(spec), indent=2, sort_keys=True) + "\n").encode(),
    }


def context_tar(files: Mapping[str, bytes], *, modes: Mapping[str, int] | None = None) -> bytes:
    """A small build context, whole: see context_stream."""
    return b"".join(context_stream(files, modes=modes))


_BLOCK = tarfile.BLOCKSIZE


def _header(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """A tar header with normalised metadata, so identical files give identical bytes (and cache hits)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT)


def context_stream(
    files: Mapping[str, bytes],
    *,
    wheels: Mapping[str, Path] | None = None,
    modes: Mapping[str, int] | None = None,
    chunk: int = 1 << 20,
) -> Iterator[bytes]:
    """The build context as a tar stream: the files given, then wheels/<name> read from disk a chunk at a time.

    A CUDA image's wheels are gigabytes: they are neither held in memory nor copied into a context file first, and
    the engine reads them from the request body, wherever it runs.
    """
    for name in sorted(files):
        data = files[name]
        yield _header(name, len(data), (modes or {}).get(name, 0o644)) + data + bytes(-len(data) % _BLOCK)
    if wheels is not None:
        yield _header("wheels", 0, 0o755, tarfile.DIRTYPE)
        for name in sorted(wheels):
            path = wheels[name]
            size = path.stat().st_size
            yield _header(f"wheels/{name}", size, 0o644)
            left = size
            with open(path, "rb") as handle:
                while left:
                    data = handle.read(min(chunk, left))
                    if not data:
                        raise OSError(f"{path} shrank while it was sent to the engine")
                    left -= len(data)
                    yield data
            yield bytes(-size % _BLOCK)
    yield bytes(2 * _BLOCK)


def sync_generated(matrices: list[list[ImageSpec]], *, check: bool, prune: bool, root: Path = GENERATED) -> list[str]:
    """Write (or with check, only compare) every rendered Dockerfile under root; return the stale paths.

    With prune, a folder under root that no given image renders to is stale too (and removed unless checking).
    """
    stale = []
    wanted = set()
    for specs in matrices:
        for spec in specs:
            path = generated_path(spec, root)
            wanted.add(path.parent.name)
            text = render_dockerfile(spec)
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
                if not check:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
    if prune and root.exists():
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and folder.name not in wanted:
                stale.append(f"{folder.relative_to(ROOT)} (no image renders here)")
                if not check:
                    shutil.rmtree(folder)
    return stale
