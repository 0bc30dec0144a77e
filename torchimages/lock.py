"""Resolve each image's exact wheel set with pip, from index metadata, and keep it as a hash-pinned lock.

pip resolves as it would inside the image (its python, its glibc's platform tags, binary wheels only),
with `install --dry-run --report`: where an index offers each wheel's metadata file (PEP 658, as PyPI
and the PyTorch index do), nothing but metadata is fetched. The report names every file with its URL
and sha256; that is the lock. A lock is reused until what it was resolved from changes (the
requirements, python, platform tags, indexes, pip itself); `invoke lock` resolves afresh.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from .config import mask_credentials
from .model import PIP, UV, ImageSpec, exact_requirement
from .wheels import Credential, WheelError, pip_configuration, pip_run, pip_version, platform_tags, sha256_file, split_credentials


@dataclass(frozen=True)
class Indexes:
    """Where pip looks, besides each image's own PyTorch index."""

    index_url: str | None = None  # None: pip's configuration (PyPI unless configured otherwise)
    isolated: bool = False  # ignore pip's configuration files and PIP_* variables (the test environment's replica)


@dataclass(frozen=True)
class LockedFile:
    """One wheel an image installs, exactly."""

    name: str
    version: str
    url: str  # where the resolution found it (credentials masked)
    sha256: str

    @property
    def filename(self) -> str:
        return urllib.parse.unquote(self.url.rsplit("/", 1)[-1].split("#", 1)[0])

    @property
    def requirement(self) -> str:
        """Exactly this version.

        A find-links folder (the wheelhouse) gives pip no hashes to choose by, and pip prefers the
        higher version, so with both builds there, `torch==2.11.0 --hash=...` picks +cu126 and fails.
        """
        return exact_requirement(self.name, self.version)

    @property
    def pinned(self) -> str:
        """The hash-pinned requirements line."""
        return f"{self.requirement} \\\n    --hash=sha256:{self.sha256}\n"


@dataclass(frozen=True)
class Lock:
    """An image's resolved wheel set, and the hash of what it was resolved from."""

    image: str
    inputs: str
    files: tuple[LockedFile, ...]

    @property
    def shipped(self) -> tuple[LockedFile, ...]:
        """What the image's venv gets: every file but the build's installer (uv), which stays in the build."""
        return tuple(f for f in self.files if f.name != UV)

    @property
    def requirements(self) -> str:
        """A hash-pinned requirements file: what the build installs with --require-hashes --no-deps."""
        return "".join(f.pinned for f in self.shipped)

    @property
    def installer(self) -> str:
        """The context file the build's venv stage installs with (see installer_file).

        uv: its wheel and sha256 as a `sha256sum --check` file (the stage checks it, then unpacks the binary, so no
        pip of the base's, which may predate the wheel's manylinux tag, is involved); pip: the locked pip, hash-pinned.
        """
        uv = [f for f in self.files if f.name == UV]
        if uv:
            return f"{uv[0].sha256}  /tmp/wheels/{uv[0].filename}\n"  # where the venv stage has the wheels
        return "".join(f.pinned for f in self.files if f.name == PIP)

    @property
    def packages(self) -> dict[str, str]:
        return {f.name: f.version for f in self.shipped}


def target_args(spec: ImageSpec) -> list[str]:
    """pip's view of the image: its python, the platforms its glibc runs, wheels only."""
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", spec.python]
    for tag in platform_tags(spec.glibc):
        args += ["--platform", tag]
    return args


def index_args(spec: ImageSpec, indexes: Indexes) -> tuple[list[str], list[Credential]]:
    """pip's index options (PyPI or the configured/replica index, plus the image's PyTorch index folders) and the
    credentials taken out of their URLs.

    Options on the command line add to the user's pip.conf (`extra-index-url` there stays in use); the
    credentials go to pip through a private netrc file instead, as any local user can read a command line.
    """
    urls = [("--index-url", indexes.index_url)] if indexes.index_url else []
    urls += [("--extra-index-url", url) for url in dict.fromkeys(spec.wheel_indexes.values())]  # torchaudio: maybe another folder
    args, credentials = ["--disable-pip-version-check"], []
    for option, url in urls:
        plain, credential = split_credentials(url)
        args += [option, plain]
        credentials += [credential] if credential else []
    return args, credentials


def lock_inputs(spec: ImageSpec, indexes: Indexes) -> str:
    """Everything a resolution depends on that this program controls, hashed."""
    data = {
        "requirements": spec.requirements,
        "target": target_args(spec),
        "indexes": index_args(spec, indexes)[0],  # without credentials: a new password keeps the lock
        "isolated": indexes.isolated,
        "pip": pip_version(),
        "pip configuration": pip_configuration(indexes.isolated),  # pip.conf and PIP_*: other indexes, find-links
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def resolve(spec: ImageSpec, indexes: Indexes, *, log: TextIO) -> Lock:
    """Resolve the image's requirements with pip, reading metadata only where the index offers it."""
    with tempfile.TemporaryDirectory(prefix="torch-images-lock-") as tmp:
        report = Path(tmp) / "report.json"
        args = [
            "install", *index_args(spec, indexes)[0], "--dry-run", "--ignore-installed", "--quiet",
            "--target", str(Path(tmp) / "target"), "--report", str(report), *target_args(spec),
        ]  # fmt: skip
        credentials = index_args(spec, indexes)[1]
        pip_run([*args, *spec.requirements], log, what="pip", isolated=indexes.isolated, credentials=credentials)
        data = json.loads(report.read_text())
    files = tuple(sorted((_locked(spec, item) for item in data.get("install", [])), key=lambda f: f.name.lower()))
    lock = Lock(image=spec.name, inputs=lock_inputs(spec, indexes), files=files)
    problems = family_problems(spec, lock)
    if problems:
        raise WheelError("; ".join(problems))
    return lock


def _locked(spec: ImageSpec, item: dict[str, Any]) -> LockedFile:
    url = item["download_info"]["url"]
    sha256 = (item["download_info"].get("archive_info") or {}).get("hashes", {}).get("sha256")
    parsed = urllib.parse.urlparse(url)
    if not sha256 and parsed.scheme == "file":  # a find-links folder: pip does not hash what it only read metadata of
        sha256 = sha256_file(Path(urllib.request.url2pathname(parsed.path)))
    if not sha256:
        raise WheelError(f"the index gives no sha256 for {mask_credentials(url)}")
    name = str(item["metadata"]["name"]).lower().replace("_", "-")
    found = LockedFile(name=name, version=str(item["metadata"]["version"]), url=mask_credentials(url), sha256=sha256)
    if Path(found.filename).name != found.filename or not found.filename.endswith(".whl"):
        raise WheelError(f"not a wheel file name: {found.filename!r} ({mask_credentials(url)})")
    return found


def family_problems(spec: ImageSpec, lock: Lock) -> list[str]:
    """torch, torchvision and torchaudio must be exactly the image's own builds, from its own index."""
    problems = []
    locked = {f.name: f for f in lock.files}
    for build in spec.family:
        found = locked.get(build.name)
        if found is None:
            problems.append(f"{build.name} is missing from the resolution")
        elif found.version != build.version:
            problems.append(f"{build.name} resolved to {found.version}, the image needs {build.version} ({build.variant})")
        elif not build.on_pypi and build.name in spec.wheel_indexes and _folder(found.url) != build.variant:
            # The index may link its files on another host (a CDN); the variant folder is what must match.
            problems.append(f"{build.name} {found.version} came from {found.url}, not from a {build.variant} folder of the PyTorch index")
    return problems


def _folder(url: str) -> str:
    """The folder a file URL names it in: https://host/whl/cu126/torch-....whl -> cu126."""
    parts = urllib.parse.urlparse(url).path.rstrip("/").split("/")
    return parts[-2] if len(parts) > 1 else ""


def lock_path(locks: Path, spec: ImageSpec) -> Path:
    return locks / f"{spec.name}.json"


def write_lock(locks: Path, spec: ImageSpec, lock: Lock) -> Path:
    path = lock_path(locks, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"image": lock.image, "inputs": lock.inputs, "files": [asdict(f) for f in lock.files]}, indent=1))
    partial.replace(path)
    return path


def read_lock(locks: Path, spec: ImageSpec) -> Lock | None:
    """The stored lock of an image, or None when there is none or it cannot be read."""
    try:
        data = json.loads(lock_path(locks, spec).read_text())
        return Lock(image=data["image"], inputs=data["inputs"], files=tuple(LockedFile(**f) for f in data["files"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def current_lock(locks: Path, spec: ImageSpec, inputs: str) -> Lock | None:
    """The stored lock, if it was resolved from exactly these inputs (see lock_inputs)."""
    lock = read_lock(locks, spec)
    return lock if lock is not None and lock.inputs == inputs else None


def lock_images(
    specs: Sequence[ImageSpec], indexes: Indexes, locks: Path, *, log: TextIO, refresh: bool, say: Any = print, jobs: int = 0
) -> dict[str, Lock | WheelError]:
    """A lock for every image (resolving each distinct set of inputs once, `jobs` at a time); errors per image."""
    results: dict[str, Lock | WheelError] = {}
    inputs = {spec.name: lock_inputs(spec, indexes) for spec in specs}  # images with the same inputs resolve alike
    todo: dict[str, ImageSpec] = {}
    for spec in specs:
        existing = None if refresh else current_lock(locks, spec, inputs[spec.name])
        if existing is not None:
            results[spec.name] = existing
        else:
            todo.setdefault(inputs[spec.name], spec)
    logs: dict[str, io.StringIO] = {key: io.StringIO() for key in todo}

    def one(key: str) -> Lock | WheelError:
        say(f"lock: resolving {todo[key].name}")
        try:
            return resolve(todo[key], indexes, log=logs[key])
        except WheelError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one image's surprise must not sink the other resolutions
            return WheelError(f"unexpected error: {exc!r}")

    with ThreadPoolExecutor(max_workers=jobs or min(4, os.cpu_count() or 1)) as pool:
        resolved = dict(zip(todo, pool.map(one, todo), strict=True))
    for key in todo:  # one block per resolution, in order, not interleaved
        log.write(logs[key].getvalue())
    for spec in specs:
        if spec.name in results:
            continue
        outcome = resolved[inputs[spec.name]]
        if isinstance(outcome, Lock):
            outcome = Lock(image=spec.name, inputs=outcome.inputs, files=outcome.files)
            write_lock(locks, spec, outcome)
        results[spec.name] = outcome if isinstance(outcome, Lock) else WheelError(f"resolving wheels for {spec.name}: {outcome}")
    return results
