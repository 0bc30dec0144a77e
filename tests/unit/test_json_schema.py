"""images.schema.json: current, valid for both matrices, and in step with what the loader accepts and refuses."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from torchimages.config import ConfigError, load_document
from torchimages.json_schema import SCHEMA_PATH, images_schema, main, render_schema
from torchimages.matrix import Matrix, build_matrix, load_matrix

ROOT = Path(__file__).parents[2]
MATRICES = [ROOT / "images.yaml", ROOT / "tests" / "fixtures" / "images.yaml"]
CORPUS = ROOT / "tests" / "fixtures" / "broken"
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))

# A valid matrix that each case below changes in one place.
BASE: dict[str, Any] = {
    "target": {"repository": "example/pytorch"},
    "images": [{"torch": "2.5.1", "cuda": "12.4", "python": "3.10", "os": "ubuntu22.04", "flavours": ["runtime", "devel"]}],
}
CPU_ENTRY = {"torch": "2.5.1", "cuda": "cpu", "python": "3.10", "os": "ubuntu22.04"}


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()  # a case value: remove the key


def with_value(path: str, value: Any) -> dict[str, Any]:
    """BASE with the value at a dotted path (images.0.cuda) replaced, or deleted."""
    data = copy.deepcopy(BASE)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = data
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


def load(data: Any) -> Matrix:
    return build_matrix(load_document("m.yaml", text=yaml.safe_dump(data, sort_keys=False)), use_environment=False)


def loader_accepts(data: Any) -> bool:
    try:
        load(data)
    except ConfigError:
        return False
    return True


def leaf_errors(errors: Iterable[jsonschema.ValidationError]) -> Iterator[jsonschema.ValidationError]:
    """The errors themselves, not the anyOf/oneOf that wrap them."""
    for error in errors:
        if error.context:
            yield from leaf_errors(error.context)
        else:
            yield error


def test_the_checked_in_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_schema(), (
        "images.schema.json is stale: run `python -m torchimages.json_schema`"
    )


def test_check_mode_refuses_a_stale_file_and_write_mode_fixes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "images.schema.json"
    target.write_text("{}\n")
    assert main(["--check"], path=target) == 1
    assert "stale: run `python -m torchimages.json_schema`" in capsys.readouterr().err
    assert main([], path=target) == 0
    assert target.read_text() == render_schema()
    assert main(["--check"], path=target) == 0


def test_the_schema_is_a_valid_2020_12_schema_with_a_description_on_every_property() -> None:
    schema = images_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and "$id" not in schema and schema["title"]

    def undescribed(node: Any, where: str) -> Iterator[str]:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if not sub.get("description"):
                    yield f"{where}/properties/{name}"
            for key, sub in node.items():
                yield from undescribed(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                yield from undescribed(sub, f"{where}/{i}")

    assert list(undescribed(schema, "#")) == []


@pytest.mark.parametrize("path", MATRICES, ids=["images.yaml", "fixtures/images.yaml"])
def test_both_matrices_point_editors_at_the_schema_and_validate(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema="), f"{path.name} must start with the yaml-language-server line"
    assert (path.parent / first.split("$schema=", 1)[1]).resolve() == SCHEMA_PATH
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []
    load(yaml.safe_load(path.read_text()))  # and the loader, after the comment line, still accepts it


# The broken corpus, split by who catches each file. Schema errors: the keyword the schema fails on, at the
# field the loader's message names (an unknown key is named by its object).
SCHEMA_ERRORS = {
    "bad-flavour": "enum",
    "bad-import-name": "pattern",
    "bad-package": "pattern",
    "bad-repository": "pattern",
    "cpu-with-cuda-flavour": "enum",
    "empty-images": "minItems",
    "missing-field": "required",
    "not-a-mapping": "type",
    "option-as-apt-package": "pattern",
    "lookalike-apt-package": "pattern",
    "option-as-package": "pattern",
    "unknown-key": "additionalProperties",
    "unknown-top-key": "additionalProperties",
    "wheels-port": "additionalProperties",
    "unquoted-cuda": "type",
    "unquoted-python": "type",
    "wrong-type-flavours": "type",
}
# Valid shapes that only the compatibility table refuses: the loader's job.
TABLE_ERRORS = {"companion-python", "no-wheel-for-cuda", "python-not-on-os", "same-tag-twice", "unknown-torch"}
# What goes wrong before there is data to validate (PyYAML keeps the last duplicate key; an alias can contain itself).
YAML_ERRORS = {"duplicate-key", "recursive-alias", "syntax-error"}


def test_every_broken_matrix_is_classified() -> None:
    stems = {p.stem for p in CORPUS.glob("*.yaml")}
    assert stems == SCHEMA_ERRORS.keys() | TABLE_ERRORS | YAML_ERRORS, "classify the new file in test_json_schema.py"


def loader_field(path: Path) -> tuple[str | int, ...]:
    """The field of the loader's one problem with the file, as a path: images[0].flavours[1] -> ('images', 0, 'flavours', 1)."""
    with pytest.raises(ConfigError) as caught:
        load_matrix(path, base_mirror="")
    [problem] = caught.value.problems
    return tuple(int(i) if i else key for key, i in re.findall(r"(\w+)|\[(\d+)\]", problem.field))


@pytest.mark.parametrize("stem", sorted(SCHEMA_ERRORS))
def test_broken_matrices_with_schema_errors_fail_validation_where_the_loader_points(stem: str) -> None:
    path = CORPUS / f"{stem}.yaml"
    found = set()
    for error in leaf_errors(VALIDATOR.iter_errors(yaml.safe_load(path.read_text()))):
        at = tuple(error.absolute_path)
        found.add((at, error.validator))
        if error.validator == "additionalProperties":
            found |= {((*at, key), error.validator) for key in set(error.instance) - set(error.schema["properties"])}
    assert (loader_field(path), SCHEMA_ERRORS[stem]) in found


@pytest.mark.parametrize("stem", sorted(TABLE_ERRORS))
def test_broken_matrices_with_table_errors_are_left_to_the_loader(stem: str) -> None:
    data = yaml.safe_load((CORPUS / f"{stem}.yaml").read_text())
    assert VALIDATOR.is_valid(data) and not loader_accepts(data)


# Each mapping the readers check, as (where to put an unknown key, a valid matrix that has it).
SECTIONS: dict[str, tuple[tuple[str | int, ...], dict[str, Any]]] = {
    "top": ((), BASE),
    "target": (("target",), BASE),
    "base": (("base",), BASE | {"base": {}}),
    "wheels": (("wheels",), BASE | {"wheels": {}}),
    "entry": (("images", 0), BASE),
    "exclude": (("exclude", 0), BASE | {"exclude": [{"flavour": "devel"}]}),
    "package": (("packages", 0), BASE | {"packages": [{"pip": "pyyaml"}]}),
    "entry package": (("images", 0, "packages", 0), with_value("images.0.packages", [{"pip": "pyyaml"}])),
}


@pytest.mark.parametrize("where", SECTIONS)
def test_an_unknown_key_in_every_section_is_refused_by_both_with_the_same_valid_keys(where: str) -> None:
    path, valid = SECTIONS[where]
    assert VALIDATOR.is_valid(valid) and loader_accepts(valid)
    data = copy.deepcopy(valid)
    node: Any = data
    for part in path:
        node = node[part]
    node["bogus"] = True
    with pytest.raises(ConfigError) as caught:
        load(data)
    [problem] = caught.value.problems
    assert "unknown key 'bogus'" in problem.message
    loader_keys = set(problem.message.rsplit("valid: ", 1)[1].split(", "))
    [error] = [e for e in leaf_errors(VALIDATOR.iter_errors(data)) if e.validator == "additionalProperties"]
    assert tuple(error.absolute_path) == path
    assert set(error.schema["properties"]) == loader_keys


# (path in BASE, value, valid): the schema and the loader must agree on each.
CASES = [
    ("packages", ["numpy<2", "tensorboardX", {"pip": "pyyaml", "import": "yaml"}, {"pip": "pillow", "import": None}], True),
    ("packages", [{"import": "yaml"}], False),
    ("packages", [{"pip": "pyyaml", "import": "a-b"}], False),
    ("packages", ["numpy; rm"], False),
    ("packages", ["-e ."], False),
    ("packages", ['numpy"'], False),
    ("packages", ["numpy\n"], False),
    ("packages", "numpy", False),
    ("apt_packages", ["git", "libc6:amd64", "g++"], True),
    ("apt_packages", ["-x"], False),
    ("apt_packages", ["a b"], False),
    ("apt_packages", [""], False),
    ("apt_packages", [1], False),
    ("apt_packages", "git", False),
    ("target", DELETE, False),
    ("target", None, False),
    ("target.registry", "127.0.0.1:5000", True),
    ("target.registry", "", True),
    ("target.registry", None, True),
    ("target.registry", "ghcr.io/team", False),
    ("target.registry", "ghcr.io\n", False),
    ("target.repository", "Team/pytorch", False),
    ("target.repository", "", False),
    ("target.repository", DELETE, False),
    ("base", None, False),
    ("base.repository", "example/cuda", True),
    ("base.mirror", "mirror.example:5000/hub", True),
    ("base.mirror", "", True),
    ("base.mirror", "https://mirror.example", False),
    ("base.check_tags", False, True),
    ("base.check_tags", "no", False),
    ("wheels.port", 8731, False),  # gone: wheels travel in the build context
    ("wheels.pytorch_index", None, True),
    ("wheels.pytorch_index", "http://127.0.0.1:5003/whl", True),
    ("wheels.pytorch_index", "http://x /whl", False),
    ("wheels.pytorch_index", 5, False),
    ("exclude", [{"flavour": "devel"}], True),
    ("exclude", [{"torch": ["2.5.1"], "flavour": "devel"}], True),
    ("exclude", [{}], False),
    ("exclude", [{"flavour": []}], False),
    ("exclude", [{"python": 3.1}], False),
    ("exclude", {"flavour": "devel"}, False),
    ("images", [], False),
    ("images", DELETE, False),
    ("images", "x", False),
    ("images", [CPU_ENTRY], True),
    ("images", [CPU_ENTRY | {"flavours": ["cpu"]}], True),
    ("images", [CPU_ENTRY | {"flavours": ["runtime"]}], False),
    ("images", [CPU_ENTRY | {"cuda": ["cpu", "12.4"]}], False),
    ("images.0.cuda", ["12.4", "cpu"], False),
    ("images.0.flavours", ["devel"], True),
    ("images.0.flavours", ["runtime", "runtime"], False),
    ("images.0.flavours", [], False),
    ("images.0.flavours", ["cpu"], False),
    ("images.0.flavours", "devel", False),
    ("images.0.omit", ["torchaudio"], True),
    ("images.0.omit", ["torch"], False),
    ("images.0.omit", "torchaudio", False),
    ("images.0.deprecated", True, True),
    ("images.0.deprecated", "yes", False),
    ("images.0.python", ["3.10"], True),
    ("images.0.python", 3.1, False),
    ("images.0.python", [], False),
    ("images.0.python", [" "], False),
    ("images.0.python", "", False),
    ("images.0.os", ["ubuntu22.04"], True),
    ("images.0.os", None, False),
    ("images.0.torch", DELETE, False),
]


@pytest.mark.parametrize(("path", "value", "valid"), CASES, ids=[f"{p}={v!r}"[:60] for p, v, _ in CASES])
def test_the_schema_and_the_loader_agree(path: str, value: Any, valid: bool) -> None:
    data = with_value(path, value)
    assert (VALIDATOR.is_valid(data), loader_accepts(data)) == (valid, valid)


# Valid shapes the loader refuses from the table (or on a rule the schema cannot state).
LEFT_TO_LOADER = [
    ("images.0.torch", "2.5.7"),  # not in the table
    ("images.0.cuda", "11.2"),  # torch 2.5.1 has no wheel for it
    ("images.0.python", "3.12"),  # ubuntu22.04 ships 3.10
    ("images.0.os", "ubuntu99.04"),
    ("exclude", [{"torch": "1.8.0"}]),  # matches no image
    ("images", [BASE["images"][0], BASE["images"][0]]),  # the same tags twice
]


@pytest.mark.parametrize(("path", "value"), LEFT_TO_LOADER, ids=[f"{p}={v!r}"[:60] for p, v in LEFT_TO_LOADER])
def test_what_the_schema_leaves_to_the_loader(path: str, value: Any) -> None:
    data = with_value(path, value)
    assert VALIDATOR.is_valid(data) and not loader_accepts(data)


def test_the_schema_defaults_are_the_loader_defaults() -> None:
    schema = images_schema()
    top, entry = schema["properties"], schema["properties"]["images"]["items"]
    cuda_spec = load(with_value("images.0.flavours", DELETE)).images[0]
    cpu_spec = load(with_value("images", [CPU_ENTRY])).images[0]
    assert [cuda_spec.flavour] == entry["else"]["properties"]["flavours"]["default"]
    assert [cpu_spec.flavour] == entry["then"]["properties"]["flavours"]["default"]
    assert cuda_spec.base.repository == top["base"]["properties"]["repository"]["default"]
    assert cuda_spec.base.mirror == top["base"]["properties"]["mirror"]["default"]
    index = top["wheels"]["properties"]["pytorch_index"]["default"]
    assert cpu_spec.wheel_indexes and all(url.startswith(f"{index}/") for url in cpu_spec.wheel_indexes.values())
