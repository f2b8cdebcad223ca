"""The GPU calibration run in one command, needing only torch and transformers on the machine
(the project travels as source; no Hydra, pandas or MLflow):

    python3 -m calibrate.gpu_grid --out DIR

Profiler v2 (``calibrate/profiler.py``) on the Qwen2.5-1.5B and Llama-3.1-8B shapes (random
weights from config objects, bfloat16, CUDA graphs and CUDA events), one after the other, each
with a time budget, so that the whole run stays well inside 8 minutes (shapes not started are
listed in the JSON). Writes into DIR, per model, ``steps_<gpu>_<model>.parquet`` (``.csv``
without pyarrow) and ``.json``, a ``summary_<model>.txt``, and ``gpu_run.json`` (the command,
each model's status, the wall time). Fit each with
``python -m calibrate.fit steps=DIR/steps_....parquet``. Every option can be changed (the CPU
test runs this same code path with the ``tiny`` preset).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DEFAULT_MODELS = "qwen2_5_1_5b,llama3_1_8b"


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m calibrate.gpu_grid", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for every output")
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help="comma-separated presets (qwen2_5_1_5b, llama3_1_8b, llama3_8b, tiny) or model folders")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", help="bfloat16, float16, float32 or auto")
    ap.add_argument("--prefill-batch-sizes", type=_int_list, default=_int_list("1,8,32"))
    ap.add_argument("--prefill-lens", type=_int_list, default=_int_list("128,512,1024,2048"))
    ap.add_argument("--max-prefill-tokens", type=int, default=32768)
    ap.add_argument("--decode-batch-sizes", type=_int_list, default=_int_list("1,8,32,64,128,256"))
    ap.add_argument("--decode-contexts", type=_int_list, default=_int_list("128,512,1024,2048"))
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--prefill-steps", type=int, default=2, help="timed steps per trial")
    ap.add_argument("--decode-steps", type=int, default=8, help="timed steps per trial")
    ap.add_argument("--warmup-s", type=float, default=2.0, help="device warm-up per model")
    ap.add_argument("--graphs", default="auto", help="auto (CUDA graphs, eager fallback recorded), on, off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=170.0,
                    help="per model: stop starting new shapes after this many seconds (0: no limit)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quiet", action="store_true", help="no per-shape progress lines")
    return ap.parse_args(argv)


def summary(rows: list[dict], skipped: list[dict]) -> str:
    """Per shape: median step, interquartile range and the spread of the trials' medians."""
    by: dict[tuple, dict[int, list[float]]] = {}
    for r in rows:
        key = (r["phase"], r["batch_size"], r["new_tokens"], r["context_len"])
        by.setdefault(key, {}).setdefault(r["trial"], []).append(r["seconds"])
    lines = [f"{'phase':<8}{'batch':>6}{'tokens':>7}{'context':>8}{'median ms':>11}{'IQR ms':>9}{'trial spread':>13}"]
    for (phase, b, n, c), trials in sorted(by.items()):
        every = sorted(x for t in trials.values() for x in t)
        q = statistics.quantiles(every, n=4) if len(every) > 1 else [every[0]] * 3
        meds = [statistics.median(t) for t in trials.values()]
        spread = statistics.stdev(meds) / statistics.fmean(meds) if len(meds) > 1 else 0.0
        lines.append(f"{phase:<8}{b:>6}{n:>7}{c:>8}{statistics.median(every) * 1e3:>11.3f}"
                     f"{(q[2] - q[0]) * 1e3:>9.3f}{spread:>12.1%}")
    for s in skipped:
        lines.append(f"skipped {s['phase']} batch {s['batch_size']} context {s['context_len']}: {s['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from simsched.errors import SimschedError

    t0 = time.perf_counter()
    run = {"command": "python3 -m calibrate.gpu_grid " + " ".join(sys.argv[1:] if argv is None else argv),
           "models": {}, "wall_s": None}
    args.out.mkdir(parents=True, exist_ok=True)
    code = 0
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            from calibrate.profiler import ProfileSpec, profile

            spec = ProfileSpec(model=model, device=args.device, dtype=args.dtype,
                               prefill_batch_sizes=args.prefill_batch_sizes, prefill_lens=args.prefill_lens,
                               max_prefill_tokens=args.max_prefill_tokens,
                               decode_batch_sizes=args.decode_batch_sizes, decode_contexts=args.decode_contexts,
                               trials=args.trials, prefill_steps=args.prefill_steps, decode_steps=args.decode_steps,
                               warmup_s=args.warmup_s, graphs=args.graphs, seed=args.seed,
                               budget_s=args.budget_s or None, threads=args.threads)
            result = profile(spec, args.out, progress=not args.quiet)
        except SimschedError as exc:
            print(f"error: {model}: {exc}", file=sys.stderr)
            run["models"][model] = {"status": "error", "error": str(exc)}
            code = exc.exit_code
            continue
        except ImportError as exc:
            print(f"error: the GPU run needs torch and transformers ({exc})", file=sys.stderr)
            return 2
        text = summary(result.rows, result.skipped)
        (args.out / f"summary_{model.replace('/', '_')}.txt").write_text(text + "\n")
        print(f"== {model} on {result.meta['device_name']} (graphs used: {result.meta['graphs_used']}; "
              f"fallback: {result.meta['graphs_fallback']})\n{text}\nsamples: {result.samples_path}\n"
              f"metadata: {result.json_path}", flush=True)
        run["models"][model] = {"status": result.meta["status"], "samples": result.samples_path.name,
                                "json": result.json_path.name, "wall_s": result.meta["wall_s"],
                                "graphs_used": result.meta["graphs_used"], "skipped": len(result.skipped)}
        run["wall_s"] = round(time.perf_counter() - t0, 3)
        (args.out / "gpu_run.json").write_text(json.dumps(run, indent=1) + "\n")
    run["wall_s"] = round(time.perf_counter() - t0, 3)
    (args.out / "gpu_run.json").write_text(json.dumps(run, indent=1) + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
