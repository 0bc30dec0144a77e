"""The pipeline's second opinion: what torch-verify saw inside an image against every build the matrix promised."""

from __future__ import annotations

import textwrap

from torchimages.config import load_document
from torchimages.matrix import build_matrix
from torchimages.model import ImageSpec, VerifyReport
from torchimages.verify import promise_problems

TEXT = """\
target: {repository: example/pytorch}
base: {mirror: ""}
packages: [tqdm]
images:
  - {torch: "2.11.0", cuda: "12.6", python: "3.12"}
  - {torch: "2.11.0", cuda: "13.0", python: "3.12"}
"""
INDEX, PYPI = (
    s for s in build_matrix(load_document("m.yaml", text=textwrap.dedent(TEXT)), base_mirror="").images if s.flavour == "runtime"
)


def seen(spec: ImageSpec, torch: str, cuda: str, vision: str, audio: str) -> VerifyReport:
    """What torch-verify reports for an image whose every other package imported."""
    packages = {"tqdm": "4", "torchvision": vision, "torchaudio": audio}
    return VerifyReport(
        ok=True, exit_code=0, torch=torch, torch_cuda=cuda, cudnn="9.10.2", python=spec.python, gpu=False, packages=packages
    )


def test_an_image_with_its_own_builds_keeps_its_promises() -> None:
    assert promise_problems(INDEX, seen(INDEX, "2.11.0+cu126", "12.6", "0.26.0+cu126", "2.11.0+cu126")) == []
    assert promise_problems(PYPI, seen(PYPI, "2.11.0+cu130", "13.0", "0.26.0+cu130", "2.11.0+cu130")) == []


def test_a_companion_built_for_another_cuda_breaks_the_promise() -> None:
    assert promise_problems(INDEX, seen(INDEX, "2.11.0+cu126", "12.6", "0.26.0+cu128", "2.11.0+cu126")) == [
        "torchvision is 0.26.0+cu128, the matrix promised 0.26.0+cu126 (built for cu126)"
    ]


def test_pypi_s_build_must_be_the_pypi_default_variant() -> None:
    problems = promise_problems(PYPI, seen(PYPI, "2.11.0+cu128", "12.8", "0.26.0+cu130", "2.11.0+cu130"))
    assert "torch is 2.11.0+cu128, the matrix promised 2.11.0 (built for cu130)" in problems
