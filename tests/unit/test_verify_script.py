"""Tests for scripts/verify.py, the in-image `torch-verify` command."""

from __future__ import annotations

import importlib.util
import json
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "verify.py"


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("torch_verify", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verify = _load_script()


def fake_torch(
    cuda: str | None = None,
    cudnn_available: bool = True,
    cudnn_version: int | None = None,
    driver_warning: str | None = None,
) -> Any:
    """Just enough of torch for the checks that only read versions and availability."""

    def is_available() -> bool:
        if driver_warning:
            warnings.warn(driver_warning, stacklevel=1)
        return False

    return SimpleNamespace(
        __version__="2.11.0+cu130",
        version=SimpleNamespace(cuda=cuda),
        backends=SimpleNamespace(cudnn=SimpleNamespace(is_available=lambda: cudnn_available, version=lambda: cudnn_version)),
        cuda=SimpleNamespace(is_available=is_available, device_count=lambda: 0),
    )


def run_script(*args: str, preamble: str = "") -> subprocess.CompletedProcess[str]:
    """Run verify.py as `python verify.py ARGS`; preamble runs first (e.g. to hide torch)."""
    argv = [str(SCRIPT), *args]
    code = f"{preamble}\nimport runpy, sys\nsys.argv = {argv!r}\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)


def checks_by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in document["checks"]}


# ---- pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (8902, "8.9.2"),
        (90100, "9.1.0"),
        (92400, "9.24.0"),
        (7605, "7.6.5"),
        (8907, "8.9.7"),
        (90000, "9.0.0"),
    ],
)
def test_decode_cudnn_version_handles_both_encodings(encoded: int, expected: str) -> None:
    assert verify.decode_cudnn_version(encoded) == expected


@pytest.mark.parametrize(
    ("expected", "actual", "matches"),
    [
        ("2.11.0", "2.11.0", True),
        ("2.11.0", "2.11.0+cu130", True),  # no local part expected: public part decides
        ("2.11.0", "2.11.1+cu130", False),
        ("2.1.0", "2.11.0", False),
        ("2.11.0", "2.11.0a0+git1234", False),
        ("2.13.0+cpu", "2.13.0+cpu", True),
        ("2.13.0+cpu", "2.13.0", False),  # local part expected: exact match
        ("2.13.0+cpu", "2.13.0+cu130", False),
        ("2.11.0+cu130", "2.11.0+cu128", False),
    ],
)
def test_torch_version_matches(expected: str, actual: str, matches: bool) -> None:
    assert verify.torch_version_matches(expected, actual) is matches


@pytest.mark.parametrize(
    ("expected", "actual", "matches"),
    [
        ("9", "9.1.0", True),
        ("9", "9.24.0", True),
        ("9", "8.9.2", False),
        ("9", "90.1.0", False),
        ("9.1.0", "9.1.0", True),
        ("9.1.0", "9.10.0", False),
        ("9.1", "9.1.7", True),
    ],
)
def test_cudnn_expectation_is_a_version_prefix(expected: str, actual: str, matches: bool) -> None:
    assert verify.version_prefix_matches(expected, actual) is matches


LABELS = {
    "org.torch-images.torch": "2.11.0",
    "org.torch-images.cuda": "13.0",
    "org.torch-images.cudnn": "9",
    "org.torch-images.python": "3.11",
    "org.torch-images.flavour": "runtime",
    "org.torch-images.packages": "torchvision, yaml,,tqdm ",
    "org.torch-images.base-cuda": "13.0",
    "org.opencontainers.image.title": "unrelated",
}
NO_FLAGS: dict[str, str | None] = dict.fromkeys(("torch", "cuda", "cudnn", "python", "flavour", "packages", "torchvision", "torchaudio"))


def test_labels_supply_expectations_when_no_flags() -> None:
    merged = verify.merge_expectations(LABELS, NO_FLAGS)
    assert merged == {
        "torch": "2.11.0",
        "cuda": "13.0",
        "cudnn": "9",
        "python": "3.11",
        "flavour": "runtime",
        "packages": ["torchvision", "yaml", "tqdm"],
        "base_cuda": "13.0",
        "torchvision": None,
        "torchaudio": None,
    }


def test_flags_override_labels() -> None:
    flags = {**NO_FLAGS, "cuda": "none", "torch": "2.13.0+cpu", "packages": "json", "flavour": "cpu"}
    merged = verify.merge_expectations(LABELS, flags)
    assert (merged["cuda"], merged["torch"], merged["packages"], merged["flavour"]) == (
        "none",
        "2.13.0+cpu",
        ["json"],
        "cpu",
    )
    assert merged["cudnn"] == "9"  # not overridden


def test_no_labels_no_flags_expects_nothing() -> None:
    assert set(verify.merge_expectations({}, NO_FLAGS).values()) == {None}


def test_empty_packages_flag_means_no_packages_rather_than_unspecified() -> None:
    assert verify.merge_expectations(LABELS, {**NO_FLAGS, "packages": ""})["packages"] == []


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ([], 0),
        (["pass", "skip", "warn"], 0),
        (["pass", "fail"], 1),
        (["fail"], 1),
        (["warn", "skip", "fail"], 1),
    ],
)
def test_exit_code(statuses: list[str], code: int) -> None:
    assert verify.exit_code([verify.record(f"c{i}", s, "") for i, s in enumerate(statuses)]) == code


@pytest.mark.parametrize(
    ("size", "status"),
    [
        (None, "warn"),
        (64 * 2**20, "warn"),
        (2**30 - 1, "warn"),
        (2**30, "pass"),
        (8 * 2**30, "pass"),
    ],
)
def test_shm_threshold_is_one_gib(size: int | None, status: str) -> None:
    got_status, detail = verify.shm_status(size)
    assert got_status == status
    assert ("--shm-size=8g" in detail and "--ipc=host" in detail) is (status == "warn")


def test_parse_nvcc_release() -> None:
    output = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.48\n"
    assert verify.parse_nvcc_release(output) == "13.0"
    assert verify.parse_nvcc_release("command not found") is None


@pytest.mark.parametrize(
    ("expected", "actual", "status"),
    [
        ("13.0", "13.0", "pass"),
        ("13.0", "13.1", "warn"),
        ("12.8", "12.6", "warn"),
        ("13.0", "12.8", "fail"),
    ],
)
def test_nvcc_release_against_base_cuda(expected: str, actual: str, status: str) -> None:
    assert verify.compare_cuda_release(expected, actual)[0] == status


# ---- checks against a fake torch ----------------------------------------------------------------


def test_cpu_torch_in_cuda_image_fails_with_explanation() -> None:
    rec = verify.check_torch_cuda(fake_torch(cuda=None), "13.0")
    assert rec["status"] == "fail"
    assert "CPU build" in rec["detail"]
    assert "13.0" in rec["detail"]


@pytest.mark.parametrize(
    ("actual", "expected", "status"),
    [
        ("13.0", "13.0", "pass"),
        ("12.8", "13.0", "fail"),
        (None, "none", "pass"),
        ("13.0", "none", "fail"),
        (None, None, "pass"),
    ],
)
def test_torch_cuda_check(actual: str | None, expected: str | None, status: str) -> None:
    assert verify.check_torch_cuda(fake_torch(cuda=actual), expected)["status"] == status


@pytest.mark.parametrize(
    ("torch_kwargs", "expected", "status", "value"),
    [
        ({"cuda": "13.0", "cudnn_version": 91000}, "9", "pass", "9.10.0"),
        ({"cuda": "13.0", "cudnn_version": 91000}, "9.1.0", "fail", "9.10.0"),
        ({"cuda": "12.8", "cudnn_version": 8902}, "9", "fail", "8.9.2"),
        ({"cuda": "13.0", "cudnn_version": None}, "9", "fail", None),
        ({"cuda": "13.0", "cudnn_version": 91000}, "none", "warn", "9.10.0"),
        ({"cuda": "13.0", "cudnn_available": False}, None, "fail", None),
        ({"cuda": None}, "none", "skip", None),
        ({"cuda": None}, "9", "fail", None),
    ],
)
def test_cudnn_check(torch_kwargs: dict[str, Any], expected: str | None, status: str, value: str | None) -> None:
    rec = verify.check_cudnn(fake_torch(**torch_kwargs), expected)
    assert (rec["status"], rec.get("value")) == (status, value)


def test_missing_gpu_is_skipped_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    torch = fake_torch(cuda="13.0", driver_warning="The NVIDIA driver on your system is too old")
    available, why = verify.cuda_availability(torch)
    assert available is False
    assert "NVIDIA_VISIBLE_DEVICES=all" in why
    assert "CUDA_VISIBLE_DEVICES=<unset>" in why
    assert "driver on your system is too old" in why
    assert verify.check_gpu(torch, available, why, require_gpu=False)["status"] == "skip"
    required = verify.check_gpu(torch, available, why, require_gpu=True)
    assert required["status"] == "fail"
    assert "driver on your system is too old" in required["detail"]


def test_guard_turns_an_exception_into_a_failed_check() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    assert verify.guard("x", broken) == {
        "name": "x",
        "status": "fail",
        "detail": "unexpected error: RuntimeError: boom",
    }


def test_package_check_reports_import_error_and_version() -> None:
    missing = verify.check_package("torch_images_no_such_module")
    assert missing["status"] == "fail"
    assert "No module named" in missing["detail"]
    found = verify.check_package("pytest")
    assert (found["status"], found["value"]) == ("pass", pytest.__version__)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX shell script as a stand-in nvcc")
@pytest.mark.parametrize(
    ("script", "base_cuda", "status"),
    [
        ("echo 'Cuda compilation tools, release 12.8, V12.8.93'", "12.8", "pass"),
        ("echo 'Cuda compilation tools, release 12.8, V12.8.93'", "12.6", "warn"),
        ("echo 'Cuda compilation tools, release 12.8, V12.8.93'", "13.0", "fail"),
        ("echo 'Cuda compilation tools, release 12.8, V12.8.93'", None, "pass"),
        ("echo 'nvcc fatal : broken' >&2; exit 3", "12.8", "fail"),
    ],
)
def test_nvcc_check_runs_nvcc_from_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, base_cuda: str | None, status: str
) -> None:
    nvcc = tmp_path / "nvcc"
    nvcc.write_text(f"#!/bin/sh\n{script}\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert verify.check_nvcc("devel", base_cuda)["status"] == status
    assert verify.check_nvcc("runtime", base_cuda)["status"] == "skip"


def _write_events(logdir: Path) -> None:
    import tensorboardX as tensorboardx

    writer = tensorboardx.SummaryWriter(str(logdir))
    writer.add_scalar("loss", 1.0 / 3, 0)
    writer.add_scalar("loss", 2.0, 5)
    writer.close()


@pytest.mark.torch
@pytest.mark.parametrize("hide_tensorboard", [False, True], ids=["EventAccumulator", "own-reader"])
def test_read_events_reads_back_scalars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hide_tensorboard: bool) -> None:
    _write_events(tmp_path)
    if hide_tensorboard:
        monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing", None)
    scalars, images, graph = verify.read_events(str(tmp_path))
    assert scalars["loss"] == [(0, pytest.approx(1.0 / 3, rel=1e-6)), (5, 2.0)]
    assert (images, graph) == ([], False)


@pytest.mark.torch
def test_own_event_reader_checks_crc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_events(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing", None)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    data = bytearray(events.read_bytes())
    data[-6] ^= 0xFF  # inside the last record's payload
    events.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC mismatch"):
        verify.read_events(str(tmp_path))


@pytest.mark.torch
def test_tensorboardx_check_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorboard  # noqa: F401  # SummaryWriter.add_graph goes through torch.utils.tensorboard
    import torch

    assert verify.check_tensorboardx(torch)["status"] == "pass"
    real_read_events = verify.read_events

    def off_by_one_step(logdir: str) -> Any:
        scalars, images, graph = real_read_events(logdir)
        return {"loss": [(step + 1, value) for step, value in scalars["loss"]]}, images, graph

    monkeypatch.setattr(verify, "read_events", off_by_one_step)
    failed = verify.check_tensorboardx(torch)
    assert failed["status"] == "fail"
    assert "read back as" in failed["detail"]


# ---- the script end to end ----------------------------------------------------------------------


@pytest.fixture
def empty_labels(tmp_path: Path) -> Path:
    """An explicit labels file keeps these runs independent of any /etc/torch-images/labels.json."""
    path = tmp_path / "labels.json"
    path.write_text("{}")
    return path


def test_help_needs_no_torch() -> None:
    proc = run_script("--help", preamble="import sys; sys.modules['torch'] = None")
    assert proc.returncode == 0, proc.stderr
    assert "--expect-cuda" in proc.stdout


@pytest.mark.parametrize("args", [["--flavour", "bogus"], ["--labels-file", "/nonexistent/labels.json"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert run_script(*args).returncode == 2


def test_unimportable_torch_is_a_failed_check(empty_labels: Path) -> None:
    proc = run_script(
        "--json",
        "--labels-file",
        str(empty_labels),
        "--packages",
        "json",
        preamble="import sys; sys.modules['torch'] = None",
    )
    assert proc.returncode == 1, proc.stderr
    # torchimages.verify.parse_report takes the last line of the container log that is a JSON object
    assert proc.stdout.startswith('{"')
    assert proc.stdout.count("\n") == 1
    check = checks_by_name(json.loads(proc.stdout))["torch.version"]
    assert check["status"] == "fail"
    assert "torch failed to import" in check["detail"]


def test_output_of_checked_packages_stays_off_stdout(tmp_path: Path, empty_labels: Path) -> None:
    (tmp_path / "noisy.py").write_text("import os\nprint('from print')\nos.write(1, b'from fd 1')\n")
    proc = run_script(
        "--json",
        "--labels-file",
        str(empty_labels),
        "--packages",
        "noisy",
        preamble=f"import sys; sys.modules['torch'] = None; sys.path.insert(0, {str(tmp_path)!r})",
    )
    assert checks_by_name(json.loads(proc.stdout))["package.noisy"]["status"] == "pass"
    assert "from print" in proc.stderr
    assert "from fd 1" in proc.stderr


@pytest.mark.torch
def test_cuda_expectation_against_installed_torch(empty_labels: Path) -> None:
    import torch

    wrong = "13.0" if torch.version.cuda is None else "1.0"
    proc = run_script("--json", "--labels-file", str(empty_labels), "--expect-cuda", wrong)
    assert proc.returncode == 1, proc.stderr
    document = json.loads(proc.stdout)
    check = checks_by_name(document)["torch.cuda"]
    assert document["ok"] is False
    assert check["status"] == "fail"
    if torch.version.cuda is None:
        assert "torch is a CPU build (torch.version.cuda is None)" in check["detail"]


@pytest.mark.torch
def test_matching_expectations_pass(empty_labels: Path) -> None:
    import torch

    proc = run_script(
        "--json",
        "--labels-file",
        str(empty_labels),
        "--packages",
        "json",
        "--expect-cuda",
        torch.version.cuda or "none",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = json.loads(proc.stdout)
    assert document["ok"] is True
    assert document["python"] == "{}.{}".format(*sys.version_info[:2])  # the form of the python label
    assert document["torch"] == torch.__version__
    assert document["packages"] == {"json": json.__version__}  # type: ignore[attr-defined]  # missing from typeshed


@pytest.mark.torch
def test_flags_override_labels_file_end_to_end(tmp_path: Path) -> None:
    import torch

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"org.torch-images.torch": "0.0.1", "org.torch-images.packages": "json"}))
    from_labels = run_script("--json", "--labels-file", str(labels))
    assert from_labels.returncode == 1
    assert checks_by_name(json.loads(from_labels.stdout))["torch.version"]["status"] == "fail"
    overridden = run_script("--json", "--labels-file", str(labels), "--expect-torch", torch.__version__)
    assert checks_by_name(json.loads(overridden.stdout))["torch.version"]["status"] == "pass"


@pytest.mark.torch
def test_require_gpu_fails_without_gpu(empty_labels: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here, so --require-gpu cannot fail")
    proc = run_script("--labels-file", str(empty_labels), "--packages", "", "--require-gpu")
    assert proc.returncode == 1
    gpu_line = next(line for line in proc.stdout.splitlines() if line.startswith("gpu "))
    assert "FAIL" in gpu_line
    assert "CUDA_VISIBLE_DEVICES" in gpu_line


# ---- torchvision and torchaudio against torch's build -------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "built_cuda", "torch_cuda", "expected", "status"),
    [
        ("torchvision", "0.26.0+cu126", "12.6", "12.6", "0.26.0+cu126", "pass"),
        ("torchvision", "0.28.0+cu130", 13000, "13.0", None, "pass"),  # as torchvision reports it: an integer
        ("torchvision", "0.26.0", 12080, "12.6", None, "fail"),
        ("torchvision", "0.26.0+cu128", "12.8", "12.6", None, "fail"),  # the wheelhouse mix-up: another CUDA
        ("torchvision", "0.26.0+cpu", None, "12.6", None, "fail"),  # a CPU torchvision beside CUDA torch
        ("torchvision", "0.26.0+cu126", "12.6", "12.6", "0.26.0+cu128", "fail"),  # not the promised build
        ("torchvision", "0.26.0", "12.8", "12.6", None, "fail"),  # no local version: torchvision.version.cuda tells
        ("torchaudio", "2.11.0+cu130", None, "13.2", "2.11.0", "pass"),  # torchaudio 2.11 serves a later CUDA 13 torch
        ("torchaudio", "2.11.0+cu130", None, "12.6", None, "fail"),
        ("torchaudio", "2.11.0+cu126", None, None, None, "fail"),  # CUDA torchaudio beside CPU torch
        ("torchaudio", "0.8.1", None, "11.1", "0.8.1", "pass"),  # one CPU-only build served every variant then
        ("torchaudio", "2.11.0+cu130", "13.0", "13.2", None, "pass"),  # a torchaudio that reports its CUDA: same rule
        ("torchaudio", "2.5.1+rocm6.2", None, "12.4", None, "fail"),  # not a CUDA build at all
    ],
)
def test_companion_is_built_for_torch_s_cuda(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    version: str,
    built_cuda: str | int | None,
    torch_cuda: str | None,
    expected: str | None,
    status: str,
) -> None:
    module = SimpleNamespace(__version__=version)
    if name == "torchvision" or built_cuda is not None:
        module.version = SimpleNamespace(cuda=built_cuda)
    monkeypatch.setitem(sys.modules, name, module)
    rec = verify.check_companion(fake_torch(cuda=torch_cuda), name, expected)
    assert (rec["name"], rec["status"]) == (f"{name}.build", status), rec["detail"]


def test_a_companion_the_image_does_not_ship_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchaudio", None)  # import fails
    assert verify.check_companion(fake_torch(cuda="13.0"), "torchaudio", "none")["status"] == "skip"
    assert verify.check_companion(fake_torch(cuda="13.0"), "torchaudio", "2.11.0")["status"] == "fail"
