"""Trial memory's batched meta-gradient (``metarl.meta_batch.trial_meta_gradient_batched``) equals the per-task loop.

Oracle: ``metarl.trial.trial_meta_gradient_loop``, one task at a time, one step at a time through the layout with
masks (itself checked against a hand-written per-env reference in tests/test_trial_meta_grad.py). float64, rtol
1e-9 plus atol 1e-12, on trials sampled by ``sample_trial`` where one sub-env ends its episodes early by a
different number of steps in each task (so the compaction, the cuts at every env's length and the padding across
tasks are exercised); gru and lru, 1 and 2 inner steps, first and second order; then RL² inputs off, the LVC
inner objective, RL² itself (no inner step), the mlp ablation, Discrete actions (bandit) and the other backbones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_trial_sampler import EndsEarly, make_net

import metarl.tasks as T
from metarl.meta_batch import trial_meta_gradient_batched
from metarl.trial import compact_trial, prepare_trial_task, sample_trial, trial_meta_gradient_loop

LR, GAMMA, CLIP, N_TASKS = 0.3, 0.9, 0.2, 3


def task_envs(name: str, i: int) -> list:
    """Task i's sub-envs; on navigation-2d the second ends every episode after 1, 2 or 3 of the 4 steps."""
    if name == "bandit":
        envs = [T.make("bandit", task_seed=i) for _ in range(2)]
    else:
        envs = [T.make("navigation-2d", horizon=4), EndsEarly(T.make("navigation-2d", horizon=4), 1 + i % 3),
                T.make("navigation-2d", horizon=4)]
    task = envs[0].unwrapped.test_tasks(N_TASKS)[i]
    for env in envs:
        env.unwrapped.task = task
    return envs


def sampled_tasks(backbone: str, inner_steps: int, *, name: str = "navigation-2d", trial_inputs: bool = True,
                  objective: str = "vpg"):
    """(net, tasks as the Learner prepares them, sub-envs per task) of N_TASKS trials, each from its own seed."""
    net = make_net(task_envs(name, 0), backbone, trial_inputs)
    tasks = []
    for i in range(N_TASKS):
        envs = task_envs(name, i)
        batches, _, _ = sample_trial(envs, net, inner_steps=inner_steps, num_episodes=2 * len(envs), seed=10 + i,
                                     lr=LR, gamma=GAMMA, objective=objective)
        tasks.append(prepare_trial_task(batches[:-1], batches[-1], len(envs), dtype=torch.float64, device="cpu",
                                        gamma=GAMMA))
    return net, tasks, len(envs)


def meta_grads(fn, net, tasks, n, *, first_order, objective="vpg"):
    """``fn`` (the loop or the batched version) from a .grad holding 1 (so accumulation is checked too)."""
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    loss, dlogp = fn(net, dict(net.named_parameters()), tasks, num_envs=n, num_tasks_total=5, inner_lr=LR, clip=CLIP,
                     first_order=first_order, objective=objective)
    return loss, dlogp, {k: p.grad.clone() for k, p in net.named_parameters()}


def assert_batched_equals_loop(net, tasks, n, *, first_order, objective="vpg"):
    loss, dlogp, grads = meta_grads(trial_meta_gradient_loop, net, tasks, n, first_order=first_order,
                                    objective=objective)
    b_loss, b_dlogp, b_grads = meta_grads(trial_meta_gradient_batched, net, tasks, n, first_order=first_order,
                                          objective=objective)
    np.testing.assert_allclose(b_loss, loss, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b_dlogp, dlogp, rtol=1e-9, atol=1e-12)
    assert dlogp < 1e-10  # the query replayed from the carried state is the one sampled
    for k, g in grads.items():
        torch.testing.assert_close(b_grads[k], g, rtol=1e-9, atol=1e-12, msg=k)
    assert all(float((g - 1).abs().sum()) > 0 for g in grads.values()), "every parameter gets a meta-gradient"


def test_tasks_have_padding_and_differ_in_their_lengths():
    net, tasks, n = sampled_tasks("gru", 1)
    lengths = [tuple(c["lengths"].tolist()) for t in tasks for c in compact_trial(net, t, n)]
    assert all(min(ls) < max(ls) for ls in lengths), lengths  # an env with padded steps in every phase
    assert len({ls[1] for ls in lengths}) == N_TASKS  # the early env's length differs across tasks


@pytest.mark.parametrize("backbone", ["gru", "lru"])
@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_batched_trial_meta_gradient_equals_the_loop(backbone, inner_steps, first_order):
    net, tasks, n = sampled_tasks(backbone, inner_steps)
    assert_batched_equals_loop(net, tasks, n, first_order=first_order)


@pytest.mark.parametrize(
    "backbone, inner_steps, name, trial_inputs, objective",
    [
        ("gru", 1, "navigation-2d", False, "vpg"),  # state carried, no RL² inputs
        ("lru", 1, "navigation-2d", True, "lvc"),
        ("gru", 0, "navigation-2d", True, "vpg"),  # RL²: the query phase only
        ("mlp", 1, "navigation-2d", True, "vpg"),  # stateless: memory through the inputs only
        ("gru", 1, "bandit", True, "vpg"),  # Discrete actions (one-hot previous action), horizon 1
        ("lstm", 1, "navigation-2d", True, "vpg"),  # the other backbones: dict state (lstm), windowed transformer
        ("ssm", 1, "navigation-2d", True, "vpg"),
        ("transformer", 1, "navigation-2d", True, "vpg"),
    ],
)
def test_batched_trial_meta_gradient_equals_the_loop_variants(backbone, inner_steps, name, trial_inputs, objective):
    net, tasks, n = sampled_tasks(backbone, inner_steps, name=name, trial_inputs=trial_inputs, objective=objective)
    assert_batched_equals_loop(net, tasks, n, first_order=False, objective=objective)
