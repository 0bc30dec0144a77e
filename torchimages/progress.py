"""Progress of long transfers (wheel downloads, pushes): bytes, rate and time left on a terminal's status line.

When output is not a terminal (CI logs) nothing is drawn: each step is one line of its own instead.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

Progress = Callable[[int, int], None]  # (bytes done, bytes in all; 0 when not known yet)


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def describe(done: int, total: int, seconds: float) -> str:
    """'412.0 MB of 900.0 MB, 95.1 MB/s, 0:05 left' (without what is unknown)."""
    text = human_bytes(done) + (f" of {human_bytes(total)}" if total else "")
    if seconds > 0 and done > 0:
        rate = done / seconds
        text += f", {human_bytes(rate)}/s"
        if total > done:
            left = int((total - done) / rate)
            text += f", {left // 60}:{left % 60:02d} left"
    return text


class StatusLine:
    """One terminal line showing every running transfer; ordinary lines print above it, never through it."""

    def __init__(self, stream: TextIO | None = None, *, interactive: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self._stream = stream or sys.stdout
        self.interactive = self._stream.isatty() if interactive is None else interactive
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[str, str] = {}
        self._drawn = 0.0
        self._shown = False

    def say(self, line: str) -> None:
        """Print a whole line (the status line, if any, is cleared first and drawn again after)."""
        with self._lock:
            self._clear()
            print(line, file=self._stream, flush=True)
            self._draw()

    def meter(self, name: str, what: str) -> Meter:
        return Meter(self, name, what)

    def _set(self, name: str, text: str | None) -> None:
        if not self.interactive:
            return
        with self._lock:
            if text is None:
                self._active.pop(name, None)
            else:
                self._active[name] = text
            now = self._clock()
            if text is None or now - self._drawn >= 0.25:
                self._clear()
                self._draw()
                self._drawn = now

    def _clear(self) -> None:
        if self._shown:
            self._stream.write("\r\033[K")
            self._shown = False

    def _draw(self) -> None:
        if self.interactive and self._active:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self._stream.write(" | ".join(f"[{n}] {t}" for n, t in self._active.items())[:width])
            self._stream.flush()
            self._shown = True


class Meter:
    """The progress of one transfer of one image; call it with (done, total), close it at the end."""

    def __init__(self, status: StatusLine, name: str, what: str) -> None:
        self._status, self._name, self._what = status, name, what
        self._started = status._clock()

    def __call__(self, done: int, total: int, *, what: str = "") -> None:
        if what and what != self._what:  # a new file: its rate starts afresh
            self._what, self._started = what, self._status._clock()
        self._status._set(self._name, f"{self._what}: {describe(done, total, self._status._clock() - self._started)}")

    def close(self) -> None:
        self._status._set(self._name, None)
