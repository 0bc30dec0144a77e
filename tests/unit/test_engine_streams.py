"""engine.py turns errors inside Docker's JSON streams into exceptions (docker-py does not).

The BuildKit streams are dockerd's own, recorded by tests/fixtures/buildkit/record.py (dockerd 20.10.24)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torchimages.engine import BuildError, Cancelled, Engine, PushError, split_ref

RECORDED = Path(__file__).parents[1] / "fixtures" / "buildkit"


def recorded(name: str) -> list[dict]:
    return [json.loads(line) for line in (RECORDED / name).read_text().splitlines()]


class FakeApi:
    """Stands in for docker.APIClient: replays recorded stream chunks."""

    def __init__(self, build: list[dict] | None = None, push: list[dict] | None = None) -> None:
        self._build, self._push = build or [], push or []
        self.params: list[dict] = []
        self.pruned: list[dict] = []
        self.cache: list[dict] = []

    def df(self) -> dict:
        return {"BuildCache": self.cache}

    def networks(self, names: list[str]) -> list[dict]:
        return [{"Name": "bridge"}]

    def version(self) -> dict:
        return {"Version": "20.10.24", "ApiVersion": "1.41"}  # what `invoke testenv` runs

    def prune_builds(self, filters: dict, all: bool) -> None:
        self.pruned.append(filters)
        self.cache = [record for record in self.cache if record["ID"] not in filters["id"]]

    def build(self, **_: Any) -> Iterator[dict]:
        yield from self._build

    def push(self, *_: Any, **__: Any) -> Iterator[dict]:
        yield from self._push


def engine_with(api: FakeApi) -> Engine:
    engine = Engine.__new__(Engine)
    engine._api = api  # type: ignore[assignment]
    engine.cancelled = threading.Event()

    def post(params: dict, body: object) -> Iterator[dict]:
        api.params.append(params)
        return api.build(params=params, fileobj=body)

    engine._post_build = post  # type: ignore[method-assign]
    return engine


def test_a_failed_run_step_is_named_with_its_exit_code_and_its_tools_words() -> None:
    log = io.StringIO()
    with pytest.raises(BuildError) as caught:
        engine_with(FakeApi(build=recorded("apt_fails.jsonl"))).build(b"", log=log)
    step = "step 3/3: RUN set -eux; echo 'E: Unable to locate package nope' >&2; exit 100"
    assert caught.value.step == step
    assert str(caught.value) == f"the command exited 100: Unable to locate package nope (at {step})"
    assert "E: Unable to locate package nope" in caught.value.tail and "before" not in caught.value.tail  # its own output only
    # The log reads as `--progress=plain` does: each step, its output, how it ended.
    text = log.getvalue()
    assert "#5 [2/3] RUN echo before\n#5 before\n#5 DONE" in text, text
    assert "#6 E: Unable to locate package nope\n" in text and "#6 ERROR: executor failed running" in text, text


def test_uvs_error_is_named_with_the_cause_it_gives_under_it() -> None:
    """uv's words as it says them (0.13.9, a wheel whose bytes the lock does not name), printed by a failing step."""
    with pytest.raises(BuildError) as caught:
        engine_with(FakeApi(build=recorded("uv_fails.jsonl"))).build(b"", log=io.StringIO())
    message = str(caught.value)
    reason = "error: Failed to download `pyyaml==6.0.4` Caused by: Hash mismatch for `pyyaml==6.0.4`"
    assert message.startswith(f"the command exited 1: {reason} (at step venv 2/2: RUN"), message
    assert "/bin/sh -c" not in message


@pytest.mark.parametrize(
    ("said", "code"),
    [
        ("The command '/bin/sh -c set -eux; pip install -r requirements.txt' returned a non-zero code: 1", "1"),  # classic
        ("executor failed running [/bin/sh -c set -eux; pip install x]: exit code: 28", "28"),  # BuildKit v0.8
        ('process "/bin/sh -c set -eux; pip install x" did not complete successfully: exit code: 2', "2"),  # later BuildKit
    ],
)
def test_each_builders_words_for_a_failed_command_give_its_exit_code(said: str, code: str) -> None:
    output = "Processing /tmp/wheels/torch.whl\nERROR: Could not install packages due to an OSError: [Errno 28] No space left on device\n"
    error = BuildError(said, step="step venv 4/4: RUN x", tail=output)
    reason = "Could not install packages due to an OSError: [Errno 28] No space left on device"
    assert str(error) == f"the command exited {code}: {reason} (at step venv 4/4: RUN x)"


def test_a_build_error_that_is_not_a_failed_command_is_kept_as_docker_says_it() -> None:
    with pytest.raises(BuildError) as caught:
        engine_with(FakeApi(build=recorded("no_base.jsonl"))).build(b"", log=io.StringIO())
    assert str(caught.value) == (
        "failed to solve with frontend dockerfile.v0: failed to create LLB definition: "
        "127.0.0.1:5000/torch-images-test/no-such-base:1: not found (at [internal] load metadata for "
        "127.0.0.1:5000/torch-images-test/no-such-base:1)"
    )


def test_a_buildkit_build_reports_the_image_id_and_each_step_that_runs() -> None:
    steps: list[str] = []
    api = FakeApi(build=recorded("two_stages.jsonl"))
    log = io.StringIO()
    image_id = engine_with(api).build(b"", log=log, on_step=steps.append, labels={"a": "b"})
    assert image_id == next(c["aux"]["ID"] for c in recorded("two_stages.jsonl") if c.get("id") == "moby.image.id")
    assert [step.split(":")[0] for step in steps] == ["step venv 2/2", "step stage-1 2/3", "step stage-1 3/3"]
    assert all(len(step) <= 100 for step in steps)
    assert api.params == [{"version": "2", "networkmode": "default", "labels": '{"a": "b"}'}]
    assert "+ cat /tmp/wheels/a.txt" in log.getvalue() and "hello" in log.getvalue()


def test_each_step_is_reported_done_once_with_the_name_buildkit_gives_it() -> None:
    """What lets the next image of a venv group start once the venv stage is built (the pipeline looks for its mark)."""
    done: list[str] = []
    engine_with(FakeApi(build=recorded("two_stages.jsonl"))).build(b"", log=io.StringIO(), on_done=done.append)
    assert len(done) == len(set(done)) and done[0] == "[internal] load remote build context", done
    venv = next(i for i, name in enumerate(done) if name.startswith("[venv 2/2]"))
    assert done.index(next(name for name in done if name.startswith("[stage-1 3/3]"))) > venv


def test_a_step_that_fails_is_not_reported_done() -> None:
    done: list[str] = []
    with pytest.raises(BuildError):
        engine_with(FakeApi(build=recorded("uv_fails.jsonl"))).build(b"", log=io.StringIO(), on_done=done.append)
    assert done and not any(name.startswith("[venv") and "RUN" in name and "uv" in name for name in done), done


def test_an_engine_without_a_bridge_builds_on_the_hosts_network() -> None:
    class NoBridge(FakeApi):
        def networks(self, names: list[str]) -> list[dict]:
            return []

    api = NoBridge(build=recorded("two_stages.jsonl"))
    engine_with(api).build(b"", log=io.StringIO())
    assert api.params[0]["networkmode"] == "host"


@pytest.mark.parametrize(("version", "builds"), [("19.03.15", False), ("20.10.24", True), ("27.3.1", True)])
def test_an_engine_older_than_20_10_is_told_why_before_anything_is_sent(version: str, builds: bool) -> None:
    class Versioned(FakeApi):
        def version(self) -> dict:
            return {"Version": version}

    api = Versioned(build=recorded("two_stages.jsonl"))
    if builds:
        engine_with(api).build(b"", log=io.StringIO())
    else:
        with pytest.raises(BuildError, match=f"this Docker engine is {version}; .* needs Docker 20.10 or later"):
            engine_with(api).build(b"", log=io.StringIO())
    assert len(api.params) == int(builds)


def test_the_classic_builder_reports_the_image_id_and_each_step() -> None:
    stream = [{"stream": "Step 1/2 : FROM sha256:abc\n"}, {"stream": "Step 2/2 : LABEL a=b\n"}, {"aux": {"ID": "sha256:def"}}]
    steps: list[str] = []
    api = FakeApi(build=stream)
    assert engine_with(api).build(b"", log=io.StringIO(), on_step=steps.append, classic=True) == "sha256:def"
    assert steps == ["step 1/2: FROM sha256:abc", "step 2/2: LABEL a=b"]
    assert "version" not in api.params[0]


def test_a_build_that_reports_no_image_fails() -> None:
    stream = [c for c in recorded("two_stages.jsonl") if c.get("id") != "moby.image.id"]
    with pytest.raises(BuildError, match="without reporting an image ID"):
        engine_with(FakeApi(build=stream)).build(b"", log=io.StringIO())


def test_a_trace_that_cannot_be_read_is_logged_and_the_build_goes_on() -> None:
    log = io.StringIO()
    stream = [{"id": "moby.buildkit.trace", "aux": "CgP/"}, *recorded("two_stages.jsonl")]  # a field longer than its message
    assert engine_with(FakeApi(build=stream)).build(b"", log=log).startswith("sha256:")
    assert "a progress message of the engine could not be read" in log.getvalue()


def test_the_step_that_failed_is_named_not_the_one_buildkit_cancelled_beside_it() -> None:
    from torchimages.buildkit import Status, Trace, Vertex

    trace = Trace(io.StringIO())
    failed = Vertex(
        "a", name="[venv 4/4] RUN uv pip install", started=1.0, completed=2.0, error="executor failed running [x]: exit code: 1"
    )
    cancelled = Vertex("b", name="[stage-1 3/9] RUN apt-get install", started=1.0, completed=2.5, error="context canceled")
    trace.feed(Status(vertexes=(failed, cancelled)))
    assert trace.error_step() == "step venv 4/4: RUN uv pip install"
    trace = Trace(io.StringIO())
    trace.feed(Status(vertexes=(cancelled, failed)))  # a cancelled step reported first gives way to the real failure
    assert trace.error_step() == "step venv 4/4: RUN uv pip install"


def test_output_split_inside_a_character_or_a_line_is_written_whole() -> None:
    from torchimages.buildkit import Log, Status, Trace, Vertex

    log = io.StringIO()
    trace = Trace(log)
    trace.feed(Status(vertexes=(Vertex("a", name="[2/2] RUN x", started=1.0),)))
    for piece in (b"caf\xc3", b"\xa9 ", b"au lait\nnext"):
        trace.feed(Status(logs=(Log("a", 1, piece),)))
    trace.feed(Status(vertexes=(Vertex("a", name="[2/2] RUN x", started=1.0, completed=2.0),)))
    assert log.getvalue().splitlines()[1:] == ["#1 café au lait", "#1 next", "#1 DONE 1.0s"]


def test_a_fixed_size_field_cut_short_is_a_trace_error() -> None:
    import base64

    from torchimages.buildkit import TraceError, decode_status

    with pytest.raises(TraceError, match="runs past the end"):
        decode_status(base64.b64encode(bytes([0x09, 1, 2, 3])).decode())  # field 1, 64-bit, 3 bytes of 8


def test_the_build_cache_is_read_again_while_another_reading_runs() -> None:
    """dockerd before 23 answers a second concurrent `GET /system/df` with an error: it is waited out."""
    import docker.errors

    class Busy(FakeApi):
        calls = 0

        def df(self) -> dict:
            self.calls += 1
            if self.calls == 1:
                raise docker.errors.APIError("500 Server Error", explanation="a disk usage operation is already running")
            return super().df()

    api = Busy(build=recorded("two_stages.jsonl"))
    engine_with(api).build(b"", log=io.StringIO())
    assert api.calls >= 3  # refused, before the build, after it


def test_parents_as_dockerd_23_lists_them_are_followed() -> None:
    """From API 1.42 a record names its parents in `Parents` (a list) and leaves `Parent` empty."""

    def record(id: str, description: str, parents: list[str], **flags: bool) -> dict:
        return {"ID": id, "Parent": "", "Parents": parents, "Description": description, "InUse": False, "Shared": False, **flags}

    api = FakeApi()
    api.cache = [
        record("base", "from local ", [], Shared=True),
        record("req", "fileop target", ["base"]),
        record("stage", "mount / from exec /bin/sh -c : venv-stage 0123; uv pip install", ["req"]),
    ]
    engine_with(api).prune_build_cache("venv-stage 0123;")
    assert [f["id"][0] for f in api.pruned] == ["stage", "req"]


def test_a_build_drops_what_it_added_to_the_build_cache_but_the_stage_it_was_told_to_keep() -> None:
    """Records as dockerd 20.10 lists them (`GET /system/df`): what the build added goes, children before their
    parents (BuildKit keeps a record a child holds); the venv stage's install step and the steps under it stay,
    as do records older than the build and records in use (another build's)."""

    def record(id: str, description: str, parent: str = "", **flags: bool) -> dict:
        return {"ID": id, "Parent": parent, "Description": description, "InUse": False, "Shared": False, **flags}

    class Caching(FakeApi):
        def build(self, **kwargs: Any) -> Iterator[dict]:
            self.cache += [
                record("upload", "http url http://build-context-fiykbei6qynmg3ocf7y67q2yv"),
                record("copy", "fileop target"),
                record("python", "mount / from exec /bin/sh -c set -eux; missing=python3.11", parent="base"),
                record("req", "fileop target", parent="python"),
                record("stage", "mount / from exec /bin/sh -c set -eux; : venv-stage 398d619d367d40d9; uv pip install", parent="req"),
                record("venv", "fileop target", parent="final-apt", Shared=True),
                record("final-apt", "mount / from exec /bin/sh -c set -eux; missing=ca-certificates", parent="base", Shared=True),
                record("busy", "http url http://build-context-other", InUse=True),
            ]
            yield from recorded("two_stages.jsonl")

    api = Caching()
    api.cache = [record("base", "from local ", Shared=True), record("older", "http url http://build-context-p5a0o2qmuevxyaf103v1o4nbv")]
    engine_with(api).build(b"", log=io.StringIO(), keep="venv-stage ")
    pruned = [f["id"][0] for f in api.pruned]
    assert sorted(pruned) == ["copy", "final-apt", "upload", "venv"]
    assert pruned.index("venv") < pruned.index("final-apt")  # the child first
    api.pruned.clear()
    engine_with(api).prune_build_cache("venv-stage 398d619d367d40d9;")
    assert [f["id"][0] for f in api.pruned] == ["stage", "req", "python"]  # from the top down; not the shared base
    api.pruned.clear()
    engine_with(api).build(b"", log=io.StringIO(), drop_cache=False)
    assert api.pruned == []


def test_push_error_in_stream_raises_and_classifies_transient() -> None:
    refused = [{"status": "Preparing"}, {"errorDetail": {"message": "dial tcp 127.0.0.1:5999: connect: connection refused"},
                                         "error": "dial tcp 127.0.0.1:5999: connect: connection refused"}]  # fmt: skip
    with pytest.raises(PushError) as caught:
        engine_with(FakeApi(push=refused)).push("127.0.0.1:5999/a/b:t")
    assert caught.value.transient and "127.0.0.1:5999/a/b:t" in str(caught.value)
    denied = [{"error": "denied: requested access to the resource is denied"}]
    with pytest.raises(PushError) as caught:
        engine_with(FakeApi(push=denied)).push("r/a:t")
    assert not caught.value.transient


def test_push_returns_the_digest_from_the_stream() -> None:
    stream = [{"status": "Pushed"}, {"aux": {"Tag": "t", "Digest": "sha256:123", "Size": 1}}]
    assert engine_with(FakeApi(push=stream)).push("r/a:t") == "sha256:123"


@pytest.mark.parametrize(
    ("ref", "split"),
    [
        ("127.0.0.1:5000/a/b:tag", ("127.0.0.1:5000/a/b", "tag")),
        ("127.0.0.1:5000/a/b", ("127.0.0.1:5000/a/b", None)),
        ("a/b@sha256:ff", ("a/b", "sha256:ff")),
        ("nvidia/cuda:13.0.3-base-ubuntu24.04", ("nvidia/cuda", "13.0.3-base-ubuntu24.04")),
    ],
)
def test_split_ref(ref: str, split: tuple[str, str | None]) -> None:
    assert split_ref(ref) == split


def test_rate_limiting_is_transient() -> None:
    limited = [{"error": "toomanyrequests: You have reached your pull rate limit"}]
    with pytest.raises(PushError) as caught:
        engine_with(FakeApi(push=limited)).push("r/a:t")
    assert caught.value.transient


def test_sdk_errors_become_engine_errors_naming_the_action() -> None:
    import docker.errors

    from torchimages.engine import EngineError

    class Refusing(FakeApi):
        def tag(self, *_: Any) -> bool:
            raise docker.errors.APIError("invalid reference format")

    with pytest.raises(EngineError, match="cannot tag sha256:abc as r/A:t: invalid reference format"):
        engine_with(Refusing()).tag("sha256:abc", "r/A:t")


def test_push_progress_adds_up_the_layers_and_counts_finished_ones_whole() -> None:
    stream = [
        {"status": "Preparing", "id": "aaa"},
        {"status": "Preparing", "id": "bbb"},
        {"status": "Layer already exists", "id": "ccc"},  # never reported a size: adds nothing
        {"status": "Pushing", "id": "aaa", "progressDetail": {"current": 100, "total": 1000}},
        {"status": "Pushing", "id": "bbb", "progressDetail": {"current": 50, "total": 200}},
        {"status": "Pushing", "id": "aaa", "progressDetail": {"current": 600, "total": 1000}},
        {"status": "Pushed", "id": "bbb", "progressDetail": {}},
        {"status": "Pushed", "id": "aaa", "progressDetail": {}},
        {"status": "latest: digest: sha256:123 size: 1"},
        {"aux": {"Tag": "t", "Digest": "sha256:123", "Size": 1}},
    ]
    seen: list[tuple[int, int]] = []
    engine_with(FakeApi(push=stream)).push("r/a:t", on_progress=lambda done, total: seen.append((done, total)))
    assert seen[3:] == [(100, 1000), (150, 1200), (650, 1200), (800, 1200), (1200, 1200)]


def test_a_cancelled_engine_closes_the_stream_it_reads_and_says_so() -> None:
    closed: list[str] = []
    started: list[str] = []

    def endless(kind: str) -> Iterator[dict]:
        started.append(kind)
        try:
            engine.cancel()  # the interrupt arrives while the stream runs
            while True:
                yield {"stream": "Step 1/2 : RUN sleep 600\n"} if kind == "build" else {"status": "Pushing", "id": "a"}
        finally:
            closed.append(kind)  # what closing the generator does: docker-py drops the connection, dockerd cancels

    api = FakeApi()
    api.build = lambda **_: endless("build")  # type: ignore[method-assign]
    api.push = lambda *_, **__: endless("push")  # type: ignore[method-assign]
    engine = engine_with(api)
    with pytest.raises(Cancelled, match="the build stopped by an interrupt"):
        engine.build(b"", log=io.StringIO())
    engine.cancelled.clear()
    with pytest.raises(Cancelled, match="the push of r/a:t stopped by an interrupt"):
        engine.push("r/a:t")
    assert closed == ["build", "push"]
    with pytest.raises(Cancelled):  # once cancelled, nothing new is even asked of the engine
        engine.push("r/a:t2")
    assert started == ["build", "push"]


def test_a_build_that_finished_as_the_interrupt_came_names_its_image() -> None:
    engine = engine_with(FakeApi())
    stream = recorded("two_stages.jsonl")
    done = next(i for i, chunk in enumerate(stream) if chunk.get("id") == "moby.image.id")

    def build(**_: object) -> Iterator[dict]:
        yield from stream[:done]
        engine.cancel()
        yield from stream[done:]

    engine._api.build = build  # type: ignore[attr-defined]
    with pytest.raises(Cancelled) as caught:
        engine.build(b"", log=io.StringIO())
    assert caught.value.image_id == stream[done]["aux"]["ID"]  # so that the pipeline removes it


def test_an_engine_that_dies_mid_build_is_a_build_error_not_a_crash() -> None:
    import urllib3.exceptions

    def dying(**_: object) -> Iterator[dict]:
        yield from recorded("apt_fails.jsonl")[:8]
        raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(0 bytes read)")

    api = FakeApi()
    api.build = dying  # type: ignore[method-assign]
    with pytest.raises(BuildError, match="lost the Docker engine during the build"):
        engine_with(api).build(b"", log=io.StringIO())


class ReadingApi(FakeApi):
    """Reads the request body as the engine would, before any answer comes."""

    def __init__(self, engine_cancels_after: int, engine: list[Engine]) -> None:
        super().__init__(build=[{"aux": {"ID": "sha256:x"}}])
        self.after, self.engine, self.read = engine_cancels_after, engine, 0

    def build(self, **kwargs: Any) -> Iterator[dict]:
        for _ in kwargs["fileobj"]:
            self.read += 1
            if self.read == self.after:
                self.engine[0].cancel()  # Ctrl-C while the context is on its way
        yield from self._build


def test_an_interrupt_stops_sending_the_build_context() -> None:
    holder: list[Engine] = []
    api = ReadingApi(engine_cancels_after=3, engine=holder)
    engine = engine_with(api)
    holder.append(engine)
    with pytest.raises(Cancelled):
        engine.build(iter([b"x" * 10] * 100), log=io.StringIO())
    assert api.read == 3  # nothing more was read after the interrupt
