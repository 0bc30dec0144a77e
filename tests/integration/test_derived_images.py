"""The images as users meet them: as the FROM of their own Dockerfile, from a login shell, through `invoke run`."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import docker
import pytest

from torchimages.engine import Engine
from torchimages.model import BuildResult
from torchimages.render import context_tar
from torchimages.testing.testenv import REGISTRY

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
PROBE = "torch_images_probe"


def probe_wheel() -> tuple[str, bytes]:
    """A minimal pure-Python wheel, built by hand: what a user's own package looks like to pip."""
    name = f"{PROBE}-1.0-py3-none-any.whl"
    files = {
        f"{PROBE}/__init__.py": b"VALUE = 42\n",
        f"{PROBE}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: 1.0\n".encode(),
        f"{PROBE}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    files[f"{PROBE}-1.0.dist-info/RECORD"] = (record + f"{PROBE}-1.0.dist-info/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return name, buffer.getvalue()


@pytest.fixture()
def derived(engine: Engine, cpu_image: str, tmp_path: Path):
    """Build a derived image from the CPU image; it is removed afterwards, also when the test fails."""
    created: list[str] = []

    def build(dockerfile: str, files: dict[str, bytes]) -> str:
        with open(tmp_path / "derived.log", "w") as log:
            image_id = engine.build(context_tar({"Dockerfile": dockerfile.encode(), **files}), log=log)
        created.append(image_id)
        return image_id

    yield build
    for image_id in created:
        engine.remove_image(image_id, force=True)


def test_a_derived_image_pip_installs_as_the_default_user_and_apt_installs_as_root(derived, engine: Engine, cpu_image: str) -> None:
    wheel, data = probe_wheel()
    dockerfile = (
        f"FROM {cpu_image}\n"
        f"COPY {wheel} /tmp/\n"
        f"RUN pip install /tmp/{wheel}\n"
        "USER root\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends jq && rm -rf /var/lib/apt/lists/*\n"
        "USER 1000:1000\n"
    )
    image = derived(dockerfile, {wheel: data})
    check = f"import {PROBE}, sys; print({PROBE}.VALUE, {PROBE}.__file__, sys.prefix)"
    for user in (None, "12345:12345"):
        outcome = engine.run(image, ["sh", "-c", f'python -c "{check}" && jq --version'], user=user, timeout=120)
        assert outcome.exit_code == 0, f"as {user or 'the default user'}: {outcome.output}"
        value, path, prefix, jq = outcome.output.split()
        assert value == "42" and path.startswith("/opt/venv/lib/") and prefix == "/opt/venv", outcome.output
        assert jq.startswith("jq-"), outcome.output


def test_derived_images_inherit_no_shell_and_no_debian_frontend(engine: Engine, built: list[BuildResult]) -> None:
    api = docker.from_env().api
    for result in built:
        config = api.inspect_image(result.tags[0])["Config"]
        assert not config.get("Shell"), f"{result.spec.name}: SHELL {config.get('Shell')} is inherited by every derived image"
        names = [entry.split("=", 1)[0] for entry in config.get("Env") or []]
        assert "DEBIAN_FRONTEND" not in names, f"{result.spec.name}: {config['Env']}"
        assert "PATH" in names and "VIRTUAL_ENV" in names


def test_login_shells_keep_the_venv_first_on_path(engine: Engine, built: list[BuildResult]) -> None:
    probe = 'python -c "import torch, sys; print(sys.prefix)"; command -v python'
    for result in built:
        outcome = engine.run(result.tags[0], ["bash", "-lc", probe], timeout=120)
        assert outcome.exit_code == 0, f"{result.spec.name}: {outcome.output}"
        assert outcome.output.split() == ["/opt/venv", "/opt/venv/bin/python"], outcome.output
        if result.spec.flavour == "devel":  # the CUDA folders of the base survive a login shell too
            nvcc = engine.run(result.tags[0], ["bash", "-lc", "nvcc --version"], timeout=60)
            assert nvcc.exit_code == 0 and f"release {result.spec.cuda}" in nvcc.output, nvcc.output


def test_su_to_the_default_user_keeps_the_venv(engine: Engine, cpu_image: str) -> None:
    outcome = engine.run(cpu_image, ["su", "-", "researcher", "-c", 'python -c "import torch; print(torch.__version__)"'], user="0:0")
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.strip().endswith("+cpu"), outcome.output


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_provenance_labels_name_the_revision_and_the_base_digest(engine: Engine, built: list[BuildResult]) -> None:
    head = _git("rev-parse", "HEAD")
    for result in built:
        info = engine.image(result.tags[0])
        assert info is not None
        labels = info.labels
        # A reused image keeps the revision of the run that built it: an ancestor of HEAD, never a stranger.
        revision = labels["org.opencontainers.image.revision"].removesuffix("-dirty")
        assert revision == head or _git("merge-base", "--is-ancestor", revision, head) == "", labels
        # The base digest is what the registry serves for the base's tag, read here over HTTP.
        name, tag = result.spec.base_image.removeprefix(f"{REGISTRY}/").rsplit(":", 1)
        request = urllib.request.Request(
            f"http://{REGISTRY}/v2/{name}/manifests/{tag}",
            method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert labels["org.opencontainers.image.base.digest"] == response.headers["Docker-Content-Digest"]
        assert labels["org.opencontainers.image.base.name"] == f"docker.io/{result.spec.base_upstream}"


def test_invoke_run_runs_a_command_in_an_image_of_the_matrix(cpu_image: str) -> None:
    invoke_run = [sys.executable, "-m", "invoke", "run", "--config", "tests/fixtures/images.yaml", "--cuda", "cpu", "--"]
    script = "import os, torch; print(torch.__version__, os.getcwd(), os.getuid())"
    done = subprocess.run(
        [*invoke_run, "python", "-c", script], cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    version, cwd, uid = done.stdout.split()
    assert version.endswith("+cpu") and cwd == "/workspace" and uid == str(os.getuid())
    assert "no NVIDIA runtime on this engine" in done.stderr  # this machine has no GPU, and says so
    failing = subprocess.run([*invoke_run, "python", "-c", "raise SystemExit(3)"], cwd=ROOT, capture_output=True, stdin=subprocess.DEVNULL)
    assert failing.returncode == 3


def test_invoke_doctor_reports_this_host(engine: Engine) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "doctor", "--config", "tests/fixtures/images.yaml"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Docker engine: reachable" in done.stdout
    assert "2.13.0-py3.11-cpu-debian12  (CPU image)" in done.stdout
    if shutil.which("nvidia-smi") is None:  # this kind of machine: no GPU, and the doctor says so plainly
        assert "NVIDIA driver: none (nvidia-smi is not installed" in done.stdout
        assert "no NVIDIA GPU: only the CPU images can use this host" in done.stdout
    assert done.stdout.rstrip().endswith("OK: this host can run 1 of 3 images.") or shutil.which("nvidia-smi")


def _serve(args: list[str], url_prefix: str, cwd: Path) -> tuple[str, int]:
    """Start `invoke run` with a server, wait for the URL it prints to answer, stop it; (the URL, the HTTP status)."""
    command = [sys.executable, "-m", "invoke", "-r", str(ROOT), "run", *args]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert process.stderr is not None
        url = ""
        for line in process.stderr:
            if line.startswith(url_prefix):
                url = line.split(": ", 1)[1].split()[0]
                break
        assert url.startswith("http://127.0.0.1:"), f"no URL printed (exit {process.wait(timeout=30)}): {process.stderr.read()}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return url, response.status
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(1)
    finally:
        process.send_signal(signal.SIGINT)  # docker proxies it to the container, which stops and goes (--rm)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def test_invoke_run_starts_jupyter_and_tensorboard_and_prints_their_urls(cpu_image: str, free_port: int, tmp_path: Path) -> None:
    url, status = _serve(["--image", cpu_image, "--jupyter", "--jupyter-port", str(free_port)], "jupyter: ", tmp_path)
    assert status == 200 and url.startswith(f"http://127.0.0.1:{free_port}/lab?token=")
    (tmp_path / "runs").mkdir()
    with socket.socket() as sock:  # another port: the first may be held until its container is gone
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url, status = _serve(["--image", cpu_image, "--tensorboard", "runs", "--tensorboard-port", str(port)], "tensorboard: ", tmp_path)
    assert status == 200 and url == f"http://127.0.0.1:{port}/"
    leftovers = docker.from_env().api.containers(all=True, filters={"ancestor": cpu_image})
    deadline = time.monotonic() + 30
    while leftovers and time.monotonic() < deadline:
        time.sleep(1)
        leftovers = docker.from_env().api.containers(all=True, filters={"ancestor": cpu_image})
    assert leftovers == [], "invoke run left a container behind"
