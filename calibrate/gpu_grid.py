"""The GPU calibration run in one command, needing only torch and transformers on the machine
(the project travels as source; no Hydra, pandas or MLflow):

    python3 -m calibrate.gpu_grid --out DIR

Defaults are the shipped measurement: the Qwen2.5-1.5B shape in bfloat16 on cuda, batch sizes
1..128 (powers of two) × prompts of 128 and 1024 tokens, output lengths up to 256, 2 trials,
with a time budget that keeps the whole run inside 8 minutes (shapes it could not start are
listed in the JSON). Writes ``grid_<gpu>_<model>.csv`` and ``.json`` into DIR; fit them with
``python -m calibrate.fit grid=DIR/grid_....csv``. Every option can be changed (the CPU test
runs this same code path with the ``tiny`` preset).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUTPUT_LENS = "1,2,4,8,16,32,64,96,128,160,192,224,256"


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m calibrate.gpu_grid", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for the grid CSV and its JSON")
    ap.add_argument("--model", default="qwen2_5_1_5b", help="preset (qwen2_5_1_5b, llama3_8b, tiny) or model folder")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", help="bfloat16, float16, float32 or auto")
    ap.add_argument("--batch-sizes", type=_int_list, default=_int_list("1,2,4,8,16,32,64,128"))
    ap.add_argument("--prompt-lens", type=_int_list, default=_int_list("128,1024"))
    ap.add_argument("--output-lens", type=_int_list, default=_int_list(DEFAULT_OUTPUT_LENS),
                    help="output lengths recorded (all from the same generate calls); the largest is generated")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--warmup-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=390.0,
                    help="stop starting new shapes after this many seconds (0: no limit)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from simsched.errors import SimschedError

    try:
        from calibrate.profiler import ProfileSpec, profile

        spec = ProfileSpec(model=args.model, device=args.device, dtype=args.dtype,
                           batch_sizes=args.batch_sizes, prompt_lens=args.prompt_lens,
                           output_lens=args.output_lens, trials=args.trials,
                           warmup_tokens=args.warmup_tokens, seed=args.seed,
                           budget_s=args.budget_s or None, threads=args.threads)
        result = profile(spec, args.out, progress=not args.quiet)
    except SimschedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ImportError as exc:
        print(f"error: the GPU grid needs torch and transformers ({exc})", file=sys.stderr)
        return 2
    print(summary(result.rows, result.skipped))
    print(f"grid: {result.csv_path}\nmetadata: {result.json_path}")
    return 0


def summary(rows: list[dict], skipped: list[dict]) -> str:
    """Per shape: time to first token and mean decode step, for a quick look at the numbers."""
    by_shape: dict[tuple[int, int], dict[int, float]] = {}
    for r in rows:
        by_shape.setdefault((r["batch_size"], r["prompt_len"]), {})[r["output_len"]] = r["mean_latency_s"]
    lines = [f"{'batch':>6} {'prompt':>7} {'T(L=1) s':>10} {'step ms':>9} {'T(Lmax) s':>10}"]
    for (b, p), t in sorted(by_shape.items()):
        lo, hi = min(t), max(t)
        step = (t[hi] - t[lo]) / (hi - lo) * 1e3 if hi > lo else float("nan")
        lines.append(f"{b:>6} {p:>7} {t[lo]:>10.4f} {step:>9.2f} {t[hi]:>10.3f}")
    for s in skipped:
        lines.append(f"skipped batch {s['batch_size']} prompt {s['prompt_len']}: {s['reason']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
