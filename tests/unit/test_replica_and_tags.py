"""The PyTorch index replica names files as the real index does, the resolver accepts them by era, and pip resolves against it.

The offline tests here run the replica in-process with a small fake PyPI behind its pass-through, so real
pip resolves on loopback without touching the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import textwrap
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from packaging.tags import Tag
from packaging.utils import parse_wheel_filename

from torchimages.compat import load_compat
from torchimages.config import load_document
from torchimages.lock import Indexes, index_args, resolve, target_args
from torchimages.matrix import build_matrix
from torchimages.testing.replica import PyPIPassThrough, Replica, StandIn, handler, index_files, page
from torchimages.wheels import pip_run, platform_tags

TABLE = load_compat()
FILES = index_files(TABLE)


def index_file(variant: str, project: str, version: str, python: str) -> str:
    py = "cp" + python.replace(".", "")
    names = [w.filename for w in FILES[(variant, project)] if w.version == version and w.tag.startswith(py + "-")]
    assert len(names) == 1, names
    return names[0]


def accepted(filename: str, python: str, glibc: str, tags: list[str] | None = None) -> bool:
    """Would pip, offered these platform tags for this python (as the resolver offers them), take the file?"""
    py = "cp" + python.replace(".", "")
    abis = {py, py + "m", "abi3", "none"}
    offered = {Tag(i, a, p) for p in (tags if tags is not None else platform_tags(glibc)) for i in (py, "py3") for a in abis}
    _, _, _, file_tags = parse_wheel_filename(urllib.parse.unquote(filename))
    return bool(set(file_tags) & offered)


@pytest.mark.parametrize(
    ("torch", "variant", "python", "glibc", "torch_tag", "companion_tag"),
    [
        ("1.8.1", "cu111", "3.8", "2.31", "linux_x86_64", "linux_x86_64"),  # the CUDA 11.2 images
        ("1.10.1", "cu111", "3.8", "2.31", "linux_x86_64", "linux_x86_64"),
        ("2.5.1", "cu118", "3.10", "2.35", "linux_x86_64", "linux_x86_64"),
        ("2.6.0", "cu126", "3.12", "2.39", "manylinux_2_28_x86_64", "linux_x86_64"),  # only torch moved to manylinux_2_28
        ("2.7.1", "cu118", "3.10", "2.35", "manylinux_2_28_x86_64", "manylinux_2_28_x86_64"),
        ("2.11.0", "cu126", "3.12", "2.39", "manylinux_2_28_x86_64", "manylinux_2_28_x86_64"),
    ],
)
def test_index_file_names_and_platform_tags_by_era(
    torch: str, variant: str, python: str, glibc: str, torch_tag: str, companion_tag: str
) -> None:
    release = TABLE.torch[torch]
    torch_file = index_file(variant, "torch", f"{torch}+{variant}", python)
    vision_file = index_file(variant, "torchvision", f"{release.torchvision}+{variant}", python)
    py = "cp" + python.replace(".", "")
    assert torch_file == f"torch-{torch}%2B{variant}-{py}-{py}-{torch_tag}.whl"
    assert vision_file.endswith(f"-{companion_tag}.whl")
    assert accepted(torch_file, python, glibc) and accepted(vision_file, python, glibc)
    if torch_tag == "linux_x86_64":  # what broke the CUDA 11.2 images: manylinux tags alone never match these files
        manylinux_only = [t for t in platform_tags(glibc) if t.startswith("manylinux")]
        assert not accepted(torch_file, python, glibc, manylinux_only)


def test_manylinux_2_28_wheels_are_refused_below_glibc_2_28() -> None:
    assert not accepted(index_file("cu126", "torch", "2.11.0+cu126", "3.10"), "3.10", "2.27")


def test_the_replica_covers_every_release_variant_and_python_of_the_table() -> None:
    for release in TABLE.torch.values():
        for variant in release.all_variants:
            local = "" if variant in release.files.no_local else f"+{variant}"
            versions = {(w.version, w.tag.split("-")[0]) for w in FILES[(variant, "torch")]}
            for python in release.python:
                assert (release.version + local, "cp" + python.replace(".", "")) in versions, (release.version, variant, python)
    assert index_file("cu102", "torch", "1.8.0", "3.8") == "torch-1.8.0-cp38-cp38-linux_x86_64.whl"  # 1.8.0's cu102 has no +cu102
    assert not [w for w in FILES[("cu111", "torchaudio")] if w.version.startswith("0.8.")]  # pre-0.10 torchaudio is at the root
    assert index_file("cu130", "torchaudio", "2.11.0+cu130", "3.12").endswith("manylinux_2_28_x86_64.whl")


def test_stand_in_wheels_are_deterministic_and_install(tmp_path: Path) -> None:
    wheel = StandIn("torch", "1.8.1+cu111", "3.11", "linux_x86_64", ("typing-extensions",), "11.1")
    again = StandIn("torch", "1.8.1+cu111", "3.11", "linux_x86_64", ("typing-extensions",), "11.1")
    assert wheel.content == again.content
    with zipfile.ZipFile(io.BytesIO(wheel.content)) as archive:
        assert archive.read("torch-1.8.1+cu111.dist-info/METADATA") == wheel.metadata
    path = tmp_path / urllib.parse.unquote(wheel.filename).replace("linux_x86_64", "any").replace("cp311-cp311", "py3-none")
    path.write_bytes(wheel.content)
    target = tmp_path / "target"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target", str(target), str(path)],
        check=True, capture_output=True, timeout=120, env={"PIP_CONFIG_FILE": "/dev/null", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    shown = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
        cwd=target, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert shown.stdout.split() == ["1.8.1+cu111", "11.1"]


def test_index_pages_carry_file_and_metadata_hashes() -> None:
    files = FILES[("cu111", "torch")][:2]
    html = page(files, base="/whl/cu111/").decode()
    for wheel in files:
        assert f'href="/whl/cu111/{wheel.filename}#sha256={hashlib.sha256(wheel.content).hexdigest()}"' in html
        assert f'data-core-metadata="sha256={hashlib.sha256(wheel.metadata).hexdigest()}"' in html


# ---- pip against the replica, offline --------------------------------------------------------------


class FakePyPI:
    """Just enough of PyPI's simple JSON API and file host for the packages the 1.8.1 images need."""

    def __init__(self) -> None:
        wheels = [
            StandIn("torch", "1.8.1", "3.8", "manylinux1_x86_64", ("numpy", "typing-extensions"), "10.2"),
            StandIn("torchvision", "0.9.1", "3.8", "manylinux1_x86_64", ("numpy", "torch==1.8.1", "pillow>=4.1.1"), "10.2"),
            StandIn("torchaudio", "0.8.1", "3.8", "manylinux1_x86_64", ("torch==1.8.1",), None),
            StandIn("numpy", "1.24.4", "3.8", "manylinux_2_17_x86_64", (), None),
            StandIn("typing_extensions", "4.12.2", "3.8", "manylinux1_x86_64", (), None),
            StandIn("pillow", "10.4.0", "3.8", "manylinux_2_28_x86_64", (), None),
            StandIn("pip", "25.0.1", "3.8", "manylinux1_x86_64", (), None),
            StandIn("uv", "0.13.9", "3.8", "manylinux_2_17_x86_64", (), None),
        ]
        self.by_name = {urllib.parse.unquote(w.filename): w for w in wheels}
        self.bodies_served: list[str] = []  # a lock reads metadata only: this stays empty

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                host = f"http://127.0.0.1:{self.server.server_address[1]}"
                if match := re.fullmatch(r"/simple/([^/]+)/", self.path):
                    name = match[1].replace("-", "_")
                    files = [
                        {"filename": n, "url": f"{host}/files/{n}", "hashes": {"sha256": hashlib.sha256(w.content).hexdigest()}}
                        for n, w in fake.by_name.items()
                        if n.split("-")[0].lower() == name
                    ]
                    body = json.dumps({"files": files}).encode() if files else b""
                    self.send_response(200 if files else 404)
                else:
                    name = self.path.rsplit("/", 1)[-1]
                    wheel = fake.by_name.get(name.removesuffix(".metadata"))
                    if wheel is not None and not name.endswith(".metadata"):
                        fake.bodies_served.append(name)
                    body = b"" if wheel is None else wheel.metadata if name.endswith(".metadata") else wheel.content
                    self.send_response(404 if wheel is None else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture()
def fake_pypi() -> FakePyPI:
    return FakePyPI()


@pytest.fixture()
def replica(tmp_path: Path, fake_pypi: FakePyPI) -> Iterator[str]:
    """The replica on a free loopback port, its PyPI side passing through to a fake PyPI on another."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), fake_pypi.handler())
    base = f"http://127.0.0.1:{upstream.server_address[1]}"
    pypi = PyPIPassThrough(tmp_path / "cache", upstream=base, files=f"{base}/files")
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(Replica(TABLE, "test", pypi)))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (upstream, server)]
    for thread in threads:
        thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        for s in (server, upstream):
            s.shutdown()
            s.server_close()


def cuda_11_2_image(replica: str):
    text = 'target: {repository: example/pytorch}\nimages:\n  - {torch: "1.8.1", cuda: "11.2", python: "3.8", os: ubuntu20.04}\n'
    matrix = build_matrix(load_document("m.yaml", text=textwrap.dedent(text)), base_mirror="", pytorch_index=f"{replica}/whl")
    return matrix.images[0]


def test_pip_resolves_the_cuda_11_2_image_to_cu111_linux_wheels_from_metadata_alone(replica: str, fake_pypi: FakePyPI) -> None:
    spec = cuda_11_2_image(replica)
    lock = resolve(spec, Indexes(index_url=f"{replica}/pypi/simple", isolated=True), log=io.StringIO())
    files = {f.name: f for f in lock.files}
    assert lock.packages["torch"] == "1.8.1+cu111" and lock.packages["torchvision"] == "0.9.1+cu111"
    assert files["torch"].url == f"{replica}/whl/cu111/torch-1.8.1%2Bcu111-cp38-cp38-linux_x86_64.whl"
    assert files["torchaudio"].filename == "torchaudio-0.8.1-cp38-cp38-manylinux1_x86_64.whl"  # CPU-only, from PyPI
    assert set(lock.packages) == {"torch", "torchvision", "torchaudio", "numpy", "typing-extensions", "pillow", "pip"}  # no uv
    uv = files["uv"]
    assert lock.installer == f"{uv.sha256}  /tmp/wheels/uv-0.13.9-cp38-cp38-manylinux_2_17_x86_64.whl\n"  # the build's installer
    assert "pip===25.0.1 \\\n    --hash=sha256:" in lock.requirements and "uv" not in lock.requirements  # pip is shipped, uv not
    assert all(len(f.sha256) == 64 for f in lock.files)
    assert fake_pypi.bodies_served == []  # every wheel was judged by its metadata file alone


def test_with_both_builds_in_view_only_the_exact_pin_keeps_pypi_s(replica: str, tmp_path: Path) -> None:
    """PyPI's torch 1.8.1 and the index's 1.8.1+cu111 both visible: == picks the index build, === does not."""
    spec = cuda_11_2_image(replica)
    chosen = {}
    for requirement in ("torch==1.8.1", "torch===1.8.1"):
        report = tmp_path / f"{len(chosen)}.json"
        args = ["install", *index_args(spec, Indexes(index_url=f"{replica}/pypi/simple"))[0], "--dry-run", "--ignore-installed"]
        args += ["--target", str(tmp_path / "t"), "--report", str(report), *target_args(spec), requirement]
        pip_run(args, io.StringIO(), what="pip", isolated=True)
        chosen[requirement] = next(
            i["metadata"]["version"] for i in json.loads(report.read_text())["install"] if i["metadata"]["name"] == "torch"
        )
    assert chosen == {"torch==1.8.1": "1.8.1+cu111", "torch===1.8.1": "1.8.1"}
