"""Fitting latency models to a measured calibration grid (REFERENCE §4), and ``Calibrated``,
the latency component that fits one at start-up (``latency_model=calibrated
latency_model.grid=PATH``).

Pure pandas/numpy/scipy: the profiler that measures grids lives in ``calibrate/`` (torch); the
simulator only ever reads its CSV. Each form is linear in its coefficients (the seed form in
α, β and βγ), so a fit is a bounded linear least-squares problem on *relative* residuals:
points are weighted by 1/T, which keeps the short runs (where α and the prefill show) from
being drowned by the long ones, and every statistic reported is on that same relative error.
A grid is first judged by the quality gates (``calibration_gates``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simsched.calibration_gates import GateSpec, grid_gates
from simsched.errors import ConfigError, InputError, check_choice, check_positive
from simsched.latency import Affine, LatencyForm, SeedForm

GRID_COLUMNS = ("batch_size", "prompt_len", "output_len", "mean_latency_s", "std_latency_s", "num_trials")
# Plausibility bounds: a value beyond these is a typo or a corrupted file, not a measurement
# (an output length of 1e15 once produced a "ready-to-use" model with a held-out MAPE of 3.5e10).
LIMITS = {"batch_size": 2**20, "prompt_len": 10**7, "output_len": 10**7, "new_tokens": 10**7,
          "context_len": 10**7, "num_trials": 10**6, "trial": 10**6, "step": 10**9,
          "mean_latency_s": 1e6, "std_latency_s": 1e6, "seconds": 1e6}

# The forms, by name: the coefficients each fits (component field names, in design-column
# order). ``synthetic`` fits α, β and βγ; γ = βγ/β.
FORM_COEFFICIENTS = {
    "synthetic": ("alpha_s", "beta_s", "gamma"),
    "affine": ("alpha_s", "beta0_s", "beta1_s"),
    "affine_kv": ("alpha_s", "beta0_s", "beta1_s", "prefill_s_per_token", "kv_s_per_token"),
}
FORMS = tuple(FORM_COEFFICIENTS)
HOLDOUT = "leave-one-batch-size-out"


def read_grid(path: str | Path) -> Any:
    """Read and check a calibration grid CSV; every problem is one InputError naming the file,
    line and column."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "no such grid file")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                          skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"not a readable CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in GRID_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(str(path), f"missing column(s) {', '.join(missing)}; a grid needs "
                                    f"{', '.join(GRID_COLUMNS)}", line=1)
    if raw.empty:
        raise InputError(str(path), "the grid has no rows")
    grid = pd.DataFrame(index=raw.index)
    for col in GRID_COLUMNS:
        values = pd.to_numeric(raw[col].str.strip(), errors="coerce").astype(float)
        _check_column(path, raw[col], values, col)
        grid[col] = values.to_numpy()
    for col in ("batch_size", "prompt_len", "output_len", "num_trials"):
        grid[col] = grid[col].astype(np.int64)
    return grid


def _check_column(path: Path, text: Any, values: Any, col: str) -> None:
    v = values.to_numpy()
    line = lambda i: int(i) + 2  # noqa: E731 - header is line 1
    bad = np.flatnonzero(np.isnan(v) & ~np.isin(text.str.strip().str.lower(), ["nan", "inf", "-inf", "+inf"]))
    if len(bad):
        raise InputError(str(path), f"not a number: {text.iloc[bad[0]]!r}", line(bad[0]), col)
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        raise InputError(str(path), f"must be finite (got {text.iloc[bad[0]].strip()})", line(bad[0]), col)
    bad = np.flatnonzero(v > LIMITS[col])
    if len(bad):
        raise InputError(str(path), f"implausible value {text.iloc[bad[0]].strip()} (at most {LIMITS[col]:g})",
                         line(bad[0]), col)
    if col == "std_latency_s":
        bad = np.flatnonzero(v < 0)
        if len(bad):
            raise InputError(str(path), f"must be >= 0 (got {text.iloc[bad[0]].strip()})", line(bad[0]), col)
        return
    bad = np.flatnonzero(v <= 0)
    if len(bad):
        raise InputError(str(path), f"must be > 0 (got {text.iloc[bad[0]].strip()})", line(bad[0]), col)
    if col != "mean_latency_s":
        bad = np.flatnonzero(v != np.round(v))
        if len(bad):
            raise InputError(str(path), f"must be an integer (got {text.iloc[bad[0]].strip()})", line(bad[0]), col)


def grid_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def design(form: str, b: Any, L: Any, P: Any) -> np.ndarray:
    """The design matrix of a form: T = X @ θ (P = sum of prompt tokens = b·prompt_len)."""
    b, L, P = (np.asarray(x, dtype=float) for x in (b, L, P))
    one = np.ones_like(L)
    if form == "synthetic":
        return np.column_stack([one, L, L * (b - 1) / b])
    if form == "affine":
        return np.column_stack([one, L, L * b])
    if form == "affine_kv":
        return np.column_stack([one, L, L * b, P, P * L + b * L * L / 2.0])
    raise ConfigError("form", "unknown latency-model form", form, ", ".join(FORMS))


def solve_relative(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative residuals, with columns scaled for conditioning:
    minimises Σ((X θ − y) / y)² over θ ≥ 0."""
    from scipy.optimize import lsq_linear

    A = X / y[:, None]
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    sol = lsq_linear(A / scale, np.ones_like(y), bounds=(0.0, np.inf), method="bvls")
    return sol.x / scale


def relative_errors(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The fitted loss and its relatives, all on relative error (pred − y) / y: root mean square
    (what the fit minimises), mean absolute (MAPE) and the largest absolute."""
    rel = (np.asarray(pred, float) - y) / y
    return {"rmsre": float(np.sqrt(np.mean(rel**2))), "mape": float(np.mean(np.abs(rel))),
            "max_ape": float(np.max(np.abs(rel)))}


def _columns(grid: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    b = grid["batch_size"].to_numpy(float)
    L = grid["output_len"].to_numpy(float)
    P = b * grid["prompt_len"].to_numpy(float)
    return b, L, P, grid["mean_latency_s"].to_numpy(float)


def _check_identifiable(form: str, X: np.ndarray, where: str, source: str) -> None:
    k = X.shape[1]
    coefs = ", ".join(FORM_COEFFICIENTS[form])
    if X.shape[0] <= k:
        raise InputError(source, f"too few points for form {form}{where}: its {k} coefficients "
                                 f"({coefs}) need at least {k + 1} points, got {X.shape[0]}")
    if np.linalg.matrix_rank(X / np.linalg.norm(X, axis=0).clip(min=1e-300)) < k:
        raise InputError(source, f"too few distinct points for form {form}{where}: the grid's "
                                 f"batch sizes, prompt and output lengths do not vary enough to "
                                 f"determine {coefs}")


@dataclass(frozen=True)
class FormFit:
    """One form fitted to a grid. Every statistic is on relative error, the loss the fit
    minimises: in-sample (``rmsre``, the fitted loss; ``mape``; ``max_ape``) and held out
    (``heldout_*``: each batch size predicted by a fit on the others)."""

    form: str
    coefficients: dict[str, float]
    rmsre: float
    mape: float
    max_ape: float
    heldout_rmsre: float
    heldout_mape: float
    heldout_max_ape: float
    n_points: int

    def component(self, name: str = "calibrated") -> SeedForm | Affine:
        """The simulator's latency component with these coefficients."""
        return build_component(self.form, self.coefficients, name)

    def predict(self, b: Any, L: Any, P: Any) -> np.ndarray:
        return design(self.form, b, L, P) @ _theta(self.form, self.coefficients)


@dataclass(frozen=True)
class GridFit:
    """Every requested form fitted to one grid; ``best`` has the lowest held-out MAPE."""

    fits: tuple[FormFit, ...]
    best: FormFit
    holdout: str = HOLDOUT

    def by_form(self, form: str) -> FormFit:
        for f in self.fits:
            if f.form == form:
                return f
        raise ConfigError("form", "not fitted", form, ", ".join(f.form for f in self.fits))


def _coefficients(form: str, theta: np.ndarray) -> dict[str, float]:
    if form == "synthetic":
        a, beta, beta_gamma = (float(x) for x in theta)
        return {"alpha_s": a, "beta_s": beta, "gamma": beta_gamma / beta if beta > 0 else 0.0}
    return {k: float(v) for k, v in zip(FORM_COEFFICIENTS[form], theta)}


def _theta(form: str, coefs: dict[str, float]) -> np.ndarray:
    if form == "synthetic":
        return np.array([coefs["alpha_s"], coefs["beta_s"], coefs["beta_s"] * coefs["gamma"]])
    return np.array([coefs[k] for k in FORM_COEFFICIENTS[form]])


def build_component(form: str, coefs: dict[str, float], name: str) -> SeedForm | Affine:
    check_choice("form", form, FORMS)
    if form == "synthetic":
        return SeedForm(name=name, **coefs)
    return Affine(name=name, **coefs)


def fit_form(grid: Any, form: str, source: str = "grid") -> FormFit:
    """Fit one form on every point; held-out error by leaving out each batch size in turn. A
    fit whose coefficients make no usable model (e.g. no per-token cost: the latency does not
    grow with output length) is an InputError naming ``source``."""
    check_choice("form", form, FORMS)
    b, L, P, y = _columns(grid)
    X = design(form, b, L, P)
    _check_identifiable(form, X, "", source)
    theta = solve_relative(X, y)
    sizes = np.unique(b)
    if len(sizes) < 3:
        raise InputError(source, f"held-out error needs at least 3 batch sizes ({HOLDOUT}), "
                                 f"got {len(sizes)}: {', '.join(str(int(s)) for s in sizes)}")
    held = np.empty_like(y)
    for size in sizes:
        test = b == size
        _check_identifiable(form, X[~test], f" without batch size {int(size)}", source)
        held[test] = X[test] @ solve_relative(X[~test], y[~test])
    fit_stats, held_stats = relative_errors(X @ theta, y), relative_errors(held, y)
    fit = FormFit(form=form, coefficients=_coefficients(form, theta), n_points=len(y), **fit_stats,
                  **{f"heldout_{k}": v for k, v in held_stats.items()})
    try:
        fit.component()
    except ConfigError as exc:
        raise InputError(source, f"the fitted {form} form is not a usable latency model ({exc})") from None
    return fit


def fit_grid(grid: Any, forms: tuple[str, ...] | list[str] = FORMS, source: str = "grid") -> GridFit:
    """Fit each form; the best is the lowest held-out MAPE (ties: fewer coefficients)."""
    if not forms:
        raise ConfigError("forms", "at least one form is needed", list(forms), ", ".join(FORMS))
    for f in forms:
        check_choice("forms", f, FORMS)
    fits = tuple(fit_form(grid, f, source) for f in dict.fromkeys(forms))
    best = min(fits, key=lambda f: (f.heldout_mape, len(FORM_COEFFICIENTS[f.form])))
    return GridFit(fits=fits, best=best)


def check_heldout(heldout_mape: float, limit: float, source: str, accept_noisy: bool) -> None:
    """Refuse a fit whose held-out error exceeds ``limit`` (unless ``accept_noisy``)."""
    if heldout_mape > limit and not accept_noisy:
        raise InputError(source, f"held-out MAPE {heldout_mape:.1%} exceeds max_heldout_mape {limit:.0%}: "
                                 f"not a usable latency model (accept_noisy=true uses it anyway)")


@dataclass(frozen=True)
class Calibrated:
    """A latency model fitted at start-up from a measured grid (REFERENCE §4 CSV). ``form:
    best`` picks the form with the lowest held-out error; a form name forces it. A grid that
    fails the quality gates (``calibration_gates``) or whose held-out MAPE exceeds
    ``max_heldout_mape`` is refused unless ``accept_noisy``. Behaves exactly like the fitted
    SeedForm/Affine."""

    grid: str | None = None
    form: str = "best"
    accept_noisy: bool = False
    max_heldout_mape: float = 0.2
    name: str = "calibrated"

    def __post_init__(self) -> None:
        if not self.grid:
            raise ConfigError("grid", "path to a calibration grid CSV is required "
                                      "(python -m calibrate.fit writes one beside each step fit)")
        check_choice("form", self.form, ("best",) + FORMS)
        check_positive("max_heldout_mape", self.max_heldout_mape)
        table = read_grid(self.grid)
        gates = grid_gates(table, GateSpec())
        if not gates.passed and not self.accept_noisy:
            raise InputError(str(self.grid), f"fails the calibration quality gates ({gates.summary()}); "
                                             f"set latency_model.accept_noisy=true to use it anyway")
        forms = FORMS if self.form == "best" else (self.form,)
        fitted = fit_grid(table, forms, source=str(self.grid))
        check_heldout(fitted.best.heldout_mape, self.max_heldout_mape, str(self.grid), self.accept_noisy)
        # Not dataclass fields: the gates and the fitted model are derived state, not configuration.
        object.__setattr__(self, "gates", gates)
        object.__setattr__(self, "fit", fitted)
        object.__setattr__(self, "model", fitted.best.component(self.name))

    def batch_time(self, b: Any, L: Any, prompt_sum: Any) -> Any:
        return self.model.batch_time(b, L, prompt_sum)

    def kernel_form(self) -> LatencyForm:
        return self.model.kernel_form()
