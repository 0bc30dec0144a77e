"""Lint, types and the oldest Python each side supports, checked by the tools themselves (CI runs these)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from torchimages.matrix import load_matrix
from torchimages.render import render_dockerfile

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
# The host side (tasks and the library) supports the Python of Ubuntu 22.04; torch-verify runs inside
# images whose python goes back to 3.8 (the CUDA 11.2 images).
HOST_PYTHON = "3.10"
IMAGE_PYTHON = "3.8"


def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable} (scripts/bootstrap --dev installs it)")
    return subprocess.run([str(path), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("ruff", ("check", ".")),
        ("ruff", ("format", "--check", ".")),
        ("mypy", ()),
        ("vermin", ("--no-tips", "--violations", f"-t={HOST_PYTHON}-", "tasks.py", "torchimages", "tests", "benchmarks")),
        ("vermin", ("--no-tips", "--violations", f"-t={IMAGE_PYTHON}-", "scripts/verify.py")),
    ],
    ids=["ruff", "ruff-format", "mypy", "vermin-host", "vermin-verify"],
)
def test_the_code_passes(name: str, args: tuple[str, ...]) -> None:
    done = tool(name, *args)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_declared_python_matches_the_checks() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert f'requires-python = ">={HOST_PYTHON}"' in text
    assert f'target-version = "py{HOST_PYTHON.replace(".", "")}"' in text
    assert f'python_version = "{HOST_PYTHON}"' in text


def test_every_rendered_dockerfile_is_hadolint_clean(tmp_path: Path) -> None:
    """The checked-in Dockerfiles, and an older python's install step (pip), which none of them uses; the template
    states each rule it sets aside, and why, beside the RUN it concerns."""
    legacy = tmp_path / "Dockerfile"
    legacy.write_text(render_dockerfile(replace(load_matrix(ROOT / "tests" / "fixtures" / "images.yaml").images[0], python="3.7")))
    files = [*sorted(ROOT.glob("dockerfiles/generated/*/Dockerfile")), legacy]
    assert len(files) > 10
    done = tool("hadolint", "--no-color", "--failure-threshold", "info", *map(str, files))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
