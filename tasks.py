"""invoke tasks: parse flags, call torchimages, print, and exit with a message instead of a traceback."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from torchimages import matrix as matrix_mod
from torchimages.compat import version_key
from torchimages.config import ConfigError, printable
from torchimages.engine import EngineError
from torchimages.wheels import WheelError

ROOT = Path(__file__).resolve().parent
FIXTURE = "tests/fixtures/images.yaml"
FILTER_HELP = {
    "config": "matrix file (default: images.yaml)",
    "cuda": "only images for this CUDA version, or 'cpu' (repeatable)",
    "torch": "only this torch release, e.g. 2.11.0 or 2.11 (repeatable)",
    "python": "only this python, e.g. 3.11 (repeatable)",
    "flavour": "only this flavour: runtime, devel or cpu (repeatable)",
}


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reader has gone (`invoke matrix | head`)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLERR)
        return bool(poll.poll(0))
    except (OSError, ValueError):
        return False


def _closed_pipe_hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """A reader that stops early (`| head`) ends the task quietly, as it ends any Unix tool (status 141, SIGPIPE's)."""
    if issubclass(kind, BrokenPipeError) and _stdout_closed():
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        os._exit(141)
    sys.__excepthook__(kind, value, tb)


sys.excepthook = _closed_pipe_hook


def _whole_number(flag: str, value: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer flag, read here so that `--jobs two` is one clear line and not invoke's traceback."""
    try:
        number = int(value)
    except ValueError:
        raise Exit(f"{flag} must be a whole number, not {value!r}", code=2) from None
    if number < minimum:
        raise Exit(f"{flag} must be at least {minimum}, not {number}", code=2)
    if maximum is not None and number > maximum:
        raise Exit(f"{flag} must be at most {maximum}, not {number}", code=2)
    return number


@contextmanager
def _clean_errors() -> Iterator[None]:
    """Every expected failure ends as one message and exit 1, never a traceback."""
    from torchimages.render import RenderError
    from torchimages.testing.testenv import TestEnvError
    from torchimages.verify import VerifyError

    try:
        yield
    except ConfigError as exc:
        count = len(exc.problems)
        raise Exit(f"{exc}\n{count} problem{'s' * (count != 1)} found; nothing was done.", code=1) from None
    except (EngineError, WheelError, VerifyError, RenderError, TestEnvError) as exc:
        raise Exit(f"error: {exc}", code=1) from None
    except KeyboardInterrupt:  # Ctrl-C outside a build's own handling (loading, resolving): nothing was tagged
        raise Exit("interrupted", code=130) from None


def _check_gpus(gpus: str) -> None:
    if gpus not in ("auto", "all", "none"):
        raise Exit(f"--gpus must be auto, all or none, not {gpus!r}", code=2)


def _config(config: str) -> str:
    """A matrix file as given, or, when a relative one is not here, the checkout's (`invoke -r ~/torch-images run` from a project)."""
    if Path(config).exists() or Path(config).is_absolute() or not (ROOT / config).exists():
        return config
    return str(ROOT / config)


def _load(config: str) -> matrix_mod.Matrix:
    return matrix_mod.load_matrix(_config(config))


def _select(matrix: matrix_mod.Matrix, cuda: list[str], torch: list[str], python: list[str], flavour: list[str]) -> list[Any]:
    if not matrix.images:
        raise Exit(f"{printable(matrix.file)} defines no image to build: every combination is excluded or deprecated", code=1)
    filters = matrix_mod.Filters(cuda=tuple(cuda), torch=tuple(torch), python=tuple(python), flavour=tuple(flavour))
    selected = [spec for spec in matrix.images if filters.select(spec)]
    if not selected:
        given = [(name, values) for name, values in (("cuda", cuda), ("torch", torch), ("python", python), ("flavour", flavour)) if values]
        asked = " ".join(f"--{name} {value}" for name, values in given for value in values)
        has = {
            "cuda": {s.cuda or "cpu" for s in matrix.images},
            "torch": {s.torch for s in matrix.images},
            "python": {s.python for s in matrix.images},
            "flavour": {s.flavour for s in matrix.images},
        }
        valid = "; ".join(f"{name}: {', '.join(sorted(has[name], key=version_key))}" for name, _ in given)
        raise Exit(f"no image in {printable(matrix.file)} matches {printable(asked)}; the matrix has {valid}", code=1)
    return selected


@task(
    help={
        **FILTER_HELP,
        "jobs": "images built at the same time (default 1)",
        "push": "push release tags to the target registry after verification",
        "gpus": "GPUs for verification: auto (when the engine has the nvidia runtime), all, none",
        "rebuild": "build even when a verified image with the same inputs exists",
        "out_dir": "where report.json, report.md, logs/, locks/ and wheelhouse/ go (default: build)",
        "wheelhouse": "fetch wheels into and install from this folder instead of OUT_DIR/wheelhouse (share it between runs)",
        "dry_run": "show what would be built, tagged and pushed; touch no engine, registry or network",
    },
    iterable=["cuda", "torch", "python", "flavour"],
)
def build(
    c: Context,
    config: str = "images.yaml",
    cuda: list[str] | None = None,
    torch: list[str] | None = None,
    python: list[str] | None = None,
    flavour: list[str] | None = None,
    jobs: str = "1",
    push: bool = False,
    gpus: str = "auto",
    rebuild: bool = False,
    out_dir: str = "build",
    wheelhouse: str = "",
    dry_run: bool = False,
) -> None:
    """Render, build, verify, tag (and push) every matching image of the matrix."""
    from torchimages.pipeline import BuildOptions, Interrupted, build_images

    _check_gpus(gpus)
    workers = _whole_number("--jobs", jobs)
    with _clean_errors():
        matrix = _load(config)
        specs = _select(matrix, cuda or [], torch or [], python or [], flavour or [])
        if dry_run:
            from torchimages.listing import format_matrix

            print(format_matrix(specs, "table", config=config))
            verb = "push" if push else "tag (no --push)"
            print(f"\nwould build and verify {len(specs)} images, then {verb}:", *(f"  {ref}" for s in specs for ref in s.refs), sep="\n")
            return
        options = BuildOptions(
            push=push, jobs=workers, gpus=gpus, rebuild=rebuild, out_dir=Path(out_dir).resolve(),
            shared_wheelhouse=Path(wheelhouse).resolve() if wheelhouse else None,
        )  # fmt: skip
        try:
            results = build_images(matrix, specs, options)
        except Interrupted as stopped:
            print(Path(out_dir, "report.md").read_text())
            left = [r.spec.name for r in stopped.results if r.status == "cancelled"]
            raise Exit(
                f"{stopped}: {len(left)} of {len(stopped.results)} images cancelled (see {out_dir}/report.md)", code=128 + stopped.signum
            ) from None
    print(Path(out_dir, "report.md").read_text())
    failed = [r for r in results if r.status == "failed"]
    for result in failed:
        log = Path(out_dir, "logs", f"{result.spec.name}.log")
        tail = log.read_text(errors="replace").splitlines()[-25:] if log.exists() else []
        print(f"--- {result.spec.name}: the end of {log} ---", *tail, sep="\n", file=sys.stderr)
    if failed:
        raise Exit(f"{len(failed)} of {len(results)} images failed: " + ", ".join(r.spec.name for r in failed), code=1)


@task(
    help={
        **FILTER_HELP,
        "replica": "resolve against the test environment's replicas of the PyTorch index and PyPI (`invoke testenv` serves them)",
        "format": "table or json",
        "out_dir": "locks go to OUT_DIR/locks/<image>.json (default: build)",
    },
    iterable=["cuda", "torch", "python", "flavour"],
)
def lock(
    c: Context,
    config: str = "images.yaml",
    cuda: list[str] | None = None,
    torch: list[str] | None = None,
    python: list[str] | None = None,
    flavour: list[str] | None = None,
    replica: bool = False,
    format: str = "table",  # noqa: A002 - the flag is --format
    out_dir: str = "build",
) -> None:
    """Resolve every selected image's exact wheels (metadata only, no torch download) and keep a hash-pinned lock each."""
    from torchimages.listing import format_locks
    from torchimages.lock import lock_images

    if format not in ("table", "json"):
        raise Exit(f"--format must be table or json, not {format!r}", code=2)
    with _clean_errors():
        indexes, pytorch_index = _indexes(replica)
        loaded = matrix_mod.load_matrix(_config(config), pytorch_index=pytorch_index)
        specs = _select(loaded, cuda or [], torch or [], python or [], flavour or [])
        logs = Path(out_dir, "logs")
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "lock.log", "w") as log:
            say = (lambda line: print(line, file=sys.stderr)) if format == "json" else print
            results = lock_images(specs, indexes, Path(out_dir, "locks"), log=log, refresh=True, say=say)
    print(format_locks(specs, results, format))
    failed = [name for name, outcome in results.items() if isinstance(outcome, WheelError)]
    if failed:
        raise Exit(f"{len(failed)} of {len(results)} images did not resolve (pip's output: {logs / 'lock.log'})", code=1)


def _indexes(replica: bool) -> tuple[Any, str | None]:
    """pip's own configuration, or the test environment's replicas (their PyTorch index overrides the file's)."""
    from torchimages.lock import Indexes

    if not replica:
        return Indexes(), None
    from torchimages.testing import services

    if not services.replica_up():
        raise Exit(f"no index replica answers on {services.REPLICA}; run `invoke testenv` first", code=1)
    return Indexes(index_url=f"{services.REPLICA}/pypi/simple", isolated=True), f"{services.REPLICA}/whl"


@task(
    help={
        "image": "image reference or ID to check",
        "gpus": "auto (when the engine has the nvidia runtime), all, none",
        "json": "print torch-verify's JSON instead of a table",
    }
)
def verify(c: Context, image: str, gpus: str = "auto", json: bool = False) -> None:
    """Run torch-verify inside an image and show what it found."""
    from torchimages.engine import Engine
    from torchimages.verify import gpus_wanted, run_verify

    _check_gpus(gpus)
    with _clean_errors():
        engine = Engine()
        if engine.image(image) is None:
            engine.pull(image)
        report = run_verify(engine, image, gpus=gpus_wanted(engine, gpus))
    if json:
        print(report.output.strip())
    else:
        width = max((len(c.name) for c in report.checks), default=10)
        for check in report.checks:
            print(f"{check.name:<{width}}  {check.status.upper():<4}  {check.detail}")
        print(f"\n{image}: {'verified' if report.ok else 'FAILED'}")
    if not report.ok:
        raise Exit(code=1)


def _after_double_dash() -> list[str]:
    """The command after `--`, word for word (invoke's own remainder is one space-joined string)."""
    return sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []


@task(
    name="run",
    help={
        **FILTER_HELP,
        "image": "run this image reference instead of one chosen from the matrix",
        "gpus": "auto (all GPUs when the engine has the nvidia runtime), all, none",
        "jupyter": "start JupyterLab and print its URL",
        "tensorboard": "start TensorBoard on this folder (inside the current directory) and print its URL",
        "jupyter_port": "host port for JupyterLab, on 127.0.0.1 (default 8888)",
        "tensorboard_port": "host port for TensorBoard, on 127.0.0.1 (default 6006)",
        "dry_run": "print the docker command instead of running it",
    },
    iterable=["cuda", "torch", "python", "flavour"],
)
def run_image(
    c: Context,
    config: str = "images.yaml",
    cuda: list[str] | None = None,
    torch: list[str] | None = None,
    python: list[str] | None = None,
    flavour: list[str] | None = None,
    image: str = "",
    gpus: str = "auto",
    jupyter: bool = False,
    tensorboard: str = "",
    jupyter_port: str = "8888",
    tensorboard_port: str = "6006",
    dry_run: bool = False,
) -> None:
    """Run an image of the matrix as the README recommends; anything after -- is the command (`invoke run -- python train.py`)."""
    import secrets
    import shutil

    from torchimages import launch

    _check_gpus(gpus)
    ports = (
        _whole_number("--jupyter-port", jupyter_port, maximum=65535),
        _whole_number("--tensorboard-port", tensorboard_port, maximum=65535),
    )
    command = _after_double_dash()
    try:
        launch.check_modes(jupyter=jupyter, tensorboard=tensorboard, command=command)
    except ValueError as exc:
        raise Exit(str(exc), code=2) from None
    with _clean_errors():
        use_gpus, note = launch.detect_gpus(gpus, dry_run=dry_run)
        if note:
            print(note, file=sys.stderr)
        if not image:
            specs = _select(_load(config), cuda or [], torch or [], python or [], flavour or [])
            chosen = launch.newest(specs, gpus=use_gpus)
            image = chosen.refs[0]
            if len(specs) > 1:
                print(f"{len(specs)} images match; running {chosen.name} (narrow with --torch, --cuda, ...)", file=sys.stderr)
        try:
            plan = launch.plan_run(
                image=image, command=command, gpus=use_gpus, cwd=Path.cwd(), uid=os.getuid(), gid=os.getgid(),
                stdin_tty=sys.stdin.isatty(), stdout_tty=sys.stdout.isatty(), jupyter=jupyter, tensorboard=tensorboard,
                jupyter_port=ports[0], tensorboard_port=ports[1], token=secrets.token_hex(24) if jupyter else "",
            )  # fmt: skip
        except ValueError as exc:
            raise Exit(str(exc), code=2) from None
    if dry_run:
        print(plan.shell())
        return
    if shutil.which("docker") is None:
        raise Exit(f"the docker CLI is not on PATH; install it, or run it yourself:\n  {plan.shell()}", code=1)
    for line in plan.notes:
        print(line, file=sys.stderr)
    launch.execute(plan)


@task(name="doctor", help={"config": "matrix whose images to check this host against (default: images.yaml)"})
def doctor_host(c: Context, config: str = "images.yaml") -> None:
    """Can this host run the images? Engine, NVIDIA runtime, driver against each image's minimum, /dev/shm."""
    from torchimages import doctor

    with _clean_errors():
        diagnosis = doctor.diagnose(_config(config))
    print(doctor.format_diagnosis(diagnosis))
    if not diagnosis.ok:
        raise Exit(code=1)


@task(
    help={**FILTER_HELP, "format": "table, json, or github (a GitHub Actions matrix)"},
    iterable=["cuda", "torch", "python", "flavour"],
)
def matrix(
    c: Context,
    config: str = "images.yaml",
    cuda: list[str] | None = None,
    torch: list[str] | None = None,
    python: list[str] | None = None,
    flavour: list[str] | None = None,
    format: str = "table",  # noqa: A002 - the flag is --format
) -> None:
    """Show the images the matrix defines, which wheel each gets, and why."""
    from torchimages.listing import format_matrix

    if format not in ("table", "json", "github"):
        raise Exit(f"--format must be table, json or github, not {format!r}", code=2)
    with _clean_errors():
        loaded = _load(config)
        specs = _select(loaded, cuda or [], torch or [], python or [], flavour or [])
    print(format_matrix(specs, format, config=config))


@task(
    help={
        "config": "only this matrix file (default: images.yaml and the test matrix, and stale folders are pruned); "
        "another file's Dockerfiles go to OUT_DIR/dockerfiles",
        "check": "change nothing; fail if any rendered Dockerfile is stale",
        "out_dir": "where another matrix file's Dockerfiles go (default: build)",
    }
)
def render(c: Context, config: str = "", check: bool = False, out_dir: str = "build") -> None:
    """Render every entry to dockerfiles/generated/<image>/Dockerfile."""
    from torchimages.render import GENERATED, sync_generated

    checked_in = [str(ROOT / "images.yaml"), str(ROOT / FIXTURE)]
    configs = [_config(config)] if config else checked_in
    # Only the checked-in matrices own dockerfiles/generated: another file with the same image names must not overwrite them.
    root = GENERATED if all(str(Path(name).resolve()) in checked_in for name in configs) else Path(out_dir).resolve() / "dockerfiles"
    with _clean_errors():
        # The checked-in files follow the files alone, not $TORCH_IMAGES_BASE_MIRROR.
        loaded = [matrix_mod.load_matrix(name, use_environment=False) for name in configs]
        matrices = [[*m.images, *m.deprecated] for m in loaded]
        stale = sync_generated(matrices, check=check, prune=not config, root=root)
    if check and stale:
        raise Exit("stale rendered Dockerfiles (run `invoke render`):\n  " + "\n  ".join(stale), code=1)
    count = sum(len(specs) for specs in matrices)
    where = "" if root == GENERATED else f" in {root}"
    print(f"{'checked' if check else 'rendered'} {count} Dockerfiles{where}" + (f", {len(stale)} changed" if stale else ""))


@task(help={"config": f"matrix whose bases to provide (default: {FIXTURE})"})
def testenv(c: Context, config: str = FIXTURE) -> None:
    """Start a Docker engine and a loopback registry, and push stand-in CUDA bases (idempotent)."""
    from torchimages.testing import testenv as env

    with _clean_errors():
        loaded = _load(config)
        env.setup([*loaded.images, *loaded.deprecated])
    print(f"testenv ready: engine up, registry {env.REGISTRY}, stand-ins under {env.MIRROR}")


@task(help={"unit": "only the unit tests (no Docker engine needed)", "k": "pytest -k expression"})
def test(c: Context, unit: bool = False, k: str = "") -> None:
    """Set up the test environment and run the whole test suite."""
    render(c, check=True)
    if not unit:
        testenv(c)
    targets = ["tests/unit"] if unit else ["tests/unit", "tests/integration"]
    extra = ["-k", k] if k else []
    # Tests marked torch need torch on the host; the integration tier runs them inside the CPU image instead.
    code = subprocess.call([sys.executable, "-m", "pytest", "-ra", "-m", "not torch", *targets, *extra], cwd=ROOT)
    if code != 0:
        raise Exit(f"tests failed (pytest exit {code})", code=code)


@task(help={"write": "write the refreshed table into torchimages/data/compat.yaml (default: only show the changes)"})
def refresh(c: Context, write: bool = False) -> None:
    """Regenerate the compatibility table from PyPI (and the PyTorch index and Docker Hub where reachable)."""
    import yaml

    from torchimages import compat_refresh

    path = ROOT / "torchimages" / "data" / "compat.yaml"
    current = yaml.safe_load(path.read_text())
    new, notes = compat_refresh.refresh(current, compat_refresh.http_fetch)
    print("\n".join(notes) if notes else "no changes")
    if write and new != current:
        compat_refresh.write_table(path, new)
        print(f"wrote {path.relative_to(ROOT)}")


@task(help={"torch": "a torch release, e.g. 2.5.1", "cuda": "a CUDA version, e.g. 12.4"})
def show(c: Context, torch: str = "", cuda: str = "") -> None:
    """Show the compatibility table's row for a torch release and/or a CUDA version (with nvidia/cuda tags)."""
    from torchimages.compat import base_tags, describe_variants, load_compat

    table = load_compat()
    if not torch and not cuda:
        raise Exit("give --torch and/or --cuda", code=2)
    if torch:
        row = table.torch.get(torch)
        if row is None:
            raise Exit(f"unknown torch release {torch!r}; known: {', '.join(sorted(table.torch, key=version_key))}", code=1)
        print(f"torch {row.version}: torchvision {row.torchvision or 'none'}, torchaudio {row.torchaudio or 'none'}")
        print(f"  python {', '.join(row.python)}; wheels for CUDA {describe_variants(row)}; PyPI default {row.pypi_default or 'unknown'}")
        print("  cuDNN by variant: " + ", ".join(f"{v} {row.cudnn_versions.get(v, m)}" for v, m in sorted(row.variants.items())))
        if row.pending:
            print(f"  not buildable yet: {row.pending}")
    if cuda:
        release = table.cuda.get(cuda)
        if release is None:
            raise Exit(f"unknown CUDA version {cuda!r}; known: {', '.join(sorted(table.cuda, key=version_key))}", code=1)
        print(f"CUDA {release.version} ({release.full}): cuDNN {release.cudnn} tagged '{release.cudnn_tag}'")
        print(f"  minimum Linux driver {release.min_driver}; os {', '.join(release.os)}")
        for flavour, tags in base_tags(release).items():
            print(f"  {flavour:14} " + "  ".join(f"nvidia/cuda:{tag}" for tag in tags))


compat = Collection("compat", refresh, show)
ns = Collection(build, lock, verify, run_image, doctor_host, matrix, render, testenv, test, compat)
