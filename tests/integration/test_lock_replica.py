"""The shipped matrix resolved against the replicas of the PyTorch index and PyPI: every image gets exactly its own builds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchimages.matrix import load_matrix
from torchimages.testing import services

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """`invoke lock --replica --format json` on the shipped images.yaml, as a user runs it."""
    services.ensure_replica(print)
    out = tmp_path_factory.mktemp("lock")
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "lock", "--replica", "--format", "json", "--out-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout), out


def test_every_shipped_image_resolves_to_its_own_variant(locked: tuple[dict, Path]) -> None:
    document, _ = locked
    specs = {s.name: s for s in load_matrix(ROOT / "images.yaml").images}
    assert sorted(i["name"] for i in document["images"]) == sorted(specs)
    for image in document["images"]:
        spec = specs[image["name"]]
        assert image["resolved"] is True and image["error"] is None, image
        for build in spec.family:
            got = image["packages"][build.name]
            assert got == build.version, (spec.name, build)
            if build.on_pypi:
                assert "+" not in got, (spec.name, got)  # PyPI's build: no local version
            else:
                assert got.endswith(f"+{build.variant}"), (spec.name, got)
        assert set(image["packages"]) >= {"numpy", "jupyterlab", "tensorboard", "tensorboardx", "pandas", "scipy"}


def test_the_cuda_11_2_images_get_the_cu111_linux_x86_64_wheels(locked: tuple[dict, Path]) -> None:
    document, out = locked
    cuda_11_2 = [s for s in load_matrix(ROOT / "images.yaml").images if s.cuda == "11.2"]
    assert len(cuda_11_2) == 6
    for spec in cuda_11_2:
        files = {f["name"]: f for f in json.loads((out / "locks" / f"{spec.name}.json").read_text())["files"]}
        for name in ("torch", "torchvision"):
            assert files[name]["url"].endswith("%2Bcu111-cp38-cp38-linux_x86_64.whl"), files[name]
            assert f"/whl/cu111/{name}-" in files[name]["url"]
