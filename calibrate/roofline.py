"""``python -m calibrate.roofline``: the roofline presets as a table, and (``--yaml DIR``) as
ready-to-use ``latency_model`` (a plain ``StepTime``) and ``gpus`` options.

    python -m calibrate.roofline                                  # every GPU x model that fits
    python -m calibrate.roofline --gpu h200 --model qwen2_5_1_5b --yaml DIR
    python -m simsched --config-dir DIR latency_model=roofline_h200_qwen2_5_1_5b gpus=roofline_h200_qwen2_5_1_5b

Datasheet figures and assumed efficiencies, not measurements (see ``simsched/roofline.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from calibrate.yamlio import option_text, write_atomic
from simsched.errors import SimschedError
from simsched.roofline import (DEFAULT_BANDWIDTH_EFFICIENCY, DEFAULT_CPU_S, DEFAULT_FLOPS_EFFICIENCY, GPUS,
                               MODELS, Roofline)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m calibrate.roofline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="append", choices=list(GPUS), help="repeatable (default: all)")
    ap.add_argument("--model", action="append", choices=list(MODELS), help="repeatable (default: all)")
    ap.add_argument("--tensor-parallel", type=int, default=None,
                    help="GPUs per replica (default: the smallest power of two that fits)")
    ap.add_argument("--bandwidth-efficiency", type=float, default=DEFAULT_BANDWIDTH_EFFICIENCY)
    ap.add_argument("--flops-efficiency", type=float, default=DEFAULT_FLOPS_EFFICIENCY)
    ap.add_argument("--cpu-s", type=float, default=DEFAULT_CPU_S)
    ap.add_argument("--yaml", type=Path, default=None, metavar="DIR",
                    help="write DIR/latency_model/roofline_<gpu>_<model>.yaml and DIR/gpus/... for each row")
    return ap.parse_args(argv)


def build(gpu: str, model: str, tp: int | None, args: argparse.Namespace) -> Roofline | None:
    """The roofline for one pair; with ``tp`` None the smallest power-of-two TP up to 8 that fits."""
    for t in ([tp] if tp else [1, 2, 4, 8]):
        try:
            return Roofline(gpu=gpu, model=model, tensor_parallel=t, bandwidth_efficiency=args.bandwidth_efficiency,
                            flops_efficiency=args.flops_efficiency, cpu_s=args.cpu_s,
                            name=f"roofline_{gpu}_{model}")
        except SimschedError as exc:
            if "raise tensor_parallel" not in str(exc):
                raise
    return None


def row(r: Roofline) -> str:
    """Coefficients, KV capacity, and three example steps (decode at b=1 and b=64 over 1,024
    tokens of context each; one 2,048-token prefill chunk)."""
    m = r.step_model
    d1 = r.step_time(0, 1, 1024) * 1e3
    d64 = r.step_time(0, 64, 64 * 1024) * 1e3
    pf = r.step_time(2048, 0, 0, 2048**2 / 2) * 1e3
    return (f"{r.gpu:<13}{r.model:<13}{r.tensor_parallel:>3} {m.c0_s * 1e3:8.3f} {m.c_pf_s * 1e6:8.3f} "
            f"{m.c_dec_s * 1e6:8.3f} {m.c_ctx_s * 1e9:8.2f} {m.c_attn_s * 1e12:8.4f} {r.kv_capacity_tokens:>10,} "
            f"{d1:8.2f} {d64:8.2f} {pf:9.1f}")


HEADER = (f"{'gpu':<13}{'model':<13}{'tp':>3} {'c0 ms':>8} {'pf us/t':>8} {'dec us/s':>8} {'ctx ns/t':>8} "
          f"{'attn ps':>8} {'KV tokens':>10} {'b1 ms':>8} {'b64 ms':>8} {'pf2k ms':>9}")


def yaml_files(r: Roofline, out: Path) -> list[Path]:
    """A StepTime latency_model option and the matching gpus option, both named after the pair."""
    m = r.step_model
    comments = [f"{r.name}: written by `python -m calibrate.roofline` (datasheet roofline, not a measurement)",
                m.source, f"gpu: {GPUS[r.gpu].source}", f"model: {MODELS[r.model].source}"]
    values = {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
    lm = write_atomic(out / "latency_model" / f"{r.name}.yaml",
                      option_text(comments, "/schema/latency_model/StepTime", "simsched.latency.StepTime", values))
    gpus = {"name": GPUS[r.gpu].label, "count": 2, "kv_capacity_tokens": r.kv_capacity_tokens}
    gp = write_atomic(out / "gpus" / f"{r.name}.yaml",
                      option_text(comments[:1] + [f"KV cache per replica of {r.tensor_parallel} GPU(s): utilisation "
                                                  f"{r.gpu_memory_utilization:g} minus weights and {r.reserve_gib:g} "
                                                  f"GiB per GPU"], "/schema/gpus/Gpus", "simsched.cluster.Gpus", gpus))
    return [lm, gp]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lines = [HEADER]
    try:
        for gpu in args.gpu or list(GPUS):
            for model in args.model or list(MODELS):
                r = build(gpu, model, args.tensor_parallel, args)
                if r is None:
                    lines.append(f"{gpu:<13}{model:<13}  - does not fit on 8 GPUs")
                    continue
                lines.append(row(r))
                if args.yaml:
                    for path in yaml_files(r, args.yaml):
                        lines.append(f"  wrote {path}")
    except SimschedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
