"""One simulation run from a composed config: build, simulate, measure, write, then track.

Plain Python over an OmegaConf node; the Hydra entry point (``__main__``) only supplies the
config and the output folder, so notebooks and tests call ``run`` directly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from simsched.config import build, check_settings
from simsched.engines.continuous import ContinuousEngine, simulate_continuous
from simsched.engines.continuous.policies import policy_setup
from simsched.engines.continuous.routing import ROUND_ROBIN_ROUTER
from simsched.engines.continuous.simulate import prepare as prepare_continuous
from simsched.engines.continuous.simulate import usable_kv_tokens
from simsched.engines.run_to_completion import SimResult, simulate
from simsched.errors import ConfigError, check_positive
from simsched.metrics import Sla, Window, compute_metrics
from simsched.outputs import (MARKER, format_table, plot_latency_cdf, write_marker, write_metrics,
                              write_serving_tables, write_tables)
from simsched.scheduler import QueuePolicy, VllmScheduler
from simsched.serving_metrics import compute_serving_metrics, format_serving_table
from simsched.saturation import saturation_throughput
from simsched.workloads.summary import format_summary, summarize


@dataclass
class Components:
    engine: Any
    scheduler: Any
    workload: Any
    latency_model: Any
    predictor: Any
    gpus: Any
    router: Any
    sla: Sla
    window: Window
    tracker: Any = None


def build_components(cfg: DictConfig) -> Components:
    """Check every key and instantiate every group, the tracker included, so that any mistake
    in the config (a bad value, or groups that do not go together: a scheduler or latency model
    the engine cannot run) is a ConfigError naming its dotted key before the run starts."""
    check_settings(cfg)
    parts = {g: build(cfg[g], g) for g in ("engine", "scheduler", "workload", "latency_model", "predictor", "gpus")}
    parts["router"] = build(cfg.router, "router") if cfg.get("router") is not None else ROUND_ROBIN_ROUTER
    tracking = cfg.get("tracking")
    parts["tracker"] = build(tracking, "tracking") if tracking is not None else None
    try:
        sla = Sla(**OmegaConf.to_container(cfg.sla))
    except ConfigError as exc:
        raise exc.under("sla") from None
    try:
        window = Window(warmup_fraction=cfg.metrics.warmup_fraction)
        check_positive("saturation_requests", cfg.metrics.saturation_requests, integer=True, allow_zero=True)
    except ConfigError as exc:
        raise exc.under("metrics") from None
    comps = Components(sla=sla, window=window, **parts)
    if is_continuous(comps):
        prepare_continuous(comps.engine, comps.scheduler, comps.latency_model, comps.gpus)
        check_router(comps.router, comps.gpus)
    elif getattr(comps.gpus, "pools", None):
        raise ConfigError("gpus.pools", "heterogeneous pools run on engine=continuous only")
    elif comps.router.name != "round_robin":
        raise ConfigError("router", "routes arrivals on engine=continuous only (run_to_completion dispatches "
                          "each batch to the first free GPU)", comps.router.name, allowed="round_robin")
    elif isinstance(comps.scheduler, (VllmScheduler, QueuePolicy)):
        raise ConfigError("scheduler", f"{comps.scheduler.name} orders vLLM's WAITING queue and runs only on "
                          "engine=continuous", comps.scheduler.name, allowed="static_fifo, dynamic_no_bins, multi_bin_dynamic, multi_bin_static")
    return comps


def check_router(router: Any, gpus: Any) -> None:
    """A router's settings against the fleet (one-line errors naming the key)."""
    if router.name == "bin_affine" and router.k_bins > gpus.count:
        raise ConfigError("router.k_bins", f"must be at most the number of replicas (gpus.count = {gpus.count})",
                          router.k_bins)


def is_continuous(comps: Components) -> bool:
    return isinstance(comps.engine, ContinuousEngine)


def simulate_config(cfg: DictConfig, comps: Components | None = None) -> tuple[Any, dict[str, Any], Components]:
    """Build and run the simulation of a config; returns the result (a run-to-completion
    ``SimResult`` or a ``ContinuousResult``), its metrics and components."""
    comps = comps or build_components(cfg)
    root = np.random.SeedSequence(int(cfg.seed))
    workload_ss, sim_ss, saturation_ss = root.spawn(3)
    wl_seed = getattr(comps.workload, "seed", None)
    wl_rng = np.random.default_rng(wl_seed if wl_seed is not None else workload_ss)
    t0 = time.perf_counter()
    try:
        requests = comps.workload.generate(wl_rng)
    except ConfigError as exc:   # an option whose effect shows only on the data (a trace's rps_scale)
        raise exc.under("workload") from None
    t1 = time.perf_counter()
    # Now, while the requests are all the run holds: its temporary columns add nothing to the peak.
    summary = summarize(requests)
    t_sim = time.perf_counter()
    if is_continuous(comps):
        step, hardware, cap = prepare_continuous(comps.engine, comps.scheduler, comps.latency_model, comps.gpus)
        policy = policy_setup(comps.engine, comps.scheduler, comps.predictor, requests,
                              np.random.default_rng(sim_ss), usable_kv_tokens(comps.engine, hardware, cap))
        predicted = None
        if comps.router.name in ("least_tokens", "bin_affine"):
            predicted = comps.predictor.predict(requests.output, np.random.default_rng(sim_ss))
        res, _ = simulate_continuous(requests, comps.engine, step, hardware, cap, policy=policy,
                                     router=comps.router, predicted=predicted)
        t2 = time.perf_counter()
        metrics = compute_serving_metrics(res, comps.sla, comps.window)
    else:
        res = simulate(requests, comps.scheduler, comps.latency_model, comps.gpus, comps.predictor,
                       np.random.default_rng(sim_ss), horizon_s=comps.engine.horizon_s,
                       release=comps.engine.release)
        t2 = time.perf_counter()
        mu_sat = saturation_throughput(requests, comps.scheduler, comps.latency_model, comps.gpus,
                                       comps.predictor, np.random.default_rng(saturation_ss),
                                       int(cfg.metrics.saturation_requests))
        metrics = compute_metrics(res, comps.sla, comps.window, saturation_rps=mu_sat)
    metrics["workload_wall_s"] = t1 - t0
    metrics["sim_wall_s"] = t2 - t_sim
    metrics["sim_requests_per_s"] = len(requests) / (t2 - t_sim) if t2 > t_sim else float("nan")
    metrics.update(summary)
    return res, metrics, comps


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted keys (MLflow params)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def run_tags(cfg: DictConfig, commit: str | None = None) -> dict[str, str]:
    """Tags that make runs easy to compare in the MLflow UI (``commit``: the git commit when
    the caller knows it already, saving a ``git`` call per run)."""
    from simsched.workloads.rates import arrival_rate
    from simsched.tracking import base_tags

    rate = arrival_rate(cfg)
    return base_tags(commit) | {
        "engine": str(cfg.engine.get("name", "")),
        "scheduler": str(cfg.scheduler.get("name", "")),
        "k_bins": str(cfg.scheduler.get("k_bins", 1)),
        "workload": str(cfg.workload.get("name", "")),
        "lambda": "" if rate != rate else f"{rate:g}",
        "gpus": str(cfg.gpus.get("count", "")),
        "router": str(cfg.router.get("name", "")) if cfg.get("router") is not None else "",
        "seed": str(cfg.seed),
    }


def run_name(cfg: DictConfig) -> str:
    """The readable MLflow run name of a run or sweep job: ``multi_bin_dynamic K=4 λ=10 G=2 seed=0``."""
    from simsched.workloads.rates import arrival_rate

    try:
        rate = arrival_rate(cfg)
    except Exception:  # noqa: BLE001 - a config too broken for a rate still gets a name
        rate = float("nan")
    return (f"{cfg.scheduler.get('name', '')} K={cfg.scheduler.get('k_bins', 1)} "
            f"λ={'' if rate != rate else f'{rate:g}'} G={cfg.gpus.get('count', '')} seed={cfg.get('seed')}")


def run(cfg: DictConfig, out_dir: Path, *, tags: dict[str, str] | None = None,
        parent_run_id: str | None = None, background: bool = False,
        commit: str | None = None, defer: str | None = None) -> dict[str, Any]:
    """Run one simulation and write its folder; tracking comes last and cannot lose results.

    Every file is written atomically and ``done.json`` last (``outputs.check_run_dir`` tells a
    complete folder from an interrupted one). The results are printed before any tracking
    work. ``tags`` are added to the run's tags; ``parent_run_id`` nests it under a sweep's run;
    ``background``: hand the logging to a background process when the tracker allows it;
    ``defer``: do not log now, record why (``python -m simsched.track`` logs it later).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    res, metrics, comps = simulate_config(cfg)
    continuous = is_continuous(comps)
    if continuous:
        files = write_serving_tables(out_dir, res, cfg.output.requests_table)
    else:
        files = write_tables(out_dir, res, cfg.output.requests_table, cfg.output.batches_table)
    if cfg.output.plots:
        files.append(plot_latency_cdf(out_dir / "latency_cdf.png", res, str(cfg.scheduler.get("name", ""))))
    files.append(write_metrics(out_dir / "metrics.json", metrics))
    write_marker(out_dir, files)
    if not cfg.output.quiet:
        label = (f"{cfg.engine.get('name', '')}/{cfg.scheduler.get('name', '')} on {comps.gpus.count} GPU(s), "
                 f"workload {cfg.workload.get('name', '')}")
        print(format_summary(metrics))
        print(format_serving_table(metrics, label) if continuous else format_table(metrics, label))
        print(f"  outputs in {out_dir}", flush=True)
    if cfg.tracking is not None:
        track(cfg, out_dir, metrics, files, tags=tags, parent_run_id=parent_run_id, background=background,
              commit=commit, defer=defer)
    return metrics


def track(cfg: DictConfig, out_dir: Path, metrics: dict[str, Any], files: list[Path], *,
          tags: dict[str, str] | None = None, parent_run_id: str | None = None, background: bool = False,
          commit: str | None = None, status: str = "FINISHED", defer: str | None = None) -> str:
    """Log a finished run folder to the configured tracker; returns its tracking state
    (``logged``, ``failed``, ``pending`` when handed to a background process, or ``off``).
    ``defer``: only record the run as not logged, with this reason."""
    from simsched.tracking import STATE_FILE

    tracker = build(cfg.tracking, "tracking")
    log_tables = bool(getattr(tracker, "log_tables", False))
    artifacts = [f for f in files if log_tables or f.suffix != ".parquet"]
    artifacts += [p for p in (out_dir / MARKER, out_dir / ".hydra") if p.exists()]
    try:
        base = run_tags(cfg, commit)
    except Exception:  # noqa: BLE001 - a config too broken for its tags (a failed job) still logs
        from simsched.tracking import base_tags

        base = base_tags(commit)
    record = tracker.record(out_dir, flat_params(cfg), metrics, artifacts,
                            base | {"mlflow.runName": run_name(cfg), "simsched.run_dir": str(out_dir.resolve())}
                            | (tags or {}), parent_run_id=parent_run_id, status=status)
    if record is None:
        return "off"
    from simsched.tracking_state import log_folder, mark_failed, save_pending, spawn_background

    save_pending(out_dir, record)
    if defer:
        mark_failed(out_dir, defer)
        return "failed"
    quiet = bool(cfg.output.quiet)
    if background and getattr(tracker, "background", False):
        problem = spawn_background(out_dir)
        if problem is None:
            if not quiet:
                print(f"MLflow: logging run '{record.run_name}' to {record.uri} in the background "
                      f"(state in {out_dir / STATE_FILE})", flush=True)
            return "pending"
    elif not quiet:
        print(f"MLflow: logging run '{record.run_name}' to {record.uri} ...", flush=True)
    state = log_folder(out_dir)
    if not quiet and state.get("state") == "logged":
        print(f"MLflow: logged run {state.get('run_id')}", flush=True)
    return str(state.get("state"))
