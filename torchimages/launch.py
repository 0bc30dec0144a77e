"""`invoke run`: the `docker run` command line the README recommends, for one image of the matrix."""

from __future__ import annotations

import os
import shlex
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .compat import version_key
from .engine import Engine, EngineError
from .model import ImageSpec

WORKSPACE = "/workspace"
JUPYTER_PORT = 8888
TENSORBOARD_PORT = 6006
NO_GPUS = "no NVIDIA runtime on this engine: running without GPUs (CPU only; `invoke doctor` says more)"


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What `invoke run` starts, and what it tells the user."""

    argv: tuple[str, ...]
    image: str
    notes: tuple[str, ...]
    env: dict[str, str]  # variables the docker CLI passes on by name (their values never appear in argv)

    def shell(self) -> str:
        return shlex.join(self.argv)


def newest(specs: Sequence[ImageSpec], *, gpus: bool) -> ImageSpec:
    """The image to run when several match: CUDA with GPUs (CPU without), then newest torch, python, CUDA; runtime first."""
    return max(
        specs,
        key=lambda s: (bool(s.cuda) == gpus, version_key(s.torch), version_key(s.python), version_key(s.cuda or "0"), s.flavour != "devel"),
    )


def detect_gpus(mode: str, *, dry_run: bool, engine_factory: Callable[[], Engine] = Engine) -> tuple[bool, str | None]:
    """Whether to hand GPUs in (auto asks the engine, also for a dry run), and a note for the user when not."""
    if mode != "auto":
        return mode == "all", None
    try:
        engine = engine_factory()
    except EngineError as exc:
        if not dry_run:
            raise
        return False, f"no engine answered, so GPUs were not detected ({exc}); give --gpus all for a GPU host"
    return (True, None) if engine.has_nvidia_runtime() else (False, NO_GPUS)


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_modes(*, jupyter: bool, tensorboard: str, command: Sequence[str]) -> None:
    """Raise ValueError for flags that contradict each other."""
    if jupyter and tensorboard:
        raise ValueError("--jupyter and --tensorboard start one server each; run them in two terminals")
    if (jupyter or tensorboard) and command:
        raise ValueError("--jupyter and --tensorboard choose the command themselves; drop what follows --")


def plan_run(
    *,
    image: str,
    command: Sequence[str],
    gpus: bool,
    cwd: Path,
    uid: int,
    gid: int,
    stdin_tty: bool,
    stdout_tty: bool,
    jupyter: bool = False,
    tensorboard: str = "",
    jupyter_port: int = JUPYTER_PORT,
    tensorboard_port: int = TENSORBOARD_PORT,
    token: str = "",
    free: Callable[[int], bool] = port_free,
) -> RunPlan:
    """The docker CLI call: GPUs when wanted, --ipc=host, cwd at /workspace, the caller's UID:GID, ports on loopback only."""
    check_modes(jupyter=jupyter, tensorboard=tensorboard, command=command)
    argv = ["docker", "run", "--rm", "--init", "-i"]  # -i: piped input reaches the command
    argv += ["-t"] if stdin_tty and stdout_tty else []
    argv += ["--gpus", "all"] if gpus else []
    # PyTorch's DataLoader workers share tensors through /dev/shm, which Docker limits to 64 MB.
    argv += ["--ipc=host"]
    argv += ["--user", f"{uid}:{gid}", "-v", f"{cwd}:{WORKSPACE}", "-w", WORKSPACE]
    notes: list[str] = []
    env: dict[str, str] = {}
    ports = {"jupyter": (jupyter_port, JUPYTER_PORT), "tensorboard": (tensorboard_port, TENSORBOARD_PORT)}
    server = "jupyter" if jupyter else "tensorboard" if tensorboard else None
    for name, (host_port, inside) in ports.items():
        if server and name != server:
            continue
        if not free(host_port):
            if server:  # the server needs its port
                raise ValueError(f"127.0.0.1:{host_port} is in use; give --{name}-port another port")
            notes.append(f"127.0.0.1:{host_port} is in use: {name}'s port is not published this time")
            continue
        argv += ["-p", f"127.0.0.1:{host_port}:{inside}"]
    if jupyter:
        # The token travels in the environment (`-e NAME` copies it from ours), never on a command line.
        env["JUPYTER_TOKEN"] = token
        argv += ["-e", "JUPYTER_TOKEN"]
        # --allow-root: the container runs as the caller, and a caller who is root gets jupyter all the same.
        command = [
            "jupyter",
            "lab",
            "--ip=0.0.0.0",
            f"--port={JUPYTER_PORT}",
            "--no-browser",
            "--allow-root",
            f"--ServerApp.root_dir={WORKSPACE}",
        ]
        notes.append(f"jupyter: http://127.0.0.1:{jupyter_port}/lab?token={token}")
    elif tensorboard:
        logdir = _inside(cwd, tensorboard)
        command = ["tensorboard", "--logdir", logdir, "--bind_all", f"--port={TENSORBOARD_PORT}"]
        notes.append(f"tensorboard: http://127.0.0.1:{tensorboard_port}/ (logs: {logdir})")
    argv += [image, *command]
    return RunPlan(argv=tuple(argv), image=image, notes=tuple(notes), env=env)


def _inside(cwd: Path, logdir: str) -> str:
    """A host folder under the current directory, as the container sees it under /workspace."""
    path = (cwd / logdir).resolve()
    if not path.is_relative_to(cwd.resolve()):
        raise ValueError(f"--tensorboard {logdir}: only the current directory is mounted (at {WORKSPACE}); give a folder inside it")
    relative = path.relative_to(cwd.resolve()).as_posix()
    return WORKSPACE if relative == "." else f"{WORKSPACE}/{relative}"


def execute(plan: RunPlan) -> None:
    """Become the docker client: its exit status and its handling of Ctrl-C (stop the container) are the user's."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(plan.argv[0], list(plan.argv), {**os.environ, **plan.env})
