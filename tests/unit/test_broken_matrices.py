"""The broken-matrix corpus: each file ends in exactly the one message its first line promises, and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from torchimages.config import ConfigError
from torchimages.matrix import load_matrix

ROOT = Path(__file__).parents[2]
CORPUS = ROOT / "tests" / "fixtures" / "broken"
FILES = sorted(CORPUS.glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ")


def test_the_corpus_is_not_empty() -> None:
    assert len(FILES) >= 15


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_library_reports_exactly_the_expected_problem(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    with pytest.raises(ConfigError) as caught:
        load_matrix(path.name, base_mirror="")
    assert [str(p) for p in caught.value.problems] == [expected(path)]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_cli_prints_one_clean_message_and_exits_1(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "matrix", "--config", path.name],
        cwd=CORPUS, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [expected(path), "1 problem found; nothing was done."]
