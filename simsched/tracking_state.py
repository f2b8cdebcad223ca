"""The tracking state of a run folder, ``tracking.json``: what is to be logged and whether it was.

A finished run first records what it will log (state ``pending``, with the ``RunRecord``), then
logs it, here or in a background process, and records the outcome: ``logged`` (with the run
id) or ``failed`` (with the reason). So a run whose logging was interrupted or failed is never
silently missing from MLflow: its folder says so, sweep summaries show it, and
``python -m simsched.track FOLDER`` logs it later from the folder alone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simsched.outputs import write_json
from simsched.tracking import STATE_FILE, RunRecord, TrackingError, log_record, preflight


def load_state(out_dir: Path) -> dict[str, Any] | None:
    """The folder's tracking state, or None (never tracked, or an unreadable file)."""
    try:
        data = json.loads((Path(out_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_pending(out_dir: Path, record: RunRecord) -> None:
    write_json(Path(out_dir) / STATE_FILE, {"state": "pending", "record": record.to_dict()})


def mark_failed(out_dir: Path, reason: str) -> None:
    """Record that the pending run was not logged, and why."""
    state = load_state(out_dir) or {}
    _save(out_dir, state.get("record", {}), state="failed", error=reason)


def _save(out_dir: Path, record: dict[str, Any], **state: Any) -> dict[str, Any]:
    data = state | {"record": record, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(Path(out_dir) / STATE_FILE, data)
    return data


def log_folder(out_dir: Path, *, parent_run_id: str | None = None, client: Any = None,
               warn: bool = True) -> dict[str, Any]:
    """Log the run recorded in ``out_dir/tracking.json`` (unless already logged) and record the
    outcome; a failure is one line on stderr. ``parent_run_id`` replaces the recorded parent
    (a sweep whose parent run was created later)."""
    state = load_state(out_dir)
    if state is None or "record" not in state:
        return {"state": "off"}
    if state.get("state") == "logged":
        return state
    record_data = dict(state["record"])
    if parent_run_id is not None:
        record_data["parent_run_id"] = parent_run_id
    try:
        record = RunRecord.from_dict(record_data)
    except TypeError:
        return _save(out_dir, record_data, state="failed", error=f"{STATE_FILE} is unreadable")
    try:
        run_id = log_record(record, Path(out_dir), client)
    except TrackingError as exc:
        if warn:
            print(f"warning: MLflow tracking failed ({exc}); results are on disk in {out_dir}; "
                  f"`python -m simsched.track {out_dir}` logs them later", file=sys.stderr, flush=True)
        return _save(out_dir, record_data, state="failed", error=str(exc), uri=record.uri)
    return _save(out_dir, record_data, state="logged", run_id=run_id, uri=record.uri)


def spawn_background(out_dir: Path) -> str | None:
    """Start a detached ``python -m simsched.track OUT_DIR`` (output in ``tracking.log``) to log
    the pending run; returns why it was not started (the store is unusable), or None."""
    state = load_state(out_dir)
    if state is None or "record" not in state:
        return "nothing to log"
    problem = preflight(state["record"]["uri"], write=True)
    if problem:
        return problem
    import simsched

    root = str(Path(simsched.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    with open(Path(out_dir) / "tracking.log", "ab") as logf:
        subprocess.Popen([sys.executable, "-m", "simsched.track", "--quiet", str(out_dir)],
                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                         start_new_session=True, env=env, close_fds=True)
    return None
