"""The GitHub workflow: zizmor-clean, least privilege, pinned actions, and pull requests never publish."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
BUILD = WORKFLOWS / "build.yml"
ZIZMOR = Path(sys.executable).parent / "zizmor"
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
# What the image job's publishing is gated on (normalised: no spaces, one kind of quote).
NOT_A_PULL_REQUEST = "github.event_name!='pull_request'"


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    loaded = yaml.safe_load(BUILD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the bare key `on` as the boolean True.
    found = workflow.get("on", workflow.get(True))
    assert isinstance(found, dict), "`on:` should map each event to its settings"
    return found


def steps(workflow: dict[Any, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Every step as (job id, job, step)."""
    return [(name, job, step) for name, job in workflow["jobs"].items() for step in job.get("steps", [])]


def normalised(expression: object) -> str:
    return re.sub(r"\s+", "", str(expression)).replace('"', "'")


def pushing_jobs(workflow: dict[Any, Any]) -> set[str]:
    return {name for name, _, step in steps(workflow) if "--push" in step.get("run", "")}


def gates_on_the_event(condition: object, env: dict[str, Any]) -> bool:
    """Whether a step `if:` or a run script's variables hold it to events other than pull_request."""
    text = normalised(condition)
    if NOT_A_PULL_REQUEST in text:
        return True
    return any(NOT_A_PULL_REQUEST in normalised(value) for name, value in env.items() if f"env.{name}" in text or f"${name}" in text)


@pytest.mark.skipif(not ZIZMOR.exists(), reason=f"zizmor is not installed next to {sys.executable} (scripts/bootstrap --dev)")
def test_zizmor_finds_nothing() -> None:
    done = subprocess.run(
        [str(ZIZMOR), "--offline", "--no-progress", "--color", "never", str(WORKFLOWS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"zizmor exit {done.returncode}:\n{done.stdout}\n{done.stderr}"


def test_top_level_permissions_grant_at_most_contents_read(workflow: dict[Any, Any]) -> None:
    assert "permissions" in workflow, "without top-level permissions every job gets the repository's default token scopes"
    assert workflow["permissions"] in ({}, {"contents": "read"})


def test_every_job_declares_its_permissions_and_only_the_pushing_job_writes_packages(workflow: dict[Any, Any]) -> None:
    pushers = pushing_jobs(workflow)
    assert pushers, "no step passes --push"
    for name, job in workflow["jobs"].items():
        permissions = job.get("permissions")
        assert isinstance(permissions, dict), f"job {name} declares no permissions"
        writes = {scope for scope, level in permissions.items() if level == "write"}
        assert writes == ({"packages"} if name in pushers else set()), f"job {name} writes {sorted(writes)}"


def test_runs_of_one_ref_queue_and_publishing_runs_are_not_cancelled(workflow: dict[Any, Any]) -> None:
    concurrency = workflow.get("concurrency")
    assert isinstance(concurrency, dict) and "github.workflow" in concurrency["group"] and "github.ref" in concurrency["group"]
    cancel = normalised(concurrency.get("cancel-in-progress", False))
    assert cancel in ("False", "${{github.event_name=='pull_request'}}"), f"cancel-in-progress: {cancel} may cancel a push"


def test_the_images_wait_for_the_plan_and_the_unit_tests(workflow: dict[Any, Any]) -> None:
    jobs = workflow["jobs"]
    for name in pushing_jobs(workflow):
        needs = jobs[name]["needs"]
        assert {"plan", "test"} <= set([needs] if isinstance(needs, str) else needs)
        assert jobs[name]["strategy"]["fail-fast"] is False
    assert any("scripts/bootstrap --dev && .venv/bin/invoke test --unit" in step.get("run", "") for step in jobs["test"]["steps"])


def test_every_action_is_pinned_to_a_commit_with_its_tag_named(workflow: dict[Any, Any]) -> None:
    uses = [step["uses"] for _, _, step in steps(workflow) if "uses" in step]
    assert uses
    unpinned = [use for use in uses if not SHA_PIN.match(use)]
    assert not unpinned, f"not pinned to a 40-hex commit: {unpinned}"
    # The tag comment is what a reviewer (and dependabot) reads; yaml drops comments, so read the text.
    for line in BUILD.read_text().splitlines():
        if re.match(r"\s*(- )?uses:", line):
            assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), f"no `# vX.Y.Z` after the pin: {line.strip()}"


def test_checkouts_keep_no_credentials(workflow: dict[Any, Any]) -> None:
    for name, _, step in steps(workflow):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, f"checkout in job {name} persists the token"


def test_no_expression_is_interpolated_into_a_script(workflow: dict[Any, Any]) -> None:
    for name, _, step in steps(workflow):
        assert "${{" not in step.get("run", ""), f"job {name}: pass expressions through env:, not into run: {step['run']!r}"


def test_pull_requests_never_log_in_nor_push(workflow: dict[Any, Any]) -> None:
    assert "pull_request" in triggers(workflow)
    for name, job, step in steps(workflow):
        env = {**job.get("env", {}), **step.get("env", {})}
        if "--push" in step.get("run", ""):
            assert gates_on_the_event(step.get("if", ""), env) or gates_on_the_event(step["run"], env), f"job {name} always pushes"
        if step.get("uses", "").startswith("docker/login-action@"):
            assert gates_on_the_event(step.get("if", ""), env), f"job {name} logs in on pull requests too"


def test_triggers_cover_main_pull_requests_manual_runs_and_a_weekly_rebuild(workflow: dict[Any, Any]) -> None:
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["paths"] == on["pull_request"]["paths"]
    assert {".github/workflows/build.yml", "requirements*.txt", "images.yaml"} <= set(on["push"]["paths"])
    assert "cuda" in on["workflow_dispatch"]["inputs"]
    # Weekly: one fixed minute, hour and weekday, every day of the month and every month.
    assert [len(entry["cron"].split()) for entry in on["schedule"]] == [5]
    minute, hour, day, month, weekday = on["schedule"][0]["cron"].split()
    assert (day, month) == ("*", "*") and all(field.isdigit() for field in (minute, hour, weekday)), on["schedule"]


def test_the_reports_and_logs_are_kept_even_when_a_build_fails(workflow: dict[Any, Any]) -> None:
    image = workflow["jobs"][next(iter(pushing_jobs(workflow)))]
    uploads = [step for step in image["steps"] if step.get("uses", "").startswith("actions/upload-artifact@")]
    assert uploads and "always()" in uploads[0]["if"]
    assert {"build/report.*", "build/logs/"} <= set(uploads[0]["with"]["path"].split())
    summary = [step for step in image["steps"] if "GITHUB_STEP_SUMMARY" in step.get("run", "")]
    assert summary and "always()" in summary[0]["if"] and "build/report.md" in summary[0]["if"] + summary[0]["run"]


def plan_script(workflow: dict[Any, Any]) -> str:
    (step,) = [step for step in workflow["jobs"]["plan"]["steps"] if step.get("id") == "plan"]
    return str(step["run"])


def run_plan(workflow: dict[Any, Any], tmp_path: Path, *, invoke_body: str, cuda: str = "") -> tuple[int, str, str]:
    """Run the plan step as the runner does (`shell: bash`) against a stand-in invoke; returns (exit, output file, argv)."""
    assert workflow["defaults"]["run"]["shell"] == "bash", "the scripts rely on bash -e and arrays"
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    stub = venv_bin / "invoke"
    stub.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/argv"\n{invoke_body}\n')
    stub.chmod(0o755)
    output = tmp_path / "github_output"
    output.touch()
    env = {"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(output), "CUDA": cuda}
    bash = shutil.which("bash")
    assert bash
    # The command line GitHub runs for `shell: bash`.
    command = [bash, "--noprofile", "--norc", "-eo", "pipefail", "-c", plan_script(workflow)]
    done = subprocess.run(command, cwd=tmp_path, env=env, timeout=30)
    argv = (tmp_path / "argv").read_text().strip() if (tmp_path / "argv").exists() else ""
    return done.returncode, output.read_text(), argv


def test_the_plan_fails_when_the_matrix_command_fails(workflow: dict[Any, Any], tmp_path: Path) -> None:
    code, output, _ = run_plan(workflow, tmp_path, invoke_body='echo "no image matches" >&2; exit 1')
    assert code != 0 and "matrix=" not in output


@pytest.mark.parametrize(("cuda", "flags"), [("", ""), ("12.8", " --cuda 12.8")])
def test_the_plan_writes_the_matrix_and_passes_the_cuda_filter(workflow: dict[Any, Any], tmp_path: Path, cuda: str, flags: str) -> None:
    matrix = '{"include":[{"name":"a","config":"images.yaml","cuda":"12.8","torch":"2.11.0","python":"3.12","flavours":"runtime devel"}]}'
    code, output, argv = run_plan(workflow, tmp_path, invoke_body=f"echo '{matrix}'", cuda=cuda)
    assert code == 0 and output == f"matrix={matrix}\n"
    assert argv == "matrix --format github" + flags
