"""Build the test matrix for real, verify inside the images, push, pull back by digest, verify again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from torchimages.engine import Engine
from torchimages.model import BuildResult
from torchimages.registry import RegistryClient
from torchimages.testing.testenv import REGISTRY
from torchimages.verify import run_verify

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"
WHEELHOUSE = ROOT / "build" / "wheelhouse"


def test_every_image_is_verified_and_pushed_with_a_digest(report: dict, fixture_matrix) -> None:
    assert sorted(i["name"] for i in report["images"]) == sorted(s.name for s in fixture_matrix.images)
    for image in report["images"]:
        assert image["status"] in ("built", "unchanged"), image["error"]
        assert image["verified"] is True
        assert image["error"] is None
        refs = [p["ref"] for p in image["pushed"]]
        assert refs == image["tags"] and len(refs) >= 2
        digests = {p["digest"] for p in image["pushed"]}
        assert len(digests) == 1 and next(iter(digests)).startswith("sha256:"), digests


def test_the_registry_serves_the_recorded_digest(report: dict) -> None:
    for image in report["images"]:
        for pushed in image["pushed"]:
            name, tag = pushed["ref"].removeprefix(f"{REGISTRY}/").rsplit(":", 1)
            request = urllib.request.Request(
                f"http://{REGISTRY}/v2/{name}/manifests/{tag}",
                method="HEAD",
                headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.headers["Docker-Content-Digest"] == pushed["digest"]


def test_the_runtime_and_devel_images_share_one_venv_blob_in_the_registry(report: dict) -> None:
    """The venv is stored once for both flavours: the same blob, by digest, in both manifests."""
    pushed = {image["name"].split("-")[-2]: image["pushed"][0]["ref"] for image in report["images"] if "-cuda" in image["name"]}
    images = {flavour: RegistryClient().image(ref) for flavour, ref in pushed.items()}
    assert all(images.values()), images
    layers = {flavour: dict(image.layers.values()) for flavour, image in images.items() if image is not None}
    shared = {digest: size for digest, size in layers["runtime"].items() if digest in layers["devel"]}
    venv = max(shared.values(), default=0)
    assert venv > 1_000_000_000, f"the largest blob both share is {venv} bytes"


def test_a_build_with_nothing_changed_builds_nothing_and_needs_no_network(
    built: list[BuildResult], build_dir: Path, tmp_path: Path
) -> None:
    """With the session's locks, the second `invoke build` decides every image is unchanged in a network namespace
    of its own with no interface up: no index, registry or wheel is asked for (the engine's socket is a file)."""
    if os.geteuid() != 0:
        pytest.skip("unshare --net needs root")
    out = tmp_path / "out"
    shutil.copytree(build_dir / "locks", out / "locks")
    command = ["unshare", "--net", sys.executable, "-m", "invoke", "build", "--config", str(FIXTURE), "--out-dir", str(out)]
    done = subprocess.run([*command, "--wheelhouse", str(WHEELHOUSE)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = json.loads((out / "report.json").read_text())["images"]
    assert {r["name"]: r["status"] for r in records} == {r.spec.name: "unchanged" for r in built}
    assert {r["name"]: r["image_id"] for r in records} == {r.spec.name: r.image_id for r in built}
    assert "building" not in done.stdout and "pulling" not in done.stdout, done.stdout


def test_labels_carry_what_verification_saw(engine: Engine, built: list[BuildResult]) -> None:
    for result in built:
        info = engine.image(result.tags[0])
        assert info is not None
        seen = result.verify
        labels = info.labels
        assert labels["org.torch-images.verified"] == "true"
        assert labels["org.torch-images.verified-build"] == labels["org.torch-images.build-hash"]
        assert labels["org.torch-images.verified-gpu"] in ("true", "false")
        assert labels["org.opencontainers.image.created"]
        if seen is not None:  # an unchanged image keeps the labels of the run that verified it
            assert labels["org.torch-images.torch"] == seen.torch
            assert labels["org.torch-images.cudnn"] == (seen.cudnn or "none")
        if result.spec.cuda is None:
            assert labels["org.torch-images.torch"].endswith("+cpu")
            assert labels["org.torch-images.cuda"] == "none"
        else:
            assert labels["org.torch-images.cuda"] == result.spec.wheel_cuda
            assert labels["org.torch-images.cudnn"].split(".")[0] == result.spec.cudnn
            assert labels["org.torch-images.base-cuda"] == result.spec.cuda


def test_a_cpu_promise_fails_inside_a_cuda_image_and_vice_versa(engine: Engine, built: list[BuildResult]) -> None:
    for result in built:
        flipped = "13.0" if result.spec.cuda is None else "none"
        outcome = engine.run(result.tags[0], ["torch-verify", "--expect-cuda", flipped], timeout=300)
        assert outcome.exit_code == 1, outcome.output
        assert "FAIL" in outcome.output


def test_devel_image_compiles_with_nvcc_and_runtime_has_no_second_cuda(engine: Engine, built: list[BuildResult]) -> None:
    for result in built:
        if result.spec.flavour == "devel":
            outcome = engine.run(result.tags[0], ["nvcc", "-V"], timeout=60)
            assert outcome.exit_code == 0 and f"release {result.spec.cuda}" in outcome.output, outcome.output
        if result.spec.flavour == "runtime":
            # Torch wheels bring their own cuDNN and cuBLAS; the base must not carry a second copy.
            find = "find / -xdev \\( -name 'libcudnn*.so*' -o -name 'libcublas*.so*' \\) -not -path '/opt/venv/*' 2>/dev/null"
            outcome = engine.run(result.tags[0], ["sh", "-c", find], user="0:0", timeout=120)
            assert outcome.exit_code == 0 and outcome.output.strip() == "", outcome.output


def test_images_run_as_non_root_and_as_any_user(engine: Engine, cpu_image: str) -> None:
    whoami = engine.run(cpu_image, ["sh", "-c", "id -u; pwd"], timeout=60)
    assert whoami.output.split() == ["1000", "/workspace"]
    probe = (
        "import getpass, pathlib, torch; home = pathlib.Path.home(); (home / 'probe').write_text('ok'); "
        "print(getpass.getuser(), home, torch.ones(2).sum().item())"
    )
    outcome = engine.run(cpu_image, ["python", "-c", probe], user="4242:4242", timeout=120)
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.split() == ["researcher", "/home/researcher", "2.0"]


def test_no_package_caches_are_left_in_the_image(engine: Engine, built: list[BuildResult]) -> None:
    dirs = "/root/.cache /home/researcher/.cache /var/lib/apt/lists /var/cache/apt/archives"
    script = f"ls -A {dirs} 2>/dev/null | grep -v -e '^/' -e '^$' -e '^partial$' -e '^lock$' -e '^auxfiles$' || true"
    for result in built:
        outcome = engine.run(result.tags[0], ["sh", "-c", script], user="0:0", timeout=60)
        assert outcome.output.strip() == "", f"{result.spec.name}: {outcome.output}"


def test_pull_back_by_digest_and_verify_again(engine: Engine, built: list[BuildResult]) -> None:
    for result in built:
        digest_ref = f"{result.spec.repository}@{result.pushed[0].digest}"
        for ref in result.tags:
            engine.remove_image(ref)
        engine.remove_image(result.image_id, force=True)
        assert engine.image(result.tags[0]) is None
        engine.pull(digest_ref)
        report = run_verify(engine, digest_ref, gpus=False)
        assert report.ok, [f"{c.name}: {c.detail}" for c in report.failures]
        assert report.torch is not None and report.torch.split("+")[0] == result.spec.torch
        for ref in result.tags:  # put the tags back for the tests that follow
            engine.pull(ref)


def test_invoke_verify_prints_a_table_and_json(cpu_image: str) -> None:
    root = Path(__file__).parents[2]
    table = subprocess.run([sys.executable, "-m", "invoke", "verify", "--image", cpu_image], cwd=root, capture_output=True, text=True)
    assert table.returncode == 0, table.stdout + table.stderr
    assert table.stdout.strip().endswith(f"{cpu_image}: verified")
    assert any(line.startswith("tensorboardX") and "PASS" in line for line in table.stdout.splitlines())
    as_json = subprocess.run(
        [sys.executable, "-m", "invoke", "verify", "--image", cpu_image, "--json", "--gpus", "none"],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    document = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and document["ok"] is True and document["torch"].endswith("+cpu")


def test_one_torch_release_in_two_variants_each_image_with_its_own(report: dict, built: list[BuildResult]) -> None:
    """The CPU build (from find-links) and PyPI's CUDA build of the same torch, resolved and built in the same run."""
    cpu = next(r for r in built if r.spec.cuda is None)
    cuda = [r for r in built if r.spec.cuda is not None]
    assert {r.spec.torch for r in cuda} == {cpu.spec.torch}
    records = {i["name"]: i for i in report["images"]}
    assert all(r.verified for r in built), [(r.spec.name, r.error) for r in built if not r.verified]
    assert records[cpu.spec.name]["torch"] == f"{cpu.spec.torch}+cpu" and records[cpu.spec.name]["cuda"] is None
    for result in cuda:
        variant = result.spec.wheel_variant
        record = records[result.spec.name]
        assert (record["torch"], record["cuda"]) == (f"{result.spec.torch}+{variant}", result.spec.wheel_cuda)
        assert record["torchvision"].endswith(f"+{variant}") and record["torchaudio"].endswith(f"+{variant}"), record
        if result.verify is not None and result.status == "built":  # the in-image check of both companions ran and passed
            checks = {c.name: c.status for c in result.verify.checks}
            assert checks["torchvision.build"] == checks["torchaudio.build"] == "pass", checks


def test_uv_installed_the_venv_which_runs_the_locked_pip_and_holds_no_uv(
    engine: Engine, cpu_image: str, build_dir: Path, built: list[BuildResult]
) -> None:
    """The lock's uv installs it in the build and stays there; the venv's pip is the locked one, for derived images."""
    cpu = next(r for r in built if r.spec.cuda is None)
    lock = json.loads((build_dir / "locks" / f"{cpu.spec.name}.json").read_text())
    (locked_pip,) = [f["version"] for f in lock["files"] if f["name"] == "pip"]
    assert [f["version"] for f in lock["files"] if f["name"] == "uv"] == ["0.13.9"]
    outcome = engine.run(cpu_image, ["pip", "--version"], timeout=60)
    assert outcome.exit_code == 0 and outcome.output.split()[:2] == ["pip", locked_pip], outcome.output
    # INSTALLER files end without a newline: awk prints each as a line of its own.
    script = "awk 1 /opt/venv/lib/python*/site-packages/*.dist-info/INSTALLER | sort | uniq -c; command -v uv || echo no-uv"
    outcome = engine.run(cpu_image, ["sh", "-c", script], timeout=60)
    rows = [line.split() for line in outcome.output.splitlines()]
    installers = {row[1]: int(row[0]) for row in rows if len(row) == 2 and row[0].isdigit()}
    assert installers == {"uv": len(lock["files"]) - 1}, outcome.output  # every locked file but uv's own, all by uv
    assert "no-uv" in outcome.output and "\nuv\n" not in outcome.output, outcome.output
