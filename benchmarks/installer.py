"""pip against uv for the install step: the locked wheels of the test matrix's CUDA runtime image into a new venv.

Both sides run in a container from the image's venv base (the build's own first stage, with no network),
the wheelhouse mounted read-only, the same hash-pinned requirements, no dependency resolution (`--no-deps`,
as the build does), and then the build's own last steps, the same for both: every file gets the stage's fixed
time and `compileall` byte-compiles the modules (an image whose modules are not compiled pays for it at every
start, in every container):

- pip (the locked pip the build installs): `pip install --no-index --find-links --only-binary=:all: --require-hashes
  --no-deps --no-compile`
- uv: `uv pip install --no-index --find-links --require-hashes --no-deps --link-mode copy`, no cache

uv is the lock's own (the build's installer, from PyPI through the index replica on 127.0.0.1:5003 that
`invoke testenv` starts). The sides alternate, RUNS times each. Prints both medians and the ratio. Run as root after `invoke testenv`:
    .venv/bin/python benchmarks/installer.py
"""

from __future__ import annotations

import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import uv_binary  # noqa: E402

from torchimages.lock import read_lock  # noqa: E402
from torchimages.matrix import load_matrix  # noqa: E402
from torchimages.model import PIP, UV  # noqa: E402
from torchimages.pipeline import BuildOptions, build_images  # noqa: E402
from torchimages.testing import testenv  # noqa: E402

RUNS = 3
COMPILE = "import compileall, sys; compileall.compile_dir(sys.argv[1], quiet=2, workers=0)"  # as the build does
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"
OUT = ROOT / "build" / "bench" / "installer"
WHEELHOUSE = ROOT / "build" / "wheelhouse"


def main() -> int:
    matrix = load_matrix(FIXTURE)
    spec = next(s for s in matrix.images if s.flavour == "runtime")
    engine = testenv.setup(list(matrix.images), say=print)
    (first,) = build_images(matrix, [spec], BuildOptions(out_dir=OUT, shared_wheelhouse=WHEELHOUSE), engine=engine)
    lock = read_lock(OUT / "locks", spec)
    if not first.verified or lock is None:
        print(f"the image did not build; see {OUT / 'logs'}")
        return 1
    with tempfile.TemporaryDirectory(prefix="ti-bench-") as name:
        folder = Path(name)
        (uv,) = (f for f in lock.files if f.name == UV)
        uv_binary(WHEELHOUSE / uv.filename, folder)  # to /in/uv
        (folder / "requirements.txt").write_text(lock.requirements)
        (folder / "pip.txt").write_text("".join(f.pinned for f in lock.files if f.name == PIP))
        python = f"python{spec.python}"
        venv = f"{python} -m venv /v && /v/bin/pip install -q --no-index --find-links /wheels --require-hashes --no-deps -r /in/pip.txt"
        compile_ = "find /v -exec touch -h -d @946684800 {} + && /v/bin/python -c " + shlex.quote(COMPILE) + " /v/lib"
        scripts = {
            "pip": f"{venv} && /v/bin/pip install -q --no-index --find-links /wheels --only-binary=:all: --require-hashes --no-deps "
            f"--no-compile -r /in/requirements.txt && {compile_}",
            "uv": f"{python} -m venv --without-pip /v && UV_NO_CACHE=1 /in/uv pip install -q --python /v/bin/python --no-index "
            f"--find-links /wheels --require-hashes --no-deps --link-mode copy -r /in/requirements.txt && {compile_}",
        }
        mounts = {str(WHEELHOUSE): "/wheels", str(folder): "/in"}
        times: dict[str, list[float]] = {side: [] for side in scripts}
        for _ in range(RUNS):
            for side, script in scripts.items():
                started = time.monotonic()
                done = engine.run(spec.venv_base_image, ["sh", "-c", f"set -e; {script}"], timeout=1800, read_only_mounts=mounts)
                elapsed = time.monotonic() - started
                if done.exit_code != 0:
                    raise SystemExit(f"{side} failed:\n{done.output[-3000:]}")
                times[side].append(elapsed)
    pip, fast = statistics.median(times["pip"]), statistics.median(times["uv"])
    wheels = sum((WHEELHOUSE / f.filename).stat().st_size for f in lock.files)
    print(f"image: {spec.name}, {len(lock.files)} wheels, {wheels / 1e9:.2f} GB; runs per side: {RUNS}")
    print(f"pip {lock.packages[PIP]}: median {pip:6.1f} s   ({', '.join(f'{t:.1f}' for t in times['pip'])})")
    print(f"uv {uv.version}:   median {fast:6.1f} s   ({', '.join(f'{t:.1f}' for t in times['uv'])})")
    print(f"ratio pip / uv = {pip / fast:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
