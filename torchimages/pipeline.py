"""Orchestration: render, fetch wheels once, then build → verify → tag → push each image; reports."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TextIO

from . import labels as contract
from .engine import Cancelled, Engine, EngineError, ImageInfo
from .lock import Indexes
from .matrix import Matrix
from .model import BuildResult, ImageSpec, PushResult, VerifyReport
from .progress import Meter, StatusLine
from .provenance import base_digest, source_labels
from .publish import PartialCancel, PartialPush, move_aliases, published, push_refs, tag_image
from .registry import RegistryClient, RegistryError, RemoteImage
from .render import ROOT, RenderError, context_files, context_stream, context_tar, dockerfile_quote, render_dockerfile
from .report import write_reports
from .verify import VerifyError, gpus_wanted, promise_problems, run_verify
from .wheels import PIPS, WheelError, WheelSet, fetch_wheels

Say = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How a build run behaves."""

    push: bool = False
    jobs: int = 1
    gpus: str = "auto"  # auto | all | none
    rebuild: bool = False  # ignore an existing verified image with the same build hash
    out_dir: Path = ROOT / "build"  # reports, logs, locks/ and wheelhouse/ (shared across runs: a wheel there is not fetched again)
    indexes: Indexes = Indexes()
    shared_wheelhouse: Path | None = None  # another run's wheelhouse to fetch into and install from

    @property
    def wheelhouse(self) -> Path:
        return self.shared_wheelhouse or self.out_dir / "wheelhouse"

    @property
    def locks(self) -> Path:
        return self.out_dir / "locks"


class _Console:
    """One line per step, never interleaved mid-line between parallel builds; transfers on a terminal status line."""

    def __init__(self, say: Say, status: StatusLine | None = None) -> None:
        self._say = status.say if status else say
        self._status = status
        self._lock = threading.Lock()

    def __call__(self, name: str, message: str) -> None:
        with self._lock:
            self._say(f"[{name}] {message}")

    def meter(self, name: str, what: str) -> Meter | None:
        """Progress for one transfer, when output is a terminal."""
        return self._status.meter(name, what) if self._status and self._status.interactive else None


def build_images(
    matrix: Matrix, specs: Sequence[ImageSpec], options: BuildOptions, *, say: Say = print, engine: Engine | None = None
) -> list[BuildResult]:
    """Run every selected image through the pipeline; one image's failure does not stop the others."""
    engine = engine or Engine()
    # Progress is drawn only for the console's own output on a terminal; other callers get lines.
    status = StatusLine() if say is print else None
    console = _Console(say, status)
    logs = options.out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    wheelhouse = options.wheelhouse
    results: dict[str, BuildResult] = {}
    source = source_labels(ROOT)
    stop = threading.Event()
    registry = registry_client(engine, options)
    with suppress(EngineError):
        if stale := remove_stale_wheels(engine):
            say(f"removed {len(stale)} wheels image(s) that runs killed midway left: {', '.join(stale)}")
    with _interrupts(engine, stop) as received:
        with open(logs / "wheels.log", "w") as wheel_log:
            meter = console.meter("wheels", "downloading")
            wheel_sets = fetch_wheels(
                specs, wheelhouse, options.locks, options.indexes, log=wheel_log, say=status.say if status else say,
                on_download=(lambda name, done, total: meter(done, total, what=f"downloading {name}")) if meter else None,
            )  # fmt: skip
            if meter:
                meter.close()
        with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
            # Images that share a venv stage build one after another, so the second finds the first's stage in the
            # engine's cache and both get the very same venv layer: the second's build waits for the first's venv
            # stage, not for the rest of its build, its verification and push. Not sooner: two builds in flight would
            # share the stage's step (BuildKit merges it), and dockerd 20.10's BuildKit then kills it for both when
            # the build that runs it fails in a step of its own. Groups build side by side. Submitted in order, so
            # that an image only ever waits for one that a worker already runs.
            futures = [
                pool.submit(_build_member, engine, member, wheel_sets, options, console, logs, source, stop, registry)
                for member in _members(venv_groups(specs, wheel_sets), interleave=options.jobs > 1)
            ]
            for future in futures:
                result = future.result()
                results[result.spec.name] = result
        engine.settled()  # the builds' and groups' cleanups
    ordered = [results[spec.name] for spec in specs]
    write_reports(ordered, options.out_dir)
    if received:
        raise Interrupted(received[0], ordered)
    return ordered


def registry_client(engine: Engine, options: BuildOptions) -> RegistryClient | None:
    """A push run first asks the registry (with --rebuild it does not): what it serves for the same build is kept."""
    return RegistryClient(platform=engine.platform()) if options.push and not options.rebuild else None


class Interrupted(Exception):
    """A signal stopped the run; the reports were written with each image's state."""

    def __init__(self, signum: int, results: list[BuildResult]) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.results = results


@contextmanager
def _interrupts(engine: Engine, stop: threading.Event) -> Iterator[list[int]]:
    """SIGINT/SIGTERM: no new image starts, and builds, pushes, containers and pips that run are stopped.

    A second Ctrl-C aborts at once. A SIGTERM after the first signal is not a second one: CI runners send
    SIGINT and then SIGTERM a few seconds later, and the report must still be written.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signals can only be caught there
        yield received
        return

    def handle(signum: int, frame: object) -> None:
        if received:
            if signum == signal.SIGINT:
                os._exit(128 + signum)
            return
        received.append(signum)
        stop.set()
        engine.cancel()
        # os.write, not print: the interrupted code may hold the console's lock.
        with suppress(OSError):
            os.write(
                2, f"\n{signal.Signals(signum).name}: stopping; nothing more is tagged or pushed (Ctrl-C again to abort at once)\n".encode()
            )

    def stop_pips() -> None:  # a thread of its own: the handler must not wait for a lock
        stop.wait()
        if received:
            PIPS.stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    threading.Thread(target=stop_pips, daemon=True, name="stop-pips").start()
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.set()  # ends the watcher
        PIPS.stopped.clear()


def build_hash(context: bytes, *base_ids: str) -> str:
    """Identifies an image's inputs: the build context's own files (the lock in it names every wheel by hash) and
    the exact base images (the image's, and its venv stage's)."""
    digest = hashlib.sha256(context)
    for base_id in base_ids:
        digest.update(base_id.encode())
    return digest.hexdigest()


def _base(engine: Engine, ref: str, *, console: Callable[[str], None], log: TextIO) -> ImageInfo:
    """A base image, pulled when the engine lacks it."""
    base = engine.image(ref)
    if base is None:
        console(f"pulling base {ref}")
        engine.pull(ref, log=log)
        base = engine.image(ref)
    if base is None:
        raise EngineError(f"{ref} is not in the engine after pulling it")
    return base


def venv_groups(specs: Sequence[ImageSpec], wheel_sets: dict[str, WheelSet | WheelError]) -> dict[tuple[str, ...], list[ImageSpec]]:
    """Images by the venv stage they would build: its base, python and the exact files it installs."""
    groups: dict[tuple[str, ...], list[ImageSpec]] = {}
    for spec in specs:
        wheel_set = wheel_sets[spec.name]
        key = (spec.venv_base_image, spec.python, wheel_set.lock, wheel_set.installer) if isinstance(wheel_set, WheelSet) else (spec.name,)
        groups.setdefault(key, []).append(spec)
    return groups


# How the install step of a venv stage names it in its command (the Dockerfile's `: venv-stage <id>;`), so that
# the engine's build cache records of the stage can be told apart: they stay for the group's next image.
STAGE_MARK = "venv-stage "


def venv_id(key: tuple[str, ...]) -> str:
    """A venv group's name in the Dockerfile and the engine's build cache."""
    return hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]


WHEELS_REPOSITORY = "torch-images-wheels"


def remove_stale_wheels(engine: Engine, *, older_than: float = 6 * 3600) -> list[str]:
    """Remove the wheels images made more than `older_than` seconds ago; return their tags. A run removes its own
    once each venv group is done; one killed midway, or whose engine went away, leaves its tag. The age keeps
    another run's, which it may still be using, out of reach."""
    stale = [ref for ref, made in engine.tags_of(WHEELS_REPOSITORY).items() if time.time() - made > older_than]
    for ref in stale:
        engine.remove_image(ref, force=True)
    return stale


class _Countdown:
    """How many images of a venv group are still to finish, the engine's build cache when the first started, and the
    group's wheels image once one of its builds has sent it."""

    def __init__(self, count: int, stage: str = "unlocked") -> None:
        self._count = count
        self._finished: set[str] = set()
        self._lock = threading.Lock()
        self.building = False  # set once one of its images starts a build (a group of unchanged images builds none)
        self.cache_before: set[str] | None = None
        self.stage = stage  # venv_id of the group
        self._wheels_lock = threading.Lock()
        self.wheels_ref: str | None = None

    def wheels(self, engine: Engine, files: dict[str, Path], *, say: Callable[[str], None], log: TextIO) -> str:
        """The group's wheels image, sent to the engine by the first build that needs it: the wheels under /wheels,
        one layer, that the venv stage mounts. One import per group, not a context per image: the flavours share
        the wheels, which cross to the engine once. Its tag is this run's own (another run on the same engine
        removes only its own); it goes with the group (release)."""
        with self._wheels_lock:
            if self.wheels_ref is None:
                ref = f"{WHEELS_REPOSITORY}:{self.stage}-{secrets.token_hex(4)}"
                size = sum(path.stat().st_size for path in files.values())
                say(f"sending the wheels to the engine as {ref} ({len(files)} files, {size / 1e9:.2f} GB)")
                started = time.monotonic()
                try:
                    image_id = engine.import_image(context_stream({}, wheels=files), ref)
                except BaseException:
                    with suppress(EngineError):  # an interrupted import may still have made the image
                        engine.remove_image(ref, force=True)
                    raise
                log.write(f"wheels: {ref} is {image_id} ({len(files)} files, {size} bytes, {time.monotonic() - started:.1f} s)\n")
                self.wheels_ref = ref
            return self.wheels_ref

    def release(self, engine: Engine) -> None:
        """Remove the group's wheels image, if one was sent."""
        with self._wheels_lock:
            if self.wheels_ref is not None:
                engine.remove_image(self.wheels_ref, force=True)
                self.wheels_ref = None

    def start(self, engine: Engine) -> None:
        """An image of the group is about to build: the first notes the engine's build cache as it is."""
        with self._lock:
            if not self.building:
                self.building = True
                with suppress(EngineError):
                    self.cache_before = engine.build_cache_ids()

    def finish(self, name: str) -> bool:
        """Count an image whose build is over (or that needs none); True once, for the group's last. An image is
        counted once however often it is named."""
        with self._lock:
            if name in self._finished:
                return False
            self._finished.add(name)
            return len(self._finished) == self._count


@dataclass(frozen=True)
class _Member:
    """One image of a venv group: it builds once the image before it in the group has built its venv stage (the
    stage is then in the engine's build cache), and once the group's last build is over, the stage goes from that
    cache and the group's wheels image from the engine."""

    spec: ImageSpec
    after: threading.Event | None  # set when the previous image of the group has built its venv stage (or ended)
    built: threading.Event
    group: _Countdown

    @property
    def stage(self) -> str:
        """venv_id of the group."""
        return self.group.stage


def _members(groups: dict[tuple[str, ...], list[ImageSpec]], *, interleave: bool = False) -> list[_Member]:
    """The images in the order they are submitted: group by group (one job: a venv stage is in the cache no
    longer than its group needs it), or interleaved (every group's first image, then every second, ...: a
    waiting image holds a worker, so the groups' first images go first). Either way an image only ever waits
    for one submitted before it, so no worker waits for a task that no worker runs."""
    chains = []
    for key, group in groups.items():
        countdown, after, chain = _Countdown(len(group), venv_id(key)), None, []
        for spec in group:
            member = _Member(spec=spec, after=after, built=threading.Event(), group=countdown)
            chain.append(member)
            after = member.built
        chains.append(chain)
    if not interleave:
        return [member for chain in chains for member in chain]
    return [chain[i] for i in range(max(map(len, chains), default=0)) for chain in chains if i < len(chain)]


def _build_member(
    engine: Engine,
    member: _Member,
    wheel_sets: dict[str, WheelSet | WheelError],
    options: BuildOptions,
    console: _Console,
    logs: Path,
    source: dict[str, str] | None,
    stop: threading.Event,
    registry: RegistryClient | None = None,
) -> BuildResult:
    group = member.group

    def cleanup() -> None:
        """The group's venv stage; then whatever else its builds left that is no longer in use (a build drops its own
        records as it ends, but dockerd may not have let them go yet); other groups' stages stay. Then the group's
        wheels image."""
        if group.building:  # nothing built, nothing to remove: the engine's cache records are others'
            with suppress(EngineError):
                engine.prune_build_cache(f"{STAGE_MARK}{member.stage};")
                if group.cache_before is not None:
                    engine.drop_build_cache(group.cache_before, keep=STAGE_MARK)
        group.release(engine)

    def ended() -> None:
        """This image's build is over: once the group's last is, its cleanup runs beside that image's verification,
        tags and push (build_images waits for it before it reports)."""
        if group.finish(member.spec.name):
            engine.later(cleanup)

    try:
        spec = member.spec
        return _build_one(
            engine, spec, wheel_sets[spec.name], options, console, logs, source, stop, registry, member.stage,
            after=member.after, on_built=member.built.set, group=group, on_ended=ended,
        )  # fmt: skip
    finally:
        member.built.set()
        ended()


def _build_one(
    engine: Engine,
    spec: ImageSpec,
    wheel_set: WheelSet | WheelError,
    options: BuildOptions,
    console: _Console,
    logs: Path,
    source: dict[str, str] | None = None,
    stop: threading.Event | None = None,
    registry: RegistryClient | None = None,
    stage: str = "unlocked",
    *,
    after: threading.Event | None = None,
    on_built: Callable[[], None] | None = None,
    group: _Countdown | None = None,
    on_ended: Callable[[], None] | None = None,
) -> BuildResult:
    started = time.monotonic()
    log_path = logs / f"{spec.name}.log"
    own_group = group is None  # an image built on its own: its wheels image goes when it is done
    group = group or _Countdown(1, stage)

    # What has happened for good, so that a failure later on is reported with it (verified, then pushed, then failed).
    done: dict[str, object] = {}

    def failed(message: str, **extra: object) -> BuildResult:
        console(spec.name, f"FAILED: {message} (log: {log_path})")
        fields = {**done, **extra}
        return BuildResult(spec=spec, status="failed", error=message, seconds=time.monotonic() - started, **fields)  # type: ignore[arg-type]

    def cancelled(where: str) -> BuildResult:
        console(spec.name, f"cancelled {where}")
        return BuildResult(spec=spec, status="cancelled", error=f"interrupted {where}", seconds=time.monotonic() - started, **done)  # type: ignore[arg-type]

    stopped = stop.is_set if stop else (lambda: False)
    unsealed: list[str] = []
    if stopped():
        return cancelled("before it started")
    if isinstance(wheel_set, WheelError):
        log_path.write_text(f"{wheel_set}\nsee {logs / 'wheels.log'}\n")
        return failed(str(wheel_set))
    with open(log_path, "w") as log:
        try:
            dockerfile = render_dockerfile(spec, venv_id=stage)
            files = context_files(spec, dockerfile=dockerfile, requirements=wheel_set.lock, installer=wheel_set.installer)
            say = partial(console, spec.name)
            bases = [_base_identity(engine, ref, registry, console=say, log=log) for ref in (spec.base_image, spec.venv_base_image)]
            # The wheels are named, with their hashes, by the lock in requirements.txt: the small files identify them.
            small, platform = context_tar(files), "/".join(engine.platform())
            inputs = build_hash(small, *bases, platform)
            gpus = gpus_wanted(engine, options.gpus)
            reused = None if options.rebuild else _existing(engine, inputs, gpus=gpus)
            if reused is None and (found := _published(registry, spec, inputs, gpus=gpus, log=log)):
                if on_built:  # nothing to build: the next image of the group need not wait for this one's tags
                    on_built()
                return _kept_in_registry(registry, spec, found, say=say, seconds=time.monotonic() - started)
            if reused is not None:
                image_id, status, report = reused.id, "unchanged", contract.report_from_labels(reused.labels)
                if on_built:
                    on_built()
                console(spec.name, f"unchanged: reusing verified image {image_id[:19]}")
            else:
                base = _base(engine, spec.base_image, console=say, log=log)
                venv_base = _base(engine, spec.venv_base_image, console=say, log=log)
                pulled = [_identity(base, spec.base_image), _identity(venv_base, spec.venv_base_image)]
                if pulled != bases:  # a tag moved between the registry's answer and the pull: the hash names what is built
                    log.write(f"a base moved since the registry was asked ({bases} -> {pulled}): the build hash names the pulled one\n")
                    inputs = build_hash(small, *pulled, platform)
                if after is not None and not after.is_set():
                    console(spec.name, "waiting for the previous image of its venv group to build the venv stage")
                    while not after.wait(0.5):
                        if stopped():
                            return cancelled("before it started")
                wheels = {name: options.wheelhouse / name for name in wheel_set.files}
                group.start(engine)
                wheels_ref = group.wheels(engine, wheels, say=say, log=log)
                console(spec.name, "building")
                # Provenance goes in as build labels, outside the build hash: a new commit alone rebuilds nothing.
                labels = contract.build_labels(inputs, source=source or {}, base_digest=base_digest(base.repo_digests, spec.base_image))
                mark = f"{STAGE_MARK}{stage};"
                try:
                    built = engine.build(
                        small, log=log, labels=labels, on_step=lambda step: console(spec.name, step), keep=STAGE_MARK,
                        on_done=(lambda name: on_built() if mark in name else None) if on_built else None,
                        buildargs={"WHEELS": wheels_ref}, drop_later=True,
                    )  # fmt: skip
                finally:
                    if on_ended:
                        on_ended()
                if on_built:
                    on_built()
                unsealed.append(built)
                console(spec.name, "verifying (torch-verify inside the image)")
                report = run_verify(engine, built, gpus=gpus)
                log.write("\n--- torch-verify ---\n" + report.output + "\n")
                problems = [f"{c.name}: {c.detail}" for c in report.failures] + promise_problems(spec, report)
                if problems or not report.ok:
                    return failed("verification failed: " + "; ".join(problems or ["torch-verify reported failure"]), verify=report)
                image_id = _finalize(engine, built, report, log, build_hash=inputs, gpus=gpus)
                unsealed.clear()
                status = "built"
            done.update(image_id=image_id, verified=True, verify=report)
            if stopped():  # sealed, so a later run may reuse it, but not tagged now
                return cancelled("after verification, before tagging")
            tag_image(engine, image_id, spec.refs, stopped=stopped)
            done.update(tags=spec.refs)
            console(spec.name, "tagged " + ", ".join(spec.tags))
            pushed: tuple[PushResult, ...] = ()
            if options.push and stopped():
                return cancelled("after tagging, before pushing")
            if options.push:
                console(spec.name, f"pushing to {spec.repository}")
                push_meter = console.meter(spec.name, "pushing")
                try:
                    pushed = push_refs(engine, spec.refs, log=log, on_progress=push_meter, stopped=stopped)
                finally:
                    if push_meter:
                        push_meter.close()
                console(spec.name, "pushed " + ", ".join(f"{p.ref}@{p.digest[:19]}" for p in pushed))
            info = engine.image(image_id)
            return BuildResult(
                spec=spec, status=status, image_id=image_id, verified=True, verify=report, tags=spec.refs,
                pushed=pushed, size=info.size if info else None, seconds=time.monotonic() - started,
            )  # fmt: skip
        except Cancelled as exc:
            log.write(f"\nINTERRUPTED: {exc}\n")
            if exc.image_id:  # the build had finished when the interrupt came
                unsealed.append(exc.image_id)
            if isinstance(exc, PartialCancel):
                done.update(pushed=exc.pushed)
            return cancelled(f"while running ({exc})")
        except (EngineError, VerifyError, RenderError, RegistryError) as exc:
            log.write(f"\nERROR: {exc}\n")
            tail = getattr(exc, "tail", "")
            if isinstance(exc, PartialPush):
                done.update(pushed=exc.pushed)
            return failed(str(exc) + (f"\n{tail}" if tail else ""))
        except Exception as exc:  # noqa: BLE001 - one image's surprise must not sink the others' reports
            log.write(f"\nUNEXPECTED ERROR: {exc!r}\n{traceback.format_exc()}")
            return failed(f"unexpected error: {exc!r} (traceback in the log)")
        finally:
            for image in unsealed:  # built but never sealed (failed, crashed, interrupted): no later run or user may find it
                _discard(engine, image, log)
            if own_group:
                with suppress(EngineError):
                    group.release(engine)


def _base_identity(engine: Engine, ref: str, registry: RegistryClient | None, *, console: Callable[[str], None], log: TextIO) -> str:
    """A base as every machine names it: the registry digest its tag resolved to (the image ID for a base never pushed).

    An engine without the base asks the registry when there is one to ask, so that deciding costs no pull.
    """
    info = engine.image(ref)
    if info is None and registry is not None:
        try:
            digest = registry.base_digest(ref)
        except RegistryError as exc:
            log.write(f"cannot ask the registry for {ref} ({exc}); pulling it\n")
            digest = None
        if digest:
            return digest
    return _identity(info or _base(engine, ref, console=console, log=log), ref)


def _identity(info: ImageInfo, ref: str) -> str:
    """A base in the engine as every machine names it: the registry digest of its tag, else its image ID."""
    return base_digest(info.repo_digests, ref) or info.id


def _published(registry: RegistryClient | None, spec: ImageSpec, inputs: str, *, gpus: bool, log: TextIO) -> RemoteImage | None:
    """What the registry serves for the image's first reference, if it is this very build, verified."""
    if registry is None:
        return None
    try:
        return published(registry, spec.refs, inputs, gpus=gpus)
    except RegistryError as exc:  # the push would tell the same story if the registry is really unusable
        log.write(f"cannot ask the registry whether {spec.refs[0]} is already this build ({exc}); building\n")
        return None


def _kept_in_registry(registry: RegistryClient | None, spec: ImageSpec, found: RemoteImage, *, say: Say, seconds: float) -> BuildResult:
    """The registry already serves this very build: report it, and move the aliases that point elsewhere."""
    moved = move_aliases(registry, spec.refs, found) if registry else ()
    say(f"unchanged (registry): {spec.refs[0]}@{found.manifest.digest[:19]}, nothing built or pushed")
    for push in moved:
        say(f"moved {push.ref} to it")
    return BuildResult(
        spec=spec, status="unchanged", verified=True, verify=contract.report_from_labels(found.labels), pushed=moved,
        registry_digest=found.manifest.digest, seconds=seconds,
    )  # fmt: skip


def _existing(engine: Engine, inputs: str, *, gpus: bool) -> ImageInfo | None:
    """An image sealed as verified for exactly these inputs (with GPUs when this run verifies with them), if the engine has one."""
    for info in engine.images_with_label(contract.BUILD_HASH, inputs):
        # Labels are inherited: an image someone built FROM ours carries the same seal, so the seal must be
        # the image's own newest step as well.
        if contract.sealed(info.labels, inputs, gpus=gpus) and contract.seal_step(inputs) in (engine.history(info.id) or [""])[0]:
            return info
    return None


def _discard(engine: Engine, image_id: str, log: TextIO) -> None:
    """An image that failed verification goes at once: no later run or user may find it."""
    try:
        engine.remove_image(image_id, force=True)
    except EngineError as exc:
        log.write(f"\ncould not remove the unverified image {image_id}: {exc}\n")


def _finalize(engine: Engine, built: str, report: VerifyReport, log: TextIO, *, build_hash: str, gpus: bool) -> str:
    """Seal the verified image: a metadata-only layer with what verification saw and the build it passed for."""
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = contract.verified_labels(report, build_hash=build_hash, gpus=gpus, created=created)
    # One LABEL step: the image's newest history entry is then the seal itself, which an image built on top lacks.
    pairs = " ".join(f"{key}={dockerfile_quote(value)}" for key, value in sorted(labels.items()))
    return engine.build(context_tar({"Dockerfile": f"FROM {built}\nLABEL {pairs}\n".encode()}), log=log, classic=True)
