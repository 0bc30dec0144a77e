"""Image size: one CUDA runtime image built on our base choice against the same image on a cuDNN runtime base.

Torch wheels carry their own CUDA runtime, cuBLAS, cuDNN and NCCL, so a cuDNN runtime base ships
those libraries twice. This builds the CUDA runtime image of the test matrix both ways, through the
ordinary pipeline (render, wheels, build, verify), and prints both sizes and their ratio.

Run as root after `invoke testenv`:  .venv/bin/python benchmarks/base_size.py
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchimages.compat import cuda_base, load_compat  # noqa: E402
from torchimages.matrix import load_matrix  # noqa: E402
from torchimages.pipeline import BuildOptions, build_images  # noqa: E402
from torchimages.report import human_size  # noqa: E402
from torchimages.testing import testenv  # noqa: E402


def main() -> int:
    matrix = load_matrix(ROOT / "tests" / "fixtures" / "images.yaml")
    ours = next(spec for spec in matrix.images if spec.flavour == "runtime")
    cuda = load_compat().cuda[ours.cuda or ""]
    cudnn_base = cuda_base(cuda, "cudnn-runtime", ours.os, repository=ours.base.repository, mirror=ours.base.mirror)
    theirs = replace(
        ours,
        name=ours.name.replace("-runtime-", "-cudnnbase-runtime-"),
        base=cudnn_base,
        repository=ours.repository + "-bench",
    )
    engine = testenv.setup([ours], say=print)
    testenv.ensure_stand_ins(engine, [], print, extra=[cudnn_base])
    results = build_images(matrix, [ours, theirs], BuildOptions(out_dir=ROOT / "build" / "bench"), engine=engine)
    for result in results:
        print(f"{result.spec.base_upstream:45} {human_size(result.size):>10}  verified={result.verified}  {result.error or ''}")
    if not all(r.verified and r.size for r in results):
        print("a build failed; see build/bench/logs")
        return 1
    small, large = results[0].size or 0, results[1].size or 0
    print(f"ours / cuDNN-runtime base = {small / large:.3f}  (ours is {human_size(large - small)} smaller)")
    return 0 if small < large else 1


if __name__ == "__main__":
    raise SystemExit(main())
