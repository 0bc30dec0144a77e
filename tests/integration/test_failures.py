"""Bad entries fail alone, with a clear message, and leave nothing tagged or pushed; a dead registry fails the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
import yaml

from torchimages.engine import Engine
from torchimages.matrix import load_matrix
from torchimages.model import BuildResult
from torchimages.pipeline import WHEELS_REPOSITORY
from torchimages.testing.engines import copy_image, scratch_engine
from torchimages.testing.services import ScratchRegistry, ensure_engine, process_alive
from torchimages.testing.testenv import in_registry

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"
WHEELHOUSE = ROOT / "build" / "wheelhouse"
UNBUFFERED = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed, for tests that react to one


def _matrix(tmp_path: Path, *, registry: str, repository: str, images: list[dict]) -> Path:
    data = yaml.safe_load(FIXTURE.read_text())
    data["target"] = {"registry": registry, "repository": repository}
    data["images"] = images
    path = tmp_path / "images.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False)


def test_a_broken_entry_fails_alone_and_nothing_of_it_is_tagged_or_pushed(
    engine: Engine, built: list[BuildResult], tmp_path: Path, untag_after: Callable[[Path], None]
) -> None:
    fixture = yaml.safe_load(FIXTURE.read_text())["images"]
    cpu, cuda = fixture[0], fixture[1]
    images = [
        {**cpu, "packages": ["torch-images-no-such-package==0.0.1"]},  # fails while fetching wheels
        {**cuda, "flavours": ["devel"], "apt_packages": ["torch-images-no-such-package"]},  # fails inside the build
        {**cuda, "flavours": ["runtime"]},  # builds (reusing the verified image of the session build)
    ]
    config = _matrix(tmp_path, registry="127.0.0.1:5000", repository="torch-images-test/failures", images=images)
    untag_after(config)
    out = tmp_path / "out"
    done = _invoke("build", "--config", str(config), "--push", "--out-dir", str(out), "--wheelhouse", str(WHEELHOUSE))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    records = {r["name"]: r for r in json.loads((out / "report.json").read_text())["images"]}
    errors = "\n".join(f"{name}: {record['error']}" for name, record in records.items())
    assert "2 of 3 images failed" in done.stderr, errors + "\n" + done.stdout[-4000:]
    assert done.stderr.count(": the end of ") == 2  # each failed image's log tail is shown
    bad_pip, bad_apt, good = (records[name] for name in sorted(records, key=lambda n: ("cpu" not in n, "runtime" in n)))
    assert bad_pip["status"] == "failed" and "torch-images-no-such-package" in bad_pip["error"]
    assert bad_apt["status"] == "failed" and "for pkg in ca-certificates" in bad_apt["error"], bad_apt["error"]  # the image's apt step
    assert "torch-images-no-such-package" in bad_apt["error"]
    assert good["status"] in ("built", "unchanged") and good["pushed"], good
    for record in (bad_pip, bad_apt):
        assert record["pushed"] == [] and record["verified"] is False
        tags = [f"127.0.0.1:5000/torch-images-test/failures:{t}" for t in (record["name"],)]
        for ref in tags:
            assert engine.image(ref) is None, f"{ref} is tagged locally"
            assert not in_registry(ref), f"{ref} was pushed"


def test_push_to_a_stopped_registry_exits_non_zero_with_a_clear_message(
    built: list[BuildResult], tmp_path: Path, untag_after: Callable[[Path], None]
) -> None:
    fixture = yaml.safe_load(FIXTURE.read_text())["images"]
    config = _matrix(tmp_path, registry="127.0.0.1:5999", repository="torch-images-test/nowhere", images=[fixture[0]])
    untag_after(config)
    done = _invoke("build", "--config", str(config), "--push", "--out-dir", str(tmp_path / "out"))
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert "push of 127.0.0.1:5999/torch-images-test/nowhere" in output
    record = json.loads((tmp_path / "out" / "report.json").read_text())["images"][0]
    assert record["status"] == "failed" and record["pushed"] == []
    assert record["verified"] is True  # verification passed; only the push failed, and the report says so


def test_an_image_that_fails_verification_is_removed_and_never_reused(
    engine: Engine, built: list[BuildResult], tmp_path: Path, untag_after: Callable[[Path], None]
) -> None:
    # The same wheels as the session's CPU image (its layers come from the cache), but a module that is not there.
    config = _matrix(
        tmp_path,
        registry="127.0.0.1:5000",
        repository="torch-images-test/unverified",
        images=[yaml.safe_load(FIXTURE.read_text())["images"][0]],
    )
    data = yaml.safe_load(config.read_text())
    # A name of this run's own: the engine is shared, and a run killed mid-verification elsewhere may have left an image
    # labelled with a fixed name (never reused, as it is unsealed, but it would be counted here).
    missing = f"torch_images_no_such_module_{uuid.uuid4().hex[:8]}"
    data["packages"] = [{"pip": "tqdm", "import": missing} if p == "tqdm" else p for p in data["packages"]]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    untag_after(config)
    marker = f"org.torch-images.packages={','.join(load_matrix(config).images[0].modules)}"
    assert missing in marker
    for attempt in range(2):  # the second run must not find (and reuse) what the first one built
        done = _invoke("build", "--config", str(config), "--out-dir", str(tmp_path / f"out{attempt}"), "--wheelhouse", str(WHEELHOUSE))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "verification failed" in done.stdout and missing in done.stdout, done.stdout
        assert "unchanged" not in done.stdout
        leftovers = docker.from_env().api.images(filters={"label": marker}, quiet=True, all=True)
        assert leftovers == [], f"the unverified image is still in the engine: {leftovers}"


def test_sigint_mid_build_stops_everything_and_tags_nothing(
    engine: Engine, built: list[BuildResult], tmp_path: Path, untag_after: Callable[[Path], None]
) -> None:
    fixture = yaml.safe_load(FIXTURE.read_text())["images"]
    # The first image installs a Debian package (its apt step takes a while); the second must never start.
    images = [{**fixture[0], "apt_packages": ["cowsay"]}, {**fixture[1], "flavours": ["runtime"]}]
    config = _matrix(tmp_path, registry="127.0.0.1:5000", repository="torch-images-test/interrupted", images=images)
    untag_after(config)
    first, second = load_matrix(config).images
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "invoke",
        "build",
        "--config",
        str(config),
        "--push",
        "--out-dir",
        str(out),
        "--wheelhouse",
        str(WHEELHOUSE),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=UNBUFFERED)
    seen, signalled = [], time.monotonic()  # reset when the signal is sent
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if f"[{first.name}] step " in line and "for pkg in ca-certificates" in line:  # the apt step of the first image is running
                process.send_signal(signal.SIGINT)
                signalled = time.monotonic()
                break
        output = "".join(seen) + process.communicate(timeout=600)[0]
        stopped_after = time.monotonic() - signalled
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert "Traceback" not in output
    records = {r["name"]: r for r in json.loads((out / "report.json").read_text())["images"]}
    # Cancelled while it ran, not left to finish and then kept from the tags.
    assert records[first.name]["status"] == "cancelled" and "while running" in records[first.name]["error"], records[first.name]
    assert stopped_after < 60, f"the run took {stopped_after:.0f} s to stop"
    assert (records[second.name]["status"], records[second.name]["error"]) == ("cancelled", "interrupted before it started")
    for spec in (first, second):
        for ref in spec.refs:
            assert engine.image(ref) is None, f"{ref} is tagged"
            assert not in_registry(ref), f"{ref} was pushed"
    api = docker.from_env().api
    deadline = time.monotonic() + 30  # dockerd removes a cancelled step's container as it unwinds
    while api.containers(all=True) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert api.containers(all=True) == [], "a build or verification container was left behind"


def test_a_registry_killed_mid_push_fails_the_image_and_a_rerun_completes(
    built: list[BuildResult], scratch_registry: ScratchRegistry, tmp_path: Path, untag_after: Callable[[Path], None]
) -> None:
    repository = "torch-images-test/killed"
    images = [yaml.safe_load(FIXTURE.read_text())["images"][0]]  # the CPU image, reused from the session build
    config = _matrix(tmp_path, registry=scratch_registry.address, repository=repository, images=images)
    untag_after(config)
    (spec,) = load_matrix(config).images
    command = [sys.executable, "-m", "invoke", "build", "--config", str(config), "--push", "--wheelhouse", str(WHEELHOUSE)]
    process = subprocess.Popen(
        [*command, "--out-dir", str(tmp_path / "out1")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=UNBUFFERED,
    )
    seen = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if f"[{spec.name}] pushing to" in line:
                time.sleep(1.5)  # some layers are on their way
                scratch_registry.kill()
                break
        output = "".join(seen) + process.communicate(timeout=900)[0]
    finally:
        process.kill()
    assert process.returncode == 1, output
    assert "Traceback" not in output and f"push of {spec.refs[0]} failed" in output, output
    record = json.loads((tmp_path / "out1" / "report.json").read_text())["images"][0]
    assert (record["status"], record["verified"], record["pushed"]) == ("failed", True, [])
    scratch_registry.start()  # back, on the same storage
    for tag in scratch_registry.tags(repository):  # whatever got through names a whole image
        assert scratch_registry.manifest_complete(repository, tag), f"{tag} points at a partial image"
    rerun = _invoke("build", *command[4:], "--out-dir", str(tmp_path / "out2"))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert sorted(scratch_registry.tags(repository)) == sorted(spec.tags)
    assert all(scratch_registry.manifest_complete(repository, tag) for tag in spec.tags)


def test_dockerd_killed_mid_build_is_one_clear_message_and_the_next_run_works(
    engine: Engine, built: list[BuildResult], tmp_path: Path, untag_after: Callable[[Path], None]
) -> None:
    pid_file = Path("/var/run/docker.pid")
    if os.geteuid() != 0 or not pid_file.exists():
        pytest.skip("needs the dockerd that `invoke testenv` runs as root, to kill it and start it again")
    images = [{**yaml.safe_load(FIXTURE.read_text())["images"][0], "apt_packages": ["sl"]}]  # an apt step: a build that takes a while
    # A build cut off with its engine cannot drop its cache records, nor the run its wheels image: this test does.
    cache_before, wheels_before = engine.build_cache_ids(), set(engine.tags_of(WHEELS_REPOSITORY))
    config = _matrix(tmp_path, registry="127.0.0.1:5000", repository="torch-images-test/engine-killed", images=images)
    untag_after(config)
    (spec,) = load_matrix(config).images
    command = [sys.executable, "-m", "invoke", "build", "--config", str(config), "--wheelhouse", str(WHEELHOUSE)]
    process = subprocess.Popen(
        [*command, "--out-dir", str(tmp_path / "out1")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=UNBUFFERED,
    )
    seen, daemon = [], 0
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if f"[{spec.name}] step " in line and "for pkg in ca-certificates" in line:  # the apt step is running inside dockerd
                daemon = int(pid_file.read_text())
                os.kill(daemon, signal.SIGKILL)
                break
        output = "".join(seen) + process.communicate(timeout=600)[0]
    finally:
        process.kill()
        deadline = time.monotonic() + 30
        while daemon and time.monotonic() < deadline and process_alive(daemon):
            time.sleep(0.2)
        ensure_engine(print)  # the engine comes back for every test that follows, also when this one fails
        engine.drop_build_cache(cache_before)
        for ref in set(engine.tags_of(WHEELS_REPOSITORY)) - wheels_before:
            engine.remove_image(ref, force=True)
    assert process.returncode == 1, output
    assert "Traceback" not in output, output
    record = json.loads((tmp_path / "out1" / "report.json").read_text())["images"][0]
    assert record["status"] == "failed" and "Docker engine" in record["error"], record["error"]
    rerun = _invoke("build", *command[4:], "--out-dir", str(tmp_path / "out2"))
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert engine.image(spec.refs[0]) is not None


def test_a_full_disk_while_fetching_wheels_is_one_clear_message_and_nothing_is_tagged(
    engine: Engine, built: list[BuildResult], tmp_path: Path, untag_after: Callable[[Path], None]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    try:
        images = [yaml.safe_load(FIXTURE.read_text())["images"][0]]
        config = _matrix(tmp_path, registry="127.0.0.1:5000", repository="torch-images-test/disk-full", images=images)
        untag_after(config)
        (spec,) = load_matrix(config).images
        done = _invoke("build", "--config", str(config), "--out-dir", str(tmp_path / "out"), "--wheelhouse", str(small / "wheelhouse"))
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert "No space left on device" in output, output[-3000:]
    record = json.loads((tmp_path / "out" / "report.json").read_text())["images"][0]
    assert record["status"] == "failed" and record["tags"] == [] and record["pushed"] == []
    assert engine.image(spec.refs[0]) is None


def test_a_disk_that_fills_inside_a_build_is_one_clear_message_and_nothing_is_tagged_or_pushed(
    engine: Engine, tmp_path: Path, untag_after: Callable[[Path], None]
) -> None:
    """An engine of the test's own whose disk (2 GB) holds the base and the wheels the context brings (about 0.4 GB
    each: the upload, then their COPY) but not the CPU image's venv as well (about 1.5 GB): pip fails inside
    the build, and the run says so in pip's words, tags nothing there, and pushes nothing."""
    if os.geteuid() != 0:
        pytest.skip("a second dockerd on a small disk needs root")
    images = [yaml.safe_load(FIXTURE.read_text())["images"][0]]
    config = _matrix(tmp_path, registry="127.0.0.1:5000", repository="torch-images-test/build-disk-full", images=images)
    untag_after(config)
    (spec,) = load_matrix(config).images
    with scratch_engine(disk="2g") as small:
        copy_image(engine, small, spec.base_image)  # its own network reaches no registry
        command = [sys.executable, "-m", "invoke", "build", "--config", str(config), "--push", "--out-dir", str(tmp_path / "out")]
        done = subprocess.run(
            [*command, "--wheelhouse", str(WHEELHOUSE)], cwd=ROOT, env=small.environment(), capture_output=True, text=True, timeout=1800
        )
        left = [tag for image in small.client().images.list() for tag in image.tags]
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output[-3000:]
    record = json.loads((tmp_path / "out" / "report.json").read_text())["images"][0]
    assert record["status"] == "failed" and record["verified"] is False and record["pushed"] == [], record
    # pip's OSError, or Docker's own words when the disk fills while the context's wheels are copied in
    assert "no space left on device" in record["error"].lower() and "(at step " in record["error"], record["error"]
    assert f"FAILED: {record['error']}" in output  # the same one line on the console
    assert not set(spec.refs) & set(left), left
    assert not any(in_registry(ref) for ref in spec.refs)
