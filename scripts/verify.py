"""torch-verify: check that this Python environment delivers the PyTorch stack its image labels promise."""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Dict  # noqa: UP035 - see Record

LABELS_FILE = Path("/etc/torch-images/labels.json")
LABEL_PREFIX = "org.torch-images."
# Expectation -> label suffix. base_cuda has no flag: only the build knows which CUDA base it used.
LABEL_KEYS = {
    "torch": "torch",
    "cuda": "cuda",
    "cudnn": "cudnn",
    "python": "python",
    "flavour": "flavour",
    "packages": "packages",
    "base_cuda": "base-cuda",
    "torchvision": "torchvision",
    "torchaudio": "torchaudio",
}
COMPANIONS = ("torchvision", "torchaudio")
SHM_MIN_BYTES = 1 << 30
SHM_FIX = "run with --ipc=host or --shm-size=8g (PyTorch DataLoader workers share tensors through /dev/shm)"
REL_TOL = 1e-3
NVCC_TIMEOUT_S = 60
# Consulted only when a module has no __version__ and its import name is not its distribution name.
DIST_NAMES = {"yaml": "PyYAML", "PIL": "Pillow", "cv2": "opencv-python", "sklearn": "scikit-learn", "skimage": "scikit-image"}
NO_GPU = "no GPU visible (torch.cuda.is_available() is False)"
_UNSET: Any = object()

Record = Dict[str, Any]  # noqa: UP006 - evaluated at runtime, and dict[...] needs Python 3.9


def record(name: str, status: str, detail: str, value: Any = _UNSET) -> Record:
    rec: Record = {"name": name, "status": status, "detail": detail}
    if value is not _UNSET:
        rec["value"] = value
    return rec


def last_line(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


# ---- pure helpers ---------------------------------------------------------------------------------


def decode_cudnn_version(encoded: int) -> str:
    """cuDNN 9 changed the integer from major*1000+minor*100+patch to major*10000+minor*100+patch."""
    major, rest = divmod(encoded, 10000 if encoded >= 10000 else 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def torch_version_matches(expected: str, actual: str) -> bool:
    """An expected local part (+cpu, +cu130) must match exactly; without one only the public part counts."""
    return actual == expected if "+" in expected else actual.split("+", 1)[0] == expected


def version_prefix_matches(expected: str, actual: str) -> bool:
    """'9' matches any 9.x.y, '9.1.0' only itself."""
    want = expected.split(".")
    return actual.split(".")[: len(want)] == want


def is_none(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "none"


def merge_expectations(labels: dict[str, Any], flags: dict[str, str | None]) -> dict[str, Any]:
    """Flags win over labels; packages becomes a list of import names, or None when nobody named any."""
    merged: dict[str, Any] = {}
    for key, suffix in LABEL_KEYS.items():
        label = labels.get(LABEL_PREFIX + suffix)
        merged[key] = flags[key] if flags.get(key) is not None else (None if label is None else str(label))
    if merged["packages"] is not None:
        merged["packages"] = [name.strip() for name in merged["packages"].split(",") if name.strip()]
    return merged


def exit_code(records: Sequence[Record]) -> int:
    return 1 if any(rec["status"] == "fail" for rec in records) else 0


def shm_status(size_bytes: int | None) -> tuple[str, str]:
    if size_bytes is None:
        return "warn", f"/dev/shm is missing; {SHM_FIX}"
    size = f"{size_bytes / (1 << 30):.2f} GiB"
    if size_bytes < SHM_MIN_BYTES:
        return "warn", f"/dev/shm is only {size}; {SHM_FIX}"
    return "pass", f"/dev/shm is {size}"


def parse_nvcc_release(output: str) -> str | None:
    match = re.search(r"release (\d+\.\d+)", output)
    return match.group(1) if match else None


def compare_cuda_release(expected: str, actual: str) -> tuple[str, str]:
    want, got = expected.split(".")[:2], actual.split(".")[:2]
    if want[0] != got[0]:
        return "fail", f"nvcc is CUDA {actual} but the image's CUDA base is {expected}"
    if want != got:
        return "warn", f"nvcc is CUDA {actual} but the image's CUDA base is {expected} (minor mismatch)"
    return "pass", f"nvcc is CUDA {actual}"


def local_variant(version: str) -> str | None:
    """'0.26.0+cu126' -> 'cu126'; None without a local version."""
    return version.split("+", 1)[1] if "+" in version else None


def cuda_variant(cuda: str | int | None) -> str:
    """A CUDA version -> the variant name: '12.6' -> 'cu126', None -> 'cpu'.

    torch.version.cuda is a string; torchvision.version.cuda is the integer its extension reports,
    major * 1000 + minor * 10 (13000 for CUDA 13.0, 12060 for 12.6).
    """
    if cuda is None:
        return "cpu"
    if isinstance(cuda, int):
        return f"cu{cuda // 1000}{cuda % 1000 // 10}"
    return "cu" + "".join(str(cuda).split(".")[:2])


def variant_fits(name: str, companion: str, torch_variant: str) -> bool:
    """torchvision is built for exactly torch's variant; torchaudio 2.11 serves later torch of the same CUDA major."""
    if companion == torch_variant:
        return True
    cuda = [re.fullmatch(r"cu(\d+)(\d)", v) for v in (companion, torch_variant)]
    if name != "torchaudio" or not (cuda[0] and cuda[1]):  # cpu, rocm6.2, a git hash: only equal builds fit
        return False
    (c_major, c_minor), (t_major, t_minor) = ((int(m[1]), int(m[2])) for m in cuda if m)
    return c_major == t_major and c_minor <= t_minor


def expect(name: str, actual: Any, expected: str | None, ok: Callable[[str], bool]) -> Record:
    if expected is None:
        return record(name, "pass", f"{actual} (nothing expected)", actual)
    return record(name, "pass" if ok(expected) else "fail", f"{actual}, expected {expected}", actual)


# ---- checks ---------------------------------------------------------------------------------------


def check_python(expected: str | None) -> Record:
    full, short = platform.python_version(), "{}.{}".format(*sys.version_info[:2])
    rec = expect("python", full, expected, lambda want: want in (full, short))
    return {**rec, "value": short}  # X.Y, the form the python label and the build's matrix use


def check_torch_version(torch: Any, expected: str | None) -> Record:
    actual = torch.__version__
    return expect("torch.version", actual, expected, lambda want: torch_version_matches(want, actual))


def check_torch_cuda(torch: Any, expected: str | None) -> Record:
    actual = torch.version.cuda
    if is_none(expected):
        ok = actual is None
        detail = "CPU build, as expected" if ok else f"torch is built for CUDA {actual} but the image promises none"
        return record("torch.cuda", "pass" if ok else "fail", detail, actual)
    if expected is not None and actual is None:
        return record(
            "torch.cuda",
            "fail",
            f"torch is a CPU build (torch.version.cuda is None) but the image promises CUDA {expected}",
            actual,
        )
    return expect("torch.cuda", actual, expected, lambda want: actual == want)


def check_cudnn(torch: Any, expected: str | None) -> Record:
    if torch.version.cuda is None:
        if expected is None or is_none(expected):
            return record("cudnn", "skip", "CPU build of torch: no cuDNN", None)
        return record("cudnn", "fail", f"torch is a CPU build but the image promises cuDNN {expected}", None)
    if not torch.backends.cudnn.is_available():
        return record("cudnn", "fail", "CUDA build of torch but torch.backends.cudnn.is_available() is False", None)
    encoded = torch.backends.cudnn.version()  # loads libcudnn; needs no GPU
    if encoded is None:
        return record("cudnn", "fail", "torch.backends.cudnn.version() is None: libcudnn did not load", None)
    actual = decode_cudnn_version(int(encoded))
    if is_none(expected):
        return record("cudnn", "warn", f"found cuDNN {actual} but the image promises none", actual)
    return expect("cudnn", actual, expected, lambda want: version_prefix_matches(want, actual))


def cuda_availability(torch: Any) -> tuple[bool, str]:
    """is_available() reports driver problems only as warnings; keep them for the detail."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available, count = bool(torch.cuda.is_available()), torch.cuda.device_count()
    notes = [f"torch.cuda.is_available()={available}", f"torch.cuda.device_count()={count}"]
    notes += [f"{key}={os.environ.get(key, '<unset>')}" for key in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")]
    if torch.version.cuda is None:
        notes.append("torch is a CPU build")
    return available, "; ".join(notes + [str(w.message).strip() for w in caught])


def check_gpu(torch: Any, available: bool, why: str, require_gpu: bool) -> Record:
    if not available:
        if require_gpu:
            return record("gpu", "fail", f"--require-gpu: {NO_GPU}; {why}")
        return record("gpu", "skip", NO_GPU)
    count, name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    capability = "{}.{}".format(*torch.cuda.get_device_capability(0))
    return record(
        "gpu",
        "pass",
        f"{count} x {name} (compute capability {capability})",
        {"count": count, "name": name, "capability": capability},
    )


@contextlib.contextmanager
def exact_float32(torch: Any) -> Iterator[None]:
    """TF32 rounds inputs to 10 mantissa bits (3e-4 off CPU on an H200): too near the 1e-3 limit to judge."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.enabled, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.enabled, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False
    try:
        yield
    finally:
        cudnn.enabled, cudnn.allow_tf32, matmul.allow_tf32 = saved


def gpu_vs_cpu(name: str, torch: Any, op: Callable[..., Any], *inputs: Any) -> Record:
    with exact_float32(torch):
        cpu_out = op(*inputs)
        gpu_out = op(*(x.cuda() for x in inputs))
        torch.cuda.synchronize()
    gpu_out = gpu_out.cpu()
    if not bool(torch.isfinite(gpu_out).all()):
        return record(name, "fail", "GPU result contains NaN or Inf")
    error = float((gpu_out - cpu_out).norm() / cpu_out.norm())
    ok = error < REL_TOL  # False for NaN too
    return record(name, "pass" if ok else "fail", f"relative error vs CPU {error:.2e} (limit {REL_TOL:.0e})", error)


def check_conv2d(torch: Any) -> Record:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 16, 32, 32, generator=gen), torch.randn(32, 16, 3, 3, generator=gen)
    return gpu_vs_cpu("gpu.conv2d", torch, lambda a, b: torch.nn.functional.conv2d(a, b, padding=1), x, w)


def check_matmul(torch: Any) -> Record:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(512, 512, generator=gen), torch.randn(512, 512, generator=gen)
    return gpu_vs_cpu("gpu.matmul", torch, torch.matmul, a, b)


def package_version(module: Any, name: str) -> str | None:
    if getattr(module, "__version__", None) is not None:
        return str(module.__version__)
    candidates = [DIST_NAMES.get(name, name)]
    if hasattr(importlib.metadata, "packages_distributions"):  # Python 3.10+
        candidates += importlib.metadata.packages_distributions().get(name, [])  # novm: guarded above
    for dist in candidates:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    return None


def check_package(name: str) -> Record:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # broken installs raise more than ImportError (ABI mismatches, RuntimeError)
        return record(f"package.{name}", "fail", last_line(exc))
    version = package_version(module, name)
    return record(f"package.{name}", "pass", version or "imported (version unknown)", version)


def check_companion(torch: Any, name: str, expected: str | None) -> Record:
    """torchvision/torchaudio: the build the image promises, and built for the CUDA (or CPU) of the torch beside it."""
    check = f"{name}.build"
    if is_none(expected):
        return record(check, "skip", f"the image ships no {name}")
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        if expected is None:
            return record(check, "skip", f"{name} not installed ({last_line(exc)})")
        return record(check, "fail", f"{name} failed to import: {last_line(exc)}")
    actual = str(module.__version__)
    if expected is not None and not torch_version_matches(expected, actual):
        return record(check, "fail", f"{name} is {actual}, the image promises {expected}", actual)
    torch_variant = cuda_variant(torch.version.cuda)
    built_cuda = getattr(getattr(module, "version", None), "cuda", _UNSET)  # torchvision.version.cuda; torchaudio has none
    companion = local_variant(actual) or (cuda_variant(built_cuda) if built_cuda is not _UNSET else None)
    if companion is None:
        return record(check, "pass", f"{actual} (no CUDA build recorded to compare with torch's {torch_variant})", actual)
    if not variant_fits(name, companion, torch_variant):
        return record(check, "fail", f"{name} {actual} is built for {companion}, torch for {torch_variant}", actual)
    if name == "torchvision" and built_cuda is not _UNSET and cuda_variant(built_cuda) != torch_variant:
        return record(check, "fail", f"{name}.version.cuda is {built_cuda}, torch.version.cuda {torch.version.cuda}", actual)
    return record(check, "pass", f"{actual}, built for {companion} (torch: {torch_variant})", actual)


def read_tfrecords(path: str) -> Iterator[bytes]:
    """TFRecord framing: u64 length, u32 masked crc32c of the length, data, u32 masked crc32c of the data."""
    from tensorboardX.record_writer import masked_crc32c

    with open(path, "rb") as f:
        while len(header := f.read(12)) == 12:
            (length,), (header_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            data, (data_crc,) = f.read(length), struct.unpack("<I", f.read(4))
            if header_crc != masked_crc32c(header[:8]) or data_crc != masked_crc32c(data):
                raise ValueError(f"CRC mismatch in {path}")
            yield data


def read_events(logdir: str) -> tuple[dict[str, list[tuple[int, float]]], list[str], bool]:
    """(scalars by tag, image tags, whether a graph is present) from the event files directly in logdir."""
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError:  # tensorboardX has no reader of its own
        event_accumulator = None
    if event_accumulator is not None:
        acc = event_accumulator.EventAccumulator(logdir).Reload()
        tags = acc.Tags()
        scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags["scalars"]}
        return scalars, list(tags["images"]), bool(tags["graph"])
    from tensorboardX.proto.event_pb2 import Event

    scalars, images, graph = {}, [], False
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in map(Event.FromString, read_tfrecords(path)):
            graph = graph or event.HasField("graph_def")
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.HasField("image"):
                    images.append(value.tag)
    return scalars, images, graph


def check_tensorboardx(torch: Any) -> Record:
    from tensorboardX import SummaryWriter

    values = [1.0 / 3, 0.25, 2.5e-3, -7.0]  # 1/3 is not exact in float32: exercises the tolerance
    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU())
    with tempfile.TemporaryDirectory() as logdir:
        writer, json_path = SummaryWriter(logdir), os.path.join(logdir, "scalars.json")
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("add_scalar", lambda: [writer.add_scalar("loss", v, i) for i, v in enumerate(values)]),
            # export_scalars_to_json only sees what add_scalars wrote
            ("add_scalars", lambda: [writer.add_scalars("run", {"loss": v}, i) for i, v in enumerate(values)]),
            ("add_image", lambda: writer.add_image("image", torch.rand(3, 8, 8), 0)),
            ("add_graph", lambda: writer.add_graph(model, torch.zeros(1, 4))),  # needs the tensorboard package
            ("add_embedding", lambda: writer.add_embedding(torch.randn(5, 3), metadata=list("abcde"), global_step=0)),
            ("export_scalars_to_json", lambda: writer.export_scalars_to_json(json_path)),
            ("close", writer.close),
        ]
        for step, run in steps:
            try:
                with warnings.catch_warnings():  # add_graph uses torch.jit.trace, which recent torch deprecates
                    warnings.simplefilter("ignore", DeprecationWarning)
                    run()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    writer.close()
                return record("tensorboardX", "fail", f"SummaryWriter.{step} failed: {last_line(exc)}")
        with open(json_path) as f:
            exported = [entry[2] for entries in json.load(f).values() for entry in entries]
        scalars, images, graph = read_events(logdir)
        has_metadata = bool(glob.glob(os.path.join(logdir, "*", "*", "metadata.tsv")))
    read = scalars.get("loss", [])
    read_ok = len(read) == len(values) and all(
        step == i and math.isclose(got, values[i], rel_tol=1e-6) for i, (step, got) in enumerate(read)
    )
    problems = [
        problem
        for ok, problem in [
            (exported == values, f"export_scalars_to_json gave {exported}, wrote {values}"),
            (read_ok, f"event file scalar 'loss' read back as {read}, wrote {values}"),
            ("image" in images, "image missing from the event file"),
            (graph, "graph missing from the event file"),
            (has_metadata, "add_embedding wrote no metadata.tsv"),
        ]
        if not ok
    ]
    if problems:
        return record("tensorboardX", "fail", "; ".join(problems))
    return record("tensorboardX", "pass", "scalars, image, graph and embedding written and read back")


def check_shm() -> Record:
    try:
        stat = os.statvfs("/dev/shm")
        size: int | None = stat.f_frsize * stat.f_blocks
    except (OSError, AttributeError):  # AttributeError: Windows has no statvfs
        size = None
    return record("shm", *shm_status(size), size)


def check_nvcc(flavour: str | None, base_cuda: str | None) -> Record:
    if flavour != "devel":
        return record("nvcc", "skip", f"flavour is {flavour or 'not given'}; nvcc ships only in devel images")
    nvcc = shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")
    if nvcc is None:
        return record("nvcc", "fail", "nvcc not found on PATH or in /usr/local/cuda/bin")
    proc = subprocess.run([nvcc, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=NVCC_TIMEOUT_S, check=False)
    release = parse_nvcc_release(proc.stdout)
    if proc.returncode != 0 or release is None:
        return record("nvcc", "fail", f"{nvcc} -V exited {proc.returncode}: {proc.stdout.strip()[-300:]}")
    if base_cuda is None or is_none(base_cuda):
        return record("nvcc", "pass", f"nvcc is CUDA {release} (no base CUDA expected)", release)
    return record("nvcc", *compare_cuda_release(base_cuda, release), release)


# ---- driver ---------------------------------------------------------------------------------------


def guard(name: str, check: Callable[..., Record], *args: Any) -> Record:
    """An unexpected exception fails that one check instead of the whole run."""
    try:
        return check(*args)
    except Exception as exc:
        return record(name, "fail", f"unexpected error: {last_line(exc)}")


def run_checks(expected: dict[str, Any], require_gpu: bool) -> list[Record]:
    records = [guard("python", check_python, expected["python"])]
    try:
        torch: Any = importlib.import_module("torch")
    except Exception as exc:  # a broken torch raises OSError/RuntimeError too, not just ImportError
        torch = None
        records.append(record("torch.version", "fail", f"torch failed to import: {last_line(exc)}", None))
    if torch is not None:
        records.append(guard("torch.version", check_torch_version, torch, expected["torch"]))
        records.append(guard("torch.cuda", check_torch_cuda, torch, expected["cuda"]))
        records.append(guard("cudnn", check_cudnn, torch, expected["cudnn"]))
        try:
            available, why = cuda_availability(torch)
        except Exception as exc:
            available, why = False, f"torch.cuda.is_available() raised {last_line(exc)}"
        records.append(record("cuda.available", "pass" if available else "skip", why, available))
        records.append(guard("gpu", check_gpu, torch, available, why, require_gpu))
        for name, check in (("gpu.conv2d", check_conv2d), ("gpu.matmul", check_matmul)):
            records.append(guard(name, check, torch) if available else record(name, "skip", NO_GPU))
    packages = expected["packages"]
    records += [guard(f"package.{name}", check_package, name) for name in packages or []]
    if torch is not None:
        records += [guard(f"{name}.build", check_companion, torch, name, expected[name]) for name in COMPANIONS]
    if torch is None:
        records.append(record("tensorboardX", "skip", "torch failed to import"))
    elif "tensorboardX" in (packages or []) or (packages is None and importlib.util.find_spec("tensorboardX")):
        records.append(guard("tensorboardX", check_tensorboardx, torch))
    else:
        records.append(record("tensorboardX", "skip", "tensorboardX not expected"))
    records.append(guard("shm", check_shm))
    records.append(guard("nvcc", check_nvcc, expected["flavour"], expected["base_cuda"]))
    return records


def summarize(records: list[Record], expected: dict[str, Any]) -> dict[str, Any]:
    values = {rec["name"]: rec.get("value") for rec in records}
    gpu = values.get("gpu") or {}
    packages = {
        rec["name"][len("package.") :]: rec.get("value")
        for rec in records
        if rec["name"].startswith("package.") and rec["status"] == "pass"
    }
    return {
        "ok": exit_code(records) == 0,
        "torch": values.get("torch.version"),
        "torch_cuda": values.get("torch.cuda"),
        "cudnn": values.get("cudnn"),
        "python": values.get("python"),
        "gpu": {"available": values.get("cuda.available") is True, "count": gpu.get("count", 0), "name": gpu.get("name")},
        "packages": packages,
        "checks": records,
        "expected": expected,
    }


def format_table(records: list[Record]) -> str:
    width = max(len(rec["name"]) for rec in records)
    lines = [f"{rec['name']:<{width}}  {rec['status'].upper():<4}  {rec['detail']}" for rec in records]
    return "\n".join([*lines, "OK" if exit_code(records) == 0 else "FAILED"])


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Packages under test may print on import, even from C; stdout is kept for the report alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torch-verify",
        description=(
            f"Check this environment's PyTorch stack against the image labels in {LABELS_FILE} "
            "(flags override labels). Exit status: 0 all checks pass (warnings allowed), 1 a check failed."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--require-gpu", action="store_true", help="fail when no GPU is visible")
    parser.add_argument("--expect-torch", metavar="VER", help="torch.__version__, e.g. 2.11.0 or 2.13.0+cpu")
    parser.add_argument("--expect-cuda", metavar="VER|none", help="torch.version.cuda, e.g. 13.0, or none")
    parser.add_argument("--expect-cudnn", metavar="VER", help="cuDNN major (9) or full version (9.1.0), or none")
    parser.add_argument("--expect-python", metavar="X.Y", help="Python major.minor")
    parser.add_argument("--expect-torchvision", metavar="VER|none", help="torchvision.__version__, e.g. 0.26.0+cu126, or none")
    parser.add_argument("--expect-torchaudio", metavar="VER|none", help="torchaudio.__version__, e.g. 2.11.0+cu130, or none")
    parser.add_argument("--flavour", choices=("runtime", "devel", "cpu"), help="image flavour")
    parser.add_argument("--packages", metavar="NAME[,NAME...]", help="import names that must import")
    parser.add_argument(
        "--labels-file", metavar="PATH", type=Path, help=f"JSON object of image labels (default: {LABELS_FILE} if it exists)"
    )
    return parser


def load_labels(path: Path) -> dict[str, Any]:
    with open(path) as f:
        labels = json.load(f)
    if not isinstance(labels, dict):
        raise TypeError("expected a JSON object of label -> value")
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = args.labels_file or (LABELS_FILE if LABELS_FILE.exists() else None)
    labels: dict[str, Any] = {}
    labels_record = record("labels", "skip", f"no --labels-file and no {LABELS_FILE}")
    if path is not None:
        try:
            labels = load_labels(path)
            labels_record = record("labels", "pass", f"{len(labels)} labels from {path}", str(path))
        except (OSError, ValueError, TypeError) as exc:
            if args.labels_file is not None:
                parser.error(f"--labels-file {path}: {exc}")
            labels_record = record("labels", "fail", f"{path}: {exc}", str(path))  # the image's own file is broken
    flags = {
        "torch": args.expect_torch,
        "cuda": args.expect_cuda,
        "cudnn": args.expect_cudnn,
        "python": args.expect_python,
        "flavour": args.flavour,
        "packages": args.packages,
        "torchvision": args.expect_torchvision,
        "torchaudio": args.expect_torchaudio,
    }
    expected = merge_expectations(labels, flags)
    with stdout_to_stderr():
        records = [labels_record, *run_checks(expected, args.require_gpu)]
    # One line: the build finds the document in the container log, where stderr is mixed in before it.
    print(json.dumps(summarize(records, expected), default=str) if args.json else format_table(records))
    return exit_code(records)


if __name__ == "__main__":
    sys.exit(main())
