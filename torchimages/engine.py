"""The only module that talks to Docker: build, run, tag, push, pull, inspect, with typed errors.

docker-py does not raise for errors reported inside a JSON stream (build, push, pull);
every stream here is read to the end and an "error" entry becomes an exception.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TextIO

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


# Docker's own --gpus support registers only when this binary is on the daemon's PATH
# (moby daemon/nvidia_linux.go: `exec.LookPath(nvidiaHook)`), whether or not a runtime named nvidia exists.
NVIDIA_HOOK = "nvidia-container-runtime-hook"


class EngineError(Exception):
    """A Docker operation failed."""


class EngineUnavailable(EngineError):
    """No Docker engine answered."""


class BuildError(EngineError):
    """The build stream reported an error, at a Dockerfile step.

    Docker's own message for a failed RUN repeats the whole command and says only its exit code; the message here
    says the exit code and why, in the words of the tool that failed (apt's `E:`, pip's `ERROR:`, uv's `error:` and
    its causes, an OSError)."""

    def __init__(self, message: str, *, step: str | None, tail: str = "") -> None:
        self.step = step
        self.tail = tail
        if failed := _RUN_FAILED.fullmatch(message.strip()):
            reason = build_reason(tail)
            message = f"the command exited {failed.group(1)}" + (f": {reason}" if reason else "")
        super().__init__(f"{message} (at {step})" if step else message)


_RUN_FAILED = re.compile(r"The command .* returned a non-zero code: (\d+)", re.DOTALL)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# apt's `E:`, pip's `ERROR:` and Python's `[Errno N]`, uv's `error:` with the causes it lists under it, `(os error N)`.
_REASON = re.compile(r"^(?:ERROR: |E: |error: |fatal: |Caused by: |cause: )|\[Errno \d+\]|\(os error \d+\)")


def build_reason(output: str) -> str:
    """What a failed RUN step's own tools said was wrong: their error lines, the last three, on one line."""
    lines = [_ANSI.sub("", line).strip() for line in output.splitlines()]
    reasons = [line.removeprefix("ERROR: ").removeprefix("E: ") for line in lines if _REASON.search(line)]
    unique = list(dict.fromkeys(reasons))
    return " ".join(unique[-3:])


class PushError(EngineError):
    """The push stream reported an error, or the registry could not be reached."""

    def __init__(self, message: str, *, transient: bool) -> None:
        self.transient = transient
        super().__init__(message)


class PullError(EngineError):
    """The pull stream reported an error."""


class Cancelled(EngineError):
    """An interrupt stopped the operation (the engine was told to cancel)."""

    def __init__(self, message: str, *, image_id: str | None = None) -> None:
        super().__init__(message)
        self.image_id = image_id  # an image that exists all the same (the build had finished)


class RunTimeout(EngineError):
    """A container ran past its time limit and was killed."""


@dataclass(frozen=True)
class RunResult:
    """A finished container: exit code and combined output."""

    exit_code: int
    output: str


@dataclass(frozen=True)
class ImageInfo:
    """What the engine knows about a local image."""

    id: str
    size: int
    labels: dict[str, str]
    repo_digests: tuple[str, ...] = ()  # "repository@sha256:..." for each registry it was pulled from or pushed to


def _transient(text: str) -> bool:
    """Errors worth retrying: the network or the registry hiccuped, not a refusal."""
    lowered = text.lower()
    return any(
        word in lowered
        for word in (
            "connection refused",
            "connection reset",
            "timeout",
            "i/o timeout",
            "eof",
            "429",
            "toomanyrequests",
            "502",
            "503",
            "504",
            "temporarily",
        )
    )


@contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """The SDK's own errors (API answers, lost connections) become EngineError naming what was being done."""
    try:
        yield
    except (docker.errors.APIError, requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise EngineError(f"{what}: {getattr(exc, 'explanation', None) or exc}") from None


class Engine:
    """A Docker engine reached through DOCKER_HOST (or the local socket)."""

    def __init__(self, *, timeout: int = 600) -> None:
        try:
            self._client = docker.from_env(timeout=timeout)
            self._client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(
                f"no Docker engine answered ({exc}); start one (`invoke testenv` does, as root) or set DOCKER_HOST"
            ) from None
        self._api = self._client.api
        # Set by cancel(): builds, pushes and containers in progress stop at their next chunk or second.
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop what runs: a build or push stream is closed (dockerd then cancels it), a container is killed."""
        self.cancelled.set()

    def _until_cancelled(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """A request body that ends the upload (and with it the request) once cancel() is called."""
        for chunk in chunks:
            self._check(None, "sending the build context")
            yield chunk

    def _check(self, stream: Any, what: str, *, image_id: str | None = None) -> None:
        """After an interrupt: close the stream (dockerd then cancels the build, push or pull) and raise Cancelled."""
        if self.cancelled.is_set():
            if stream is not None:
                stream.close()  # docker-py's response goes with its generator, and the connection with it
            raise Cancelled(f"{what} stopped by an interrupt", image_id=image_id)

    # -- information ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        with _engine_errors("cannot read the engine's info"):
            return dict(self._client.info())

    def platform(self) -> tuple[str, str]:
        """The OS and architecture of the images this engine builds, as registries name them: ('linux', 'amd64')."""
        with _engine_errors("cannot read the engine's version"):
            version = self._client.version()
        return str(version.get("Os") or "linux"), str(version.get("Arch") or "amd64")

    def has_nvidia_runtime(self) -> bool:
        """True when `--gpus` works: a runtime named nvidia, or, for an engine on this machine, NVIDIA's hook on PATH
        (Docker registers --gpus whenever it finds the hook: moby daemon/nvidia_linux.go)."""
        if "nvidia" in (self.info().get("Runtimes") or {}):
            return True
        host = os.environ.get("DOCKER_HOST", "")
        return (not host or host.startswith("unix://")) and shutil.which(NVIDIA_HOOK) is not None

    def image(self, ref: str) -> ImageInfo | None:
        """Inspect a local image, or None when there is none by that name or ID."""
        with _engine_errors(f"cannot inspect {ref}"):
            try:
                raw = self._api.inspect_image(ref)
            except docker.errors.ImageNotFound:
                return None
        return ImageInfo(
            id=raw["Id"],
            size=int(raw.get("Size") or 0),
            labels=dict((raw.get("Config") or {}).get("Labels") or {}),
            repo_digests=tuple(raw.get("RepoDigests") or ()),
        )

    def history(self, ref: str) -> list[str]:
        """The command that created each layer of an image."""
        with _engine_errors(f"cannot read the history of {ref}"):
            return [str(layer.get("CreatedBy", "")) for layer in self._api.history(ref)]

    def images_with_label(self, key: str, value: str) -> list[ImageInfo]:
        """Local images carrying label key=value."""
        with _engine_errors("cannot list images"):
            found = self._api.images(filters={"label": f"{key}={value}"}, quiet=True)
        return [info for ref in found if (info := self.image(ref)) is not None]

    def remote_digest(self, ref: str) -> str:
        """The manifest digest the registry serves for ref, read back through the engine."""
        try:
            return str(self._api.inspect_distribution(ref)["Descriptor"]["digest"])
        except docker.errors.APIError as exc:
            raise PushError(f"cannot read {ref} back from the registry: {exc.explanation or exc}", transient=True) from None

    # -- build ----------------------------------------------------------------------------

    def build(
        self,
        context: bytes | Iterable[bytes],
        *,
        log: TextIO,
        on_step: Callable[[str], None] | None = None,
        labels: dict[str, str] | None = None,
        timeout: int = 3600,
        stages: list[str] | None = None,
    ) -> str:
        """Build from a context tar (bytes, or chunks streamed as they come); return the image ID.

        Output goes to log; each step to on_step. The build uses the engine's default network (apt may need it);
        nothing it installs comes from this machine's network: wheels travel in the context. The images that end
        earlier stages of a multi-stage build are added to stages (the caller removes them when done).
        """
        step: str | None = None
        image_id: str | None = None
        tail: list[str] = []
        finished = False
        self._check(None, "the build")
        try:
            body = io.BytesIO(context) if isinstance(context, bytes) else self._until_cancelled(context)
            stream = self._api.build(
                fileobj=body, custom_context=True, rm=True, forcerm=True, decode=True,
                labels=labels or None, timeout=timeout,
            )  # fmt: skip
            for chunk in stream:
                if "stream" in chunk:
                    text = str(chunk["stream"])
                    log.write(text)
                    for line in text.splitlines():
                        if match := STEP_RE.match(line.strip()):
                            step = f"step {match.group(1)}/{match.group(2)}: {_short(match.group(3))}"
                            if on_step:
                                on_step(step)
                        if line.strip():
                            tail = (tail + [line.rstrip()])[-20:]
                if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                    if image_id is not None and stages is not None:  # the stage before this one ended with it
                        stages.append(image_id)
                    image_id = str(chunk["aux"]["ID"])
                self._check(stream, "the build", image_id=image_id)
                if "error" in chunk or "errorDetail" in chunk:
                    detail = chunk.get("errorDetail") or {}
                    message = str(chunk.get("error") or detail.get("message") or "unknown build error").strip()
                    log.write(f"\nERROR: {message}\n")
                    raise BuildError(message, step=step, tail="\n".join(tail))
            finished = True
        except docker.errors.APIError as exc:
            raise BuildError(str(exc.explanation or exc), step=step, tail="\n".join(tail)) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise BuildError(f"lost the Docker engine during the build: {exc}", step=step) from None
        finally:
            log.flush()
            if not finished and image_id is not None and stages is not None:  # an earlier stage's image, left behind
                stages.append(image_id)
        if image_id is None:
            raise BuildError("the build finished without reporting an image ID", step=step, tail="\n".join(tail))
        return image_id

    # -- containers -----------------------------------------------------------------------

    def run(
        self,
        image: str,
        command: list[str],
        *,
        timeout: float = 300,
        gpus: bool = False,
        environment: dict[str, str] | None = None,
        user: str | None = None,
        shm_size: str | None = None,
        read_only_mounts: dict[str, str] | None = None,
    ) -> RunResult:
        """Run a command in a fresh container, always removed; killed after timeout seconds.

        read_only_mounts maps host paths to container paths.
        """
        volumes = {host: {"bind": inside, "mode": "ro"} for host, inside in (read_only_mounts or {}).items()} or None
        device_requests = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None
        self._check(None, f"{command[0]} in {image}")
        with _engine_errors(f"cannot create a container from {image}"):
            container = self._client.containers.create(
                image, command, detach=True, environment=environment, user=user, shm_size=shm_size,
                device_requests=device_requests, network_mode="none", volumes=volumes,
            )  # fmt: skip
        try:
            with _engine_errors(f"running {command[0]} in {image} failed"):
                container.start()
                status = self._wait(container, timeout, what=f"{command[0]} in {image}")
                output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
            return RunResult(exit_code=int(status.get("StatusCode", -1)), output=output)
        finally:
            with suppress(
                docker.errors.APIError, requests.exceptions.RequestException, urllib3.exceptions.HTTPError
            ):  # an engine that is gone keeps nothing
                container.remove(force=True)

    def _wait(self, container: Any, timeout: float, *, what: str) -> dict[str, Any]:
        """Wait for a container, a second at a time so that an interrupt kills it promptly."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return dict(container.wait(timeout=1))
            except requests.exceptions.ReadTimeout:
                pass
            except requests.exceptions.ConnectionError as exc:
                if "timed out" not in str(exc).lower():  # urllib3 reports some read timeouts this way; anything else is a lost engine
                    raise EngineError(f"lost the Docker engine while waiting for {what}: {exc}") from None
            if self.cancelled.is_set():
                with suppress(docker.errors.APIError):  # it may have exited in the meantime
                    container.kill()
                raise Cancelled(f"{what} stopped by an interrupt")
            if time.monotonic() > deadline:
                with suppress(docker.errors.APIError):
                    container.kill()
                raise RunTimeout(f"{what} ran past {timeout:.0f} s and was killed")

    # -- tags, push, pull -----------------------------------------------------------------

    def tag(self, image_id: str, ref: str) -> None:
        repository, tag = split_ref(ref)
        self._check(None, f"tagging {ref}")
        with _engine_errors(f"cannot tag {image_id} as {ref}"):
            tagged = self._api.tag(image_id, repository, tag)
        if not tagged:
            raise EngineError(f"the engine refused to tag {image_id} as {ref}")

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        with _engine_errors(f"cannot remove {ref}"), suppress(docker.errors.ImageNotFound):
            self._api.remove_image(ref, force=force)

    def push(self, ref: str, *, log: TextIO | None = None, on_progress: Callable[[int, int], None] | None = None) -> str:
        """Push one reference; return the digest the push stream reported. on_progress gets (bytes sent, bytes in all)."""
        repository, tag = split_ref(ref)
        digest: str | None = None
        layers: dict[str, tuple[int, int]] = {}  # layer id -> (sent, size) as the stream reports them
        try:
            self._check(None, f"the push of {ref}")
            stream = self._api.push(repository, tag=tag, stream=True, decode=True)
            for chunk in stream:
                self._check(stream, f"the push of {ref}")
                if on_progress is not None and chunk.get("id"):
                    detail = chunk.get("progressDetail") or {}
                    sent, size = layers.get(chunk["id"], (0, 0))
                    if detail.get("total"):
                        sent, size = int(detail.get("current") or 0), int(detail["total"])
                    elif chunk.get("status") in ("Pushed", "Layer already exists"):
                        sent = size
                    layers[chunk["id"]] = (sent, size)
                    on_progress(sum(s for s, _ in layers.values()), sum(z for _, z in layers.values()))
                if log is not None and "status" in chunk and "progress" not in chunk:
                    log.write(f"{chunk.get('id', '')} {chunk['status']}".strip() + "\n")
                    log.flush()
                if "error" in chunk or "errorDetail" in chunk:
                    message = str(chunk.get("error") or (chunk.get("errorDetail") or {}).get("message"))
                    raise PushError(f"push of {ref} failed: {message.strip()}", transient=_transient(message))
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = str(aux["Digest"])
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc)
            raise PushError(f"push of {ref} failed: {text}", transient=_transient(text)) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise PushError(f"push of {ref} failed: lost the engine: {exc}", transient=True) from None
        if digest is None:
            raise PushError(f"push of {ref} finished without a digest", transient=False)
        return digest

    def pull(self, ref: str, *, log: TextIO | None = None) -> str:
        """Pull a reference; return the local image ID."""
        repository, tag = split_ref(ref)
        self._check(None, f"the pull of {ref}")
        try:
            stream = self._api.pull(repository, tag=tag, stream=True, decode=True)
            for chunk in stream:
                self._check(stream, f"the pull of {ref}")
                if log is not None and "status" in chunk and "progress" not in chunk:
                    log.write(f"{chunk.get('id', '')} {chunk['status']}".strip() + "\n")
                if "error" in chunk or "errorDetail" in chunk:
                    message = str(chunk.get("error") or (chunk.get("errorDetail") or {}).get("message"))
                    raise PullError(f"pull of {ref} failed: {message.strip()}")
        except docker.errors.APIError as exc:
            raise PullError(f"pull of {ref} failed: {exc.explanation or exc}") from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise PullError(f"pull of {ref} failed: lost the Docker engine: {exc}") from None
        info = self.image(ref)
        if info is None:
            raise PullError(f"pull of {ref} reported success but the image is not there")
        return info.id


def split_ref(ref: str) -> tuple[str, str | None]:
    """'host:5000/a/b:tag' -> ('host:5000/a/b', 'tag'); '...@sha256:x' keeps the digest as the tag part."""
    if "@" in ref:
        repository, digest = ref.split("@", 1)
        return repository, digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :]
    return ref, None


def _short(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
