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
