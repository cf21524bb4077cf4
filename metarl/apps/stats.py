"""Intervals for comparing methods: a two-level bootstrap over (seed x held-out task), and "within noise".

A number in a comparison table is a mean over seeds (independent trainings) and held-out tasks (independent
evaluations of each trained policy). Its uncertainty has both sources, so the bootstrap resamples both: seeds with
replacement, then, within each drawn seed, tasks with replacement::

    for b in 1..B:  s* ~ seeds (with replacement);  for each s in s*: t* ~ tasks (with replacement)
                    m_b = mean over (s, t*) of x[s, t]
    interval = the (α/2, 1 - α/2) percentiles of {m_b}

Two methods differ beyond noise when the same resampling of their difference of means excludes 0 (each method's
seeds and tasks resampled independently: different methods are different trainings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: bootstrap draws; 2,000 keeps the percentile error of a 95% interval well below the interval's width
NUM_BOOTSTRAP = 2000


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        return not self.low <= value <= self.high


def _as_table(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]  # one value per seed
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected values shaped (seeds, tasks), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("values must be finite (a NaN would make every interval NaN)")
    return a


def bootstrap_means(x, *, rng: np.random.Generator, num: int = NUM_BOOTSTRAP) -> np.ndarray:
    """``num`` two-level bootstrap means of ``x`` (seeds, tasks): seeds resampled, then tasks within each seed."""
    a = _as_table(x)
    s, t = a.shape
    seeds = rng.integers(0, s, size=(num, s))  # (B, S)
    tasks = rng.integers(0, t, size=(num, s, t))  # (B, S, T)
    return a[seeds[..., None], tasks].mean(axis=(1, 2))  # (B,)


def interval(x, *, level: float = 0.95, seed: int = 0, num: int = NUM_BOOTSTRAP) -> Interval:
    """The mean of ``x`` (seeds, tasks) and its two-level bootstrap percentile interval."""
    if not 0 < level < 1:
        raise ValueError(f"level = {level} must be in (0, 1)")
    a = _as_table(x)
    means = bootstrap_means(a, rng=np.random.default_rng(seed), num=num)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(a.mean()), float(lo), float(hi))


def difference(x, y, *, level: float = 0.95, seed: int = 0, num: int = NUM_BOOTSTRAP) -> Interval:
    """mean(x) - mean(y) with its interval; x and y are independent trainings (resampled independently)."""
    rng = np.random.default_rng(seed)
    d = bootstrap_means(x, rng=rng, num=num) - bootstrap_means(y, rng=rng, num=num)
    lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(_as_table(x).mean() - _as_table(y).mean()), float(lo), float(hi))


def within_noise(x, y, *, level: float = 0.95, seed: int = 0) -> bool:
    """True when the interval of mean(x) - mean(y) contains 0."""
    return not difference(x, y, level=level, seed=seed).excludes(0.0)
