"""The verification gate, against a fake engine: nothing unverified is tagged, pushed, reused or left behind."""

from __future__ import annotations

import io
import json
import shlex
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from torchimages import labels as contract
from torchimages import pipeline
from torchimages.engine import BuildError, Cancelled, EngineError, ImageInfo, RunResult
from torchimages.matrix import load_matrix
from torchimages.model import BuildResult, ImageSpec
from torchimages.registry import Manifest, RegistryError, RemoteImage
from torchimages.wheels import WheelError, WheelSet

ROOT = Path(__file__).parents[2]
MATRIX = load_matrix(ROOT / "tests" / "fixtures" / "images.yaml")
CPU = next(s for s in MATRIX.images if s.cuda is None)
CUDA = next(s for s in MATRIX.images if s.cuda and s.flavour == "runtime")
BASES = {ref for spec in MATRIX.images for ref in (spec.base_image, spec.venv_base_image)}


def verify_output(spec: ImageSpec, **changes: object) -> str:
    """What torch-verify --json prints for an image that keeps every promise (changes break one)."""
    torch = next(b for b in spec.family if b.name == "torch")
    packages: dict[str, object] = dict.fromkeys(spec.modules, "1.0")
    packages.update({b.name: b.version for b in spec.family if b.name != "torch"})
    document = {
        "ok": True, "torch": torch.version if "+" in torch.version else f"{torch.version}+{torch.variant}",
        "torch_cuda": spec.wheel_cuda, "cudnn": f"{spec.cudnn}.20.0" if spec.cudnn else None, "python": spec.python,
        "gpu": {"available": False}, "packages": packages, "checks": [{"name": "torch.version", "status": "pass", "detail": ""}],
    }  # fmt: skip
    document.update(changes)
    return "torch-verify log line\n" + json.dumps(document) + "\n"


@dataclass
class FakeEngine:
    """The engine methods the pipeline uses, with Docker's label inheritance: a build starts from its base's labels."""

    verify: str = ""
    verify_exit: int = 0
    base_labels: dict[str, str] = field(default_factory=dict)
    images: dict[str, ImageInfo] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pushed: list[str] = field(default_factory=list)
    builds: int = 0
    verified_with_gpus: list[bool] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)  # build cache markers
    dockerfiles: list[str] = field(default_factory=list)
    kept: list[str | None] = field(default_factory=list)  # what each build was told to keep in the build cache
    cancelled: threading.Event = field(default_factory=threading.Event)
    interrupt_during: str = ""  # "build", "verify", "tag" or "push": a signal arrives then
    stop: threading.Event | None = None
    history_of: dict[str, list[str]] = field(default_factory=dict)
    bases_present: bool = True  # False: a fresh engine, which pulls its bases (their registry digest is sha256:b)
    pulled: list[str] = field(default_factory=list)
    imported: dict[str, list[str]] = field(default_factory=dict)  # wheels image ref -> the files under /wheels
    wheels_args: list[str | None] = field(default_factory=list)  # each build's WHEELS argument
    wheels_removed: list[str] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # what later() was given, run by settled()

    def import_image(self, rootfs: Iterable[bytes], ref: str) -> str:
        with tarfile.open(fileobj=io.BytesIO(b"".join(rootfs))) as tar:
            names = tar.getnames()
        assert names[0] == "wheels" and all(name.startswith("wheels/") for name in names[1:]), names
        self.imported[ref] = [name.removeprefix("wheels/") for name in names[1:]]
        return f"sha256:{len(self.imported):064x}"

    def history(self, ref: str) -> list[str]:
        return self.history_of[self.tags.get(ref, ref)]

    def cancel(self) -> None:
        self.cancelled.set()

    def _interrupt(self, when: str) -> None:
        if self.interrupt_during == when and self.stop is not None:
            self.stop.set()  # what the signal handler does
            self.cancel()

    def pull(self, ref: str, *, log: object) -> str:
        self.pulled.append(ref)
        return "sha256:b"

    def image(self, ref: str) -> ImageInfo | None:
        if ref in BASES and (self.bases_present or ref in self.pulled):
            return ImageInfo(id="sha256:base", size=1, labels=dict(self.base_labels), repo_digests=(f"{ref.rsplit(':', 1)[0]}@sha256:b",))
        return self.images.get(self.tags.get(ref, ref))

    def images_with_label(self, key: str, value: str) -> list[ImageInfo]:
        return [info for info in self.images.values() if info.labels.get(key) == value]

    def has_nvidia_runtime(self) -> bool:
        return False

    def platform(self) -> tuple[str, str]:
        return ("linux", "amd64")

    def build(
        self, context: bytes | Iterable[bytes], *, log: object, labels: dict[str, str] | None = None, on_step: object = None,
        classic: bool = False, keep: str | None = None, on_done: Callable[[str], None] | None = None,
        buildargs: dict[str, str] | None = None, drop_later: bool = False,
    ) -> str:  # fmt: skip
        data = context if isinstance(context, bytes) else b"".join(context)
        wheels = (buildargs or {}).get("WHEELS")
        assert classic or (wheels in self.imported and wheels not in self.wheels_removed), f"no wheels image {wheels}"
        self.wheels_args.append(wheels)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.extractfile("Dockerfile")
            assert member is not None
            dockerfile = member.read().decode()
        stage_step = next((line for line in dockerfile.splitlines() if ": venv-stage " in line), None)
        if on_done and stage_step:  # BuildKit reports the venv stage's install step done, as BuildKit names it
            mounts = "--mount=type=bind,from=wheels,source=/wheels,target=/tmp/wheels"
            self.stage_built(on_done, f"[venv 4/4] RUN {mounts} set -eux; " + stage_step.strip())
        parent = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")][-1]  # the image's own stage
        if parent in BASES:  # the image's own Dockerfile: its labels are the promise
            inherited = dict(self.base_labels)
        else:  # the seal: FROM the built image, then one LABEL step with every pair
            inherited = dict(self.images[parent].labels)
            for pair in shlex.split(dockerfile.splitlines()[1].removeprefix("LABEL ")):
                key, value = pair.split("=", 1)
                inherited[key] = value
        self.builds += 1
        self.dockerfiles.append(dockerfile)
        self.kept.append(keep)
        image_id = f"sha256:{self.builds:064x}"
        self.images[image_id] = ImageInfo(id=image_id, size=10, labels={**inherited, **(labels or {})})
        last = dockerfile.strip().splitlines()[-1]  # what `docker history` shows for the newest step, quotes dropped
        self.history_of[image_id] = ["/bin/sh -c #(nop)  " + (" ".join(shlex.split(last)) if last.startswith("LABEL") else last)]
        self._interrupt("build")  # the signal arrives as the build finishes: the build itself completed
        return image_id

    def run(self, image: str, command: list[str], *, timeout: float = 0, gpus: bool = False, **_: object) -> RunResult:
        assert image in self.images, f"running {image}, which is not there"
        self.verified_with_gpus.append(gpus)
        self._interrupt("verify")
        if self.cancelled.is_set():
            raise Cancelled(f"{command[0]} in {image} stopped by an interrupt")
        return RunResult(exit_code=self.verify_exit, output=self.verify)

    def tag(self, image_id: str, ref: str) -> None:
        if self.cancelled.is_set():
            raise Cancelled(f"tagging {ref} stopped by an interrupt")
        self.tags[ref] = image_id
        self._interrupt("tag")

    def push(self, ref: str, *, log: object) -> str:
        self.pushed.append(ref)
        return "sha256:" + "d" * 64

    def remote_digest(self, ref: str) -> str:
        return "sha256:" + "d" * 64

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        if ref in self.imported:
            self.wheels_removed.append(ref)
            return
        self.removed.append(ref)
        self.images.pop(ref, None)

    def prune_build_cache(self, marker: str) -> None:
        self.pruned.append(marker)

    def later(self, cleanup: Callable[[], None]) -> None:
        self.cleanups.append(cleanup)

    def settled(self) -> None:
        while self.cleanups:
            self.cleanups.pop(0)()

    def stage_built(self, on_done: Callable[[str], None], name: str) -> None:
        on_done(name)

    def build_cache_ids(self) -> set[str]:
        return {"older"}

    def drop_build_cache(self, before: set[str], *, keep: str | None = None) -> None:
        self.pruned.append(f"all since {sorted(before)} but {keep!r}")


def build(
    engine: FakeEngine, spec: ImageSpec, tmp_path: Path, *, stop: threading.Event | None = None, registry: object = None, **options: object
):  # fmt: skip
    engine.stop = stop
    return pipeline._build_one(
        engine, spec, WheelSet(lock="torch==2.13.0\n", files=()),  # type: ignore[arg-type]
        pipeline.BuildOptions(out_dir=tmp_path, **options), pipeline._Console(io.StringIO().write), tmp_path,  # type: ignore[arg-type]
        None, stop, registry,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("spec", [CPU, CUDA], ids=["cpu", "cuda"])
def test_a_verified_image_is_sealed_tagged_and_pushed(spec: ImageSpec, tmp_path: Path) -> None:
    engine = FakeEngine(verify=verify_output(spec))
    result = build(engine, spec, tmp_path, push=True)
    assert (result.status, result.verified, result.error) == ("built", True, None)
    final = engine.images[result.image_id]
    assert final.labels[contract.VERIFIED] == "true"
    assert final.labels[contract.VERIFIED_BUILD] == final.labels[contract.BUILD_HASH]
    assert final.labels[contract.VERIFIED_GPU] == "false"
    assert final.labels[contract.TORCH] == json.loads(engine.verify.splitlines()[-1])["torch"]
    assert {engine.tags[ref] for ref in spec.refs} == {result.image_id}
    assert engine.pushed == list(spec.refs)


@pytest.mark.parametrize(
    ("spec", "change", "reason"),
    [
        (CPU, {"torch": "2.13.0+cu130", "torch_cuda": "13.0"}, "torch is 2.13.0+cu130, the matrix promised 2.13.0+cpu"),
        (CUDA, {"torch_cuda": None}, "torch is a CPU build, the matrix promised CUDA 13.0"),
        (CUDA, {"cudnn": "8.9.7"}, "cuDNN is 8.9.7, the matrix promised cuDNN 9"),
        (CPU, {"python": "3.12"}, "python is 3.12, the matrix promised 3.11"),
    ],
    ids=["cuda-torch-in-cpu-image", "cpu-torch-in-cuda-image", "cudnn", "python"],
)
def test_a_broken_promise_fails_even_when_torch_verify_passed(spec: ImageSpec, change: dict, reason: str, tmp_path: Path) -> None:
    engine = FakeEngine(verify=verify_output(spec, **change))
    result = build(engine, spec, tmp_path, push=True)
    assert result.status == "failed" and result.verified is False
    assert reason in (result.error or "")
    assert engine.tags == {} and engine.pushed == []
    assert all(contract.VERIFIED not in info.labels for info in engine.images.values())


@pytest.mark.parametrize(
    ("output", "exit_code", "error"),
    [("Segmentation fault\n", 139, "torch-verify printed no report"), ("", 137, "torch-verify printed no report")],
    ids=["crash", "killed"],
)
def test_a_verifier_that_crashes_fails_the_image_and_the_image_goes(output: str, exit_code: int, error: str, tmp_path: Path) -> None:
    engine = FakeEngine(verify=output, verify_exit=exit_code)
    result = build(engine, CPU, tmp_path, push=True)
    assert result.status == "failed" and error in (result.error or "")
    assert engine.images == {} and engine.tags == {} and engine.pushed == []


def test_a_failing_torch_verify_is_neither_tagged_nor_pushed_and_the_image_goes(tmp_path: Path) -> None:
    output = verify_output(CPU, ok=False, checks=[{"name": "package.scipy", "status": "fail", "detail": "ImportError"}])
    engine = FakeEngine(verify=output, verify_exit=1)
    result = build(engine, CPU, tmp_path, push=True)
    assert result.status == "failed" and "package.scipy: ImportError" in (result.error or "")
    assert engine.tags == {} and engine.pushed == []
    assert engine.removed == ["sha256:" + f"{1:064x}"] and engine.images == {}


def test_a_seal_inherited_from_the_base_is_not_trusted(tmp_path: Path) -> None:
    # A base that is itself one of our verified images (or a hostile mirror's) carries every verification label.
    forged = {contract.VERIFIED: "true", contract.VERIFIED_BUILD: "f" * 64, contract.BUILD_HASH: "f" * 64, contract.VERIFIED_GPU: "true"}
    engine = FakeEngine(verify=verify_output(CPU, ok=False), verify_exit=1, base_labels=forged)
    first = build(engine, CPU, tmp_path, push=True)
    assert first.status == "failed"
    engine.verify, engine.verify_exit = verify_output(CPU), 0
    second = build(engine, CPU, tmp_path, push=True)
    assert second.status == "built", "an unverified image was reused"
    assert engine.builds == 3  # the failed build, then a new build and its seal: nothing was reused


def test_an_image_verified_without_gpus_is_not_reused_by_a_run_with_gpus(tmp_path: Path) -> None:
    engine = FakeEngine(verify=verify_output(CUDA))
    assert build(engine, CUDA, tmp_path).status == "built"
    assert build(engine, CUDA, tmp_path).status == "unchanged"  # the same mode: reused
    builds = engine.builds
    again = build(engine, CUDA, tmp_path, gpus="all")
    assert again.status == "built" and engine.builds > builds
    assert engine.verified_with_gpus == [False, True]
    assert engine.images[again.image_id].labels[contract.VERIFIED_GPU] == "true"
    assert build(engine, CUDA, tmp_path, gpus="none").status == "unchanged"  # a GPU seal serves a run without GPUs


def test_the_seal_must_match_the_image_s_own_build_hash() -> None:
    sealed = {contract.VERIFIED: "true", contract.VERIFIED_BUILD: "a" * 64, contract.BUILD_HASH: "a" * 64, contract.VERIFIED_GPU: "false"}
    assert contract.sealed(sealed, "a" * 64, gpus=False)
    assert not contract.sealed(sealed, "a" * 64, gpus=True)
    assert not contract.sealed({**sealed, contract.BUILD_HASH: "b" * 64}, "b" * 64, gpus=False)
    assert not contract.sealed({**sealed, contract.VERIFIED: "false"}, "a" * 64, gpus=False)
    assert not contract.sealed({contract.VERIFIED: "true", contract.BUILD_HASH: "a" * 64}, "a" * 64, gpus=False)


def test_the_report_is_torch_verify_s_document_whatever_the_packages_log_around_it() -> None:
    from torchimages.verify import VerifyError, parse_report

    logged = '{"event": "telemetry disabled"}\nWARNING {"not": json\n' + verify_output(CPU) + '{"event": "atexit"}\n'
    report = parse_report(logged, 0)
    assert report.ok and report.torch == "2.13.0+cpu" and report.checks[0].name == "torch.version"
    failed = verify_output(CPU, ok=False) + '{"ok": true}\n'  # a package's JSON with an "ok" of its own
    assert parse_report(failed, 1).ok is False
    with pytest.raises(VerifyError, match="no report"):
        parse_report('{"event": "a package logged this"}\nTraceback ...\n', 1)


class FlakyRegistry(FakeEngine):
    """Takes the first push, then refuses for good."""

    def push(self, ref: str, *, log: object) -> str:
        if self.pushed:
            from torchimages.engine import PushError

            raise PushError(f"push of {ref} failed: denied: requested access to the resource is denied", transient=False)
        return super().push(ref, log=log)


def test_a_push_that_fails_midway_reports_verified_and_what_was_pushed(tmp_path: Path) -> None:
    engine = FlakyRegistry(verify=verify_output(CPU))
    result = build(engine, CPU, tmp_path, push=True)
    assert result.status == "failed" and "denied" in (result.error or "")
    assert result.verified is True and result.verify is not None and result.verify.ok
    assert [p.ref for p in result.pushed] == [CPU.refs[0]] and result.tags == CPU.refs
    assert result.image_id in engine.images


def test_an_interrupt_before_an_image_starts_starts_nothing(tmp_path: Path) -> None:
    engine, stop = FakeEngine(verify=verify_output(CPU)), threading.Event()
    stop.set()
    result = build(engine, CPU, tmp_path, stop=stop, push=True)
    assert (result.status, result.error) == ("cancelled", "interrupted before it started")
    assert engine.builds == 0 and engine.tags == {} and engine.pushed == []


def test_an_interrupt_during_verification_removes_the_unverified_image(tmp_path: Path) -> None:
    engine = FakeEngine(verify=verify_output(CPU), interrupt_during="verify")
    result = build(engine, CPU, tmp_path, stop=threading.Event(), push=True)
    assert result.status == "cancelled" and "stopped by an interrupt" in (result.error or "")
    assert result.verified is False and engine.tags == {} and engine.pushed == []
    assert engine.images == {} and engine.removed == ["sha256:" + f"{1:064x}"]


def test_an_interrupt_after_the_build_leaves_nothing_tagged_and_after_tagging_nothing_pushed(tmp_path: Path) -> None:
    engine = FakeEngine(verify=verify_output(CPU), interrupt_during="build")
    result = build(engine, CPU, tmp_path, stop=threading.Event(), push=True)
    assert result.status == "cancelled" and engine.tags == {} and engine.pushed == []
    engine = FakeEngine(verify=verify_output(CPU), interrupt_during="tag")
    result = build(engine, CPU, tmp_path, stop=threading.Event(), push=True)
    assert result.status == "cancelled" and "tagging stopped by an interrupt before" in (result.error or "")
    assert list(engine.tags) == [CPU.refs[0]], "a reference was tagged after the signal"
    assert result.verified is True and engine.pushed == []


def test_an_interrupt_after_verification_reports_what_verification_saw(tmp_path: Path) -> None:
    stop = threading.Event()
    engine = FakeEngine(verify=verify_output(CPU))
    engine.run = _then_set(engine.run, stop)  # type: ignore[method-assign]
    result = build(engine, CPU, tmp_path, stop=stop, push=True)
    assert (result.status, result.error) == ("cancelled", "interrupted after verification, before tagging")
    assert result.verified is True and result.image_id in engine.images and result.verify is not None and result.verify.ok
    assert engine.tags == {}


def _then_set(method, event: threading.Event):
    def wrapper(*args, **kwargs):
        outcome = method(*args, **kwargs)
        event.set()
        return outcome

    return wrapper


def test_an_image_built_from_ours_by_someone_else_is_never_taken_for_ours(tmp_path: Path) -> None:
    engine = FakeEngine(verify=verify_output(CPU))
    ours = build(engine, CPU, tmp_path).image_id
    assert ours is not None
    # `FROM <our image>` + `RUN pip install x`, built on the same engine: Docker copies every label, seal included.
    theirs = "sha256:" + "e" * 64
    engine.images = {theirs: ImageInfo(id=theirs, size=11, labels=dict(engine.images[ours].labels)), **engine.images}
    engine.history_of[theirs] = ["/bin/sh -c pip install x"]
    again = build(engine, CPU, tmp_path, push=True)
    assert again.status == "unchanged" and again.image_id == ours
    assert {engine.tags[ref] for ref in CPU.refs} == {ours}
    engine.images.pop(ours)  # ours is gone: theirs must not stand in for it
    rebuilt = build(engine, CPU, tmp_path)
    assert rebuilt.status == "built" and rebuilt.image_id != theirs


@dataclass
class FakeRegistryClient:
    """What a registry serves per reference: the image's labels and newest step (RegistryClient's answers)."""

    images: dict[str, RemoteImage] = field(default_factory=dict)
    moved: list[str] = field(default_factory=list)
    fail: bool = False

    def image(self, ref: str) -> RemoteImage | None:
        if self.fail:
            raise RegistryError("cannot reach ghcr.io for acme/pytorch: connection refused")
        return self.images.get(ref)

    def base_digest(self, ref: str) -> str | None:
        return self.digest(ref)

    def digest(self, ref: str) -> str | None:
        if ref in (CPU.base_image, CUDA.base_image, CUDA.venv_base_image):
            return "sha256:b"  # what the engine records as the base's RepoDigest when it pulls the same tag
        return self.images[ref].manifest.digest if ref in self.images else None

    def put_manifest(self, ref: str, manifest: Manifest) -> str:
        self.moved.append(ref)
        self.images[ref] = RemoteImage(manifest=manifest, labels={}, newest_step="")
        return manifest.digest


def published_by_an_earlier_run(spec: ImageSpec, tmp_path: Path, **changes: str) -> tuple[FakeRegistryClient, RemoteImage]:
    """A registry holding what a run on another machine built, verified and pushed (every alias but the last)."""
    earlier = FakeEngine(verify=verify_output(spec))
    (tmp_path / "earlier").mkdir()
    result = build(earlier, spec, tmp_path / "earlier")
    info = earlier.images[result.image_id]
    image = RemoteImage(
        manifest=Manifest(digest="sha256:" + "e" * 64, media_type="application/vnd.docker.distribution.manifest.v2+json", body=b"{}"),
        labels={**info.labels, **changes}, newest_step=earlier.history(result.image_id)[0],
    )  # fmt: skip
    stale = RemoteImage(manifest=Manifest(digest="sha256:" + "0" * 64, media_type="", body=b""), labels={}, newest_step="")
    return FakeRegistryClient({**dict.fromkeys(spec.refs[:-1], image), spec.refs[-1]: stale}), image


@pytest.mark.parametrize("spec", [CPU, CUDA], ids=["cpu", "cuda"])
def test_an_image_the_registry_serves_for_this_build_is_neither_built_nor_pushed(spec: ImageSpec, tmp_path: Path) -> None:
    registry, image = published_by_an_earlier_run(spec, tmp_path)
    fresh = FakeEngine(verify=verify_output(spec), bases_present=False)  # a new CI runner: nothing in its engine
    result = build(fresh, spec, tmp_path, push=True, registry=registry)
    assert (result.status, result.verified, result.error, result.registry_digest) == ("unchanged", True, None, image.manifest.digest)
    # Deciding cost no pull: the bases are named by the digest their tags resolve to, in the engine or in the registry.
    assert (fresh.builds, fresh.pushed, fresh.tags, fresh.pulled) == (0, [], {}, [])
    # Only the alias that pointed elsewhere moved, by manifest; the others already served the image.
    assert registry.moved == [spec.refs[-1]] and [p.ref for p in result.pushed] == [spec.refs[-1]]
    assert result.verify is not None and result.verify.torch == image.labels[contract.TORCH]


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({contract.BUILD_HASH: "0" * 64, contract.VERIFIED_BUILD: "0" * 64}, "another build of the same tag"),
        ({contract.VERIFIED: "false"}, "not verified"),
    ],
)
def test_what_the_registry_serves_for_other_inputs_is_rebuilt_and_pushed(changes: dict[str, str], why: str, tmp_path: Path) -> None:
    registry, _ = published_by_an_earlier_run(CPU, tmp_path, **changes)
    fresh = FakeEngine(verify=verify_output(CPU))
    result = build(fresh, CPU, tmp_path, push=True, registry=registry)
    assert (result.status, result.registry_digest, fresh.pushed) == ("built", None, list(CPU.refs)), why


def test_an_image_built_from_ours_in_the_registry_is_not_taken_for_ours(tmp_path: Path) -> None:
    registry, image = published_by_an_earlier_run(CPU, tmp_path)
    derived = RemoteImage(manifest=image.manifest, labels=image.labels, newest_step="/bin/sh -c pip install mine")  # labels inherited
    registry.images[CPU.refs[0]] = derived
    result = build(FakeEngine(verify=verify_output(CPU)), CPU, tmp_path, push=True, registry=registry)
    assert result.status == "built"


def test_a_registry_that_cannot_be_asked_means_building(tmp_path: Path) -> None:
    registry, _ = published_by_an_earlier_run(CPU, tmp_path)
    registry.fail = True
    fresh = FakeEngine(verify=verify_output(CPU))
    result = build(fresh, CPU, tmp_path, push=True, registry=registry)
    assert (result.status, fresh.pushed) == ("built", list(CPU.refs))
    assert "cannot ask the registry whether" in (tmp_path / f"{CPU.name}.log").read_text()


def test_rebuild_and_runs_without_push_do_not_ask_the_registry(tmp_path: Path) -> None:
    for options in ({"push": True, "rebuild": True}, {"push": False}):
        assert pipeline.registry_client(FakeEngine(), pipeline.BuildOptions(out_dir=tmp_path, **options)) is None  # type: ignore[arg-type]


def test_a_fresh_engine_pulls_its_bases_only_when_it_builds(tmp_path: Path) -> None:
    registry, _ = published_by_an_earlier_run(CPU, tmp_path, **{contract.VERIFIED: "false"})
    fresh = FakeEngine(verify=verify_output(CPU), bases_present=False)
    result = build(fresh, CPU, tmp_path, push=True, registry=registry)
    assert (result.status, fresh.pulled) == ("built", [CPU.base_image])
    # The same build hash as an engine that had the base all along: the registry digest names it in both.
    assert result.image_id is not None
    with_base = FakeEngine(verify=verify_output(CPU))
    (tmp_path / "again").mkdir()
    again = build(with_base, CPU, tmp_path / "again")
    assert again.image_id is not None
    assert fresh.images[result.image_id].labels[contract.BUILD_HASH] == with_base.images[again.image_id].labels[contract.BUILD_HASH]


def test_a_base_tag_that_moves_before_the_pull_is_named_by_what_was_pulled(tmp_path: Path) -> None:
    """The registry named one digest; by the time the fresh engine pulled, the tag had moved: hash and label follow the pull."""
    registry, _ = published_by_an_earlier_run(CPU, tmp_path, **{contract.VERIFIED: "false"})
    registry.digest = lambda ref: "sha256:a" if ref == CPU.base_image else None  # type: ignore[method-assign]
    fresh = FakeEngine(verify=verify_output(CPU), bases_present=False)
    result = build(fresh, CPU, tmp_path, push=True, registry=registry)
    assert (result.status, fresh.pulled) == ("built", [CPU.base_image]) and result.image_id is not None
    labels = fresh.images[result.image_id].labels
    with_base = FakeEngine(verify=verify_output(CPU))  # an engine that had the pulled base (sha256:b) all along
    (tmp_path / "again").mkdir()
    again = build(with_base, CPU, tmp_path / "again")
    assert again.image_id is not None
    assert labels[contract.BUILD_HASH] == with_base.images[again.image_id].labels[contract.BUILD_HASH]
    assert labels[contract.BASE_DIGEST] == "sha256:b"
    assert "a base moved since the registry was asked" in (tmp_path / f"{CPU.name}.log").read_text()


def test_a_venv_group_names_its_stage_in_each_build_and_drops_the_stage_after_the_last() -> None:
    """Runtime and devel of one lock are one group with one stage id; another lock is another group."""
    devel = next(s for s in MATRIX.images if s.cuda and s.flavour == "devel")
    same = WheelSet(lock="torch==2.13.0\n", files=())
    groups = pipeline.venv_groups(
        [CUDA, devel, CPU], {CUDA.name: same, devel.name: same, CPU.name: WheelSet(lock="torch==2.13.0+cpu\n", files=())}
    )
    assert list(groups.values()) == [[CUDA, devel], [CPU]]
    ids = [pipeline.venv_id(key) for key in groups]
    assert len(set(ids)) == 2 and all(len(i) == 16 for i in ids)


def _run_members(engine: FakeEngine, specs: list[ImageSpec], tmp_path: Path, *, jobs: int, push: bool = False) -> list[BuildResult]:
    """The pipeline's scheduling of venv groups, without the wheel fetch before it."""
    wheel_sets: dict[str, WheelSet | WheelError] = {spec.name: WheelSet(lock="torch==2.13.0\n", files=()) for spec in specs}
    options = pipeline.BuildOptions(out_dir=tmp_path, push=push, jobs=jobs)
    members = pipeline._members(pipeline.venv_groups(specs, wheel_sets), interleave=jobs > 1)
    console = pipeline._Console(io.StringIO().write)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(pipeline._build_member, engine, m, wheel_sets, options, console, tmp_path, None, threading.Event())
            for m in members
        ]  # fmt: skip
        results = [future.result() for future in futures]
    engine.settled()  # as build_images does
    return results


def test_a_group_builds_with_its_stage_id_then_prunes_that_stage(tmp_path: Path) -> None:
    engine = FakeEngine(verify=verify_output(CPU))
    (result,) = _run_members(engine, [CPU], tmp_path, jobs=1)
    assert result.status == "built"
    stage = pipeline.venv_id(next(iter(pipeline.venv_groups([CPU], {CPU.name: WheelSet(lock="torch==2.13.0\n", files=())}))))
    assert f": venv-stage {stage}; \\" in engine.dockerfiles[0]
    assert engine.kept == ["venv-stage ", None]  # the image's build keeps the venv stage; the seal has none
    # The group's stage, then what else its builds left (another group's stage stays).
    assert engine.pruned == [f"venv-stage {stage};", "all since ['older'] but 'venv-stage '"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_group_sends_its_wheels_once_and_removes_them_when_both_flavours_are_done(tmp_path: Path, jobs: int) -> None:
    """The wheels cross to the engine once per venv group, as an image that both flavours' builds name in WHEELS;
    it holds the group's files and goes once the group's last image is done."""
    devel = next(s for s in MATRIX.images if s.cuda and s.flavour == "devel")
    (tmp_path / "wheelhouse").mkdir()
    files = ("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", "uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl")
    for name in files:
        (tmp_path / "wheelhouse" / name).write_bytes(name.encode())
    engine = Timeline(verify=verify_output(CUDA))
    engine.second_building.set()
    wheel_sets: dict[str, WheelSet | WheelError] = {spec.name: WheelSet(lock="torch==2.13.0\n", files=files) for spec in (CUDA, devel)}
    members = pipeline._members(pipeline.venv_groups([CUDA, devel], wheel_sets), interleave=jobs > 1)
    console, options = pipeline._Console(io.StringIO().write), pipeline.BuildOptions(out_dir=tmp_path)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(pipeline._build_member, engine, m, wheel_sets, options, console, tmp_path, None, threading.Event())
            for m in members
        ]  # fmt: skip
        assert [f.result().status for f in futures] == ["built", "built"]
    assert engine.wheels_removed == [] and len(engine.cleanups) == 1  # the group's cleanup, left to settled()
    engine.settled()
    ((ref, sent),) = engine.imported.items()
    assert ref.startswith(f"torch-images-wheels:{members[0].stage}-") and sorted(sent) == sorted(files)
    assert [arg for arg in engine.wheels_args if arg] == [ref, ref]  # both images' builds; the seals have none
    assert engine.wheels_removed == [ref]


def test_a_groups_cleanup_starts_when_its_last_build_ends_before_that_image_is_verified(tmp_path: Path) -> None:
    """The stage and the wheels image are not needed once the group's last build is over: their removal runs beside
    that image's verification, tags and push, not after them."""
    seen: list[str] = []

    class Watch(FakeEngine):
        def run(self, image: str, command: list[str], **kwargs: object) -> RunResult:
            seen.append(f"verify, cleanups pending: {len(self.cleanups)}")
            return super().run(image, command, **kwargs)  # type: ignore[arg-type]

    devel = next(s for s in MATRIX.images if s.cuda and s.flavour == "devel")
    engine = Watch(verify=verify_output(CUDA))
    results = _run_members(engine, [CUDA, devel], tmp_path, jobs=1)
    assert [r.status for r in results] == ["built", "built"]
    assert seen == ["verify, cleanups pending: 0", "verify, cleanups pending: 1"]
    assert len(engine.wheels_removed) == 1 and engine.pruned[0].startswith("venv-stage ")


def test_a_group_that_builds_nothing_leaves_the_engines_build_cache_alone(tmp_path: Path) -> None:
    """Its stage's records, if the engine has any, are another build's (another run's, or Docker's own)."""
    engine = FakeEngine(verify=verify_output(CPU))
    assert _run_members(engine, [CPU], tmp_path, jobs=1)[0].status == "built"
    pruned, builds = list(engine.pruned), engine.builds
    assert pruned and _run_members(engine, [CPU], tmp_path, jobs=1)[0].status == "unchanged"
    assert engine.pruned == pruned and engine.builds == builds and len(engine.imported) == 1


def test_only_wheels_images_older_than_the_limit_are_stale() -> None:
    class Left(FakeEngine):
        def tags_of(self, repository: str) -> dict[str, float]:
            return {f"{repository}:a-killed-run": time.time() - 7 * 3600, f"{repository}:a-run-now": time.time() - 60}

    engine = Left()
    assert pipeline.remove_stale_wheels(engine) == ["torch-images-wheels:a-killed-run"]  # type: ignore[arg-type]
    assert engine.removed == ["torch-images-wheels:a-killed-run"]


def test_an_image_built_on_its_own_removes_its_wheels_image(tmp_path: Path) -> None:
    engine = FakeEngine(verify=verify_output(CPU))
    assert build(engine, CPU, tmp_path).status == "built"
    assert list(engine.imported) == engine.wheels_removed and len(engine.wheels_removed) == 1


def test_wheels_the_engine_refuses_fail_the_image_with_the_engines_words(tmp_path: Path) -> None:
    class Full(FakeEngine):
        def import_image(self, rootfs: Iterable[bytes], ref: str) -> str:
            raise EngineError(f"cannot import {ref}: write /var/lib/docker/tmp: no space left on device")

    engine = Full(verify=verify_output(CPU))
    result = build(engine, CPU, tmp_path)
    assert result.status == "failed" and "no space left on device" in (result.error or "") and engine.builds == 0
    assert not engine.tags and not engine.pushed


class Timeline(FakeEngine):
    """Records when each image's build starts, reports its venv stage done, and ends. After its stage, the runtime
    image's build waits (up to 10 s) for the devel image's build to start, as it does when the two overlap; with
    fail_runtime it then fails, as a step of its own would."""

    def __init__(self, *, fail_runtime: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.events: list[str] = []
        self.second_building = threading.Event()
        self.lock = threading.Lock()
        self.fail_runtime = fail_runtime

    @staticmethod
    def flavour(data: bytes) -> str:
        return "devel" if b"-devel-" in data.split(b"# Stage 2")[-1].split(b"\n", 2)[1] else "runtime"

    def stage_built(self, on_done: Callable[[str], None], name: str) -> None:
        self.events.append("stage done")
        on_done(name)

    def build(self, context: bytes | Iterable[bytes], *, log: object, classic: bool = False, **kwargs: object) -> str:
        data = context if isinstance(context, bytes) else b"".join(context)
        flavour = self.flavour(data)
        if not classic:
            with self.lock:
                self.events.append(f"{flavour} build starts")
            if flavour == "devel":
                self.second_building.set()
        with self.lock:
            image = super().build(data, log=log, classic=classic, **kwargs)  # type: ignore[arg-type]
        if not classic and flavour == "runtime":
            self.events.append(f"runtime build waits: {self.second_building.wait(10)}")
            if self.fail_runtime:
                self.events.append("runtime build fails")
                raise BuildError("the command exited 3", step="step stage-1 3/11: RUN ...")
        if not classic:
            with self.lock:
                self.events.append(f"{flavour} build ends")
        return image


def test_with_two_jobs_the_second_flavour_builds_once_the_first_has_built_the_venv_stage(tmp_path: Path) -> None:
    """Not before (two builds in flight share the stage's step, and dockerd 20.10 kills it for both when the one that
    runs it fails), and not after the rest of the first image's build, its verification and push."""
    devel = next(s for s in MATRIX.images if s.cuda and s.flavour == "devel")
    engine = Timeline(verify=verify_output(CUDA))
    results = _run_members(engine, [CUDA, devel], tmp_path, jobs=2, push=True)
    assert [r.status for r in results] == ["built", "built"], [r.error for r in results]
    events = engine.events
    assert events.index("stage done") < events.index("devel build starts") < events.index("runtime build ends"), events
    assert "runtime build waits: True" in events, events
    assert len(engine.pruned) == 2  # once, after both


def test_the_second_flavour_builds_when_the_first_fails_after_its_venv_stage(tmp_path: Path) -> None:
    devel = next(s for s in MATRIX.images if s.cuda and s.flavour == "devel")
    engine = Timeline(verify=verify_output(CUDA), fail_runtime=True)
    results = _run_members(engine, [CUDA, devel], tmp_path, jobs=2, push=True)
    assert [r.status for r in results] == ["failed", "built"], [r.error for r in results]
    assert "exited 3" in (results[0].error or "")
    assert engine.events.index("devel build starts") < engine.events.index("runtime build fails"), engine.events


def test_with_one_job_the_flavours_run_one_after_the_other(tmp_path: Path) -> None:
    devel = next(s for s in MATRIX.images if s.cuda and s.flavour == "devel")
    engine = Timeline(verify=verify_output(CUDA))
    engine.second_building.set()  # nothing to wait for: one worker
    _run_members(engine, [CUDA, devel], tmp_path, jobs=1, push=True)
    assert engine.events == [
        "runtime build starts", "stage done", "runtime build waits: True", "runtime build ends",
        "devel build starts", "stage done", "devel build ends",
    ]  # fmt: skip


def test_with_more_jobs_every_groups_first_image_is_submitted_before_any_second() -> None:
    """A waiting image holds a worker: the CPU group's image must not queue behind the devel image that waits."""
    devel = next(s for s in MATRIX.images if s.cuda and s.flavour == "devel")
    wheel_sets: dict[str, WheelSet | WheelError] = {CUDA.name: WheelSet(lock="a\n", files=()), devel.name: WheelSet(lock="a\n", files=())}
    wheel_sets[CPU.name] = WheelSet(lock="b\n", files=())
    groups = pipeline.venv_groups([CUDA, devel, CPU], wheel_sets)
    assert [m.spec for m in pipeline._members(groups)] == [CUDA, devel, CPU]
    interleaved = pipeline._members(groups, interleave=True)
    assert [m.spec for m in interleaved] == [CUDA, CPU, devel]
    assert interleaved[2].after is interleaved[0].built and interleaved[0].after is None and interleaved[1].after is None


def test_an_image_that_is_reused_lets_the_next_of_its_group_build_at_once(tmp_path: Path) -> None:
    engine = FakeEngine(verify=verify_output(CPU))
    assert build(engine, CPU, tmp_path).status == "built"
    built = threading.Event()
    pipeline._build_one(
        engine, CPU, WheelSet(lock="torch==2.13.0\n", files=()), pipeline.BuildOptions(out_dir=tmp_path),
        pipeline._Console(io.StringIO().write), tmp_path, on_built=built.set,
    )  # fmt: skip
    assert built.is_set() and engine.builds == 2  # the first run's build and seal; nothing more
