"""Env steps/s of the MAML sampler vs raw gymnasium, vs its previous version and vs RLlib's stock EnvRunner.

How to run::

    .venv/bin/python benchmarks/sampler_throughput.py                    # ~1 CPU-min, ~2 min wall on a busy 2-core VM
    .venv/bin/python benchmarks/sampler_throughput.py --num-envs 1 32 --repeats 1 --min-steps 400   # quick look
    .venv/bin/python benchmarks/sampler_throughput.py --profile-only     # just the profile split at 32 envs
    .venv/bin/python benchmarks/sampler_throughput.py --num-envs 1 32 --repeats 21 --min-steps 1000 --no-stock \
        --no-profile                                                      # ours vs the frozen old sampler

What it measures, in one process on one core (``torch.set_num_threads(1)``, the process pinned to one CPU when the
OS allows), as env steps per CPU-second of this process (``time.process_time``; the machine is shared, so wall
time would measure the neighbours):

- ``raw``: one gymnasium env of the task (``metarl.tasks.make``: TimeLimit, OrderEnforcing, PassiveEnvChecker)
  stepped with pre-generated uniform actions, reset when an episode ends. The ceiling per core.
- ``ours``: ``MAMLEnvRunner.sample_episodes`` (built in-process, ``num_env_runners=0``), whole episodes, the SSM
  backbone acting, ``num_envs_per_env_runner`` sub-envs: the core sampler (``metarl.sampler``) acting with
  parameters passed in (``functional_call``).
- ``old``: a frozen copy of the sampler before it moved to ``metarl.sampler`` (one 155-line method calling the
  module directly; ``old_sample_episodes`` below), same runner, same weights. It must give the same episodes (checked
  once per env count), and ours must keep its speed: ours/raw >= 0.97 x old/raw.
- ``stock``: RLlib's ``SingleAgentEnvRunner.sample(num_timesteps=...)`` with the same module class and weights
  (its default connector pipelines), same number of sub-envs.

The four are interleaved ``--repeats`` times per env count; the medians and their ratios are printed. Then a
profile split at 32 envs (cProfile: physics = MuJoCo's C calls; env = task env + gymnasium wrappers + vector env
in Python; connectors = RLlib's ConnectorV2 pipelines; module = the RLModule forward; loop = the rest of the
sampler) and the module-forward share of our sampler timed in place without a profiler.

What to expect (2-core shared AMD EPYC VM, mujoco 4.0.0, HalfCheetah-vel, SSM width 64; raw ~24-25 k steps/s):
ours/raw 0.19 (1 env), 0.57 (8), 0.70 (32), 0.57 (128); stock/raw 0.03 / 0.13 / 0.21 / 0.27; ours/stock 5.9x,
4.5x, 3.3x, 2.1x. Module forward ~11% of our sampler's time at 32 envs (~14% at width 128). ~2 min wall.
Ours vs old (2026-12-01, mujoco 3.3.0, loaded machine, ``--num-envs 1 32 --repeats 21 --min-steps 1000 --no-stock
--no-profile``): ours/old 1.000 at 1 env, 0.993 at 32 envs; single runs scatter by ±5-10% under load.
Debug in-process: ``from sampler_throughput import build_runner, time_ours``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

from metarl import tasks
from metarl.policy_net import PolicyNet
from metarl.rl import EpisodeBatch
from metarl.sampler import derive_seed
from rllib_ext.algorithm import MAMLConfig
from rllib_ext.runner import MAMLEnvRunner


def make_config(*, task: str, backbone: str, width: int, num_envs: int, episodes: int) -> MAMLConfig:
    cfg = (
        MAMLConfig()
        .meta(task=task, backbone=backbone, width=width, episodes_per_task=episodes)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs)
        .debugging(seed=0)
    )
    cfg.validate()
    return cfg


def build_runner(cls, *, task: str, backbone: str, width: int, num_envs: int, episodes: int):
    return cls(config=make_config(task=task, backbone=backbone, width=width, num_envs=num_envs, episodes=episodes))


def time_raw(task: str, *, steps: int, seed: int = 0) -> float:
    """Steps per CPU-second of one gymnasium env with pre-generated actions."""
    env = tasks.make(task)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(steps)]
    env.reset(seed=seed)
    t0 = time.process_time()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    return steps / (time.process_time() - t0)


def time_ours(runner: MAMLEnvRunner, *, episodes: int, seed: int) -> float:
    """As ``run_task`` samples: with a dict of parameters (θ_k), acted with through ``functional_call``."""
    params = {k: p.detach() for k, p in runner.module.net.named_parameters()}
    t0 = time.process_time()
    batch = runner.sample_episodes(episodes, seed=seed, params=params)
    return batch.num_steps / (time.process_time() - t0)


def time_old(runner: MAMLEnvRunner, *, episodes: int, seed: int) -> float:
    t0 = time.process_time()
    batch = old_sample_episodes(runner, episodes, seed=seed)
    return batch.num_steps / (time.process_time() - t0)


def check_same_episodes(runner: MAMLEnvRunner, *, episodes: int, seed: int) -> None:
    """The frozen old sampler and ours give the same episodes for the same seed (else the comparison is moot)."""
    params = {k: p.detach() for k, p in runner.module.net.named_parameters()}
    new = runner.sample_episodes(episodes, seed=seed, params=params)
    old = old_sample_episodes(runner, episodes, seed=seed)
    for f in ("obs", "actions", "rewards", "mask", "logp"):
        if not np.array_equal(getattr(new, f), getattr(old, f)):
            raise AssertionError(f"old and new samplers differ in {f}")


@torch.inference_mode()
def old_sample_episodes(runner: MAMLEnvRunner, num_episodes: int, *, seed: int) -> EpisodeBatch:
    """FROZEN copy of ``MAMLEnvRunner.sample_episodes`` before the split into ``metarl.sampler`` (for speed
    comparisons only; the module's forward is reached as ``runner.module.net``, which is what it called). Cut into
    its three phases (set-up, the loop as it was, the scatter into episodes): no call was added inside the loop."""
    o = _old_setup(runner, num_episodes, seed)
    _old_loop(o)
    return _old_scatter(o)


def _old_setup(runner: MAMLEnvRunner, num_episodes: int, seed: int) -> SimpleNamespace:
    o = SimpleNamespace()
    vec = runner.env.unwrapped
    o.envs = vec.envs
    o.n = n = len(o.envs)
    env_seeds = [derive_seed(seed, 2, i) for i in range(n)]
    o.quota = num_episodes // n
    o.horizon = int(o.envs[0].spec.max_episode_steps)
    o.module = runner.module.net
    p0 = next(o.module.parameters())
    o.dtype, o.device = p0.dtype, p0.device
    space = vec.single_action_space
    o.discrete = isinstance(space, gym.spaces.Discrete)
    o.low = o.high = None
    if not o.discrete and (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        o.low, o.high = (torch.as_tensor(b, dtype=o.dtype) for b in (space.low, space.high))
    o.gen = torch.Generator(device="cpu").manual_seed(derive_seed(seed, 1))
    max_iters = o.quota * (o.horizon + 1)
    o.obs_dim = vec.single_observation_space.shape[0]
    o.act_shape = () if o.discrete else tuple(space.shape)
    o.obs_log = np.zeros((max_iters + 1, n, o.obs_dim), vec.single_observation_space.dtype)
    o.act_log, o.logp_log, o.noise_log, o.log_std_log = [], [], [], []
    o.rew_log = np.zeros((max_iters, n), np.float64)
    o.rec_k, o.rec_i, o.rec_ep, o.rec_t = [], [], [], []
    for i, env in enumerate(o.envs):
        o.obs_log[0, i], _ = env.reset(seed=int(env_seeds[i]))
    return o


def _old_loop(o: SimpleNamespace) -> None:  # noqa: C901 - the frozen loop, kept as it was
    envs, n, quota, module, dtype, device = o.envs, o.n, o.quota, o.module, o.dtype, o.device
    discrete, low, high, gen, obs_log, rew_log = o.discrete, o.low, o.high, o.gen, o.obs_log, o.rew_log
    act_log, logp_log, noise_log, log_std_log = o.act_log, o.logp_log, o.noise_log, o.log_std_log
    rec_k, rec_i, rec_ep, rec_t = o.rec_k, o.rec_i, o.rec_ep, o.rec_t
    on_cpu = device.type == "cpu"
    init_state = module.initial_state(n)
    state = init_state
    ep = [0] * n
    t = [0] * n
    pending = [False] * n
    active = [True] * n
    num_active = n
    k = 0
    while num_active:
        obs_t = torch.from_numpy(obs_log[k]).to(dtype=dtype, device=device)
        y, state = module(obs_t, state)
        if not on_cpu:
            y = y.cpu()
        if discrete:
            logits = torch.log_softmax(y, -1)
            action = torch.multinomial(logits.exp(), 1, generator=gen).squeeze(-1)
            logp_log.append(logits.gather(-1, action.unsqueeze(-1)).squeeze(-1))
            env_action = action.numpy()
        else:
            mean, log_std = y.chunk(2, dim=-1)
            noise = torch.randn(mean.shape, generator=gen, dtype=mean.dtype)
            action = mean + noise * log_std.exp()
            noise_log.append(noise)
            log_std_log.append(log_std)
            env_action = (action if low is None else torch.clamp(action, low, high)).numpy()
        act_log.append(action)
        next_obs, rew = obs_log[k + 1], rew_log[k]
        fresh = []
        for i, env in enumerate(envs):
            if pending[i]:
                pending[i] = False
                next_obs[i], _ = env.reset()
                fresh.append(i)
            elif active[i]:
                next_obs[i], rew[i], term, trunc, _ = env.step(env_action[i])
                rec_k.append(k)
                rec_i.append(i)
                rec_ep.append(ep[i])
                rec_t.append(t[i])
                if term or trunc:
                    ep[i] += 1
                    t[i] = 0
                    if ep[i] < quota:
                        pending[i] = True
                    else:
                        active[i] = False
                        num_active -= 1
                else:
                    t[i] += 1
        if fresh:
            f = torch.zeros(n, dtype=torch.bool, device=device)
            f[fresh] = True
            state = {
                key: torch.where(f.view(-1, *([1] * (v.dim() - 1))), init_state[key], v)
                for key, v in state.items()
            }
        k += 1


def _old_scatter(o: SimpleNamespace) -> EpisodeBatch:
    n, quota, horizon, obs_dim, act_shape, discrete = o.n, o.quota, o.horizon, o.obs_dim, o.act_shape, o.discrete
    fdt = np.float64 if o.dtype == torch.float64 else np.float32
    if discrete:
        logp_all = torch.stack(o.logp_log)
    else:
        noise, log_std = torch.stack(o.noise_log), torch.stack(o.log_std_log)
        logp_all = (-0.5 * noise * noise - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
    kk, ii, ee, tt = (np.asarray(x, np.int64) for x in (o.rec_k, o.rec_i, o.rec_ep, o.rec_t))
    obs_buf = np.zeros((n, quota, horizon, obs_dim), fdt)
    act_buf = np.zeros((n, quota, horizon, *act_shape), np.int64 if discrete else fdt)
    rew_buf = np.zeros((n, quota, horizon), fdt)
    logp_buf = np.zeros((n, quota, horizon), fdt)
    mask_buf = np.zeros((n, quota, horizon), fdt)
    obs_buf[ii, ee, tt] = o.obs_log[kk, ii].astype(fdt)
    act_buf[ii, ee, tt] = torch.stack(o.act_log).numpy()[kk, ii]
    rew_buf[ii, ee, tt] = o.rew_log[kk, ii]
    logp_buf[ii, ee, tt] = logp_all.numpy()[kk, ii]
    mask_buf[ii, ee, tt] = 1.0
    return EpisodeBatch(
        obs=obs_buf.reshape(n * quota, horizon, obs_dim),
        actions=act_buf.reshape(n * quota, horizon, *act_shape),
        rewards=rew_buf.reshape(n * quota, horizon),
        mask=mask_buf.reshape(n * quota, horizon),
        logp=logp_buf.reshape(n * quota, horizon),
    )


def time_stock(runner: SingleAgentEnvRunner, *, steps: int) -> float:
    t0 = time.process_time()
    episodes = runner.sample(num_timesteps=steps, explore=True)
    dt = time.process_time() - t0
    return sum(len(e) for e in episodes) / dt


def measure(args, num_envs: int, horizon: int) -> dict:
    # whole episodes for ours: at least --min-steps steps, a multiple of num_envs episodes
    quota = max(1, -(-args.min_steps // (num_envs * horizon)))
    episodes = quota * num_envs
    kw = dict(task=args.task, backbone=args.backbone, width=args.width, num_envs=num_envs, episodes=episodes)
    ours_runner = build_runner(MAMLEnvRunner, **kw)
    stock_runner = build_runner(SingleAgentEnvRunner, **kw)
    stock_runner.module.set_state(ours_runner.module.get_state())  # same weights
    stock_steps = episodes * horizon
    time_ours(ours_runner, episodes=num_envs, seed=0)  # warm-up (first-call allocations, lazy imports)
    check_same_episodes(ours_runner, episodes=num_envs, seed=0)
    if not args.no_stock:
        time_stock(stock_runner, steps=min(stock_steps, 4 * num_envs))
    rates = {"raw": [], "ours": [], "old": [], "stock": []}
    for r in range(args.repeats):
        rates["raw"].append(time_raw(args.task, steps=max(args.min_steps, 2000), seed=r))
        first, second = (time_ours, time_old) if r % 2 == 0 else (time_old, time_ours)  # alternate the order
        for fn in (first, second):
            rates["ours" if fn is time_ours else "old"].append(fn(ours_runner, episodes=episodes, seed=r + 1))
        if not args.no_stock:
            rates["stock"].append(time_stock(stock_runner, steps=stock_steps))
        else:
            rates["stock"].append(float("nan"))
    ours_runner.stop()
    stock_runner.stop()
    out = {k: statistics.median(v) for k, v in rates.items()}
    # ours vs old run back to back in each repeat: the median of the per-repeat ratios cancels slow load drifts
    out["ours/old paired"] = statistics.median(a / b for a, b in zip(rates["ours"], rates["old"]))
    return out


def _code_key(fn) -> tuple[str, int, str]:
    code = fn.__code__
    return (code.co_filename, code.co_firstlineno, code.co_name)


def categorize(stats: pstats.Stats, *, total: float, env_calls: set, module_calls: set) -> dict[str, float]:
    """Split a cProfile run into physics / env / connectors / module / loop (fractions of ``total``).

    physics: MuJoCo's C functions (own time); env: the cumulative time of ``env_calls`` (the sampler's calls into
    the env) minus physics; module: cumulative time of ``module_calls``; connectors: RLlib's ConnectorV2 pipelines
    (they do not nest in each other or in the module call); loop: the rest.
    """
    physics = env = connectors = module = 0.0
    for key, (_cc, _nc, tt, ct, _callers) in stats.stats.items():
        file, _line, func = key
        if file == "~" and "mujoco._functions" in func:
            physics += tt
        elif key in env_calls:
            env += ct
        elif key in module_calls:
            module += ct
        elif file.endswith("connector_pipeline_v2.py") and func == "__call__":
            connectors += ct
    out = {"physics": physics, "env": env - physics, "connectors": connectors, "module": module}
    out["loop"] = total - sum(out.values())
    return {k: v / total for k, v in out.items()}


def profile_split(args, num_envs: int, horizon: int) -> dict:
    episodes = max(1, -(-args.min_steps // (num_envs * horizon))) * num_envs
    kw = dict(task=args.task, backbone=args.backbone, width=args.width, num_envs=num_envs, episodes=episodes)
    out = {}
    for kind, cls in (("ours", MAMLEnvRunner), ("stock", SingleAgentEnvRunner)):
        runner = build_runner(cls, **kw)
        run = (lambda r=runner: r.sample_episodes(episodes, seed=1)) if kind == "ours" else (
            lambda r=runner: r.sample(num_timesteps=episodes * horizon, explore=True))
        run()
        prof = cProfile.Profile()
        prof.enable()
        run()
        prof.disable()
        stats = pstats.Stats(prof)
        if kind == "ours":  # sample_episodes calls the outermost wrapper of each sub-env and the module
            top = type(runner.env.unwrapped.envs[0])
            env_calls = {_code_key(top.step), _code_key(top.reset)}
            module_calls = {_code_key(PolicyNet.forward)}
        else:  # the stock runner steps the vector env through these two and calls forward_exploration
            env_calls = {_code_key(SingleAgentEnvRunner._try_env_step), _code_key(SingleAgentEnvRunner._try_env_reset)}
            module_calls = {_code_key(type(runner.module).forward_exploration)}
        out[kind] = categorize(stats, total=stats.total_tt, env_calls=env_calls, module_calls=module_calls)
        if kind == "ours":  # the module forward timed in place, without the profiler's overhead
            inner = runner.module.net.forward
            spent = [0.0]

            def timed(*a, _inner=inner, _spent=spent, **k):
                t0 = time.process_time()
                res = _inner(*a, **k)
                _spent[0] += time.process_time() - t0
                return res

            runner.module.net.forward = timed
            t0 = time.process_time()
            run()
            out["ours_module_share_unprofiled"] = spent[0] / (time.process_time() - t0)
            del runner.module.net.forward
        runner.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="halfcheetah-vel")
    p.add_argument("--backbone", default="ssm")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-steps", type=int, default=4000, help="env steps per timed run of ours/stock (at least)")
    p.add_argument("--profile-envs", type=int, default=32)
    p.add_argument("--profile-only", action="store_true")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--no-stock", action="store_true", help="skip RLlib's stock runner (ours vs old vs raw only)")
    args = p.parse_args()

    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
        except OSError:
            pass
    horizon = tasks.horizon(args.task)
    print(f"task {args.task} (horizon {horizon}), backbone {args.backbone} width {args.width}, "
          f"torch threads 1, CPU {os.sched_getaffinity(0) if hasattr(os, 'sched_getaffinity') else '?'}; "
          f"env steps per CPU-second, median of {args.repeats}")
    if not args.profile_only:
        print(f"{'envs':>5} {'raw':>8} {'ours':>8} {'old':>8} {'stock':>8} {'ours/raw':>9} {'old/raw':>8} "
              f"{'ours/old':>9} {'paired':>7} {'stock/raw':>10} {'ours/stock':>11}")
        for n in args.num_envs:
            m = measure(args, n, horizon)
            print(f"{n:>5} {m['raw']:>8.0f} {m['ours']:>8.0f} {m['old']:>8.0f} {m['stock']:>8.0f} "
                  f"{m['ours'] / m['raw']:>9.3f} {m['old'] / m['raw']:>8.3f} {m['ours'] / m['old']:>9.3f} "
                  f"{m['ours/old paired']:>7.3f} "
                  f"{m['stock'] / m['raw']:>10.3f} {m['ours'] / m['stock']:>11.2f}", flush=True)
    if not args.no_profile:
        split = profile_split(args, args.profile_envs, horizon)
        print(f"\nprofile split at {args.profile_envs} envs (cProfile; fractions of the sampler's time)")
        keys = ["physics", "env", "connectors", "module", "loop"]
        print(f"{'':>6} " + " ".join(f"{k:>10}" for k in keys))
        for kind in ("ours", "stock"):
            print(f"{kind:>6} " + " ".join(f"{split[kind][k]:>10.3f}" for k in keys))
        print(f"module forward share of ours, timed without profiler: {split['ours_module_share_unprofiled']:.3f}")


if __name__ == "__main__":
    main()
