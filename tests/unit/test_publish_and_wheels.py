"""Push retries only what is transient; wheel platform tags cover what a base's glibc runs."""

from __future__ import annotations

import io

import pytest

from torchimages.engine import PushError
from torchimages.publish import push_refs
from torchimages.wheels import platform_tags


class FakeEngine:
    def __init__(self, failures: list[PushError], served: str = "sha256:aa") -> None:
        self.failures, self.served, self.pushes = failures, served, 0

    def push(self, ref: str, *, log: object) -> str:
        self.pushes += 1
        if self.failures:
            raise self.failures.pop(0)
        return "sha256:aa"

    def remote_digest(self, ref: str) -> str:
        return self.served


def test_transient_push_errors_are_retried() -> None:
    engine = FakeEngine([PushError("connection reset", transient=True)])
    sleeps: list[float] = []
    (result,) = push_refs(engine, ("r/a:t",), log=io.StringIO(), sleep=sleeps.append)  # type: ignore[arg-type]
    assert (result.ref, result.digest, engine.pushes, sleeps) == ("r/a:t", "sha256:aa", 2, [2.0])


def test_permanent_push_errors_are_not_retried() -> None:
    engine = FakeEngine([PushError("denied", transient=False)])
    with pytest.raises(PushError, match="denied"):
        push_refs(engine, ("r/a:t",), log=io.StringIO(), sleep=lambda _: None)  # type: ignore[arg-type]
    assert engine.pushes == 1


def test_retries_give_up_after_three_attempts() -> None:
    engine = FakeEngine([PushError("connection refused", transient=True) for _ in range(5)])
    with pytest.raises(PushError):
        push_refs(engine, ("r/a:t",), log=io.StringIO(), sleep=lambda _: None)  # type: ignore[arg-type]
    assert engine.pushes == 3


def test_a_digest_the_registry_does_not_serve_is_an_error() -> None:
    engine = FakeEngine([], served="sha256:bb")
    with pytest.raises(PushError, match="serves sha256:bb"):
        push_refs(engine, ("r/a:t",), log=io.StringIO(), sleep=lambda _: None)  # type: ignore[arg-type]


def test_platform_tags_follow_glibc() -> None:
    tags = platform_tags("2.36")
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_37_x86_64" not in tags
    assert "manylinux_2_28_x86_64" not in platform_tags("2.27")


def test_index_credentials_are_masked() -> None:
    from torchimages.config import mask_credentials

    assert (
        mask_credentials("--extra-index-url https://me:s3cret@pypi.example/simple x")
        == "--extra-index-url https://***@pypi.example/simple x"
    )
    assert mask_credentials("https://pypi.example/simple") == "https://pypi.example/simple"


def test_reading_the_digest_back_is_retried_when_transient() -> None:
    class FlakyRegistry(FakeEngine):
        def __init__(self) -> None:
            super().__init__([])
            self.reads = 0

        def remote_digest(self, ref: str) -> str:
            self.reads += 1
            if self.reads == 1:
                raise PushError("cannot read back: connection reset", transient=True)
            return "sha256:aa"

    engine = FlakyRegistry()
    (result,) = push_refs(engine, ("r/a:t",), log=io.StringIO(), sleep=lambda _: None)  # type: ignore[arg-type]
    assert (result.digest, engine.reads, engine.pushes) == ("sha256:aa", 2, 1)


def test_a_pip_crash_is_explained_by_the_last_line_of_its_traceback() -> None:
    from torchimages.wheels import pip_reason

    output = (
        'Saved ./x.whl\nERROR: Exception:\nTraceback (most recent call last):\n  File "shutil.py", line 144\n'
        "    sent = os.sendfile(outfd, infd, offset, blocksize)\nOSError: [Errno 28] No space left on device: '/tmp/a' -> '/w/a'\n"
    )
    assert pip_reason(output) == "OSError: [Errno 28] No space left on device: '/tmp/a' -> '/w/a'"
