"""(c) What the second flavour's push uploads against the first's, and what the registry stores for the test matrix.

The test matrix is built (or reused), then its images are pushed, one after the other, to an empty
registry of this script's own on a loopback port: the CUDA runtime image, then the CUDA devel image of
the same torch, python and CUDA, then the CPU image. After each push the registry's storage is
measured on disk (what a push adds is what it uploaded: the registry keeps each blob once).

Prints the bytes each push added, the second flavour's against the first's, and the total.
Run as root after `invoke testenv`:  .venv/bin/python benchmarks/flavour_push.py
"""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchimages.matrix import load_matrix  # noqa: E402
from torchimages.pipeline import BuildOptions, build_images  # noqa: E402
from torchimages.report import human_size  # noqa: E402
from torchimages.testing import testenv  # noqa: E402
from torchimages.testing.services import ScratchRegistry  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"


def _stored(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def main() -> int:
    matrix = load_matrix(FIXTURE)
    engine = testenv.setup(list(matrix.images), say=print)
    options = BuildOptions(out_dir=ROOT / "build" / "bench" / "push", shared_wheelhouse=ROOT / "build" / "wheelhouse", jobs=2)
    results = {r.spec.flavour: r for r in build_images(matrix, list(matrix.images), options, engine=engine)}
    if not all(r.verified for r in results.values()):
        print("the test matrix did not build; see build/bench/push/logs")
        return 1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="ti-bench-") as folder:
        registry = ScratchRegistry(Path(folder), port)
        registry.start()
        added: dict[str, int] = {}
        try:
            before = 0
            for flavour in ("runtime", "devel", "cpu"):
                result = results[flavour]
                ref = f"{registry.address}/bench/pytorch:{flavour}"
                assert result.image_id is not None
                engine.tag(result.image_id, ref)
                try:
                    engine.push(ref)
                finally:
                    engine.remove_image(ref)
                now = _stored(registry.data)
                added[flavour] = now - before
                before = now
                print(f"push {flavour:8} ({result.spec.name}): {human_size(added[flavour]):>10} added to the registry")
        finally:
            registry.kill()
    ratio = added["devel"] / added["runtime"]
    print(f"second flavour / first flavour = {ratio:.3f}   (target < 0.10)")
    pair = added["runtime"] + added["devel"]
    print(f"registry storage, runtime + devel: {human_size(pair)}   ({pair / 6.2e9:.2f} of the 6.2 GB measured before the shared venv)")
    print(f"registry storage, the whole test matrix: {human_size(before)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
