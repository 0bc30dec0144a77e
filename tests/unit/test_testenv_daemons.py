"""The test environment's services: started so that none of them can be left a zombie of ours."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from torchimages.testing import services


def _wait(predicate, seconds: float = 10) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_killed_child_that_is_not_reaped_is_not_alive_and_its_pid_file_is_stale(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert services.process_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        assert _wait(lambda: not services.process_alive(child.pid))
        assert Path(f"/proc/{child.pid}").exists()  # a zombie: dead, and still in the process table until we reap it
        pid_file = tmp_path / "docker.pid"
        pid_file.write_text(f"{child.pid}\n")
        services._remove_stale_pid_file(pid_file)
        assert not pid_file.exists()
    finally:
        child.kill()
        child.wait()


def test_the_pid_file_of_a_running_process_is_kept(tmp_path: Path) -> None:
    pid_file = tmp_path / "docker.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    services._remove_stale_pid_file(pid_file)
    assert pid_file.exists()


def test_a_spawned_service_is_not_our_child_so_it_vanishes_when_killed(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    pid = services.spawn_daemon(["sh", "-c", "echo started; exec sleep 60"], log=log)
    try:
        assert services.process_alive(pid)
        status = Path(f"/proc/{pid}/status").read_text()
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        assert parent != os.getpid()
        assert os.getsid(pid) == pid  # a session of its own: a Ctrl-C at our terminal does not reach it
        assert _wait(lambda: log.read_text() == "started\n")
    finally:
        os.kill(pid, signal.SIGKILL)
    assert _wait(lambda: not Path(f"/proc/{pid}").exists()), "the killed service is left a zombie"


def test_a_service_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    try:
        services.spawn_daemon(["/nonexistent/dockerd"], log=tmp_path / "log")
    except services.TestEnvError as exc:
        assert "could not start /nonexistent/dockerd" in str(exc) and "No such file" in str(exc)
    else:
        raise AssertionError("no error for a missing program")


def test_the_containerd_a_killed_dockerd_leaves_is_stopped_before_a_new_dockerd_starts(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A new dockerd that finds the old containerd's pid alive waits for its socket and never starts (seen in CI)."""
    old_containerd = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "containerd.pid"
        pid_file.write_text(f"{old_containerd.pid}\n")
        monkeypatch.setattr(services, "CONTAINERD_PID", pid_file)
        monkeypatch.setattr(services, "DOCKER_PID", tmp_path / "docker.pid")  # no dockerd runs
        services._clear_a_dead_daemon()
        assert not services.process_alive(old_containerd.pid) and not pid_file.exists()
    finally:
        old_containerd.kill()
        old_containerd.wait()


def test_the_containerd_of_a_running_dockerd_is_left_alone(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    containerd = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "containerd.pid").write_text(f"{containerd.pid}\n")
        (tmp_path / "docker.pid").write_text(f"{os.getpid()}\n")  # a live process stands for the running dockerd
        monkeypatch.setattr(services, "CONTAINERD_PID", tmp_path / "containerd.pid")
        monkeypatch.setattr(services, "DOCKER_PID", tmp_path / "docker.pid")
        services._clear_a_dead_daemon()
        assert services.process_alive(containerd.pid) and (tmp_path / "containerd.pid").exists()
    finally:
        containerd.kill()
        containerd.wait()
