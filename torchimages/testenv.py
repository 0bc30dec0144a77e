"""Set up what the tests need, idempotently: a Docker engine, a loopback registry, stand-in CUDA bases.

The stand-ins are Debian 12 plus NVIDIA's own CUDA runtime (and nvcc for devel) from PyPI wheels,
with the environment contract of nvidia/cuda images, pushed to the loopback registry under a mirror
path. The product builds from them through its ordinary `base.mirror` setting.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .engine import Engine, EngineUnavailable
from .model import ImageSpec
from .render import ROOT, context_tar

STATE = ROOT / "build" / "testenv"
REGISTRY = "127.0.0.1:5000"
MIRROR = f"{REGISTRY}/mirror"
REGISTRY_DATA = Path("/var/lib/torch-images-registry")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the stand-in Debian carries, so image builds from it need no network inside the container.
DEBIAN_PACKAGES = ("ca-certificates", "passwd", "python3.11", "python3.11-venv", "python3-venv", "python3-distutils")

# Bump when the stand-in recipe changes: stand-ins with another recipe are rebuilt.
STAND_IN_RECIPE = "2"
RECIPE_LABEL = "org.torch-images.stand-in-recipe"

Say = Callable[[str], None]


class TestEnvError(Exception):
    """The test environment could not be set up."""


def _run(command: list[str], *, what: str, timeout: int = 1800, log: Path | None = None) -> None:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise TestEnvError(f"{what}: ran past {timeout} s") from None
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    if done.returncode != 0:
        hint = f"; see {log}" if log else ""
        raise TestEnvError(f"{what}: `{' '.join(command)}` exited {done.returncode}{hint}")


def ensure_engine(say: Say) -> Engine:
    """A running engine: reuse one that answers, else install Debian's docker.io and start dockerd."""
    try:
        return Engine()
    except EngineUnavailable:
        pass
    if os.geteuid() != 0:
        raise TestEnvError("no Docker engine answers and this is not root: start dockerd, or run `invoke testenv` as root")
    STATE.mkdir(parents=True, exist_ok=True)
    log = STATE / "apt.log"
    if not shutil.which("dockerd") or not shutil.which("docker-registry") or not shutil.which("debootstrap"):
        say("testenv: installing docker.io, docker-registry, debootstrap (Debian packages)")
        env_cmd = ["env", "DEBIAN_FRONTEND=noninteractive"]
        _run(["apt-get", "update", "-q"], what="apt-get update", log=log)
        _run(
            [*env_cmd, "apt-get", "install", "-y", "-q", "docker.io", "docker-registry", "debootstrap"],
            what="apt-get install",
            log=log,
        )
    _remove_stale_pid_file(Path("/var/run/docker.pid"))
    say("testenv: starting dockerd")
    dockerd_log = open(STATE / "dockerd.log", "ab")  # noqa: SIM115 - handed to the daemon
    subprocess.Popen(["dockerd"], stdout=dockerd_log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            return Engine()
        except EngineUnavailable:
            continue
    raise TestEnvError(f"dockerd did not answer within 90 s; see {STATE / 'dockerd.log'}")


def _remove_stale_pid_file(path: Path) -> None:
    """dockerd refuses to start over the pid file of a daemon that was killed (as at the end of a session)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
    except PermissionError:
        pass


def registry_up() -> bool:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def ensure_registry(say: Say) -> None:
    """Debian's docker-registry on 127.0.0.1:5000, storing under /var/lib/torch-images-registry."""
    if registry_up():
        return
    if not shutil.which("docker-registry"):
        raise TestEnvError("docker-registry is not installed (apt-get install docker-registry)")
    STATE.mkdir(parents=True, exist_ok=True)
    config = STATE / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {REGISTRY_DATA}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {REGISTRY}\n"
    )
    say(f"testenv: starting a registry on {REGISTRY}")
    log = open(STATE / "registry.log", "ab")  # noqa: SIM115 - handed to the daemon
    subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if registry_up():
            return
        time.sleep(0.5)
    raise TestEnvError(f"the registry did not answer on {REGISTRY}; see {STATE / 'registry.log'}")


def in_registry(ref: str) -> bool:
    """True when the loopback registry serves a manifest for ref."""
    name, tag = ref.removeprefix(f"{REGISTRY}/").rsplit(":", 1)
    request = urllib.request.Request(
        f"http://{REGISTRY}/v2/{name}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _debian_rootfs_tar(say: Say) -> Path:
    tar_path = STATE / "debian12-rootfs.tar"
    if tar_path.exists():
        return tar_path
    rootfs = STATE / "debian12-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    say("testenv: debootstrap Debian 12 (minbase)")
    _run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", "bookworm", str(rootfs), DEBIAN_MIRROR],
        what="debootstrap", log=STATE / "debootstrap.log",
    )  # fmt: skip
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / leftover).glob("*"):
            if item.is_file():
                item.unlink()
    partial = tar_path.with_suffix(".partial")
    _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], what="tar rootfs")
    partial.rename(tar_path)
    shutil.rmtree(rootfs, ignore_errors=True)
    return tar_path


STAND_IN_KINDS = ("base", "devel", "cudnn-runtime")


def _stand_in_requirements(cuda_full: str, kind: str) -> list[str]:
    """NVIDIA's wheels that make up a stand-in of one nvidia/cuda flavour."""
    major, minor = (int(x) for x in cuda_full.split(".")[:2])
    suffix = "" if major >= 13 else f"-cu{major}"
    requirements = [f"nvidia-cuda-runtime{suffix}=={major}.{minor}.*"]
    if kind == "devel":
        tools = ["nvidia-cuda-nvcc", "nvidia-cuda-cccl"] + (["nvidia-cuda-crt", "nvidia-nvvm"] if major >= 13 else [])
        requirements += [f"{name}{suffix}=={major}.{minor}.*" for name in tools]
    if kind == "cudnn-runtime":  # what NVIDIA's cudnn-runtime images add: the math libraries, NCCL and cuDNN
        requirements += [
            f"{name}{suffix}" for name in ("nvidia-cublas", "nvidia-cufft", "nvidia-curand", "nvidia-cusolver", "nvidia-cusparse")
        ]
        requirements += [f"nvidia-nccl-cu{major}", f"nvidia-cudnn-cu{major}"]
    return requirements


def _cuda_wheels(cuda_full: str, kind: str, say: Say) -> list[Path]:
    """Download the wheels of a stand-in from PyPI (on the host)."""
    from .wheels import platform_tags

    requirements = _stand_in_requirements(cuda_full, kind)
    dest = STATE / f"cuda-wheels-{cuda_full}-{kind}"
    dest.mkdir(parents=True, exist_ok=True)
    say(f"testenv: fetching {', '.join(requirements)}")
    platform_args = [arg for tag in platform_tags("2.36") for arg in ("--platform", tag)]
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
         "--implementation", "cp", *platform_args, "--dest", str(dest), *requirements],
        what="fetching CUDA wheels", log=STATE / "pip.log",
    )  # fmt: skip
    wanted = {re.split(r"[=<>]", r)[0].replace("-", "_") for r in requirements}
    return sorted(p for p in dest.glob("*.whl") if p.name.split("-")[0] in wanted)


def _cuda_tree(wheels: Iterable[Path], cuda_dir: str) -> dict[str, tuple[bytes, int]]:
    """Merge the nvidia/<part>/ folders of the wheels into one CUDA tree (bin, include, lib, nvvm)."""
    files: dict[str, tuple[bytes, int]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                parts = info.filename.split("/")
                if info.is_dir() or len(parts) < 3 or parts[0] != "nvidia" or parts[2].startswith("."):
                    continue
                # Wheels record 0744 for tools; an image must let any user run them.
                mode = 0o755 if (info.external_attr >> 16) & 0o100 else 0o644
                files[f"{cuda_dir}/" + "/".join(parts[2:])] = (archive.read(info), mode)
    return files


def _stand_in_dockerfile(debian_ref: str, cuda_full: str, devel: bool) -> str:
    major, minor = cuda_full.split(".")[:2]
    cuda_path = ":/usr/local/cuda/bin" if devel else ""
    return f"""FROM {debian_ref}
COPY cuda-{major}.{minor} /usr/local/cuda-{major}.{minor}
RUN ln -s cuda-{major}.{minor} /usr/local/cuda && ln -s lib /usr/local/cuda/lib64 \\
 && echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig
ENV CUDA_VERSION={cuda_full} \\
    NVIDIA_VISIBLE_DEVICES=all \\
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \\
    NVIDIA_REQUIRE_CUDA="cuda>={major}.{minor}" \\
    LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \\
    PATH=/usr/local/nvidia/bin{cuda_path}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.torch-images.stand-in="Debian 12 + NVIDIA CUDA {cuda_full} wheels from PyPI; not an NVIDIA image" \\
      {RECIPE_LABEL}="{STAND_IN_RECIPE}"
"""


def ensure_stand_ins(engine: Engine, specs: Iterable[ImageSpec], say: Say, *, extra: Iterable[str] = ()) -> list[str]:
    """Every base the given images need (and extra upstream names), pushed under the mirror path; existing ones are reused."""
    wanted = sorted({spec.base_upstream for spec in specs} | set(extra))
    debian_ref = f"{MIRROR}/library/debian:12"
    if not in_registry(debian_ref):
        tar_path = _debian_rootfs_tar(say)
        say(f"testenv: importing {debian_ref}")
        engine.import_rootfs(tar_path, debian_ref, changes=['CMD ["/bin/bash"]'])
        engine.push(debian_ref)
    for upstream in wanted:
        ref = f"{MIRROR}/{upstream}"
        if upstream == "library/debian:12" or _current_stand_in(engine, ref):
            continue
        repository, tag = upstream.rsplit(":", 1)
        cuda_full, *kind_parts, _os = tag.split("-")
        kind = "-".join(kind_parts)
        if repository != "nvidia/cuda" or kind not in STAND_IN_KINDS:
            raise TestEnvError(f"no stand-in recipe for {upstream}")
        devel = kind == "devel"
        say(f"testenv: building stand-in {ref}")
        major, minor = cuda_full.split(".")[:2]
        tree = _cuda_tree(_cuda_wheels(cuda_full, kind, say), f"cuda-{major}.{minor}")
        files = {name: data for name, (data, _mode) in tree.items()}
        modes = {name: mode for name, (_data, mode) in tree.items()}
        files["Dockerfile"] = _stand_in_dockerfile(debian_ref, cuda_full, devel).encode()
        log_path = STATE / f"stand-in-{tag}.log"
        with open(log_path, "w") as log:
            image_id = engine.build(context_tar(files, modes=modes), log=log)
        engine.tag(image_id, ref)
        engine.push(ref)
    return [f"{MIRROR}/{u}" for u in wanted]


def _current_stand_in(engine: Engine, ref: str) -> bool:
    """True when the registry has ref built by the current recipe (pulled here to read its labels)."""
    if not in_registry(ref):
        return False
    info = engine.image(ref)
    if info is None or info.labels.get(RECIPE_LABEL) != STAND_IN_RECIPE:
        engine.pull(ref)
        info = engine.image(ref)
    return info is not None and info.labels.get(RECIPE_LABEL) == STAND_IN_RECIPE


def check_nvcc(engine: Engine, ref: str) -> str:
    """nvcc -V output from a devel stand-in."""
    result = engine.run(ref, ["nvcc", "-V"], timeout=60, user="65534:65534")  # any user, as images run
    if result.exit_code != 0:
        raise TestEnvError(f"nvcc -V failed in {ref}: {result.output.strip()[-300:]}")
    return result.output


def setup(specs: Iterable[ImageSpec], say: Say = print) -> Engine:
    """Engine, registry and stand-ins; a second run reuses what is there."""
    engine = ensure_engine(say)
    ensure_registry(say)
    refs = ensure_stand_ins(engine, list(specs), say)
    for ref in refs:
        if ref.split(":")[-1].split("-")[1:2] == ["devel"]:
            say(f"testenv: {ref}: " + check_nvcc(engine, ref).strip().splitlines()[-1])
    return engine
