"""Early stopping compares like with like: a real Tune sweep over two task families whose returns differ by 100x.

The trainable is a plain function (no RLlib: the scheduler is what is under test): trial quality q grows with the
seed, the family sets the scale (family "big" returns 100x family "small"), and every trial reports
``eval/return_step_1`` against an env-step clock. Trials run one at a time in grid order ("big" first), so the
decisions are deterministic. With one ASHA over the sweep the "small" trials are stopped at the first rung by the
"big" family's returns; with ``PerGroupASHA`` every trial meets only its own family and, since later seeds are
better, none is stopped.
"""

from __future__ import annotations

import math

import pytest
import ray
from conftest import init_ray_with_tests_on_path
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from tune_configs.schedulers import PerGroupASHA

SCALE = {"big": 100.0, "small": 1.0}
STEPS_PER_REPORT = 1000
REPORTS = 16
METRIC = "eval/return_step_1"


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    init_ray_with_tests_on_path()  # Tune's workers import this module's trainable
    yield
    ray.shutdown()


def trainable(config):
    q = 1.0 + config["seed"]  # later seeds are better
    for i in range(1, REPORTS + 1):
        fresh = i % 2 == 0  # an evaluation every other report; NaN in between (what RLlib logs when unlogged)
        value = SCALE[config["task"]] * q * i if fresh else math.nan
        tune.report({"env_steps": {"lifetime": i * STEPS_PER_REPORT}, "eval": {"return_step_1": value},
                     "task": config["task"]})


def run(scheduler, storage) -> dict[tuple[str, int], int]:
    """{(task, seed): env steps reached} of a sequential sweep under ``scheduler``."""
    tuner = tune.Tuner(
        trainable,
        param_space={"task": tune.grid_search(["big", "small"]), "seed": tune.grid_search([0, 1, 2])},
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler, max_concurrent_trials=1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0),
    )
    grid = tuner.fit()
    return {(r.config["task"], r.config["seed"]): int(r.metrics["env_steps"]["lifetime"]) for r in grid}


def asha_settings():
    return dict(time_attr="env_steps/lifetime", max_t=REPORTS * STEPS_PER_REPORT, grace_period=2 * STEPS_PER_REPORT,
                reduction_factor=2)


@pytest.mark.timeout(240)
def test_per_family_asha_never_stops_a_trial_because_of_another_familys_scale(tmp_path):
    full = REPORTS * STEPS_PER_REPORT
    per_family = run(PerGroupASHA(group_by="task", **asha_settings()), tmp_path / "per_family")
    assert per_family == {(t, s): full for t in SCALE for s in range(3)}  # nobody stopped: later seeds are better
    single = run(ASHAScheduler(brackets=1, **asha_settings()), tmp_path / "single")  # today's single scheduler over the whole sweep
    assert all(single[("big", s)] == full for s in range(3))
    assert all(single[("small", s)] < full for s in range(3))  # stopped by the other family's returns


def test_results_without_a_finite_metric_or_clock_never_reach_a_rung():
    sched = PerGroupASHA(metric=METRIC, mode="max", **asha_settings())
    base = {"env_steps/lifetime": 5000.0, METRIC: 1.0}
    assert sched._acts_on(base)
    for bad in ({METRIC: math.nan}, {METRIC: None}, {"env_steps/lifetime": math.nan}, {METRIC: True}):
        assert not sched._acts_on({**base, **bad}), bad
    assert not sched._acts_on({"env_steps/lifetime": 5000.0})
    fresh_only = PerGroupASHA(metric=METRIC, mode="max", fresh_attr="eval/fresh", **asha_settings())
    assert not fresh_only._acts_on(base) and fresh_only._acts_on({**base, "eval/fresh": 1.0})


@pytest.mark.parametrize("kwargs, field", [(dict(max_t=10, grace_period=20), "grace_period"),
                                           (dict(max_t=10, grace_period=0), "grace_period"),
                                           (dict(max_t=10, grace_period=5, reduction_factor=1), "reduction_factor")])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PerGroupASHA(**kwargs)
