"""Experiment tracking. MLflow is imported only when a tracker is used, and a tracking store that
cannot be used costs a line, never the run's results (they are on disk before tracking starts).

Failing fast: before MLflow is imported, ``preflight`` checks what can be checked in
milliseconds (an http server that does not answer, an sqlite file in a folder that cannot be
written, a file that is not an sqlite database, a store that a read would have to create), so
those faults are one line instead of MLflow's minutes of retries. Readers (``open_client(...,
create=False)``) never create a store.

Concurrency: several processes may create the same new sqlite store at once (two sweeps started
together). Creating the client, which creates the store's tables, and creating an experiment are
serialised by a file lock beside the database (``mlflow.db.lock``); every later write is retried
while sqlite reports "database is locked".

What is logged for a run is a ``RunRecord``: plain data, so that it can be written into the run
folder (``tracking.json``) and logged later or by another process (``simsched.app.track``).
"""
from __future__ import annotations

import contextlib
import getpass
import logging
import os
import random
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from simsched.errors import SimschedError

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_FILE = "tracking.json"
SQLITE_HEADER = b"SQLite format 3\x00"


class TrackingError(SimschedError):
    """The tracking store cannot be used (one line: why)."""


@dataclass(frozen=True)
class RunRecord:
    """Everything one MLflow run holds, as plain data. ``artifacts`` are paths relative to the
    run folder (files or folders); ``metrics`` non-numeric values are dropped when logged."""

    uri: str
    experiment: str
    run_name: str | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    tags: dict[str, str]
    artifacts: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    status: str = "FINISHED"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "RunRecord":
        return RunRecord(**data)


@dataclass(frozen=True)
class NullTracker:
    """tracking=none."""

    def record(self, *args: Any, **kwargs: Any) -> RunRecord | None:
        return None

    def log_run(self, run_dir: Path, params: dict[str, Any], metrics: dict[str, Any],
                artifacts: list[Path], tags: dict[str, str] | None = None, *,
                parent_run_id: str | None = None, status: str = "FINISHED") -> str | None:
        return None


@dataclass(frozen=True)
class MlflowTracker:
    """Logs one MLflow run: params (the flattened config), metrics, small files and plots.

    ``uri`` defaults to an embedded sqlite store in the working directory; any MLflow tracking
    URI (a server) works the same way. ``MLFLOW_TRACKING_URI`` in the environment wins when
    ``uri`` is empty. ``log_tables``: also copy the per-request and per-batch tables (Parquet,
    tens of MB for a million requests) into the store; off by default, they stay in the run
    folder. ``background``: a single run (``python -m simsched``) hands its logging to a
    background process and returns at once; sweep jobs always log before they end.
    """

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "simsched"
    run_name: str | None = None
    log_tables: bool = False
    background: bool = True

    def resolved_uri(self) -> str:
        """The tracking URI in use (``MLFLOW_TRACKING_URI`` when ``uri`` is empty)."""
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")

    def record(self, run_dir: Path, params: dict[str, Any], metrics: dict[str, Any],
               artifacts: list[Path], tags: dict[str, str] | None = None, *,
               parent_run_id: str | None = None, status: str = "FINISHED") -> RunRecord:
        """What to log for a run folder (paths are stored relative to it)."""
        tags = dict(tags or {})
        name = self.run_name or tags.pop("mlflow.runName", None)
        rel = [_relative(Path(a), Path(run_dir)) for a in artifacts]
        return RunRecord(absolute_uri(self.resolved_uri(), Path.cwd()), self.experiment, name, params, metrics,
                         tags, rel, parent_run_id, status)

    def log_run(self, run_dir: Path, params: dict[str, Any], metrics: dict[str, Any],
                artifacts: list[Path], tags: dict[str, str] | None = None, *,
                parent_run_id: str | None = None, status: str = "FINISHED") -> str | None:
        """Log one run now; returns its run id, or None after a one-line warning."""
        record = self.record(run_dir, params, metrics, artifacts, tags, parent_run_id=parent_run_id, status=status)
        try:
            return log_record(record, Path(run_dir))
        except TrackingError as exc:
            log.warning("MLflow tracking failed (%s); results are on disk in %s", exc, run_dir)
            return None


def _relative(path: Path, run_dir: Path) -> str:
    """``path`` relative to the run folder, or absolute when it lies outside it."""
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


# --- the store ---------------------------------------------------------------------------------

def quiet_mlflow_env() -> None:
    """Bounded retries for an http server (MLflow's default retries for minutes), no telemetry."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def absolute_uri(uri: str, cwd: Path) -> str:
    """A tracking URI that means the same store from any working directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((cwd / uri[len("sqlite:///"):]).resolve())
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return "file://" + str((cwd / uri[len("file:"):]).resolve())
    if "://" not in uri and not uri.startswith("databricks"):
        return str((cwd / uri).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (None for other stores or :memory:)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _file_store_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if uri.startswith("file:"):
        return Path(uri[len("file:"):])
    if "://" not in uri and not uri.startswith("databricks"):
        return Path(uri)
    return None


def _writable_folder(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (or in its nearest existing ancestor), found by
    creating one (permission bits do not tell: root, read-only mounts)."""
    import tempfile

    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".simsched-probe-"):
            pass
    except OSError as exc:
        return f"folder {probe} is not writable ({exc.strerror or exc})"
    return None


def preflight(uri: str, *, write: bool = True, timeout_s: float = 3.0) -> str | None:
    """Why the store at ``uri`` cannot be used, found without importing MLflow, or None.
    ``write=False`` (a reader): the store must already exist; nothing is created."""
    problem = unreachable(uri, timeout_s)
    if problem:
        return problem
    db = sqlite_path(uri)
    if db is not None:
        if db.exists():
            if not db.is_file():
                return f"{db} is not a file"
            try:
                with open(db, "rb") as f:
                    head = f.read(len(SQLITE_HEADER))
            except OSError as exc:
                return f"cannot read {db} ({exc.strerror or exc})"
            if head and head != SQLITE_HEADER:
                return f"{db} is not an sqlite database"
            if write and not os.access(db, os.W_OK):
                return f"{db} is read-only"
            return _writable_folder(db.parent) if write else None   # sqlite writes its journal there
        if not write:
            return f"no MLflow store at {db}"
        return _writable_folder(db.parent)
    folder = _file_store_path(uri)
    if folder is not None:
        if not write:
            return None if folder.is_dir() else f"no MLflow store at {folder}"
        return _writable_folder(folder)
    return None


def unreachable(uri: str, timeout_s: float = 3.0) -> str | None:
    """Why an http(s) tracking server cannot be reached, or None (other stores: None)."""
    from urllib.parse import urlparse

    parts = urlparse(uri)
    if parts.scheme not in ("http", "https"):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"bad port in {uri}"
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot connect to {parts.hostname}:{port} ({exc.strerror or exc})"


@contextlib.contextmanager
def store_lock(uri: str, timeout_s: float = 300.0) -> Iterator[None]:
    """Hold the lock file beside a local store (``<db>.lock``): creating a store or an
    experiment is then one process at a time. No-op for servers."""
    db = sqlite_path(uri)
    path = Path(str(db) + ".lock") if db is not None else None
    if path is None:
        folder = _file_store_path(uri)
        path = Path(str(folder).rstrip("/") + ".lock") if folder is not None else None
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path), timeout=timeout_s):
            yield
    except Timeout:
        raise TrackingError(f"another process holds {path} for more than {timeout_s:.0f} s") from None


def open_client(uri: str, *, create: bool = True) -> Any:
    """An ``MlflowClient`` on a store that exists when this returns (created under the store
    lock when ``create``; a reader never creates one). Raises TrackingError with one line."""
    quiet_mlflow_env()
    problem = preflight(uri, write=create)
    if problem:
        raise TrackingError(problem)
    try:
        from mlflow.tracking import MlflowClient

        with store_lock(uri):
            client = MlflowClient(uri)   # opens the store, creating its tables if it is new
            if create:
                _write_ahead_log(sqlite_path(uri))
        return client
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow's many error types, as one line
        raise TrackingError(_one_line(exc)) from None


def _write_ahead_log(db: Path | None) -> None:
    """Switch an sqlite store to sqlite's write-ahead log (once: it is a property of the file):
    a commit costs one write instead of several, and readers do not wait for writers. Best
    effort: a store busy with another process keeps its mode until the next time."""
    if db is None:
        return
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(db, timeout=1)) as con:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass


def experiment_id(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created (once, under the store lock) if missing."""
    exp = retry_locked(lambda: client.get_experiment_by_name(name))
    if exp is not None:
        return exp.experiment_id
    with store_lock(uri):
        exp = retry_locked(lambda: client.get_experiment_by_name(name))
        return exp.experiment_id if exp is not None else retry_locked(lambda: client.create_experiment(name))


def retry_locked(call: Callable[[], T], attempts: int = 12) -> T:
    """Run ``call``, retrying with jittered backoff (at most ~15 s in all) while sqlite reports
    "database is locked" (several processes writing one embedded store). Each retried call is
    one transaction, so a retry cannot duplicate a run."""
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


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


# --- logging a run -----------------------------------------------------------------------------

def base_tags(commit: str | None = None) -> dict[str, str]:
    """The tags ``mlflow.start_run`` would add (user, source, git commit), computed without
    MLflow's git context (which costs ~75 ms a run)."""
    commit = git_commit() if commit is None else commit
    tags = {"mlflow.user": _user(), "mlflow.source.name": "simsched", "mlflow.source.type": "LOCAL",
            "git_commit": commit}
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def log_record(record: RunRecord, run_dir: Path, client: Any = None) -> str:
    """Log a run now (a handful of transactions: create, one batch per 100 params, files,
    terminate); returns the run id. Raises TrackingError with one line."""
    try:
        client = client or open_client(record.uri)
        exp_id = experiment_id(client, record.uri, record.experiment)
        from mlflow.entities import Metric, Param

        tags = dict(record.tags)
        if record.parent_run_id:
            tags["mlflow.parentRunId"] = record.parent_run_id
        run = retry_locked(lambda: client.create_run(exp_id, run_name=record.run_name, tags=tags))
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            params = [Param(k[:250], _param(v)) for k, v in record.params.items()]
            metrics = [Metric(k, float(v), now, 0) for k, v in record.metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
            # MLflow takes at most 100 params and 1000 entries per batch.
            p_chunks = [params[i:i + 100] for i in range(0, len(params), 100)]
            m_chunks = [metrics[i:i + 900] for i in range(0, len(metrics), 900)]
            for i in range(max(len(p_chunks), len(m_chunks))):
                bp = p_chunks[i] if i < len(p_chunks) else []
                bm = m_chunks[i] if i < len(m_chunks) else []
                retry_locked(lambda: client.log_batch(run_id, metrics=bm, params=bp))
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            repo = get_artifact_repository(run.info.artifact_uri)   # (the client would look the run up again)
            for rel in record.artifacts:
                path = Path(run_dir) / rel   # an absolute path (a file outside the folder) stays itself
                inside = not Path(rel).is_absolute()
                if path.is_file():
                    parent = Path(rel).parent.as_posix() if inside else "."
                    repo.log_artifact(str(path), None if parent == "." else parent)
                elif path.is_dir():
                    repo.log_artifacts(str(path), rel if inside else path.name)
        except Exception:
            with contextlib.suppress(Exception):
                retry_locked(lambda: client.set_terminated(run_id, "FAILED"))
            raise
        retry_locked(lambda: client.set_terminated(run_id, record.status))
        return run_id
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - tracking must never lose a run's results
        raise TrackingError(_one_line(exc)) from None


def git_commit() -> str:
    """The git commit of the simsched checkout, or "" when it is not a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return ""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _param(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
