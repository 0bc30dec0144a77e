"""The compatibility table is consistent, and compat.refresh reads PyPI the way PyPI answers."""

from __future__ import annotations

import io
import json
import urllib.error
import zipfile

import pytest

from torchimages import compat_refresh
from torchimages.compat import base_tags, load_compat, version_key, wheel_variant_for


def test_table_is_consistent() -> None:
    table = load_compat()
    assert "1.8.0" in table.torch and "2.14.1" in table.torch
    for version, row in table.torch.items():
        assert row.python == tuple(sorted(row.python, key=version_key)), version
        if row.pypi_default is not None:
            assert row.pypi_default in row.variants, version
        for variant, cudnn in row.variants.items():
            assert variant.startswith("cu") and cudnn in ("7", "8", "9"), (version, variant)
    for cuda, row in table.cuda.items():
        assert row.full.startswith(cuda + "."), cuda
        assert row.cudnn_tag == ("cudnn" if version_key(cuda) >= (12, 4) else "cudnn9" if cuda == "12.3" else "cudnn8")


def test_base_tags_follow_nvidia_naming_over_time() -> None:
    table = load_compat()
    assert base_tags(table.cuda["11.8"])["cudnn-runtime"][-1] == "11.8.0-cudnn8-runtime-ubuntu22.04"
    assert base_tags(table.cuda["12.3"])["cudnn-devel"][0] == "12.3.2-cudnn9-devel-ubuntu20.04"
    assert base_tags(table.cuda["12.9"])["cudnn-runtime"][-1] == "12.9.2-cudnn-runtime-ubuntu24.04"
    assert base_tags(table.cuda["13.0"])["base"] == ["13.0.3-base-ubuntu22.04", "13.0.3-base-ubuntu24.04"]


def test_the_cuda_11_2_rule() -> None:
    table = load_compat()
    assert wheel_variant_for(table.torch["1.10.1"], "11.2")[0] == "cu111"
    assert wheel_variant_for(table.torch["2.5.1"], "12.4")[0] == "cu124"
    assert wheel_variant_for(table.torch["2.5.1"], "12.6")[0] == "cu124"  # same major, older minor
    assert wheel_variant_for(table.torch["2.5.1"], "11.2")[0] is None  # no 11.x wheel at or below 11.2


def _wheel_bytes(metadata: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pkg/__init__.py", "x" * 5000)
        archive.writestr("pkg-1.dist-info/METADATA", metadata)
    return buffer.getvalue()


class FakePyPI:
    """Answers like PyPI: simple JSON pages, .metadata files for some wheels, byte ranges for others."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.pages: dict[str, dict] = {}

    def add(self, project: str, version: str, requires: list[str], *, metadata_file: bool = True) -> None:
        name = f"{project}-{version}-cp312-cp312-manylinux_2_28_x86_64.whl"
        url = f"https://files.example/{name}"
        text = "Metadata-Version: 2.1\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        wheel = _wheel_bytes(text)
        self.files[url] = wheel
        if metadata_file:
            self.files[url + ".metadata"] = text.encode()
        page = self.pages.setdefault(project, {"versions": [], "files": []})
        page["versions"].append(version)
        page["files"].append({"filename": name, "url": url, "size": len(wheel)})

    def __call__(self, url: str, headers: dict[str, str]) -> bytes:
        if url.startswith("https://pypi.org/simple/"):
            return json.dumps(self.pages[url.rstrip("/").rsplit("/", 1)[1]]).encode()
        if url not in self.files:
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)  # type: ignore[arg-type]
        data = self.files[url]
        if "Range" in headers:
            start, end = (int(x) for x in headers["Range"].removeprefix("bytes=").split("-"))
            return data[start : end + 1]
        return data


@pytest.fixture()
def pypi() -> FakePyPI:
    fake = FakePyPI()
    fake.add("torch", "2.5.1", ["nvidia-cuda-runtime-cu12==12.4.127", "nvidia-cudnn-cu12==9.1.0.70"])
    fake.add("torch", "2.99.0", ['cuda-toolkit[cudart]==13.0.2; platform_system == "Linux"', "nvidia-cudnn-cu13==9.30.0.1"],
             metadata_file=False)  # fmt: skip
    fake.add("torch", "2.99.1rc1", [])
    fake.add("torch", "3.0.0", ["nvidia-cuda-runtime==13.2.1"])  # no torchvision for it yet
    fake.add("torchvision", "0.20.1", ["torch==2.5.1"])
    fake.add("torchvision", "0.99.0", ["torch (>=2.99.0)"], metadata_file=False)
    fake.add("torchaudio", "2.5.1", ["torch==2.5.1"])
    return fake


def test_refresh_adds_new_releases_from_pypi_and_reports_each_change(pypi: FakePyPI) -> None:
    row = {"torchvision": "0.20.1", "torchaudio": "2.5.1", "python": ["3.9", "3.10"], "variants": {"cu124": {"cudnn": "9"}}}
    current = {"torch": {"2.5.1": {**row, "cpu": True, "pypi_default": "cu124", "source": ["s"]}}}
    new, notes = compat_refresh.refresh(current, pypi, today="2026-01-01")
    row = new["torch"]["2.99.0"]
    assert (row["torchvision"], row["torchaudio"], row["pypi_default"], row["python"]) == ("0.99.0", None, "cu130", ["3.12"])
    assert row["variants"] == {"cu130": {"cudnn": "9", "cudnn_version": "9.30.0"}}
    assert "2.99.1rc1" not in new["torch"]  # pre-releases are not releases
    assert new["torch"]["3.0.0"]["pending"] == "no torchvision release for torch 3.0.0 is on PyPI yet"
    assert "torch 2.5.1: python ['3.9', '3.10'] -> ['3.12']" in notes
    assert "torch 2.5.1: cu124 wheels pin cuDNN 9.1.0" in notes
    assert any(n.startswith("download.pytorch.org: unreachable") for n in notes)
    assert current["torch"]["2.5.1"]["python"] == ["3.9", "3.10"]  # the input is not modified
    assert list(new["torch"]) == ["3.0.0", "2.99.0", "2.5.1"]


def test_refresh_records_the_platform_tags_the_pytorch_index_uses(pypi: FakePyPI) -> None:
    listing = (
        '<a href="/whl/cu118/torch-2.5.1%2Bcu118-cp310-cp310-linux_x86_64.whl#sha256=00">x</a>\n'
        '<a href="/whl/cu126/torch-2.5.1%2Bcu126-cp313-cp313t-manylinux_2_28_x86_64.whl#sha256=00">x</a>\n'
        '<a href="/whl/cu118/torch-2.5.1%2Bcu118-cp310-cp310-win_amd64.whl#sha256=00">x</a>\n'
    )

    def fetch(url: str, headers: dict[str, str]) -> bytes:
        return listing.encode() if url.startswith("https://download.pytorch.org/") else pypi(url, headers)

    row = {"torchvision": "0.20.1", "torchaudio": "2.5.1", "python": ["3.12"], "variants": {"cu118": {"cudnn": "9"}}, "cpu": True}
    files = {"pypi": "manylinux_2_28_x86_64", "index": {"cu118": "manylinux_2_28_x86_64", "cpu": "linux_x86_64"}}
    current = {"torch": {"2.5.1": {**row, "pypi_default": "cu124", "files": files, "source": ["s"]}}}
    new, notes = compat_refresh.refresh(current, fetch, today="2026-01-01")
    assert new["torch"]["2.5.1"]["files"]["index"] == {"cu118": "linux_x86_64", "cu126": "manylinux_2_28_x86_64", "cpu": "linux_x86_64"}
    assert "torch 2.5.1: cu118 wheels on the PyTorch index are linux_x86_64 (table: manylinux_2_28_x86_64)" in notes
    assert "torch 2.5.1: the PyTorch index has cu126 wheels" in notes
    assert new["torch"]["2.99.0"]["files"] == {
        "pypi": "manylinux_2_28_x86_64",
        "index": {"cu130": "manylinux_2_28_x86_64", "cpu": "manylinux_2_28_x86_64"},
    }


def test_refresh_reports_an_unreachable_pypi_and_changes_nothing() -> None:
    def offline(url: str, headers: dict[str, str]) -> bytes:
        raise urllib.error.URLError("Name or service not known")

    new, notes = compat_refresh.refresh({"torch": {}}, offline)
    assert new == {"torch": {}} and notes[0].startswith("PyPI: unreachable")
