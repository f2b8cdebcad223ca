"""``python -m simsched.compare RESULT``: replay a real vLLM run's requests through the
continuous engine and report the error of the simulated TTFT, TPOT, E2E and throughput.

The measured run is read by ``simsched.workloads.measured`` (vllm bench serve JSON, or a plain
CSV/JSONL); the replay (``simsched.replay``) feeds the same requests, at the same arrival times,
to the engine the config overrides describe; ``simsched.comparison`` computes the same
statistics on both sides. Results (table, per-request CSV, CDF plot, config) are written to the
output folder first, then logged to MLflow as one run; an unreachable store costs a warning.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

USAGE = """python -m simsched.compare RESULT [options] [config overrides ...]

Replay the requests of a real vLLM benchmark run (RESULT: the JSON of vllm bench serve
--save-result --save-detailed, or a CSV/JSONL with arrival_s, prompt_tokens, output_tokens,
ttft_s, e2e_s) through the continuous engine and report the simulated-vs-measured error, e.g.

  python -m simsched.compare data/vllm_runs/codellama34b_h100_guidellm_sweep.csv --by phase \\
      --fit-isolated gpus=h100 gpus.count=1 latency_model.model=codellama_34b \\
      engine.max_num_batched_tokens=4096 engine.max_num_seqs=256 engine.num_gpu_blocks=2537 \\
      engine.max_model_len=4096 engine.async_scheduling=false engine.full_sequence_gate=false

The overrides are those of python -m simsched (engine=continuous is implied)."""


def plot_cdfs(measured: dict[str, np.ndarray], simulated: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Empirical CDFs of TTFT, TPOT and E2E, measured (solid) and simulated (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, (key, label) in zip(axes, (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E latency"))):
        for values, style, name in ((measured[key], "-", "measured"), (simulated[key], "--", "simulated")):
            v = np.sort(values[np.isfinite(values)])
            if v.size:
                ax.step(v, np.arange(1, v.size + 1) / v.size, style, where="post", label=f"{name} (n={v.size})")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{label} (s)")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _groups(run: Any, by: str | None) -> list[tuple[str, np.ndarray]]:
    from simsched.errors import ConfigError

    groups = [("all", np.ones(len(run), dtype=bool))]
    if by:
        if by not in run.columns:
            raise ConfigError("--by", f"no such column in {run.path}", by,
                              ", ".join(run.columns) or "(the file has no extra columns)")
        col = run.columns[by]
        seen: list[Any] = []
        for v in col:
            if v not in seen:
                seen.append(v)
        groups += [(str(v), col == v) for v in seen]
    return groups


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import pandas as pd
    from omegaconf import OmegaConf

    from simsched.app.capacity import compose_config
    from simsched.comparison import error_rows, format_rows, summarize
    from simsched.config import build
    from simsched.errors import ConfigError, check_positive
    from simsched.isolated_fit import fit_isolated
    from simsched.replay import replay_with, setup
    from simsched.run import flat_params
    from simsched.tracking import git_commit
    from simsched.workloads.measured import read_measured, tpot

    parser = argparse.ArgumentParser(prog="python -m simsched.compare", usage=USAGE)
    parser.add_argument("result", help="the measured run: vllm bench serve JSON, or CSV/JSONL")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m simsched")
    parser.add_argument("--out", help="output folder (default: compare/<date>_<time>)")
    parser.add_argument("--by", help="also compare per value of this column of the file (e.g. phase)")
    parser.add_argument("--fit-isolated", action="store_true",
                        help="fit the step time to the requests served alone and replay with it")
    parser.add_argument("--fit-c-dec", type=float, default=0.0,
                        help="per-sequence decode cost kept fixed in that fit (s, default 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="vllm bench serve's --seed, for a result without start_times (default 0)")
    parser.add_argument("--request-rate", type=float, help="override the file's request rate (same case)")
    parser.add_argument("--burstiness", type=float, help="override the file's burstiness (same case)")
    parser.add_argument("--result-index", type=int, help="which result of an --append-result JSONL file")
    args = parser.parse_intermixed_args(argv)
    check_positive("--fit-c-dec", args.fit_c_dec, allow_zero=True)

    run = read_measured(args.result, seed=args.seed, request_rate=args.request_rate,
                        burstiness=args.burstiness, result_index=args.result_index)
    if not run.ok.any():
        raise ConfigError("RESULT", f"{run.path}: no request completed in the measured run; nothing to compare")
    overrides = [o for o in args.overrides if not o.startswith("engine=")]
    if len(overrides) != len(args.overrides) and "engine=continuous" not in args.overrides:
        raise ConfigError("engine", "the comparison replays through the continuous engine only",
                          [o for o in args.overrides if o.startswith("engine=")][0], "engine=continuous")
    cfg = compose_config(["engine=continuous"] + overrides)
    groups = _groups(run, args.by)
    out = Path(args.out) if args.out else Path("compare") / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)

    ready = setup(cfg)
    fit = None
    if args.fit_isolated:
        fit = fit_isolated(run, block_size=int(ready.engine.block_size),
                           max_num_batched_tokens=ready.max_num_batched_tokens, c_dec_s=args.fit_c_dec)
    step = fit.step_time if fit else ready.step
    sim = replay_with(run, ready.engine, step, ready.hardware, ready.max_seqs_cap)

    m_tpot = run.tpot
    s_ok = sim.completed
    s_tpot = tpot(sim.ttft, sim.e2e, run.output, s_ok)
    rows = []
    for name, mask in groups:
        meas = summarize(run.arrival[mask], run.ttft[mask], run.e2e[mask], run.output[mask], run.ok[mask])
        simu = summarize(run.arrival[mask], sim.ttft[mask], sim.e2e[mask], run.output[mask], s_ok[mask])
        rows += error_rows(meas, simu, group=name)
    table = pd.DataFrame(rows)
    table.to_csv(out / "errors.csv", index=False)
    per_request = pd.DataFrame({
        "arrival_s": run.arrival, "prompt_tokens": run.prompt, "output_tokens": run.output,
        "measured_ok": run.ok, "measured_ttft_s": run.ttft, "measured_tpot_s": m_tpot, "measured_e2e_s": run.e2e,
        "simulated_status": sim.status, "simulated_ttft_s": sim.ttft, "simulated_tpot_s": s_tpot,
        "simulated_e2e_s": sim.e2e, **{c: v for c, v in run.columns.items()}})
    per_request.to_csv(out / "requests.csv", index=False)
    preset = str(cfg.latency_model.get("name", "")) if fit is None else "isolated_fit"
    png = plot_cdfs({"ttft": run.ttft[run.ok], "tpot": m_tpot[run.ok], "e2e": run.e2e[run.ok]},
                    {"ttft": sim.ttft[s_ok], "tpot": s_tpot[s_ok], "e2e": sim.e2e[s_ok]},
                    out / "cdf.png", f"{Path(run.path).name}: measured vs simulated ({preset})")
    OmegaConf.save(cfg, out / "config.yaml")
    counts = {"measured_requests": len(run), "measured_failed": int((~run.ok).sum()),
              "replayed": int(sim.replayed.sum()), "simulated_completed": int(s_ok.sum()),
              "simulated_rejected": int((sim.status == "rejected").sum()),
              "simulated_unfinished": int((sim.status == "unfinished").sum())}
    settings = {"max_num_batched_tokens": ready.max_num_batched_tokens, "max_num_seqs": ready.max_num_seqs,
                "num_gpu_blocks": ready.num_gpu_blocks, "block_size": int(ready.engine.block_size),
                "replicas": int(ready.hardware.replicas), "async_scheduling": bool(ready.engine.async_scheduling),
                "full_sequence_gate": bool(ready.engine.full_sequence_gate),
                "enable_prefix_caching": bool(ready.engine.enable_prefix_caching),
                "step_time": {k: float(getattr(step, k)) for k in
                              ("c0_s", "c_pf_s", "c_dec_s", "c_ctx_s", "c_attn_s", "cpu_s")}}
    summary = {"result": str(run.path), "format": run.fmt, "arrivals": run.arrival_source, "meta": run.meta,
               "latency_model": preset, "settings": settings, "counts": counts,
               "fit": None if fit is None else {"coefficients": fit.coefficients(), "requests": len(fit.used),
                                                "ttft_mape": fit.ttft_mape, "decode_mape": fit.decode_mape}}
    (out / "summary.json").write_text(json.dumps(_finite(summary), indent=2, default=_json_default) + "\n")

    print(f"measured: {run.path} ({run.fmt}, {len(run)} requests, {counts['measured_failed']} failed); "
          f"arrivals: {run.arrival_source}")
    if fit is not None:
        coeffs = ", ".join(f"{k}={v:.4g}" for k, v in fit.coefficients().items())
        print(f"step time fitted to {len(fit.used)} isolated requests: {coeffs} "
              f"(in-sample TTFT error {fit.ttft_mape:.1%}, decode {fit.decode_mape:.1%})")
    st = settings["step_time"]
    print(f"engine: max_num_batched_tokens={settings['max_num_batched_tokens']}, max_num_seqs="
          f"{settings['max_num_seqs']}, num_gpu_blocks={settings['num_gpu_blocks']}, async_scheduling="
          f"{settings['async_scheduling']}; step time ({preset}): c0={st['c0_s'] * 1e3:.3g} ms, "
          f"c_pf={st['c_pf_s'] * 1e6:.3g} us/token, c_dec={st['c_dec_s'] * 1e6:.3g} us/seq, "
          f"c_ctx={st['c_ctx_s'] * 1e9:.3g} ns/token, c_attn={st['c_attn_s']:.3g} s/pair, "
          f"cpu={st['cpu_s'] * 1e3:.3g} ms")
    print(f"simulated ({preset}): {counts['simulated_completed']} completed, {counts['simulated_rejected']} "
          f"rejected, {counts['simulated_unfinished']} unfinished of {counts['replayed']} replayed")
    print(format_rows(rows))
    print(f"outputs in {out}")

    if cfg.get("tracking") is not None:
        tracker = build(cfg.tracking, "tracking")
        params = {"compare.result": str(run.path), "compare.arrivals": run.arrival_source,
                  "compare.by": args.by or "", "compare.fit_isolated": args.fit_isolated,
                  "compare.overrides": " ".join(args.overrides)}
        params |= {f"compare.fit.{k}": v for k, v in (fit.coefficients() if fit else {}).items()}
        params |= flat_params(cfg)
        metrics: dict[str, float] = dict(counts)
        for r in rows:
            if r["group"] != "all":
                continue
            key = r["metric"] + (f"_{r['stat']}" if r["stat"] else "")
            metrics[f"measured_{key}"] = r["measured"]
            metrics[f"simulated_{key}"] = r["simulated"]
            metrics[f"rel_error_{key}"] = r["rel_error"]
        tags = {"simsched.kind": "compare", "git_commit": git_commit(), "latency_model": preset,
                "compare.format": run.fmt, "mlflow.runName": f"compare {Path(run.path).name} ({preset})"}
        tracker.log_run(out, params, metrics, [out / "errors.csv", out / "requests.csv", png,
                                               out / "config.yaml", out / "summary.json"], tags)
    return {"rows": rows, "counts": counts, "fit": fit, "out": out}


def _finite(value: Any) -> Any:
    """NaN and infinities become null, so the file is valid JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if math.isnan(value) else float(value)
    return str(value)


def cli() -> None:
    """The command: one line and exit code 2 for a user's mistake."""
    import os

    from simsched.app.cli import run_command

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    run_command(main)
