"""`metarl evaluate` and `rllib_ext.policy.load_policy` on a tiny checkpoint: per-step table, act, adapt (against a
hand-written gradient step), bad checkpoints. Ray is only needed to train the checkpoint (one session per module).
"""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import ray
import torch

from metarl import tasks
from metarl.apps import flags, run_loop
from metarl.rl import adapt_policy, advantages, vpg_loss
from rllib_ext.policy import load_policy

TINY = ["--task", "navigation-2d", "--backbone", "gru", "--width", "16", "--meta-batch-size", "2",
        "--episodes-per-task", "2", "--num-envs-per-runner", "2", "--outer-steps", "1", "--horizon", "10"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        args = flags.add_arguments(argparse.ArgumentParser()).parse_args([*TINY, "--out", str(out),
                                                                             "--iterations", "1"])
        run_loop.run(args, echo=lambda s: None)
    finally:
        ray.shutdown()
    return out


@pytest.mark.timeout(180)
def test_evaluate_steps_are_consistent_across_adapt_steps(run_dir):
    from metarl.apps.evaluate import evaluate

    two = evaluate(run_dir, adapt_steps=2, episodes=2, num_tasks=2)
    zero = evaluate(run_dir / "checkpoints" / "checkpoint_000001", adapt_steps=0, episodes=2, num_tasks=2)
    assert [s["k"] for s in two["steps"]] == [0, 1, 2]
    # the same seeds give the same support_0 episodes, whatever the number of later steps
    assert zero["steps"][0]["return_mean"] == two["steps"][0]["return_mean"]
    for k, s in enumerate(two["steps"]):
        rets = np.array([t["returns"][k] for t in two["per_task"]])  # (tasks, episodes)
        assert s["return_mean"] == pytest.approx(rets.mean())
        assert s["return_std_tasks"] == pytest.approx(rets.mean(1).std())
        assert s["env_steps"] == sum(t["env_steps"][k] for t in two["per_task"])
        assert 2 * 2 <= s["env_steps"] <= 2 * 2 * 10  # tasks x episodes x [1, horizon]
    assert two["steps"][2]["env_steps_cumulative"] == sum(s["env_steps"] for s in two["steps"])
    # the held-out tasks, not training tasks
    test = tasks.make("navigation-2d").unwrapped.test_tasks(2, seed=1)
    assert [t["task"] for t in two["per_task"]] == [np.asarray(t.as_array()).tolist() for t in test]
    # adapting changes the policy: some step-1 episodes differ from step-0 ones
    assert any(t["returns"][0] != t["returns"][1] for t in two["per_task"])


@pytest.mark.timeout(180)
def test_metarl_evaluate_cli_prints_table_and_writes_json(run_dir, tmp_path, capsys):
    from metarl.apps import cli

    out = tmp_path / "eval.json"
    rc = cli.main(["evaluate", "--checkpoint", str(run_dir), "--adapt-steps", "1", "--episodes", "2",
                   "--num-tasks", "2", "--out", str(out)])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.strip().startswith("step k"))
    assert [ln.split()[0] for ln in lines[header + 1: header + 3]] == ["0", "1"]
    res = json.loads(out.read_text())
    assert res["adapt_steps"] == 1 and len(res["steps"]) == 2
    assert res["provenance"]["versions"]["torch"] and res["provenance"]["config"]["task"] == "navigation-2d"
    assert res["provenance"]["seeds"] == {"seed": 0, "test_seed": 1}


@pytest.mark.timeout(120)
def test_load_policy_acts_and_adapts_like_a_hand_written_inner_step(run_dir):
    policy = load_policy(run_dir)
    env = tasks.make("navigation-2d", max_episode_steps=10)
    env.unwrapped.task = env.unwrapped.test_tasks(1)[0]
    obs, _ = env.reset(seed=0)
    a, state = policy.act(obs)
    assert a.shape == env.action_space.shape and set(state) == {"h"}
    mean, _ = policy.act(np.stack([obs, obs]), explore=False)
    with torch.no_grad():
        y, _ = policy.net(torch.as_tensor(obs[None], dtype=torch.float32))
    np.testing.assert_allclose(mean, y[:, :2].expand(2, 2).numpy(), rtol=1e-5, atol=1e-7)

    support = policy.sample_episodes(env, 4, seed=0)
    assert support.num_episodes == 4 and support.num_steps >= 4
    theta = {k: v.detach().clone() for k, v in policy.params.items()}
    # oracle: θ' = θ - α ∇θ L_inner through the module's own log_prob (not functional_call)
    batch = support.tensors(torch.float32)
    adv = advantages(batch, gamma=policy.gamma)
    net = policy.net
    loss = vpg_loss(net.dist_log_prob(net(batch["obs"])[0], batch["actions"]), adv, batch["mask"])
    names = list(theta)
    grads = torch.autograd.grad(loss, [policy.params[n] for n in names], allow_unused=True)
    want = {n: theta[n] - policy.inner_lr * (g if g is not None else 0) for n, g in zip(names, grads)}
    losses = policy.adapt(support)
    assert losses == [pytest.approx(float(loss.detach()))]
    for n in names:
        torch.testing.assert_close(policy.params[n].detach(), want[n], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(policy.params[n].detach(), theta[n]) for n in names)
    # θ' lives in the policy, not in the module: the module keeps θ; the policy acts with θ'
    for n, p in net.named_parameters():
        assert torch.equal(p.detach(), theta[n]), n
    with torch.no_grad():
        y_adapted, _ = torch.func.functional_call(net, policy.params, (torch.as_tensor(obs[None]),))
    np.testing.assert_allclose(policy.act(obs, explore=False)[0], y_adapted[0, :2].numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(policy.act(obs, explore=False)[0], mean[0])
    # ... and it is exactly metarl.rl.adapt_policy (what the EnvRunner runs)
    from metarl.policy_net import functional_log_prob

    theta_t = {n: v.clone().requires_grad_() for n, v in theta.items()}
    direct, _ = adapt_policy(lambda p, o, a: functional_log_prob(net, p, o, a)[0], theta_t, [batch],
                             lr=policy.inner_lr, gamma=policy.gamma, first_order=True)
    for n in names:
        torch.testing.assert_close(policy.params[n].detach(), direct[n].detach())
    with pytest.raises(ValueError, match="2 episode batches given but steps = 1"):
        policy.adapt([support, support], steps=1)
    policy.reset()
    for n in names:
        assert torch.equal(policy.params[n].detach(), theta[n])


def test_bad_checkpoints_give_clear_errors(run_dir, tmp_path):
    from metarl.apps.evaluate import evaluate

    with pytest.raises(ValueError, match="does not exist"):
        load_policy(tmp_path / "nope")
    with pytest.raises(ValueError, match="does not exist"):
        evaluate(tmp_path / "nope", adapt_steps=1, episodes=2, num_tasks=1)
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "checkpoints" / "checkpoint_000001", broken)
    (broken / "algorithm_state.pkl").unlink()
    with pytest.raises(ValueError, match=r"incomplete or corrupt: missing \['algorithm_state.pkl'\]"):
        load_policy(broken)
    garbage = tmp_path / "garbage"
    shutil.copytree(run_dir / "checkpoints" / "checkpoint_000001", garbage)
    (garbage / "learner_group/learner/rl_module/default_policy/module_state.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"cannot load the policy module|module_state.pkl is corrupt"):
        load_policy(garbage)
    with pytest.raises(ValueError, match="episodes = 0 must be an integer >= 1"):
        evaluate(run_dir, adapt_steps=1, episodes=0, num_tasks=1)
