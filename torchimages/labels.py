"""The label contract: every label an image carries, what it means, and which step writes it.

Three steps write labels, in this order (a later one overrides an earlier one with the same key):

1. The Dockerfile (`expected_labels`): what the matrix promises. Rendered into the checked-in files.
2. The build (`build_labels`): the build hash and provenance, facts of this build outside the
   Dockerfile, so a new commit alone changes no Dockerfile and rebuilds nothing.
3. Verification (`verified_labels`): what torch-verify saw inside the image, and the seal that
   says which build was verified, and how. Written only after verification passed.

Docker copies every label of a base image into images built from it, so a label that says
"verified" proves nothing by itself: the seal (`VERIFIED_BUILD`) must equal the image's own build
hash, which the build step writes afresh for each image.
"""

from __future__ import annotations

from .model import ImageSpec, VerifyReport

OCI = "org.opencontainers.image"
PREFIX = "org.torch-images"

# org.opencontainers.image.*: as docker/metadata-action writes them.
TITLE = f"{OCI}.title"
DESCRIPTION = f"{OCI}.description"
VERSION = f"{OCI}.version"  # the full tag, e.g. 2.11.0-py3.12-cuda12.8-cudnn9-runtime-ubuntu24.04
CREATED = f"{OCI}.created"  # when verification passed, RFC 3339 UTC
SOURCE = f"{OCI}.source"  # the repository's web page (GHCR links the package through it)
URL = f"{OCI}.url"
REVISION = f"{OCI}.revision"  # the commit, "-dirty" when tracked files had changes
BASE_NAME = f"{OCI}.base.name"  # docker.io/nvidia/cuda:<tag>
BASE_DIGEST = f"{OCI}.base.digest"  # sha256:... of the base the build used

# org.torch-images.*: the matrix's promise, replaced by what verification saw where it looks.
TORCH = f"{PREFIX}.torch"
TORCHVISION = f"{PREFIX}.torchvision"
TORCHAUDIO = f"{PREFIX}.torchaudio"
CUDA = f"{PREFIX}.cuda"  # the wheel's CUDA ("none" for CPU builds)
BASE_CUDA = f"{PREFIX}.base-cuda"  # the base image's CUDA
MIN_DRIVER = f"{PREFIX}.min-driver"
CUDNN = f"{PREFIX}.cudnn"
PYTHON = f"{PREFIX}.python"
FLAVOUR = f"{PREFIX}.flavour"
OS = f"{PREFIX}.os"
WHEEL_VARIANT = f"{PREFIX}.wheel-variant"
PACKAGES = f"{PREFIX}.packages"

BUILD_HASH = f"{PREFIX}.build-hash"  # the image's inputs: build context and base
VERIFIED = f"{PREFIX}.verified"  # "true" once torch-verify passed (for people and registries)
VERIFIED_BUILD = f"{PREFIX}.verified-build"  # the build hash verification passed for (the seal a run trusts)
VERIFIED_GPU = f"{PREFIX}.verified-gpu"  # "true" when verification ran with GPUs (a conv2d and a matmul on them)

COMPANIONS = {"torchvision": TORCHVISION, "torchaudio": TORCHAUDIO}


def expected_labels(spec: ImageSpec) -> dict[str, str]:
    """The labels an image is built with: what the matrix promises."""
    labels = {
        TITLE: "torch-images pytorch",
        DESCRIPTION: f"PyTorch {spec.torch}, python {spec.python}, " + (f"CUDA {spec.cuda} {spec.flavour}" if spec.cuda else "CPU"),
        VERSION: spec.name,
        BASE_NAME: spec.base.qualified,
        TORCH: spec.torch_build,
        TORCHVISION: spec.torchvision or "none",
        TORCHAUDIO: spec.torchaudio or "none",
        CUDA: spec.wheel_cuda or "none",
        BASE_CUDA: spec.cuda or "none",
        MIN_DRIVER: spec.min_driver or "none",
        CUDNN: spec.cudnn or "none",
        PYTHON: spec.python,
        FLAVOUR: spec.flavour,
        OS: spec.os,
        WHEEL_VARIANT: spec.wheel_variant,
        PACKAGES: ",".join(spec.modules),
    }
    return dict(sorted(labels.items()))


def build_labels(build_hash: str, *, source: dict[str, str], base_digest: str | None) -> dict[str, str]:
    """Labels given to the build itself: its hash, and where it came from."""
    labels = {BUILD_HASH: build_hash, **source}
    if base_digest:
        labels[BASE_DIGEST] = base_digest
    return labels


def verified_labels(report: VerifyReport, *, build_hash: str, gpus: bool, created: str) -> dict[str, str]:
    """What verification saw, and the seal: this build hash passed, with or without GPUs."""
    labels = {
        VERIFIED: "true",
        VERIFIED_BUILD: build_hash,
        VERIFIED_GPU: "true" if gpus else "false",
        CREATED: created,
        TORCH: report.torch or "none",
        CUDA: report.torch_cuda or "none",
        CUDNN: report.cudnn or "none",
        PYTHON: report.python or "none",
    }
    for module, key in COMPANIONS.items():
        if report.packages.get(module):
            labels[key] = str(report.packages[module])
    return labels


def sealed(labels: dict[str, str], build_hash: str, *, gpus: bool) -> bool:
    """Whether an image with these labels passed verification as this very build, and at least as thoroughly as asked.

    An image verified without GPUs does not count for a run that verifies with them.
    """
    return (
        labels.get(BUILD_HASH) == build_hash
        and labels.get(VERIFIED_BUILD) == build_hash
        and labels.get(VERIFIED) == "true"
        and (labels.get(VERIFIED_GPU) == "true" or not gpus)
    )


def seal_step(build_hash: str) -> str:
    """What the seal's LABEL step shows in the image history, the newest entry of a sealed image (Docker drops the quotes)."""
    return f"{VERIFIED_BUILD}={build_hash}"


def report_from_labels(labels: dict[str, str]) -> VerifyReport:
    """The inverse of verified_labels: what verification saw when a reused image was built."""

    def seen(key: str) -> str | None:
        value = labels.get(key)
        return None if value in (None, "none") else value

    return VerifyReport(
        ok=True, exit_code=0, torch=seen(TORCH), torch_cuda=seen(CUDA), cudnn=seen(CUDNN), python=seen(PYTHON),
        gpu=labels.get(VERIFIED_GPU) == "true", packages={m: v for m, key in COMPANIONS.items() if (v := seen(key))},
        output="reused: verified when it was built",
    )  # fmt: skip
