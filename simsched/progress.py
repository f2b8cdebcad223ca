"""Progress on stderr: a sweep's jobs done / total and an ETA, from the job folders on disk; and
a line for any other phase that lasts longer than about two seconds (``Phase``).

It watches the sweep folder rather than hooking the jobs, so it works the same for every
launcher whose jobs write to that folder (basic, joblib, a local Ray instance, SLURM on a shared
file system). A job counts as done once its ``done.json`` (written last by a complete run) or
its ``error.json`` exists.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any


def jobs_done(sweep_dir: Path) -> tuple[int, int]:
    """(finished jobs, failed jobs) under a sweep folder."""
    ok = {p.parent for p in sweep_dir.rglob("done.json")}
    failed = {p.parent for p in sweep_dir.rglob("error.json")}
    return len(ok | failed), len(failed)


class SweepProgress:
    """A daemon thread that updates a tqdm bar every ``poll_s`` seconds until ``stop()``."""

    def __init__(self, sweep_dir: Path, total: int | None, poll_s: float = 1.0, label: str = "sweep"):
        self.sweep_dir = Path(sweep_dir)
        self.total = total
        self.poll_s = poll_s
        self.label = label
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simsched-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.total, desc=self.label, unit="job", file=sys.stderr, dynamic_ncols=True,
                   mininterval=self.poll_s, smoothing=0.1)
        try:
            while True:
                stopping = self._stop.wait(self.poll_s)
                done, failed = jobs_done(self.sweep_dir)
                if done > bar.n:
                    bar.update(done - bar.n)
                bar.set_postfix_str(f"{failed} failed" if failed else "", refresh=False)
                if stopping:
                    break
        finally:
            bar.close()


class Phase:
    """``with Phase("checking 48 configurations"):`` prints ``checking 48 configurations ...``
    if the block is still running after ``after_s`` seconds, and then how long it took; a
    quick block prints nothing."""

    def __init__(self, label: str, after_s: float = 2.0) -> None:
        self.label = label
        self.after_s = after_s
        self._shown = threading.Event()
        self._timer: threading.Timer | None = None
        self._t0 = 0.0

    def _show(self) -> None:
        self._shown.set()
        print(f"{self.label} ...", file=sys.stderr, flush=True)

    def __enter__(self) -> "Phase":
        self._t0 = time.perf_counter()
        self._timer = threading.Timer(self.after_s, self._show)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._timer is not None
        self._timer.cancel()
        if self._shown.is_set():
            state = "done" if exc[0] is None else "stopped"
            print(f"{self.label}: {state} in {time.perf_counter() - self._t0:.1f} s", file=sys.stderr, flush=True)
