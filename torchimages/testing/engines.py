"""A second Docker engine of a test's own: on a small disk that fills, or in a network namespace of its own.

It is a real dockerd (with the containerd it starts) beside the session's engine: its own data root, exec root,
pid file and unix socket, so nothing it does touches the session's images. A client reaches it with
DOCKER_HOST=unix://<socket>, as it would reach an engine on another machine.
"""

from __future__ import annotations

import contextlib
import os
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

from .services import TestEnvError, run_logged


class ScratchEngine:
    """A dockerd started and stopped by a test.

    disk: a tmpfs of that size (for example "1g") holds the engine's data root, so a build can fill it.
    netns: the daemon runs in that network namespace (created by the caller); its socket stays on this file system.
    """

    def __init__(self, *, disk: str | None = None, netns: str | None = None) -> None:
        # Short paths: containerd's sockets live under the exec root and a unix socket path has 108 bytes at most.
        self.root = Path(tempfile.mkdtemp(prefix="ti-engine-"))
        self.data = self.root / "data"
        self.socket = self.root / "docker.sock"
        self.disk = disk
        self.netns = netns
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
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
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


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]


@contextlib.contextmanager
def scratch_engine(*, disk: str | None = None, netns: str | None = None) -> Iterator[ScratchEngine]:
    engine = ScratchEngine(disk=disk, netns=netns).start()
    try:
        yield engine
    finally:
        engine.stop()
