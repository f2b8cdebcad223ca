"""Fitting the iteration-level step time ``StepTime`` (REFERENCE §9) to per-step samples, the
output of profiler v2 (``calibrate/profiler.py``), and deriving from the same samples the
run-to-completion grid the seed and affine forms are fitted on (issue 17 item 3).

A sample is one timed forward step of a batch: ``phase`` prefill (``new_tokens`` = the prompt
chunk, ``context_len`` = the tokens attended after it) or decode (one new token, attending over
``context_len`` tokens), ``batch_size`` sequences, the ``trial`` and ``step`` it belongs to, and
``seconds``. Per shape the fit uses the median over all samples; the trials' medians give the
spread the quality gates judge. The fit minimises squared relative error (non-negative
coefficients) and reports every statistic on relative error, in sample and leaving each shape
out in turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simsched.calibration import GRID_COLUMNS, LIMITS, relative_errors, solve_relative
from simsched.errors import ConfigError, InputError, check_choice
from simsched.latency import StepTime

SAMPLE_COLUMNS = ("phase", "batch_size", "new_tokens", "context_len", "trial", "step", "seconds")
PHASES = ("prefill", "decode")
SHAPE = ["phase", "batch_size", "new_tokens", "context_len"]
TERMS = ("c0_s", "c_pf_s", "c_dec_s", "c_ctx_s", "c_attn_s")
STEP_FORMS = {"step": TERMS[:4], "step_attn": TERMS}
HOLDOUT = "leave-one-shape-out"
# The prefill-attention term is kept only when it lowers the held-out MAPE by this share.
ATTN_GAIN = 0.05


def read_samples(path: str | Path) -> Any:
    """Read raw step samples (Parquet, or the CSV a bare GPU machine writes) and check them; each
    problem is one InputError naming the file and the line (CSV) or row (Parquet) and column."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "no such step-samples file")
    csv = path.suffix.lower() == ".csv"
    try:
        raw = (pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True) if csv
               else pd.read_parquet(path))
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault, in one line
        raise InputError(str(path), f"not a readable {'CSV' if csv else 'Parquet'} file "
                                    f"({' '.join(str(exc).split())[:200]})") from None
    missing = [c for c in SAMPLE_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(str(path), f"missing column(s) {', '.join(missing)}; step samples need "
                                    f"{', '.join(SAMPLE_COLUMNS)}", line=1 if csv else None)
    if raw.empty:
        raise InputError(str(path), "no samples")
    where = (lambda i: {"line": int(i) + 2}) if csv else (lambda i: {"line": None})  # noqa: E731
    row = "" if csv else " at row {}"
    out = pd.DataFrame(index=raw.index)
    phase = raw["phase"].astype(str).str.strip()
    bad = np.flatnonzero(~phase.isin(PHASES).to_numpy())
    if len(bad):
        raise InputError(str(path), f"unknown phase {phase.iloc[bad[0]]!r}{row.format(bad[0])}; allowed: "
                                    f"{', '.join(PHASES)}", column="phase", **where(bad[0]))
    out["phase"] = phase.to_numpy()
    for col in SAMPLE_COLUMNS[1:]:
        text = raw[col].astype(str).str.strip()
        v = pd.to_numeric(text, errors="coerce").astype(float).to_numpy()
        integer = col != "seconds"
        lowest = 0 if col in ("trial", "step") else None
        problems = [(~np.isfinite(v), "not a finite number"),
                    (v > LIMITS[col], f"implausible (at most {LIMITS[col]:g})"),
                    ((v < 0) if lowest == 0 else (v <= 0), "must be >= 0" if lowest == 0 else "must be > 0")]
        if integer:
            problems.append((np.isfinite(v) & (v != np.round(v)), "must be an integer"))
        for mask, message in problems:
            bad = np.flatnonzero(mask)
            if len(bad):
                raise InputError(str(path), f"{message} (got {text.iloc[bad[0]]!r}){row.format(bad[0])}",
                                 column=col, **where(bad[0]))
        out[col] = v.astype(np.int64) if integer else v
    checks = [((out["phase"] == "decode") & (out["new_tokens"] != 1), "new_tokens",
               "a decode step computes exactly 1 new token"),
              (out["context_len"] < out["new_tokens"], "context_len", "must be >= new_tokens")]
    for mask, col, message in checks:
        bad = np.flatnonzero(mask.to_numpy())
        if len(bad):
            raise InputError(str(path), f"{message}{row.format(bad[0])}", column=col, **where(bad[0]))
    return out


def shape_table(samples: Any) -> Any:
    """One row per measured shape: the median over all samples with its quartiles, and the
    trials' medians' mean, standard deviation and relative spread (std / mean)."""
    g = samples.groupby(SHAPE, sort=True)["seconds"]
    table = g.agg(n_samples="size", median_s="median", q1_s=lambda x: x.quantile(0.25),
                  q3_s=lambda x: x.quantile(0.75)).reset_index()
    trials = samples.groupby(SHAPE + ["trial"], sort=True)["seconds"].median().groupby(SHAPE)
    spread = trials.agg(n_trials="size", trial_mean_s="mean", trial_std_s=lambda x: x.std(ddof=1) if len(x) > 1 else 0.0,
                        trial_min_s="min", trial_max_s="max").reset_index()
    table = table.merge(spread, on=SHAPE)
    table["iqr_rel"] = (table["q3_s"] - table["q1_s"]) / table["median_s"]
    table["trial_spread"] = table["trial_std_s"] / table["trial_mean_s"]
    return table


def regressors(table: Any) -> np.ndarray:
    """The step form's design matrix: [1, prefill tokens, decode sequences, Σ context of the
    decoding sequences, Σ n·s + n²/2 over prefill chunks of n tokens starting at s]."""
    b = table["batch_size"].to_numpy(float)
    n = table["new_tokens"].to_numpy(float)
    ctx = table["context_len"].to_numpy(float)
    pre = (table["phase"] == "prefill").to_numpy()
    start = ctx - n
    return np.column_stack([np.ones_like(b), np.where(pre, b * n, 0.0), np.where(pre, 0.0, b),
                            np.where(pre, 0.0, b * ctx), np.where(pre, b * (n * start + n * n / 2.0), 0.0)])


@dataclass(frozen=True)
class StepFormFit:
    """One step form fitted to shape medians; statistics on relative error (see FormFit)."""

    form: str
    coefficients: dict[str, float]
    rmsre: float
    mape: float
    max_ape: float
    heldout_rmsre: float
    heldout_mape: float
    heldout_max_ape: float
    n_shapes: int

    def component(self, name: str = "calibrated_steps", source: str = "") -> StepTime:
        """The StepTime with these coefficients; ``cpu_s`` stays 0: the measurement is GPU time."""
        return StepTime(name=name, source=source, **self.coefficients)

    def predict(self, table: Any) -> np.ndarray:
        return regressors(table) @ np.array([self.coefficients[k] for k in TERMS])


@dataclass(frozen=True)
class StepFit:
    fits: tuple[StepFormFit, ...]
    best: StepFormFit
    holdout: str = HOLDOUT


def _check_rank(X: np.ndarray, form: str, where: str, source: str) -> None:
    k = X.shape[1]
    if X.shape[0] <= k:
        raise InputError(source, f"too few shapes for form {form}{where}: {k} coefficients need at least "
                                 f"{k + 1} measured shapes, got {X.shape[0]}")
    if np.linalg.matrix_rank(X / np.linalg.norm(X, axis=0).clip(min=1e-300)) < k:
        raise InputError(source, f"the shapes cannot separate the coefficients of form {form}{where} "
                                 f"({', '.join(STEP_FORMS[form])}): measure prefill and decode steps, at least "
                                 f"two batch sizes and two context lengths")


def fit_step_form(table: Any, form: str, source: str = "samples") -> StepFormFit:
    """Fit one step form to the shape medians; held out: each shape predicted by a fit on the rest."""
    check_choice("form", form, tuple(STEP_FORMS))
    cols = [TERMS.index(t) for t in STEP_FORMS[form]]
    X = regressors(table)[:, cols]
    y = table["median_s"].to_numpy(float)
    _check_rank(X, form, "", source)
    theta = solve_relative(X, y)
    held = np.empty_like(y)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        _check_rank(X[keep], form, " with a shape left out", source)
        held[i] = X[i] @ solve_relative(X[keep], y[keep])
    coefs = dict.fromkeys(TERMS, 0.0)
    coefs.update({t: float(v) for t, v in zip(STEP_FORMS[form], theta)})
    fit = StepFormFit(form=form, coefficients=coefs, n_shapes=len(y), **relative_errors(X @ theta, y),
                      **{f"heldout_{k}": v for k, v in relative_errors(held, y).items()})
    try:
        fit.component()
    except ConfigError as exc:
        raise InputError(source, f"the fitted {form} form is not a usable step time ({exc})") from None
    return fit


def fit_steps(table: Any, forms: tuple[str, ...] = tuple(STEP_FORMS), source: str = "samples") -> StepFit:
    """Fit each form; the prefill-attention term is kept only if it lowers the held-out MAPE by
    ``ATTN_GAIN`` (the data must ask for it)."""
    if not forms:
        raise ConfigError("step_forms", "at least one form is needed", list(forms), ", ".join(STEP_FORMS))
    fits = tuple(fit_step_form(table, f, source) for f in dict.fromkeys(forms))
    best = fits[0]
    for f in fits[1:]:
        if f.heldout_mape < (1.0 - ATTN_GAIN) * best.heldout_mape:
            best = f
    return StepFit(fits=fits, best=best)


def derived_grid(samples: Any, output_lens: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)) -> Any:
    """The run-to-completion grid (REFERENCE §4 columns) these samples imply, per trial: T(b, L,
    p) = prefill(b, p) + Σ_{j=1}^{L−1} decode(b, p + j), decode times interpolated linearly in the
    context between measured lengths (never extrapolated). Only batch sizes measured in both
    phases, prompts measured as whole prefills (starting at 0)."""
    import pandas as pd

    per_trial = samples.groupby(SHAPE + ["trial"], sort=True)["seconds"].median().reset_index()
    pre = per_trial[(per_trial["phase"] == "prefill") & (per_trial["context_len"] == per_trial["new_tokens"])]
    dec = per_trial[per_trial["phase"] == "decode"]
    rows = []
    for b in sorted(set(pre["batch_size"]) & set(dec["batch_size"])):
        d = dec[dec["batch_size"] == b].pivot(index="context_len", columns="trial", values="seconds")
        for p in sorted(set(pre.loc[pre["batch_size"] == b, "new_tokens"])):
            pf = pre[(pre["batch_size"] == b) & (pre["new_tokens"] == p)].set_index("trial")["seconds"]
            trials = [t for t in pf.index if t in d.columns and not d[t].isna().any()]
            lens = [L for L in output_lens if L == 1 or (p + 1 >= d.index.min() and p + L - 1 <= d.index.max())]
            if not trials or not lens:
                continue
            ctx = p + np.arange(1, max(lens), dtype=float)
            totals = []
            for t in trials:
                steps = np.interp(ctx, d.index.to_numpy(float), d[t].to_numpy(float))
                cum = np.concatenate([[0.0], np.cumsum(steps)])
                totals.append([pf[t] + cum[L - 1] for L in lens])
            arr = np.asarray(totals)
            for j, L in enumerate(lens):
                rows.append({"batch_size": b, "prompt_len": p, "output_len": L, "mean_latency_s": float(arr[:, j].mean()),
                             "std_latency_s": float(arr[:, j].std(ddof=1)) if len(trials) > 1 else 0.0,
                             "num_trials": len(trials)})
    return pd.DataFrame(rows, columns=list(GRID_COLUMNS))
