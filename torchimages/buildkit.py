"""BuildKit's progress as dockerd streams it for `POST /build?version=2`, read without a BuildKit client.

dockerd sends each status as a chunk `{"id": "moby.buildkit.trace", "aux": "<base64>"}` whose payload is BuildKit's
protobuf StatusResponse (moby v20.10 builder-next, BuildKit v0.8 api/services/control/control.proto):

    StatusResponse {1: repeated Vertex vertexes; 2: repeated VertexStatus statuses; 3: repeated VertexLog logs}
    Vertex         {1: digest; 2: repeated inputs; 3: name; 4: cached; 5: started; 6: completed; 7: error}
    VertexLog      {1: vertex; 2: timestamp; 3: stream (1 stdout, 2 stderr); 4: msg}
    Timestamp      {1: seconds; 2: nanos}

A step's output exists only there (no `stream` chunks), so the log is written from it, in the shape of
`docker buildx build --progress=plain`: `#N <step>`, its output lines, `#N DONE 1.2s`, `#N CACHED` or `#N ERROR: ...`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

# "[venv 2/3] RUN ..." or "[stage-1 4/12] COPY ...": a Dockerfile step (the others are BuildKit's own: "[internal] ...").
_STEP = re.compile(r"^\[(?:(?P<stage>[^\]\s]+)\s+)?(?P<n>\d+)/(?P<of>\d+)\] (?P<text>.*)$", re.DOTALL)
_TAIL = 20  # lines of a step's output kept for its error message
_CANCELLED = "context canceled"


class TraceError(ValueError):
    """A trace payload that is not the protobuf it should be."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise TraceError("a varint runs past the end of the message")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: ints for varints, bytes for everything else."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, kind = key >> 3, key & 7
        value: int | bytes
        if kind == 0:
            value, at = _varint(data, at)
        elif kind == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise TraceError("a field runs past the end of the message")
            value, at = data[at : at + size], at + size
        elif kind in (1, 5):
            size = 8 if kind == 1 else 4
            if at + size > len(data):
                raise TraceError("a field runs past the end of the message")
            value, at = data[at : at + size], at + size
        else:
            raise TraceError(f"wire type {kind} is not one protobuf has")
        yield number, value


def _seconds(data: bytes) -> float:
    parts = {number: value for number, value in _fields(data) if isinstance(value, int)}
    return parts.get(1, 0) + parts.get(2, 0) / 1e9


def _text(value: int | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Vertex:
    """One node of the build graph as a status names it: a Dockerfile step, or one of BuildKit's own."""

    digest: str
    name: str = ""
    cached: bool = False
    started: float | None = None
    completed: float | None = None
    error: str = ""


@dataclass(frozen=True)
class Log:
    vertex: str
    stream: int  # 1 stdout, 2 stderr
    data: bytes


@dataclass(frozen=True)
class Status:
    vertexes: tuple[Vertex, ...] = ()
    logs: tuple[Log, ...] = ()


def decode_status(payload: str) -> Status:
    """One trace chunk's aux (base64 of a StatusResponse)."""
    try:
        raw = base64.b64decode(payload, validate=True)
    except ValueError as exc:
        raise TraceError(f"a trace payload is not base64: {exc}") from None
    vertexes, logs = [], []
    for number, value in _fields(raw):
        if not isinstance(value, bytes):
            continue
        if number == 1:
            fields = {"digest": "", "name": "", "cached": False, "started": None, "completed": None, "error": ""}
            for inner, item in _fields(value):
                if inner == 1:
                    fields["digest"] = _text(item)
                elif inner == 3:
                    fields["name"] = _text(item)
                elif inner == 4:
                    fields["cached"] = bool(item)
                elif inner in (5, 6) and isinstance(item, bytes):
                    fields["started" if inner == 5 else "completed"] = _seconds(item)
                elif inner == 7:
                    fields["error"] = _text(item)
            vertexes.append(Vertex(**fields))  # type: ignore[arg-type]
        elif number == 3:
            parts = dict(_fields(value))
            stream = parts.get(3, 1)
            data = parts.get(4, b"")
            logs.append(Log(vertex=_text(parts.get(1, b"")), stream=stream if isinstance(stream, int) else 1,
                            data=data if isinstance(data, bytes) else b""))  # fmt: skip
    return Status(vertexes=tuple(vertexes), logs=tuple(logs))


def step_name(vertex_name: str) -> str | None:
    """ "[venv 2/3] RUN x" -> "step venv 2/3: RUN x"; None for BuildKit's own vertexes ("[internal] load ...")."""
    match = _STEP.match(vertex_name)
    if not match:
        return None
    text = " ".join(match.group("text").split())
    stage = f"{match.group('stage')} " if match.group("stage") else ""
    return f"step {stage}{match.group('n')}/{match.group('of')}: {text}"


@dataclass
class Trace:
    """Folds a build's statuses into a plain log, the step that runs, and each step's last lines of output."""

    log: TextIO
    on_step: Callable[[str], None] | None = None
    on_done: Callable[[str], None] | None = None  # each vertex's name once it has completed, built or cached
    numbers: dict[str, int] = field(default_factory=dict)
    vertexes: dict[str, Vertex] = field(default_factory=dict)
    tails: dict[str, list[str]] = field(default_factory=dict)
    partial: dict[str, bytes] = field(default_factory=dict)  # a step's output after its last newline
    current: str | None = None  # the newest Dockerfile step that started
    failed: str | None = None  # the digest of the vertex that reported an error

    def feed(self, status: Status) -> None:
        for vertex in status.vertexes:
            self._vertex(vertex)
        for log in status.logs:
            self._output(log)

    def _vertex(self, vertex: Vertex) -> None:
        seen = self.vertexes.get(vertex.digest)
        number = self.numbers.setdefault(vertex.digest, len(self.numbers) + 1)
        self.vertexes[vertex.digest] = vertex
        if vertex.started is not None and (seen is None or seen.started is None):
            self.log.write(f"#{number} {vertex.name}\n")
            if (step := step_name(vertex.name)) is not None and not vertex.cached:
                self.current = step
                if self.on_step:
                    self.on_step(step)
        if vertex.completed is not None and (seen is None or seen.completed is None):
            self._flush(vertex.digest)
            if vertex.error:
                # The first step to fail: BuildKit then cancels the steps still running beside it ("context canceled").
                if self.failed is None or _CANCELLED in self.vertexes[self.failed].error:
                    self.failed = vertex.digest
                self.log.write(f"#{number} ERROR: {vertex.error}\n")
            else:
                if vertex.cached:
                    self.log.write(f"#{number} CACHED\n")
                else:
                    took = vertex.completed - (vertex.started if vertex.started is not None else vertex.completed)
                    self.log.write(f"#{number} DONE {took:.1f}s\n")
                if self.on_done:
                    self.on_done(vertex.name)

    def _output(self, log: Log) -> None:
        """Output comes in pieces that may split a line, or a character: whole lines are written."""
        number = self.numbers.setdefault(log.vertex, len(self.numbers) + 1)
        *lines, rest = (self.partial.pop(log.vertex, b"") + log.data).split(b"\n")
        if rest:
            self.partial[log.vertex] = rest
        for line in lines:
            self._line(log.vertex, number, line.decode("utf-8", "replace"))

    def _line(self, digest: str, number: int, line: str) -> None:
        self.log.write(f"#{number} {line}\n")
        if line.strip():
            self.tails[digest] = (self.tails.get(digest, []) + [line.rstrip()])[-_TAIL:]

    def _flush(self, digest: str) -> None:
        if rest := self.partial.pop(digest, b""):
            self._line(digest, self.numbers[digest], rest.decode("utf-8", "replace"))

    def error_step(self) -> str | None:
        """The Dockerfile step that failed (or, when no vertex said so, the one that ran last)."""
        if self.failed is not None:
            return step_name(self.vertexes[self.failed].name) or self.vertexes[self.failed].name
        return self.current

    def error_output(self) -> str:
        """The failed step's last lines of output."""
        for digest in list(self.partial):
            self._flush(digest)
        failed = self.failed or next((d for d, v in self.vertexes.items() if step_name(v.name) == self.current), None)
        return "\n".join(self.tails.get(failed, [])) if failed else ""
