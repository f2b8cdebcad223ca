"""Sweeps (Hydra multiruns): the job function, and the callback that makes a multirun one MLflow
parent run with a child run per job, a progress display and an aggregated report.

How the pieces meet. ``SweepCallback.on_multirun_start`` runs in the launching process before
any job: it claims the sweep folder (``sweep.json``, created exclusively: a folder that holds
another sweep is refused), creates the tracking store and the parent run, and records in
``sweep.json`` what the jobs need (parent run id, absolute tracking URI, experiment, git
commit, the launching process). The sweeper (``hydra_plugins/simsched_plugins``) writes the
list of jobs (``jobs.json``). Each job (``task``, in whatever process or machine the launcher
uses) finds ``sweep.json`` above its output folder, writes its folder atomically with
``done.json`` last, and logs its run as a child. ``on_multirun_end`` builds the summary from
the job folders (verified against their ``done.json``; not from MLflow, so it is complete even
when tracking failed), logs it to the parent, gives the parent its final status, and exits
with status 1 when any job failed, did not finish or was not tracked.

A job that raises does not stop the sweep: it writes ``error.json``, logs a FAILED child run
carrying the error, and returns. A sweep stopped early (Ctrl-C, SIGTERM) still gets the summary
of the jobs that finished, and its parent run is closed as KILLED. ``python -m simsched.resume
DIR`` finishes an interrupted sweep in its own folder (jobs already complete are kept), and
``python -m simsched.track DIR`` logs what tracking missed. Rerunning a sweep with the same
settings makes a new parent run tagged ``simsched.repeat = N`` (N earlier runs of the same
sweep) and ``simsched.repeat_of = <first parent run id>``; its children carry the same tag.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

try:  # Hydra is a dependency; the import is only guarded for readers of this module's API
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]

from simsched.tracking import absolute_uri  # noqa: F401 - part of this module's API (tests, callers)

MARKER = "sweep.json"
JOBS = "jobs.json"
# Files a job writes (a rerun of an unfinished job starts without them; .hydra/ is Hydra's).
JOB_OUTPUTS = ("done.json", "error.json", "tracking.json", "tracking.log", "metrics.json", "requests.parquet",
               "batches.parquet", "latency_cdf.png")


@dataclass(frozen=True)
class SweepContext:
    """What a job needs to log under its sweep (the content of ``sweep.json``)."""

    sweep_dir: str
    sweep_name: str
    total_jobs: int | None
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    repeat: int = 0
    sweep_id: str = ""
    git_commit: str | None = None
    launcher_pid: int = 0
    launcher_host: str = ""
    tracking_error: str | None = None   # why the parent run does not exist: jobs then do not log
    resumes: int = 0

    def write(self) -> None:
        from simsched.outputs import write_json

        write_json(Path(self.sweep_dir, MARKER), asdict(self))

    @staticmethod
    def read(sweep_dir: Path) -> "SweepContext | None":
        try:
            data = json.loads(Path(sweep_dir, MARKER).read_text())
            known = set(SweepContext.__dataclass_fields__)
            return SweepContext(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError):
            return None

    @staticmethod
    def find(*folders: Path) -> "SweepContext | None":
        """The context of the first folder (or an ancestor of it) holding ``sweep.json``."""
        for folder in folders:
            for d in [folder, *folder.parents][:6]:
                if (d / MARKER).is_file():
                    return SweepContext.read(d)
        return None


def register_sweeps(sweeps_dir: Path | None = None) -> None:
    """Make each ``sweeps/NAME.yaml`` the option ``NAME`` of the config group ``sweep`` (package
    ``_global_``), so ``+sweep=NAME`` selects it, and register simsched's sweeper with Hydra
    and launcher (``hydra/sweeper: simsched``, ``hydra/launcher: simsched``; Hydra's own scan of
    ``hydra_plugins`` misses them in an editable install). Idempotent."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    from simsched.app.paths import sweeps_dir as default_sweeps_dir

    plugins = Plugins.instance()   # first: Hydra's scan re-executes the plugin modules it finds
    from hydra_plugins.simsched_plugins.launcher import SimschedLauncher
    from hydra_plugins.simsched_plugins.sweeper import SimschedSweeper

    plugins.register(SimschedSweeper)
    plugins.register(SimschedLauncher)
    cs = ConfigStore.instance()
    for path in sorted(Path(sweeps_dir or default_sweeps_dir()).glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def sweep_dir_of(config: DictConfig) -> Path:
    sweep_dir = Path(str(config.hydra.sweep.dir))
    return sweep_dir if sweep_dir.is_absolute() else Path(str(config.hydra.runtime.cwd)) / sweep_dir


def write_job_list(config: DictConfig, jobs: list[list[str]]) -> None:
    """``jobs.json``: every job's number and overrides, before any is launched."""
    from simsched.outputs import write_json

    sweep_dir = sweep_dir_of(config)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep_dir / JOBS, [{"job": i, "overrides": list(o)} for i, o in enumerate(jobs)])


# --- the job -----------------------------------------------------------------------------------

def task(cfg: DictConfig) -> float | None:
    """Hydra's task function for ``python -m simsched``: one run, or one job of a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from simsched.errors import SimschedError
    from simsched.run import run

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    if hc.mode != RunMode.MULTIRUN:
        try:
            return run(cfg, out_dir, background=True).get("goodput_rps")
        except SimschedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        except MemoryError:
            print("error: out of memory; lower workload.num_requests (a run needs ~250 B per request)",
                  file=sys.stderr)
            raise SystemExit(2) from None
    sweep_dir = Path(str(hc.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(hc.runtime.cwd) / sweep_dir
    ctx = SweepContext.find(sweep_dir, out_dir)
    if ctx is not None and ctx.launcher_host == socket.gethostname():
        end_with_launcher(ctx.launcher_pid)
    return run_job(cfg, out_dir, ctx, list(hc.overrides.task), int(hc.job.num))


def run_job(cfg: DictConfig, out_dir: Path, ctx: SweepContext | None, overrides: list[str],
            num: int) -> float | None:
    """Run one sweep job; any exception becomes ``error.json`` plus a FAILED child run. When the
    sweep is resumed, a job whose folder is already complete is kept (and logged if it was not)."""
    from simsched.outputs import ERROR, check_run_dir, write_json
    from simsched.run import run, track

    parent = ctx.parent_run_id if ctx else None
    if ctx is not None and ctx.resumes and check_run_dir(out_dir).ok:
        log_kept_job(cfg, out_dir, ctx, overrides, num)
        return json.loads((out_dir / "metrics.json").read_text()).get("goodput_rps")
    for name in JOB_OUTPUTS:   # a rerun (resume) starts from Hydra's files only
        (out_dir / name).unlink(missing_ok=True)
    tags = {"simsched.job": str(num)}
    commit = ctx.git_commit if ctx else None
    defer = f"the sweep's parent run was not created ({ctx.tracking_error})" if ctx and ctx.tracking_error else None
    try:
        cfg = _tracking_for(cfg, ctx)
        tags = job_tags(cfg, ctx, overrides, num)
        return run(cfg, out_dir, tags=tags, parent_run_id=parent, commit=commit, defer=defer).get("goodput_rps")
    except Exception as exc:  # noqa: BLE001 - one failed job must not stop the sweep
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        out_dir.mkdir(parents=True, exist_ok=True)
        error_file = write_json(out_dir / ERROR, {"job": num, "overrides": overrides, "error": message,
                                                 "traceback": traceback.format_exc()})
        print(f"error: job {num} ({' '.join(overrides)}) failed: {message}", file=sys.stderr)
        if cfg.get("tracking") is not None:
            try:
                track(cfg, out_dir, {}, [error_file], tags=tags | {"error": message[:5000]}, parent_run_id=parent,
                      commit=commit, status="FAILED", defer=defer)
            except Exception as exc2:  # noqa: BLE001 - the error is on disk already
                print(f"warning: could not log the failed job to MLflow ({type(exc2).__name__}: {exc2})",
                      file=sys.stderr)
        return None


def log_kept_job(cfg: DictConfig, out_dir: Path, ctx: SweepContext, overrides: list[str], num: int) -> None:
    """A complete job kept by a resumed sweep: log it if it was not (killed before or while
    logging)."""
    from simsched.outputs import MARKER
    from simsched.run import track
    from simsched.tracking_state import load_state, log_folder

    if ctx.tracking_error or cfg.get("tracking") is None:
        return
    state = load_state(out_dir)
    if state is not None and "record" in state:
        if state.get("state") != "logged":
            log_folder(out_dir, parent_run_id=ctx.parent_run_id)
        return
    metrics = json.loads((out_dir / "metrics.json").read_text())
    listed = json.loads((out_dir / MARKER).read_text())["files"]
    files = [out_dir / name for name in listed if not name.startswith(".hydra/")]
    cfg = _tracking_for(cfg, ctx)
    track(cfg, out_dir, metrics, files, tags=job_tags(cfg, ctx, overrides, num), parent_run_id=ctx.parent_run_id,
          commit=ctx.git_commit)


def end_with_launcher(pid: int) -> None:
    """In a worker process on the launching machine (joblib's, simsched's, a local Ray's), exit
    when the process that launched the sweep is gone, so that killing a sweep does not leave its
    workers running. A job cut short leaves no ``done.json``: the summary and ``resume`` see it
    as unfinished."""
    if not pid or pid == os.getpid() or any(t.name == "simsched-launcher-watch" for t in threading.enumerate()):
        return

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:   # another user's process of that id: not ours any more
                os._exit(3)

    threading.Thread(target=watch, name="simsched-launcher-watch", daemon=True).start()


def _tracking_for(cfg: DictConfig, ctx: SweepContext | None) -> DictConfig:
    """The job's config with the sweep's (absolute) tracking URI and experiment, so that every
    job writes to the parent's store whatever its working directory."""
    if ctx is None or ctx.tracking_uri is None or cfg.get("tracking") is None or "uri" not in cfg.tracking:
        return cfg
    cfg.tracking.uri = ctx.tracking_uri   # the job's own copy of its config (Hydra's, simsched's launcher)
    cfg.tracking.experiment = ctx.experiment
    return cfg


def job_tags(cfg: DictConfig, ctx: SweepContext | None, overrides: list[str], num: int) -> dict[str, str]:
    """Tags of a sweep job's run: its sweep, number and overrides (its name is ``run_name``)."""
    shown = [o for o in overrides if not o.lstrip("+~").startswith(("hydra", "sweep="))]
    tags = {"simsched.job": str(num), "simsched.overrides": " ".join(shown)[:5000],
            "simsched.config_hash": config_hash(cfg)}
    if ctx is not None:
        tags |= {"simsched.sweep": ctx.sweep_name, "simsched.sweep_dir": ctx.sweep_dir,
                 "simsched.sweep_id": ctx.sweep_id, "simsched.repeat": str(ctx.repeat)}
    return tags


def config_hash(cfg: DictConfig) -> str:
    """A short hash of what determines a run's results (the config minus tracking and output)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("tracking", "output", "hydra"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- counting the jobs of a sweep --------------------------------------------------------------

def sweep_overrides(config: DictConfig) -> list[str]:
    """The sweep's overrides as the basic sweeper sees them: ``hydra.sweeper.params`` first,
    then the command line's (a later value for the same key wins)."""
    params = config.hydra.sweeper.get("params") or {}
    out = [f"{k}={v}" for k, v in params.items()]
    return out + [str(o) for o in config.hydra.overrides.task]


def count_jobs(overrides: list[str]) -> int:
    """How many jobs the basic sweeper makes of these overrides (product of sweep lengths)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sizes: dict[str, int] = {}
    for ov in OverridesParser.create().parse_overrides(overrides):
        key = ov.get_key_element()
        sizes[key] = len(list(ov.sweep_string_iterator())) if ov.is_sweep_override() else 1
    return math.prod(sizes.values())


# --- the callback ------------------------------------------------------------------------------

def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def claim(sweep_dir: Path) -> None:
    """Make ``sweep_dir`` this sweep's, or exit 2 when it holds another sweep's files. The claim
    is the exclusive creation of ``sweep.json``: of two sweeps started on one folder at the same
    instant, exactly one gets it."""
    hint = (f"give a new hydra.sweep.dir, or finish that sweep with `python -m simsched.resume {sweep_dir}`")
    if sweep_dir.is_dir():
        taken = [n for n in (MARKER, JOBS, "multirun.yaml") if (sweep_dir / n).exists()]
        taken += [p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()][:1]
        if taken:
            _refuse(f"hydra.sweep.dir={sweep_dir} holds another sweep ({taken[0]}); {hint}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(sweep_dir / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        _refuse(f"hydra.sweep.dir={sweep_dir} was just taken by another sweep; {hint}")


class SweepCallback(Callback):
    """Hydra callback (``hydra.callbacks.sweep`` in conf/config.yaml) for every multirun.

    ``progress``: print jobs done / total and an ETA while the sweep runs. ``report``: write
    the summary table and plots when it ends. ``resume``: the sweep folder holds an interrupted
    run of this sweep: keep its complete jobs and its parent run. Runtime state (the parent run,
    the progress thread) is not pickled: launchers ship callbacks to their workers.
    """

    def __init__(self, progress: bool = True, report: bool = True, poll_s: float = 1.0,
                 resume: bool = False) -> None:
        self.progress = progress
        self.report = report
        self.poll_s = poll_s
        self.resume = resume
        self._state: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"progress": self.progress, "report": self.report, "poll_s": self.poll_s, "resume": self.resume,
                "_state": {}}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from simsched.tracking import git_commit

        sweep_dir = sweep_dir_of(config)
        earlier = SweepContext.read(sweep_dir) if self.resume else None
        if self.resume and earlier is None:
            _refuse(f"hydra.sweep.dir={sweep_dir}: no sweep to resume there ({MARKER} is missing or unreadable)")
        if not self.resume:
            claim(sweep_dir)
        overrides = sweep_overrides(config)
        target = str(config.hydra.sweeper.get("_target_", ""))
        try:
            total = count_jobs(overrides) if target.endswith(("BasicSweeper", "SimschedSweeper")) else None
        except Exception:  # noqa: BLE001 - the sweeper reports bad overrides itself
            total = None
        name = str(config.hydra.runtime.choices.get("sweep") or "multirun")
        ctx = SweepContext(str(sweep_dir), name, total, sweep_id=earlier.sweep_id if earlier else uuid.uuid4().hex[:12],
                           git_commit=git_commit(), launcher_pid=os.getpid(), launcher_host=socket.gethostname(),
                           resumes=earlier.resumes + 1 if earlier else 0)
        from simsched.progress import Phase

        with Phase("MLflow: opening the store and the sweep's parent run"):
            parent, problem = ParentRun.start(config, ctx, overrides, earlier)
        if parent is not None:
            ctx = replace(ctx, parent_run_id=parent.run_id, tracking_uri=parent.uri, experiment=parent.experiment,
                          repeat=parent.repeat)
        elif problem:
            ctx = replace(ctx, tracking_error=problem)
            print(f"warning: MLflow tracking is off for this sweep ({problem}); the jobs still write their "
                  f"folders; `python -m simsched.track {sweep_dir}` logs them later", file=sys.stderr, flush=True)
        ctx.write()
        import simsched.app.report  # noqa: F401 - now: an interrupted sweep summarises at exit, when
        #                             modules that register exit handlers can no longer be imported
        monitor = None
        if self.progress:
            from simsched.progress import SweepProgress

            monitor = SweepProgress(sweep_dir, total, self.poll_s, label=f"sweep {name}")
            monitor.start()
        self._state = {"ctx": ctx, "parent": parent, "monitor": monitor, "t0": time.time(),
                       "signals": SweepInterrupt().install()}
        # A sweep that stops early (Ctrl-C, SIGTERM, a launcher error) still gets its summary,
        # and its parent run is closed as KILLED rather than left RUNNING.
        atexit.register(self._interrupted)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._interrupted)
        problems = self._finish()
        if problems:
            raise SystemExit(1)

    def _interrupted(self) -> None:
        if self._state:
            print("sweep stopped before its end: summarising the jobs that finished", file=sys.stderr)
            self._finish(status="KILLED")

    def _finish(self, status: str | None = None) -> str:
        """Summary, parent run, final line; returns what went wrong ("" when nothing)."""
        state, self._state = self._state, {}
        if not state:
            return ""
        if state.get("signals") is not None:
            state["signals"].restore()
        ctx: SweepContext = state["ctx"]
        if state["monitor"] is not None:
            state["monitor"].stop()
        sweep_dir = Path(ctx.sweep_dir)
        files: list[Path] = []
        table = None
        from simsched.progress import Phase

        try:
            from simsched.app import report

            with Phase("writing the sweep's summary"):
                table = report.collect(sweep_dir)
                if self.report:   # plots need matplotlib, which cannot be imported during exit
                    files = report.write_report(table, sweep_dir, sweep_dir, print_table=True, plots=status is None)
        except Exception as exc:  # noqa: BLE001 - the job folders are intact; close the parent run
            print(f"warning: sweep summary not written ({type(exc).__name__}: {exc}); "
                  f"`python -m simsched.report {sweep_dir}` rebuilds it", file=sys.stderr)
        parent: ParentRun | None = state["parent"]
        if parent is not None:
            with Phase("MLflow: logging the summary to the sweep's parent run"):
                parent.finish(table, files + [sweep_dir / "multirun.yaml", sweep_dir / MARKER, sweep_dir / JOBS],
                              status)
        done = 0 if table is None else len(table)
        bad = 0 if table is None or table.empty else int((table["status"] != "ok").sum())
        untracked = 0 if table is None or "tracking" not in table else \
            int(table["tracking"].astype(str).str.startswith(("failed", "pending")).sum())
        print(f"sweep {ctx.sweep_name}: {done} job(s), {bad} not ok, {time.time() - state['t0']:.1f} s; "
              f"results in {sweep_dir}" + (f"; MLflow parent run {parent.run_id}" if parent else ""), file=sys.stderr)
        problems = []
        if table is None:
            problems.append("no summary")
        if bad:
            problems.append(f"{bad} job(s) failed or did not finish: `python -m simsched.resume {sweep_dir}` reruns them")
        if untracked:
            problems.append(f"{untracked} job(s) not logged to MLflow: `python -m simsched.track {sweep_dir}` logs them")
        for p in problems:
            print(f"sweep {ctx.sweep_name}: {p}", file=sys.stderr)
        sys.stderr.flush()
        return "; ".join(problems)


class SweepInterrupt:
    """The SIGINT and SIGTERM handler while a sweep runs: Ctrl-C's usual path (KeyboardInterrupt:
    summary, parent run closed as KILLED), for SIGTERM too. It remembers the signal, because
    Python prints and drops an exception raised inside a finalizer (SQLAlchemy's weakref
    callbacks run during MLflow logging): the launcher checks ``pending`` after each job."""

    def __init__(self) -> None:
        self.pending = False
        self.previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: Any) -> None:
        self.pending = True
        raise KeyboardInterrupt

    def install(self) -> "SweepInterrupt | None":
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self)
        except (ValueError, OSError):
            self.restore()
            return None
        return self

    def restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
        self.previous = {}


def interrupt_pending() -> bool:
    """Whether a sweep's SIGINT or SIGTERM arrived (see ``SweepInterrupt``)."""
    return bool(getattr(signal.getsignal(signal.SIGINT), "pending", False))


@dataclass
class ParentRun:
    """The sweep's MLflow parent run (client API: nothing process-global)."""

    run_id: str
    uri: str
    experiment: str
    repeat: int

    @staticmethod
    def start(config: DictConfig, ctx: SweepContext, overrides: list[str],
              earlier: SweepContext | None = None) -> tuple["ParentRun | None", str | None]:
        """The parent run (a new one, or the interrupted sweep's when resuming), or why not."""
        tracking = config.get("tracking")
        if tracking is None or "uri" not in tracking or "experiment" not in tracking:
            return None, None
        from simsched.config import build
        from simsched.tracking import TrackingError, open_client

        try:
            tracker = build(tracking, "tracking")
        except Exception as exc:  # noqa: BLE001 - the jobs will report the bad tracking config
            return None, str(exc)
        uri = absolute_uri(tracker.resolved_uri(), Path(str(config.hydra.runtime.cwd)))
        try:
            client = open_client(uri)
            if earlier is not None and earlier.parent_run_id and earlier.tracking_uri == uri:
                parent = ParentRun(earlier.parent_run_id, uri, tracker.experiment, earlier.repeat)
                parent.reopen(client)
                return parent, None
            return ParentRun.create(client, uri, tracker.experiment, ctx, overrides,
                                     _signature(config, overrides)), None
        except TrackingError as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - the sweep runs without a parent run
            return None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"

    @staticmethod
    def create(client: Any, uri: str, experiment: str, ctx: SweepContext, overrides: list[str],
               signature: str | None) -> "ParentRun":
        """A new parent run; ``signature`` (same settings = same signature) tags repeats."""
        from mlflow.entities import Param

        from simsched.tracking import base_tags, experiment_id, retry_locked

        exp_id = experiment_id(client, uri, experiment)
        runs = [] if signature is None else retry_locked(lambda: client.search_runs(
            [exp_id], f"tags.`simsched.sweep_signature` = '{signature}'", order_by=["attributes.start_time ASC"]))
        tags = base_tags(ctx.git_commit) | {
            "simsched.sweep": ctx.sweep_name, "simsched.sweep_dir": ctx.sweep_dir, "simsched.sweep_id": ctx.sweep_id,
            "simsched.kind": "sweep", "simsched.repeat": str(len(runs)), "simsched.jobs": str(ctx.total_jobs or ""),
            "mlflow.runName": f"{ctx.sweep_name} {Path(ctx.sweep_dir).name}"}
        if signature is not None:
            tags["simsched.sweep_signature"] = signature
        if runs:
            tags["simsched.repeat_of"] = runs[0].info.run_id
            print(f"note: this sweep repeats {len(runs)} earlier run(s) with the same settings "
                  f"(first: MLflow run {runs[0].info.run_id}); its runs are tagged "
                  f"simsched.repeat={len(runs)}", file=sys.stderr)
        run = retry_locked(lambda: client.create_run(exp_id, tags=tags))
        params = [Param("sweep.overrides", " ".join(overrides)[:6000]), Param("sweep.jobs", str(ctx.total_jobs))]
        retry_locked(lambda: client.log_batch(run.info.run_id, params=params))
        return ParentRun(run.info.run_id, uri, experiment, len(runs))

    def reopen(self, client: Any) -> None:
        """Resuming: the parent runs again, and children left RUNNING by the interrupted sweep
        (killed while logging) are closed as KILLED; the resumed jobs log new ones."""
        from simsched.tracking import retry_locked

        retry_locked(lambda: client.update_run(self.run_id, status="RUNNING"))
        run = client.get_run(self.run_id)
        stale = retry_locked(lambda: client.search_runs(
            [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{self.run_id}' and attributes.status = 'RUNNING'",
            max_results=5000))
        for child in stale:
            retry_locked(lambda: client.set_terminated(child.info.run_id, "KILLED"))

    def finish(self, table: Any, files: list[Path], status: str | None = None) -> None:
        from simsched.tracking import TrackingError, open_client, retry_locked

        try:
            from mlflow.entities import Metric

            client = open_client(self.uri)
            now = int(time.time() * 1000)
            n = 0 if table is None else len(table)
            bad = 0 if table is None or table.empty else int((table["status"] != "ok").sum())
            failed = 0 if table is None or table.empty else int((table["status"] == "failed").sum())
            untracked = 0 if table is None or "tracking" not in table else \
                int(table["tracking"].astype(str).str.startswith(("failed", "pending")).sum())
            metrics = [Metric("jobs", n, now, 0), Metric("jobs_failed", failed, now, 0),
                       Metric("jobs_ok", n - bad, now, 0), Metric("jobs_incomplete", bad - failed, now, 0),
                       Metric("jobs_not_tracked", untracked, now, 0)]
            retry_locked(lambda: client.log_batch(self.run_id, metrics=metrics))
            for path in files:
                if path.is_file():
                    client.log_artifact(self.run_id, str(path))
                elif path.is_dir():
                    client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            status = status or ("FAILED" if n and bad == n else "FINISHED")
            retry_locked(lambda: client.set_terminated(self.run_id, status))
        except (TrackingError, Exception) as exc:  # noqa: BLE001 - the summary is on disk
            print(f"warning: MLflow parent run not completed ({type(exc).__name__}: "
                  f"{' '.join(str(exc).split())[:300]})", file=sys.stderr)


def _signature(config: DictConfig, overrides: list[str]) -> str:
    """Same sweep settings = same signature: the composed base config (without Hydra's own
    node and tracking) and the sweep's overrides, launcher settings excluded."""
    base = OmegaConf.to_container(config, resolve=False)
    for key in ("hydra", "tracking"):
        base.pop(key, None)
    shown = sorted(o for o in overrides if not o.lstrip("+~").startswith("hydra"))
    text = json.dumps({"base": base, "overrides": shown}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
