"""Fetch the wheels an image's lock names into the shared wheelhouse (each file once), and serve them on loopback."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .config import mask_credentials
from .progress import describe

if TYPE_CHECKING:
    from .lock import Indexes, Lock
    from .model import ImageSpec

PIP_TIMEOUT = 3600


class WheelError(Exception):
    """Wheels for an image could not be fetched or resolved."""


@dataclass(frozen=True)
class WheelSet:
    """The exact files one image installs, as a hash-pinned requirements file."""

    lock: str
    files: tuple[str, ...]
    installer: str = ""  # what installs it (Lock.installer)


def platform_tags(glibc: str, arch: str = "x86_64") -> list[str]:
    """Every platform tag pip inside the image accepts, most specific first: manylinux up to its glibc, then plain linux.

    The PyTorch index publishes many wheels with the plain `linux_<arch>` tag (every torch 1.x and most 2.x
    CUDA builds); pip on a Linux system accepts it, so the resolution on the host must too.
    """
    major, minor = (int(x) for x in glibc.split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]
    return [*tags, f"linux_{arch}"]


def pip_version() -> str:
    try:
        return importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        raise WheelError(f"pip is not installed in {sys.executable}; run scripts/bootstrap") from None


@functools.cache
def pip_configuration(isolated: bool) -> str:
    """What pip's configuration says (files and PIP_* variables), as pip lists it; a lock depends on it."""
    if isolated:
        return ""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False)
    return hashlib.sha256(done.stdout.encode()).hexdigest()


def pip_environment(isolated: bool) -> dict[str, str] | None:
    """Isolated: no pip configuration file of any level (pip's --isolated still reads the site-wide one) and no PIP_* variables."""
    if not isolated:
        return None
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


class _Pips:
    """The pip processes running now: an interrupt stops them, and no more start until the run is over."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[str]] = set()

    def add(self, process: subprocess.Popen[str]) -> None:
        with self._lock:
            self._running.add(process)

    def discard(self, process: subprocess.Popen[str]) -> None:
        with self._lock:
            self._running.discard(process)

    def stop(self) -> None:
        self.stopped.set()
        with self._lock:
            for process in self._running:
                process.terminate()


PIPS = _Pips()


def pip_run(
    args: list[str],
    log: TextIO,
    *,
    what: str,
    isolated: bool = False,
    on_download: DownloadProgress | None = None,
    credentials: Sequence[Credential] = (),
) -> str:
    """Run this python's pip; its output goes to the log, its errors (and pip's reasons) into one WheelError.

    With on_download, pip reports each download's bytes (`--progress-bar raw`) and they are passed on as
    (file name, bytes done, bytes in all); those lines stay out of the log.
    """
    if PIPS.stopped.is_set():
        raise WheelError(f"{what}: interrupted before pip started")
    command = [sys.executable, "-m", "pip", *args, *(["--progress-bar", "raw"] if on_download else [])]
    log.write(mask_credentials("$ " + " ".join(command)) + "\n")
    log.flush()
    timed_out = threading.Event()
    output: list[str] = []
    current = ""
    with (
        _netrc(credentials) as netrc,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**(pip_environment(isolated) or os.environ), **({"NETRC": netrc} if netrc else {})},
        ) as process,
    ):

        def expire() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(PIP_TIMEOUT, expire)
        timer.start()
        PIPS.add(process)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if on_download and (progress := _PROGRESS.fullmatch(line.strip())):
                    on_download(current, int(progress["done"]), int(progress["total"]))
                    continue
                if downloading := _DOWNLOADING.match(line.strip()):
                    current = downloading["name"].rsplit("/", 1)[-1]
                output.append(line)
                log.write(mask_credentials(line))
            code = process.wait()
        except BaseException:
            process.kill()  # nothing of ours reads its output any more: pip must not run on unseen
            raise
        finally:
            PIPS.discard(process)
            timer.cancel()
            log.flush()
    text = "".join(output)
    if code != 0 and PIPS.stopped.is_set():
        raise WheelError(f"{what}: pip was stopped by an interrupt")
    if code != 0 and timed_out.is_set():
        raise WheelError(f"{what}: pip ran past {PIP_TIMEOUT} s")
    if code != 0:
        raise WheelError(mask_credentials(f"{what}: " + (pip_reason(text) or f"pip exited {code}")))
    return text


@dataclass(frozen=True)
class Credential:
    """A login for one index host, taken out of its URL."""

    host: str
    login: str
    password: str


def split_credentials(url: str) -> tuple[str, Credential | None]:
    """https://user:pw@host/simple -> (https://host/simple, the login for host)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.username and not parts.password:
        return url, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    plain = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    login = urllib.parse.unquote(parts.username or "")
    return plain, Credential(host=parts.hostname or "", login=login, password=urllib.parse.unquote(parts.password or ""))


@contextmanager
def _netrc(credentials: Sequence[Credential]) -> Iterator[str | None]:
    """A netrc file only this user can read, for as long as pip runs (pip reads the one $NETRC names)."""
    if not credentials:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="torch-images-netrc-") as folder:  # created 0700
        path = Path(folder) / "netrc"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.writelines(f"machine {c.host} login {c.login} password {c.password}\n" for c in credentials)
        yield str(path)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")
_PROGRESS = re.compile(r"Progress (?P<done>\d+) of (?P<total>\d+)")
_DOWNLOADING = re.compile(r"Downloading (?P<name>\S+)")
DownloadProgress = Callable[[str, int, int], None]


def pip_reason(output: str) -> str:
    """pip's own explanation of a failure: its ERROR lines and the conflict it names, on one line."""
    lines = output.splitlines()
    reasons = [line.removeprefix("ERROR: ").strip() for line in lines if line.startswith("ERROR") and "dealing-with" not in line]
    if "Exception:" in reasons:  # pip crashed (a full disk, say): its traceback's last line says why
        last = [line for line in lines if _EXCEPTION_LINE.match(line)]
        reasons = [last[-1] if r == "Exception:" and last else r for r in reasons]
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        causes = [line.strip() for line in lines[start:] if line.startswith("    ")][:4]
        reasons.append("the conflict is caused by: " + "; ".join(causes))
    return " ".join(reasons)


def fetch_wheels(
    specs: Sequence[ImageSpec],
    wheelhouse: Path,
    locks: Path,
    indexes: Indexes,
    *,
    log: TextIO,
    say: Any = print,
    on_download: DownloadProgress | None = None,
) -> dict[str, WheelSet | WheelError]:
    """Lock each image (reusing current locks), then fetch what the locks name into the wheelhouse; errors per image."""
    from .lock import lock_images

    wheelhouse.mkdir(parents=True, exist_ok=True)
    locked = lock_images(specs, indexes, locks, log=log, refresh=False, say=say)
    results: dict[str, WheelSet | WheelError] = {}
    fetched: dict[str, WheelSet | WheelError] = {}  # by the lock's own content: images with the same files fetch once
    for spec in specs:
        lock = locked[spec.name]
        if isinstance(lock, WheelError):
            results[spec.name] = lock
            continue
        if lock.requirements not in fetched:
            try:
                fetched[lock.requirements] = fetch_locked(spec, lock, indexes, wheelhouse, log=log, say=say, on_download=on_download)
            except WheelError as exc:
                fetched[lock.requirements] = exc
        results[spec.name] = fetched[lock.requirements]
    return results


def fetch_locked(
    spec: ImageSpec,
    lock: Lock,
    indexes: Indexes,
    wheelhouse: Path,
    *,
    log: TextIO,
    say: Any = print,
    on_download: DownloadProgress | None = None,
) -> WheelSet:
    """Download the lock's files that the wheelhouse lacks (pip checks every hash), then check them all."""
    from .lock import index_args, target_args

    hashes = _HashCache(wheelhouse)
    missing = [f for f in lock.files if hashes.get(f.filename) != f.sha256]
    if missing:
        say(f"wheels: fetching {len(missing)} of {len(lock.files)} files for {spec.name}")
        with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="torch-images-fetch-") as requirements:
            requirements.write("".join(f.pinned for f in missing))
            requirements.flush()
            options, credentials = index_args(spec, indexes)
            args = ["download", *options, "--no-deps", "--require-hashes"]
            args += [] if on_download else ["--progress-bar", "off"]
            args += ["--dest", str(wheelhouse), *target_args(spec), "-r", requirements.name]
            started = time.monotonic()
            pip_run(
                args, log, what=f"fetching wheels for {spec.name}", isolated=indexes.isolated, on_download=on_download,
                credentials=credentials,
            )  # fmt: skip
            size = sum((wheelhouse / f.filename).stat().st_size for f in missing if (wheelhouse / f.filename).exists())
            say(f"wheels: fetched {len(missing)} files for {spec.name}: {describe(size, 0, time.monotonic() - started)}")
    for f in lock.files:
        if hashes.get(f.filename) != f.sha256:
            raise WheelError(f"fetching wheels for {spec.name}: {f.filename} is not in the wheelhouse with sha256 {f.sha256}")
    hashes.save()
    return WheelSet(lock=lock.requirements, files=tuple(f.filename for f in lock.files), installer=lock.installer)


class _HashCache:
    """sha256 of wheelhouse files, remembered by size and mtime so a warm run does not hash gigabytes again."""

    def __init__(self, wheelhouse: Path) -> None:
        self.wheelhouse = wheelhouse
        self.path = wheelhouse / ".sha256.json"
        try:
            self.known: dict[str, list[Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}

    def get(self, filename: str) -> str | None:
        path = self.wheelhouse / filename
        try:
            stat = path.stat()
        except OSError:
            return None
        entry = self.known.get(filename)
        if entry is not None and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
            return str(entry[2])
        digest = sha256_file(path)
        self.known[filename] = [stat.st_size, stat.st_mtime_ns, digest]
        return digest

    def save(self) -> None:
        with tempfile.NamedTemporaryFile("w", dir=self.wheelhouse, prefix=".sha256-", delete=False) as partial:
            partial.write(json.dumps(self.known, sort_keys=True))
        Path(partial.name).replace(self.path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
