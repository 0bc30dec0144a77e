"""Where an image came from: the OCI source, url, revision and base-digest labels, as docker/metadata-action writes them."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from .registry import parse_ref

Git = Callable[..., str | None]

_SCP_LIKE = re.compile(r"(?:[^@/]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/].*)")  # git@github.com:owner/repo.git
_URL = re.compile(r"(?:https?|ssh|git)://(?:[^@/]+@)?(?P<host>[A-Za-z0-9.-]+)(?::\d+)?/(?P<path>.+)")


def _git(root: Path) -> Git:
    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    return run


def web_url(remote: str | None) -> str | None:
    """A git remote as the https page of its repository, never with credentials; None for local paths."""
    if not remote:
        return None
    match = _URL.fullmatch(remote) or (None if "://" in remote else _SCP_LIKE.fullmatch(remote))
    if match is None or not ("." in match["host"] or match["host"] == "localhost"):  # C:repo is a Windows path
        return None
    path = re.split(r"[?#]", match["path"], maxsplit=1)[0].removesuffix("/").removesuffix(".git")  # no ?private_token=
    return f"https://{match['host']}/{path}"


def source_labels(root: Path, *, environ: Mapping[str, str] = os.environ, git: Git | None = None) -> dict[str, str]:
    """org.opencontainers.image.source, url and revision: from GitHub Actions' variables, else from the git checkout.

    A label is left out rather than guessed: a checkout with no https-like remote has no source, and
    a revision with uncommitted changes to tracked files ends in "-dirty".
    """
    git = git or _git(root)
    if environ.get("GITHUB_SERVER_URL") and environ.get("GITHUB_REPOSITORY"):
        url: str | None = f"{environ['GITHUB_SERVER_URL'].rstrip('/')}/{environ['GITHUB_REPOSITORY']}"
    else:
        url = web_url(git("remote", "get-url", "origin"))
    revision = environ.get("GITHUB_SHA") or git("rev-parse", "HEAD")
    if revision and not environ.get("GITHUB_SHA") and git("status", "--porcelain", "--untracked-files=no"):
        revision += "-dirty"
    labels = {}
    if url:
        labels["org.opencontainers.image.source"] = url
        labels["org.opencontainers.image.url"] = url
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    return labels


def base_digest(repo_digests: tuple[str, ...], base_ref: str) -> str | None:
    """The registry digest of the base as pulled from base_ref's repository (sha256:...), if the engine recorded one.

    Names are compared as Docker resolves them: the engine records `ubuntu@sha256:...` for `library/ubuntu:24.04`
    and `docker.io/library/ubuntu:24.04` alike.
    """
    wanted = parse_ref(base_ref)
    for entry in repo_digests:
        name, _, digest = entry.partition("@")
        found = parse_ref(name)
        if (found.registry, found.repository) == (wanted.registry, wanted.repository) and digest.startswith("sha256:"):
            return digest
    return None
