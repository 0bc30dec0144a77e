"""Release tags and pushes: check, act, re-check; retry only what is transient."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TextIO

from . import labels as contract
from .engine import Cancelled, Engine, PushError
from .model import PushResult
from .registry import RegistryClient, RegistryError, RemoteImage

RETRIES = 3


def tag_image(engine: Engine, image_id: str, refs: tuple[str, ...], *, stopped: Callable[[], bool] = lambda: False) -> None:
    """Point every release reference at the verified image (none more once an interrupt came)."""
    for ref in refs:
        if stopped():
            raise Cancelled(f"tagging stopped by an interrupt before {ref}")
        engine.tag(image_id, ref)


def push_refs(
    engine: Engine,
    refs: tuple[str, ...],
    *,
    log: TextIO,
    sleep: Callable[[float], None] = time.sleep,
    on_progress: Callable[[int, int], None] | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> tuple[PushResult, ...]:
    """Push each reference; the digest is read back from the registry and must match the push's.

    on_progress follows the first push only: the other references are the same layers, already there.
    """
    results: list[PushResult] = []
    try:
        for index, ref in enumerate(refs):
            if stopped():
                raise Cancelled(f"pushing stopped by an interrupt before {ref}")
            progress: dict[str, Callable[[int, int], None]] = {"on_progress": on_progress} if on_progress and index == 0 else {}
            pushed = _retry(partial(engine.push, ref, log=log, **progress), what=f"push of {ref}", log=log, sleep=sleep)
            served = _retry(partial(engine.remote_digest, ref), what=f"reading {ref} back", log=log, sleep=sleep)
            if served != pushed:
                raise PushError(f"the registry serves {served} for {ref}, but the push reported {pushed}", transient=False)
            results.append(PushResult(ref=ref, digest=served))
    except Cancelled as exc:
        raise PartialCancel(str(exc), pushed=tuple(results)) from None
    except PushError as exc:
        raise PartialPush(str(exc), pushed=tuple(results)) from None
    return tuple(results)


def published(registry: RegistryClient, refs: tuple[str, ...], build_hash: str, *, gpus: bool) -> RemoteImage | None:
    """The image the registry already serves under the first reference, if it was sealed as verified for this very build.

    Sealed means the labels say so and the seal is the image's own newest step (an image built FROM ours inherits
    the labels, not the step).
    """
    image = registry.image(refs[0])
    if image is None or not contract.sealed(image.labels, build_hash, gpus=gpus):
        return None
    return image if contract.seal_step(build_hash) in image.newest_step else None


def move_aliases(registry: RegistryClient, refs: tuple[str, ...], image: RemoteImage) -> tuple[PushResult, ...]:
    """Point each other reference at the image, by manifest alone (no layer moves); only those that point elsewhere."""
    moved: list[PushResult] = []
    try:
        for ref in refs[1:]:
            if registry.digest(ref) != image.manifest.digest:
                served = registry.put_manifest(ref, image.manifest)
                if served != image.manifest.digest:
                    raise PushError(f"the registry serves {served} for {ref}, moved to {image.manifest.digest}", transient=False)
                moved.append(PushResult(ref=ref, digest=served))
    except (PushError, RegistryError) as exc:
        raise PartialPush(str(exc), pushed=tuple(moved)) from None
    return tuple(moved)


class PartialPush(PushError):
    """A push failed after these references were pushed (and read back)."""

    def __init__(self, message: str, *, pushed: tuple[PushResult, ...]) -> None:
        super().__init__(message, transient=False)
        self.pushed = pushed


class PartialCancel(Cancelled):
    """An interrupt stopped the pushes after these references were pushed (and read back)."""

    def __init__(self, message: str, *, pushed: tuple[PushResult, ...]) -> None:
        super().__init__(message)
        self.pushed = pushed


def _retry(action: Callable[[], str], *, what: str, log: TextIO, sleep: Callable[[float], None]) -> str:
    """Run action; a transient PushError is retried with backoff, anything else is raised at once."""
    delay = 2.0
    for attempt in range(1, RETRIES + 1):
        try:
            return action()
        except PushError as exc:
            if not exc.transient or attempt == RETRIES:
                raise
            log.write(f"{what} failed ({exc}); retry {attempt}/{RETRIES - 1} in {delay:.0f} s\n")
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
