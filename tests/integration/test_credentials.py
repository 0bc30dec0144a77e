"""Pushing to a registry that needs a password works from the Docker config, and the password never leaks."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from torchimages.engine import Engine
from torchimages.model import BuildResult

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # bcrypt for htpasswd, from the standard library (libxcrypt)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"


@pytest.fixture()
def private_registry(tmp_path: Path, free_port: int) -> Iterator[tuple[str, str, str]]:
    """A registry on a loopback port that demands a random user and password."""
    user, password = f"ti-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    (tmp_path / "htpasswd").write_text(f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    address = f"127.0.0.1:{free_port}"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "data")}},
        "http": {"addr": address},
        "auth": {"htpasswd": {"realm": "torch-images-test", "path": str(tmp_path / "htpasswd")}},
    }
    (tmp_path / "registry.yml").write_text(yaml.safe_dump(config))
    server = subprocess.Popen(["docker-registry", "serve", str(tmp_path / "registry.yml")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=2)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError(f"the private registry did not start on {address}")
        yield address, user, password
    finally:
        server.terminate()
        server.wait(timeout=30)


def _build(config: Path, out: Path, docker_config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
    command = [sys.executable, "-m", "invoke", "build", "--config", str(config), "--push", "--out-dir", str(out)]
    command += ["--wheelhouse", str(ROOT / "build" / "wheelhouse")]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)


def test_push_needs_the_password_and_never_shows_it(
    engine: Engine, built: list[BuildResult], private_registry: tuple[str, str, str], tmp_path: Path, untag_after: Callable[[Path], None]
) -> None:
    address, user, password = private_registry
    data = yaml.safe_load(FIXTURE.read_text())
    data["target"] = {"registry": address, "repository": "torch-images-test/private"}
    data["images"] = [data["images"][0]]  # the CPU image: reused from the session build
    config = tmp_path / "private.yaml"
    config.write_text(yaml.safe_dump(data))
    untag_after(config)

    anonymous = tmp_path / "anonymous"
    anonymous.mkdir()
    (anonymous / "config.json").write_text("{}")
    refused = _build(config, tmp_path / "out-refused", anonymous)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"push of {address}/torch-images-test/private" in refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr

    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {address: {"auth": auth}}}))
    out = tmp_path / "out"
    done = _build(config, out, docker_config)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((out / "report.json").read_text())["images"][0]
    assert record["pushed"] and all(p["ref"].startswith(address) for p in record["pushed"])

    image = engine.image(record["pushed"][0]["ref"])
    assert image is not None
    seen = [done.stdout, done.stderr, refused.stdout, refused.stderr, json.dumps(image.labels), *engine.history(image.id)]
    seen += [path.read_text(errors="replace") for path in out.rglob("*") if path.is_file()]
    for secret in (password, auth):
        assert not any(secret in text for text in seen)
