"""One image's unexpected failure is reported for that image, not raised out of the run; stale pid files go."""

from __future__ import annotations

import io
import os
from pathlib import Path

from torchimages import pipeline
from torchimages.matrix import load_matrix
from torchimages.testing import services
from torchimages.wheels import WheelError, WheelSet

ROOT = Path(__file__).parents[2]


class ExplodingEngine:
    def image(self, ref: str) -> None:
        raise RuntimeError("the engine's answer made no sense")


def test_an_unexpected_error_fails_only_that_image(tmp_path: Path) -> None:
    matrix = load_matrix(ROOT / "tests" / "fixtures" / "images.yaml")
    spec = matrix.images[0]
    lines: list[str] = []
    result = pipeline._build_one(
        ExplodingEngine(), spec, WheelSet(lock="", files=()), matrix, pipeline.BuildOptions(out_dir=tmp_path),  # type: ignore[arg-type]
        pipeline._Console(lines.append), tmp_path,
    )  # fmt: skip
    assert result.status == "failed" and result.verified is False and result.pushed == ()
    assert result.error == 'unexpected error: RuntimeError("the engine\'s answer made no sense") (traceback in the log)'
    assert "Traceback" in (tmp_path / f"{spec.name}.log").read_text()
    assert lines == [f"[{spec.name}] FAILED: {result.error} (log: {tmp_path / f'{spec.name}.log'})"]


def test_a_wheel_failure_fails_the_image_with_its_message(tmp_path: Path) -> None:
    matrix = load_matrix(ROOT / "tests" / "fixtures" / "images.yaml")
    spec = matrix.images[0]
    result = pipeline._build_one(
        ExplodingEngine(), spec, WheelError("fetching wheels for x: ERROR: nope"), matrix,  # type: ignore[arg-type]
        pipeline.BuildOptions(out_dir=tmp_path), pipeline._Console(io.StringIO().write), tmp_path,
    )  # fmt: skip
    assert (result.status, result.error) == ("failed", "fetching wheels for x: ERROR: nope")


def test_a_stale_pid_file_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    stale, live = tmp_path / "stale.pid", tmp_path / "live.pid"
    stale.write_text("999999999")  # no such process
    live.write_text(str(os.getpid()))
    services._remove_stale_pid_file(stale)
    services._remove_stale_pid_file(live)
    assert not stale.exists() and live.exists()
