"""The run-to-completion engine: G GPUs serving request-level batches from the scheduler's queues.

``simulate`` prepares the run (predictions, bins, admission), runs the event loop
(``rtc_loop.serve``: event order and bookkeeping; compiled with numba for large runs, see
``simsched.jit``) and turns its per-batch records into columnar results, per request in the
workload's row order, filled in vectorised from the batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from simsched.batchers import ControllerParams, sla_state
from simsched.cluster import Gpus
from simsched.engines.rtc_loop import serve
from simsched.errors import ConfigError, SimschedError
from simsched.jit import kernel, with_globals
from simsched.latency import LatencyForm, LatencyModel
from simsched.scheduler import Scheduler
from simsched.workloads.requests import RequestTable, check_request_counts

# Runs from this many requests on use the compiled loop. Importing numba and loading the cached
# loop cost ~0.65 s per process (2-core machine, idle); the Python loop serves ~60k requests/s
# at light load (batches of ~2) and ~300k at offered load 0.8, so compiling pays from ~60k
# requests at light load and from ~250k at 0.8: this splits the difference. The count is per
# process (``jit.kernel(amortize=True)``): a sweep's process switches to the compiled loop once its
# jobs together have run that many requests.
COMPILED_FROM_REQUESTS = 100_000

# Rows per slice where a whole per-request column is computed a slice at a time (metrics,
# checks): 8 MB of float64, so a 10M-request run never holds a temporary of a whole column.
ROWS = 1 << 16

COMPLETED, REJECTED, UNFINISHED, NOT_ARRIVED = 0, 1, 2, 3
STATUS_NAMES = ("completed", "rejected", "unfinished", "not_arrived")
REASONS = ("", "exceeds_kv_capacity", "queued_at_horizon", "in_flight_at_horizon", "after_horizon")


@dataclass
class SimResult:
    """Columnar results. Per-request arrays are in the workload's row order.

    A request's start, first-token and finish times, TBT and GPU are its batch's, so they are
    gathered from ``batches`` through ``batch`` when read (``start``, ``first_token``,
    ``finish``, ``tbt``, ``gpu``; ``column(name, rows)`` for a slice): each read is a new
    array, and a 10M-request run does not hold five more per-request columns."""

    requests: RequestTable
    predicted: np.ndarray
    bin: np.ndarray             # int8 (int32 when K > 127)
    status: np.ndarray          # int8, index into STATUS_NAMES
    reason: np.ndarray          # int8, index into REASONS
    batch: np.ndarray           # int32, -1 where never dispatched
    batches: dict[str, np.ndarray]
    cut_points: np.ndarray
    num_gpus: int
    kv_capacity_tokens: int
    end_time: float
    own_finish: np.ndarray | None = None   # release=own_length: each request's own last token

    COLUMNS = ("start", "first_token", "finish", "tbt", "gpu")

    def column(self, name: str, rows: slice = slice(None)) -> np.ndarray:
        """A per-request column (one of ``COLUMNS``) for ``rows``: NaN (gpu: -1) where never
        dispatched, and ``finish`` NaN unless completed. Gathered row by row from the batch
        columns, so a slice costs memory for the slice only."""
        b = self.batches
        if name == "finish" and self.own_finish is not None:
            return self.own_finish[rows]
        if name not in self.COLUMNS:
            raise KeyError(name)
        idx = self.batch[rows]
        if name == "first_token":
            out = _gather(b["start"], idx)
            out += _gather(b["first_token_s"], idx)
        else:
            out = _gather(b["end" if name == "finish" else name], idx)
        missing = idx < 0
        if name == "finish":
            missing |= ~_gather(b["completed"], idx)
        out[missing] = -1 if name == "gpu" else np.nan
        return out

    @property
    def start(self) -> np.ndarray:       # float64
        return self.column("start")

    @property
    def first_token(self) -> np.ndarray:  # float64
        return self.column("first_token")

    @property
    def finish(self) -> np.ndarray:      # float64
        return self.column("finish")

    @property
    def tbt(self) -> np.ndarray:         # float64
        return self.column("tbt")

    @property
    def gpu(self) -> np.ndarray:         # int32
        return self.column("gpu")

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.status, minlength=len(STATUS_NAMES))
        return {name: int(c[i]) for i, name in enumerate(STATUS_NAMES)}


def row_slices(n: int, size: int = ROWS) -> Iterator[slice]:
    """Consecutive slices of ``size`` rows (the last one shorter) that cover rows 0 .. n-1."""
    return (slice(lo, min(lo + size, n)) for lo in range(0, n, size))


def _gather(per_batch: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``per_batch[idx]`` as a new array; entries where ``idx`` is -1 (never dispatched) hold
    the last batch's value, for the caller to overwrite. (Indexing: twice as fast as ``take``.)"""
    if len(per_batch) == 0:
        return np.zeros(len(idx), dtype=per_batch.dtype)
    return per_batch[idx]


def simulate(
    requests: RequestTable,
    scheduler: Scheduler,
    latency: LatencyModel,
    gpus: Gpus,
    predictor: Any,
    rng: np.random.Generator,
    horizon_s: float | None = None,
    release: str = "batch_end",
) -> SimResult:
    """Run one simulation. ``release='own_length'`` completes each request at its own last
    token instead of at batch end (its batch still holds the GPU until the longest finishes)."""
    if release not in ("batch_end", "own_length"):
        raise ConfigError("engine.release", "unknown value", release, "batch_end, own_length")
    pred_rng, bin_rng = rng.spawn(2)
    n = len(requests)
    if n >= 2**31:
        raise SimschedError(f"a run holds at most 2^31 - 1 requests (got {n})")
    arrival, prompt, output = requests.arrival, requests.prompt, requests.output
    predicted = predictor.predict(output, pred_rng)
    cuts = scheduler.cut_points(predicted)
    k_bins = int(scheduler.k_bins)
    bins = predictor.perturb_bins(scheduler.assign_bins(predicted, cuts), k_bins, bin_rng)
    # int8 bin codes where K allows: one byte per request, held to the end of the run.
    bins = np.ascontiguousarray(bins, dtype=np.int8 if k_bins <= 127 else np.int32)

    eta = int(gpus.kv_capacity_tokens)
    fits = prompt + output <= eta
    if n and not np.any(fits):
        need = prompt + output
        raise ConfigError("gpus.kv_capacity_tokens", f"is smaller than every request "
                          f"(the smallest needs {int(need.min())} tokens)", eta)
    arrived_mask = np.ones(n, dtype=bool) if horizon_s is None else arrival <= horizon_s
    admitted = fits & arrived_mask

    form = latency.kernel_form() if hasattr(latency, "kernel_form") else None
    plugin = not hasattr(scheduler.batcher, "params")
    swaps: dict[str, Any] = {}
    if form is None:    # a model with batch_time only (a test double): the Python loop calls it
        swaps["form_time"] = lambda kind, c, b, L, P: latency.batch_time(b, L, P)
        form = LatencyForm(-1, np.zeros(0))
    if plugin:
        params = _plugin_batcher(scheduler.batcher, eta, k_bins, swaps)
    else:
        params = scheduler.batcher.params(eta)
    # A test double or a plug-in batcher swaps Python callables in: the Python loop runs them.
    loop = with_globals(serve, **swaps) if swaps else kernel(serve, n, min_requests=COMPILED_FROM_REQUESTS,
                                                              amortize=True)
    fast = loop is not serve and not swaps
    columns = (arrival, prompt, output, np.ascontiguousarray(predicted, dtype=np.int64),
               bins, admitted)
    if not fast:
        columns = tuple(c.tolist() for c in columns)   # Python reads list items faster than array items
    nb, batch, in_flight, t_end, records = loop(
        *columns, k_bins, int(gpus.count), np.inf if horizon_s is None else float(horizon_s),
        scheduler.selection_rule, params, sla_state(k_bins, params), int(form.kind),
        np.ascontiguousarray(form.coefs, dtype=np.float64))
    batches = _batch_columns(int(nb), records, in_flight)
    res = _per_request(requests, predicted, bins, cuts, batch, batches, fits, arrived_mask, latency, release,
                       gpus, t_end if horizon_s is None else float(horizon_s))
    check_conservation(res)
    return res


def _plugin_batcher(batcher: Any, eta: int, k_bins: int, swaps: dict[str, Any]) -> ControllerParams:
    """A batcher from an installed plug-in (README 'Your own components'): it has no
    ``params`` for the compiled loop, so the Python loop calls one ``controller(eta)`` per
    queue through ``size(waiting, mu, sigma)`` and ``observe(b, tbt)``; a size outside
    [1, waiting] is clipped into it. Returns the loop's parameters that describe it."""
    ctrls = [batcher.controller(eta) for _ in range(k_bins)]

    def size(p: Any, waiting: Any, mu: Any, sigma: Any, s: Any, k: Any) -> int:
        return max(1, min(int(ctrls[k].size(int(waiting), float(mu), float(sigma))), int(waiting)))

    swaps["batch_size"] = size
    swaps["sla_observe"] = lambda s, k, b, tau: ctrls[k].observe(int(b), float(tau))
    b_max = int(batcher.max_batch)
    return ControllerParams(fixed_size=0, min_batch=int(getattr(ctrls[0], "min_batch", 1)),
                            memory_aware=bool(getattr(ctrls[0], "needs_memory", False)), sla_aware=True,
                            b_min=1, b_max=b_max, d_sla=0.0, eps=0.0, alpha=1, delta=1, window=1,
                            eta=float(eta), theta=0.0)


def _batch_columns(nb: int, records: tuple, in_flight: np.ndarray) -> dict[str, np.ndarray]:
    """The batches (one row per batch, in dispatch order) from the loop's records. The table's
    two derived columns, ``batch_id`` (the row number) and ``kv_tokens`` (prompt + output
    tokens), are not held: ``batch_table`` adds them where they are written."""
    gpu, bin_, start, end, size, longest, prompt, output, tbt, ttft = (r[:nb] for r in records)
    completed = np.ones(nb, dtype=bool)
    completed[in_flight] = False
    return {
        "gpu": gpu,
        "bin": bin_,
        "start": start,
        "end": end,
        "size": size,
        "max_output": longest,
        "prompt_tokens": prompt,
        "output_tokens": output,
        "tbt": tbt,
        "first_token_s": ttft,
        "completed": completed,
    }


def batch_table(batches: dict[str, np.ndarray], rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """The batches table's columns for ``rows``: the held columns with ``batch_id`` first and
    ``kv_tokens`` (the batch's KV footprint) last; ``size`` and ``max_output``, held as int32,
    as int64 (the table's types do not depend on how the run holds them)."""
    lo, hi, _ = rows.indices(len(batches["size"]))
    cols = {"batch_id": np.arange(lo, hi, dtype=np.int64)}
    cols.update((name, x[rows].astype(np.int64) if name in ("size", "max_output") else x[rows])
                for name, x in batches.items())
    cols["kv_tokens"] = cols["prompt_tokens"] + cols["output_tokens"]
    return cols


def _per_request(req: RequestTable, predicted: np.ndarray, bins: np.ndarray, cuts: np.ndarray,
                 batch: np.ndarray, batches: dict[str, np.ndarray], fits: np.ndarray, arrived_mask: np.ndarray,
                 latency: LatencyModel, release: str, gpus: Gpus, end_time: float) -> SimResult:
    """Every request's status, and with ``release='own_length'`` its own finish time."""
    n = len(req)
    served = batch >= 0
    ok = served.copy()
    ok[served] = batches["completed"][batch[served]]
    own_finish = None
    if release == "own_length":
        own_finish = np.full(n, np.nan)
        ob = batch[ok]
        own_finish[ok] = batches["start"][ob] + latency.batch_time(
            batches["size"][ob].astype(np.int64), req.output[ok], batches["prompt_tokens"][ob].astype(float))
    status = np.full(n, UNFINISHED, dtype=np.int8)
    reason = np.full(n, REASONS.index("queued_at_horizon"), dtype=np.int8)
    status[ok] = COMPLETED
    reason[ok] = 0
    reason[served & ~ok] = REASONS.index("in_flight_at_horizon")
    rejected = ~fits & arrived_mask
    status[rejected] = REJECTED
    reason[rejected] = REASONS.index("exceeds_kv_capacity")
    status[~arrived_mask] = NOT_ARRIVED
    reason[~arrived_mask] = REASONS.index("after_horizon")
    return SimResult(req, predicted, bins, status, reason, batch, batches, np.asarray(cuts, dtype=float),
                     int(gpus.count), int(gpus.kv_capacity_tokens), float(end_time), own_finish)


def check_conservation(res: SimResult) -> None:
    """Every request is completed, rejected (with reason), unfinished or not yet arrived, and the
    times of completed ones are ordered. A failure here is a simulator bug, never user error."""
    check_request_counts(res.counts(), len(res.requests))
    for rows in row_slices(len(res.requests)):
        done = res.status[rows] == COMPLETED
        start, finish = res.column("start", rows)[done], res.column("finish", rows)[done]
        if np.any(start < res.requests.arrival[rows][done]) or np.any(finish < start):
            raise AssertionError("a completed request started before it arrived or finished before it started")
    if np.any(res.reason[res.status == REJECTED] == 0):
        raise AssertionError("a rejected request has no reason")
