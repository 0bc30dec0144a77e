"""invoke doctor's logic: which images a host can run, from facts gathered through small fakes (no Docker, no GPU)."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from torchimages import doctor
from torchimages.doctor import HostFacts, assess, driver_at_least, format_diagnosis, gather_facts, parse_nvidia_smi
from torchimages.engine import EngineUnavailable
from torchimages.matrix import load_matrix
from torchimages.model import ImageSpec

ROOT = Path(__file__).parents[2]
SHIPPED = load_matrix(ROOT / "images.yaml").images
FIXTURE = load_matrix(ROOT / "tests" / "fixtures" / "images.yaml").images
SHIPPED_CPU = ["2.11.0-py3.12-cpu-ubuntu24.04", "2.14.1-py3.12-cpu-ubuntu24.04"]
NVIDIA_INFO = {
    "ServerVersion": "28.3.0",
    "Runtimes": {"nvidia": {"path": "nvidia-container-runtime"}, "runc": {"path": "runc"}},
    "DefaultRuntime": "runc",
}
PLAIN_INFO = {"ServerVersion": "20.10.24", "Runtimes": {"runc": {"path": "runc"}}, "DefaultRuntime": "runc"}
SMI_NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)


class FakeEngine:
    def __init__(self, info: dict[str, Any]) -> None:
        self._info = info

    def info(self) -> dict[str, Any]:
        return self._info


def engine(info: dict[str, Any]) -> Callable[[], FakeEngine]:
    return lambda: FakeEngine(info)


def no_engine() -> FakeEngine:
    raise EngineUnavailable("no Docker engine answered (connection refused); start one or set DOCKER_HOST")


def smi(stdout: str = "", returncode: int = 0, stderr: str = "") -> Callable[..., subprocess.CompletedProcess[str]]:
    """A fake subprocess.run that answers for nvidia-smi, and checks how it was asked."""

    def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert args == ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"]
        assert kwargs["timeout"] == doctor.SMI_TIMEOUT_S and kwargs["text"] and kwargs["capture_output"]
        return subprocess.CompletedProcess(args, returncode, stdout, stderr)

    return run


def raises(exc: BaseException) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise exc

    return run


def facts(
    *,
    info: dict[str, Any] | None = None,
    run: Callable[..., subprocess.CompletedProcess[str]] | None = None,
    hook: str | None = None,
    environ: dict[str, str] | None = None,
    shm_path: str = "/dev/shm",
) -> HostFacts:
    return gather_facts(
        engine_factory=no_engine if info is None else engine(info),
        run=run or raises(FileNotFoundError("nvidia-smi")),
        which=lambda name: hook if name == doctor.NVIDIA_HOOK else None,
        environ=environ or {},
        shm_path=shm_path,
    )


def names(verdicts: tuple[doctor.Verdict, ...]) -> list[str]:
    return [v.spec.name for v in verdicts]


def cuda_names(cuda: str) -> list[str]:
    return [s.name for s in SHIPPED if s.cuda == cuda]


# -- no GPU --------------------------------------------------------------------------------------


def test_without_nvidia_smi_only_the_cpu_images_run_and_it_says_so() -> None:
    diagnosis = assess(facts(info=PLAIN_INFO), SHIPPED)
    assert (diagnosis.facts.driver, diagnosis.facts.gpus) == (None, ())
    assert "nvidia-smi is not installed" in (diagnosis.facts.gpu_problem or "")
    assert names(diagnosis.runnable) == SHIPPED_CPU
    assert len(diagnosis.unrunnable) == len(SHIPPED) - 2 and not diagnosis.unknown
    assert all(v.reason.startswith("needs an NVIDIA GPU (nvidia-smi is not installed") for v in diagnosis.unrunnable)
    assert diagnosis.newest is not None and diagnosis.newest.name == "2.14.1-py3.12-cpu-ubuntu24.04"
    assert diagnosis.newest_gpu is None and diagnosis.ok
    text = format_diagnosis(diagnosis)
    assert doctor.NO_GPU in text
    assert "no NVIDIA GPU: only the CPU images can use this host; CUDA images run without --gpus for CPU work" in text
    assert all(f"  {name}  (CPU image)" in text for name in SHIPPED_CPU)
    assert "docker run --rm -it --ipc=host ghcr.io/torch-images/pytorch:2.14.1-py3.12-cpu-ubuntu24.04" in text
    assert "NVIDIA driver: none (nvidia-smi is not installed: no NVIDIA driver on this host)" in text
    assert text.endswith("OK: this host can run 2 of 48 images.")


def test_nvidia_smi_that_cannot_reach_the_driver_means_no_gpu_and_says_why() -> None:
    got = facts(info=PLAIN_INFO, run=smi(stdout=SMI_NO_DRIVER, returncode=9))
    assert got.driver is None
    assert got.gpu_problem is not None and "the NVIDIA driver is not running" in got.gpu_problem
    assert "couldn't communicate with the NVIDIA driver" in got.gpu_problem
    diagnosis = assess(got, FIXTURE)
    assert names(diagnosis.runnable) == ["2.13.0-py3.11-cpu-debian12"]
    text = format_diagnosis(diagnosis)
    assert "NVIDIA driver: none (nvidia-smi is installed but the NVIDIA driver is not running: NVIDIA-SMI has failed" in text
    assert doctor.NO_GPU in text


@pytest.mark.parametrize(
    ("run", "problem"),
    [
        (smi(stdout="No devices were found\n", returncode=6), "nvidia-smi found no NVIDIA GPU (No devices were found)"),
        (smi(stdout="", returncode=0), "nvidia-smi listed no GPU"),
        (smi(stderr="Failed to initialize NVML: Driver/library version mismatch", returncode=18), "nvidia-smi failed (exit 18): Failed"),
        (raises(subprocess.TimeoutExpired("nvidia-smi", 20)), f"nvidia-smi did not answer within {doctor.SMI_TIMEOUT_S} s"),
        (raises(PermissionError(13, "Permission denied")), "nvidia-smi could not run: [Errno 13] Permission denied"),
    ],
)
def test_every_nvidia_smi_failure_is_no_gpu_with_its_reason(run: Callable[..., subprocess.CompletedProcess[str]], problem: str) -> None:
    got = facts(info=NVIDIA_INFO, run=run)
    assert got.driver is None and got.gpus == ()
    assert got.gpu_problem is not None and got.gpu_problem.startswith(problem)
    assert all(v.reason == f"needs an NVIDIA GPU ({got.gpu_problem})" for v in assess(got, SHIPPED).unrunnable)


# -- drivers ---------------------------------------------------------------------------------------


def test_driver_versions_compare_as_integers() -> None:
    assert driver_at_least("570.124.06", "570.124.06")
    assert not driver_at_least("570.26", "570.124.06")  # as text, "570.26" > "570.124.06"
    assert driver_at_least("1000.1", "999.99.99")
    assert not driver_at_least("535.104.05", "570.124.06")
    with pytest.raises(ValueError, match="not a driver version"):
        driver_at_least("N/A", "570.124.06")


def test_parse_nvidia_smi_reads_one_line_per_gpu_and_refuses_what_is_not_a_driver() -> None:
    two = parse_nvidia_smi("570.124.06, NVIDIA H100 80GB HBM3\n570.124.06, NVIDIA A100-SXM4-40GB\n")
    assert (two.driver, two.gpus, two.problem) == ("570.124.06", ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"), None)
    mixed = parse_nvidia_smi("580.95.05, NVIDIA L4\n570.124.06, NVIDIA L4\n")
    assert mixed.driver == "570.124.06"  # never seen, but the older driver is the one that holds for every GPU
    bad = parse_nvidia_smi("[N/A], NVIDIA GeForce RTX 4090\n")
    assert bad.driver is None and bad.problem == "nvidia-smi printed no driver version ('[N/A]')"


def test_a_driver_exactly_at_the_minimum_runs_that_cuda_and_not_the_next() -> None:
    got = facts(info=NVIDIA_INFO, run=smi("570.124.06, NVIDIA GeForce RTX 5090\n"))
    diagnosis = assess(got, SHIPPED)
    runnable = names(diagnosis.runnable)
    assert set(cuda_names("12.8")) <= set(runnable)  # min_driver 570.124.06, exactly the host's
    assert not set(cuda_names("12.9")) & set(runnable)  # 575.57.08
    reasons = {v.spec.name: v.reason for v in diagnosis.runnable + diagnosis.unrunnable}
    assert reasons[cuda_names("12.8")[0]] == "driver 570.124.06 >= 570.124.06 (CUDA 12.8.2)"
    assert reasons[cuda_names("12.9")[0]] == "driver 570.124.06 is older than 575.57.08, the minimum for CUDA 12.9.2"
    # the newest torch this driver runs is 2.14.1 on CUDA 12.6 (560.35.05): newer than its CPU build, runtime before devel
    assert diagnosis.newest is not None and diagnosis.newest.name == "2.14.1-py3.12-cuda12.6-cudnn9-runtime-ubuntu24.04"
    assert diagnosis.newest_gpu is None
    text = format_diagnosis(diagnosis)
    assert f"docker run --rm -it --gpus all --ipc=host {diagnosis.newest.refs[0]}\n" in text
    assert diagnosis.newest.refs[0] == "ghcr.io/torch-images/pytorch:2.14.1-py3.12-cuda12.6-cudnn9-runtime-ubuntu24.04"
    assert "NVIDIA container runtime: yes, through the nvidia runtime (runtimes: nvidia, runc; default runtime: runc)" in text


def test_a_driver_below_the_minimum_cannot_run_that_cuda_and_is_told_what_would() -> None:
    diagnosis = assess(facts(info=NVIDIA_INFO, run=smi("535.104.05, Tesla T4\n")), SHIPPED)
    runnable = set(names(diagnosis.runnable))
    assert set(cuda_names("12.1")) | set(cuda_names("11.8")) | set(cuda_names("11.2")) <= runnable  # 530.30.02 and older
    assert not set(cuda_names("12.4")) & runnable  # 550.54.15
    assert {v.reason for v in diagnosis.unrunnable if v.spec.cuda == "12.8"} == {
        "driver 535.104.05 is older than 570.124.06, the minimum for CUDA 12.8.2"
    }
    assert diagnosis.newest_gpu is not None and diagnosis.newest_gpu.name == "2.7.1-py3.10-cuda11.8-cudnn9-runtime-ubuntu22.04"
    highest = max((s.min_driver for s in SHIPPED if s.min_driver), key=doctor.driver_key)
    assert any(line.startswith(f"driver {highest} or newer runs every CUDA image") for line in diagnosis.advice)
    text = format_diagnosis(diagnosis)
    group = "  driver 535.104.05 is older than 570.124.06, the minimum for CUDA 12.8.2:\n"
    assert group + "".join(f"    {name}\n" for name in cuda_names("12.8")) in text  # a small group lists every image
    assert "GPU 0: Tesla T4" in text and doctor.NO_GPU not in text


@pytest.mark.parametrize(
    ("driver", "newest", "newest_gpu"),
    [
        ("535.104.05", "2.14.1-py3.12-cpu-ubuntu24.04", "2.7.1-py3.10-cuda11.8-cudnn9-runtime-ubuntu22.04"),
        ("580.95.05", "2.14.1-py3.12-cuda13.0-cudnn9-runtime-ubuntu24.04", None),  # 13.0 over 12.6, both python 3.12
        ("595.58.03", "2.15.0-py3.12-cuda13.2-cudnn9-runtime-ubuntu24.04", None),
        ("610.43.02", "2.15.0-py3.14-cuda13.3-cudnn9-runtime-ubuntu26.04", None),
    ],
)
def test_the_newest_runnable_image_is_the_newest_torch_then_cuda(driver: str, newest: str, newest_gpu: str | None) -> None:
    diagnosis = assess(facts(info=NVIDIA_INFO, run=smi(f"{driver}, NVIDIA L4\n")), SHIPPED)
    assert diagnosis.newest is not None and diagnosis.newest.name == newest
    assert (diagnosis.newest_gpu.name if diagnosis.newest_gpu else None) == newest_gpu
    assert f"Newest image this host can run: {diagnosis.newest.refs[0]}\n" in format_diagnosis(diagnosis)


def test_several_gpus_are_one_line_each_under_one_driver() -> None:
    got = facts(info=NVIDIA_INFO, run=smi("610.43.02, NVIDIA H100 80GB HBM3\n610.43.02, NVIDIA H100 80GB HBM3\n610.43.02, NVIDIA L4\n"))
    assert got.driver == "610.43.02" and got.gpus == ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA L4")
    diagnosis = assess(got, SHIPPED)
    assert len(diagnosis.runnable) == len(SHIPPED) and not diagnosis.unrunnable
    assert diagnosis.newest is not None and diagnosis.newest.name == "2.15.0-py3.14-cuda13.3-cudnn9-runtime-ubuntu26.04"
    assert diagnosis.newest_gpu is None  # the newest overall is already a CUDA image
    lines = format_diagnosis(diagnosis).splitlines()
    assert [line.strip() for line in lines if line.strip().startswith("GPU ")] == [
        "GPU 0: NVIDIA H100 80GB HBM3",
        "GPU 1: NVIDIA H100 80GB HBM3",
        "GPU 2: NVIDIA L4",
    ]
    assert sum("NVIDIA driver: 610.43.02" in line for line in lines) == 1
    assert not any("or newer runs every CUDA image" in line for line in diagnosis.advice)


# -- the engine and the runtime ----------------------------------------------------------------------


def test_an_unreachable_engine_fails_even_with_runnable_images() -> None:
    diagnosis = assess(facts(info=None, run=smi("580.95.05, NVIDIA RTX A6000\n")), FIXTURE)
    assert diagnosis.facts.engine_error is not None and "no Docker engine answered" in diagnosis.facts.engine_error
    assert len(diagnosis.runnable) == 3  # by the driver alone; the engine is what is missing
    assert not diagnosis.ok
    text = format_diagnosis(diagnosis)
    assert "Docker engine: not reachable: no Docker engine answered (connection refused)" in text
    assert "Images this host could run once a Docker engine answers (3 of 3):" in text
    assert "NVIDIA container runtime" not in text  # unknown without an engine, so not claimed either way
    assert text.endswith("NOT OK: no Docker engine answered.")


def test_a_gpu_without_the_nvidia_runtime_runs_only_cpu_images_and_says_how_to_fix_it() -> None:
    diagnosis = assess(facts(info=PLAIN_INFO, run=smi("580.95.05, NVIDIA GeForce RTX 4090\n")), SHIPPED)
    assert diagnosis.facts.gpu_path is None
    assert names(diagnosis.runnable) == SHIPPED_CPU and diagnosis.ok
    reasons = {v.spec.cuda: v.reason for v in diagnosis.unrunnable}
    assert reasons["13.0"] == "Docker has no NVIDIA container runtime to hand the GPU over"
    assert reasons["13.2"] == (
        "Docker has no NVIDIA container runtime to hand the GPU over; "
        "and driver 580.95.05 is older than 595.58.03, the minimum for CUDA 13.2.1"
    )
    text = format_diagnosis(diagnosis)
    assert "NVIDIA container runtime: not configured (runtimes: runc; default runtime: runc)" in text
    assert "install nvidia-container-toolkit" in text
    assert "`sudo nvidia-ctk runtime configure --runtime=docker`" in text and "restart docker" in text
    assert doctor.NO_GPU not in text


def test_the_nvidia_hook_on_path_or_cdi_devices_hand_gpus_over_without_a_runtime_entry() -> None:
    hooked = facts(info=PLAIN_INFO, run=smi("580.95.05, NVIDIA L40S\n"), hook="/usr/bin/nvidia-container-runtime-hook")
    assert hooked.gpu_path == "nvidia-container-runtime-hook (/usr/bin/nvidia-container-runtime-hook)"
    assert set(cuda_names("13.0")) <= set(names(assess(hooked, SHIPPED).runnable))
    cdi_info = {**PLAIN_INFO, "CDISpecDirs": ["/etc/cdi"], "DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=0"}]}
    cdi = facts(info=cdi_info, run=smi("580.95.05, NVIDIA L40S\n"))
    assert (cdi.cdi_devices, cdi.gpu_path) == (("nvidia.com/gpu=0",), "CDI devices")
    text = format_diagnosis(assess(cdi, FIXTURE))
    assert "CDI devices: nvidia.com/gpu=0" in text
    assert f"docker run --rm -it --device nvidia.com/gpu=all --ipc=host {FIXTURE[1].refs[0]}\n" in text
    fpga = {**PLAIN_INFO, "DiscoveredDevices": [{"Source": "cdi", "ID": "vendor.example/fpga=0"}]}
    other_cdi = facts(info=fpga, run=smi("580.95.05, L4\n"))
    assert other_cdi.gpu_path is None


def test_a_remote_engine_is_named_and_this_machines_hook_does_not_count() -> None:
    remote = {"DOCKER_HOST": "tcp://10.0.0.5:2376"}
    got = facts(info=PLAIN_INFO, run=smi("580.95.05, L4\n"), hook="/usr/bin/nvidia-container-runtime-hook", environ=remote)
    assert (got.remote_engine, got.nvidia_hook, got.gpu_path) == ("tcp://10.0.0.5:2376", None, None)
    assert "DOCKER_HOST: tcp://10.0.0.5:2376 (another machine" in format_diagnosis(assess(got, FIXTURE))
    local = facts(info=PLAIN_INFO, environ={"DOCKER_HOST": "unix:///run/user/1000/docker.sock"})
    assert local.remote_engine is None


def test_a_remote_engine_s_cuda_images_are_unknown_not_judged_by_this_machine_s_driver() -> None:
    nvidia_there = facts(info=NVIDIA_INFO, environ={"DOCKER_HOST": "ssh://gpu-box"})  # no nvidia-smi on this laptop
    diagnosis = assess(nvidia_there, FIXTURE)
    assert names(diagnosis.unknown) == [s.name for s in FIXTURE if s.cuda]
    assert names(diagnosis.runnable) == [s.name for s in FIXTURE if not s.cuda] and diagnosis.unrunnable == ()
    assert "run `docker run --rm --gpus all IMAGE nvidia-smi` there" in diagnosis.unknown[0].reason


# -- the matrix ---------------------------------------------------------------------------------------


def test_a_cpu_only_matrix_runs_anywhere_an_engine_answers() -> None:
    cpu_only = tuple(s for s in FIXTURE if not s.cuda)
    assert [s.name for s in cpu_only] == ["2.13.0-py3.11-cpu-debian12"]
    with_gpu = assess(facts(info=NVIDIA_INFO, run=smi("580.95.05, L4\n")), cpu_only)
    assert names(with_gpu.runnable) == ["2.13.0-py3.11-cpu-debian12"] and with_gpu.ok
    assert with_gpu.newest == cpu_only[0] and with_gpu.newest_gpu is None
    assert not any("runs every CUDA image" in line for line in with_gpu.advice)
    assert cpu_only[0].refs[0] == "127.0.0.1:5000/torch-images-test/pytorch:2.13.0-py3.11-cpu-debian12"
    assert f"docker run --rm -it --ipc=host {cpu_only[0].refs[0]}" in format_diagnosis(with_gpu)
    without_engine = assess(facts(info=None), cpu_only)
    assert names(without_engine.runnable) == ["2.13.0-py3.11-cpu-debian12"] and not without_engine.ok


def test_a_cuda_image_with_no_recorded_minimum_is_unknown_not_runnable() -> None:
    cuda: ImageSpec = dataclasses.replace(FIXTURE[1], min_driver=None)
    diagnosis = assess(facts(info=NVIDIA_INFO, run=smi("610.43.02, L4\n")), [cuda])
    assert (names(diagnosis.runnable), names(diagnosis.unknown)) == ([], [cuda.name])
    assert diagnosis.unknown[0].reason == "the matrix records no minimum driver for CUDA 13.0"
    assert not diagnosis.ok and diagnosis.newest is None
    assert any("CUDA 13.0 images have no recorded minimum driver" in line for line in diagnosis.advice)
    text = format_diagnosis(diagnosis)
    assert "Unknown (1):" in text and "NOT OK: no image of the matrix can run here." in text


def test_the_shipped_and_test_matrices_record_a_minimum_driver_for_every_cuda_image() -> None:
    assert all(s.min_driver for s in SHIPPED + FIXTURE if s.cuda)
    assert {s.min_driver for s in FIXTURE if s.cuda} == {"580.95.05"}


# -- /dev/shm -----------------------------------------------------------------------------------------


def test_shm_advice_is_always_given_and_the_hosts_size_is_reported(tmp_path: Path) -> None:
    got = facts(info=PLAIN_INFO, shm_path=str(tmp_path))
    assert got.shm_bytes is not None and got.shm_bytes > 0
    diagnosis = assess(got, FIXTURE)
    shm = [line for line in diagnosis.advice if "/dev/shm" in line]
    assert len(shm) == 1 and "64 MB" in shm[0] and "--ipc=host" in shm[0] and "--shm-size=8g" in shm[0]
    assert f"/dev/shm on this host: {got.shm_bytes / 1024**3:.1f} GiB" in format_diagnosis(diagnosis)
    missing = facts(info=PLAIN_INFO, shm_path=str(tmp_path / "absent"))
    assert missing.shm_bytes is None
    assert "/dev/shm on this host: unknown" in format_diagnosis(assess(missing, FIXTURE))
    small = assess(dataclasses.replace(got, shm_bytes=64 * 1024**2), FIXTURE)
    assert any(line.endswith("(prefer --shm-size here: the host's is small)") for line in small.advice)
    assert not any("prefer --shm-size" in line for line in assess(dataclasses.replace(got, shm_bytes=8 * 1024**3), FIXTURE).advice)
