"""The JSON Schema (draft 2020-12) of images.yaml, built from the key tuples and patterns the readers use.

`python -m torchimages.json_schema` writes images.schema.json; `--check` exits 1 when the checked-in file is stale.
The schema checks shapes (keys, types, names); what needs the compatibility table stays with the loader.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from .compat import PYTORCH_INDEX
from .entries import CPU, CPU_FLAVOURS, CUDA_FLAVOURS, ENTRY_KEYS, OMITTABLE, REQUIRED_ENTRY_KEYS
from .matrix import BASE_KEYS, EXCLUDE_KEYS, MIRROR_ENV, TARGET_KEYS, TOP_KEYS, WHEELS_KEYS
from .schema import NAME_PATTERN, PACKAGE_KEYS, PLAIN_STRING, REFERENCE_PATTERNS, REQUIREMENT_PATTERN

Schema = dict[str, Any]

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "images.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
# Literals of matrix._settings (no constant there yet); test_json_schema checks both against the loader.
BASE_REPOSITORY = "nvidia/cuda"
# The loader checks str.isidentifier() on each dotted part; this is its pattern form (\w is Unicode in Python, ASCII in editors).
MODULE_PATTERN = r"[^\W\d]\w*(?:\.[^\W\d]\w*)*"
TABLE = "torchimages/data/compat.yaml"
LOADER = f"checked by the loader against the compatibility table ({TABLE}), not by this schema: the table changes with every release"


def _anchored(pattern: re.Pattern[str] | str, *, empty: bool = False) -> str:
    """A reader's fullmatch pattern as a JSON Schema pattern (which searches); empty also allows ''.

    `(?!\\n)`: in Python `$` also matches before a final newline, which the reader (fullmatch) refuses.
    """
    text = pattern if isinstance(pattern, str) else pattern.pattern
    return f"^(?:{text}){'?' if empty else ''}$(?!\\n)"


def _object(description: str, keys: tuple[str, ...], properties: dict[str, Schema], *, required: tuple[str, ...] = ()) -> Schema:
    """A mapping whose keys are exactly the keys a reader accepts: a key added to one side only is an error here."""
    if set(keys) != set(properties):
        raise ValueError(f"the schema describes keys {sorted(properties)}, the readers accept {sorted(keys)}")
    out: Schema = {"type": "object", "description": description, "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


def _reference(kind: str, description: str, *, required: bool) -> Schema:
    pattern, example = REFERENCE_PATTERNS[kind]
    types = "string" if required else ["string", "null"]
    return {"type": types, "pattern": _anchored(pattern, empty=not required), "description": f"{description} ({example})."}


def _defs() -> dict[str, Schema]:
    requirement = {"$ref": "#/$defs/requirement", "description": "The pip requirement."}
    module = {
        "type": ["string", "null"],
        "pattern": _anchored(MODULE_PATTERN),
        "description": 'The module torch-verify imports, when it differs from the name, e.g. "yaml" or "PIL.Image".',
    }
    return {
        "version": {
            "type": "string",
            "pattern": r"\S",
            "description": 'A version as a quoted string: unquoted, 3.10 is the number 3.1; write "3.10".',
        },
        "versions": {
            "description": "A version or a non-empty list of versions; lists expand to every combination.",
            "anyOf": [{"$ref": "#/$defs/version"}, {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/version"}}],
        },
        "requirement": {
            "type": "string",
            "pattern": _anchored(REQUIREMENT_PATTERN),
            "description": 'A pip requirement, e.g. "pandas" or "scipy>=1.11": a letter or digit first; no whitespace, quotes, $, \\ or ;.',
        },
        "package": {
            "description": "A pip requirement, or {pip, import} to name the module when it differs from the distribution.",
            "anyOf": [
                {"$ref": "#/$defs/requirement"},
                _object("A requirement and its import name.", PACKAGE_KEYS, {"pip": requirement, "import": module}, required=("pip",)),
            ],
        },
        "packages": {"type": "array", "items": {"$ref": "#/$defs/package"}, "description": "A list of pip requirements."},
        "names": {
            "type": "array",
            "items": {"type": "string", "pattern": _anchored(NAME_PATTERN)},
            "description": "A list of package names: a letter or digit, then letters, digits and + - . _ : (never an --option).",
        },
    }


def _entry() -> Schema:
    flavours = list(CUDA_FLAVOURS + CPU_FLAVOURS)
    cpu_only = {"anyOf": [{"const": CPU}, {"type": "array", "items": {"const": CPU}}]}
    entry = _object(
        "One entry: every combination of its torch, cuda, python, os and flavours is an image.",
        ENTRY_KEYS,
        {
            "torch": {"$ref": "#/$defs/versions", "description": f'torch releases, e.g. "2.5.1"; {LOADER}.'},
            "cuda": {
                "$ref": "#/$defs/versions",
                "description": f'CUDA versions, e.g. "12.4", or {CPU} (in an entry of its own); {LOADER}.',
            },
            "python": {
                "$ref": "#/$defs/versions",
                "description": f'Python versions, e.g. "3.10"; that torch and the os ship them is {LOADER}.',
            },
            "os": {
                "$ref": "#/$defs/versions",
                "description": "Base os names, e.g. ubuntu22.04; default: the newest os with a base for this CUDA that ships this python;"
                f" {LOADER}.",
            },
            "flavours": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"enum": flavours},
                "description": f"{', '.join(CUDA_FLAVOURS)} for a CUDA image (default {CUDA_FLAVOURS[0]}),"
                f" {', '.join(CPU_FLAVOURS)} for a CPU image (default {CPU_FLAVOURS[0]}).",
            },
            "packages": {"$ref": "#/$defs/packages", "default": [], "description": "pip requirements added to the common list."},
            "apt_packages": {"$ref": "#/$defs/names", "default": [], "description": "Debian/Ubuntu packages added to the common list."},
            "omit": {
                "type": "array",
                "items": {"enum": list(OMITTABLE)},
                "default": [],
                "description": f"Companions to leave out: {', '.join(OMITTABLE)}.",
            },
            "deprecated": {"type": "boolean", "default": False, "description": "true: kept (validated and rendered), not built."},
        },
        required=REQUIRED_ENTRY_KEYS,
    )
    # cpu and CUDA versions need separate entries, and each kind has its own flavours.
    is_cpu = {
        "anyOf": [{"const": CPU}, {"type": "array", "contains": {"const": CPU}}],
        "description": f"A CPU entry: cuda is {CPU} or lists it.",
    }
    entry["if"] = {"properties": {"cuda": is_cpu}, "required": ["cuda"]}
    entry["then"] = {
        "properties": {
            "cuda": {**cpu_only, "description": "cpu and CUDA versions need separate entries (their flavours differ)."},
            "flavours": {"items": {"enum": list(CPU_FLAVOURS)}, "default": list(CPU_FLAVOURS[:1]), "description": "Valid for a CPU image."},
        }
    }
    entry["else"] = {
        "properties": {
            "flavours": {
                "items": {"enum": list(CUDA_FLAVOURS)},
                "default": list(CUDA_FLAVOURS[:1]),
                "description": "Valid for a CUDA image.",
            }
        }
    }
    return entry


def images_schema() -> Schema:
    """The schema of a matrix file, as a JSON-ready dict."""
    exclude_fields = {key: {"$ref": "#/$defs/versions", "description": f"{key} values to exclude."} for key in EXCLUDE_KEYS}
    exclude_pattern = _object("Drops the combinations that match all its fields, before they are checked.", EXCLUDE_KEYS, exclude_fields)
    exclude_pattern["minProperties"] = 1
    target = {
        "registry": _reference("registry", "The registry images are pushed to; empty: none", required=False) | {"default": ""},
        "repository": _reference("repository", "The repository under the registry", required=True),
    }
    base = {
        "repository": _reference("repository", "The repository of the CUDA bases", required=True) | {"default": BASE_REPOSITORY},
        "mirror": _reference("mirror", f"A registry mirror that prefixes every base; ${MIRROR_ENV} overrides it", required=False)
        | {"default": ""},
        "check_tags": {
            "type": "boolean",
            "default": True,
            "description": "false: skip the check that NVIDIA publishes the base tag (bases of your own under the same names).",
        },
    }
    wheels: dict[str, Schema] = {
        "pytorch_index": {
            "type": ["string", "null"],
            "pattern": _anchored(PLAIN_STRING),
            "default": PYTORCH_INDEX,
            "description": "The PyTorch wheel index; null: PyPI and pip's own configuration only. No whitespace or control characters.",
        },
    }
    properties = {
        "target": _object("Where images are pushed.", TARGET_KEYS, target, required=("repository",)),
        "base": _object("The CUDA base images.", BASE_KEYS, base),
        "wheels": _object("Where wheels come from.", WHEELS_KEYS, wheels),
        "packages": {"$ref": "#/$defs/packages", "default": [], "description": "pip requirements every image gets."},
        "apt_packages": {"$ref": "#/$defs/names", "default": [], "description": "Debian/Ubuntu packages every image gets."},
        "exclude": {"type": "array", "items": exclude_pattern, "default": [], "description": "Combinations not to build (nor check)."},
        "images": {"type": "array", "minItems": 1, "items": _entry(), "description": "A non-empty list of image entries."},
    }
    top = _object(
        "A matrix of PyTorch x CUDA x cuDNN x Python images. Generated by `python -m torchimages.json_schema` from the readers;"
        " it checks keys, types and names, and leaves what the compatibility table decides to the loader (`invoke matrix`).",
        TOP_KEYS,
        properties,
        required=("target", "images"),
    )
    return {"$schema": DIALECT, "title": "torch-images matrix (images.yaml)", **top, "$defs": _defs()}


def render_schema() -> str:
    """images.schema.json as checked in."""
    return json.dumps(images_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None, *, path: Path = SCHEMA_PATH) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchimages.json_schema", description="Write the JSON Schema of images.yaml.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale instead of writing it")
    args = parser.parse_args(argv)
    text = render_schema()
    current = path.read_text(encoding="utf-8") if path.exists() else None
    if args.check:
        if current != text:
            print(f"{path} is stale: run `python -m torchimages.json_schema`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
