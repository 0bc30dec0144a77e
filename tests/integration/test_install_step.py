"""The build's install step checks every byte it installs: an installer or a wheel the lock does not name fails it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from torchimages.engine import BuildError, Engine
from torchimages.lock import read_lock
from torchimages.model import UV, BuildResult
from torchimages.render import context_files, context_stream, context_tar, render_dockerfile
from torchimages.testing.containers import dangling_images

pytestmark = pytest.mark.integration
WHEELHOUSE = Path(__file__).parents[2] / "build" / "wheelhouse"


@pytest.mark.parametrize("swapped", [UV, "pyyaml"])
def test_a_file_swapped_in_the_wheels_fails_the_venv_stage(engine: Engine, built: list[BuildResult], build_dir: Path, swapped: str) -> None:
    """The wheels image names uv's wheel and pyyaml's; one of them carries another wheel's bytes (tqdm's)."""
    spec = next(r.spec for r in built if r.spec.cuda is None)
    lock = read_lock(build_dir / "locks", spec)
    assert lock is not None and spec.installer == UV
    files = {f.name: f for f in lock.files}
    requirements = files["pyyaml"].pinned
    wheels = {files[name].filename: WHEELHOUSE / files[name].filename for name in (UV, "pyyaml")}
    wheels[files[swapped].filename] = WHEELHOUSE / files["tqdm"].filename
    context = context_files(spec, dockerfile=render_dockerfile(spec), requirements=requirements, installer=lock.installer)
    log, before, ref = io.StringIO(), dangling_images(), f"torch-images-wheels:swapped-{swapped}"
    try:
        engine.import_image(context_stream({}, wheels=wheels), ref)
        with pytest.raises(BuildError):
            engine.build(context_tar(context), log=log, buildargs={"WHEELS": ref})
    finally:  # the build drops its own build cache records; the wheels image and an untagged image it left go here
        engine.remove_image(ref, force=True)
        for image in dangling_images() - before:
            engine.remove_image(image, force=True)
    output = log.getvalue()
    assert "Successfully built" not in output, output[-3000:]
    if swapped == UV:  # sha256sum stops the stage before uv runs
        assert f"/tmp/wheels/{files[UV].filename}: FAILED" in output, output[-3000:]
        assert "scripts/uv pip install" not in output
    else:  # uv checks each wheel against the lock's hash
        assert "scripts/uv pip install" in output and "hash mismatch" in output.lower(), output[-3000:]
