"""Locks: only the image's own builds pass, they round-trip, and a lock is reused only while its inputs hold."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

from torchimages.config import load_document
from torchimages.listing import format_locks
from torchimages.lock import Indexes, Lock, LockedFile, current_lock, family_problems, lock_inputs, read_lock, write_lock
from torchimages.matrix import build_matrix
from torchimages.model import Package
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
    assert current_lock(tmp_path, image, indexes) == lock
    assert current_lock(tmp_path, image, Indexes(index_url="http://127.0.0.1:1/simple")) is None  # another index
    assert current_lock(tmp_path, replace(image, python="3.10"), indexes) is None  # another python
    assert current_lock(tmp_path, replace(image, packages=(*image.packages, Package("tqdm", "tqdm"))), indexes) is None
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
