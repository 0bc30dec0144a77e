"""Builds run on any engine: one in a network namespace of its own cannot reach this machine's loopback, and
still builds and verifies an image of the test matrix, its wheels arriving in the build context."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from torchimages.engine import Engine
from torchimages.matrix import load_matrix
from torchimages.testing.engines import ScratchEngine, copy_image, scratch_engine

ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"
WHEELHOUSE = ROOT / "build" / "wheelhouse"


@pytest.fixture()
def remote() -> Iterator[ScratchEngine]:
    if os.geteuid() != 0:
        pytest.skip("a second dockerd in a network namespace needs root")
    with scratch_engine() as engine:
        yield engine


def test_an_engine_in_its_own_network_namespace_builds_and_verifies_an_image(engine: Engine, remote: ScratchEngine, tmp_path: Path) -> None:
    bridge = Path("/sys/class/net/docker0")
    assert bridge.exists(), "the session engine's bridge is missing before the test"
    data = yaml.safe_load(FIXTURE.read_text())
    data["images"] = data["images"][:1]  # the CPU image
    config = tmp_path / "images.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    (spec,) = load_matrix(config).images
    for ref in dict.fromkeys((spec.base_image, spec.venv_base_image)):
        copy_image(engine, remote, ref)

    # The engine really is elsewhere: from its network, this machine's registry on 127.0.0.1:5000 does not answer.
    probe = (
        "import socket\n"
        "try:\n    socket.create_connection(('127.0.0.1', 5000), 3)\n    print('reached')\n"
        "except OSError as e:\n    print('unreachable', e)"
    )
    seen = remote.client().containers.run(spec.base_image, ["python3", "-c", probe], network_mode="host", remove=True)
    assert seen.decode().startswith("unreachable"), seen

    out = tmp_path / "out"
    command = [sys.executable, "-m", "invoke", "build", "--config", str(config), "--out-dir", str(out), "--wheelhouse", str(WHEELHOUSE)]
    done = subprocess.run(command, cwd=ROOT, env=remote.environment(), capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "report.json").read_text())["images"][0]
    assert (record["status"], record["verified"]) == ("built", True), record
    tagged = {tag for image in remote.client().images.list() for tag in image.tags}
    assert set(spec.refs) <= tagged
    assert engine.image(record["image_id"]) is None  # built there, not here
    # The venv stage (the wheels, and the venv before it was copied) is removed after the build: the engine holds
    # the image's layers (its base among them) and nothing else of size.
    image = remote.client().images.get(spec.refs[0])
    stored = remote.client().df()["LayersSize"]
    assert stored < image.attrs["Size"] + 50_000_000, (stored, image.attrs["Size"])
    assert bridge.exists(), "the second engine took the session engine's bridge"
