"""tensorboard and jupyter serve HTTP from inside an image, on a published loopback port."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from torchimages.engine import Engine
from torchimages.testing.containers import Service

pytestmark = pytest.mark.integration


def _get(url: str, *, within: float = 90) -> tuple[int, bytes]:
    deadline = time.monotonic() + within
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {within:.0f} s: {last}")


def test_tensorboard_serves_a_logdir(engine: Engine, cpu_image: str, free_port: int) -> None:
    port = free_port
    write_event = "from tensorboardX import SummaryWriter as W; w = W('/tmp/logs'); w.add_scalar('x', 1.0, 0); w.close()"
    command = ["sh", "-c", f'python -c "{write_event}" && exec tensorboard --logdir /tmp/logs --port 6007 --bind_all']
    service = Service.start(cpu_image, command, ports={"6007/tcp": ("127.0.0.1", port)}, name=f"ti-tb-{port}")
    try:
        status, body = _get(f"http://127.0.0.1:{port}/data/runs")
        assert status == 200
        assert json.loads(body) == ["."], body
    finally:
        logs = service.logs()
        service.stop()
    assert "TensorBoard" in logs


def test_jupyter_serves(engine: Engine, cpu_image: str, free_port: int) -> None:
    port = free_port
    command = ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--ServerApp.token=", "--ServerApp.password="]
    service = Service.start(cpu_image, command, ports={"8888/tcp": ("127.0.0.1", port)}, name=f"ti-jl-{port}")
    try:
        status, body = _get(f"http://127.0.0.1:{port}/api")
        assert status == 200
        assert "version" in json.loads(body)
    finally:
        service.stop()
