"""The default precision (float32) against float64: the second-order meta-gradient of recurrent backbones on CPU,
and the log-prob mismatch of a float32 run with remote EnvRunners.

The oracle tests of the meta-gradient run in float64; runs use float32, where torch picks its own CPU kernels for
``nn.GRU`` / ``nn.LSTM`` (oneDNN or native) and their double backward. Here the same weights and episodes give the
same meta-gradient in both precisions (rtol 1e-3, atol 1e-6), on the fused path and on the explicit cell path.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
from torch import nn

from metarl import models
from metarl.rl import adapt_policy, diag_gaussian_log_prob, outer_loss
from rllib_ext.algorithm import MAMLConfig

OBS_DIM, ACT_DIM, T = 2, 2, 50


class GaussianPolicy(nn.Module):
    """A backbone's output is μ; log σ is a free parameter (the layout of the project's policy module)."""

    def __init__(self, backbone: str, use_fused: bool):
        super().__init__()
        self.backbone = models.build(backbone, input_dim=OBS_DIM, output_dim=ACT_DIM, width=16, use_fused=use_fused)
        self.log_std = nn.Parameter(torch.full((ACT_DIM,), -0.5))

    def forward(self, obs):
        mean, _ = self.backbone(obs, self.backbone.init_hidden(obs.shape[0], dtype=obs.dtype))
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)


def episodes(seed: int, lengths=(50, 50, 31)) -> dict[str, np.ndarray]:
    """Navigation-like episodes: positions in [-0.5, 0.5]², rewards = -distance to a goal, padded after the end."""
    rng = np.random.default_rng(seed)
    E = len(lengths)
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.float64)
    actions = rng.normal(0.0, 0.1, size=(E, T, ACT_DIM))
    obs = np.cumsum(np.clip(actions, -0.1, 0.1), axis=1) - np.clip(actions, -0.1, 0.1)
    rewards = -np.linalg.norm(obs + np.clip(actions, -0.1, 0.1) - np.array([0.3, -0.2]), axis=-1)
    return {"obs": obs * mask[..., None], "actions": actions * mask[..., None], "rewards": rewards * mask,
            "mask": mask}


def meta_gradient(policy: nn.Module, support: dict, query: dict, dtype: torch.dtype, *, first_order=False):
    """∇θ L_outer(θ'(θ)) with θ' one second-order inner step: metarl.rl's functions in the given precision."""
    policy = policy.to(dtype)
    params = dict(policy.named_parameters())

    def log_prob(p, obs, actions):
        return diag_gaussian_log_prob(torch.func.functional_call(policy, p, (obs,)), actions)

    def tensors(batch):
        return {k: torch.tensor(v, dtype=dtype) for k, v in batch.items()}

    adapted, _ = adapt_policy(log_prob, params, [tensors(support)], lr=0.1, gamma=0.99, first_order=first_order)
    loss, _ = outer_loss(log_prob, adapted, tensors(query), gamma=0.99, clip=0.3)
    grads = torch.autograd.grad(loss, list(params.values()))
    return {n: g.detach().double() for n, g in zip(params, grads)}


@pytest.mark.parametrize("use_fused", [True, False], ids=["fused", "cell"])
@pytest.mark.parametrize("backbone", ["gru", "lstm"])
def test_float32_second_order_meta_gradient_equals_float64(backbone, use_fused):
    torch.manual_seed(0)
    policy = GaussianPolicy(backbone, use_fused).double()
    support, query = episodes(1), episodes(2)
    # logp_old = the float64 adapted policy's log-probs (as if it had sampled the query episodes): ratio 1
    fn = lambda p, o, a: diag_gaussian_log_prob(torch.func.functional_call(policy, p, (o,)), a)  # noqa: E731
    sup64 = {k: torch.tensor(v) for k, v in support.items()}
    adapted, _ = adapt_policy(fn, dict(policy.named_parameters()), [sup64], lr=0.1, gamma=0.99, first_order=True)
    with torch.no_grad():
        query["logp"] = fn(adapted, torch.tensor(query["obs"]), torch.tensor(query["actions"])).numpy()

    g64 = meta_gradient(policy, support, query, torch.float64)
    g32 = meta_gradient(policy, support, query, torch.float32)
    first = meta_gradient(policy, support, query, torch.float64, first_order=True)
    for name in g64:
        torch.testing.assert_close(g32[name], g64[name], rtol=1e-3, atol=1e-6, msg=name)
    # the comparison covers the second-order term: it exceeds the tolerance many times over (measured: ~69x)
    hessian_term = max(float(((g64[n] - first[n]).abs() / (1e-6 + 1e-3 * g64[n].abs())).max()) for n in g64)
    assert hessian_term > 10.0, hessian_term
    assert policy.backbone.fused_for(torch.zeros(1, 1, OBS_DIM)) == use_fused


# ---- the default run: float32, remote EnvRunners --------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.timeout(300)
def test_float32_run_with_remote_runners_reproduces_the_sampling_log_probs(ray_session):
    """``meta/logp_mismatch``: max |log π_θ'(a|s) recomputed by the Learner − log π recorded by the remote runner|.
    Below 1e-4 in float32 at every iteration: the Learner rebuilds the θ' that sampled, and after each update the
    runners sample with the new θ (iteration 2 would show a stale θ). GRU: the runner steps it one observation at a
    time, the Learner runs whole sequences."""
    cfg = (
        MAMLConfig()
        .meta(task="navigation-2d", backbone="gru", width=16, meta_batch_size=2, episodes_per_task=2,
              outer_steps=2)
        .env_runners(num_env_runners=1, num_envs_per_env_runner=2, num_cpus_per_env_runner=0.5)
        .debugging(seed=0)
    )
    assert cfg.dtype == "float32"
    algo = cfg.build_algo()
    try:
        for _ in range(2):
            r = algo.train()
            assert r["meta"]["logp_mismatch"] < 1e-4, r["meta"]
            assert r["meta"]["grad_norm"] > 0.0
    finally:
        algo.stop()
