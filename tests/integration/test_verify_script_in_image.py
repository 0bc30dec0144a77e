"""The verifier's own unit tests, run inside the CPU image: there torch, tensorboardX and tensorboard are real."""

from __future__ import annotations

import os
import re
import sysconfig
from pathlib import Path

import pytest

from torchimages.engine import Engine

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


def test_verify_script_unit_tests_pass_inside_the_image_with_nothing_skipped(engine: Engine, cpu_image: str) -> None:
    # pytest comes from this environment's site-packages (pure python, same CPython minor as the image),
    # appended after the image's own so the image's torch and numpy are the ones tested.
    site = sysconfig.get_paths()["purelib"]
    args = ["-q", "-rs", "-p", "no:cacheprovider", "--rootdir", "/tmp", "-W", "ignore::pytest.PytestUnknownMarkWarning"]
    args.append("/src/tests/unit/test_verify_script.py")
    script = f"import sys; sys.path.append('/host-site'); import pytest; sys.exit(pytest.main({args!r}))"
    outcome = engine.run(
        cpu_image,
        ["python", "-c", script],
        environment={"PYTHONDONTWRITEBYTECODE": "1"},
        user=f"{os.getuid()}:{os.getgid()}",  # the checkout may be readable by its owner alone (mktemp -d makes 0700)
        read_only_mounts={str(ROOT): "/src", site: "/host-site"},
        timeout=600,
    )
    summary = outcome.output.strip().splitlines()[-1]
    assert outcome.exit_code == 0, outcome.output[-3000:]
    assert re.fullmatch(r"\d+ passed in [\d.]+s", summary), outcome.output[-3000:]
