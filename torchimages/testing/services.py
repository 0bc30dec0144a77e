"""The services the tests need, started idempotently: a Docker engine, a registry and the index replicas on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from pathlib import Path

from ..engine import Engine, EngineUnavailable
from ..registry import RegistryClient, RegistryError
from ..render import ROOT

STATE = ROOT / "build" / "testenv"
REGISTRY = "127.0.0.1:5000"
MIRROR = f"{REGISTRY}/mirror"
REGISTRY_DATA = Path("/var/lib/torch-images-registry")
TEST_NAMESPACE = "torch-images-test"  # what tests push to the loopback registry lives under this path
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
    for attempt in (1, 2):
        _clear_a_dead_daemon()
        say("testenv: starting dockerd" + (" again" if attempt > 1 else ""))
        daemon = spawn_daemon(["dockerd"], log=STATE / "dockerd.log")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process_alive(daemon):
            time.sleep(1)
            try:
                return Engine()
            except EngineUnavailable:
                continue
        _stop_pid(daemon)
    last = (STATE / "dockerd.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(nothing)"]
    raise TestEnvError(f"dockerd did not answer (it said: {last[0]}); see {STATE / 'dockerd.log'}")


DOCKER_PID = Path("/var/run/docker.pid")
CONTAINERD_PID = Path("/var/run/docker/containerd/containerd.pid")


def _clear_a_dead_daemon() -> None:
    """What a killed dockerd leaves must go before a new one starts.

    Its pid file makes dockerd refuse to start. The containerd it started outlives it for a moment (or for good):
    a new dockerd that finds that containerd's pid alive does not start its own and waits for the old one's socket,
    which never answers ("failed to start containerd: timeout waiting for containerd to start").
    """
    _remove_stale_pid_file(DOCKER_PID)
    if DOCKER_PID.exists():
        return  # a dockerd runs (it does not answer yet, or answers elsewhere): leave it and its containerd
    try:
        pid = int(CONTAINERD_PID.read_text().strip())
    except (OSError, ValueError):
        return
    _stop_pid(pid)
    CONTAINERD_PID.unlink(missing_ok=True)


def _stop_pid(pid: int) -> None:
    """SIGTERM, then SIGKILL after 15 s; returns once the process is gone (or a zombie)."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 15.0)):
        if not process_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


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


def ensure_registry(say: Say, keep: Collection[str] = ()) -> None:
    """Debian's docker-registry on 127.0.0.1:5000, storing under /var/lib/torch-images-registry.

    Before it starts (no test can be using it then), what earlier sessions left is swept: every repository under
    TEST_NAMESPACE but those in keep (the session's images, reused by the next session) is dropped, and blobs no
    tag reaches any more are garbage-collected. A session's leftovers thus last until the next one starts at most.
    """
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
    sweep_registry(config, REGISTRY_DATA, keep, say)
    say(f"testenv: starting a registry on {REGISTRY}")
    spawn_daemon(["docker-registry", "serve", str(config)], log=STATE / "registry.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if registry_up():
            return
        time.sleep(0.5)
    raise TestEnvError(f"the registry did not answer on {REGISTRY}; see {STATE / 'registry.log'}")


def sweep_registry(config: Path, root: Path, keep: Collection[str], say: Say) -> None:
    """Drop the test repositories not in keep and collect the blobs nothing tagged reaches (registry stopped).

    root is the storage's root directory, as config names it."""
    namespace = root / "docker" / "registry" / "v2" / "repositories" / TEST_NAMESPACE
    dropped = [path for path in sorted(namespace.glob("*")) if f"{TEST_NAMESPACE}/{path.name}" not in keep]
    for path in dropped:
        shutil.rmtree(path)
    if not (root / "docker").exists():
        return
    before = _disk_usage(root)
    log = STATE / "registry-gc.log"
    try:
        run_logged(["docker-registry", "garbage-collect", "--delete-untagged", str(config)], what="registry garbage-collect", log=log)
    except TestEnvError as exc:  # a registry that keeps some garbage still serves
        say(f"testenv: warning: {exc}")
        return
    freed = before - _disk_usage(root)
    names = ", ".join(path.name for path in dropped) or "none"
    say(f"testenv: registry swept: dropped test repositories: {names}; freed {freed / 1e9:.1f} GB")


def _disk_usage(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def _loopback(ref: str) -> tuple[str, str, str]:
    """host:port, repository and tag of a reference to a registry on 127.0.0.1 (the only ones tests talk to)."""
    host, _, rest = ref.partition("/")
    if not host.startswith("127.0.0.1:") or ":" not in rest:
        raise ValueError(f"{ref} is not a tag in a registry on 127.0.0.1")
    name, tag = rest.rsplit(":", 1)
    return host, name, tag


def _manifest_digest(ref: str) -> str | None:
    """The digest of the manifest ref's tag names in its loopback registry (None: no such tag)."""
    _loopback(ref)  # tests ask registries on 127.0.0.1 only
    return RegistryClient().digest(ref)


def delete_from_registry(ref: str) -> bool:
    """Delete the manifest a tag of a loopback registry names (with every tag on it); False when there was none."""
    digest = _manifest_digest(ref)
    if digest is None:
        return False
    host, name, _ = _loopback(ref)
    request = urllib.request.Request(f"http://{host}/v2/{name}/manifests/{digest}", method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=10):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # another tag on the same manifest took it already
            return False
        raise


def in_registry(ref: str) -> bool:
    """True when the loopback registry serves a manifest for ref."""
    try:
        return _manifest_digest(ref) is not None
    except RegistryError:
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


class ScratchRegistry:
    """A registry of the test's own on a loopback port: it can be killed and started again on the same storage."""

    def __init__(self, root: Path, port: int) -> None:
        self.address = f"127.0.0.1:{port}"
        self.config = root / "registry.yml"
        root.mkdir(parents=True, exist_ok=True)
        self.data = root / "data"
        settings = {"version": 0.1, "log": {"level": "warn"}, "http": {"addr": self.address},
                    "storage": {"filesystem": {"rootdirectory": str(self.data)}, "delete": {"enabled": True}}}  # fmt: skip
        self.config.write_text(json.dumps(settings))  # JSON is YAML
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["docker-registry", "serve", str(self.config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"the scratch registry did not start on {self.address}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None

    def manifest_complete(self, repository: str, tag: str) -> bool:
        """The tag's manifest is served and every blob it names is there (no tag points at a partial image)."""
        accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
        request = urllib.request.Request(f"http://{self.address}/v2/{repository}/manifests/{tag}", headers=accept)
        with urllib.request.urlopen(request, timeout=10) as response:
            manifest = json.loads(response.read())
        for blob in [manifest["config"], *manifest["layers"]]:
            head = urllib.request.Request(f"http://{self.address}/v2/{repository}/blobs/{blob['digest']}", method="HEAD")
            with urllib.request.urlopen(head, timeout=10) as response:
                if response.status != 200:
                    return False
        return True

    def tags(self, repository: str) -> list[str]:
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/{repository}/tags/list", timeout=10) as response:
                return list(json.loads(response.read()).get("tags") or [])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
