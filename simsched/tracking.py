"""Experiment tracking. MLflow is imported only when a tracker is used, and an unreachable
store costs a warning, never the run's results (they are on disk before tracking starts)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NullTracker:
    """tracking=none."""

    def log_run(self, run_dir: Path, params: dict[str, Any], metrics: dict[str, Any],
                artifacts: list[Path], tags: dict[str, str] | None = None) -> str | None:
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
                artifacts: list[Path], tags: dict[str, str] | None = None) -> str | None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # Fail fast on an unreachable server instead of MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        uri = self.uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
        problem = unreachable(uri)
        if problem:
            log.warning("MLflow tracking skipped: %s; results are on disk in %s", problem, run_dir)
            return None
        try:
            import mlflow

            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(self.experiment)
            with mlflow.start_run(run_name=self.run_name, tags=tags or {}) as run:
                items = [(k[:250], _param(v)) for k, v in params.items()]
                for i in range(0, len(items), 100):
                    mlflow.log_params(dict(items[i:i + 100]))
                numeric = {k: float(v) for k, v in metrics.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
                mlflow.log_metrics(numeric)
                for path in artifacts:
                    if path.is_file():
                        mlflow.log_artifact(str(path))
                    elif path.is_dir():
                        mlflow.log_artifacts(str(path), artifact_path=path.name)
                return run.info.run_id
        except Exception as exc:  # noqa: BLE001 - tracking must never lose a run's results
            log.warning("MLflow tracking failed (%s: %s); results are on disk in %s",
                        type(exc).__name__, " ".join(str(exc).split())[:300], run_dir)
            return None


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
