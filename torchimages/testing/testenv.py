"""Set up what the tests need, idempotently: a Docker engine, a loopback registry, index replicas, stand-in CUDA bases."""

from __future__ import annotations

from collections.abc import Iterable

from ..engine import Engine
from ..model import ImageSpec
from ..pipeline import remove_stale_wheels
from .containers import prune_old_build_cache, prune_untagged_builds
from .services import (
    MIRROR,
    REGISTRY,
    REPLICA,
    Say,
    TestEnvError,
    delete_from_registry,
    ensure_engine,
    ensure_registry,
    ensure_replica,
    in_registry,
)
from .standins import check_nvcc, ensure_stand_ins

__all__ = ["MIRROR", "REGISTRY", "REPLICA", "TestEnvError", "delete_from_registry", "ensure_stand_ins", "in_registry", "setup"]


def setup(specs: Iterable[ImageSpec], say: Say = print) -> Engine:
    """Engine, registry and stand-ins; a second run reuses what is there."""
    specs = list(specs)
    ensure_replica(say)
    engine = ensure_engine(say)
    freed = prune_untagged_builds()
    if freed:
        say(f"testenv: removed untagged images of earlier builds: freed {freed / 1e9:.1f} GB")
    if wheels := remove_stale_wheels(engine, older_than=2 * 3600):
        say(f"testenv: removed {len(wheels)} wheels image(s) that killed runs left")
    if cache := prune_old_build_cache():
        say(f"testenv: removed build cache records unused for 2 hours: freed {cache / 1e9:.1f} GB")
    ensure_registry(say, keep={spec.repository.removeprefix(f"{REGISTRY}/") for spec in specs})
    refs = ensure_stand_ins(engine, specs, say)
    for ref in refs:
        if ref.split(":")[-1].split("-")[1:2] == ["devel"]:
            say(f"testenv: {ref}: " + check_nvcc(engine, ref).strip().splitlines()[-1])
    return engine
