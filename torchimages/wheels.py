"""Fetch every wheel on the host once per run, lock each image's set by hash, serve them on loopback."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .model import ImageSpec

PIP_TIMEOUT = 3600


class WheelError(Exception):
    """Wheels for an image could not be fetched or resolved."""


@dataclass(frozen=True)
class WheelSet:
    """The exact files one image installs, as a hash-pinned requirements file."""

    lock: str
    files: tuple[str, ...]


def platform_tags(glibc: str, arch: str = "x86_64") -> list[str]:
    """Every manylinux tag a system with this glibc can run, newest first."""
    major, minor = (int(x) for x in glibc.split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]
    return tags


def _target_args(spec: ImageSpec) -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", spec.python]
    for tag in platform_tags(spec.glibc):
        args += ["--platform", tag]
    return args


def group_key(spec: ImageSpec) -> tuple[Any, ...]:
    """Images with the same key install exactly the same wheels."""
    return (spec.python, spec.glibc, spec.wheel_index, spec.requirements)


def fetch_wheels(specs: Iterable[ImageSpec], wheelhouse: Path, *, log: TextIO, say: Any = print) -> dict[str, WheelSet | WheelError]:
    """For each image, fetch what it needs into wheelhouse (each file once) and lock it; errors per image."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[Any, ...], list[ImageSpec]] = {}
    for spec in specs:
        groups.setdefault(group_key(spec), []).append(spec)
    results: dict[str, WheelSet | WheelError] = {}
    for members in groups.values():
        first = members[0]
        names = ", ".join(s.name for s in members)
        say(f"wheels: fetching for {names}")
        try:
            _download(first, wheelhouse, log)
            wheel_set = _lock(first, wheelhouse, log)
        except WheelError as exc:
            for spec in members:
                results[spec.name] = exc
            continue
        say(f"wheels: {len(wheel_set.files)} files locked for {names}")
        for spec in members:
            results[spec.name] = wheel_set
    return results


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def mask_credentials(text: str) -> str:
    """https://user:token@host/... -> https://***@host/...: index URLs may carry secrets; logs must not."""
    return _USERINFO.sub("***@", text)


def _pip(args: list[str], log: TextIO, *, what: str) -> str:
    command = [sys.executable, "-m", "pip", *args]
    log.write(mask_credentials("$ " + " ".join(command)) + "\n")
    log.flush()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise WheelError(f"{what}: pip ran past {PIP_TIMEOUT} s") from None
    log.write(mask_credentials(done.stdout + done.stderr))
    log.flush()
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise WheelError(mask_credentials(f"{what}: " + (" ".join(errors[-2:]) or f"pip exited {done.returncode}")))
    return done.stdout


def _download(spec: ImageSpec, wheelhouse: Path, log: TextIO) -> None:
    args = ["download", "--dest", str(wheelhouse), "--progress-bar", "off", *_target_args(spec)]
    if spec.wheel_index:
        args += ["--extra-index-url", spec.wheel_index]
    _pip([*args, *spec.requirements], log, what=f"fetching wheels for {spec.name}")


def _lock(spec: ImageSpec, wheelhouse: Path, log: TextIO) -> WheelSet:
    """Resolve offline against the wheelhouse alone: the same answer the build will get."""
    with tempfile.TemporaryDirectory(prefix="torch-images-lock-") as tmp:
        report = Path(tmp) / "report.json"
        args = [
            "--isolated", "install", "--dry-run", "--ignore-installed", "--no-index", "--find-links", str(wheelhouse),
            "--target", str(Path(tmp) / "target"), "--report", str(report), "--quiet", *_target_args(spec),
        ]  # fmt: skip
        _pip([*args, *spec.requirements], log, what=f"resolving wheels for {spec.name}")
        data = json.loads(report.read_text())
    lines, files = [], []
    for item in sorted(data.get("install", []), key=lambda i: i["metadata"]["name"].lower()):
        url = item["download_info"]["url"]
        parsed = urllib.parse.urlparse(url)
        path = Path(urllib.request.url2pathname(parsed.path))
        if parsed.scheme != "file" or path.parent.resolve() != wheelhouse.resolve():
            raise WheelError(f"resolving wheels for {spec.name}: {path.name} did not come from the wheelhouse ({mask_credentials(url)})")
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        # pip hashed the file while resolving; hash it here only if its report does not say.
        sha256 = (item["download_info"].get("archive_info") or {}).get("hashes", {}).get("sha256") or sha256_file(path)
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{sha256}")
        files.append(path.name)
    return WheelSet(lock="\n".join(lines) + "\n", files=tuple(files))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        pass


class WheelServer:
    """Serves the wheelhouse on 127.0.0.1:port while builds run (they use the host network)."""

    def __init__(self, wheelhouse: Path, port: int) -> None:
        self.wheelhouse = wheelhouse
        self.port = port
        self._server: http.server.ThreadingHTTPServer | None = None

    def __enter__(self) -> WheelServer:
        handler = functools.partial(_QuietHandler, directory=str(self.wheelhouse))
        try:
            self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        except OSError as exc:
            raise WheelError(
                f"cannot serve wheels on 127.0.0.1:{self.port} ({exc.strerror}); "
                "another build may be running, or set wheels.port in the matrix file"
            ) from None
        threading.Thread(target=self._server.serve_forever, name="wheel-server", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
