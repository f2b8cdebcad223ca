"""Arrival rates of a workload config: read the nominal mean rate, or set it (capacity
searches and load sweeps move λ while keeping the process's shape)."""
from __future__ import annotations

import math
from typing import Any

from simsched.errors import ConfigError, check_positive


def with_arrival_rate(cfg: Any, rate: float) -> Any:
    """A copy of a simsched config whose workload's mean arrival rate is ``rate`` (req/s).

    Trace replays set ``workload.target_rate``; windowed Gamma scales every window's rate;
    Poisson and Gamma-with-rate+cv set ``workload.arrivals.rate``; Gamma given by shape+scale
    keeps its shape (its burstiness) and sets ``scale = 1/(rate·shape)``; ON/OFF scales both
    phase rates by the same factor. Anything else is a ConfigError naming the node.
    """
    from omegaconf import OmegaConf

    check_positive("rate", rate)
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    workload = out.get("workload")
    if workload is not None and "target_rate" in workload and "path" in workload:
        workload.target_rate = float(rate)   # a trace: replayed at the rate that gives this mean
        workload.rps_scale = 1.0
        return out
    arrivals = workload.get("arrivals") if workload is not None else None
    if arrivals is None:
        raise ConfigError("workload.arrivals", "this workload has no arrival process whose rate can be set")
    keys = set(arrivals.keys())
    if "rates" in keys and "window_s" in keys:   # windowed Gamma: keep the pattern, scale its level
        current = arrival_rate(out)
        arrivals.rates = [float(r) * float(rate) / current for r in arrivals.rates]
    elif "rate_on" in keys and "rate_off" in keys:
        current = arrival_rate(out)
        factor = float(rate) / current
        arrivals.rate_on = float(arrivals.rate_on) * factor
        arrivals.rate_off = float(arrivals.rate_off) * factor
    elif "rate" in keys and (arrivals.get("rate") is not None or "shape" not in keys):
        arrivals.rate = float(rate)
    elif "shape" in keys and arrivals.get("shape") is not None:
        arrivals.scale = 1.0 / (float(rate) * float(arrivals.shape))
    else:
        raise ConfigError("workload.arrivals", "cannot set the arrival rate of this process",
                          arrivals.get("_target_"))
    return out


def arrival_rate(cfg: Any) -> float:
    """The nominal mean arrival rate (req/s) of a config's workload, or NaN when it has none."""
    workload = cfg.get("workload") if hasattr(cfg, "get") else None
    arrivals = workload.get("arrivals") if workload is not None else None
    if arrivals is None:
        return math.nan
    get = arrivals.get
    if get("rates") is not None:
        rates = [float(r) for r in get("rates")]
        return sum(rates) / len(rates)
    if get("rate_on") is not None and get("rate_off") is not None:
        on, off = float(get("mean_on_s")), float(get("mean_off_s"))
        return (float(get("rate_on")) * on + float(get("rate_off")) * off) / (on + off)
    if get("rate") is not None:
        return float(get("rate"))
    if get("shape") is not None and get("scale") is not None:
        return 1.0 / (float(get("shape")) * float(get("scale")))
    return math.nan
