"""Engine operations only the test environment needs: importing a root file system, long-running service containers.

They talk to the same engine as the product (docker.from_env: DOCKER_HOST, else the local socket) through a client
of their own, so the product's engine module keeps only what `invoke` uses."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import docker
import docker.errors

from ..engine import EngineError, split_ref
from ..labels import BUILD_HASH


def _client() -> docker.DockerClient:
    try:
        return docker.from_env(timeout=600)
    except docker.errors.DockerException as exc:
        raise EngineError(f"no Docker engine answered ({exc})") from None


def import_rootfs(tar_path: Path, ref: str, *, changes: list[str]) -> str:
    """Import a root file system tar as an image; return its ID."""
    repository, tag = split_ref(ref)
    client = _client()
    try:
        client.api.import_image(src=str(tar_path), repository=repository, tag=tag, changes=changes)
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        raise EngineError(f"import of {tar_path} as {ref} left no image") from None
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot import {tar_path} as {ref}: {exc.explanation or exc}") from None


def prune_untagged_builds(*, older_than: str = "2h", build_hash: str | None = None) -> int:
    """Remove untagged images of our builds made before `older_than`; return the bytes freed.

    They are what a changed build hash supersedes (the tags moved to the new image) and what a killed run left: no
    tag names them and a run rebuilds what it needs, while the disk is shared by every later run on this machine.
    The age keeps a build that another run has just made, and not yet tagged, out of reach."""
    try:
        label = f"{BUILD_HASH}={build_hash}" if build_hash else BUILD_HASH
        done = _client().images.prune(filters={"dangling": True, "label": label, "until": older_than})
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot prune untagged builds: {exc.explanation or exc}") from None
    return int(done.get("SpaceReclaimed") or 0)


def prune_old_build_cache(*, older_than: str = "2h") -> int:
    """Remove the engine's build cache records unused since before `older_than`; return the bytes freed.

    A build removes its own (its context, then its venv stage once the group is done); a run killed midway leaves
    them, and the BuildKit of dockerd 20.10 collects nothing by itself unless its daemon.json says so."""
    try:
        done = _client().api.prune_builds(filters={"until": older_than}, all=True)
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot prune the build cache: {exc.explanation or exc}") from None
    return int((done or {}).get("SpaceReclaimed") or 0)


def dangling_images() -> set[str]:
    """IDs of the engine's untagged leaf images (a failed build leaves its last committed step as one)."""
    try:
        return {str(i) for i in _client().api.images(filters={"dangling": True}, quiet=True)}
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot list untagged images: {exc.explanation or exc}") from None


class Service:
    """A long-running container with ports published on loopback; stop() removes it."""

    def __init__(self, container: Any) -> None:
        self._container = container

    @classmethod
    def start(cls, image: str, command: list[str], *, ports: dict[str, tuple[str, int]], name: str) -> Service:
        """Create and start the container; one that was created but would not start is removed, not left behind."""
        client = _client()
        try:
            container = client.containers.create(image, command, detach=True, ports=ports, name=name)
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot create {command[0]} in {image}: {exc.explanation or exc}") from None
        try:
            container.start()
        except docker.errors.APIError as exc:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise EngineError(f"cannot start {command[0]} in {image}: {exc.explanation or exc}") from None
        return cls(container)

    def logs(self) -> str:
        return str(self._container.logs().decode("utf-8", "replace"))

    def stop(self) -> None:
        try:
            self._container.remove(force=True)
        except docker.errors.APIError:
            pass
