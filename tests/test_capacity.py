"""Capacity search: the pure bisection, the rate helpers, and an M/D/1 case with a closed form."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from simsched.capacity_search import ci95_halfwidth, find_capacities, find_capacity, simulated_violation
from simsched.workloads.rates import arrival_rate, with_arrival_rate
from simsched.errors import ConfigError

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    from simsched.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return hydra_compose("config", overrides)


def test_bisection_finds_a_known_crossing_within_tolerance():
    # violation = rate / 10: the largest rate with violation <= 0.05 is 0.5.
    res = find_capacity(lambda rate, r: rate / 10, target=0.05, lo=0.1, hi=4.0, replications=2, rel_tol=1e-4)
    assert res.status == "ok"
    assert res.capacity <= 0.5 < res.bracket[1]
    assert res.capacity == pytest.approx(0.5, rel=2e-4)
    assert res.bracket[1] - res.bracket[0] <= 1e-4 * res.bracket[0]
    rates = [p.rate for p in res.curve]
    assert rates == sorted(rates) and len(rates) == res.evaluations // 2


def test_replications_are_averaged_and_seeded_by_index():
    seen = []

    def f(rate, r):
        seen.append(r)
        return rate / 10 + (0.02 if r == 0 else -0.02)   # mean is rate/10

    res = find_capacity(f, target=0.05, lo=0.1, hi=4.0, replications=2, rel_tol=1e-3)
    assert set(seen) == {0, 1}
    assert res.capacity == pytest.approx(0.5, rel=2e-3)
    point = res.curve[0]
    assert point.values[0] - point.values[1] == pytest.approx(0.04)
    assert point.ci95 == pytest.approx(ci95_halfwidth(point.values)) and point.ci95 > 0


def test_bracket_expands_both_ways_and_reports_out_of_range():
    res = find_capacity(lambda rate, r: rate / 10, target=0.05, lo=2.0, hi=3.0, replications=1, rel_tol=1e-3)
    assert res.status == "ok" and res.capacity == pytest.approx(0.5, rel=1e-3)
    res = find_capacity(lambda rate, r: rate / 10, target=0.05, lo=0.01, hi=0.02, replications=1, rel_tol=1e-3)
    assert res.status == "ok" and res.capacity == pytest.approx(0.5, rel=1e-3)
    never = find_capacity(lambda rate, r: 1.0, target=0.05, lo=1, hi=2, replications=1, max_expand=3)
    assert never.status == "below_range" and math.isnan(never.capacity) and never.bracket[0] == 0.0
    always = find_capacity(lambda rate, r: 0.0, target=0.05, lo=1, hi=2, replications=1, max_expand=3)
    assert always.status == "above_range" and always.capacity == 16.0 and always.bracket[1] == math.inf


def test_nan_violation_counts_as_violating():
    res = find_capacity(lambda rate, r: math.nan if rate > 1 else 0.0, target=0.05, lo=0.5, hi=4.0,
                        replications=1, rel_tol=1e-3)
    assert res.capacity == pytest.approx(1.0, rel=1e-3) and res.capacity <= 1.0


def test_several_targets_share_evaluations():
    calls = []

    def f(rate, r):
        calls.append(rate)
        return rate / 10

    one, five = find_capacities(f, [0.01, 0.05], lo=0.05, hi=2.0, replications=1, rel_tol=1e-3)
    assert one.capacity == pytest.approx(0.1, rel=1e-3) and five.capacity == pytest.approx(0.5, rel=1e-3)
    assert len(calls) == len(set(calls)) == one.evaluations == five.evaluations
    assert one.curve == five.curve


@pytest.mark.parametrize("kwargs, key", [({"target": 0}, "target"), ({"target": 1.2}, "target"),
                                         ({"lo": -1}, "lo"), ({"hi": 0.5}, "hi"),
                                         ({"replications": 0}, "replications"), ({"rel_tol": 0}, "rel_tol")])
def test_bad_search_settings_name_the_field(kwargs, key):
    args = {"target": 0.05, "lo": 1.0, "hi": 2.0, "replications": 1, "rel_tol": 0.01} | kwargs
    with pytest.raises(ConfigError) as err:
        find_capacity(lambda rate, r: 0.0, **args)
    assert err.value.key == key


def test_with_arrival_rate_sets_every_arrival_shape():
    poisson = compose(["workload=poisson"])
    assert arrival_rate(with_arrival_rate(poisson, 7.5)) == 7.5
    assert poisson.workload.arrivals.rate == 4.0          # the input is not modified
    burst = compose(["workload=burstgpt"])                # gamma given by rate + cv
    out = with_arrival_rate(burst, 3.0)
    assert out.workload.arrivals.rate == 3.0 and out.workload.arrivals.cv == 1.41
    gamma = compose(["workload=gamma"])                   # gamma given by shape + scale
    out = with_arrival_rate(gamma, 8.0)
    assert out.workload.arrivals.shape == 0.5 and arrival_rate(out) == pytest.approx(8.0)
    onoff = compose(["workload=onoff"])
    out = with_arrival_rate(onoff, 2 * arrival_rate(onoff))
    assert out.workload.arrivals.rate_on == pytest.approx(20.0) and out.workload.arrivals.rate_off == pytest.approx(2.0)
    from simsched.run import build_components

    for cfg in (poisson, burst, gamma, onoff):
        wl = build_components(with_arrival_rate(cfg, 5.0)).workload
        assert wl.mean_rate == pytest.approx(5.0)


def test_with_arrival_rate_sets_trace_target_rate_and_windowed_gamma_level():
    trace = compose(["workload=azure_trace", "workload.path=x.csv", "workload.rps_scale=2"])
    out = with_arrival_rate(trace, 3.0)
    assert out.workload.target_rate == 3.0 and out.workload.rps_scale == 1.0
    windowed = OmegaConf.create({"workload": {"arrivals": {
        "_target_": "simsched.workloads.arrivals.WindowedGamma", "window_s": 60.0,
        "rates": [1.0, 3.0], "shapes": [0.5, 2.0]}}})
    out = with_arrival_rate(windowed, 4.0)
    assert list(out.workload.arrivals.rates) == [2.0, 6.0] and arrival_rate(out) == 4.0


def test_with_arrival_rate_rejects_a_workload_without_rate():
    cfg = OmegaConf.create({"workload": {"name": "trace", "path": "x.csv"}})
    with pytest.raises(ConfigError, match="workload.arrivals"):
        with_arrival_rate(cfg, 1.0)


def _md1_sojourn_violation(lam: float, d: float, D: float) -> float:
    """P(sojourn > d) in M/D/1: 1 − W(d − D), with the waiting-time distribution (Erlang 1909;
    Crommelin 1932; Franx, Oper. Res. Lett. 29 (2001) 210-214, eq. for c = 1):
    W(t) = (1 − ρ) Σ_{k=0}^{⌊t/D⌋} [λ(kD − t)]^k / k! · e^{−λ(kD − t)},  ρ = λD < 1."""
    t = d - D
    s = sum((lam * (k * D - t)) ** k / math.factorial(k) * math.exp(-lam * (k * D - t))
            for k in range(int(math.floor(t / D)) + 1))
    return 1.0 - (1.0 - lam * D) * s


def test_md1_capacity_matches_closed_form_within_2_percent():
    """M/D/1 with a latency-threshold SLA: static_fifo with batch size 1 on 1 GPU, fixed output
    length L = 100, affine latency with α = β1 = 0 (no batch effect) so every service takes
    D = 100 × 0.01 s = 1 s; Poisson arrivals; the SLA is latency > d = 6 s, target 5%. The exact
    capacity solves P(sojourn > d) = 0.05 with the M/D/1 waiting-time formula
    (see ``_md1_sojourn_violation``): λ* ≈ 0.7453 req/s."""
    from scipy.optimize import brentq

    D, d, target = 1.0, 6.0, 0.05
    exact = brentq(lambda lam: _md1_sojourn_violation(lam, d, D) - target, 1e-6, 1 / D - 1e-9)
    cfg = compose(["scheduler=static_fifo", "scheduler.batcher.batch_size=1", "workload=poisson",
                   "workload.num_requests=20000", "latency_model=affine", "latency_model.alpha_s=0",
                   "latency_model.beta1_s=0", "latency_model.beta0_s=0.01", "gpus.count=1",
                   "tracking=none", f"sla.latency_s={d}"])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg.workload.prompt = {"_target_": "simsched.workloads.lengths.Fixed", "value": 10}
    cfg.workload.output = {"_target_": "simsched.workloads.lengths.Fixed", "value": 100}
    res = find_capacity(simulated_violation(cfg), target, lo=0.6, hi=0.9, replications=4, rel_tol=0.005)
    assert res.status == "ok"
    assert res.capacity == pytest.approx(exact, rel=0.02), (res.capacity, exact)
    # The curve's points straddle the target around the capacity.
    assert any(p.mean <= target for p in res.curve) and any(p.mean > target for p in res.curve)


def test_capacity_command_compares_schedulers_and_logs_to_mlflow(tmp_path, capsys):
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from simsched.app.capacity import main

    out_dir = tmp_path / "cap"
    results = main(["--schedulers", "static_fifo,multi_bin_dynamic", "--replications", "2", "--rel-tol", "0.1",
                    "--out", str(out_dir), "workload=poisson", "workload.num_requests=1000", "sla.latency_s=10",
                    f"tracking.uri=sqlite:///{tmp_path}/cap.db", "tracking.experiment=cap"])
    text = capsys.readouterr().out
    assert list(results) == ["static_fifo", "multi_bin_dynamic"]
    for res in results.values():
        assert [r.target for r in res] == [0.01, 0.05]
        for r in res:
            assert r.status == "ok"
            means = {p.rate: p.mean for p in r.curve}
            assert means[r.bracket[0]] <= r.target < means[r.bracket[1]]
            assert r.bracket[1] - r.bracket[0] <= 0.1 * r.bracket[0] + 1e-12
    table = pd.read_csv(out_dir / "capacity.csv")
    assert len(table) == 4 and set(table["baseline"]) == {"static_fifo"}
    mb5 = table[(table["scheduler"] == "multi_bin_dynamic") & (table["target"] == 0.05)].iloc[0]
    sf5 = table[(table["scheduler"] == "static_fifo") & (table["target"] == 0.05)].iloc[0]
    assert mb5["ratio_vs_baseline"] == pytest.approx(mb5["capacity_rps"] / sf5["capacity_rps"])
    assert f"multi_bin_dynamic vs static_fifo @ 5% violation: {sf5['capacity_rps']:.3g} → " in text
    assert (out_dir / "curve.csv").is_file() and (out_dir / "violation_vs_rate.png").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path}/cap.db")
    (run,) = client.search_runs([client.get_experiment_by_name("cap").experiment_id])
    assert run.data.tags["simsched.kind"] == "capacity"
    assert run.data.metrics["capacity_static_fifo_5pct"] == pytest.approx(sf5["capacity_rps"])
    assert {"capacity.csv", "curve.csv", "violation_vs_rate.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_capacity_command_bad_input_is_one_line(tmp_path, capsys):
    from simsched.app.capacity import main

    with pytest.raises(SystemExit) as stop:
        main(["scheduler=nope", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: scheduler=nope: unknown option; allowed:")
    with pytest.raises(ConfigError, match="target"):
        main(["--targets", "0.05,1.5", "tracking=none", "--out", str(tmp_path)])


def test_pool_map_gives_the_same_violations_as_a_plain_loop():
    from simsched.capacity_search import pool_map

    cfg = compose(["workload=poisson", "workload.num_requests=300", "tracking=none", "sla.latency_s=5"])
    violation = simulated_violation(cfg)
    args = [(3.0, 0), (3.0, 1)]
    assert pool_map(2)(violation, args) == [violation(*a) for a in args]
