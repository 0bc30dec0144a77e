"""A second Docker engine of a test's own, in a network namespace of its own, optionally on a small disk that fills.

It is a real dockerd (with the containerd it starts) beside the session's engine: its own data root, exec root,
pid file and unix socket, so nothing it does touches the session's images. A client reaches it with
DOCKER_HOST=unix://<socket>, as it would reach an engine on another machine; from its network (a loopback of
its own, nothing else) this machine's 127.0.0.1 cannot be reached, so its bases come through copy_image.

The namespace is not optional: a dockerd without a bridge (`--bridge=none`) deletes the interface named docker0
in its network namespace, which in this machine's namespace is the session engine's bridge.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import requests

from ..engine import Engine
from .services import TestEnvError, run_logged


class ScratchEngine:
    """A dockerd started and stopped by a test.

    disk: a tmpfs of that size (for example "1g") holds the engine's data root, so a build can fill it.
    The daemon runs in a network namespace made for it; its socket stays on this file system.
    """

    def __init__(self, *, disk: str | None = None) -> None:
        # Short paths: containerd's sockets live under the exec root and a unix socket path has 108 bytes at most.
        self.root = Path(tempfile.mkdtemp(prefix="ti-engine-"))
        self.data = self.root / "data"
        self.socket = self.root / "docker.sock"
        self.disk = disk
        self.netns = f"ti-{secrets.token_hex(4)}"
        self._netns_made = False
        self.log = self.root / "dockerd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._mounted = False

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def environment(self) -> dict[str, str]:
        """The environment of a client process that talks to this engine."""
        return {**os.environ, "DOCKER_HOST": self.host}

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=300)

    def start(self) -> ScratchEngine:
        run_logged(["ip", "netns", "add", self.netns], what="making the engine's network namespace")
        self._netns_made = True
        run_logged(["ip", "-n", self.netns, "link", "set", "lo", "up"], what="raising its loopback")
        self.data.mkdir(parents=True)
        if self.disk:
            run_logged(["mount", "-t", "tmpfs", "-o", f"size={self.disk}", "tmpfs", str(self.data)], what="mounting the engine's disk")
            self._mounted = True
        command = [
            "dockerd",
            f"--data-root={self.data}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'dockerd.pid'}",
            f"--host={self.host}",
            "--bridge=none",  # builds use the host network, verification none: no bridge, no iptables rules
            "--iptables=false",
            "--ip6tables=false",
        ]
        # nsenter joins the network namespace only; `ip netns exec` also remounts /sys, hiding the cgroup mounts
        # dockerd needs ("Devices cgroup isn't mounted").
        command = ["nsenter", f"--net=/run/netns/{self.netns}", *command]
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                self.client().ping()
                return self
            time.sleep(0.3)
        tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        self.stop()
        raise TestEnvError("the scratch dockerd did not answer: " + " / ".join(tail))

    def stop(self) -> None:
        """Stop the daemon (its containers and containerd with it), unmount its disk and remove its folders."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=30)
            self._process = None
        # The disk, and overlay mounts a daemon killed midway leaves: deepest first.
        for mount in sorted(_mounts_under(self.root), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mount], check=False)
        self._mounted = False
        shutil.rmtree(self.root, ignore_errors=True)
        if self._netns_made:
            subprocess.run(["ip", "netns", "delete", self.netns], check=False)
            self._netns_made = False


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]


def copy_image(source: Engine, target: ScratchEngine, ref: str) -> None:
    """What a registry would do for an engine elsewhere: the image's layers, through the two engines' APIs."""
    target.client().api.load_image(source._api.get_image(ref))


@contextlib.contextmanager
def scratch_engine(*, disk: str | None = None) -> Iterator[ScratchEngine]:
    engine = ScratchEngine(disk=disk).start()
    try:
        yield engine
    finally:
        engine.stop()
