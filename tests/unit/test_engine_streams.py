"""engine.py turns errors inside Docker's JSON streams into exceptions (docker-py does not)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from torchimages.engine import BuildError, Cancelled, Engine, PushError, split_ref


class FakeApi:
    """Stands in for docker.APIClient: replays recorded stream chunks."""

    def __init__(self, build: list[dict] | None = None, push: list[dict] | None = None) -> None:
        self._build, self._push = build or [], push or []

    def build(self, **_: Any) -> Iterator[dict]:
        yield from self._build

    def push(self, *_: Any, **__: Any) -> Iterator[dict]:
        yield from self._push


def engine_with(api: FakeApi) -> Engine:
    engine = Engine.__new__(Engine)
    engine._api = api  # type: ignore[assignment]
    engine.cancelled = threading.Event()
    return engine


def test_build_error_names_the_step_and_the_message() -> None:
    stream = [
        {"stream": "Step 1/3 : FROM debian\n"},
        {"stream": "Step 2/3 : RUN apt-get install nope\n"},
        {"stream": "E: Unable to locate package nope\n"},
        {"errorDetail": {"code": 100, "message": "The command '/bin/sh -c apt-get install nope' returned a non-zero code: 100"},
         "error": "The command '/bin/sh -c apt-get install nope' returned a non-zero code: 100"},
    ]  # fmt: skip
    log = io.StringIO()
    with pytest.raises(BuildError) as caught:
        engine_with(FakeApi(build=stream)).build(b"", log=log)
    assert caught.value.step == "step 2/3: RUN apt-get install nope"
    assert str(caught.value) == "the command exited 100: Unable to locate package nope (at step 2/3: RUN apt-get install nope)"
    assert "Unable to locate package nope" in caught.value.tail
    assert "Unable to locate package" in log.getvalue()


def test_a_full_disk_inside_a_build_is_named_with_pips_words() -> None:
    """The classic builder sends a RUN step's stderr in red (ANSI escapes); pip's reason is its last ERROR line."""
    stream = [
        {"stream": "Step 9/23 : RUN set -eux; pip install -r requirements.txt\n"},
        {"stream": "\x1b[91m+ pip install -r requirements.txt\n\x1b[0m"},
        {"stream": "Processing /wheels/torch-2.13.0-cp311-cp311-linux_x86_64.whl\n"},
        {"stream": "\x1b[91mERROR: Could not install packages due to an OSError: [Errno 28] No space left on device\n\x1b[0m"},
        {"stream": "\x1b[91m\n\x1b[0m"},
        {"error": "The command '/bin/sh -c set -eux; pip install -r requirements.txt' returned a non-zero code: 1"},
    ]
    with pytest.raises(BuildError) as caught:
        engine_with(FakeApi(build=stream)).build(b"", log=io.StringIO())
    message = str(caught.value)
    assert message.startswith("the command exited 1: Could not install packages due to an OSError: [Errno 28] No space left on device")
    assert "/bin/sh -c" not in message


def test_uvs_error_is_named_with_the_cause_it_gives_under_it() -> None:
    """As uv 0.13.9 said it in a build whose context carried other bytes under a locked wheel's name."""
    stream = [
        {"stream": "Step 7/26 : RUN set -eux; uv pip install --require-hashes -r requirements.txt\n"},
        {"stream": "\x1b[91mUsing Python 3.11.2 environment at: /opt/venv\n\x1b[0m\x1b[91mResolved 1 package in 1ms\n\x1b[0m"},
        {"stream": "\x1b[91merror\x1b[0m\x1b[91m: Failed to download `pyyaml==6.0.4`\n  cause: Hash mismatch for `pyyaml==6.0.4`\n\n"},
        {"stream": "         Expected:\n           sha256:622aa875\n\n         Computed:\n           sha256:c293e525\n\x1b[0m"},
        {"error": "The command '/bin/sh -c set -eux; uv pip install --require-hashes -r requirements.txt' returned a non-zero code: 1"},
    ]
    with pytest.raises(BuildError) as caught:
        engine_with(FakeApi(build=stream)).build(b"", log=io.StringIO())
    assert str(caught.value).startswith(
        "the command exited 1: error: Failed to download `pyyaml==6.0.4` cause: Hash mismatch for `pyyaml==6.0.4` (at step 7/26"
    ), str(caught.value)


def test_a_build_error_that_is_not_a_failed_command_is_kept_as_docker_says_it() -> None:
    stream = [{"stream": "Step 1/2 : FROM x\n"}, {"error": "pull access denied for x, repository does not exist"}]
    with pytest.raises(BuildError) as caught:
        engine_with(FakeApi(build=stream)).build(b"", log=io.StringIO())
    assert str(caught.value) == "pull access denied for x, repository does not exist (at step 1/2: FROM x)"


def test_build_reports_the_image_id_and_each_step() -> None:
    stream = [{"stream": "Step 1/1 : FROM debian\n"}, {"aux": {"ID": "sha256:abc"}}, {"stream": "Successfully built abc\n"}]
    steps: list[str] = []
    image_id = engine_with(FakeApi(build=stream)).build(b"", log=io.StringIO(), on_step=steps.append)
    assert image_id == "sha256:abc" and steps == ["step 1/1: FROM debian"]


def test_a_build_that_reports_no_image_fails() -> None:
    with pytest.raises(BuildError, match="without reporting an image ID"):
        engine_with(FakeApi(build=[{"stream": "Step 1/1 : FROM x\n"}])).build(b"", log=io.StringIO())


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
    stream = [{"stream": "Step 1/1 : FROM debian\n"}, {"aux": {"ID": "sha256:abc"}}]

    def build(**_: object) -> Iterator[dict]:
        yield stream[0]
        engine.cancel()
        yield stream[1]

    engine._api.build = build  # type: ignore[attr-defined]
    with pytest.raises(Cancelled) as caught:
        engine.build(b"", log=io.StringIO())
    assert caught.value.image_id == "sha256:abc"  # so that the pipeline removes it


def test_an_engine_that_dies_mid_build_is_a_build_error_not_a_crash() -> None:
    import urllib3.exceptions

    def dying(**_: object) -> Iterator[dict]:
        yield {"stream": "Step 4/23 : RUN apt-get install sl\n"}
        raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(0 bytes read)")

    api = FakeApi()
    api.build = dying  # type: ignore[method-assign]
    with pytest.raises(BuildError, match="lost the Docker engine during the build"):
        engine_with(api).build(b"", log=io.StringIO())


def test_a_multi_stage_build_names_its_earlier_stages_also_when_it_fails() -> None:
    done = [
        {"stream": "Step 1/4 : FROM base AS venv\n"}, {"aux": {"ID": "sha256:stage"}},
        {"stream": "Step 3/4 : FROM image\n"}, {"aux": {"ID": "sha256:final"}},
    ]  # fmt: skip
    stages: list[str] = []
    assert engine_with(FakeApi(build=done)).build(b"", log=io.StringIO(), stages=stages) == "sha256:final"
    assert stages == ["sha256:stage"]
    failed = [*done[:3], {"error": "The command '/bin/sh -c false' returned a non-zero code: 1"}]
    stages = []
    with pytest.raises(BuildError):
        engine_with(FakeApi(build=failed)).build(b"", log=io.StringIO(), stages=stages)
    assert stages == ["sha256:stage"]  # left behind by the failed build: the caller removes it


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
