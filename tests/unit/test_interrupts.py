"""Interrupts: the signal handler of a build run, and the engine's wait that an interrupt cuts short."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker.errors
import pytest
import requests.exceptions

from torchimages.engine import Cancelled, Engine, EngineError, RunTimeout
from torchimages.pipeline import _interrupts
from torchimages.wheels import PIPS

ROOT = Path(__file__).parents[2]


class CancellableEngine:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def test_the_first_signal_stops_the_run_and_a_later_sigterm_does_not_abort_it() -> None:
    engine, stop = CancellableEngine(), threading.Event()
    before = signal.getsignal(signal.SIGINT)
    with _interrupts(engine, stop) as received:  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs in the main thread at the next bytecode; the watcher stops pip
        assert received == [signal.SIGINT] and stop.is_set() and engine.cancelled.is_set()
        assert PIPS.stopped.is_set(), "pip processes are not being stopped"
        os.kill(os.getpid(), signal.SIGTERM)  # what a CI runner sends a few seconds after SIGINT
        time.sleep(0.1)
        assert received == [signal.SIGINT]  # still here: the report will be written
    assert signal.getsignal(signal.SIGINT) is before and not PIPS.stopped.is_set()


def test_sigterm_alone_stops_the_run_too() -> None:
    engine, stop = CancellableEngine(), threading.Event()
    with _interrupts(engine, stop) as received:  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert received == [signal.SIGTERM] and engine.cancelled.is_set()


def test_a_second_ctrl_c_aborts_at_once() -> None:
    script = (
        "import os, signal, threading, time\n"
        "from torchimages.pipeline import _interrupts\n"
        "class E:\n    def cancel(self): pass\n"
        "with _interrupts(E(), threading.Event()):\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
        "print('not aborted')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 130 and "not aborted" not in done.stdout, done.stdout + done.stderr
    assert "SIGINT: stopping" in done.stderr


class FakeContainer:
    def __init__(self, timeouts: int, *, error: Exception | None = None, kill_error: Exception | None = None) -> None:
        self.timeouts, self.error, self.kill_error, self.killed = timeouts, error, kill_error, 0

    def wait(self, timeout: float) -> dict:
        if self.error is not None:
            raise self.error
        if self.timeouts > 0:
            self.timeouts -= 1
            raise requests.exceptions.ReadTimeout("Read timed out")
        return {"StatusCode": 3}

    def kill(self) -> None:
        self.killed += 1
        if self.kill_error is not None:
            raise self.kill_error


def bare_engine() -> Engine:
    engine = Engine.__new__(Engine)
    engine.cancelled = threading.Event()
    return engine


def test_wait_polls_until_the_container_exits() -> None:
    container = FakeContainer(timeouts=2)
    assert bare_engine()._wait(container, 60, what="torch-verify in x") == {"StatusCode": 3}
    assert container.killed == 0


def test_wait_kills_the_container_on_an_interrupt_even_if_it_just_exited() -> None:
    engine = bare_engine()
    engine.cancel()
    gone = docker.errors.APIError("409 Client Error: Conflict (container is not running)")
    container = FakeContainer(timeouts=5, kill_error=gone)
    with pytest.raises(Cancelled, match="torch-verify in x stopped by an interrupt"):
        engine._wait(container, 60, what="torch-verify in x")
    assert container.killed == 1


def test_wait_kills_a_container_that_runs_past_its_time() -> None:
    container = FakeContainer(timeouts=10**6)
    started = time.monotonic()
    with pytest.raises(RunTimeout, match="ran past 0 s"):
        bare_engine()._wait(container, 0.01, what="torch-verify in x")
    assert container.killed == 1 and time.monotonic() - started < 5


def test_wait_reports_a_lost_engine_at_once() -> None:
    container = FakeContainer(timeouts=0, error=requests.exceptions.ConnectionError("('Connection aborted.', FileNotFoundError(2))"))
    with pytest.raises(EngineError, match="lost the Docker engine while waiting for torch-verify in x"):
        bare_engine()._wait(container, 600, what="torch-verify in x")
