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
        ExplodingEngine(), spec, WheelSet(lock="", files=()), pipeline.BuildOptions(out_dir=tmp_path),  # type: ignore[arg-type]
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
        ExplodingEngine(), spec, WheelError("fetching wheels for x: ERROR: nope"),  # type: ignore[arg-type]
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


def test_the_flavours_of_one_venv_build_in_one_group_and_a_broken_lock_alone() -> None:
    matrix = load_matrix(ROOT / "tests" / "fixtures" / "images.yaml")
    cpu, *cuda = matrix.images
    locks = {cpu.name: WheelSet(lock="torch==2.13.0+cpu\n", files=()), **{s.name: WheelSet(lock="torch==2.13.0\n", files=()) for s in cuda}}
    groups = list(pipeline.venv_groups(matrix.images, locks).values())  # type: ignore[arg-type]
    assert [[s.name for s in group] for group in groups] == [[cpu.name], [s.name for s in cuda]]
    locks[cuda[0].name] = WheelError("no wheels")
    groups = list(pipeline.venv_groups(matrix.images, locks).values())  # type: ignore[arg-type]
    assert len(groups) == 3
