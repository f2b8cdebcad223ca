"""``python -m simsched.validate [--quick] [--out DIR] [--checks 1,2,...]``: run the validation
suite, write the report into a run folder, then log it to MLflow as one run.

The report is on disk before MLflow is touched; an unreachable or broken tracking store costs a
warning. Exit status: 0 when every check passes, 1 when one fails, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHECKS = {
    1: "queueing",
    2: "multibin_theorem",
    3: "prediction_errors",
    4: "eight_servers",
    5: "sla_capacity",
    6: "seed_table",
    7: "continuous",
}


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr, exit code 2 (the project's convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="python -m simsched.validate", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced sizes and replications (a smoke run)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: outputs/validate/DATE/TIME, like a Hydra run folder)")
    p.add_argument("--checks", default="1,2,3,4,5,6,7", help="comma-separated check numbers (default: all)")
    p.add_argument("--reps", type=int, default=None, help="replications per point (default 5, quick 3)")
    p.add_argument("--seed", type=int, default=0, help="suite seed (default 0)")
    p.add_argument("--jobs", type=int, default=1,
                   help="processes for independent replications (check 5; default 1; results do not depend on it)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="simsched-validation", help="MLflow experiment name")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    args = p.parse_args(argv)
    try:
        args.check_ids = sorted({int(x) for x in args.checks.split(",") if x.strip()})
    except ValueError:
        p.error(f"--checks: expected numbers like 1,2,5 (got {args.checks!r})")
    bad = [c for c in args.check_ids if c not in CHECKS]
    if bad or not args.check_ids:
        p.error(f"--checks: unknown check {bad[0] if bad else args.checks!r}; allowed: 1-7")
    if args.jobs < 1:
        p.error(f"--jobs: needs at least 1 process (got {args.jobs})")
    if args.reps is not None and args.reps < 2:
        p.error(f"--reps: needs at least 2 replications for a confidence interval (got {args.reps})")
    return args


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _track(args: argparse.Namespace, out: Path, results: list[Any], meta: dict[str, Any], files: list[Path]) -> None:
    from simsched.tracking import MlflowTracker

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    params = {k: v for k, v in meta.items() if k not in ("wall_s",)}
    metrics: dict[str, float] = {"checks_passed": sum(c.passed for c in results), "checks_run": len(results),
                                 "wall_s": meta["wall_s"]}
    for c in results:
        metrics[f"{c.key}/passed"] = float(c.passed)
        metrics[f"{c.key}/failures"] = float(c.failures)
        for i, r in enumerate(c.rows):
            metrics[f"{c.key}/row{i:02d}_mean"] = r.mean
            if r.expected is not None:
                metrics[f"{c.key}/row{i:02d}_expected"] = r.expected
    pngs = sorted(out.glob("*.png"))
    tracker = MlflowTracker(uri=uri, experiment=args.experiment, run_name="validate" + ("-quick" if args.quick else ""))
    run_id = tracker.log_run(out, params, metrics, files + pngs,
                             {"kind": "validation", "quick": str(args.quick), "commit": meta["commit"]})
    if run_id:
        print(f"  logged to MLflow ({uri}, experiment {args.experiment!r}, run {run_id})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    import importlib

    from simsched.validate.common import Settings
    from simsched.validate.report import write_report

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    now = dt.datetime.now()
    out = args.out or Path("outputs") / "validate" / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S-%f")
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(quick=args.quick, reps=args.reps, seed=args.seed, jobs=args.jobs)
    from tqdm import tqdm

    t0 = time.perf_counter()
    results = []
    with tqdm(args.check_ids, desc="validation", unit="check", file=sys.stderr) as bar:
        for cid in bar:
            bar.set_postfix_str(CHECKS[cid])
            module = importlib.import_module(f"simsched.validate.{CHECKS[cid]}")
            results.append(module.run(settings, out))
    meta = {"command": " ".join(["python -m simsched.validate", *map(shlex.quote, argv)]), "commit": _commit(),
            "date": now.strftime("%Y-%m-%d %H:%M"), "quick": args.quick, "replications": settings.replications,
            "seed": args.seed, "checks": ",".join(map(str, args.check_ids)), "jobs": args.jobs,
            "wall_s": time.perf_counter() - t0}
    files = write_report(out, results, meta)
    for c in results:
        print(f"{'PASS' if c.passed else 'FAIL'}  {c.title}  ({c.judged - c.failures}/{c.judged}, {c.wall_s:.0f} s)")
    print(f"  report: {out / 'report.md'}")
    if not args.no_tracking:
        _track(args, out, results, meta, files)
    return 0 if all(c.passed for c in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
