"""/etc/profile.d/torch-images.sh: login shells get the image's PATH back, and nothing else of theirs changes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from torchimages.render import PROFILE_SCRIPT

IMAGE_PATH = "/opt/venv/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHELLS = [name for name in ("dash", "bash") if shutil.which(name)]


def source(shell: str, tmp_path: Path, setup: str, then: str) -> list[str]:
    (tmp_path / "path").write_text(IMAGE_PATH + "\n")
    script = tmp_path / "profile.sh"
    script.write_text(PROFILE_SCRIPT.read_text().replace("/etc/torch-images/path", str(tmp_path / "path")))
    done = subprocess.run(["env", "-i", shell, "-c", f"{setup}; . {script}; {then}"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("shell", SHELLS)
def test_the_image_path_comes_first_and_other_entries_stay(shell: str, tmp_path: Path) -> None:
    # /etc/profile's PATH for a user, plus an entry with a glob character that must not expand.
    lines = source(shell, tmp_path, "PATH='/usr/local/bin:/usr/bin:/bin:/usr/games:/op*'", 'echo "$PATH"; echo "$VIRTUAL_ENV"')
    assert lines == [f"{IMAGE_PATH}:/usr/games:/op*", "/opt/venv"]


@pytest.mark.parametrize("shell", SHELLS)
def test_strict_shells_with_ifs_unset_are_left_as_they_were(shell: str, tmp_path: Path) -> None:
    lines = source(shell, tmp_path, "set -eu; unset IFS; PATH=/usr/bin:/bin", 'set -- a b; echo "[$*] ${IFS-unset}"; echo "$PATH"')
    assert lines == ["[a b] unset", IMAGE_PATH]
