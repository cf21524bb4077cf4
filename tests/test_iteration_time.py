"""benchmarks/iteration_time.py: its modes run the meta-gradient they name, and its ratios pair the same round.

The first-order mode once changed the Learner's config, which the Algorithm overrides with the order it passes
to every meta-update (``first_order_until``), so it silently timed the second-order meta-gradient; here the real
Algorithm runs a round of each mode on a tiny navigation-2d config and the meta-gradient's calls are recorded.
"""

from __future__ import annotations

import argparse

import pytest
import ray
from conftest import init_ray_with_tests_on_path, load_benchmark

import rllib_ext.learner

it = load_benchmark("iteration_time")


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    init_ray_with_tests_on_path()
    yield
    ray.shutdown()


def tiny_args(**kw) -> argparse.Namespace:
    args = dict(task="navigation-2d", horizon=10, width=8, meta_batch_size=2, episodes_per_task=2, outer_steps=1,
                iterations=1, modes=["batched"], autograd_sequences=False, first_order=True)
    return argparse.Namespace(**{**args, **kw})


@pytest.mark.timeout(120)
def test_first_order_mode_runs_the_first_order_meta_gradient(monkeypatch):
    calls = []
    own = rllib_ext.learner.meta_gradient_batched

    def spy(*args, **kwargs):
        calls.append(kwargs["first_order"])
        return own(*args, **kwargs)

    monkeypatch.setattr(rllib_ext.learner, "meta_gradient_batched", spy)
    b = it.build("mlp", tiny_args())
    try:
        assert list(b["fns"]) == ["batched", "first-order"]
        for mode in b["fns"]:
            calls.clear()
            b["learner"].meta_gradient = b["fns"][mode]
            b["algo"].train()
            assert calls and all(c == (mode == "first-order") for c in calls), (mode, calls)
    finally:
        b["algo"].stop()


@pytest.mark.timeout(60)
def test_round_ratios_pair_iterations_of_the_same_round():
    # (iteration s, update s) per round; the ratio is taken round by round, not between the medians
    ref = {"rounds": {"batched": [(1.0, 0.2), (2.0, 0.4), (1.0, 0.2)]}}
    r = {"rounds": {"batched": [(1.5, 0.6), (2.0, 1.0), (3.0, 1.5)]}}
    median, ratios, share = it.round_ratios(r, ref, "batched")
    assert ratios == [1.5, 1.0, 3.0]
    assert median == 1.5  # the medians' ratio would be 2.0 / 1.0
    assert share == 0.5  # median of 0.4, 0.5, 0.5


@pytest.mark.timeout(60)
def test_bad_modes_name_the_flag_and_what_is_allowed():
    with pytest.raises(SystemExit, match="--modes 'batched,fast': allowed are loop, batched"):
        it.parse_modes("batched,fast")
