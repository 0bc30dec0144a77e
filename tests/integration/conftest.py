"""The integration tier: a real engine, the loopback registry, real images built from the test matrix."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from torchimages.engine import Engine
from torchimages.matrix import Matrix, load_matrix
from torchimages.model import BuildResult
from torchimages.pipeline import BuildOptions, build_images
from torchimages.testing import testenv

FIXTURE = Path(__file__).parents[1] / "fixtures" / "images.yaml"
# Shared by every session, as build/wheelhouse is for `invoke build`: the CUDA wheels are gigabytes.
WHEELHOUSE = Path(__file__).parents[2] / "build" / "wheelhouse"


@pytest.fixture(scope="session")
def fixture_matrix() -> Matrix:
    return load_matrix(FIXTURE)


@pytest.fixture(scope="session")
def engine(fixture_matrix: Matrix) -> Engine:
    """`invoke testenv` has normally run already; this makes the tier self-sufficient and is quick when it has."""
    return testenv.setup([*fixture_matrix.images], say=lambda line: print(line))


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="session")
def built(engine: Engine, fixture_matrix: Matrix, build_dir: Path) -> list[BuildResult]:
    """The whole test matrix built, verified and pushed once per session, two images at a time (as `--jobs 2`)."""
    options = BuildOptions(push=True, jobs=2, out_dir=build_dir, shared_wheelhouse=WHEELHOUSE)
    return build_images(fixture_matrix, list(fixture_matrix.images), options, engine=engine)


@pytest.fixture(scope="session")
def report(built: list[BuildResult], build_dir: Path) -> dict:
    return json.loads((build_dir / "report.json").read_text())


@pytest.fixture(scope="session")
def cpu_image(built: list[BuildResult]) -> str:
    """The pushed full tag of the CPU image (small: used for service tests)."""
    result = next(r for r in built if r.spec.cuda is None)
    assert result.status != "failed", result.error
    return result.pushed[0].ref


@pytest.fixture()
def untag_after(engine: Engine) -> Iterator[Callable[[Path], None]]:
    """Register a matrix file whose release tags a test creates: they are removed afterwards, also when it fails."""
    refs: list[str] = []
    yield lambda config: refs.extend(ref for spec in load_matrix(config).images for ref in spec.refs)
    for ref in refs:
        engine.remove_image(ref)


@pytest.fixture()
def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ScratchRegistry:
    """A registry of the test's own on a loopback port: it can be killed and started again on the same storage."""

    def __init__(self, root: Path, port: int) -> None:
        self.address = f"127.0.0.1:{port}"
        self.config = root / "registry.yml"
        root.mkdir(parents=True, exist_ok=True)
        settings = {"version": 0.1, "log": {"level": "warn"}, "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
                    "http": {"addr": self.address}}  # fmt: skip
        self.config.write_text(json.dumps(settings))  # JSON is YAML
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["docker-registry", "serve", str(self.config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"the scratch registry did not start on {self.address}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None

    def manifest_complete(self, repository: str, tag: str) -> bool:
        """The tag's manifest is served and every blob it names is there (no tag points at a partial image)."""
        accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
        request = urllib.request.Request(f"http://{self.address}/v2/{repository}/manifests/{tag}", headers=accept)
        with urllib.request.urlopen(request, timeout=10) as response:
            manifest = json.loads(response.read())
        for blob in [manifest["config"], *manifest["layers"]]:
            head = urllib.request.Request(f"http://{self.address}/v2/{repository}/blobs/{blob['digest']}", method="HEAD")
            with urllib.request.urlopen(head, timeout=10) as response:
                if response.status != 200:
                    return False
        return True

    def tags(self, repository: str) -> list[str]:
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/{repository}/tags/list", timeout=10) as response:
                return list(json.loads(response.read()).get("tags") or [])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise


@pytest.fixture()
def scratch_registry(tmp_path: Path, free_port: int) -> Iterator[ScratchRegistry]:
    registry = ScratchRegistry(tmp_path / "registry", free_port)
    registry.start()
    try:
        yield registry
    finally:
        registry.kill()
