"""The all-reduce over Learners: 2 Learners on a sharded meta-batch equal 1 Learner on the whole of it.

What a wrong scale (a missing or extra 1/N) changes is the meta-gradient before clipping and the reported loss;
the weights after Adam and norm clipping barely move with it (both are nearly scale-invariant). So this compares,
at the same tasks and episodes (sampling is seeded per task job), the first outer step's ``meta/grad_norm``
(computed before clipping) and ``meta/outer_loss``, every parameter's ``.grad`` with clipping off, and the weights.
Public API only: ``MAMLConfig``, ``build_algo``, ``algo.train()`` metrics and ``LearnerGroup.foreach_learner``.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from ray.rllib.core import DEFAULT_MODULE_ID

from rllib_ext.algorithm import MAMLConfig


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never join a test's cluster
    yield
    ray.shutdown()


def run(num_learners: int) -> tuple[dict, list[dict]]:
    cfg = (
        MAMLConfig()
        .meta(task="navigation-2d", backbone="gru", width=8, meta_batch_size=4, episodes_per_task=2,
              outer_steps=2, dtype="float64")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
        .training(grad_clip=None)  # .grad after the update is the raw all-reduced meta-gradient
        .learners(num_learners=num_learners, num_cpus_per_learner=0.5 if num_learners else 1)
        .debugging(seed=0)
    )

    def grads_and_weights(learner):  # nested: shipped to the Learner actors by value
        module = learner.module[DEFAULT_MODULE_ID]
        return {n: (p.grad.detach().cpu().numpy().copy(), p.detach().cpu().numpy().copy())
                for n, p in module.named_parameters()}

    algo = cfg.build_algo()
    try:
        result = algo.train()
        per_learner = [r.get() for r in algo.learner_group.foreach_learner(grads_and_weights)]
    finally:
        algo.stop()
    return result, per_learner


@pytest.mark.timeout(300)
def test_two_learners_reduce_to_the_one_learner_meta_gradient_and_loss():
    one, (single,) = run(0)
    two, learners = run(2)
    assert len(learners) == 2
    assert one["env_steps"]["this_iter"] == two["env_steps"]["this_iter"] == 4 * 4 * 100
    assert two["adapt"]["return_step_0"] == pytest.approx(one["adapt"]["return_step_0"], rel=1e-12), "same episodes"
    # the scale of the meta-gradient before clipping (first outer step), then of the loss: at the first outer step
    # it is ~0 (ratio 1, normalised advantages), so its scale shows after the Adam step (outer_loss_last; a wrong
    # gradient scale moves that one by ~1e-7 only, Adam being almost scale-invariant)
    assert two["meta"]["grad_norm"] == pytest.approx(one["meta"]["grad_norm"], rel=1e-9), "gradient scale"
    assert one["meta"]["grad_norm"] > 1e-6
    assert two["meta"]["outer_loss"] == pytest.approx(one["meta"]["outer_loss"], rel=1e-9, abs=1e-12), "loss scale"
    assert two["meta"]["outer_loss_last"] == pytest.approx(one["meta"]["outer_loss_last"], rel=1e-9, abs=1e-12)
    assert two["meta"]["logp_mismatch"] < 1e-8  # every Learner rebuilds the θ' that sampled its shard
    for name, (grad, weight) in single.items():
        for i, other in enumerate(learners):
            np.testing.assert_allclose(other[name][0], grad, rtol=1e-8, atol=1e-12, err_msg=f"grad {name} learner {i}")
            np.testing.assert_allclose(other[name][1], weight, rtol=1e-9, atol=1e-12,
                                       err_msg=f"weight {name} learner {i}")
        np.testing.assert_array_equal(learners[0][name][1], learners[1][name][1], err_msg="learners drifted apart")
    assert sum(float(np.abs(g).sum()) for g, _ in single.values()) > 0
    # where the update's time went: parts of the driver's meta_update window (causality, not speed)
    for result, learners_ in ((one, 1), (two, 2)):
        meta, parts = result["meta"], ("time_prepare_s", "time_gradient_s", "time_allreduce_s")
        assert all(meta[k] >= 0 for k in parts) and meta["time_gradient_s"] > 0
        assert sum(meta[k] for k in parts) <= meta["time_learner_s"] <= result["time"]["meta_update_s"], learners_
    assert two["meta"]["time_allreduce_s"] > 0 and one["meta"]["time_allreduce_s"] < 1e-3  # no collective alone


def _reduce_worker(rank: int, init_file: str, out_file: str) -> None:  # one gloo rank (torch.multiprocessing.spawn)
    import torch
    import torch.distributed as dist

    from rllib_ext.learner import MAMLLearner

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        gen = torch.Generator().manual_seed(rank)
        params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5)),
                  torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
        params[0].grad = torch.randn(3, 4, generator=gen)
        params[2].grad = torch.randn(2, generator=gen, dtype=torch.float64)  # params[1]: no gradient on this rank
        if rank == 1:
            params[1].grad = torch.randn(5, generator=gen)
        loss = MAMLLearner._all_reduce(params, 0.1 * (rank + 1))
        torch.save({"loss": loss, "grads": [p.grad for p in params]}, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_one_collective_sums_every_gradient_and_the_loss_exactly(tmp_path):
    """``_all_reduce`` packs every gradient and the loss into one buffer: each tensor must come back as the sum of
    the two ranks' own tensors (float32 bit for bit, as float32's own sum), in its shape and dtype, a missing
    gradient as zeros, and the loss summed (a numpy oracle over the ranks' inputs)."""
    import torch
    import torch.multiprocessing as mp

    out = str(tmp_path / "out")
    mp.spawn(_reduce_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in (0, 1)]
    inputs = []
    for rank in (0, 1):
        gen = torch.Generator().manual_seed(rank)
        g0, g2 = torch.randn(3, 4, generator=gen), torch.randn(2, generator=gen, dtype=torch.float64)
        g1 = torch.randn(5, generator=gen) if rank == 1 else torch.zeros(5)
        inputs.append([g0, g1, g2])
    for rank in ranks:
        assert rank["loss"] == pytest.approx(0.1 + 0.2, rel=1e-15)
        for got, a, b in zip(rank["grads"], *inputs):
            assert got.dtype == a.dtype and got.shape == a.shape
            np.testing.assert_array_equal(got.numpy(), (a + b).numpy())
