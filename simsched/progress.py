"""Progress of a sweep: jobs done / total and an ETA, from the job folders on disk.

It watches the sweep folder rather than hooking the jobs, so it works the same for every
launcher whose jobs write to that folder (basic, joblib, a local Ray instance, SLURM on a shared
file system). A job counts as done once its ``done.json`` (written last by a complete run) or
its ``error.json`` exists.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path


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
