"""Regenerate what the compatibility table can learn from real indexes, and say what changed.

PyPI (the simple JSON API and PEP 658 wheel metadata) gives every torch release, its CPython
wheels, the CUDA and cuDNN its default wheel pins, and the torch each torchvision/torchaudio
release pins. The PyTorch wheel index gives the CUDA variants of each release; Docker Hub the
nvidia/cuda tags. Sources that cannot be reached are reported and left as they are.
"""

from __future__ import annotations

import json
import re
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from .compat import version_key

Fetch = Callable[[str, dict[str, str]], bytes]
PYPI_SIMPLE = "https://pypi.org/simple/{name}/"
PYTORCH_INDEX = "https://download.pytorch.org/whl/{name}/"
DOCKER_HUB_TAGS = "https://hub.docker.com/v2/repositories/nvidia/cuda/tags?page_size=100&name={name}"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
OLDEST = (1, 8, 0)
WHEEL_RE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)-(?P<version>[^-]+)(?:-\d[^-]*)?-cp(?P<py>3\d+)-cp3\d+m?-(?P<plat>[^/]+)\.whl$")
CUDA_RUNTIME_RE = re.compile(r"^(?:nvidia-cuda-runtime(?:-cu\d+)?|cuda-toolkit(?:\[[^\]]*\])?)\s*==\s*(\d+)\.(\d+)")
CUDNN_RE = re.compile(r"^nvidia-cudnn-cu\d+\s*==\s*(\d+\.\d+\.\d+)")
TORCH_PIN_RE = re.compile(r"^torch\s*\(?\s*(==|>=)\s*([0-9.]+)")


class RefreshError(Exception):
    """A source answered with something we cannot read."""


def http_fetch(url: str, headers: dict[str, str]) -> bytes:
    """GET with a timeout; every network call of the refresh goes through here."""
    request = urllib.request.Request(url, headers={"User-Agent": "torch-images-compat-refresh", **headers})
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def _stable(version: str) -> bool:
    return re.fullmatch(r"\d+\.\d+\.\d+", version) is not None


def _linux_wheels(files: list[dict[str, Any]], version: str) -> list[tuple[str, dict[str, Any]]]:
    """(python X.Y, file) for each CPython manylinux x86_64 wheel of one version (free-threaded builds aside)."""
    out = []
    for item in files:
        match = WHEEL_RE.match(item["filename"])
        if match and match["version"] == version and "x86_64" in match["plat"] and "linux" in match["plat"]:
            out.append((f"{match['py'][0]}.{match['py'][1:]}", item))
    return out


def _platform(wheels: list[tuple[str, dict[str, Any]]]) -> str:
    """The platform tag a release's Linux x86_64 wheels carry (the last of a compressed tag set)."""
    match = WHEEL_RE.match(wheels[-1][1]["filename"])
    assert match is not None
    return str(match["plat"]).split(".")[-1]


def _requires(fetch: Fetch, item: dict[str, Any]) -> list[str]:
    """Requires-Dist of a wheel, from its PEP 658 metadata file ([] when the index has none for it)."""
    try:
        text = fetch(item["url"] + ".metadata", {}).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        text = _metadata_by_range(fetch, item["url"], int(item.get("size") or 0))
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def _metadata_by_range(fetch: Fetch, url: str, size: int) -> str:
    """Read METADATA out of a remote wheel with two range requests, not a multi-GB download."""
    if size < 22:
        return ""
    tail = fetch(url, {"Range": f"bytes={max(0, size - 65536)}-{size - 1}"})
    eocd = tail.rfind(b"PK\x05\x06")
    if eocd < 0:
        return ""
    cd_size, cd_offset = struct.unpack("<II", tail[eocd + 12 : eocd + 20])
    start = size - len(tail)
    directory = tail[cd_offset - start :] if cd_offset >= start else fetch(url, {"Range": f"bytes={cd_offset}-{cd_offset + cd_size - 1}"})
    pos = 0
    while directory[pos : pos + 4] == b"PK\x01\x02":
        method, _t, _d, _crc, compressed, _u, name_len, extra_len, comment_len = struct.unpack("<HHHIIIHHH", directory[pos + 10 : pos + 34])
        local = struct.unpack("<I", directory[pos + 42 : pos + 46])[0]
        name = directory[pos + 46 : pos + 46 + name_len].decode("utf-8", "replace")
        pos += 46 + name_len + extra_len + comment_len
        if name.endswith(".dist-info/METADATA"):
            blob = fetch(url, {"Range": f"bytes={local}-{local + 30 + 1024 + compressed}"})
            header_len = 30 + sum(struct.unpack("<HH", blob[26:30]))
            data = blob[header_len : header_len + compressed]
            return (zlib.decompress(data, -15) if method == 8 else data).decode("utf-8", "replace")
    return ""


def pypi_torch(fetch: Fetch) -> dict[str, dict[str, Any]]:
    """Per torch release on PyPI: pythons, and the CUDA/cuDNN its default Linux wheel pins."""
    data = json.loads(fetch(PYPI_SIMPLE.format(name="torch"), {"Accept": SIMPLE_JSON}))
    releases: dict[str, dict[str, Any]] = {}
    for version in data["versions"]:
        if not _stable(version) or version_key(version) < OLDEST:
            continue
        wheels = _linux_wheels(data["files"], version)
        if not wheels:
            continue
        row: dict[str, Any] = {"python": sorted({py for py, _ in wheels}, key=version_key), "platform": _platform(wheels)}
        for requirement in _requires(fetch, max(wheels, key=lambda w: version_key(w[0]))[1]):
            if match := CUDA_RUNTIME_RE.match(requirement):
                row["pypi_default"] = f"cu{match[1]}{match[2]}"
            if match := CUDNN_RE.match(requirement):
                row["cudnn_version"] = match[1]
        releases[version] = row
    return releases


def pypi_companion(fetch: Fetch, name: str, pythons: dict[str, list[str]] | None = None) -> dict[str, str]:
    """torch release (or, for a `>=` pin, torch major.minor) -> the newest torchvision/torchaudio that pins it.

    pythons, when given, receives each companion release's CPython versions.
    """
    data = json.loads(fetch(PYPI_SIMPLE.format(name=name), {"Accept": SIMPLE_JSON}))
    pins: dict[str, str] = {}
    for version in data["versions"]:
        if not _stable(version):
            continue
        wheels = _linux_wheels(data["files"], version)
        if not wheels:
            continue
        if pythons is not None:
            pythons[version] = sorted({py for py, _ in wheels}, key=version_key)
        for requirement in _requires(fetch, wheels[-1][1]):
            if (match := TORCH_PIN_RE.match(requirement)) and version_key(match[2]) >= OLDEST:
                key = match[2] if match[1] == "==" else ".".join(match[2].split(".")[:2])
                current = pins.get(key)
                if current is None or version_key(version) > version_key(current):
                    pins[key] = version
    return pins


INDEX_FILE_RE = re.compile(r"torch-(\d+\.\d+\.\d+)(?:%2B|\+)(cu\d+|cpu)-cp3\d+-cp3\d+[mt]?-((?:many)?linux[\w.]*?x86_64)\.whl")


def pytorch_index_variants(fetch: Fetch) -> dict[str, dict[str, str]]:
    """torch release -> CUDA variant (cuXYZ, cpu) -> the platform tag of its Linux x86_64 wheels on the PyTorch index."""
    page = fetch(PYTORCH_INDEX.format(name="torch"), {}).decode("utf-8", "replace")
    variants: dict[str, dict[str, str]] = {}
    for match in INDEX_FILE_RE.finditer(page):
        variants.setdefault(match[1], {})[match[2]] = match[3].split(".")[-1]
    return variants


def refresh(raw: dict[str, Any], fetch: Fetch, *, today: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """A new table from the current one and what the sources say, and a line per change or skipped source."""
    today = today or date.today().isoformat()
    new = json.loads(json.dumps(raw))  # a deep copy of plain data
    notes: list[str] = []
    try:
        torch_rows = pypi_torch(fetch)
        vision_pythons: dict[str, list[str]] = {}
        audio_pythons: dict[str, list[str]] = {}
        vision = pypi_companion(fetch, "torchvision", vision_pythons)
        audio = pypi_companion(fetch, "torchaudio", audio_pythons)
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        return new, [f"PyPI: unreachable or unreadable ({exc}); nothing refreshed"]
    source = f"PyPI simple JSON API and wheel metadata, read {today}"
    vision, audio = _by_release(vision, torch_rows), _by_release(audio, torch_rows)
    for version, seen in torch_rows.items():
        row = new["torch"].get(version)
        if row is None and "pypi_default" not in seen:
            notes.append(f"torch {version}: new release, but the CUDA of its PyPI wheel is unknown; add it by hand")
            continue
        if row is None:
            default = seen.get("pypi_default")
            pending = None if version in vision else f"no torchvision release for torch {version} is on PyPI yet"
            row = {
                "torchvision": vision.get(version),
                "torchaudio": audio.get(version),
                "python": seen["python"],
                "variants": {default: _variant(seen)} if default else {},
                "cpu": True,
                "pypi_default": default,
                **({"pending": pending} if pending else {}),
                # Until the PyTorch index is read, its files are taken to be named like PyPI's.
                "files": {"pypi": seen["platform"], "index": dict.fromkeys([*([default] if default else []), "cpu"], seen["platform"])},
                "source": [source, "files.index: as PyPI's wheels (the PyTorch index was not read)"],
            }
            new["torch"][version] = row
            notes.append(f"torch {version}: new release (python {', '.join(seen['python'])}, PyPI default {default})")
            continue
        if row.get("pending") and version in vision:
            notes.append(f"torch {version}: torchvision {vision[version]} is out; no longer pending")
            del row["pending"]
        _update(row, "python", seen["python"], version, notes, source)
        if "pypi_default" in seen:
            _update(row, "pypi_default", seen["pypi_default"], version, notes, source)
            row["variants"].setdefault(seen["pypi_default"], _variant(seen))
        if version in vision:
            _update(row, "torchvision", vision[version], version, notes, source)
        if version in audio:
            _update(row, "torchaudio", audio[version], version, notes, source)
        if "files" in row and row["files"].get("pypi") != seen["platform"]:
            notes.append(f"torch {version}: PyPI wheels are {seen['platform']} (table: {row['files'].get('pypi')})")
            row["files"]["pypi"] = seen["platform"]
        companions = (("torchvision_python", "torchvision", vision_pythons), ("torchaudio_python", "torchaudio", audio_pythons))
        for key, companion, found in companions:
            listed = found.get(str(row.get(companion)))
            if listed is None or (companion == "torchaudio" and not _is_home(new["torch"], version, row)):
                continue  # not on PyPI, or a torchaudio published with an earlier release (its row records the list)
            wanted = None if listed == row["python"] else listed
            if row.get(key) != wanted:
                notes.append(f"torch {version}: {companion} {row[companion]} has wheels for python {', '.join(listed)}")
                if wanted is None:
                    row.pop(key, None)
                else:
                    row[key] = wanted
        if "cudnn_version" in seen and "pypi_default" in seen:
            variant = row["variants"][seen["pypi_default"]]
            if variant.get("cudnn_version") != seen["cudnn_version"]:
                variant["cudnn_version"] = seen["cudnn_version"]
                notes.append(f"torch {version}: {seen['pypi_default']} wheels pin cuDNN {seen['cudnn_version']}")
    try:
        index = pytorch_index_variants(fetch)
    except (urllib.error.URLError, OSError) as exc:
        notes.append(f"download.pytorch.org: unreachable ({exc}); CUDA variant lists kept as they are")
    else:
        for version, published in index.items():
            row = new["torch"].get(version)
            if row is None:
                continue
            for variant in sorted(set(published) - {"cpu"} - set(row["variants"])):
                row["variants"][variant] = {"cudnn": "9" if version_key(version) >= (2, 4) else "8"}
                notes.append(f"torch {version}: the PyTorch index has {variant} wheels")
            platforms = row.setdefault("files", {}).setdefault("index", {})
            for variant, platform in sorted(published.items()):
                if platforms.get(variant) != platform:
                    notes.append(f"torch {version}: {variant} wheels on the PyTorch index are {platform} (table: {platforms.get(variant)})")
                    platforms[variant] = platform
    try:
        fetch(DOCKER_HUB_TAGS.format(name="base-ubuntu"), {})
    except (urllib.error.URLError, OSError) as exc:
        notes.append(f"hub.docker.com: unreachable ({exc}); nvidia/cuda tags kept as they are")
    new["torch"] = dict(sorted(new["torch"].items(), key=lambda kv: version_key(kv[0]), reverse=True))
    return new, notes


def _is_home(rows: dict[str, Any], version: str, row: dict[str, Any]) -> bool:
    """True when this release is the first to ship its torchaudio (torchaudio 2.11.0 also serves 2.12 and later)."""
    sharing = [v for v, other in rows.items() if other.get("torchaudio") == row.get("torchaudio")]
    return min(sharing, key=version_key) == version


def _variant(seen: dict[str, Any]) -> dict[str, str]:
    """The variant row for PyPI's default wheel: the cuDNN it pins (major, and version when read)."""
    version = seen.get("cudnn_version")
    return {"cudnn": version.split(".")[0], "cudnn_version": version} if version else {"cudnn": "9"}


def _by_release(pins: dict[str, str], releases: dict[str, Any]) -> dict[str, str]:
    """Resolve pins keyed by exact release or (for `>=` pins) by major.minor to exact releases."""
    out = {}
    for version in releases:
        found = pins.get(version) or pins.get(".".join(version.split(".")[:2]))
        if found:
            out[version] = found
    return out


def _update(row: dict[str, Any], key: str, value: Any, version: str, notes: list[str], source: str) -> None:
    if row.get(key) != value:
        notes.append(f"torch {version}: {key} {row.get(key)} -> {value}")
        row[key] = value
        if source not in row["source"]:
            row["source"].append(source)


def write_table(path: Path, raw: dict[str, Any]) -> None:
    """Rewrite the data file, keeping its leading comment block."""
    header = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.startswith("#"):
            break
        header.append(line)
    path.write_text("".join(header) + yaml.safe_dump(raw, sort_keys=False, width=120, allow_unicode=True))
