"""The GPUs: G identical GPUs, each with a KV cache of ``kv_capacity_tokens`` tokens, or (on
``engine=continuous``) a heterogeneous fleet of ``pools``. ``memory_gib`` (the device memory)
picks vLLM's batch defaults on ``engine=continuous``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simsched.errors import ConfigError, check_positive, check_range

# The engine keeps per-GPU state in Python lists: a million GPUs is already far past any cluster.
MAX_GPUS = 1_000_000
POOL_KEYS = ("name", "count", "gpu", "kv_capacity_tokens", "memory_gib")


@dataclass(frozen=True)
class Gpus:
    count: int = 2
    kv_capacity_tokens: int = 120_000
    name: str = "H100-80GB"
    memory_gib: float | None = None
    pools: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.pools is not None:
            object.__setattr__(self, "pools", check_pools(self.pools))
            object.__setattr__(self, "count", sum(p["count"] for p in self.pools))
        check_positive("count", self.count, integer=True)
        check_range("count", self.count, 1, MAX_GPUS, "the engine's per-GPU state is Python lists")
        check_positive("kv_capacity_tokens", self.kv_capacity_tokens, integer=True)
        if self.memory_gib is not None:
            check_positive("memory_gib", self.memory_gib)


def check_pools(pools: Any) -> list[dict[str, Any]]:
    """``pools``: a non-empty list of {name, count, gpu, kv_capacity_tokens, memory_gib}; ``gpu``
    (a roofline preset: the pool's step time and KV capacity from latency_model=roofline) and
    the last two are optional. Returns them with defaults filled in (None)."""
    from simsched.roofline import GPUS

    if not isinstance(pools, (list, tuple)) or not pools:
        raise ConfigError("pools", "must be a non-empty list of pools", pools)
    out = []
    for k, pool in enumerate(pools):
        where = f"pools[{k}]"
        if not isinstance(pool, dict):
            raise ConfigError(where, "must be a mapping with name, count and gpu or kv_capacity_tokens", pool)
        unknown = sorted(set(pool) - set(POOL_KEYS))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", "is not a pool field", allowed=", ".join(POOL_KEYS))
        p = {key: pool.get(key) for key in POOL_KEYS}
        if not isinstance(p["name"], str) or not p["name"]:
            raise ConfigError(f"{where}.name", "is required (a non-empty string)", p["name"])
        if p["count"] is None:
            raise ConfigError(f"{where}.count", "is required")
        try:
            check_positive("count", p["count"], integer=True)
            for key in ("kv_capacity_tokens", "memory_gib"):
                if p[key] is not None:
                    check_positive(key, p[key], integer=key == "kv_capacity_tokens")
        except ConfigError as exc:
            raise exc.under(where) from None
        if p["gpu"] is not None and str(p["gpu"]).lower() not in GPUS:
            raise ConfigError(f"{where}.gpu", "is not a roofline GPU preset", p["gpu"], allowed=", ".join(GPUS))
        if p["gpu"] is None and p["kv_capacity_tokens"] is None:
            raise ConfigError(f"{where}.kv_capacity_tokens", "is required when the pool names no gpu preset")
        p["count"] = int(p["count"])
        out.append(p)
    names = [p["name"] for p in out]
    for k, name in enumerate(names):
        if name in names[:k]:
            raise ConfigError(f"pools[{k}].name", "repeats another pool's name", name)
    return out
