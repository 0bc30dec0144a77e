"""(d) One image's build against a raw install of the same wheels into a venv plus the layer's export.

For the CPU image of the test matrix, each side on a new, empty dockerd in a network namespace of its own
(no layer cache), its base copied in beforehand (not timed); the sides alternate, RUNS times each:

- ours: `invoke build --rebuild` of that one image: its wheels sent to the engine (one image), the build
  context, the venv stage, the image's own steps, verification inside the image and the seal;
- raw: one container from the same base installs the same locked wheels (the wheelhouse mounted
  read-only) into a new venv with the build's own installer and options (the lock's uv: `--no-index
  --require-hashes --no-deps --compile-bytecode`), then `docker commit` exports the container's
  changes as a layer. No build context, no verification, no second stage, no labels.

Prints both medians and the ratio. Run as root after `invoke testenv`:
    .venv/bin/python benchmarks/image_vs_raw.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import uv_binary  # noqa: E402

from torchimages.lock import read_lock  # noqa: E402
from torchimages.matrix import load_matrix  # noqa: E402
from torchimages.model import UV  # noqa: E402
from torchimages.pipeline import BuildOptions, build_images  # noqa: E402
from torchimages.testing import testenv  # noqa: E402
from torchimages.testing.engines import ScratchEngine, copy_image, scratch_engine  # noqa: E402

RUNS = int(os.environ.get("RUNS", "2"))  # runs per side; RUNS=1 for a first reading
FIXTURE = ROOT / "tests" / "fixtures" / "images.yaml"
OUT = ROOT / "build" / "bench" / "raw"
WHEELHOUSE = ROOT / "build" / "wheelhouse"


def main() -> int:
    data = yaml.safe_load(FIXTURE.read_text())
    data["images"] = data["images"][:1]  # the CPU image
    with tempfile.TemporaryDirectory(prefix="ti-bench-") as folder:
        config = Path(folder) / "images.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        matrix = load_matrix(config)
        (spec,) = matrix.images
        engine = testenv.setup([spec], say=print)
        (first,) = build_images(matrix, [spec], BuildOptions(out_dir=OUT / "first", shared_wheelhouse=WHEELHOUSE), engine=engine)
        lock = read_lock(OUT / "first" / "locks", spec)
        if not first.verified or lock is None:
            print(f"the CPU image did not build; see {OUT / 'first' / 'logs'}")
            return 1
        requirements = Path(folder) / "requirements.txt"
        requirements.write_text(lock.requirements)
        (uv,) = (f for f in lock.files if f.name == UV)
        binary = uv_binary(WHEELHOUSE / uv.filename, Path(folder))

        def ours(fresh: ScratchEngine) -> float:
            out = OUT / "ours"
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(OUT / "first" / "locks", out / "locks")
            command = [sys.executable, "-m", "invoke", "build", "--rebuild", "--config", str(config), "--out-dir", str(out)]
            started = time.monotonic()
            done = subprocess.run(
                [*command, "--wheelhouse", str(WHEELHOUSE)], cwd=ROOT, env=fresh.environment(), capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise SystemExit(f"the build failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            return time.monotonic() - started

        def raw(fresh: ScratchEngine) -> float:
            script = (
                f"set -e; python{spec.python} -m venv --without-pip /opt/venv; "
                "/uv pip install --quiet --no-config --no-cache --python /opt/venv/bin/python --no-index --find-links /wheels "
                "--only-binary :all: --require-hashes --no-deps --compile-bytecode --link-mode copy -r /requirements.txt"
            )
            volumes = {
                str(WHEELHOUSE): {"bind": "/wheels", "mode": "ro"},
                str(requirements): {"bind": "/requirements.txt", "mode": "ro"},
                str(binary): {"bind": "/uv", "mode": "ro"},
            }
            client = fresh.client()
            started = time.monotonic()
            container = client.containers.run(spec.venv_base_image, ["sh", "-c", script], volumes=volumes, detach=True)
            try:
                if container.wait()["StatusCode"] != 0:
                    raise SystemExit(f"the raw install failed:\n{container.logs().decode()[-3000:]}")
                container.commit(repository="bench-raw", tag="venv")
            finally:
                container.remove(force=True)
            return time.monotonic() - started

        times: dict[str, list[float]] = {"ours": [], "raw": []}
        for _ in range(RUNS):
            for side, run in (("ours", ours), ("raw", raw)):
                with scratch_engine() as fresh:
                    for ref in dict.fromkeys((spec.base_image, spec.venv_base_image)):
                        copy_image(engine, fresh, ref)
                    times[side].append(run(fresh))
    a, b = statistics.median(times["ours"]), statistics.median(times["raw"])
    print(f"image: {spec.name}, runs per side: {RUNS}")
    print(f"invoke build --rebuild (build, verify, seal): median {a:7.1f} s   ({', '.join(f'{t:.1f}' for t in times['ours'])})")
    print(f"raw venv install + docker commit:            median {b:7.1f} s   ({', '.join(f'{t:.1f}' for t in times['raw'])})")
    print(f"ratio ours / raw = {a / b:.2f}   (target <= 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
