"""Fitting a synthetic workload to a trace, the windowed Gamma process, and the fit round trip."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simsched.errors import ConfigError
from simsched.workloads import fit
from simsched.workloads.arrivals import Gamma, OnOff, WindowedGamma
from simsched.workloads.lengths import Bimodal

REPO = Path(__file__).resolve().parents[1]


def test_gamma_moments_recover_shape_and_scale():
    gaps = np.random.default_rng(0).gamma(0.5, 2.0, size=200_000)
    shape, scale = fit.gamma_moments(gaps)
    assert shape == pytest.approx(0.5, rel=0.03) and scale == pytest.approx(2.0, rel=0.03)
    assert fit.gamma_moments(np.ones(10)) is None          # zero variance: no Gamma


def test_windowed_gamma_rates_and_fit_recover_each_window():
    proc = WindowedGamma(window_s=100.0, rates=[2.0, 0.0, 8.0], shapes=[0.5, 1.0, 3.0])
    a = proc.sample(30_000, np.random.default_rng(1))
    assert np.all(np.diff(a) >= 0) and len(a) == 30_000
    np.testing.assert_array_equal(a, proc.sample(30_000, np.random.default_rng(1)))   # seeded
    windows = ((a // 100) % 3).astype(int)
    cycles = a[-1] / 300.0
    rates = np.bincount(windows, minlength=3) / (cycles * 100)
    np.testing.assert_allclose(rates, [2.0, 0.0, 8.0], atol=0.15)
    got = fit.fit_windows(a[a < 300 * 100], 100.0)          # 100 cycles of 3 windows
    r, k = np.array(got["rates"]).reshape(-1, 3), np.array(got["shapes"]).reshape(-1, 3)
    np.testing.assert_allclose(r.mean(axis=0), [2.0, 0.0, 8.0], atol=0.15)
    assert k[:, 0].mean() == pytest.approx(0.5, rel=0.2) and k[:, 2].mean() == pytest.approx(3.0, rel=0.2)


def test_windowed_gamma_validation():
    with pytest.raises(ConfigError, match="shapes: must have one shape per rate"):
        WindowedGamma(rates=[1.0, 2.0], shapes=[1.0])
    with pytest.raises(ConfigError, match="rates: at least one window needs a rate > 0"):
        WindowedGamma(rates=[0.0], shapes=[1.0])


def test_onoff_fit_recovers_the_two_states():
    a = OnOff(rate_on=20.0, rate_off=1.0, mean_on_s=20.0, mean_off_s=30.0).sample(100_000, np.random.default_rng(2))
    got = fit.fit_onoff(a, bin_s=1.0)
    assert got["rate_on"] == pytest.approx(20.0, rel=0.1)
    assert got["rate_off"] == pytest.approx(1.0, rel=0.3)
    assert got["mean_on_s"] == pytest.approx(20.0, rel=0.25)
    assert got["mean_off_s"] == pytest.approx(30.0, rel=0.25)


def test_bimodal_fit_recovers_the_mixture():
    x = Bimodal(short_weight=0.3, short_median=30, short_sigma=0.5, long_median=400, long_sigma=0.4,
                maximum=100_000).sample(50_000, np.random.default_rng(3))
    got = fit.fit_bimodal(x)
    assert got["short_weight"] == pytest.approx(0.3, abs=0.03)
    assert got["short_median"] == pytest.approx(30, rel=0.1) and got["long_median"] == pytest.approx(400, rel=0.1)


def test_empirical_table_is_exact_for_few_values_and_quantiles_otherwise():
    t = fit.empirical_table(np.array([0, 1, 1, 5]), 10)
    assert t == {"values": [1, 5], "weights": [3.0, 1.0]}      # zero becomes 1
    big = fit.empirical_table(np.arange(1, 10_001), 100)
    assert len(big["values"]) == 100 and big["values"][0] == 51 and sum(big["weights"]) == 100


def write_trace(path: Path, n: int = 4000) -> pd.DataFrame:
    """An 8-column BurstGPT file with known structure: Gamma(0.5) arrivals at 2 req/s."""
    rng = np.random.default_rng(4)
    t = np.round(Gamma(rate=2.0, cv=1.41).sample(n, rng), 3)
    prompt = np.rint(rng.lognormal(np.log(300), 0.8, n)).astype(int) + 1
    out = np.rint(rng.lognormal(np.log(150), 0.6, n)).astype(int) + 1
    df = pd.DataFrame({"Timestamp": t, "Session ID": 1, "Elapsed time": 0.5, "Model": "ChatGPT",
                       "Request tokens": prompt, "Response tokens": out, "Total tokens": prompt + out,
                       "Log Type": "API log"})
    df.to_csv(path, index=False)
    return df


def test_fit_round_trip_through_the_simulator(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from simsched.app.paths import config_dir
    from simsched.config import register_configs
    from simsched.run import simulate_config

    trace = write_trace(tmp_path / "trace.csv")
    out = tmp_path / "conf" / "workload" / "fitted.yaml"
    assert fit.main([str(tmp_path / "trace.csv"), "--out", str(out), "--cache-dir", ""]) == 0
    printed = capsys.readouterr().out
    assert f"hydra.searchpath=[file://{(tmp_path / 'conf').resolve()}]' workload=fitted" in printed
    assert out.is_file() and out.with_suffix(".png").stat().st_size > 10_000
    text = out.read_text()
    assert "simsched.workloads.arrivals.WindowedGamma" in text and "# Alternative arrivals (gamma)" in text
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "workload=fitted",
                                           "tracking=none", "output.plots=false"])
    assert cfg.workload.name == "fitted" and cfg.workload.num_requests == len(trace)
    res, metrics, _ = simulate_config(cfg)
    assert metrics["completed"] + metrics["rejected"] + metrics["unfinished"] == len(trace)
    span = trace["Timestamp"].iloc[-1] - trace["Timestamp"].iloc[0]
    assert metrics["workload_mean_rate_rps"] == pytest.approx((len(trace) - 1) / span, rel=0.15)
    assert metrics["workload_prompt_p50"] == pytest.approx(trace["Request tokens"].median(), rel=0.1)
    assert metrics["workload_output_p90"] == pytest.approx(trace["Response tokens"].quantile(0.9), rel=0.1)
    # refuses to overwrite; a one-line error, exit code 2
    assert fit.main([str(tmp_path / "trace.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fitted.yaml: exists; pass --force" in err[0]


def test_fit_alternatives_parse_and_empirical_lengths(tmp_path):
    import yaml

    write_trace(tmp_path / "trace.csv", n=1500)
    out = tmp_path / "w.yaml"
    assert fit.main([str(tmp_path / "trace.csv"), "--out", str(out), "--arrivals", "onoff",
                     "--lengths", "empirical", "--cache-dir", ""]) == 0
    text = out.read_text()
    node = yaml.safe_load(text)
    assert node["arrivals"]["_target_"].endswith(".OnOff") and node["prompt"]["_target_"].endswith(".Empirical")
    # every commented alternative is valid YAML once uncommented, and builds
    blocks = text.split("# Alternative ")[1:]
    assert len(blocks) >= 4
    for block in blocks:
        body = "\n".join(line[4:] for line in block.splitlines()[1:])
        (key, value), = yaml.safe_load(body).items()
        from hydra.utils import instantiate
        assert hasattr(instantiate(value, _convert_="all"), "sample")


def test_fit_cli_and_run_with_searchpath(tmp_path):
    write_trace(tmp_path / "trace.csv", n=1500)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    out = tmp_path / "fits" / "workload" / "mine.yaml"
    proc = subprocess.run([sys.executable, "-m", "simsched.workloads.fit", "trace.csv", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "simsched", f"hydra.searchpath=[file://{tmp_path / 'fits'}]",
                           "workload=mine", "tracking=none", "output.plots=false", "hydra.run.dir=run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["arrived"] == metrics["workload_requests"] == 1500
    proc = subprocess.run([sys.executable, "-m", "simsched.workloads.fit", "missing.csv"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: missing.csv: no such file"
