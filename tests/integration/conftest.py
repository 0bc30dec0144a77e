"""The integration tier: a real engine, the loopback registry, real images built from the test matrix."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from torchimages.engine import Engine
from torchimages.matrix import Matrix, load_matrix
from torchimages.model import BuildResult
from torchimages.pipeline import BuildOptions, build_images
from torchimages.testing import testenv
from torchimages.testing.services import ScratchRegistry

FIXTURE = Path(__file__).parents[1] / "fixtures" / "images.yaml"
# Shared by every session, as build/wheelhouse is for `invoke build`: the CUDA wheels are gigabytes.
WHEELHOUSE = Path(__file__).parents[2] / "build" / "wheelhouse"
# The session's images stay in the loopback registry (the next session reuses them); a test pushes elsewhere.
SESSION_REPOSITORY = "torch-images-test/pytorch"


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
    # The session pushes for real: an earlier session's tags would otherwise let the run take the images as they are
    # in the registry, with nothing built or tagged here (the blobs stay, so the push moves no layer again).
    for ref in (ref for spec in fixture_matrix.images for ref in spec.refs):
        testenv.delete_from_registry(ref)
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
    """Register a matrix file whose release tags a test creates: they are removed afterwards, from the engine and
    from the loopback registry, also when the test fails (what a killed session leaves, `invoke testenv` sweeps)."""
    refs: list[str] = []
    yield lambda config: refs.extend(ref for spec in load_matrix(config).images for ref in spec.refs)
    for ref in refs:
        engine.remove_image(ref)
        if ref.startswith(f"{testenv.REGISTRY}/"):
            assert not ref.startswith(f"{testenv.REGISTRY}/{SESSION_REPOSITORY}:"), f"{ref}: a test's tags go to a repository of its own"
            testenv.delete_from_registry(ref)


@pytest.fixture()
def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def scratch_registry(tmp_path: Path, free_port: int) -> Iterator[ScratchRegistry]:
    registry = ScratchRegistry(tmp_path / "registry", free_port)
    registry.start()
    try:
        yield registry
    finally:
        registry.kill()
