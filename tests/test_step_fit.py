"""The step-time fit and the quality gates on synthetic data with known coefficients (no torch):
the fit recovers them, the gates catch injected host noise, and once the noise is removed the
fit recovers them again; the run-to-completion grid derived from step samples is the integral
of the same steps; bad sample files are one line naming file, line and column."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from simsched.calibration import fit_grid
from simsched.calibration_gates import GateSpec, grid_gates, step_gates
from simsched.errors import InputError
from simsched.latency import StepTime
from simsched.step_fit import (SAMPLE_COLUMNS, derived_grid, fit_step_form, fit_steps, read_samples, regressors,
                               shape_table)

# Coefficients of the order of an 8B model on a datacentre GPU (every term visible in the grid).
TRUTH = StepTime(c0_s=4e-3, c_pf_s=2e-5, c_dec_s=3e-5, c_ctx_s=5e-8, c_attn_s=8e-10)
DECODE_B, CONTEXTS = (1, 8, 32, 64, 128, 256), (128, 512, 1024, 2048)
PREFILL_B, PROMPTS = (1, 8, 32), (128, 512, 1024, 2048)


def samples(noise: float = 0.01, host_s: float = 0.0, host_share: float = 0.0, seed: int = 0, trials: int = 5,
            truth: StepTime = TRUTH, slow_shape: tuple | None = None) -> pd.DataFrame:
    """Step samples from ``truth`` with multiplicative noise; ``host_s`` adds a host stall of
    that many seconds to every step of a random ``host_share`` of the (shape, trial) blocks, the
    way the eager generate() grid's slow trials did, or of every trial of ``slow_shape``."""
    rng = np.random.default_rng(seed)
    rows = []
    shapes = [("prefill", b, p, p) for b in PREFILL_B for p in PROMPTS if b * p <= 32768]
    shapes += [("decode", b, 1, c) for b in DECODE_B for c in CONTEXTS]
    for phase, b, n, c in shapes:
        t = (truth.step_time(b * n, 0, 0, b * n * n / 2) if phase == "prefill" else truth.step_time(0, b, b * c))
        for trial in range(trials):
            stall = host_s if rng.random() < host_share or (phase, b, n, c) == slow_shape else 0.0
            for step in range(2 if phase == "prefill" else 8):
                rows.append((phase, b, n, c, trial, step, t * (1 + noise * rng.standard_normal()) + stall))
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def test_the_fit_recovers_known_coefficients():
    fit = fit_steps(shape_table(samples()))
    assert fit.best.form == "step_attn"  # the attention term is in the data: it is asked for
    for key in ("c0_s", "c_pf_s", "c_dec_s", "c_ctx_s", "c_attn_s"):
        assert fit.best.coefficients[key] == pytest.approx(getattr(TRUTH, key), rel=0.03), key
    assert fit.best.rmsre < 0.01 and fit.best.heldout_mape < 0.01 and fit.best.heldout_max_ape < 0.03
    exact = fit_steps(shape_table(samples(noise=0.0)))
    for key in ("c0_s", "c_pf_s", "c_dec_s", "c_ctx_s", "c_attn_s"):
        assert exact.best.coefficients[key] == pytest.approx(getattr(TRUTH, key), rel=1e-6), key


def test_the_attention_term_is_kept_only_when_the_data_ask_for_it():
    flat = StepTime(c0_s=4e-3, c_pf_s=2e-5, c_dec_s=3e-5, c_ctx_s=5e-8)
    fit = fit_steps(shape_table(samples(truth=flat)))
    assert fit.best.form == "step" and fit.best.coefficients["c_attn_s"] == 0.0
    assert fit.best.coefficients["c_ctx_s"] == pytest.approx(5e-8, rel=0.03)


def test_gates_pass_clean_samples_and_catch_injected_host_noise():
    clean = step_gates(shape_table(samples()))
    assert clean.passed, clean.summary()
    # Stalls in random trials: the trials disagree.
    noisy = step_gates(shape_table(samples(host_s=0.04, host_share=0.3)))
    assert "spread" in {g.name for g in noisy.failures}, noisy.summary()
    # A stall in every trial of one shape: consistent, but slower than a larger batch.
    slow = step_gates(shape_table(samples(host_s=0.04, slow_shape=("decode", 8, 1, 512))))
    assert [g.name for g in slow.failures] == ["monotone_batch_size_decode", "monotone_context_len_decode"]
    assert "1 of 20 adjacent pairs get faster with larger decode batch size beyond the noise" in slow.summary()
    # Removing the noise brings the coefficients back.
    assert fit_steps(shape_table(samples(seed=1))).best.coefficients["c_dec_s"] == pytest.approx(3e-5, rel=0.03)


def test_gates_count_trials_and_catch_a_constant_table():
    few = step_gates(shape_table(samples(trials=3)))
    assert [g.name for g in few.failures] == ["trials"] and "fewest trials at a point 3 (need >= 5)" in few.summary()
    const = samples(noise=0.001).assign(seconds=0.01)
    report = step_gates(shape_table(const))
    assert "grows_with_work" in {g.name for g in report.failures}


def test_a_floor_gate_flags_host_bound_and_impossible_steps():
    floor = StepTime(c0_s=4e-3 / 30, c_dec_s=1e-7, c_ctx_s=5e-8 / 30)
    report = step_gates(shape_table(samples()), floor=floor)
    assert [g.name for g in report.failures] == ["floor"] and "in the median" in report.summary()
    fast = step_gates(shape_table(samples()), floor=StepTime(c0_s=8e-3, c_dec_s=3e-5, c_ctx_s=5e-8))
    assert [g.name for g in fast.failures] == ["floor"]  # measured below the floor: not this GPU
    assert step_gates(shape_table(samples()), floor=StepTime(c0_s=2e-3, c_dec_s=1e-5, c_ctx_s=2e-8)).passed


def test_derived_grid_is_the_integral_of_the_same_steps():
    """With steps linear in the context, the derived T(b, L, p) equals StepTime.batch_time."""
    grid = derived_grid(samples(noise=0.0))
    assert set(grid["batch_size"]) == set(PREFILL_B) and (grid["num_trials"] == 5).all()
    b, L, p = (grid[c].to_numpy(float) for c in ("batch_size", "output_len", "prompt_len"))
    np.testing.assert_allclose(grid["mean_latency_s"], TRUTH.batch_time(b, L, b * p), rtol=1e-9)
    assert (p + L - 1 <= max(CONTEXTS)).all()  # never extrapolated past the longest measured context
    assert grid_gates(grid, GateSpec()).passed
    rtc = fit_grid(derived_grid(samples()))
    assert rtc.best.form == "affine_kv" and rtc.best.heldout_mape < 0.02
    assert rtc.best.coefficients["beta1_s"] == pytest.approx(3e-5, rel=0.1)


def test_grid_gates_catch_host_noise_in_a_run_to_completion_grid():
    grid = derived_grid(samples(host_s=0.04, host_share=0.3))
    failed = {g.name for g in grid_gates(grid).failures}
    assert "spread" in failed


def test_regressors_follow_the_step_form():
    table = pd.DataFrame([("prefill", 4, 100, 150), ("decode", 8, 1, 300)], columns=["phase", "batch_size",
                                                                                     "new_tokens", "context_len"])
    # prefill: 400 tokens, chunks of 100 starting at 50: 4·(100·50 + 100²/2); decode: 8 seqs over 2,400 tokens.
    np.testing.assert_allclose(regressors(table), [[1, 400, 0, 0, 4 * (100 * 50 + 5000)], [1, 0, 8, 2400, 0]])


def test_shapes_that_cannot_separate_the_terms_are_one_line():
    only_decode = shape_table(samples()[lambda d: d["phase"] == "decode"])
    with pytest.raises(InputError, match="^samples: the shapes cannot separate the coefficients of form step"):
        fit_step_form(only_decode, "step")


def _csv(tmp_path, df: pd.DataFrame) -> str:
    path = tmp_path / "steps.csv"
    df.to_csv(path, index=False)
    return str(path)


def _edit(df: pd.DataFrame, row: int, col: str, value) -> pd.DataFrame:
    df = df.astype(object)
    df.loc[row, col] = value
    return df


BAD_SAMPLES = {
    "missing column": (lambda d: d.drop(columns=["trial"]), "missing column(s) trial"),
    "unknown phase": (lambda d: _edit(d, 3, "phase", "generate"), ":5 column 'phase': unknown phase 'generate'"),
    "negative time": (lambda d: _edit(d, 4, "seconds", -1.0), ":6 column 'seconds': must be > 0 (got '-1.0')"),
    "nan time": (lambda d: _edit(d, 4, "seconds", "nan"), ":6 column 'seconds': not a finite number"),
    "absurd time": (lambda d: _edit(d, 4, "seconds", "1e300"), ":6 column 'seconds': implausible (at most 1e+06)"),
    "fractional batch": (lambda d: _edit(d, 2, "batch_size", 2.5), ":4 column 'batch_size': must be an integer"),
    "absurd context": (lambda d: _edit(d, 2, "context_len", "1e15"), ":4 column 'context_len': implausible"),
    "decode of two tokens": (lambda d: _edit(d, len(d) - 1, "new_tokens", 2),
                             "column 'new_tokens': a decode step computes exactly 1 new token"),
    "no rows": (lambda d: d.iloc[:0], "no samples"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_bad_sample_files_are_one_line(case, tmp_path):
    mutate, expected = BAD_SAMPLES[case]
    path = _csv(tmp_path, mutate(samples().iloc[:200].sort_values("phase", ascending=False).reset_index(drop=True)))
    with pytest.raises(InputError) as err:
        read_samples(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(path) and expected in text, text


def test_parquet_errors_name_the_row(tmp_path):
    path = tmp_path / "steps.parquet"
    _edit(samples().iloc[:50], 7, "seconds", 0.0).astype({"seconds": float}).to_parquet(path)
    with pytest.raises(InputError, match=r"column 'seconds': must be > 0 \(got '0.0'\) at row 7"):
        read_samples(path)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="junk.parquet: not a readable Parquet file"):
        read_samples(tmp_path / "junk.parquet")


@pytest.mark.parametrize("t2, s, fails", [
    (0.99, 0.0, False),   # 1% faster: inside the 2% floor
    (0.97, 0.0, True),    # 3% faster with no noise
    (0.95, 0.02, False),  # 5% faster, noise 2·√2·0.02 = 5.7%
    (0.94, 0.02, True),   # 6% faster: beyond it
])
def test_beyond_the_noise_means_two_combined_standard_deviations_or_two_percent(t2, s, fails):
    grid = pd.DataFrame({"batch_size": [1, 2, 4], "prompt_len": 8, "output_len": 4, "mean_latency_s": [0.9, 1.0, t2],
                         "std_latency_s": [0.0, s, s], "num_trials": 5})
    gate = next(g for g in grid_gates(grid).gates if g.name == "monotone_batch_size")
    assert gate.passed is not fails and gate.value == int(fails)
