"""Each image pins exactly its own torch, torchvision and torchaudio builds, whatever other variants pip can see."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest
from packaging.specifiers import SpecifierSet

from torchimages.compat import load_compat
from torchimages.config import ConfigError, load_document
from torchimages.family import FamilyError, compatible, family_builds, missing_python
from torchimages.matrix import build_matrix

TABLE = load_compat()
HEADER = "target: {repository: example/pytorch}\nbase: {mirror: ''}\nimages:\n"


def expand(entries: str, **kwargs: object):
    return build_matrix(load_document("m.yaml", text=HEADER + textwrap.dedent(entries)), base_mirror="", **kwargs)  # type: ignore[arg-type]


def problems(entries: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        expand(entries)
    return [p.message for p in caught.value.problems]


def pins(torch: str, variant: str, **kwargs: tuple[str, ...]) -> list[str]:
    return [b.requirement for b in family_builds(TABLE, TABLE.torch[torch], variant, **kwargs)]


def test_the_pins_admit_only_the_image_s_own_variant() -> None:
    """PEP 440 as pip applies it: == without a local version admits every variant; the pins here do not."""
    builds = ["2.11.0", "2.11.0+cu126", "2.11.0+cu128", "2.11.0+cpu"]
    assert [v for v in builds if v in SpecifierSet("==2.11.0")] == builds  # why the old pins mixed variants
    for requirement, own in (("torch===2.11.0", "2.11.0"), ("torch==2.11.0+cu126", "2.11.0+cu126")):
        specifier = SpecifierSet(requirement.removeprefix("torch"))
        assert [v for v in builds if specifier.contains(v, prereleases=True)] == [own]


def test_index_pypi_and_cpu_builds() -> None:
    assert pins("2.11.0", "cu126") == ["torch==2.11.0+cu126", "torchvision==0.26.0+cu126", "torchaudio==2.11.0+cu126"]
    assert pins("2.11.0", "cu130") == ["torch===2.11.0", "torchvision===0.26.0", "torchaudio===2.11.0"]  # PyPI's default
    assert pins("2.14.1", "cpu") == ["torch==2.14.1+cpu", "torchvision==0.29.1+cpu", "torchaudio==2.11.0+cpu"]
    assert pins("2.13.0", "cpu", omit=("torchvision", "torchaudio")) == ["torch==2.13.0+cpu"]


def test_torchaudio_2_11_serves_later_torch_from_the_nearest_variant_folder() -> None:
    (spec,) = [s for s in expand('  - {torch: "2.14.1", cuda: "13.2", python: "3.12"}\n').images if s.flavour == "runtime"]
    assert spec.torchaudio == "2.11.0+cu130"  # no cu132 build of torchaudio 2.11: the cu130 one runs on CUDA 13.2
    assert spec.wheel_indexes == {
        "torch": "https://download.pytorch.org/whl/cu132",
        "torchvision": "https://download.pytorch.org/whl/cu132",
        "torchaudio": "https://download.pytorch.org/whl/cu130",
    }
    (pypi,) = [s for s in expand('  - {torch: "2.15.0", cuda: "13.2", python: "3.12"}\n').images if s.flavour == "runtime"]
    assert pypi.requirements[:3] == ("torch===2.15.0", "torchvision===0.29.2", "torchaudio===2.11.0")
    assert pypi.wheel_indexes == {}


def test_torchaudio_before_0_10_is_one_cpu_build_for_every_variant() -> None:
    (torchaudio,) = [b for b in family_builds(TABLE, TABLE.torch["1.8.1"], "cu111") if b.name == "torchaudio"]
    assert (torchaudio.requirement, torchaudio.on_pypi) == ("torchaudio===0.8.1", True)
    assert family_builds(TABLE, TABLE.torch["1.10.1"], "cu111")[2].requirement == "torchaudio==0.10.1+cu111"


@pytest.mark.parametrize(
    ("companion", "torch", "fits"),
    [("cu126", "cu126", True), ("cu130", "cu132", True), ("cu132", "cu130", False), ("cu126", "cu130", False), ("cpu", "cu126", False)],
)
def test_a_companion_fits_the_same_cuda_major_with_an_older_or_equal_minor(companion: str, torch: str, fits: bool) -> None:
    assert compatible(companion, torch) is fits


def test_a_torchaudio_without_a_fitting_build_is_refused() -> None:
    release = replace(TABLE.torch["2.11.0"], pypi_default="cu126")  # a PyPI torchaudio for CUDA 12 only
    table = replace(TABLE, torch={**TABLE.torch, "2.11.0": release})
    with pytest.raises(FamilyError, match="torchaudio 2.11.0 has no build for cu130 on PyPI's build"):
        family_builds(table, replace(TABLE.torch["2.14.1"]), "cu130")


def test_the_python_list_is_what_every_shipped_member_has_wheels_for() -> None:
    assert "3.13" in TABLE.torch["2.5.1"].python
    builds = family_builds(TABLE, TABLE.torch["2.5.1"], "cu124")
    assert missing_python(TABLE, TABLE.torch["2.5.1"], builds, "3.12") is None
    assert missing_python(TABLE, TABLE.torch["2.5.1"], builds[:1], "3.13") is None  # torch alone has cp313
    assert problems('  - {torch: "2.5.1", cuda: "12.4", python: "3.13"}\n') == [
        "torch 2.5.1: torchvision 0.20.1 has no wheels for python 3.13; it has 3.9, 3.10, 3.11, 3.12"
    ]
    assert problems('  - {torch: "2.15.0", cuda: "13.2", python: "3.15", os: ubuntu24.04}\n')[0].startswith(
        "torch 2.15.0: torchaudio 2.11.0 has no wheels for python 3.15"
    )


def test_a_pending_release_is_refused_with_its_reason() -> None:
    table = replace(TABLE, torch={**TABLE.torch, "2.15.0": replace(TABLE.torch["2.15.0"], pending="no torchvision for it yet")})
    with pytest.raises(ConfigError, match="torch 2.15.0 cannot be built yet: no torchvision for it yet"):
        expand('  - {torch: "2.15.0", cuda: "13.2", python: "3.12"}\n', table=table)
