"""Experiment tracking. MLflow is imported only when a tracker is used, and an unreachable
store costs a warning, never the run's results (they are on disk before tracking starts)."""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class NullTracker:
    """tracking=none."""

    def log_run(self, run_dir: Path, params: dict[str, Any], metrics: dict[str, Any],
                artifacts: list[Path], tags: dict[str, str] | None = None, *,
                parent_run_id: str | None = None, status: str = "FINISHED") -> str | None:
        return None


@dataclass(frozen=True)
class MlflowTracker:
    """Logs one MLflow run: params (the flattened config), metrics, files and plots.

    ``uri`` defaults to an embedded sqlite store in the working directory; any MLflow tracking
    URI (a server) works the same way. ``MLFLOW_TRACKING_URI`` in the environment wins when
    ``uri`` is empty.
    """

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "simsched"
    run_name: str | None = None

    def log_run(self, run_dir: Path, params: dict[str, Any], metrics: dict[str, Any],
                artifacts: list[Path], tags: dict[str, str] | None = None, *,
                parent_run_id: str | None = None, status: str = "FINISHED") -> str | None:
        """``parent_run_id`` nests the run under a sweep's parent run; ``status="FAILED"``
        records a job that failed (its error in the tags and artifacts)."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # Fail fast on an unreachable server instead of MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        uri = self.resolved_uri()
        problem = unreachable(uri)
        if problem:
            log.warning("MLflow tracking skipped: %s; results are on disk in %s", problem, run_dir)
            return None
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        try:
            from mlflow.tracking import MlflowClient
            from mlflow.tracking.context.registry import resolve_tags

            # The client API (not the fluent one) keeps no process-wide active run, so jobs that
            # share a process (Hydra's basic launcher) cannot nest by accident; each call is
            # retried while another process holds the sqlite write lock.
            client = MlflowClient(uri)
            tags = resolve_tags(tags)   # user, source, git: what mlflow.start_run would add
            exp = retry_locked(lambda: client.get_experiment_by_name(self.experiment))
            exp_id = exp.experiment_id if exp else retry_locked(lambda: _create_experiment(client, self.experiment))
            run = retry_locked(lambda: client.create_run(exp_id, run_name=self.run_name, tags=tags))
            run_id = run.info.run_id
            try:
                from mlflow.entities import Metric, Param

                items = [Param(k[:250], _param(v)) for k, v in params.items()]
                for i in range(0, len(items), 100):
                    retry_locked(lambda: client.log_batch(run_id, params=items[i:i + 100]))
                now = int(time.time() * 1000)
                numeric = [Metric(k, float(v), now, 0) for k, v in metrics.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
                for i in range(0, len(numeric), 500):
                    retry_locked(lambda: client.log_batch(run_id, metrics=numeric[i:i + 500]))
                for path in artifacts:
                    if path.is_file():
                        client.log_artifact(run_id, str(path))
                    elif path.is_dir():
                        client.log_artifacts(run_id, str(path), artifact_path=path.name)
            except Exception:
                retry_locked(lambda: client.set_terminated(run_id, "FAILED"))
                raise
            retry_locked(lambda: client.set_terminated(run_id, status))
            return run_id
        except Exception as exc:  # noqa: BLE001 - tracking must never lose a run's results
            log.warning("MLflow tracking failed (%s: %s); results are on disk in %s",
                        type(exc).__name__, " ".join(str(exc).split())[:300], run_dir)
            return None

    def resolved_uri(self) -> str:
        """The tracking URI in use (``MLFLOW_TRACKING_URI`` when ``uri`` is empty)."""
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


def retry_locked(call: Callable[[], T], attempts: int = 12) -> T:
    """Run ``call``, retrying with jittered backoff while sqlite reports "database is locked"
    (several processes writing one embedded store). Each retried call is one transaction, so
    a retry cannot duplicate a run."""
    jitter = random.SystemRandom()   # timing only; no global RNG state is touched
    delay = 0.05
    for i in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - only the lock error is retried
            if "locked" not in str(exc) or i == attempts - 1:
                raise
            time.sleep(delay * (0.5 + jitter.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def _create_experiment(client: Any, name: str) -> str:
    """Create an experiment; if another process created it first, use that one."""
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - lost a creation race: look it up
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit() -> str:
    """The git commit of the simsched checkout, or "" when it is not a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def unreachable(uri: str, timeout_s: float = 3.0) -> str | None:
    """Why an http(s) tracking server cannot be reached, or None (other stores: None)."""
    from urllib.parse import urlparse
    import socket

    parts = urlparse(uri)
    if parts.scheme not in ("http", "https"):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot connect to {parts.hostname}:{port} ({exc.strerror or exc})"


def _param(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
