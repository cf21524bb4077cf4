"""The two-level bootstrap of metarl.apps.stats against a loop written out here, closed forms and coverage."""

from __future__ import annotations

import numpy as np
import pytest

from metarl.apps import stats


def loop_bootstrap(x: np.ndarray, rng: np.random.Generator, num: int) -> np.ndarray:
    """The same draws as the code under test, indexed and averaged one cell at a time."""
    s, t = x.shape
    seeds = rng.integers(0, s, size=(num, s))
    tasks = rng.integers(0, t, size=(num, s, t))
    out = np.empty(num)
    for b in range(num):
        total = 0.0
        for i in range(s):
            for j in range(t):
                total += x[seeds[b, i], tasks[b, i, j]]
        out[b] = total / (s * t)
    return out


def test_bootstrap_means_equal_a_written_out_loop():
    x = np.random.default_rng(3).normal(size=(3, 5))
    got = stats.bootstrap_means(x, rng=np.random.default_rng(7), num=50)
    want = loop_bootstrap(x, np.random.default_rng(7), 50)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_tasks_are_resampled_within_the_drawn_seed():
    # tasks are constant within each seed: a two-level draw averages whole seeds (means 0, 50, 100), while a flat
    # draw over the four cells would also give 25 and 75
    x = np.array([[0.0, 0.0], [100.0, 100.0]])
    means = stats.bootstrap_means(x, rng=np.random.default_rng(0), num=500)
    assert set(np.round(means, 9)) == {0.0, 50.0, 100.0}


def test_constant_values_give_a_point_interval():
    iv = stats.interval(np.full((3, 4), 2.5))
    assert (iv.mean, iv.low, iv.high) == (2.5, 2.5, 2.5)


def test_one_value_per_seed_is_a_seed_bootstrap():
    iv = stats.interval([1.0, 2.0, 3.0, 4.0])
    assert iv.mean == 2.5 and 1.0 <= iv.low < 2.5 < iv.high <= 4.0


def test_coverage_of_the_95_percent_interval_is_near_95_percent():
    rng = np.random.default_rng(11)
    hits = 0
    trials = 200
    for k in range(trials):
        seed_effect = rng.normal(0.0, 1.0, size=(8, 1))
        x = 5.0 + seed_effect + rng.normal(0.0, 1.0, size=(8, 10))  # true mean 5
        hits += not stats.interval(x, seed=k, num=400).excludes(5.0)
    assert 0.85 <= hits / trials <= 0.99, hits / trials


def test_within_noise_tells_a_real_difference_from_none():
    rng = np.random.default_rng(5)
    a = rng.normal(0.0, 1.0, size=(3, 20))
    assert stats.within_noise(a, rng.normal(0.0, 1.0, size=(3, 20)))
    assert not stats.within_noise(a, a + 10.0)
    d = stats.difference(a + 10.0, a)
    assert d.mean == pytest.approx(10.0) and d.low > 0


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.array([[1.0, np.nan]]), np.zeros((2, 2, 2))])
def test_bad_tables_are_refused(bad):
    with pytest.raises(ValueError):
        stats.interval(bad)


def test_level_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="level"):
        stats.interval([1.0, 2.0], level=95)
