"""The only module that talks to Docker: build, run, tag, push, pull, inspect, with typed errors.

docker-py does not raise for errors reported inside a JSON stream (build, push, pull);
every stream here is read to the end and an "error" entry becomes an exception.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, TextIO

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

from .buildkit import Trace, TraceError, decode_status

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
            message = f"the command exited {next(code for code in failed.groups() if code)}" + (f": {reason}" if reason else "")
        super().__init__(f"{message} (at {step})" if step else message)


# The classic builder's words, BuildKit v0.8's (dockerd 20.10), and later BuildKit's.
_RUN_FAILED = re.compile(
    r"The command .* returned a non-zero code: (\d+)|executor failed running \[.*\]: exit code: (\d+)"
    r"|process .* did not complete successfully: exit code: (\d+)",
    re.DOTALL,
)
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


def _stream_error(chunk: dict[str, Any], default: str = "unknown error") -> str | None:
    """The error a chunk of an engine's JSON stream (build, push, pull, import) reports, or None."""
    if "error" not in chunk and "errorDetail" not in chunk:
        return None
    return str(chunk.get("error") or (chunk.get("errorDetail") or {}).get("message") or default).strip()


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
        self._later: list[threading.Thread] = []
        self._later_lock = threading.Lock()

    def later(self, cleanup: Callable[[], None]) -> None:
        """Run a cleanup (build cache records, images) in a thread of its own, beside what comes next; settled() waits
        for it. Its EngineError is dropped: what it could not remove stays, as when it runs in line."""

        def run() -> None:
            with suppress(EngineError):
                cleanup()

        thread = threading.Thread(target=run, name="engine-cleanup", daemon=True)
        with self._later_lock:
            self._later.append(thread)
        thread.start()

    def settled(self) -> None:
        """Wait for every cleanup later() started."""
        while True:
            with self._later_lock:
                if not self._later:
                    return
                thread = self._later.pop(0)
            thread.join()

    def cancel(self) -> None:
        """Stop what runs: a build or push stream is closed (dockerd then cancels it), a container is killed."""
        self.cancelled.set()

    def _until_cancelled(self, chunks: Iterable[bytes], what: str = "sending the build context") -> Iterator[bytes]:
        """A request body that ends the upload (and with it the request) once cancel() is called."""
        for chunk in chunks:
            self._check(None, what)
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
        classic: bool = False,
        keep: str | None = None,
        drop_cache: bool = True,
        on_done: Callable[[str], None] | None = None,
        buildargs: dict[str, str] | None = None,
        drop_later: bool = False,
    ) -> str:
        """Build from a context tar (bytes, or chunks streamed as they come); return the image ID.

        BuildKit builds it (`version=2`): the stages run side by side, a RUN step can mount the context's files
        (`RUN --mount=type=bind`) instead of copying them into a layer, and `COPY --from` copies a stage's files
        as they are. BuildKit keeps every step's result in its build cache, the context twice over, also once the
        image is gone; with drop_cache, what this build added goes when it ends, except the steps whose command
        holds keep and the steps under them (a stage the next build reuses: prune_build_cache removes it); with
        drop_later, in a cleanup of its own (later()), so that the caller goes on while dockerd lets the records go.
        classic: Docker's classic builder, for a build of one step (the seal). Output goes to log, in the shape of
        `--progress=plain`; each step to on_step, and each step's name (as BuildKit gives it: `[venv 4/4] RUN …`)
        to on_done once it has completed, built or taken from the cache (BuildKit only). buildargs are the build's
        arguments (the pipeline's Dockerfiles name their wheels image in WHEELS): nothing is fetched from this
        machine's network.
        """
        self._check(None, "the build")
        before = None
        if drop_cache and not classic:
            try:
                before = self.build_cache_ids()
            except EngineError as exc:  # the build can go on; what it leaves in the cache stays there
                log.write(f"not dropping this build's cache records afterwards: {exc}\n")
        params: dict[str, str] = {"labels": json.dumps(labels or {})}
        if buildargs:
            params["buildargs"] = json.dumps(buildargs)
        if classic:
            params.update(rm="1", forcerm="1")
        else:
            self._require_buildkit()
            params.update(version="2", networkmode=self._build_network())
        try:
            return self._read_build(context, params, log=log, on_step=on_step, classic=classic, on_done=on_done)
        finally:
            if before is not None:
                drop = partial(self.drop_build_cache, before, keep=keep, settle=3)
                if drop_later:
                    self.later(drop)
                else:
                    with suppress(EngineError):
                        drop()

    def _read_build(
        self,
        context: bytes | Iterable[bytes],
        params: dict[str, str],
        *,
        log: TextIO,
        on_step: Callable[[str], None] | None,
        classic: bool,
        on_done: Callable[[str], None] | None = None,
    ) -> str:
        step: str | None = None
        image_id: str | None = None
        tail: list[str] = []
        trace = Trace(log, (lambda text: on_step(_short(text))) if on_step else None, on_done)

        def where() -> tuple[str | None, str]:
            """The step that failed (shortened for one line) and its last lines of output."""
            failed, output = (step, "\n".join(tail)) if classic else (trace.error_step(), trace.error_output())
            return failed and _short(failed), output

        try:
            body = context if isinstance(context, bytes) else self._until_cancelled(context)
            stream = self._post_build(params, body)
            for chunk in stream:
                if chunk.get("id") == "moby.buildkit.trace" and isinstance(chunk.get("aux"), str):
                    try:
                        trace.feed(decode_status(chunk["aux"]))
                    except TraceError as exc:  # the build goes on; only its progress is unread
                        log.write(f"(a progress message of the engine could not be read: {exc})\n")
                elif "stream" in chunk:
                    text = str(chunk["stream"])
                    log.write(text)
                    for line in text.splitlines():
                        if match := STEP_RE.match(line.strip()):
                            step = f"step {match.group(1)}/{match.group(2)}: {_short(match.group(3))}"
                            if on_step:
                                on_step(step)
                        if line.strip():
                            tail = (tail + [line.rstrip()])[-20:]
                if isinstance(chunk.get("aux"), dict) and "ID" in chunk["aux"]:
                    image_id = str(chunk["aux"]["ID"])
                self._check(stream, "the build", image_id=image_id)
                if (message := _stream_error(chunk, "unknown build error")) is not None:
                    log.write(f"\nERROR: {message}\n")
                    failed_step, output = where()
                    raise BuildError(message, step=failed_step, tail=output)
        except docker.errors.APIError as exc:
            failed_step, output = where()
            raise BuildError(str(exc.explanation or exc), step=failed_step, tail=output) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            failed_step, _ = where()
            raise BuildError(f"lost the Docker engine during the build: {exc}", step=failed_step) from None
        finally:
            log.flush()
        if image_id is None:
            failed_step, output = where()
            raise BuildError("the build finished without reporting an image ID", step=failed_step, tail=output)
        return image_id

    def _post_build(self, params: dict[str, str], body: bytes | Iterable[bytes]) -> Iterator[dict[str, Any]]:
        """POST /build with the context as the body: docker-py's build() has no BuildKit (`version=2`) parameter."""
        return self._post_tar("/build", params, body)

    def _post_tar(self, path: str, params: dict[str, str], body: bytes | Iterable[bytes]) -> Iterator[dict[str, Any]]:
        """POST a tar body (bytes, or chunks sent as they come); the engine's answer, a JSON stream, decoded."""
        api = self._api
        headers = {"Content-Type": "application/x-tar"}
        response = api._post(api._url(path), params=params, data=body, headers=headers, stream=True, timeout=None)
        api._raise_for_status(response)
        return api._stream_helper(response, decode=True)  # type: ignore[no-any-return]

    def _require_buildkit(self) -> None:
        """BuildKit's Dockerfile frontend takes `RUN --mount` with no `# syntax` line from Docker 20.10 on."""
        with _engine_errors("cannot read the engine's version"):
            version = str(self._api.version().get("Version") or "")
        numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
        if len(numbers) == 2 and numbers < [20, 10]:
            raise BuildError(
                f"this Docker engine is {version}; the images build with BuildKit's `RUN --mount`, which needs Docker 20.10 or later",
                step=None,
            )

    def _build_network(self) -> str:
        """The engine's default network when it has one; else the host's (BuildKit's default needs the `bridge`
        network, which an engine started with `--bridge=none` lacks). apt may need it; wheels do not."""
        with _engine_errors("cannot list the engine's networks"):
            bridge = any(network.get("Name") == "bridge" for network in self._api.networks(names=["bridge"]))
        return "default" if bridge else "host"

    # -- build cache ----------------------------------------------------------------------

    def _build_cache(self) -> list[dict[str, Any]]:
        """The build cache records, from `GET /system/df`. Up to dockerd 23 that call refuses to run twice at once
        ("a disk usage operation is already running"): this process asks one at a time, and another's is waited out."""
        for attempt in range(40):
            try:
                with _DISK_USAGE, _engine_errors("cannot read the engine's build cache"):
                    return list(self._api.df().get("BuildCache") or [])
            except EngineError as exc:
                if "already running" not in str(exc) or attempt == 39:
                    raise
            time.sleep(0.25)
        raise AssertionError("unreachable")

    def _prune(self, ids: Iterable[str]) -> None:
        """Remove build cache records by ID, one request each (dockerd takes one value per prune filter)."""
        for record in ids:
            with _engine_errors("cannot prune the build cache"):
                self._api.prune_builds(filters={"id": [record]}, all=True)

    def build_cache_ids(self) -> set[str]:
        return {str(record["ID"]) for record in self._build_cache()}

    def drop_build_cache(self, before: set[str], *, keep: str | None = None, settle: float = 0) -> None:
        """Remove the build cache records made since `before`, except those of steps whose command holds keep and
        the records under them. Records in use (a build that still runs) stay; up to `settle` seconds are given for
        them to be let go (dockerd lets a finished build's go shortly after its answer ends), three after an
        interrupt (a cancelled build's, once dockerd has unwound it; no more, so that the report is written before
        a CI runner's SIGKILL)."""
        deadline = time.monotonic() + max(settle, 3 if self.cancelled.is_set() else 0)
        while True:
            records = {str(record["ID"]): record for record in self._build_cache()}
            kept: set[str] = set()
            for record in records.values():
                if keep and keep in str(record.get("Description") or ""):
                    kept |= _lineage(records, str(record["ID"]))
            new = {id: record for id, record in records.items() if id not in before and id not in kept}
            self._prune(_leaves_first(new, [id for id, record in new.items() if not record.get("InUse")]))
            if not any(record.get("InUse") for record in new.values()) or time.monotonic() > deadline:
                return
            time.sleep(0.25)

    def prune_build_cache(self, marker: str) -> None:
        """Remove the build cache records of the steps whose command holds marker, and the records under them that
        no image shares (the stage's earlier steps): a stage no later build needs."""
        records = {str(record["ID"]): record for record in self._build_cache()}
        marked = [id for id, record in records.items() if marker in str(record.get("Description") or "")]
        lineage = set().union(*(_lineage(records, id) for id in marked)) if marked else set()
        drop = [id for id in lineage if id in marked or not (records[id].get("Shared") or records[id].get("InUse"))]
        self._prune(_leaves_first(records, drop))

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

    def tags_of(self, repository: str) -> dict[str, float]:
        """The engine's tags of one repository, each with when its image was made (seconds since the epoch)."""
        with _engine_errors(f"cannot list the images of {repository}"):
            images = self._api.images(name=repository)
        return {
            str(ref): float(image.get("Created") or 0)
            for image in images
            for ref in image.get("RepoTags") or ()
            if str(ref).startswith(f"{repository}:")
        }

    def import_image(self, rootfs: Iterable[bytes], ref: str) -> str:
        """Make a one-layer image of a root file system tar (`docker import`), sent a chunk at a time as it comes;
        return its ID. dockerd registers the layer as it reads the request: the files are written once."""
        repository, tag = split_ref(ref)
        self._check(None, f"sending {ref}")
        body = self._until_cancelled(rootfs, f"sending {ref}")
        with _engine_errors(f"cannot import {ref}"):
            for chunk in self._post_tar("/images/create", {"fromSrc": "-", "repo": repository, "tag": tag or "latest"}, body):
                if (message := _stream_error(chunk)) is not None:
                    raise EngineError(f"cannot import {ref}: {message}")
        info = self.image(ref)
        if info is None:
            raise EngineError(f"the import of {ref} left no image")
        return info.id

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
                if (message := _stream_error(chunk)) is not None:
                    raise PushError(f"push of {ref} failed: {message}", transient=_transient(message))
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
                if (message := _stream_error(chunk)) is not None:
                    raise PullError(f"pull of {ref} failed: {message}")
        except docker.errors.APIError as exc:
            raise PullError(f"pull of {ref} failed: {exc.explanation or exc}") from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise PullError(f"pull of {ref} failed: lost the Docker engine: {exc}") from None
        info = self.image(ref)
        if info is None:
            raise PullError(f"pull of {ref} reported success but the image is not there")
        return info.id


_DISK_USAGE = threading.Lock()  # GET /system/df, one at a time (see Engine._build_cache)


def _parents(record: dict[str, Any]) -> list[str]:
    """A build cache record's parents: `Parents` from API 1.42 (dockerd 23) on, `Parent` before."""
    return [str(p) for p in record.get("Parents") or ([record["Parent"]] if record.get("Parent") else [])]


def _lineage(records: dict[str, dict[str, Any]], id: str) -> set[str]:
    """A build cache record and those under it (its parents, their parents, ...)."""
    found: set[str] = set()
    todo = [id]
    while todo:
        current = todo.pop()
        if current in records and current not in found:
            found.add(current)
            todo.extend(_parents(records[current]))
    return found


def _leaves_first(records: dict[str, dict[str, Any]], ids: Iterable[str]) -> list[str]:
    """ids ordered so that a record comes before its parents: BuildKit keeps a record while a child holds it."""
    children: dict[str, list[str]] = {}
    for id, record in records.items():
        for parent in _parents(record):
            children.setdefault(parent, []).append(id)
    depths: dict[str, int] = {}

    def depth(id: str, seen: frozenset[str] = frozenset()) -> int:  # how many records sit on top of it
        if id not in depths:
            above = [child for child in children.get(id, []) if child not in seen]
            depths[id] = 1 + max((depth(child, seen | {id}) for child in above), default=0)
        return depths[id]

    return sorted(ids, key=depth)


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
