"""The invoke CLI: bad input ends in one clear message and exit 1, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchimages.config import ConfigError, load_document
from torchimages.matrix import build_matrix

ROOT = Path(__file__).parents[2]


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_bad_matrix_file_is_one_message_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('target: {repository: x/y}\nimages:\n  - {torch: "2.5.1", cuda: "11.2", python: 3.10, os: ubuntu22.04}\n')
    done = invoke("build", "--config", str(bad))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"{bad}:3:") and "images[0].cuda" in lines[0] or "images[0].python" in lines[0]
    assert lines[-1] == "2 problems found; nothing was done."


def test_missing_file_is_a_clear_message(tmp_path: Path) -> None:
    done = invoke("matrix", "--config", str(tmp_path / "nope.yaml"))
    assert done.returncode == 1 and done.stderr.strip().startswith(f"{tmp_path / 'nope.yaml'}:1:1: file not found")


def test_bad_flag_values_are_refused() -> None:
    assert invoke("matrix", "--format", "xml").returncode == 2
    done = invoke("build", "--gpus", "some")
    assert done.returncode == 2 and "--gpus must be auto, all or none" in done.stderr


def test_filters_that_match_nothing_say_so() -> None:
    done = invoke("matrix", "--cuda", "10.0")
    assert done.returncode == 1 and "no image in images.yaml matches" in done.stderr


def test_matrix_json_lists_wheel_and_base_for_cuda_11_2() -> None:
    done = invoke("matrix", "--cuda", "11.2", "--format", "json")
    assert done.returncode == 0, done.stderr
    images = json.loads(done.stdout)["images"]
    assert images and all(i["wheel_variant"] == "cu111" and i["base_image"].startswith("nvidia/cuda:11.2.") for i in images)
    assert all(i["tags"] and i["cudnn"] == "8" and i["python"] == "3.8" for i in images)
    assert {i["min_driver"] for i in images} == {"460.32.03"}  # Table 3 for 11.2.2, the base's patch release
    one = next(i for i in images if i["torch"] == "1.10.1")
    assert one["requirements"] == ["torch==1.10.1+cu111", "torchvision==0.11.2+cu111", "torchaudio==0.10.1+cu111"]
    assert set(one["wheel_indexes"].values()) == {"https://download.pytorch.org/whl/cu111"}


def test_dry_run_names_every_ref_and_needs_no_engine() -> None:
    done = invoke("build", "--cuda", "11.2", "--flavour", "devel", "--dry-run", "--push")
    assert done.returncode == 0, done.stderr
    refs = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ghcr.io/")]
    assert len(refs) == 6 and all(":" in ref and "cuda11.2" in ref for ref in refs)
    assert "would build and verify 3 images, then push:" in done.stdout


def test_compat_show_lists_tags_and_pending_releases() -> None:
    done = invoke("compat.show", "--cuda", "12.3", "--torch", "2.15.0")
    assert done.returncode == 0, done.stderr
    assert "nvidia/cuda:12.3.2-cudnn9-devel-ubuntu22.04" in done.stdout
    assert "torch 2.15.0: torchvision 0.29.2, torchaudio 2.11.0" in done.stdout
    assert invoke("compat.show", "--cuda", "12.99").returncode == 1


def test_github_matrix_jobs_partition_the_images_and_keep_each_venv_on_one_runner() -> None:
    from torchimages.matrix import Filters, load_matrix

    done = invoke("matrix", "--format", "github")
    include = json.loads(done.stdout)["include"]
    images = load_matrix(ROOT / "images.yaml", use_environment=False).images
    jobs = [
        [s.name for s in images if Filters((i["cuda"],), (i["torch"],), (i["python"],), tuple(i["flavours"].split())).select(s)]
        for i in include
    ]  # what each job's `invoke build` filters select, as the workflow passes them
    assert sorted(name for job in jobs for name in job) == sorted(s.name for s in images)  # every image, once
    by_name = {s.name: s for s in images}
    for job in jobs:  # the images of a job share one venv stage; no two jobs build the same one
        assert len({(by_name[n].venv_base_image, by_name[n].python, by_name[n].torch) for n in job}) == 1, job
    assert any(len(job) == 2 for job in jobs) and len(jobs) >= 10


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
    st.sampled_from(["2.5.1", "12.4", "cpu", "3.10", "ubuntu22.04", "runtime", "devel"]),
)  # fmt: skip
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["torch", "cuda", "python", "os", "flavours", "images", "target", "x"]), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(yaml_values)
def test_any_yaml_document_is_a_matrix_or_a_clean_error(value: object) -> None:
    text = json.dumps(value)  # JSON is YAML: every generated structure is a real document
    try:
        build_matrix(load_document("p.yaml", text=text), base_mirror="")
    except ConfigError as exc:
        assert exc.problems and all(str(p).startswith("p.yaml:") for p in exc.problems)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_a_matrix_or_a_clean_error(text: str) -> None:
    try:
        build_matrix(load_document("p.yaml", text=text), base_mirror="")
    except ConfigError as exc:
        assert exc.problems


pytestmark = pytest.mark.filterwarnings("error")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("build", "--jobs", "two"), "--jobs must be a whole number, not 'two'"),
        (("build", "--jobs", "0"), "--jobs must be at least 1, not 0"),
        (("run", "--jupyter-port", "http"), "--jupyter-port must be a whole number, not 'http'"),
        (("run", "--gpus", "some"), "--gpus must be auto, all or none, not 'some'"),
        (("run", "--tensorboard-port", "70000"), "--tensorboard-port must be at most 65535, not 70000"),
        (("run", "--jupyter", "--tensorboard", "runs", "--dry-run"), "--jupyter and --tensorboard start one server each"),
    ],
)
def test_bad_numbers_and_choices_are_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    done = invoke(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == message or done.stderr.strip().startswith(message), done.stderr
    assert "Traceback" not in done.stderr


def test_a_reader_that_stops_early_ends_the_task_quietly() -> None:
    # `true` exits at once, long before the task has loaded the matrix, so the writer always meets a closed pipe.
    script = f"{sys.executable} -m invoke matrix --format json | true; echo $(( PIPESTATUS[0] ))"
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "141", done.stdout + done.stderr
    assert done.stderr == ""


def test_run_dry_run_prints_the_docker_command_for_the_chosen_image() -> None:
    done = invoke("run", "--config", "tests/fixtures/images.yaml", "--cuda", "13.0", "--gpus", "all", "--dry-run", "--", "python", "-V")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("docker run --rm --init -i --gpus all --ipc=host --user ")
    assert done.stdout.strip().endswith(":2.13.0-py3.11-cuda13.0-cudnn9-runtime-debian12 python -V")
    assert "2 images match; running 2.13.0-py3.11-cuda13.0-cudnn9-runtime-debian12" in done.stderr


def test_run_from_a_project_folder_uses_the_checkout_s_matrix_and_mounts_the_project(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "invoke", "-r", str(ROOT), "run", "--cuda", "cpu", "--gpus", "none", "--dry-run", "--", "python", "-V"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f" -v {tmp_path}:/workspace " in done.stdout and ":2.14.1-py3.12-cpu-ubuntu24.04 python -V" in done.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 300)), "nested deeper than 32 levels"),
        ("[" * 3000 + "]" * 3000, "nested deeper than 32 levels"),
        ("# " + "x" * 1_100_000 + "\n", "larger than 1000 kB"),
    ],
    ids=["deep-mapping", "deep-flow-sequence", "huge"],
)
def test_hostile_files_end_in_one_line_not_a_traceback(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(content)
    done = invoke("matrix", "--config", str(path))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.splitlines()[0].startswith(f"{path}:1:1: {message}")


def test_dev_zero_is_refused_by_size() -> None:
    done = invoke("matrix", "--config", "/dev/zero")
    assert done.returncode == 1 and done.stderr.startswith("/dev/zero:1:1: larger than 1000 kB"), done.stderr


def test_control_characters_from_the_file_are_shown_as_escapes(tmp_path: Path) -> None:
    path = tmp_path / "ansi.yaml"
    path.write_text('target: {repository: x/y}\n"\\e[2J\\nall good\\u202e": 1\nimages: [{torch: "2.11.0", cuda: "12.8", python: "3.12"}]\n')
    done = invoke("matrix", "--config", str(path))
    assert done.returncode == 1
    assert "\x1b" not in done.stderr and "\u202e" not in done.stderr
    assert done.stderr.splitlines()[0].startswith(f"{path}:2:1: \\x1b[2J\\nall good\\u202e: unknown key")


def test_a_config_error_never_prints_an_index_password(tmp_path: Path) -> None:
    path = tmp_path / "cred.yaml"
    path.write_text('target: {repository: x/y}\nwheels: {pytorch_index: "https://u:s3cret@idx.example/whl x"}\nimages: []\n')
    done = invoke("matrix", "--config", str(path))
    assert done.returncode == 1 and "https://***@idx.example/whl x" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr


def test_rendering_another_matrix_never_touches_the_checked_in_dockerfiles(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    # The same images with one more system package: the other matrix's Dockerfiles differ from the shipped ones.
    other.write_text(
        (ROOT / "tests" / "fixtures" / "images.yaml").read_text().replace('python: "3.11"', 'python: "3.11"\n    apt_packages: [sl]')
    )
    shipped = ROOT / "dockerfiles" / "generated" / "2.13.0-py3.11-cpu-debian12" / "Dockerfile"
    before = shipped.read_bytes()
    done = invoke("render", "--config", str(other), "--out-dir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    written = tmp_path / "out" / "dockerfiles" / "2.13.0-py3.11-cpu-debian12" / "Dockerfile"
    assert written.exists() and " sl;" in written.read_text() and b" sl;" not in before
    assert shipped.read_bytes() == before
