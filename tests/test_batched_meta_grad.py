"""The batched meta-gradient (metarl.meta_batch) equals the per-task loop (metarl.rl.meta_gradient_loop).

Oracle: the loop, one task at a time with its own backward (itself checked against a hand-written reference and
finite differences in tests/test_maml_rllib.py). float64, rtol 1e-9 plus atol 1e-12, on tasks that differ in their
number of episodes and steps (so the padding is exercised), for first and second order and 1 and 2 inner steps;
then through the real Learner path with 2 Learners.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import init_ray_with_tests_on_path

from metarl import models
from metarl.meta_batch import meta_gradient_batched, pad_stack
from metarl.policy_net import PolicyNet, functional_log_prob
from metarl.rl import PreparedTask, advantages, meta_gradient_loop

OBS, ACT = 5, 2


def make_tasks(num_tasks: int, inner_steps: int, *, seed: int = 1, discrete: bool = False) -> list[PreparedTask]:
    """Tasks with 2-3 episodes of 6-8 steps (the last two steps of episode 0 masked out) per batch."""
    g = torch.Generator().manual_seed(seed)

    def batch(E: int, T: int) -> dict:
        mask = torch.ones(E, T)
        mask[0, T - 2 :] = 0.0  # an episode that ended early
        actions = torch.randint(0, ACT, (E, T), generator=g) if discrete else torch.randn(E, T, ACT, generator=g)
        b = dict(obs=torch.randn(E, T, OBS, generator=g), actions=actions, rewards=torch.randn(E, T, generator=g),
                 mask=mask, logp=torch.randn(E, T, generator=g) * 0.1 - 2.0)
        return {**b, "advantages": advantages(b, gamma=0.99)}

    tasks = []
    for i in range(num_tasks):
        E, T = 2 + i % 2, 6 + i % 3
        tasks.append(PreparedTask(tuple(batch(E, T) for _ in range(inner_steps)), batch(E + 1, T)))
    return tasks


def policy(backbone: str, *, discrete: bool = False) -> PolicyNet:
    torch.manual_seed(0)
    return PolicyNet(models.build(backbone, input_dim=OBS, output_dim=ACT, width=8), discrete=discrete)


def meta_grads(fn, net: PolicyNet, tasks, *, first_order: bool, num_tasks_total: int = 5):
    """Run ``fn`` (the loop or the batched version) from zero .grad; returns (loss, max Δlogp, grads by name)."""
    params = dict(net.named_parameters())
    for p in params.values():
        p.grad = None
    loss, dlogp = fn(lambda p, o, a: functional_log_prob(net, p, o, a)[0], params, tasks,
                     num_tasks_total=num_tasks_total, inner_lr=0.1, gamma=0.99, clip=0.3, first_order=first_order)
    return loss, dlogp, {n: p.grad.clone() for n, p in params.items()}


def assert_same(net, tasks, *, first_order: bool) -> None:
    loss_l, dlogp_l, ref = meta_grads(meta_gradient_loop, net, tasks, first_order=first_order)
    loss_b, dlogp_b, got = meta_grads(meta_gradient_batched, net, tasks, first_order=first_order)
    assert loss_b == pytest.approx(loss_l, rel=1e-12)
    assert dlogp_b == pytest.approx(dlogp_l, rel=1e-9, abs=1e-12)
    for name, g in ref.items():
        assert float(g.abs().sum()) > 0, f"{name} gets no meta-gradient: the oracle proves nothing for it"
        torch.testing.assert_close(got[name], g, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backbone", ["mlp", "gru", "lru"])
@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_batched_equals_loop(float64, backbone, inner_steps, first_order):
    assert_same(policy(backbone), make_tasks(3, inner_steps), first_order=first_order)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backbone", ["lstm", "ssm", "transformer"])
def test_batched_equals_loop_other_backbones(float64, backbone):
    assert_same(policy(backbone), make_tasks(3, 1), first_order=False)


@pytest.mark.timeout(60)
def test_batched_equals_loop_discrete_actions_and_one_task(float64):
    assert_same(policy("gru", discrete=True), make_tasks(3, 1, discrete=True), first_order=False)
    assert_same(policy("gru"), make_tasks(1, 2), first_order=False)


@pytest.mark.timeout(60)
def test_batched_accumulates_into_existing_grad(float64):
    """Like backward(): .grad += meta-gradient (the Learner zeroes .grad itself before each outer step)."""
    net, tasks = policy("gru"), make_tasks(2, 1)
    _, _, once = meta_grads(meta_gradient_batched, net, tasks, first_order=False)
    params = dict(net.named_parameters())
    for p in params.values():
        p.grad = torch.ones_like(p)
    meta_gradient_batched(lambda p, o, a: functional_log_prob(net, p, o, a)[0], params, tasks, num_tasks_total=5,
                          inner_lr=0.1, gamma=0.99, clip=0.3)
    for name, p in params.items():
        torch.testing.assert_close(p.grad, once[name] + 1.0, rtol=1e-12, atol=1e-14, msg=name)


def test_pad_stack_pads_with_masked_zeros():
    a = {"mask": torch.ones(2, 3), "obs": torch.ones(2, 3, 4)}
    b = {"mask": torch.ones(1, 5), "obs": torch.full((1, 5, 4), 2.0)}
    out = pad_stack([a, b], ("mask", "obs"))
    assert out["obs"].shape == (2, 2, 5, 4) and out["mask"].shape == (2, 2, 5)
    assert float(out["mask"][0].sum()) == 6.0 and float(out["mask"][1].sum()) == 5.0
    assert float(out["obs"][0, :, 3:].abs().sum()) == 0.0 and float(out["obs"][1, 1].abs().sum()) == 0.0


def test_bad_tasks_raise_naming_what_is_wrong():
    tasks = make_tasks(2, 1)
    with pytest.raises(ValueError, match="tasks is empty"):
        meta_gradient_batched(None, {}, [], num_tasks_total=1, inner_lr=0.1, gamma=0.99, clip=0.3)
    uneven = [tasks[0], make_tasks(1, 2)[0]]
    with pytest.raises(ValueError, match=r"same number of inner steps.*\[1, 2\]"):
        meta_gradient_batched(None, {}, uneven, num_tasks_total=2, inner_lr=0.1, gamma=0.99, clip=0.3)
    no_adv = PreparedTask(tasks[0].support, {k: v for k, v in tasks[0].query.items() if k != "advantages"})
    with pytest.raises(ValueError, match=r"tasks\[0\].query lacks \['advantages'\]"):
        meta_gradient_batched(None, {}, [no_adv], num_tasks_total=1, inner_lr=0.1, gamma=0.99, clip=0.3)


# --- through the real Learner path --------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_two_batched_learners_equal_one_learner_running_the_loop():
    """Same tasks, same episodes (sampling is seeded per job): 2 Learners (batched, sharded, all-reduced) move θ
    exactly as 1 Learner whose meta-gradient is the per-task loop."""
    import ray

    from rllib_ext.algorithm import MAMLConfig

    def cfg(num_learners: int):
        return (
            MAMLConfig()
            .meta(task="navigation-2d", backbone="gru", width=8, meta_batch_size=4, episodes_per_task=2,
                  outer_steps=2, dtype="float64")
            .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
            .learners(num_learners=num_learners, num_cpus_per_learner=0.5 if num_learners else 1)
            .debugging(seed=0)
        )

    def weights(algo) -> dict:
        state = algo.learner_group.get_weights()["default_policy"]
        return {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}

    init_ray_with_tests_on_path()
    try:
        loop_algo = cfg(0).build_algo()
        try:
            learner = loop_algo.learner_group._learner
            learner.meta_gradient = functools.partial(learner.meta_gradient, per_task_loop=True)  # the reference
            w0 = weights(loop_algo)
            loop_algo.train()
            w_loop = weights(loop_algo)
        finally:
            loop_algo.stop()
        algo = cfg(2).build_algo()
        try:
            algo.train()
            w_batched = weights(algo)
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    assert sum(float((w_loop[k] - w0[k]).abs().sum()) for k in w0) > 1e-6, "θ must move"
    for k in w_loop:
        torch.testing.assert_close(w_batched[k], w_loop[k], rtol=1e-9, atol=1e-11, msg=k)
