"""Comparison report of a sweep: one table row per job, means with 95% CIs over seeds, plots,
and capacity gains as ratios.

    python -m simsched.report multirun/2025-01-01/12-00-00          # a multirun folder
    python -m simsched.report --experiment simsched                 # the latest sweep in MLflow
    python -m simsched.report --experiment simsched --parent RUN_ID # a given sweep (parent run)

From a folder the table is built from the job folders (``metrics.json``, ``.hydra/``); from
MLflow, from the child runs' tags and metrics. Plots, made when their x factor varies:
throughput and p99 latency vs K, SLA violation vs λ, latency CDFs per scheduler, GPU
utilisation and slot efficiency vs GPUs. Where λ varies, each scheduler's capacity (largest λ
with mean violation ≤ 1% / 5%, interpolated on the grid) is stated against a baseline as a
ratio. Replications are the ``seed`` column: all jobs equal in every other factor.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

# Standard comparison factors (always columns) and the override keys they already cover.
FACTORS = ["scheduler", "k_bins", "lambda", "gpus", "gpu_name", "workload", "predictor"]
COVERED = {"scheduler", "scheduler.name", "scheduler.k_bins", "gpus", "gpus.count", "gpus.name",
           "workload", "workload.name", "workload.arrivals.rate", "predictor", "predictor.name",
           "seed", "sweep"}
KEY_METRICS = ["throughput_rps", "goodput_rps", "latency_mean_s", "latency_p99_s", "sla_violation_rate",
               "gpu_utilization", "slot_efficiency", "offered_load", "mean_batch_size"]
BASELINE_ORDER = ["static_fifo", "dynamic_no_bins", "multi_bin_static", "multi_bin_dynamic"]
TARGETS = (0.01, 0.05)
PERCENT = ("sla_violation_rate", "gpu_utilization", "slot_efficiency")
# Fewest replications for a 95% CI: with 2 the Student-t factor is 12.7 and the interval says
# nothing (a violation rate of "23.0% ± 178.6%"); tables and plots show the range instead.
MIN_CI_N = 3


# --- the table ---------------------------------------------------------------------------------

def _override_key(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def job_row(job_dir: Path, overrides: list[str] | None = None, job: int | str | None = None) -> dict[str, Any]:
    """One job folder as a row: status (``ok`` only when ``done.json`` vouches for every file),
    error, standard factors, overrides, tracking state and (for ok jobs) ``metrics.json``.
    ``overrides``: the job's overrides from ``jobs.json`` (for a job that never started)."""
    from simsched.outputs import check_run_dir
    from simsched.tracking_state import load_state
    from simsched.workloads.rates import arrival_rate

    hydra_dir = job_dir / ".hydra"
    if (hydra_dir / "overrides.yaml").is_file():
        try:
            overrides = [str(o) for o in _load_yaml(hydra_dir / "overrides.yaml")]
        except Exception:  # noqa: BLE001 - a damaged file: the check below says so
            overrides = overrides or []
    if job is None:
        job = int(job_dir.name) if job_dir.name.isdigit() else job_dir.name
    row: dict[str, Any] = {"job": job, "dir": str(job_dir), "status": "incomplete", "error": "", "tracking": ""}
    if not job_dir.is_dir():
        row["error"] = "not started"
    else:
        check = check_run_dir(job_dir)
        row["status"], row["error"] = check.status, check.detail
    tracked = False
    if (hydra_dir / "config.yaml").is_file():
        try:
            cfg = _load_yaml(hydra_dir / "config.yaml")
            tracked = cfg.get("tracking") is not None and "uri" in cfg["tracking"]
            row.update(factors_of(cfg, arrival_rate(cfg)))
        except Exception:  # noqa: BLE001 - e.g. an interpolation only Hydra can resolve
            pass
    row["overrides"] = _shown(overrides or [])
    for o in row["overrides"].split():
        key, value = _override_key(o)
        if key not in COVERED:
            row[f"override.{key}"] = value
    state = load_state(job_dir) if job_dir.is_dir() else None
    if state is None and tracked and row["status"] == "ok":
        row["tracking"] = "pending: the job ended before it was logged"
    if state is not None:
        row["tracking"] = {"logged": "logged", "pending": "pending"}.get(
            str(state.get("state")), f"failed: {state.get('error', '')}")
        if state.get("run_id"):
            row["run_id"] = state["run_id"]
    if row["status"] == "ok":
        try:
            row.update(json.loads((job_dir / "metrics.json").read_text()))
        except (OSError, ValueError):
            row["status"], row["error"] = "corrupt", "metrics.json is unreadable"
    return row


def _load_yaml(path: Path) -> Any:
    """A YAML file as plain data (libyaml's loader: a tenth of ``OmegaConf.load``'s time), or as an
    OmegaConf node when it holds interpolations, which only OmegaConf resolves."""
    import yaml
    from omegaconf import OmegaConf

    text = path.read_text()
    if "${" in text:
        return OmegaConf.load(path)
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def factors_of(cfg: Any, rate: float) -> dict[str, Any]:
    def get(node: str, key: str, default: Any = None) -> Any:
        sub = cfg.get(node) if hasattr(cfg, "get") else None
        return sub.get(key, default) if sub is not None else default

    return {"scheduler": get("scheduler", "name", ""), "k_bins": int(get("scheduler", "k_bins", 1) or 1),
            "lambda": rate, "gpus": get("gpus", "count"), "gpu_name": get("gpus", "name", ""),
            "workload": get("workload", "name", ""), "predictor": get("predictor", "name", ""),
            "seed": cfg.get("seed")}


def collect(sweep_dir: Path) -> pd.DataFrame:
    """The sweep's table: one row per job folder found (a folder holding ``.hydra/overrides.yaml``)
    and per job of ``jobs.json`` (the sweeper's list) that has no folder: it never started."""
    sweep_dir = Path(sweep_dir)
    listed: dict[str, tuple[int, list[str]]] = {}
    try:
        for entry in json.loads((sweep_dir / "jobs.json").read_text()):
            listed[_shown(entry["overrides"])] = (int(entry["job"]), [str(o) for o in entry["overrides"]])
    except (OSError, ValueError, KeyError, TypeError):
        listed = {}
    found = {p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    rows = []
    for d in found:
        row = job_row(d)
        entry = listed.pop(row["overrides"], None)
        if entry is not None and not isinstance(row["job"], int):
            row["job"] = entry[0]
        rows.append(row)
    seen = {r["job"] for r in rows}
    for num, overrides in listed.values():
        if num not in seen:
            rows.append(job_row(sweep_dir / str(num), overrides, num))
    rows.sort(key=lambda r: (0, r["job"]) if isinstance(r["job"], int) else (1, str(r["job"])))
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=["job", "dir", "status", "error", "tracking", *FACTORS, "seed", "overrides"])
    return table


def _shown(overrides: list[str]) -> str:
    """A job's overrides as the table shows them (Hydra's own left out)."""
    return " ".join(str(o) for o in overrides if not _override_key(str(o))[0].startswith("hydra"))


def from_mlflow(experiment: str, uri: str | None = None, parent: str | None = None,
                all_runs: bool = False) -> tuple[pd.DataFrame, Callable[[pd.Series], Path | None]]:
    """The table of a sweep logged to MLflow (the latest parent run, or ``parent``; with
    ``all_runs`` every non-parent run of the experiment, repeats dropped), and a loader of a
    row's ``requests.parquet``."""
    import os

    from simsched.errors import ConfigError
    from simsched.tracking import TrackingError, absolute_uri, open_client

    uri = absolute_uri(uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"), Path.cwd())
    try:
        client = open_client(uri, create=False)   # a read never creates a store
    except TrackingError as exc:
        raise ConfigError("--uri", f"{uri}: {exc}") from None

    def read(call: Callable[[], Any]) -> Any:
        """An MLflow read; a store that fails (a server that times out) is one line."""
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - MLflow's many error types
            raise ConfigError("--uri", f"{uri}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None

    exp = read(lambda: client.get_experiment_by_name(experiment))
    if exp is None:
        names = ", ".join(e.name for e in read(client.search_experiments))
        raise ConfigError("--experiment", "no such MLflow experiment", experiment, names or "(none)")
    runs = read(lambda: _search_all(client, exp.experiment_id, ""))
    parents = [r for r in runs if r.data.tags.get("simsched.kind") == "sweep"]
    if all_runs:
        chosen = [r for r in runs if r.data.tags.get("simsched.kind") not in ("sweep", "capacity")]
        chosen.sort(key=lambda r: r.info.start_time)
        latest: dict[str, Any] = {}
        for r in chosen:   # repeats of one config: keep the latest
            latest[r.data.tags.get("simsched.config_hash", r.info.run_id)] = r
        chosen = list(latest.values())
    else:
        if parent is None:
            if not parents:
                raise ConfigError("--experiment", "holds no sweep (parent) run; use --all for single runs",
                                  experiment)
            parent = max(parents, key=lambda r: r.info.start_time).info.run_id
            print(f"sweep: {_describe_parent(parents, parent)}, " + (
                f"the latest of {len(parents)} in experiment {experiment!r}; --parent RUN_ID picks another"
                if len(parents) > 1 else f"the only one in experiment {experiment!r}"))
        else:
            print(f"sweep: {_describe_parent(parents, parent)}")
        chosen = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    rows = []
    for r in chosen:
        t = r.data.tags
        rate = float(t["lambda"]) if t.get("lambda") else math.nan
        row = {"job": int(t.get("simsched.job", -1)), "dir": "", "run_id": r.info.run_id,
               "status": {"FINISHED": "ok", "FAILED": "failed"}.get(r.info.status, "incomplete"),
               "error": t.get("error", "") or ("" if r.info.status in ("FINISHED", "FAILED")
                                               else f"MLflow run is {r.info.status}"),
               "scheduler": t.get("scheduler", ""), "k_bins": int(t.get("k_bins") or 1), "lambda": rate,
               "gpus": int(t["gpus"]) if t.get("gpus") else None,
               "gpu_name": r.data.params.get("gpus.name", ""), "workload": t.get("workload", ""),
               "predictor": r.data.params.get("predictor.name", ""),
               "seed": int(t["seed"]) if t.get("seed") else None,
               "overrides": t.get("simsched.overrides", "")}
        for o in row["overrides"].split():
            key, value = _override_key(o)
            if key not in COVERED and not key.startswith("hydra"):
                row[f"override.{key}"] = value
        row.update(r.data.metrics)
        rows.append(row)
    if not rows:
        table = collect(Path("/nonexistent"))
    elif all_runs:   # runs of several sweeps and single runs: by factor, then seed, then run id
        table = pd.DataFrame(rows)
        keys = [c for c in FACTORS + ["seed", "run_id"] if c in table.columns]
        table = table.sort_values(keys, na_position="last", kind="stable").reset_index(drop=True)
    else:
        table = pd.DataFrame(rows).sort_values("job", kind="stable").reset_index(drop=True)

    run_dirs = {r.info.run_id: r.data.tags.get("simsched.run_dir", "") for r in chosen}

    def requests_of(row: pd.Series) -> Path | None:
        """The run folder's table when it is on this machine and complete, else the logged
        artifact (``tracking.log_tables=true``), else None."""
        from simsched.outputs import check_run_dir

        folder = Path(run_dirs.get(row["run_id"]) or "/nonexistent")
        if (folder / "requests.parquet").is_file() and check_run_dir(folder).ok:
            return folder / "requests.parquet"
        try:
            from mlflow.artifacts import download_artifacts

            return Path(download_artifacts(run_id=row["run_id"], artifact_path="requests.parquet",
                                           tracking_uri=client.tracking_uri))
        except Exception:  # noqa: BLE001 - a run without the table has no CDF
            return None

    return table, requests_of


def _describe_parent(parents: list[Any], run_id: str) -> str:
    """``'compare 2025-01-01_12-00-00' (run abc…, started 2025-01-01 12:00:00 UTC)``."""
    import datetime as dt

    run = next((r for r in parents if r.info.run_id == run_id), None)
    if run is None:
        return f"run {run_id}"
    started = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.timezone.utc)
    return f"{run.info.run_name!r} (run {run_id}, started {started:%Y-%m-%d %H:%M:%S} UTC)"


def _search_all(client: Any, exp_id: str, filter_string: str) -> list[Any]:
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string, max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


# --- statistics --------------------------------------------------------------------------------

def varying_factors(table: pd.DataFrame) -> list[str]:
    """Factors (standard and override columns) that take more than one value, seed excluded."""
    cols = FACTORS + [c for c in table.columns if c.startswith("override.")]
    return [c for c in cols if c in table.columns and table[c].astype(str).nunique(dropna=False) > 1]


def beside_scheduler(table: pd.DataFrame, factors: list[str]) -> list[str]:
    """The factors that vary for some scheduler (not just with it: ``k_bins`` in a comparison
    of modes is the scheduler's, not a factor of its own)."""
    if "scheduler" not in table.columns:
        return list(factors)
    keys = table["scheduler"].astype(str)
    return [c for c in factors if c != "scheduler"
            and (table[c].astype(str).groupby(keys).nunique(dropna=False) > 1).any()]


def ci95(values: Iterable[float]) -> float:
    from simsched.capacity_search import ci95_halfwidth

    v = [float(x) for x in values if x is not None and x == x]
    return ci95_halfwidth(v)


def aggregate(table: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean, 95% CI half-width (Student t over seeds), minimum and maximum per combination of
    varying factors."""
    ok = table[table["status"] == "ok"]
    metrics = [m for m in (metrics or KEY_METRICS) if m in ok.columns]
    by = varying_factors(table)
    if ok.empty:
        return pd.DataFrame(columns=by + ["n"])
    groups = ok.groupby(by, sort=False, dropna=False) if by else [((), ok)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["n"] = len(g)
        for m in metrics:
            vals = pd.to_numeric(g[m], errors="coerce")
            row[m] = float(vals.mean())
            row[f"{m}_ci95"] = ci95(vals)
            row[f"{m}_min"] = float(vals.min())
            row[f"{m}_max"] = float(vals.max())
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(agg: pd.DataFrame, metrics: list[str] | None = None) -> str:
    """The aggregate as text: ``mean ± ci95`` per metric, or ``mean (min–max)`` where fewer than
    ``MIN_CI_N`` seeds make a CI meaningless; each column with one number of decimals."""
    if agg.empty:
        return "(no completed jobs)"
    metrics = [m for m in (metrics or ["throughput_rps", "latency_p99_s", "sla_violation_rate",
                                       "gpu_utilization", "slot_efficiency"]) if m in agg.columns]
    factors = varying_factors_of_agg(agg) + ["n"]
    out = agg[factors].copy()
    n = agg["n"] if "n" in agg else pd.Series(1, index=agg.index)
    for m in metrics:
        pct = m in PERCENT
        scale = 100.0 if pct else 1.0
        places = 1 if pct else decimals(agg[m] * scale)
        lo, hi = agg.get(f"{m}_min", agg[m]), agg.get(f"{m}_max", agg[m])
        out[m] = [_cell(v * scale, c * scale, a * scale, b * scale, int(k), places, "%" if pct else "")
                  for v, c, a, b, k in zip(agg[m], agg[f"{m}_ci95"], lo, hi, n)]
    return out.to_string(index=False)


def decimals(values: pd.Series, digits: int = 3, most: int = 4) -> int:
    """Decimals that give the column's smallest non-zero magnitude ``digits`` significant
    digits (at most ``most``): one format per column, so the numbers line up and compare."""
    v = pd.to_numeric(values, errors="coerce").abs()
    v = v[(v > 0) & np.isfinite(v)]
    if v.empty:
        return 0
    return int(min(most, max(0, digits - 1 - math.floor(math.log10(float(v.min()))))))


def _cell(v: float, c: float, lo: float, hi: float, n: int, places: int, unit: str) -> str:
    if v != v:
        return "n/a"
    f = f"{{:.{places}f}}{unit}".format
    if n < 2:
        return f(v)
    if n < MIN_CI_N or c != c:
        return f"{f(v)} ({f(lo)}–{f(hi)})"
    return f"{f(v)} ± {f(c)}"


def small_n_note(agg: pd.DataFrame) -> str | None:
    """A warning when some combination has too few seeds for a CI (None when all have enough)."""
    if agg.empty or "n" not in agg:
        return None
    few = agg[(agg["n"] >= 2) & (agg["n"] < MIN_CI_N)]
    if few.empty:
        return None
    return (f"note: {len(few)} of {len(agg)} combination(s) have fewer than {MIN_CI_N} seeds: shown as "
            f"mean (min–max), not a 95% CI, which needs at least {MIN_CI_N} (add seeds, e.g. +sweep=seeds)")


# --- capacity from a λ grid --------------------------------------------------------------------

def capacity_from_grid(agg: pd.DataFrame, targets: Iterable[float] = TARGETS) -> pd.DataFrame:
    """Per series (the varying factors except λ), the largest λ whose mean SLA violation is
    ≤ target, linearly interpolated between the last grid point that meets it and the first
    that does not (NaN when even the smallest λ violates; the largest λ, marked ``>=``, when
    none does)."""
    if "lambda" not in agg.columns or "sla_violation_rate" not in agg.columns:
        return pd.DataFrame()
    series = [c for c in varying_factors_of_agg(agg) if c != "lambda"]
    rows = []
    groups = agg.groupby(series, sort=True, dropna=False) if series else [((), agg)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values("lambda")
        lam, viol = g["lambda"].to_numpy(float), g["sla_violation_rate"].to_numpy(float)
        for target in targets:
            cap, bound = math.nan, "="
            bad = np.flatnonzero(~(viol <= target))
            if len(bad) == 0:
                cap, bound = lam[-1], ">="
            elif bad[0] > 0:
                i = bad[0]
                lo, hi, vlo, vhi = lam[i - 1], lam[i], viol[i - 1], viol[i]
                cap = lo if not np.isfinite(vhi) else lo + (target - vlo) / (vhi - vlo) * (hi - lo)
            rows.append(dict(zip(series, key)) | {"target": target, "capacity_rps": cap, "bound": bound})
    return pd.DataFrame(rows)


def capacity_gains(caps: pd.DataFrame, baseline: str | None = None) -> list[str]:
    """Lines like ``multi_bin_dynamic vs static_fifo @ 5%: 5.4 → 6.6 req/s (+22%)``: each
    scheduler against the baseline scheduler with the same other factors."""
    if caps.empty or "scheduler" not in caps.columns or caps["scheduler"].nunique() < 2:
        return []
    names = list(dict.fromkeys(caps["scheduler"]))
    if baseline is None:
        baseline = next((b for b in BASELINE_ORDER if b in names), names[0])
    others = [c for c in caps.columns if c not in ("scheduler", "k_bins", "target", "capacity_rps", "bound")]
    lines = []
    for _, row in caps[caps["scheduler"] != baseline].iterrows():
        match = caps[(caps["scheduler"] == baseline) & (caps["target"] == row["target"])]
        for c in others:
            match = match[match[c].astype(str) == str(row[c])]
        if match.empty:
            continue
        base = match.iloc[0]
        several_k = "k_bins" in caps and caps.loc[caps["scheduler"] == row["scheduler"], "k_bins"].nunique() > 1
        lines.append(gain_line(f"{row['scheduler']}" + (f" K={row['k_bins']}" if several_k else ""),
                               f"{baseline}", float(row["target"]), float(base["capacity_rps"]),
                               float(row["capacity_rps"]), str(base["bound"]), str(row["bound"]),
                               ", ".join(f"{c}={row[c]}" for c in others)))
    return lines


def gain_line(name: str, baseline: str, target: float, base: float, new: float,
              base_bound: str = "=", new_bound: str = "=", where: str = "") -> str:
    """``name vs baseline @ 5%: 5.4 → 6.6 req/s (+22%, ×1.22)``."""
    def f(v: float, bound: str) -> str:
        return "n/a" if v != v else (">=" if bound == ">=" else "") + f"{v:.3g}"

    ratio = new / base if base > 0 and base == base and new == new else math.nan
    # A capacity at the top of the grid is only a lower bound, and so is a ratio above it.
    bound = {("=", ">="): "≥ ", (">=", "="): "≤ "}.get((base_bound, new_bound), "")
    if ratio != ratio or (base_bound == ">=" and new_bound == ">="):
        gain = "n/a"
    else:
        gain = f"{bound}{ratio - 1:+.0%}, ×{ratio:.2f}"
    return (f"{name} vs {baseline} @ {target:.0%} violation{' (' + where + ')' if where else ''}: "
            f"{f(base, base_bound)} → {f(new, new_bound)} req/s ({gain})")


# --- plots -------------------------------------------------------------------------------------

_SHORT = {"k_bins": "K", "lambda": "λ", "gpus": "GPUs"}


def _series_label(row: pd.Series, cols: list[str]) -> str:
    return ", ".join(str(row[c]) if c == "scheduler" else f"{_SHORT.get(c, c.removeprefix('override.'))}={row[c]:g}"
                     if isinstance(row[c], float) else
                     f"{_SHORT.get(c, c.removeprefix('override.'))}={row[c]}" for c in cols) or "all"


def _line_panel(ax: Any, agg: pd.DataFrame, x: str, y: str, series: list[str], logx: bool = False,
                share: bool = False) -> None:
    """Mean ± 95% CI of y vs x, a line per series; the interval is clipped to the metric's
    range (>= 0, and <= 1 for a ``share``)."""
    groups = agg.groupby(series, sort=False, dropna=False) if series else [((), agg)]
    for key, g in groups:
        g = g.sort_values(x)
        err = g.get(f"{y}_ci95")
        if err is None or err.isna().all():
            err = None
        else:
            mean, ci = g[y].to_numpy(float), err.fillna(0).to_numpy(float)
            err = [np.minimum(ci, np.maximum(mean, 0)), np.minimum(ci, 1 - mean) if share else ci]
            few = (g["n"] < MIN_CI_N).to_numpy() if "n" in g else np.zeros(len(g), bool)
            if few.any() and f"{y}_min" in g:   # too few seeds for a CI: the bars are the range
                err[0] = np.where(few, mean - g[f"{y}_min"].to_numpy(float), err[0])
                err[1] = np.where(few, g[f"{y}_max"].to_numpy(float) - mean, err[1])
        ax.errorbar(g[x].to_numpy(float), g[y].to_numpy(float), yerr=err, marker="o", capsize=3,
                    label=_series_label(g.iloc[0], series))
    if logx:
        ticks = sorted(set(agg[x].astype(float)))
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel({"k_bins": "K (bins)", "lambda": "λ (req/s)", "gpus": "GPUs"}.get(x, x))
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)


def _figure(panels: list[tuple[str, str]], agg: pd.DataFrame, x: str, path: Path, title: str,
            logx: bool = False, percent: tuple[str, ...] = ()) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    vary = varying_factors_of_agg(agg)
    series = (["scheduler"] if "scheduler" in vary else []) + [c for c in beside_scheduler(agg, vary) if c != x]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (y, label) in zip(axes[0], panels):
        _line_panel(ax, agg, x, y, series, logx, share=y in percent)
        ax.set_ylabel(label)
        if y in percent:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(labels) > 1:
        axes[0][-1].legend(handles, labels, fontsize=7, loc="best")
    n = int(agg["n"].max()) if "n" in agg and len(agg) else 1
    bars = "95% CI" if int(agg["n"].min()) >= MIN_CI_N else "range"
    fig.suptitle(title + (f" (mean, bars: {bars} over {n} seeds)" if n > 1 else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def varying_factors_of_agg(agg: pd.DataFrame) -> list[str]:
    cols = FACTORS + [c for c in agg.columns if c.startswith("override.")]
    return [c for c in cols if c in agg.columns and agg[c].astype(str).nunique(dropna=False) > 1]


def latency_cdfs(table: pd.DataFrame, path: Path, requests_of: Callable[[pd.Series], Path | None],
                 max_lines: int = 8, max_points: int = 4000) -> Path | None:
    """Latency CDFs of the completed requests, pooled over seeds: one panel with a line per
    scheduler when nothing else varies; otherwise a panel per scheduler with a line per
    combination of the other factors (at most ``max_lines``, evenly chosen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    ok = table[table["status"] == "ok"]
    if ok.empty:
        return None
    schedulers = list(dict.fromkeys(ok["scheduler"])) if "scheduler" in ok else ["all"]
    others = beside_scheduler(table, varying_factors(table))
    # Nothing varies beside the scheduler: one panel, a line per scheduler (easiest to compare).
    panels = [schedulers] if not others else [[s] for s in schedulers]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 4), squeeze=False, sharey=True)
    drew = False
    for ax, names in zip(axes[0], panels):
        sub = ok[ok["scheduler"].isin(names)] if "scheduler" in ok else ok
        groups = list(sub.groupby(others or ["scheduler"], sort=False, dropna=False))
        if len(groups) > max_lines:
            groups = [groups[i] for i in np.linspace(0, len(groups) - 1, max_lines).round().astype(int)]
        for key, g in groups:
            lat = []
            for _, row in g.iterrows():
                path_ = requests_of(row)
                if path_ is None or not Path(path_).is_file():
                    continue
                t = pq.read_table(path_, columns=["arrival", "completion", "status"]).to_pandas()
                done = t[t["status"].astype(str) == "completed"]
                lat.append((done["completion"] - done["arrival"]).to_numpy())
            if not lat:
                continue
            x = np.sort(np.concatenate(lat))
            x = x[x > 0]   # the log axis; a latency is never 0 (every request has a service time)
            if len(x) > max_points:
                x = x[np.linspace(0, len(x) - 1, max_points).round().astype(int)]
            ax.plot(x, np.linspace(0, 1, len(x), endpoint=True) if len(x) > 1 else [1.0],
                    label=_series_label(g.iloc[0], others or ["scheduler"]))
            drew = True
        ax.set_title(", ".join(map(str, names)) if others else "latency CDF per scheduler", fontsize=10)
        ax.set_xscale("log")   # tails of ~1,000 s beside medians of ~10 s: a linear axis hides the fast ones
        ax.set_xlabel("end-to-end latency (s, log scale)")
        ax.grid(alpha=0.3)
        if ax.get_lines():   # (no line: no requests table was written, e.g. output.requests_table=false)
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("fraction of completed requests")
    fig.tight_layout()
    if drew:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path if drew else None


def write_plots(table: pd.DataFrame, out_dir: Path,
                requests_of: Callable[[pd.Series], Path | None] | None = None) -> list[Path]:
    """Every plot whose x factor varies in this sweep; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(table)
    vary = varying_factors(table)
    files: list[Path] = []
    if agg.empty:
        return files
    if "k_bins" in beside_scheduler(table, vary):
        files.append(_figure([("throughput_rps", "throughput (req/s)"), ("latency_p99_s", "p99 latency (s)")],
                             agg, "k_bins", out_dir / "throughput_p99_vs_k.png", "throughput and p99 latency vs K",
                             logx=True))
    if "lambda" in vary:
        files.append(_figure([("sla_violation_rate", "SLA violation rate")], agg, "lambda",
                             out_dir / "sla_violation_vs_lambda.png", "SLA violation vs λ",
                             percent=("sla_violation_rate",)))
    if "gpus" in vary:
        files.append(_figure([("gpu_utilization", "GPU utilisation"), ("slot_efficiency", "slot efficiency")],
                             agg, "gpus", out_dir / "utilisation_vs_gpus.png", "utilisation and slot efficiency vs GPUs",
                             logx=True, percent=("gpu_utilization", "slot_efficiency")))
    loader = requests_of or (lambda row: Path(row["dir"]) / "requests.parquet" if row.get("dir") else None)
    cdf = latency_cdfs(table, out_dir / "latency_cdf_per_scheduler.png", loader)
    if cdf is not None:
        files.append(cdf)
    return files


# --- the whole report --------------------------------------------------------------------------

def write_report(table: pd.DataFrame, table_dir: Path, plot_root: Path, *, print_table: bool = True,
                 requests_of: Callable[[pd.Series], Path | None] | None = None,
                 baseline: str | None = None, plots: bool = True) -> list[Path]:
    """``summary.csv`` / ``summary.parquet`` (one row per job), ``summary_mean_ci.csv``,
    ``capacity.csv`` (when λ varies) and ``plots/``; prints the summary."""
    table_dir.mkdir(parents=True, exist_ok=True)
    csv, parquet = table_dir / "summary.csv", table_dir / "summary.parquet"
    table.to_csv(csv, index=False)
    _to_parquet(table, parquet)
    files = [csv, parquet]
    agg = aggregate(table)
    if not agg.empty:
        agg.to_csv(table_dir / "summary_mean_ci.csv", index=False)
        files.append(table_dir / "summary_mean_ci.csv")
    caps = capacity_from_grid(agg) if "lambda" in varying_factors(table) else pd.DataFrame()
    if not caps.empty:
        caps.to_csv(table_dir / "capacity.csv", index=False)
        files.append(table_dir / "capacity.csv")
    plot_dir = plot_root / "plots"
    written = []
    try:
        written = write_plots(table, plot_dir, requests_of) if plots else []
    except Exception as exc:  # noqa: BLE001 - the tables are written; say why a plot is missing
        print(f"warning: plots not written ({type(exc).__name__}: {exc})", file=sys.stderr)
    if written:
        files.append(plot_dir)
    if print_table:
        failed = table[table["status"] != "ok"] if not table.empty else table
        print(f"{len(table)} job(s), {len(failed)} not ok")
        for _, row in failed.iterrows():
            print(f"  job {row['job']}: {row['status']} {row['error']}")
        untracked = table[_untracked(table)]
        if len(untracked):
            print(f"{len(untracked)} job(s) not logged to MLflow:")
            for _, row in untracked.iterrows():
                print(f"  job {row['job']}: {row['tracking']}")
        print(format_summary(agg))
        note = small_n_note(agg)
        if note:
            print(note, file=sys.stderr)
        for line in capacity_gains(caps, baseline):
            print(line)
        print(f"tables in {table_dir}" + (f", plots in {plot_dir}" if written else ""))
    return files


def _to_parquet(table: pd.DataFrame, path: Path) -> None:
    """Parquet needs one type per column: mixed object columns are written as strings."""
    out = table.copy()
    for c in out.columns:
        if out[c].dtype == object:
            types = {type(v) for v in out[c].dropna()}
            if len(types) > 1 or (types and not types <= {str}):
                out[c] = out[c].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    out.to_parquet(path, index=False)


def main(argv: list[str] | None = None) -> int:
    """Write the report; the exit status is 1 when a job is not ok (failed, unfinished, or its
    files differ from what it wrote) or was not logged to MLflow, else 0."""
    parser = argparse.ArgumentParser(prog="python -m simsched.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", nargs="?", help="a multirun folder")
    parser.add_argument("--experiment", help="an MLflow experiment name (instead of a folder)")
    parser.add_argument("--uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--parent", help="the sweep's parent run id (default: the latest sweep)")
    parser.add_argument("--all", action="store_true", help="every run of the experiment, repeats dropped")
    parser.add_argument("--out", help="where to write tables and plots (default: the sweep folder, "
                                      "or report/<experiment> for MLflow)")
    parser.add_argument("--baseline", help="scheduler the capacity gains are stated against")
    args = parser.parse_args(argv)
    from simsched.errors import ConfigError

    if bool(args.sweep_dir) == bool(args.experiment):
        raise ConfigError("arguments", "give a multirun folder or --experiment NAME (one of them)")
    if args.sweep_dir:
        sweep_dir = Path(args.sweep_dir)
        if not sweep_dir.is_dir():
            raise ConfigError("sweep_dir", "no such folder", str(sweep_dir))
        table = collect(sweep_dir)
        if table.empty:
            raise ConfigError("sweep_dir", "holds no job folders (with .hydra/overrides.yaml)", str(sweep_dir))
        out = Path(args.out) if args.out else sweep_dir
        write_report(table, out, out, baseline=args.baseline)
    else:
        table, loader = from_mlflow(args.experiment, args.uri, args.parent, args.all)
        if table.empty:
            raise ConfigError("--experiment", "the chosen sweep has no child runs", args.experiment)
        out = Path(args.out) if args.out else Path("report") / args.experiment
        write_report(table, out, out, requests_of=loader, baseline=args.baseline)
    return int(bool((table["status"] != "ok").any() or _untracked(table).any()))


def _untracked(table: pd.DataFrame) -> pd.Series:
    """Rows whose MLflow logging failed or never finished."""
    if "tracking" not in table:
        return pd.Series(False, index=table.index)
    return table["tracking"].astype(str).str.startswith(("failed", "pending"))


def cli() -> None:
    """The command: one line and exit code 2 for a user's mistake."""
    from simsched.app.cli import run_command

    run_command(main)
