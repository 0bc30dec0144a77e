"""Replicas of the wheel indexes torch-images resolves against, served on loopback for the tests.

`/whl/<variant>/<project>/` replicates the PyTorch index (download.pytorch.org/whl, which cannot be
reached from here) for torch, torchvision and torchaudio, generated from the compatibility table:
every release and variant the table records, with the index's file names (the local version
URL-encoded: `torch-1.8.1%2Bcu111-cp38-cp38-linux_x86_64.whl`), python and ABI tags, platform tags
(`files.index` in the table) and Requires-Dist (exact torch pins; the recorded pins of torch wheels).
The wheels are stand-ins: metadata plus a module that reports its version and CUDA, small and
deterministic. They exist to test resolution, not to run.

`/pypi/simple/<project>/` is PyPI itself, passed through: pages and metadata are fetched on the host
(and cached on disk), file links point back here, and every wheel's metadata is offered as PEP 658 does
on pypi.org (read with HTTP range requests where the upstream mirror has no metadata file).

Run: python -m torchimages.testing.replica --port 5003 --cache build/testenv/replica-cache
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import html
import io
import json
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..compat import Compat, TorchRelease, cuda_from_tag, load_compat, version_key
from ..family import torchaudio_home

PYPI = "https://pypi.org"
FILES = "https://files.pythonhosted.org"
PAGE_TTL_S = 24 * 3600
# torchaudio 2.11.0 on PyPI declares no Requires-Dist at all (its metadata, read 2026-11-28): it serves every later torch.
TORCHAUDIO_UNPINNED_FROM = (2, 11)


@dataclass(frozen=True)
class StandIn:
    """One replica wheel: its file name on the index, its metadata, and a tiny package that reports what it is."""

    project: str
    version: str
    python: str  # 3.8
    platform: str
    requires: tuple[str, ...]
    cuda: str | None

    @property
    def filename(self) -> str:
        """As the index spells it: the local version URL-encoded, the ABI with an m before Python 3.8."""
        py = "cp" + self.python.replace(".", "")
        abi = py + ("m" if version_key(self.python) < (3, 8) else "")
        return f"{self.project}-{urllib.parse.quote(self.version, safe='')}-{py}-{abi}-{self.platform}.whl"

    @property
    def tag(self) -> str:
        return "-".join(urllib.parse.unquote(self.filename)[:-4].split("-")[2:])

    @property
    def metadata(self) -> bytes:
        lines = ["Metadata-Version: 2.1", f"Name: {self.project}", f"Version: {self.version}"]
        lines += [f"Requires-Dist: {r}" for r in self.requires]
        return ("\n".join(lines) + "\n").encode()

    @functools.cached_property
    def content(self) -> bytes:
        """A deterministic wheel: fixed timestamps, sorted members, a RECORD pip accepts."""
        dist = f"{self.project}-{self.version}.dist-info"
        cuda = repr(self.cuda)
        files = {
            f"{self.project}/__init__.py": f"__version__ = {self.version!r}\nfrom . import version\n".encode(),
            f"{self.project}/version.py": f"__version__ = {self.version!r}\ncuda = {cuda}\n".encode(),
            f"{dist}/METADATA": self.metadata,
            f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: torch-images-replica\nRoot-Is-Purelib: false\nTag: {self.tag}\n".encode(),
        }
        record = [f"{name},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}" for name, data in files.items()]
        files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files):
                archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), files[name])
        return buffer.getvalue()


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def index_files(table: Compat) -> dict[tuple[str, str], list[StandIn]]:
    """(variant, project) -> every file the PyTorch index lists under /whl/<variant>/<project>/."""
    out: dict[tuple[str, str], dict[str, StandIn]] = {}

    def add(variant: str, wheel: StandIn) -> None:
        out.setdefault((variant, wheel.project), {})[wheel.filename] = wheel

    for release in table.torch.values():
        if release.pending:
            continue
        for variant in release.all_variants:
            platform = release.files.index_platform[variant]
            companions = release.files.companion_platform.get(variant, platform)
            cuda = None if variant == "cpu" else cuda_from_tag(variant)
            local = "" if variant in release.files.no_local else f"+{variant}"
            # Index wheels the table records no pins for declare typing-extensions only (as 1.10-1.13's do).
            requires = release.files.requires.get(variant, ("typing-extensions",))
            for python in release.python:
                add(variant, StandIn("torch", release.version + local, python, platform, requires, cuda))
            if release.torchvision:
                tv_requires = ("numpy", f"torch=={release.version}", "pillow!=8.3.*,>=5.3.0")
                for python in release.torchvision_python:
                    add(variant, StandIn("torchvision", release.torchvision + local, python, companions, tv_requires, cuda))
            # torchaudio before 0.10 is one CPU-only build at the index root, not in the variant folders.
            if release.torchaudio and release.files.torchaudio_local and torchaudio_home(table, release) is release:
                _torchaudio(release, variant, companions, cuda, add)
    return {key: sorted(files.values(), key=lambda w: w.filename) for key, files in out.items()}


def _torchaudio(release: TorchRelease, variant: str, platform: str, cuda: str | None, add: Any) -> None:
    assert release.torchaudio is not None
    pinned = version_key(release.version)[:2] < TORCHAUDIO_UNPINNED_FROM
    requires = (f"torch=={release.version}",) if pinned else ()
    for python in release.torchaudio_python:
        add(variant, StandIn("torchaudio", f"{release.torchaudio}+{variant}", python, platform, requires, cuda))


def page(files: list[Any], *, base: str) -> bytes:
    """A PEP 503 page with sha256 fragments and PEP 658/714 metadata attributes."""
    links = []
    for wheel in files:
        digest = hashlib.sha256(wheel.content).hexdigest()
        meta = hashlib.sha256(wheel.metadata).hexdigest()
        links.append(
            f'<a href="{base}{wheel.filename}#sha256={digest}" data-dist-info-metadata="sha256={meta}" '
            f'data-core-metadata="sha256={meta}">{html.escape(urllib.parse.unquote(wheel.filename))}</a><br/>'
        )
    return ("<!DOCTYPE html>\n<html><body>\n" + "\n".join(links) + "\n</body></html>\n").encode()


# ---- PyPI, passed through ------------------------------------------------------------------------


class PyPIPassThrough:
    """PyPI's simple pages and files, fetched on the host and cached; metadata offered for every wheel."""

    def __init__(self, cache: Path, *, upstream: str = PYPI, files: str = FILES) -> None:
        self.cache = cache
        self.upstream = upstream.rstrip("/")
        self.files = files.rstrip("/")

    def _get(self, url: str, headers: dict[str, str] | None = None) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": "torch-images-replica", **(headers or {})})
        for attempt in range(3):
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return bytes(response.read())
            except urllib.error.HTTPError:
                raise
            except (urllib.error.URLError, OSError):
                if attempt == 2:
                    raise
                time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def simple(self, project: str, *, base: str) -> bytes:
        """The project's page, links rewritten to come through here."""
        name = re.sub(r"[-_.]+", "-", project).lower()
        cached = self.cache / "pages" / f"{name}.json"
        if cached.exists() and time.time() - cached.stat().st_mtime < PAGE_TTL_S:
            data = json.loads(cached.read_text())
        else:
            raw = self._get(f"{self.upstream}/simple/{name}/", {"Accept": "application/vnd.pypi.simple.v1+json"})
            data = json.loads(raw)
            _store(cached, raw)
        links = []
        for item in data.get("files", []):
            path = item["url"].split("://", 1)[1].split("/", 1)[1]
            attrs = ""
            if item.get("requires-python"):
                attrs += f' data-requires-python="{html.escape(item["requires-python"])}"'
            if item.get("yanked"):
                attrs += ' data-yanked=""'
            if item["filename"].endswith(".whl"):
                attrs += ' data-dist-info-metadata="true" data-core-metadata="true"'
            digest = (item.get("hashes") or {}).get("sha256")
            fragment = f"#sha256={digest}" if digest else ""
            links.append(f'<a href="{base}{path}{fragment}"{attrs}>{html.escape(item["filename"])}</a><br/>')
        return ("<!DOCTYPE html>\n<html><body>\n" + "\n".join(links) + "\n</body></html>\n").encode()

    def metadata(self, path: str) -> bytes:
        """A wheel's METADATA: the upstream .metadata file, else read out of the wheel with range requests."""
        cached = self.cache / "metadata" / hashlib.sha256(path.encode()).hexdigest()
        if cached.exists():
            return cached.read_bytes()
        url = f"{self.files}/{path}"
        try:
            data = self._get(url + ".metadata")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            data = self._metadata_by_range(url)
        _store(cached, data)
        return data

    def _metadata_by_range(self, url: str) -> bytes:
        from ..compat_refresh import _metadata_by_range

        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "torch-images-replica"})
        with urllib.request.urlopen(request, timeout=60) as response:
            size = int(response.headers["Content-Length"])
        text = _metadata_by_range(lambda u, h: self._get(u, h), url, size)
        if not text:
            raise urllib.error.HTTPError(url, 404, "no METADATA in the wheel", None, None)  # type: ignore[arg-type]
        return text.encode()

    def open(self, path: str) -> Any:
        """A file's upstream response, opened before anything is answered (an upstream 404 stays a 404)."""
        request = urllib.request.Request(f"{self.files}/{path}", headers={"User-Agent": "torch-images-replica"})
        return urllib.request.urlopen(request, timeout=600)


def _store(path: Path, data: bytes) -> None:
    """Write a cache file whole or not at all, also when several requests fill the same entry at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}-", delete=False) as partial:
        partial.write(data)
    Path(partial.name).replace(path)


# ---- the server -----------------------------------------------------------------------------------


def table_digest(table_text: str) -> str:
    """Identifies what a running replica serves: a replica of another table is restarted."""
    return hashlib.sha256(table_text.encode() + Path(__file__).read_bytes()).hexdigest()[:16]


class Replica:
    """Everything the HTTP handler serves."""

    def __init__(self, table: Compat, digest: str, pypi: PyPIPassThrough) -> None:
        self.files = index_files(table)
        self.by_name = {(variant, w.filename): w for (variant, _), ws in self.files.items() for w in ws}
        self.digest = digest
        self.pypi = pypi


def handler(replica: Replica) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
            pass

        def do_GET(self) -> None:  # noqa: N802 - the base class names it so
            try:
                self._route(urllib.parse.urlsplit(self.path).path)
            except urllib.error.HTTPError as exc:
                self._send(exc.code, f"upstream: {exc.reason}\n".encode(), "text/plain")
            except (urllib.error.URLError, OSError) as exc:
                self._send(502, f"upstream unreachable: {exc}\n".encode(), "text/plain")
            except Exception as exc:  # noqa: BLE001 - an answer pip can report, not a dropped connection
                self._send(500, f"replica error: {exc!r}\n".encode(), "text/plain")

        def _route(self, path: str) -> None:
            parts = [p for p in path.split("/") if p]
            if not parts:
                self._send(200, json.dumps({"replica": replica.digest}).encode(), "application/json")
            elif parts[0] == "whl" and len(parts) == 3 and path.endswith("/"):
                files = replica.files.get((parts[1], parts[2].lower()))
                if files is None:
                    self._send(404, b"no such project\n", "text/plain")
                else:
                    self._send(200, page(files, base=f"/whl/{parts[1]}/"), "text/html")
            elif parts[0] == "whl" and len(parts) == 3:
                name = urllib.parse.quote(urllib.parse.unquote(parts[2]), safe="")
                metadata = name.endswith(".metadata")
                wheel = replica.by_name.get((parts[1], name.removesuffix(".metadata")))
                if wheel is None:
                    self._send(404, b"no such file\n", "text/plain")
                else:
                    self._send(200, wheel.metadata if metadata else wheel.content, "application/octet-stream")
            elif parts[:2] == ["pypi", "simple"] and len(parts) == 3:
                self._send(200, replica.pypi.simple(parts[2], base="/pypi/files/"), "text/html")
            elif parts[:2] == ["pypi", "files"] and len(parts) > 2:
                rest = "/".join(parts[2:])
                if rest.endswith(".metadata"):
                    self._send(200, replica.pypi.metadata(rest.removesuffix(".metadata")), "application/octet-stream")
                else:
                    with replica.pypi.open(rest) as upstream:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/octet-stream")
                        if upstream.headers.get("Content-Length"):
                            self.send_header("Content-Length", upstream.headers["Content-Length"])
                        self.end_headers()
                        while block := upstream.read(1 << 20):
                            self.wfile.write(block)
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def serve(port: int, cache: Path, *, table_text: str | None = None) -> ThreadingHTTPServer:
    """A server for the replica on 127.0.0.1:port (not started)."""
    from importlib import resources

    text = table_text if table_text is not None else resources.files("torchimages").joinpath("data/compat.yaml").read_text("utf-8")
    replica = Replica(load_compat(), table_digest(text), PyPIPassThrough(cache))
    return ThreadingHTTPServer(("127.0.0.1", port), handler(replica))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--clear-cache", action="store_true")
    args = parser.parse_args()
    if args.clear_cache:
        shutil.rmtree(args.cache, ignore_errors=True)
    serve(args.port, args.cache).serve_forever()


if __name__ == "__main__":
    main()
