"""Stand-in CUDA bases: Debian 12 plus NVIDIA's CUDA wheels from PyPI, with the nvidia/cuda environment contract.

They are pushed to the loopback registry under the mirror path (`127.0.0.1:5000/mirror/nvidia/cuda:...`),
so the product builds from them through its ordinary `base.mirror` setting.
"""

from __future__ import annotations

import re
import shutil
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

from ..engine import Engine
from ..model import BaseImage, ImageSpec
from ..render import context_tar
from .containers import import_rootfs
from .services import MIRROR, STATE, Say, TestEnvError, in_registry, run_logged

DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the stand-in Debian carries, so image builds from it need no network inside the container.
DEBIAN_PACKAGES = ("ca-certificates", "passwd", "python3.11", "python3.11-venv", "python3-venv", "python3-distutils")
# Bump when the stand-in recipe changes: stand-ins with another recipe are rebuilt.
STAND_IN_RECIPE = "2"
RECIPE_LABEL = "org.torch-images.stand-in-recipe"


def _debian_rootfs_tar(say: Say) -> Path:
    tar_path = STATE / "debian12-rootfs.tar"
    if tar_path.exists():
        return tar_path
    rootfs = STATE / "debian12-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    say("testenv: debootstrap Debian 12 (minbase)")
    run_logged(
        ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", "bookworm", str(rootfs), DEBIAN_MIRROR],
        what="debootstrap", log=STATE / "debootstrap.log",
    )  # fmt: skip
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / leftover).glob("*"):
            if item.is_file():
                item.unlink()
    partial = tar_path.with_suffix(".partial")
    run_logged(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], what="tar rootfs")
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
    from ..wheels import platform_tags

    requirements = _stand_in_requirements(cuda_full, kind)
    dest = STATE / f"cuda-wheels-{cuda_full}-{kind}"
    dest.mkdir(parents=True, exist_ok=True)
    say(f"testenv: fetching {', '.join(requirements)}")
    platform_args = [arg for tag in platform_tags("2.36") for arg in ("--platform", tag)]
    run_logged(
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


def ensure_stand_ins(engine: Engine, specs: Iterable[ImageSpec], say: Say, *, extra: Iterable[BaseImage] = ()) -> list[str]:
    """Every base the given images need (and extra bases), pushed under the mirror path; existing ones are reused."""
    wanted = sorted({spec.base for spec in specs} | set(extra), key=lambda b: b.upstream)
    debian_ref = f"{MIRROR}/library/debian:12"
    if not in_registry(debian_ref):
        tar_path = _debian_rootfs_tar(say)
        say(f"testenv: importing {debian_ref}")
        import_rootfs(tar_path, debian_ref, changes=['CMD ["/bin/bash"]'])
        engine.push(debian_ref)
    for base in wanted:
        ref = f"{MIRROR}/{base.upstream}"
        if base.upstream == "library/debian:12" or _current_stand_in(engine, ref):
            continue
        if base.repository != "nvidia/cuda" or base.kind not in STAND_IN_KINDS or base.cuda_full is None:
            raise TestEnvError(f"no stand-in recipe for {base.upstream}")
        cuda_full, kind, devel = base.cuda_full, base.kind, base.kind == "devel"
        say(f"testenv: building stand-in {ref}")
        major, minor = cuda_full.split(".")[:2]
        tree = _cuda_tree(_cuda_wheels(cuda_full, kind, say), f"cuda-{major}.{minor}")
        files = {name: data for name, (data, _mode) in tree.items()}
        modes = {name: mode for name, (_data, mode) in tree.items()}
        files["Dockerfile"] = _stand_in_dockerfile(debian_ref, cuda_full, devel).encode()
        log_path = STATE / f"stand-in-{base.tag}.log"
        with open(log_path, "w") as log:
            image_id = engine.build(context_tar(files, modes=modes), log=log)
        engine.tag(image_id, ref)
        engine.push(ref)
    return [f"{MIRROR}/{b.upstream}" for b in wanted]


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
