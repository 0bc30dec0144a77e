"""Transfer progress: what the status line says, and that it stays off output that is not a terminal."""

from __future__ import annotations

import io
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from torchimages.progress import StatusLine, describe, human_bytes
from torchimages.wheels import pip_run


def test_describe_gives_bytes_rate_and_time_left() -> None:
    assert describe(412_000_000, 900_000_000, 4.0) == "412.0 MB of 900.0 MB, 103.0 MB/s, 0:04 left"
    assert describe(900_000_000, 900_000_000, 9.0) == "900.0 MB of 900.0 MB, 100.0 MB/s"
    assert describe(0, 0, 0.0) == "0 B"
    assert describe(1500, 0, 1.0) == "1.5 kB, 1.5 kB/s"
    assert human_bytes(3_200_000_000) == "3.2 GB" and human_bytes(999) == "999 B"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_one_status_line_that_ordinary_lines_print_above() -> None:
    out, clock = io.StringIO(), Clock()
    status = StatusLine(out, interactive=True, clock=clock)
    meter = status.meter("img", "pushing")
    clock.now = 2.0
    meter(100_000_000, 400_000_000)
    status.say("[img] tagged")
    clock.now = 4.0
    meter(300_000_000, 400_000_000)
    meter.close()
    text = out.getvalue()
    assert "[img] pushing: 100.0 MB of 400.0 MB, 50.0 MB/s, 0:06 left" in text
    assert "\r\033[K[img] tagged\n[img] pushing: 100.0 MB" in text  # cleared, printed, drawn again
    assert "[img] pushing: 300.0 MB of 400.0 MB, 75.0 MB/s, 0:01 left" in text
    assert text.endswith("\r\033[K")  # closed: the line is gone


def test_updates_are_drawn_at_most_four_times_a_second() -> None:
    out, clock = io.StringIO(), Clock()
    meter = StatusLine(out, interactive=True, clock=clock).meter("img", "pushing")
    clock.now = 1.0
    for done in range(1, 100):
        meter(done, 100)
    assert out.getvalue().count("pushing:") == 1


def test_not_a_terminal_gets_lines_only() -> None:
    out = io.StringIO()
    status = StatusLine(out, interactive=False)
    meter = status.meter("img", "pushing")
    meter(1, 2)
    status.say("[img] pushed")
    meter.close()
    assert out.getvalue() == "[img] pushed\n"


def test_pip_raw_progress_reaches_the_callback_and_stays_out_of_the_log(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "fakepip" / "pip"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")  # a regular package: it shadows the real pip on PYTHONPATH
    (fake / "__main__.py").write_text(
        textwrap.dedent(
            """
            import sys
            assert sys.argv[-2:] == ["--progress-bar", "raw"], sys.argv
            print("Collecting torch==2.13.0")
            print("  Downloading https://files.example/torch-2.13.0-cp311-none-any.whl (900.0 MB)")
            print("Progress 450000000 of 900000000")
            print("Progress 900000000 of 900000000")
            print("Saved ./torch-2.13.0-cp311-none-any.whl")
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    seen: list[tuple[str, int, int]] = []
    log = io.StringIO()
    monkeypatch.chdir(tmp_path)  # were the real pip to run, nothing lands in the repository
    pip_run(["download", "torch", "--no-deps", "--dest", str(tmp_path)], log, what="test", on_download=lambda *a: seen.append(a))
    name = "torch-2.13.0-cp311-none-any.whl"
    assert seen == [(name, 450000000, 900000000), (name, 900000000, 900000000)]
    assert "Progress" not in log.getvalue() and "Saved ./torch" in log.getvalue()
    assert sys.executable in log.getvalue()


def fake_pip(tmp_path: Path, monkeypatch, body: str) -> None:
    package = tmp_path / "fakepip" / "pip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(body))
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    monkeypatch.chdir(tmp_path)


def test_a_pip_that_runs_too_long_is_killed_and_says_so(tmp_path: Path, monkeypatch) -> None:
    import pytest

    from torchimages import wheels

    fake_pip(tmp_path, monkeypatch, "import time\nprint('Collecting torch', flush=True)\ntime.sleep(60)\n")
    monkeypatch.setattr(wheels, "PIP_TIMEOUT", 1)
    started = time.monotonic()
    with pytest.raises(wheels.WheelError, match="pip ran past 1 s"):
        pip_run(["download", "torch"], io.StringIO(), what="fetching")
    assert time.monotonic() - started < 30


def test_a_failing_progress_callback_stops_pip_too(tmp_path: Path, monkeypatch) -> None:
    import pytest

    fake_pip(tmp_path, monkeypatch, "import time\nprint('Progress 1 of 2', flush=True)\ntime.sleep(60)\n")
    started = time.monotonic()

    def broken(*_: object) -> None:
        raise BrokenPipeError("the terminal went away")

    with pytest.raises(BrokenPipeError):
        pip_run(["download", "torch"], io.StringIO(), what="fetching", on_download=broken)
    assert time.monotonic() - started < 30  # pip was killed and reaped, not waited for


def test_index_credentials_reach_pip_through_a_private_netrc_never_its_command_line(tmp_path: Path, monkeypatch) -> None:
    import pytest

    from torchimages.lock import Indexes, resolve
    from torchimages.matrix import load_matrix
    from torchimages.wheels import WheelError

    seen = tmp_path / "seen.txt"
    body = (
        "import os, stat, sys\n"
        "netrc = os.environ.get('NETRC', '')\n"
        "mode = oct(stat.S_IMODE(os.stat(netrc).st_mode)) if netrc else ''\n"
        f"open({str(seen)!r}, 'w').write(repr(sys.argv) + '\\n' + mode + '\\n' + (open(netrc).read() if netrc else ''))\n"
        "sys.exit(1)\n"
    )
    fake_pip(tmp_path, monkeypatch, body)
    spec = load_matrix(Path(__file__).parents[2] / "tests" / "fixtures" / "images.yaml").images[0]
    log = io.StringIO()
    with pytest.raises(WheelError):  # the fake pip fails after looking
        resolve(spec, Indexes(index_url="https://user:s3cr%40t@pypi.example:8443/simple", isolated=True), log=log)
    argv, mode, netrc = seen.read_text().split("\n", 2)
    assert "s3cr" not in argv and "'--index-url', 'https://pypi.example:8443/simple'" in argv
    assert mode == "0o600" and netrc == "machine pypi.example login user password s3cr@t\n"
    assert "s3cr" not in log.getvalue()
    assert not list(Path(tempfile.gettempdir()).glob("torch-images-netrc-*"))  # gone once pip is done


def test_the_image_s_pytorch_index_adds_to_the_extra_indexes_of_pip_conf(tmp_path: Path, monkeypatch) -> None:
    """pip.conf's extra-index-url stays in use beside the image's PyTorch index folder (PIP_EXTRA_INDEX_URL would replace it)."""
    import pytest

    from torchimages.lock import Indexes, index_args
    from torchimages.matrix import load_matrix
    from torchimages.wheels import WheelError

    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nextra-index-url = http://127.0.0.1:9/from-pip-conf\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    spec = next(s for s in load_matrix(Path(__file__).parents[2] / "images.yaml", pytorch_index="http://127.0.0.1:9/whl").images if s.cuda)
    options, credentials = index_args(spec, Indexes())
    assert credentials == []
    log = io.StringIO()
    with pytest.raises(WheelError):
        pip_run(["download", *options, "--no-deps", "-d", str(tmp_path), "torch-images-no-such-package"], log, what="test")
    looking = next(line for line in log.getvalue().splitlines() if line.startswith("Looking in indexes:"))
    assert "http://127.0.0.1:9/from-pip-conf" in looking and f"http://127.0.0.1:9/whl/{spec.wheel_variant}" in looking
