"""Readers for the fields of images.yaml: each checks a type and records a positioned Problem."""

from __future__ import annotations

import re
from typing import Any

from .config import Path_, Reader, did_you_mean, scalar_kind, version_ok
from .model import Package

# Import names for requirements whose module differs from the distribution name.
KNOWN_MODULES = {"pyyaml": "yaml", "jupyter": "jupyterlab", "pillow": "PIL", "scikit-learn": "sklearn"}

# What the readers accept, as patterns the JSON Schema (torchimages/json_schema.py) shares; each is written so that it
# reads the same in ECMAScript (editors) as in Python, where \w, \s and [^\W_] are Unicode-aware (str.isalnum, str.isspace).
PLAIN_STRING = re.compile(r"[^\s\x00-\x1f]*")  # no whitespace or control characters
# Debian package names (Policy 5.6.1: lowercase ASCII letters, digits, + - .; at least two characters), with an
# optional :architecture. ASCII only: the name goes into a Dockerfile, and a lookalike letter fails only there.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?")
REQUIREMENT_PATTERN = re.compile(r"""[^\W_][^\s"'`$\\;]*""")  # a letter or digit first; no whitespace, quotes, $, \ or ;
PACKAGE_KEYS = ("pip", "import")


def unknown_keys(r: Reader, path: Path_, data: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in data:
        if key not in keys:
            r.add((*path, key), f"unknown key {key!r}{did_you_mean(key, keys)}; valid: {', '.join(keys)}", key=True)


def section(r: Reader, data: dict[str, Any], key: str, keys: tuple[str, ...]) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        r.add((key,), f"must be a mapping with keys {', '.join(keys)}, got {scalar_kind(value)}")
        return {}
    unknown_keys(r, (key,), value, keys)
    return value


def string(r: Reader, path: Path_, value: Any, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        r.add(path, f"must be a string, got {scalar_kind(value)}")
        return ""
    if required and not value.strip():
        r.add(path, "must not be empty")
        return ""
    if not PLAIN_STRING.fullmatch(value):
        r.add(path, f"must not contain whitespace or control characters: {value!r}")
        return ""
    return value


_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?"
REFERENCE_PATTERNS = {
    "repository": (re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*"), "lowercase path components, e.g. team/pytorch"),
    "registry": (re.compile(_HOST), "a host with an optional port, e.g. ghcr.io or 127.0.0.1:5000"),
    "mirror": (re.compile(rf"{_HOST}(?:/{_COMPONENT})*"), "a registry host with an optional path, e.g. mirror.example:5000/hub"),
}


def reference(r: Reader, path: Path_, value: Any, kind: str, *, required: bool = False) -> str:
    """A part of an image reference (repository, registry, mirror) in Docker's grammar; it ends up in FROM and tags."""
    text = string(r, path, value, required=required)
    pattern, example = REFERENCE_PATTERNS[kind]
    if text and not pattern.fullmatch(text):
        r.add(path, f"not a valid {kind}: {text!r} (write {example})")
        return ""
    return text


def boolean(r: Reader, path: Path_, value: Any) -> bool:
    if not isinstance(value, bool):
        r.add(path, f"must be true or false, got {scalar_kind(value)}")
        return False
    return value


def versions(r: Reader, path: Path_, value: Any) -> list[tuple[str, Path_]]:
    """A version or a list of versions, each with its own path for messages."""
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    if isinstance(value, list) and not value:
        r.add(path, "must not be an empty list")
    out: list[tuple[str, Path_]] = []
    for index, item in items:
        item_path = path if index is None else (*path, index)
        if any(str(item) == seen for seen, _ in out):
            r.add(item_path, f"{str(item)!r} is listed twice")
        elif version_ok(r, item_path, item):
            out.append((str(item), item_path))
    return out


def words(r: Reader, path: Path_, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        r.add(path, f"must be a list of names, got {scalar_kind(value)}")
        return ()
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not NAME_PATTERN.fullmatch(item):
            r.add((*path, i), f"not a Debian package name: {item!r} (lowercase a-z, digits, + - . and an optional :arch)")
        else:
            out.append(item)
    return tuple(out)


def packages(r: Reader, path: Path_, value: Any) -> tuple[Package, ...]:
    """Strings are pip requirements; {pip: ..., import: ...} names the module when it differs."""
    if not isinstance(value, list):
        r.add(path, f"must be a list of pip requirements, got {scalar_kind(value)}")
        return ()
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            unknown_keys(r, (*path, i), item, PACKAGE_KEYS)
            req, module = item.get("pip"), item.get("import")
        else:
            req, module = item, None
        if not isinstance(req, str) or not REQUIREMENT_PATTERN.fullmatch(req):
            r.add((*path, i), f'not a pip requirement: {req!r} (write e.g. "pandas" or "scipy>=1.11")')
            continue
        dist = req
        for sep in "<>=!~[;@":
            dist = dist.split(sep, 1)[0]
        if module is not None and not (isinstance(module, str) and all(part.isidentifier() for part in module.split("."))):
            r.add((*path, i, "import"), f'not a module name: {module!r} (write e.g. "yaml" or "PIL.Image")')
            continue
        module = module if module is not None else KNOWN_MODULES.get(dist.lower(), dist.replace("-", "_"))
        out.append(Package(requirement=req, module=module))
    return tuple(out)


def choices(r: Reader, path: Path_, value: Any, valid: tuple[str, ...], *, what: str, context: str) -> tuple[str, ...]:
    """A non-empty list of distinct words, each one of valid."""
    if not isinstance(value, list) or not value:
        r.add(path, f"must be a list of {', '.join(valid)}")
        return ()
    out: list[str] = []
    for i, item in enumerate(value):
        if item not in valid:
            r.add((*path, i), f"unknown {what} {item!r}{did_you_mean(str(item), valid)}; valid {context}: {', '.join(valid)}")
        elif item in out:
            r.add((*path, i), f"{what} {item!r} given twice")
        else:
            out.append(item)
    return tuple(out)
