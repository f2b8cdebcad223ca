"""``python -m simsched.workloads.fit FILE``: fit a synthetic workload to a trace.

Estimates, from the requests a replay would select (same filters as the trace workloads):
Gamma inter-arrivals overall and per window (method of moments: integer timestamps give zero
gaps, on which a maximum-likelihood Gamma fit breaks down), ON/OFF (MMPP-2) parameters from
per-bin rates split in two by 1-D 2-means, and for prompt and output lengths a log-normal, a
two-component log-normal mixture (EM) and an empirical quantile table. It writes a workload
YAML using the chosen arrival and length models (the others follow as commented-out blocks,
ready to swap in) and a PNG comparing the trace with a sample of the fitted workload.

By default the YAML goes to the project's ``conf/workload/<name>.yaml``, so ``python -m simsched
workload=<name>`` runs it. With ``--out DIR/workload/<name>.yaml`` it is used with
``python -m simsched 'hydra.searchpath=[file://DIR]' workload=<name>``.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simsched.errors import InputError, SimschedError
from simsched.workloads import arrivals as arr_mod
from simsched.workloads import lengths as len_mod
from simsched.workloads.requests import RequestTable
from simsched.workloads.synthetic import SyntheticWorkload

KS_SAMPLE = 50_000   # KS distances compare at most this many values (a seeded subsample)


# ---------------------------------------------------------------- arrivals

def gamma_moments(gaps: np.ndarray) -> tuple[float, float] | None:
    """(shape, scale) with the gaps' mean and variance; None when undefined."""
    if gaps.size < 2:
        return None
    mean, var = float(gaps.mean()), float(gaps.var())
    if mean <= 0 or var <= 0:
        return None
    return mean * mean / var, var / mean


def fit_windows(a: np.ndarray, window_s: float) -> dict[str, list[float]]:
    """Per-window rate (count / window length) and Gamma shape (1 where too few gaps)."""
    n_win = max(1, int(math.ceil((a[-1] - a[0]) / window_s))) if len(a) > 1 else 1
    w = np.minimum(((a - a[0]) // window_s).astype(np.int64), n_win - 1)
    counts = np.bincount(w, minlength=n_win)
    lengths = np.full(n_win, float(window_s))
    lengths[-1] = max(float(a[-1] - a[0]) - (n_win - 1) * window_s, 0.0)
    bounds = np.searchsorted(w, np.arange(n_win + 1))   # a is sorted, so each window is a slice
    rates, shapes, scales = [], [], []
    for i in range(n_win):
        length = lengths[i] if lengths[i] > 0 else window_s
        rate = counts[i] / length
        g = gamma_moments(np.diff(a[bounds[i]:bounds[i + 1]]))
        shape = g[0] if g else 1.0
        rates.append(float(rate))
        shapes.append(float(shape))
        scales.append(float(1.0 / (rate * shape)) if rate > 0 else math.inf)
    return {"rates": rates, "shapes": shapes, "scales": scales}


def fit_onoff(a: np.ndarray, bin_s: float) -> dict[str, float] | None:
    """MMPP-2 from per-bin rates: bins split into ON/OFF by 1-D 2-means; mean run lengths."""
    n_bins = max(1, int(math.ceil((a[-1] - a[0]) / bin_s)))
    b = np.minimum(((a - a[0]) // bin_s).astype(np.int64), n_bins - 1)
    r = np.bincount(b, minlength=n_bins) / bin_s
    if n_bins < 2 or r.max() == r.min():
        return None
    thr = float(r.mean())
    for _ in range(100):
        hi, lo = r[r > thr], r[r <= thr]
        new = 0.5 * (hi.mean() + lo.mean())
        if new == thr:
            break
        thr = float(new)
    on = r > thr
    change = np.flatnonzero(np.diff(on.astype(np.int8))) + 1
    runs = np.split(on, change)
    on_runs = [len(x) for x in runs if x[0]]
    off_runs = [len(x) for x in runs if not x[0]]
    return {
        "rate_on": float(r[on].mean()),
        "rate_off": float(r[~on].mean()),
        "mean_on_s": float(np.mean(on_runs) * bin_s),
        "mean_off_s": float(np.mean(off_runs) * bin_s),
    }


# ---------------------------------------------------------------- lengths

def fit_lognormal(x: np.ndarray) -> dict[str, float]:
    y = np.log(x[x > 0])
    return {"median": float(np.exp(y.mean())), "sigma": float(y.std()),
            "minimum": int(max(1, x.min())), "maximum": int(max(1, x.max()))}


def fit_bimodal(x: np.ndarray, iterations: int = 500) -> dict[str, float] | None:
    """Two-component Gaussian mixture on log lengths by EM (deterministic start at p25/p75).
    Lengths are integers, so EM runs on the distinct values weighted by their counts."""
    values, counts = np.unique(x[x > 0], return_counts=True)
    y, c = np.log(values.astype(float)), counts.astype(float)
    n = c.sum()
    if n < 10 or len(values) < 2:
        return None
    mean = (c * y).sum() / n
    std = math.sqrt((c * (y - mean) ** 2).sum() / n)
    cdf = np.cumsum(c) / n
    mu = y[np.searchsorted(cdf, [0.25, 0.75])].astype(float)
    sd = np.full(2, std / 2 + 1e-6)
    w = np.array([0.5, 0.5])
    for _ in range(iterations):
        dens = w / sd * np.exp(-0.5 * ((y[:, None] - mu) / sd) ** 2)
        resp = c[:, None] * dens / np.maximum(dens.sum(axis=1, keepdims=True), 1e-300)
        nk = resp.sum(axis=0)
        if np.any(nk < 1e-9):
            return None
        new_mu = (resp * y[:, None]).sum(axis=0) / nk
        sd = np.sqrt((resp * (y[:, None] - new_mu) ** 2).sum(axis=0) / nk) + 1e-6
        w = nk / n
        done = np.allclose(new_mu, mu, atol=1e-7)
        mu = new_mu
        if done:
            break
    s, l = (0, 1) if mu[0] <= mu[1] else (1, 0)
    return {"short_weight": float(w[s]), "short_median": float(np.exp(mu[s])), "short_sigma": float(sd[s]),
            "long_median": float(np.exp(mu[l])), "long_sigma": float(sd[l]),
            "minimum": int(max(1, x.min())), "maximum": int(max(1, x.max()))}


def empirical_table(x: np.ndarray, size: int) -> dict[str, list]:
    """Exact value counts when few distinct values, else ``size`` equal-mass quantile points.
    Zero lengths become 1 (the table holds positive lengths)."""
    x = np.maximum(x, 1)
    values, counts = np.unique(x, return_counts=True)
    if len(values) > size:
        q = np.rint(np.quantile(x, (np.arange(size) + 0.5) / size)).astype(np.int64)
        values, counts = np.unique(q, return_counts=True)
    return {"values": [int(v) for v in values], "weights": [float(c) for c in counts]}


def ks_distance(x: np.ndarray, dist: Any, rng: np.random.Generator) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(x, dist.sample(len(x), rng)).statistic)


# ---------------------------------------------------------------- the fit

@dataclass
class Fit:
    requests: RequestTable
    window_s: float
    bin_s: float
    gamma: tuple[float, float] | None
    windows: dict[str, list[float]]
    onoff: dict[str, float] | None
    lengths: dict[str, dict[str, Any]]     # prompt/output -> {lognormal, bimodal, empirical, ks, best}


def fit_requests(req: RequestTable, window_s: float | None = None, bin_s: float | None = None,
                 table_size: int = 200) -> Fit:
    a = req.arrival
    if len(a) < 3 or a[-1] <= a[0]:
        raise InputError("trace", "need at least 3 requests over a positive time span to fit a workload")
    duration = float(a[-1] - a[0])
    window_s = float(window_s or (3600.0 if duration >= 86400 else max(duration / 24, 1.0)))
    bin_s = float(bin_s or min(max(duration / 500, 1.0), 60.0))
    rng = np.random.default_rng(0)
    lengths: dict[str, dict[str, Any]] = {}
    for name, x in (("prompt", req.prompt), ("output", req.output)):
        sub = x if len(x) <= KS_SAMPLE else rng.choice(x, KS_SAMPLE, replace=False)
        cands: dict[str, Any] = {"lognormal": fit_lognormal(x)}
        bim = fit_bimodal(x)
        if bim is not None:
            cands["bimodal"] = bim
        ks = {k: ks_distance(sub, _length_dist(k, v), np.random.default_rng(1)) for k, v in cands.items()}
        cands["empirical"] = empirical_table(x, table_size)
        ks["empirical"] = ks_distance(sub, _length_dist("empirical", cands["empirical"]), np.random.default_rng(1))
        best = min((k for k in ks if k != "empirical"), key=ks.get)
        lengths[name] = {**cands, "ks": ks, "best": best}
    return Fit(req, window_s, bin_s, gamma_moments(np.diff(a)), fit_windows(a, window_s),
               fit_onoff(a, bin_s), lengths)


_LENGTH_CLASSES = {"lognormal": "Lognormal", "bimodal": "Bimodal", "empirical": "Empirical"}


def _length_dist(kind: str, params: dict[str, Any]) -> Any:
    return getattr(len_mod, _LENGTH_CLASSES[kind])(**params)


def _length_node(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"_target_": f"simsched.workloads.lengths.{_LENGTH_CLASSES[kind]}", **_rounded(params)}


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    def r(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, list):
            return [r(x) for x in v]
        return v
    return {k: r(v) for k, v in d.items()}


def arrival_nodes(fit: Fit) -> dict[str, dict[str, Any]]:
    """The config node of each arrival model that could be fitted."""
    nodes: dict[str, dict[str, Any]] = {}
    pkg = "simsched.workloads.arrivals"
    if fit.gamma is not None:
        nodes["gamma"] = {"_target_": f"{pkg}.Gamma", **_rounded({"shape": fit.gamma[0], "scale": fit.gamma[1]}),
                          "rate": None, "cv": None}
    if len(fit.windows["rates"]) > 1:
        nodes["windowed"] = {"_target_": f"{pkg}.WindowedGamma",
                             **_rounded({"window_s": fit.window_s, "rates": fit.windows["rates"],
                                         "shapes": fit.windows["shapes"]})}
    if fit.onoff is not None:
        nodes["onoff"] = {"_target_": f"{pkg}.OnOff", **_rounded(fit.onoff)}
    return nodes


def workload_yaml(fit: Fit, name: str, source: str, arrivals: str, lengths: str) -> str:
    """The workload YAML text: chosen models active, alternatives commented out."""
    import yaml

    nodes = arrival_nodes(fit)
    if arrivals not in nodes:
        raise InputError(source, f"cannot fit '{arrivals}' arrivals to this trace; possible: {', '.join(nodes)}")
    req = fit.requests

    def lengths_choice(which: str) -> str:
        return "empirical" if lengths == "empirical" else fit.lengths[which]["best"]

    body = {
        "_target_": "simsched.workloads.synthetic.SyntheticWorkload",
        "name": name,
        "num_requests": len(req),
        "seed": None,
        "arrivals": nodes[arrivals],
        "prompt": _length_node(lengths_choice("prompt"), fit.lengths["prompt"][lengths_choice("prompt")]),
        "output": _length_node(lengths_choice("output"), fit.lengths["output"][lengths_choice("output")]),
    }

    def dump(obj: Any) -> str:
        return yaml.safe_dump(obj, sort_keys=False, default_flow_style=None, width=100)

    def commented(obj: Any) -> str:
        return "".join(f"#   {line}\n" for line in dump(obj).splitlines())

    a = req.arrival
    gamma = f"shape {fit.gamma[0]:.4g}, scale {fit.gamma[1]:.4g}" if fit.gamma else "n/a"
    head = [
        f"# Fitted by `python -m simsched.workloads.fit` from {source}",
        f"# {len(req)} requests over {a[-1] - a[0]:.1f} s (mean {(len(a) - 1) / (a[-1] - a[0]):.4g} req/s).",
        f"# Gamma inter-arrivals overall (method of moments): {gamma}.",
        f"# Per-window Gamma ({fit.window_s:g} s windows): rate, shape, scale per window:",
    ]
    w = fit.windows
    for i, (r, k, s) in enumerate(zip(w["rates"], w["shapes"], w["scales"])):
        head.append(f"#   window {i}: rate {r:.4g}/s, shape {k:.4g}, scale {s:.4g}")
    for which in ("prompt", "output"):
        ks = ", ".join(f"{k} {v:.3f}" for k, v in fit.lengths[which]["ks"].items())
        head.append(f"# {which} lengths, KS distance to the trace: {ks}; best parametric: "
                    f"{fit.lengths[which]['best']}.")
    text = "\n".join(head) + "\ndefaults:\n  - /schema/workload/SyntheticWorkload@_here_\n  - _self_\n" + dump(body)
    for key, node in nodes.items():
        if key != arrivals:
            text += f"# Alternative arrivals ({key}):\n" + commented({"arrivals": node})
    for which in ("prompt", "output"):
        chosen = lengths_choice(which)
        for kind in ("lognormal", "bimodal", "empirical"):
            if kind != chosen and kind in fit.lengths[which]:
                text += f"# Alternative {which} lengths ({kind}):\n" + commented(
                    {which: _length_node(kind, fit.lengths[which][kind])})
    return text


def workload_from_yaml(text: str) -> SyntheticWorkload:
    """The workload a YAML written by ``workload_yaml`` describes (for the comparison plot)."""
    import yaml
    from hydra.utils import instantiate

    node = yaml.safe_load(text)
    node.pop("defaults", None)
    return instantiate(node, _convert_="all")


def plot_fit(path: Path, fit: Fit, synthetic: RequestTable, title: str) -> Path:
    """Inter-arrival histogram, prompt and output histograms, and rate over time: trace vs fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    req = fit.requests
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    def compare(ax: Any, x_t: np.ndarray, x_s: np.ndarray, bins: np.ndarray) -> None:
        """Fraction of values per bin (np.histogram + stairs: fast for millions of values)."""
        h_t, _ = np.histogram(x_t, bins=bins)
        h_s, _ = np.histogram(x_s, bins=bins)
        ax.stairs(h_t / max(len(x_t), 1), bins, fill=True, alpha=0.5, label="trace")
        ax.stairs(h_s / max(len(x_s), 1), bins, lw=1.5, label="fit")
        ax.legend()

    g_t, g_s = np.diff(req.arrival), np.diff(synthetic.arrival)
    top = float(np.percentile(g_t, 99)) or 1.0
    ax = axes[0, 0]
    compare(ax, g_t, g_s, np.linspace(0, top, 60))
    ax.set_yscale("log")
    ax.set_xlabel("inter-arrival time (s), up to the trace's p99")
    ax.set_ylabel("fraction of gaps")
    for ax, name in ((axes[0, 1], "prompt"), (axes[1, 0], "output")):
        x_t, x_s = np.maximum(getattr(req, name), 1), np.maximum(getattr(synthetic, name), 1)
        compare(ax, x_t, x_s, np.geomspace(1, max(x_t.max(), x_s.max()) + 1, 60))
        ax.set_xscale("log")
        ax.set_xlabel(f"{name} tokens (log-spaced bins)")
        ax.set_ylabel("fraction of requests")
    ax = axes[1, 1]
    span = float(req.arrival[-1] - req.arrival[0])
    edges = np.arange(0, span + fit.window_s, fit.window_s)
    for a, label, style in ((req.arrival - req.arrival[0], "trace", "-"), (synthetic.arrival, "fit", "--")):
        counts, _ = np.histogram(a, bins=edges)
        ax.step(edges[:-1], counts / fit.window_s, where="post", ls=style, label=label)
    ax.set_xlabel(f"time (s), {fit.window_s:g} s windows")
    ax.set_ylabel("requests per second")
    ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simsched.workloads.fit", description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="trace CSV (BurstGPT or Azure schema, detected from the header)")
    p.add_argument("--name", help="workload name (default: the --out file's stem, else fit_<trace file stem>)")
    p.add_argument("--out", help="YAML to write (default: outputs/workload_fit/<date>_<time>/workload/<name>.yaml)")
    p.add_argument("--plot", help="PNG to write (default: beside the YAML, <name>.png)")
    p.add_argument("--force", action="store_true", help="overwrite an existing YAML")
    p.add_argument("--arrivals", choices=("windowed", "gamma", "onoff"), default="windowed",
                   help="arrival model written active (windowed falls back to gamma for a single window)")
    p.add_argument("--lengths", choices=("parametric", "empirical"), default="parametric",
                   help="length model written active: the best parametric fit by KS distance, or the table")
    p.add_argument("--window-s", type=float, help="Gamma fit window (default 3600 s for traces over a day, "
                                                  "else a 24th of the span)")
    p.add_argument("--bin-s", type=float, help="ON/OFF rate bin (default span/500, within 1-60 s)")
    p.add_argument("--table-size", type=int, default=200, help="points in the empirical length table")
    p.add_argument("--model", action="append", help="BurstGPT Model to keep (repeatable)")
    p.add_argument("--log-type", action="append", help="BurstGPT Log Type to keep (repeatable)")
    p.add_argument("--start-s", type=float)
    p.add_argument("--end-s", type=float)
    p.add_argument("--max-requests", type=int)
    p.add_argument("--rps-scale", type=float, default=1.0)
    p.add_argument("--cache-dir", default=".cache/simsched/traces", help="Parquet cache ('' for none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except SimschedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    import time

    from simsched.workloads.trace_files import BURSTGPT, match_schema
    from simsched.workloads.traces import replay_for

    schema, _ = match_schema(args.file)
    options: dict[str, Any] = {"start_s": args.start_s, "end_s": args.end_s, "max_requests": args.max_requests,
                               "rps_scale": args.rps_scale, "cache_dir": args.cache_dir or None}
    if schema is BURSTGPT:
        options.update(models=args.model, log_types=args.log_type)
    elif args.model or args.log_type:
        raise InputError(args.file, "--model and --log-type apply to BurstGPT traces only")
    name = args.name or (Path(args.out).stem if args.out else
                         "fit_" + re.sub(r"[^A-Za-z0-9_]+", "_", Path(args.file).stem))
    out = Path(args.out) if args.out else (Path("outputs") / "workload_fit" / time.strftime("%Y-%m-%d_%H-%M-%S")
                                           / "workload" / f"{name}.yaml")
    if out.exists() and not args.force:
        raise InputError(str(out), "exists; pass --force to overwrite or --out to write elsewhere")
    req = replay_for(args.file, **options).select()
    fit = fit_requests(req, args.window_s, args.bin_s, args.table_size)
    arrivals = args.arrivals if args.arrivals != "windowed" or len(fit.windows["rates"]) > 1 else "gamma"
    text = workload_yaml(fit, name, args.file, arrivals, args.lengths)
    synthetic = workload_from_yaml(text).generate(np.random.default_rng(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot_fit(plot, fit, synthetic, f"{Path(args.file).name}: trace vs fitted workload '{name}'")
    print(f"wrote {out} and {plot}")
    if out.parent.name == "workload":
        print(f"run it: python -m simsched 'hydra.searchpath=[file://{out.parent.parent.resolve()}]' "
              f"workload={out.stem}")
    else:
        print(f"to run it, put it in a folder named 'workload' and pass that folder's parent as "
              f"'hydra.searchpath=[file://DIR]', then workload={out.stem}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
