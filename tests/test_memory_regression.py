"""Regression: ``memory="episode"`` (each episode starts from the initial recurrent state) must keep giving the
episodes, metrics and meta-gradient recorded in ``tests/data/episode_memory_navigation2d.npz`` (float64, 1e-10).

The fixture was recorded before trial memory existed. Re-record it (``METARL_RECORD_FIXTURE=1 pytest
tests/test_memory_regression.py``) only when a change is MEANT to change episodes or gradients (e.g. a new
meta-update or a new MuJoCo pin), and say so in the commit.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import ray
import torch
from conftest import init_ray_with_tests_on_path

from rllib_ext.algorithm import MAMLConfig
from rllib_ext.jobs import TaskJob
from rllib_ext.rllib_internals import local_learner

FIXTURE = pathlib.Path(__file__).parent / "data" / "episode_memory_navigation2d.npz"
RECORD = os.environ.get("METARL_RECORD_FIXTURE") == "1"
#: metrics of one training iteration that do not depend on wall time
METRIC_KEYS = ("adapt/return_step_0", "adapt/return_step_1", "adapt/gain", "inner/loss", "env_steps/this_iter",
               "outer_loss", "grad_norm")
BATCH_FIELDS = ("obs", "actions", "rewards", "mask", "logp")


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    init_ray_with_tests_on_path()
    yield
    ray.shutdown()


def config(backbone: str) -> MAMLConfig:
    return (
        MAMLConfig()
        .meta(task="navigation-2d", backbone=backbone, width=8, meta_batch_size=2, episodes_per_task=4,
              inner_steps=1, outer_steps=1, dtype="float64", horizon=10)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
        .debugging(seed=0)
    )


def flat_metrics(result: dict) -> dict[str, float]:
    """Every numeric leaf of a nested result dict, keyed "a/b/c"."""
    out = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in flat_metrics(value).items()})
        elif isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def pick(metrics: dict[str, float], name: str) -> float:
    hits = [v for k, v in metrics.items() if k == name or k.endswith("/" + name)]
    assert hits, f"metric {name} not in the result: {sorted(metrics)}"
    return hits[0]


def record(backbone: str) -> dict[str, np.ndarray]:
    """Episodes of one task job (support + query), the Learner's meta-gradient on them, then one training
    iteration's metrics and the parameters after it."""
    cfg = config(backbone)
    algo = cfg.build_algo()
    try:
        runner, learner = algo.env_runner_group.local_env_runner, local_learner(algo.learner_group)
        net = learner.policy.net
        out = {f"theta0/{n}": p.detach().numpy().copy() for n, p in net.named_parameters()}
        task = runner.env.unwrapped.envs[0].unwrapped.sample_tasks(1, seed=3)[0]
        res = runner.run_task(TaskJob(task=task, task_index=0, iteration=0, seed=3, inner_steps=1,
                                      episodes_per_task=4, return_params=True))
        for k, batch in enumerate(res.batches):
            out.update({f"batch{k}/{f}": getattr(batch, f) for f in BATCH_FIELDS})
        out.update({f"adapted/{n}": v.numpy() for n, v in res.adapted_params[0].items()})
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        loss, _ = learner.meta_gradient(learner.prepare([res]), num_tasks_total=1)
        out["meta_loss"] = np.array(loss)
        out.update({f"grad/{n}": p.grad.numpy().copy() for n, p in net.named_parameters()})
        metrics = flat_metrics(algo.train())
        out.update({f"metric/{m}": np.array(pick(metrics, m)) for m in METRIC_KEYS})
        out.update({f"theta1/{n}": p.detach().numpy().copy() for n, p in net.named_parameters()})
        return out
    finally:
        algo.stop()


@pytest.mark.timeout(240)
def test_episode_memory_reproduces_the_recorded_episodes_metrics_and_gradients():
    got = {f"{backbone}/{k}": v for backbone in ("gru", "mlp") for k, v in record(backbone).items()}
    if RECORD:
        FIXTURE.parent.mkdir(exist_ok=True)
        np.savez_compressed(FIXTURE, **got)
        pytest.skip(f"recorded {FIXTURE.name}")
    want = dict(np.load(FIXTURE))
    assert sorted(got) == sorted(want), "the recorded quantities changed: re-record the fixture on purpose"
    for key in sorted(want):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-10, err_msg=key)
