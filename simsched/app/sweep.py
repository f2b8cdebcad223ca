"""Sweeps (Hydra multiruns): the job function, and the callback that makes a multirun one MLflow
parent run with a child run per job, a progress display and an aggregated report.

How the pieces meet. ``SweepCallback.on_multirun_start`` runs in the launching process before
any job: it creates the tracking store and the parent run, and writes ``sweep.json`` into the
sweep folder (parent run id, absolute tracking URI, experiment). Each job (``task``, in whatever
process or machine the launcher uses) finds that file above its output folder and logs its run
as a child. ``on_multirun_end`` builds the summary from the job folders (not from MLflow, so it
is complete even when tracking failed) and logs it to the parent.

A job that raises does not stop the sweep: it writes ``error.json``, logs a FAILED child run
carrying the error, and returns. Rerunning a sweep with the same settings makes a new parent
run tagged ``simsched.repeat = N`` (N earlier runs of the same sweep) and
``simsched.repeat_of = <first parent run id>``; its children carry the same repeat tag.
"""
from __future__ import annotations

import atexit
import copy
import hashlib
import json
import logging
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

try:  # Hydra is a dependency; the import is only guarded for readers of this module's API
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]

log = logging.getLogger(__name__)

MARKER = "sweep.json"


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

    def write(self) -> None:
        Path(self.sweep_dir, MARKER).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @staticmethod
    def find(*folders: Path) -> "SweepContext | None":
        """The context of the first folder (or an ancestor of it) holding ``sweep.json``."""
        for folder in folders:
            for d in [folder, *folder.parents][:6]:
                path = d / MARKER
                if path.is_file():
                    try:
                        return SweepContext(**json.loads(path.read_text()))
                    except (ValueError, TypeError):
                        return None
        return None


def register_sweeps(sweeps_dir: Path | None = None) -> None:
    """Make each ``sweeps/NAME.yaml`` the option ``NAME`` of the config group ``sweep`` (package
    ``_global_``), so ``+sweep=NAME`` selects it. Idempotent."""
    from hydra.core.config_store import ConfigStore

    from simsched.app.paths import sweeps_dir as default_sweeps_dir

    cs = ConfigStore.instance()
    for path in sorted(Path(sweeps_dir or default_sweeps_dir()).glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


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
            return run(cfg, out_dir).get("goodput_rps")
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
    return run_job(cfg, out_dir, ctx, list(hc.overrides.task), int(hc.job.num))


def run_job(cfg: DictConfig, out_dir: Path, ctx: SweepContext | None, overrides: list[str],
            num: int) -> float | None:
    """Run one sweep job; any exception becomes ``error.json`` plus a FAILED child run."""
    from simsched.run import run

    parent = ctx.parent_run_id if ctx else None
    tags = {"simsched.job": str(num)}
    try:
        cfg = _tracking_for(cfg, ctx)
        tags = job_tags(cfg, ctx, overrides, num)
        return run(cfg, out_dir, tags=tags, parent_run_id=parent).get("goodput_rps")
    except Exception as exc:  # noqa: BLE001 - one failed job must not stop the sweep
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        out_dir.mkdir(parents=True, exist_ok=True)
        error_file = out_dir / "error.json"
        error_file.write_text(json.dumps({"job": num, "overrides": overrides, "error": message,
                                          "traceback": traceback.format_exc()}, indent=1) + "\n")
        print(f"error: job {num} ({' '.join(overrides)}) failed: {message}", file=sys.stderr)
        _log_failed(cfg, out_dir, [error_file], tags | {"error": message[:5000]}, parent)
        return None


def _tracking_for(cfg: DictConfig, ctx: SweepContext | None) -> DictConfig:
    """The job's config with the sweep's (absolute) tracking URI and experiment, so that every
    job writes to the parent's store whatever its working directory."""
    if ctx is None or ctx.tracking_uri is None or cfg.get("tracking") is None or "uri" not in cfg.tracking:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.tracking.uri = ctx.tracking_uri
    cfg.tracking.experiment = ctx.experiment
    return cfg


def job_tags(cfg: DictConfig, ctx: SweepContext | None, overrides: list[str], num: int) -> dict[str, str]:
    """Tags of a sweep job's run: its sweep, number, overrides and a readable run name."""
    from simsched.workloads.rates import arrival_rate

    shown = [o for o in overrides if not o.lstrip("+~").startswith(("hydra", "sweep="))]
    rate = arrival_rate(cfg)
    name = (f"{cfg.scheduler.get('name', '')} K={cfg.scheduler.get('k_bins', 1)} "
            f"λ={'' if rate != rate else f'{rate:g}'} G={cfg.gpus.get('count', '')} seed={cfg.seed}")
    tags = {"simsched.job": str(num), "simsched.overrides": " ".join(shown)[:5000],
            "simsched.config_hash": config_hash(cfg)}
    if cfg.get("tracking") is not None and cfg.tracking.get("run_name") is None:
        tags["mlflow.runName"] = name
    if ctx is not None:
        tags |= {"simsched.sweep": ctx.sweep_name, "simsched.sweep_dir": ctx.sweep_dir,
                 "simsched.repeat": str(ctx.repeat)}
    return tags


def config_hash(cfg: DictConfig) -> str:
    """A short hash of what determines a run's results (the config minus tracking and output)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ("tracking", "output", "hydra"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _log_failed(cfg: DictConfig, out_dir: Path, files: list[Path], tags: dict[str, str],
                parent: str | None) -> None:
    if cfg.get("tracking") is None:
        return
    from simsched.config import build
    from simsched.run import flat_params, run_tags

    try:
        try:
            tags = run_tags(cfg) | tags   # scheduler, K, λ, GPUs, seed: to find it in the UI
        except Exception:  # noqa: BLE001 - a config too broken for them still gets logged
            pass
        tracker = build(cfg.tracking, "tracking")
        hydra_dir = out_dir / ".hydra"
        tracker.log_run(out_dir, flat_params(cfg), {}, files + ([hydra_dir] if hydra_dir.is_dir() else []),
                        tags, parent_run_id=parent, status="FAILED")
    except Exception as exc:  # noqa: BLE001 - the error is on disk already
        log.warning("could not log the failed job to MLflow: %s", exc)


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

class SweepCallback(Callback):
    """Hydra callback (``hydra.callbacks.sweep`` in conf/config.yaml) for every multirun.

    ``progress``: print jobs done / total and an ETA while the sweep runs. ``report``: write
    the summary table and plots when it ends. Runtime state (the parent run, the progress
    thread) is not pickled: launchers ship callbacks to their workers.
    """

    def __init__(self, progress: bool = True, report: bool = True, poll_s: float = 1.0) -> None:
        self.progress = progress
        self.report = report
        self.poll_s = poll_s
        self._state: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"progress": self.progress, "report": self.report, "poll_s": self.poll_s, "_state": {}}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_absolute():
            sweep_dir = Path(str(config.hydra.runtime.cwd)) / sweep_dir
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = sweep_overrides(config)
        basic = str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper")
        try:
            total = count_jobs(overrides) if basic else None
        except Exception:  # noqa: BLE001 - the sweeper reports bad overrides itself
            total = None
        name = str(config.hydra.runtime.choices.get("sweep") or "multirun")
        ctx = SweepContext(str(sweep_dir), name, total)
        parent = _ParentRun.start(config, ctx, overrides)
        if parent is not None:
            ctx = SweepContext(str(sweep_dir), name, total, parent.run_id, parent.uri, parent.experiment,
                               parent.repeat)
        ctx.write()
        monitor = None
        if self.progress:
            from simsched.progress import SweepProgress

            monitor = SweepProgress(sweep_dir, total, self.poll_s, label=f"sweep {name}")
            monitor.start()
        self._state = {"ctx": ctx, "parent": parent, "monitor": monitor, "t0": time.time()}
        # A sweep that stops early (Ctrl-C, a launcher error) still gets its summary, and its
        # parent run is closed as KILLED rather than left RUNNING.
        atexit.register(self._interrupted)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._interrupted)
        self._finish()

    def _interrupted(self) -> None:
        if self._state:
            print("sweep stopped before its end: summarising the jobs that finished", file=sys.stderr)
            self._finish(status="KILLED")

    def _finish(self, status: str | None = None) -> None:
        state, self._state = self._state, {}
        if not state:
            return
        ctx: SweepContext = state["ctx"]
        if state["monitor"] is not None:
            state["monitor"].stop()
        sweep_dir = Path(ctx.sweep_dir)
        files: list[Path] = []
        table = None
        try:
            from simsched.app import report

            table = report.collect(sweep_dir)
            if self.report:
                files = report.write_report(table, sweep_dir, sweep_dir, print_table=True)
        except Exception as exc:  # noqa: BLE001 - the job folders are intact; close the parent run
            print(f"warning: sweep summary not written ({type(exc).__name__}: {exc}); "
                  f"`python -m simsched.report {sweep_dir}` rebuilds it", file=sys.stderr)
        parent: _ParentRun | None = state["parent"]
        if parent is not None:
            parent.finish(table, files + [sweep_dir / "multirun.yaml", sweep_dir / MARKER], status)
        failed = 0 if table is None or table.empty else int((table["status"] != "ok").sum())
        done = 0 if table is None else len(table)
        print(f"sweep {ctx.sweep_name}: {done} job(s), {failed} failed, "
              f"{time.time() - state['t0']:.1f} s; results in {sweep_dir}"
              + (f"; MLflow parent run {parent.run_id}" if parent else ""), file=sys.stderr)


@dataclass
class _ParentRun:
    """The sweep's MLflow parent run (client API: nothing process-global)."""

    run_id: str
    uri: str
    experiment: str
    repeat: int

    @staticmethod
    def start(config: DictConfig, ctx: SweepContext, overrides: list[str]) -> "_ParentRun | None":
        tracking = config.get("tracking")
        if tracking is None or "uri" not in tracking or "experiment" not in tracking:
            return None
        from simsched.config import build
        from simsched.tracking import retry_locked, unreachable, _create_experiment, git_commit

        try:
            tracker = build(tracking, "tracking")
        except Exception:  # noqa: BLE001 - the jobs will report the bad tracking config
            return None
        uri = absolute_uri(tracker.resolved_uri(), Path(str(config.hydra.runtime.cwd)))
        problem = unreachable(uri)
        if problem:
            log.warning("MLflow tracking skipped for the sweep: %s", problem)
            return None
        signature = _signature(config, overrides)
        try:
            from mlflow.tracking import MlflowClient
            from mlflow.tracking.context.registry import resolve_tags

            client = MlflowClient(uri)   # creates the store (and its tables) before any job
            exp = retry_locked(lambda: client.get_experiment_by_name(tracker.experiment))
            exp_id = exp.experiment_id if exp else retry_locked(lambda: _create_experiment(client, tracker.experiment))
            earlier = retry_locked(lambda: client.search_runs(
                [exp_id], f"tags.`simsched.sweep_signature` = '{signature}'", order_by=["attributes.start_time ASC"]))
            tags = {"simsched.sweep": ctx.sweep_name, "simsched.sweep_dir": ctx.sweep_dir,
                    "simsched.sweep_signature": signature, "simsched.kind": "sweep",
                    "simsched.repeat": str(len(earlier)), "simsched.jobs": str(ctx.total_jobs or ""),
                    "git_commit": git_commit(),
                    "mlflow.runName": f"{ctx.sweep_name} {Path(ctx.sweep_dir).name}"}
            if earlier:
                tags["simsched.repeat_of"] = earlier[0].info.run_id
                print(f"note: this sweep repeats {len(earlier)} earlier run(s) with the same settings "
                      f"(first: MLflow run {earlier[0].info.run_id}); its runs are tagged "
                      f"simsched.repeat={len(earlier)}", file=sys.stderr)
            run = retry_locked(lambda: client.create_run(exp_id, tags=resolve_tags(tags)))
            from mlflow.entities import Param

            params = [Param("sweep.overrides", " ".join(overrides)[:6000]),
                      Param("sweep.jobs", str(ctx.total_jobs))]
            retry_locked(lambda: client.log_batch(run.info.run_id, params=params))
            return _ParentRun(run.info.run_id, uri, tracker.experiment, len(earlier))
        except Exception as exc:  # noqa: BLE001 - the sweep runs without a parent run
            log.warning("MLflow parent run not created (%s: %s); the jobs still write their folders",
                        type(exc).__name__, " ".join(str(exc).split())[:300])
            return None

    def finish(self, table: Any, files: list[Path], status: str | None = None) -> None:
        from simsched.tracking import retry_locked

        try:
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.uri)
            now = int(time.time() * 1000)
            n = 0 if table is None else len(table)
            failed = 0 if table is None or table.empty else int((table["status"] != "ok").sum())
            metrics = [Metric("jobs", n, now, 0), Metric("jobs_failed", failed, now, 0),
                       Metric("jobs_ok", n - failed, now, 0)]
            retry_locked(lambda: client.log_batch(self.run_id, metrics=metrics))
            for path in files:
                if path.is_file():
                    client.log_artifact(self.run_id, str(path))
                elif path.is_dir():
                    client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            status = status or ("FAILED" if n and failed == n else "FINISHED")
            retry_locked(lambda: client.set_terminated(self.run_id, status))
        except Exception as exc:  # noqa: BLE001 - the summary is on disk
            log.warning("MLflow parent run not completed (%s: %s)", type(exc).__name__,
                        " ".join(str(exc).split())[:300])


def absolute_uri(uri: str, cwd: Path) -> str:
    """A tracking URI that means the same store from any working directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((cwd / uri[len("sqlite:///"):]).resolve())
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return "file://" + str((cwd / uri[len("file:"):]).resolve())
    if "://" not in uri and not uri.startswith("databricks"):
        return str((cwd / uri).resolve())
    return uri


def _signature(config: DictConfig, overrides: list[str]) -> str:
    """Same sweep settings = same signature: the composed base config (without Hydra's own
    node and tracking) and the sweep's overrides, launcher settings excluded."""
    base = OmegaConf.to_container(config, resolve=False)
    for key in ("hydra", "tracking"):
        base.pop(key, None)
    shown = sorted(o for o in overrides if not o.lstrip("+~").startswith("hydra"))
    text = json.dumps({"base": base, "overrides": shown}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
