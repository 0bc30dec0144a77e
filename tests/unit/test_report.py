"""report.json keeps the documented shape; report.md is a table a person reads."""

from __future__ import annotations

import json
from pathlib import Path

from torchimages.matrix import load_matrix
from torchimages.model import BuildResult, PushResult, VerifyReport
from torchimages.report import human_size, write_reports

ROOT = Path(__file__).parents[2]


def test_reports_have_the_documented_fields_and_what_verification_saw(tmp_path: Path) -> None:
    cpu, cuda, _devel = load_matrix(ROOT / "tests" / "fixtures" / "images.yaml").images
    seen = VerifyReport(ok=True, exit_code=0, torch="2.11.0+cu130", torch_cuda="13.0", cudnn="9.19.0", python="3.11", gpu=False)
    results = [
        BuildResult(spec=cpu, status="failed", error="fetching wheels for x: ERROR: No matching distribution\nmore"),
        BuildResult(spec=cuda, status="built", image_id="sha256:abc", verified=True, verify=seen, tags=cuda.refs,
                    pushed=(PushResult(ref=cuda.refs[0], digest="sha256:" + "1" * 64),), size=5_730_000_000),
    ]  # fmt: skip
    json_path, md_path = write_reports(results, tmp_path)
    images = json.loads(json_path.read_text())["images"]
    assert set(images[0]) >= {"name", "status", "image_id", "tags", "verified", "pushed", "error"}
    assert (images[0]["status"], images[0]["verified"], images[0]["pushed"], images[0]["image_id"]) == ("failed", False, [], None)
    assert images[1]["pushed"] == [{"ref": cuda.refs[0], "digest": "sha256:" + "1" * 64}]
    assert (images[1]["torch"], images[1]["cudnn"], images[1]["size"]) == ("2.11.0+cu130", "9.19.0", 5_730_000_000)
    table = md_path.read_text()
    assert f"| {cuda.name} | built | 2.11.0+cu130 | 13.0 | 9.19.0 | 3.11 | 5.73 GB | yes | sha256:111111111111 |" in table
    assert f"- **{cpu.name}**: fetching wheels for x: ERROR: No matching distribution" in table
    assert "more" not in table.split("## Failures")[1]


def test_human_size() -> None:
    assert [human_size(n) for n in (None, 999, 1_500_000, 5_730_000_000)] == ["-", "999 B", "1.50 MB", "5.73 GB"]
