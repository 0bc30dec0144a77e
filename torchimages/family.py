"""The exact builds of torch, torchvision and torchaudio one image installs, and how pip is told to get only those.

Every torch release is published in several variants (cu126, cu128, cpu, ...): on the PyTorch index each
file carries the variant as a local version (`torch-2.11.0+cu126`), while PyPI holds one build per release
without a local version (`torch-2.11.0`, its default variant). A requirement without a local version
(`torchvision==0.26.0`) matches every variant, so pins here are exact: `==0.26.0+cu126` for an index build,
and `===0.26.0` (arbitrary equality: the version string exactly, so no `+cu128` build qualifies) for
PyPI's. Whatever else sits in an index or a wheelhouse, pip can then pick nothing but the image's own build.
"""

from __future__ import annotations

from .compat import Compat, TorchRelease, cuda_from_tag, version_key
from .model import FamilyBuild

FAMILY = ("torch", "torchvision", "torchaudio")


class FamilyError(Exception):
    """No build of a family member fits the image."""


def compatible(companion: str, torch_variant: str) -> bool:
    """A companion built for `companion` runs beside a torch built for `torch_variant`.

    The same variant always does; CPU only beside CPU; a CUDA build beside a torch of the same CUDA major
    and a newer or equal minor (CUDA minor-version compatibility: the torch wheel brings the newer runtime).
    """
    if companion == torch_variant:
        return True
    if "cpu" in (companion, torch_variant):
        return False
    (c_major, c_minor), (t_major, t_minor) = (tuple(int(x) for x in cuda_from_tag(v).split(".")) for v in (companion, torch_variant))
    return c_major == t_major and c_minor <= t_minor


def torchaudio_home(table: Compat, release: TorchRelease) -> TorchRelease:
    """The release a torchaudio was published with: torchaudio 2.11.0 serves torch 2.11 and every later release."""
    homes = [r for r in table.torch.values() if r.torchaudio == release.torchaudio]
    return min(homes, key=lambda r: version_key(r.version))


def family_builds(table: Compat, release: TorchRelease, variant: str, *, omit: tuple[str, ...] = ()) -> tuple[FamilyBuild, ...]:
    """torch, then torchvision and torchaudio where the release has them and they are not omitted."""
    on_pypi = variant == release.pypi_default

    def build(name: str, version: str) -> FamilyBuild:
        return FamilyBuild(name=name, version=version if on_pypi else f"{version}+{variant}", variant=variant, on_pypi=on_pypi)

    builds = [build("torch", release.version)]
    if release.torchvision and "torchvision" not in omit:
        builds.append(build("torchvision", release.torchvision))
    if release.torchaudio and "torchaudio" not in omit:
        builds.append(_torchaudio(table, release, variant, on_pypi))
    return tuple(builds)


def _torchaudio(table: Compat, release: TorchRelease, variant: str, on_pypi: bool) -> FamilyBuild:
    assert release.torchaudio is not None
    home = torchaudio_home(table, release)
    if not home.files.torchaudio_local:  # before 0.10: one CPU-only build for every variant, the same file as on PyPI
        return FamilyBuild(name="torchaudio", version=release.torchaudio, variant="cpu", on_pypi=True)
    if on_pypi:
        offered: tuple[str, ...] = (home.pypi_default,) if home.pypi_default else ()
    else:
        offered = home.all_variants
    fitting = [v for v in offered if compatible(v, variant)]
    if not fitting:
        where = "PyPI's build" if on_pypi else "the PyTorch index"
        raise FamilyError(
            f"torchaudio {release.torchaudio} has no build for {variant} on {where} (it has {', '.join(offered) or 'none'}); "
            "omit torchaudio or choose another CUDA"
        )
    chosen = variant if variant in fitting else max(fitting, key=lambda v: version_key(cuda_from_tag(v)))
    version = release.torchaudio if on_pypi else f"{release.torchaudio}+{chosen}"
    return FamilyBuild(name="torchaudio", version=version, variant=chosen, on_pypi=on_pypi)


def missing_python(table: Compat, release: TorchRelease, builds: tuple[FamilyBuild, ...], python: str) -> str | None:
    """Which family member has no wheel for this python, named for a message; None when all have one."""
    lists = {"torch": release.python, "torchvision": release.torchvision_python}
    lists["torchaudio"] = torchaudio_home(table, release).torchaudio_python
    for b in builds:
        if python not in lists[b.name]:
            return f"{b.name} {b.version.split('+')[0]} has no wheels for python {python}; it has {', '.join(lists[b.name])}"
    return None
