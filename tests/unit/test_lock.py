"""Locks: only the image's own builds pass, they round-trip, and a lock is reused only while its inputs hold."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import urllib.parse
from dataclasses import replace
from pathlib import Path

from torchimages.config import load_document
from torchimages.listing import format_locks
from torchimages.lock import Indexes, Lock, LockedFile, current_lock, family_problems, lock_inputs, read_lock, write_lock
from torchimages.matrix import build_matrix
from torchimages.model import Package
from torchimages.testing.replica import StandIn
from torchimages.wheels import WheelError

INDEX = "https://download.pytorch.org/whl"


def spec(entry: str):
    text = f"target: {{repository: example/pytorch}}\nbase: {{mirror: ''}}\nimages:\n  - {entry}\n"
    return build_matrix(load_document("m.yaml", text=textwrap.dedent(text)), base_mirror="").images[0]


def locked(name: str, version: str, folder: str) -> LockedFile:
    filename = f"{name}-{version.replace('+', '%2B')}-cp312-cp312-manylinux_2_28_x86_64.whl"
    return LockedFile(name=name, version=version, url=f"https://cdn.example/whl/{folder}/{filename}", sha256="0" * 64)


def test_only_the_image_s_own_builds_pass() -> None:
    image = spec('{torch: "2.11.0", cuda: "12.6", python: "3.12"}')
    good = [
        locked("torch", "2.11.0+cu126", "cu126"),
        locked("torchvision", "0.26.0+cu126", "cu126"),
        locked("torchaudio", "2.11.0+cu126", "cu126"),
    ]
    assert family_problems(image, Lock(image=image.name, inputs="x", files=tuple(good))) == []
    mixed = [good[0], locked("torchvision", "0.26.0+cu128", "cu128"), good[2]]
    assert family_problems(image, Lock(image=image.name, inputs="x", files=tuple(mixed))) == [
        "torchvision resolved to 0.26.0+cu128, the image needs 0.26.0+cu126 (cu126)"
    ]
    elsewhere = [good[0], good[1], locked("torchaudio", "2.11.0+cu126", "simple")]
    assert family_problems(image, Lock(image=image.name, inputs="x", files=tuple(elsewhere)))[0].startswith(
        "torchaudio 2.11.0+cu126 came from https://cdn.example/whl/simple/"
    )
    assert family_problems(image, Lock(image=image.name, inputs="x", files=tuple(good[:2]))) == [
        "torchaudio is missing from the resolution"
    ]


def test_a_lock_round_trips_and_is_reused_only_while_its_inputs_hold(tmp_path: Path) -> None:
    image = spec('{torch: "2.11.0", cuda: "13.0", python: "3.12"}')
    indexes = Indexes()
    lock = Lock(image=image.name, inputs=lock_inputs(image, indexes), files=(locked("torch", "2.11.0", "packages"),))
    write_lock(tmp_path, image, lock)
    assert read_lock(tmp_path, image) == lock
    assert current_lock(tmp_path, image, lock_inputs(image, indexes)) == lock
    assert current_lock(tmp_path, image, lock_inputs(image, Indexes(index_url="http://127.0.0.1:1/simple"))) is None  # another index
    assert current_lock(tmp_path, image, lock_inputs(replace(image, python="3.10"), indexes)) is None  # another python
    assert current_lock(tmp_path, image, lock_inputs(replace(image, packages=(*image.packages, Package("tqdm", "tqdm"))), indexes)) is None
    (tmp_path / f"{image.name}.json").write_text("{not json")
    assert read_lock(tmp_path, image) is None


def test_the_lock_file_is_hash_pinned_requirements() -> None:
    lock = Lock(image="i", inputs="x", files=(locked("torch", "2.11.0+cu126", "cu126"),))
    assert lock.requirements == f"torch==2.11.0+cu126 \\\n    --hash=sha256:{'0' * 64}\n"
    assert lock.files[0].filename == "torch-2.11.0+cu126-cp312-cp312-manylinux_2_28_x86_64.whl"


def test_lock_json_names_each_image_with_its_builds_or_its_error() -> None:
    ok, bad = spec('{torch: "2.11.0", cuda: "12.6", python: "3.12"}'), spec('{torch: "2.11.0", cuda: "12.8", python: "3.12"}')
    results = {
        ok.name: Lock(image=ok.name, inputs="x", files=(locked("torch", "2.11.0+cu126", "cu126"),)),
        bad.name: WheelError("no match"),
    }
    document = json.loads(format_locks([ok, bad], results, "json"))
    assert document == {
        "images": [
            {"name": ok.name, "resolved": True, "error": None, "packages": {"torch": "2.11.0+cu126"}},
            {"name": bad.name, "resolved": False, "error": "no match", "packages": {}},
        ]
    }
    assert f"  {bad.name}: no match" in format_locks([ok, bad], results, "table")


def test_the_lock_installs_pypi_s_build_from_a_wheelhouse_that_also_holds_another_variant(tmp_path: Path) -> None:
    """As in the build: a find-links folder gives pip no hashes to choose by, and it prefers 2.13.0+cpu over 2.13.0."""
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    builds = {
        v: StandIn("torch", v, f"{sys.version_info[0]}.{sys.version_info[1]}", "linux_x86_64", (), None) for v in ("2.13.0", "2.13.0+cpu")
    }
    for wheel in builds.values():
        (wheelhouse / urllib.parse.unquote(wheel.filename)).write_bytes(wheel.content)
    pypi = LockedFile(name="torch", version="2.13.0", url=f"https://files.example/{builds['2.13.0'].filename}",
                      sha256=hashlib.sha256(builds["2.13.0"].content).hexdigest())  # fmt: skip

    def install(requirements: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "requirements.txt").write_text(requirements)
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse), "--require-hashes",
                   "--no-deps", "--target", str(tmp_path / "target"), "-r", str(tmp_path / "requirements.txt")]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env={"PIP_CONFIG_FILE": "/dev/null"})

    naive = install(f"torch==2.13.0 --hash=sha256:{pypi.sha256}\n")
    assert naive.returncode != 0 and "DO NOT MATCH THE HASHES" in naive.stderr  # what == did in the build
    exact = install(Lock(image="i", inputs="x", files=(pypi,)).requirements)
    assert exact.returncode == 0, exact.stderr
    assert (tmp_path / "target" / "torch-2.13.0.dist-info").is_dir()
