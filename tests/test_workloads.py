"""Arrival processes and length distributions: moments and the BurstGPT quantiles."""
from __future__ import annotations

import numpy as np
import pytest

from simsched.errors import ConfigError
from simsched.predictor import Noisy, Oracle
from simsched.workloads import SyntheticWorkload
from simsched.workloads.arrivals import Gamma, OnOff, Poisson
from simsched.workloads.lengths import Bimodal, Empirical, Fixed, Lognormal, Uniform, Zipf

RNG = np.random.default_rng


def test_poisson_rate_and_exponential_gaps():
    t = Poisson(5.0).sample(200_000, RNG(0))
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.2, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)


def test_gamma_shape_scale_and_rate_cv_agree():
    a = Gamma(shape=0.5, scale=2.0)
    b = Gamma(shape=None, scale=None, rate=1.0, cv=2 ** 0.5)
    assert a.mean_rate == pytest.approx(1.0)  # BurstGPT's demo: mean gap 1 s, CV 1.41
    assert b.params == pytest.approx(a.params)
    gaps = np.diff(a.sample(200_000, RNG(1)))
    assert gaps.std() / gaps.mean() == pytest.approx(2 ** 0.5, rel=0.03)
    with pytest.raises(ConfigError, match="rate"):
        Gamma(rate=1.0, cv=None)


def test_onoff_mean_rate():
    p = OnOff(rate_on=20, rate_off=2, mean_on_s=5, mean_off_s=15)
    t = p.sample(200_000, RNG(2))
    assert len(t) / t[-1] == pytest.approx(p.mean_rate, rel=0.05)
    assert np.all(np.diff(t) >= 0)


def test_burstgpt_like_lengths_match_published_quantiles():
    prompt = Zipf(223, 1.5).sample(300_000, RNG(3))
    out = Bimodal(0.3, 40, 0.7, 337, 0.624).sample(300_000, RNG(4))
    assert np.percentile(prompt, [50, 95]) == pytest.approx([353, 1638], rel=0.03)
    assert np.percentile(out, [50, 95]) == pytest.approx([238, 841], rel=0.03)
    # bimodal: a short mode well below the long one
    hist, edges = np.histogram(np.log(out), bins=40)
    peaks = [i for i in range(1, 39) if hist[i] > hist[i - 1] and hist[i] >= hist[i + 1]]
    assert len(peaks) >= 2


@pytest.mark.parametrize("dist", [Fixed(7), Uniform(3, 9), Lognormal(50, 0.5), Zipf(10, 1.2, 500),
                                  Bimodal(), Empirical([5, 10, 20], [0.2, 0.3, 0.5])])
def test_lengths_are_positive_integers_in_range(dist):
    x = dist.sample(10_000, RNG(5))
    assert x.dtype == np.int64 and x.min() >= 1
    if isinstance(dist, Uniform):
        assert x.min() == 3 and x.max() == 9
    if isinstance(dist, Empirical):
        assert set(np.unique(x)) == {5, 10, 20}
        assert np.mean(x == 20) == pytest.approx(0.5, abs=0.02)


def test_workload_streams_are_independent_and_seeded():
    wl = SyntheticWorkload(Poisson(1.0), Fixed(10), Uniform(1, 100), 1000)
    a, b = wl.generate(RNG(7)), wl.generate(RNG(7))
    assert np.array_equal(a.arrival, b.arrival) and np.array_equal(a.output, b.output)
    wl2 = SyntheticWorkload(Poisson(2.0), Fixed(10), Uniform(1, 100), 1000)
    assert np.array_equal(wl2.generate(RNG(7)).output, a.output)  # changing λ keeps the lengths


def test_noisy_predictor_error_and_bin_flips():
    out = np.full(100_000, 100)
    pred = Noisy(sigma=0.5).predict(out, RNG(8))
    assert np.std(np.log(pred / out)) == pytest.approx(0.5, rel=0.03)
    assert np.array_equal(Oracle().predict(out, RNG(8)), out)
    bins = np.full(100_000, 2, dtype=np.int32)
    moved = Noisy(sigma=0.0, p_e=0.1).perturb_bins(bins, 4, RNG(9))
    assert np.mean(moved == 1) == pytest.approx(0.1, abs=0.01)
    assert np.mean(moved == 3) == pytest.approx(0.1, abs=0.01)
    edge = Noisy(sigma=0.0, p_e=0.2).perturb_bins(np.zeros(1000, dtype=np.int32), 4, RNG(9))
    assert edge.min() == 0 and edge.max() == 1


@pytest.mark.parametrize("build,key", [
    (lambda: Poisson(0.0), "rate"),
    (lambda: Poisson(-1.0), "rate"),
    (lambda: Uniform(10, 5), "high"),
    (lambda: Empirical([]), "values"),
    (lambda: SyntheticWorkload(Poisson(1), Fixed(1), Fixed(1), 0), "num_requests"),
    (lambda: Noisy(p_e=0.7), "p_e"),
])
def test_bad_values(build, key):
    with pytest.raises(ConfigError, match=key):
        build()
