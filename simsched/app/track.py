"""``python -m simsched.track FOLDER ...``: log to MLflow what a run or a sweep has not logged.

Everything needed is in the folders (``tracking.json`` holds each run's record), so this works
after any fault: a single run whose background logging failed or was killed, a sweep whose
store was read-only or whose server was down, a sweep killed before its summary.

- A run folder whose ``tracking.json`` is ``pending`` or ``failed`` is logged.
- A sweep folder (``sweep.json``): its parent run is created if the sweep has none; every job
  not logged yet is logged as its child; the parent then gets the summary's figures and its
  final status from the jobs' folders (FINISHED, FAILED when every job failed, KILLED when
  some never finished).

Exit status 0 when everything asked for is logged, 1 otherwise, 2 for a bad argument.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from simsched.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from simsched.app.sweep import SweepContext


def track_run(folder: Path, quiet: bool = False) -> bool:
    """Log one run folder; True when it is (now) logged."""
    from simsched.tracking_state import load_state, log_folder

    before = load_state(folder)
    if before is None:
        raise ConfigError("folder", f"{folder} holds no tracking.json (a run with tracking=none, or not a run)")
    state = log_folder(folder, warn=not quiet)
    if not quiet and before.get("state") != "logged" and state.get("state") == "logged":
        print(f"{folder}: logged run {state.get('run_id')}")
    return state.get("state") == "logged"


def track_sweep(sweep_dir: Path, quiet: bool = False) -> bool:
    """Log a sweep's parent run and every job not logged yet; True when nothing is left."""
    from simsched.app import report
    from simsched.app.sweep import JOBS, MARKER, ParentRun, SweepContext
    from simsched.progress import Phase
    from simsched.tracking import TrackingError, open_client
    from simsched.tracking_state import load_state

    ctx = SweepContext.read(sweep_dir)
    if ctx is None:
        raise ConfigError("folder", f"{sweep_dir}/{MARKER} is unreadable")
    table = report.collect(sweep_dir)
    records = [s["record"] for s in (load_state(Path(d)) for d in table["dir"]) if s and "record" in s]
    uri = ctx.tracking_uri or next((r.get("uri") for r in records if r.get("uri")), None)
    if uri is None:
        if not quiet:
            print(f"{sweep_dir}: nothing to log (tracking was off)")
        return True
    experiment = ctx.experiment or next((r.get("experiment") for r in records if r.get("experiment")), "simsched")
    try:
        client = open_client(uri)
        parent = None
        if ctx.parent_run_id:
            try:
                client.get_run(ctx.parent_run_id)
                parent = ParentRun(ctx.parent_run_id, uri, experiment, ctx.repeat)
            except Exception:  # noqa: BLE001 - the parent was never written: make one
                parent = None
        if parent is None:
            parent = ParentRun.create(client, uri, experiment, ctx, [], None)
        else:
            parent.reopen(client)   # children left RUNNING by a killed sweep are closed as KILLED
    except TrackingError as exc:
        print(f"error: {sweep_dir}: MLflow tracking failed ({exc})", file=sys.stderr)
        return False
    ctx = replace(ctx, parent_run_id=parent.run_id, tracking_uri=uri, experiment=experiment, tracking_error=None)
    ctx.write()
    with Phase(f"MLflow: logging the jobs of {sweep_dir} not logged yet"):
        logged = _log_jobs(table, parent.run_id, client, ctx, quiet)
    table = report.collect(sweep_dir)
    bad = table["status"] != "ok"
    status = "KILLED" if (table["status"].isin(["incomplete", "corrupt"])).any() else None
    files = [sweep_dir / n for n in ("summary.csv", "summary.parquet", "summary_mean_ci.csv", "capacity.csv",
                                     "plots", "multirun.yaml", MARKER, JOBS) if (sweep_dir / n).exists()]
    parent.finish(table, files, status)
    left = int(table["tracking"].astype(str).str.startswith(("failed", "pending")).sum())
    if not quiet:
        print(f"{sweep_dir}: parent run {parent.run_id}; {logged} job run(s) logged now, {left} not logged"
              + (f"; {int(bad.sum())} job(s) not ok" if bad.any() else ""))
    return left == 0


def _log_jobs(table: "pd.DataFrame", parent_run_id: str, client: object, ctx: "SweepContext", quiet: bool) -> int:
    """Log every job of the table not logged yet; returns how many were logged now."""
    from simsched.tracking_state import load_state, log_folder

    logged = 0
    for _, row in table.iterrows():
        folder = Path(row["dir"])
        state = load_state(folder)
        if state is not None and "record" in state and state.get("state") != "logged":
            logged += log_folder(folder, parent_run_id=parent_run_id, client=client,
                                 warn=not quiet).get("state") == "logged"
        elif state is None and row["status"] == "ok" and str(row.get("tracking", "")).startswith("pending"):
            logged += _log_unrecorded(folder, ctx, row)   # ended between done.json and tracking.json
    return logged


def _log_unrecorded(folder: Path, ctx: "SweepContext", row: "pd.Series") -> bool:
    """Log a complete job that ended before it recorded what to log, from its folder."""
    from omegaconf import OmegaConf

    from simsched.app.sweep import log_kept_job
    from simsched.tracking_state import load_state

    cfg = OmegaConf.load(folder / ".hydra" / "config.yaml")
    overrides = [str(o) for o in OmegaConf.load(folder / ".hydra" / "overrides.yaml")]
    log_kept_job(cfg, folder, ctx, overrides, int(row["job"]))
    state = load_state(folder)
    return state is not None and state.get("state") == "logged"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simsched.track", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="run folders or sweep folders")
    parser.add_argument("--quiet", action="store_true", help="print only failures")
    args = parser.parse_args(argv)
    ok = True
    for name in args.folders:
        folder = Path(name).resolve()
        if not folder.is_dir():
            raise ConfigError("folder", "no such folder", name)
        if (folder / "sweep.json").is_file():
            ok &= track_sweep(folder, args.quiet)
        else:
            ok &= track_run(folder, args.quiet)
    return 0 if ok else 1


def cli() -> None:
    """The command: one line and exit code 2 for a user's mistake."""
    from simsched.app.cli import run_command

    run_command(main)
