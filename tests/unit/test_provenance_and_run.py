"""Provenance labels (source, url, revision, base digest) and the `invoke run` command line, as pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchimages import launch
from torchimages.matrix import load_matrix
from torchimages.provenance import base_digest, source_labels, web_url

ROOT = Path(__file__).parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("remote", "url"),
    [
        ("git@github.com:team/torch-images.git", "https://github.com/team/torch-images"),
        ("https://github.com/team/torch-images.git", "https://github.com/team/torch-images"),
        ("https://x-access-token:ghs_secret@github.com/team/torch-images", "https://github.com/team/torch-images"),
        ("ssh://git@gitlab.example.com:2222/group/sub/repo.git", "https://gitlab.example.com/group/sub/repo"),
        ("https://gitlab.com/group/repo.git?private_token=abc#frag", "https://gitlab.com/group/repo"),
        ("C:repo", None),
        ("/work/main", None),
        ("file:///work/main", None),
        ("../torch-images", None),
        ("", None),
        (None, None),
    ],
)
def test_web_url_turns_remotes_into_pages_and_drops_credentials(remote: str | None, url: str | None) -> None:
    assert web_url(remote) == url


def fake_git(answers: dict[tuple[str, ...], str | None]):
    return lambda *args: answers.get(args)


def test_github_actions_variables_win_over_the_checkout() -> None:
    environ = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "team/torch-images", "GITHUB_SHA": SHA}
    git = fake_git({("remote", "get-url", "origin"): "git@elsewhere:x/y.git", ("rev-parse", "HEAD"): "f" * 40})
    assert source_labels(ROOT, environ=environ, git=git) == {
        "org.opencontainers.image.source": "https://github.com/team/torch-images",
        "org.opencontainers.image.url": "https://github.com/team/torch-images",
        "org.opencontainers.image.revision": SHA,
    }


def test_a_local_checkout_gives_its_remote_and_marks_uncommitted_changes() -> None:
    answers = {("remote", "get-url", "origin"): "git@github.com:team/torch-images.git", ("rev-parse", "HEAD"): SHA}
    clean = source_labels(ROOT, environ={}, git=fake_git({**answers, ("status", "--porcelain", "--untracked-files=no"): ""}))
    assert clean["org.opencontainers.image.revision"] == SHA
    assert clean["org.opencontainers.image.source"] == "https://github.com/team/torch-images"
    dirty = source_labels(ROOT, environ={}, git=fake_git({**answers, ("status", "--porcelain", "--untracked-files=no"): " M tasks.py"}))
    assert dirty["org.opencontainers.image.revision"] == f"{SHA}-dirty"


def test_no_git_and_no_remote_leave_the_labels_out_rather_than_guess() -> None:
    assert source_labels(ROOT, environ={}, git=fake_git({})) == {}
    only_path = fake_git({("remote", "get-url", "origin"): "/srv/clone", ("rev-parse", "HEAD"): SHA})
    assert source_labels(ROOT, environ={}, git=only_path) == {"org.opencontainers.image.revision": SHA}


def test_the_base_digest_comes_from_the_repository_the_base_was_pulled_from() -> None:
    digests = (
        "nvidia/cuda@sha256:" + "a" * 64,
        "127.0.0.1:5000/mirror/nvidia/cuda@sha256:" + "b" * 64,
    )
    assert base_digest(digests, "127.0.0.1:5000/mirror/nvidia/cuda:13.0.3-runtime-debian12") == "sha256:" + "b" * 64
    assert base_digest(digests, "nvidia/cuda:12.4.1-runtime-ubuntu22.04") == "sha256:" + "a" * 64
    assert base_digest(digests, "registry.example:5000/nvidia/cuda:12.4.1-runtime-ubuntu22.04") is None
    assert base_digest((), "nvidia/cuda:12.4.1-runtime-ubuntu22.04") is None
    # Docker records Docker Hub's official images by their short name, however the tag was spelt.
    official = ("ubuntu@sha256:" + "c" * 64,)
    for spelling in ("library/ubuntu:24.04", "ubuntu:24.04", "docker.io/library/ubuntu:24.04", "index.docker.io/library/ubuntu:24.04"):
        assert base_digest(official, spelling) == "sha256:" + "c" * 64, spelling
    assert base_digest(official, "ghcr.io/library/ubuntu:24.04") is None


def plan(**overrides):
    values = {"image": "repo/pytorch:tag", "command": [], "gpus": False, "cwd": Path("/home/me/project"), "uid": 1234, "gid": 99}
    return launch.plan_run(**{**values, "stdin_tty": False, "stdout_tty": False, "free": lambda port: True, **overrides})


def published(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "-p"]


def test_run_mounts_the_directory_as_the_caller_with_host_ipc_and_loopback_ports() -> None:
    argv = plan(command=["python", "train.py", "--lr", "0.1 0.2"]).argv
    assert argv[:2] == ("docker", "run") and "--rm" in argv
    assert "--ipc=host" in argv and "--gpus" not in argv
    assert "-i" in argv and "-t" not in argv  # piped input reaches the command; no terminal, no -t
    assert argv[argv.index("--user") + 1] == "1234:99"
    assert argv[argv.index("-v") + 1] == "/home/me/project:/workspace"
    assert published(argv) == ["127.0.0.1:8888:8888", "127.0.0.1:6006:6006"]
    assert argv[-5:] == ("repo/pytorch:tag", "python", "train.py", "--lr", "0.1 0.2")


def test_run_with_gpus_and_a_terminal() -> None:
    argv = plan(gpus=True, stdin_tty=True, stdout_tty=True).argv
    assert argv[argv.index("--gpus") + 1] == "all"
    assert "-i" in argv and "-t" in argv
    assert argv[-1] == "repo/pytorch:tag"
    assert "-t" not in plan(stdin_tty=True, stdout_tty=False).argv  # `invoke run ... | tee log`


def test_a_port_in_use_is_skipped_for_a_command_and_refused_for_its_server() -> None:
    busy = {8888}
    result = plan(command=["python", "-V"], free=lambda port: port not in busy)
    assert published(result.argv) == ["127.0.0.1:6006:6006"]
    assert result.notes == ("127.0.0.1:8888 is in use: jupyter's port is not published this time",)
    with pytest.raises(ValueError, match="127.0.0.1:8888 is in use; give --jupyter-port another port"):
        plan(jupyter=True, token="t", free=lambda port: port not in busy)
    assert published(plan(tensorboard="runs", cwd=Path("/tmp"), free=lambda port: port not in busy).argv) == ["127.0.0.1:6006:6006"]


def test_jupyter_gets_its_token_through_the_environment_only() -> None:
    result = plan(jupyter=True, token="s3cret", jupyter_port=9999)
    assert result.env == {"JUPYTER_TOKEN": "s3cret"}
    assert not any("s3cret" in word for word in result.argv)
    assert published(result.argv) == ["127.0.0.1:9999:8888"] and result.argv[result.argv.index("-e") + 1] == "JUPYTER_TOKEN"
    assert result.argv[result.argv.index("repo/pytorch:tag") + 1 :][:2] == ("jupyter", "lab")
    assert result.notes == ("jupyter: http://127.0.0.1:9999/lab?token=s3cret",)


def test_tensorboard_logdir_is_mapped_into_the_workspace(tmp_path: Path) -> None:
    result = plan(tensorboard="runs/exp1", cwd=tmp_path)
    assert result.argv[-5:] == ("tensorboard", "--logdir", "/workspace/runs/exp1", "--bind_all", "--port=6006")
    assert result.notes == ("tensorboard: http://127.0.0.1:6006/ (logs: /workspace/runs/exp1)",)
    with pytest.raises(ValueError, match="only the current directory is mounted"):
        plan(tensorboard="../elsewhere", cwd=tmp_path)


class Unreachable:
    def __init__(self) -> None:
        from torchimages.engine import EngineUnavailable

        raise EngineUnavailable("no Docker engine answered")


class WithRuntime:
    def has_nvidia_runtime(self) -> bool:
        return True


def test_gpu_detection_asks_the_engine_even_for_a_dry_run() -> None:
    from torchimages.engine import EngineUnavailable

    assert launch.detect_gpus("auto", dry_run=True, engine_factory=WithRuntime) == (True, None)  # type: ignore[arg-type]
    assert launch.detect_gpus("all", dry_run=False, engine_factory=Unreachable) == (True, None)  # type: ignore[arg-type]
    gpus, note = launch.detect_gpus("auto", dry_run=True, engine_factory=Unreachable)  # type: ignore[arg-type]
    assert gpus is False and note is not None and "give --gpus all" in note
    with pytest.raises(EngineUnavailable):
        launch.detect_gpus("auto", dry_run=False, engine_factory=Unreachable)  # type: ignore[arg-type]


def test_servers_and_commands_do_not_mix() -> None:
    with pytest.raises(ValueError, match="one server each"):
        plan(jupyter=True, tensorboard="runs")
    with pytest.raises(ValueError, match="drop what follows --"):
        plan(jupyter=True, command=["bash"])


def test_the_image_chosen_follows_the_gpus() -> None:
    specs = load_matrix(ROOT / "tests" / "fixtures" / "images.yaml").images
    assert launch.newest(specs, gpus=False).cuda is None
    chosen = launch.newest(specs, gpus=True)
    assert chosen.cuda == "13.0" and chosen.flavour == "runtime"
    shipped = load_matrix(ROOT / "images.yaml").images
    newest = launch.newest(shipped, gpus=True)
    assert newest.torch == max((s.torch for s in shipped), key=lambda v: tuple(map(int, v.split("."))))


@pytest.mark.parametrize(
    ("repository", "qualified"),
    [
        ("nvidia/cuda", "docker.io/nvidia/cuda:12.8.2-base-ubuntu24.04"),
        ("library/ubuntu", "docker.io/library/ubuntu:12.8.2-base-ubuntu24.04"),
        ("nvcr.io/nvidia/cuda", "nvcr.io/nvidia/cuda:12.8.2-base-ubuntu24.04"),
        ("localhost:5000/cuda", "localhost:5000/cuda:12.8.2-base-ubuntu24.04"),
    ],
)
def test_base_name_label_is_a_full_reference(repository: str, qualified: str) -> None:
    from torchimages.model import BaseImage

    base = BaseImage(repository=repository, tag="12.8.2-base-ubuntu24.04", kind="base", os="ubuntu24.04", mirror="mirror.example/hub")
    assert base.qualified == qualified
