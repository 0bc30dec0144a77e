"""The services the tests need, started idempotently: a Docker engine, a registry and the index replicas on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..engine import Engine, EngineUnavailable
from ..render import ROOT

STATE = ROOT / "build" / "testenv"
REGISTRY = "127.0.0.1:5000"
MIRROR = f"{REGISTRY}/mirror"
REGISTRY_DATA = Path("/var/lib/torch-images-registry")
REPLICA_PORT = 5003
REPLICA = f"http://127.0.0.1:{REPLICA_PORT}"

Say = Callable[[str], None]


class TestEnvError(Exception):
    """The test environment could not be set up."""


def run_logged(command: list[str], *, what: str, timeout: int = 1800, log: Path | None = None) -> None:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise TestEnvError(f"{what}: ran past {timeout} s") from None
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    if done.returncode != 0:
        hint = f"; see {log}" if log else ""
        raise TestEnvError(f"{what}: `{' '.join(command)}` exited {done.returncode}{hint}")


def ensure_engine(say: Say) -> Engine:
    """A running engine: reuse one that answers, else install Debian's docker.io and start dockerd."""
    try:
        return Engine()
    except EngineUnavailable:
        pass
    if os.geteuid() != 0:
        raise TestEnvError("no Docker engine answers and this is not root: start dockerd, or run `invoke testenv` as root")
    STATE.mkdir(parents=True, exist_ok=True)
    log = STATE / "apt.log"
    if not shutil.which("dockerd") or not shutil.which("docker-registry") or not shutil.which("debootstrap"):
        say("testenv: installing docker.io, docker-registry, debootstrap (Debian packages)")
        env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
        run_logged(["apt-get", "update", "-q"], what="apt-get update", log=log)
        run_logged(
            [*env_cmd, "apt-get", "install", "-y", "-q", "docker.io", "docker-registry", "debootstrap"],
            what="apt-get install",
            log=log,
        )
    _remove_stale_pid_file(Path("/var/run/docker.pid"))
    say("testenv: starting dockerd")
    spawn_daemon(["dockerd"], log=STATE / "dockerd.log")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            return Engine()
        except EngineUnavailable:
            continue
    raise TestEnvError(f"dockerd did not answer within 90 s; see {STATE / 'dockerd.log'}")


_SPAWN = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)\n"
    "print(child.pid)\n"
)


def spawn_daemon(command: list[str], *, log: Path, cwd: Path | None = None) -> int:
    """Start a service that outlives us and return its pid.

    An intermediate process starts it and exits, so the service is adopted by init, which reaps it when it dies.
    Were it our own child, a service killed while we run (a test kills dockerd) would stay a zombie until we exit:
    its pid still "alive", and dockerd refuses to start over a pid file that names a live process.
    """
    done = subprocess.run(
        [sys.executable, "-c", _SPAWN, str(log), *command], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise TestEnvError(f"could not start {command[0]}: {last[0]}")
    return int(done.stdout)


def process_alive(pid: int) -> bool:
    """True while pid names a process that runs (a zombie, dead and not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # the state follows the command name, which may hold spaces


def _remove_stale_pid_file(path: Path) -> None:
    """dockerd refuses to start over the pid file of a daemon that was killed (as at the end of a session)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    if not process_alive(pid):
        path.unlink(missing_ok=True)


def registry_up() -> bool:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def ensure_registry(say: Say) -> None:
    """Debian's docker-registry on 127.0.0.1:5000, storing under /var/lib/torch-images-registry."""
    if registry_up():
        return
    if not shutil.which("docker-registry"):
        raise TestEnvError("docker-registry is not installed (apt-get install docker-registry)")
    STATE.mkdir(parents=True, exist_ok=True)
    config = STATE / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {REGISTRY_DATA}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {REGISTRY}\n"
    )
    say(f"testenv: starting a registry on {REGISTRY}")
    spawn_daemon(["docker-registry", "serve", str(config)], log=STATE / "registry.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if registry_up():
            return
        time.sleep(0.5)
    raise TestEnvError(f"the registry did not answer on {REGISTRY}; see {STATE / 'registry.log'}")


def in_registry(ref: str) -> bool:
    """True when the loopback registry serves a manifest for ref."""
    name, tag = ref.removeprefix(f"{REGISTRY}/").rsplit(":", 1)
    request = urllib.request.Request(
        f"http://{REGISTRY}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(pid_file: Path) -> None:
    """Stop the process a pid file names (the replica this test environment started), and wait for its port."""
    try:
        os.kill(int(pid_file.read_text().strip()), 15)
    except (OSError, ValueError):
        raise TestEnvError(f"something else answers on {REPLICA}; stop it, then run `invoke testenv` again") from None
    deadline = time.monotonic() + 10
    while replica_up() and time.monotonic() < deadline:
        time.sleep(0.2)


def replica_digest() -> str | None:
    """What the replica on REPLICA serves (see replica.table_digest), or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{REPLICA}/", timeout=5) as response:
            return str(json.loads(response.read())["replica"])
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None


def replica_up() -> bool:
    return replica_digest() is not None


def ensure_replica(say: Say) -> None:
    """The index replicas on REPLICA, serving the current table: a replica of an older table is replaced."""
    from importlib import resources

    from .replica import table_digest

    wanted = table_digest(resources.files("torchimages").joinpath("data/compat.yaml").read_text("utf-8"))
    running = replica_digest()
    if running == wanted:
        return
    pid_file = STATE / "replica.pid"
    if running is not None:
        say(f"testenv: replacing the index replica on {REPLICA} (it serves another table)")
        _stop(pid_file)
    STATE.mkdir(parents=True, exist_ok=True)
    say(f"testenv: starting the PyTorch index and PyPI replicas on {REPLICA}")
    command = [sys.executable, "-m", "torchimages.testing.replica", "--port", str(REPLICA_PORT), "--cache", str(STATE / "replica-cache")]
    pid_file.write_text(f"{spawn_daemon(command, log=STATE / 'replica.log', cwd=ROOT)}\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if replica_digest() == wanted:
            return
        time.sleep(0.3)
    raise TestEnvError(f"the index replica did not answer on {REPLICA}; see {STATE / 'replica.log'}")
