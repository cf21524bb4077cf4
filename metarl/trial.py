"""Trial memory's learning side (torch): log-probs over whole trials, the inner steps and the meta-gradient.

With trial memory (``metarl.sampler.TrialCarry``) one task's phases (support 0 with θ, support 1 with θ_1, …,
query with θ_K) are one trial per sub-env: the recurrent state (and the RL² inputs) run on across episodes and
phases. A phase's ``EpisodeBatch`` holds env i's episodes in rows ``i * Q .. (i + 1) * Q - 1`` (Q = E / n, n
sub-envs), each padded to the horizon T; ``layout`` lays them end to end per env, (n, Q * T), so one step loop
replays every env's trial in order, padded steps leaving the state untouched (masks), exactly as the sampler did.

``phase_log_prob(net, θ_k, phase, carry)`` is differentiable w.r.t. θ_k AND the carry, so the state at a phase's
start is a function of θ (through θ_0..θ_{k-1}): ``adapt_trial`` keeps that graph (also first-order, which only
drops the inner gradient's own derivative) and ``trial_meta_gradient_loop`` backpropagates the query loss through
the inner steps and the carried state. The inner step at phase k is ∂L_k/∂θ_k with the phase's starting carry held
fixed: what the runner computes from the carry it sampled with.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import torch

from metarl.maml import check_lr
from metarl.policy_net import PolicyNet, State
from metarl.rl import EpisodeBatch, PreparedTask, advantages, clipped_surrogate_loss, inner_objective, linear_baseline
from metarl.sampler import TrialCarry, call_with_params, derive_seed, keep_rows, sample_episodes

Params = dict[str, torch.Tensor]


def layout(x: torch.Tensor, n: int) -> torch.Tensor:
    """(E, T, ...) with env i's episodes in rows i*Q..(i+1)*Q-1 -> (n, Q*T, ...): each env's steps end to end."""
    e, t = x.shape[:2]
    if e % n:
        raise ValueError(f"{e} episodes do not split over {n} sub-envs")
    return x.reshape(n, (e // n) * t, *x.shape[2:])


def unlayout(x: torch.Tensor, e: int) -> torch.Tensor:
    """Inverse of ``layout``: (n, Q*T, ...) -> (E, T, ...)."""
    return x.reshape(e, -1, *x.shape[2:])


def _phase_loop(net: PolicyNet, phase: dict[str, torch.Tensor], n: int, carry: TrialCarry) -> tuple[list, TrialCarry]:
    horizon = phase["mask"].shape[1]
    obs, act, rew, mask = (layout(phase[k], n) for k in ("obs", "actions", "rewards", "mask"))
    state, prev_a, prev_r = carry.state, carry.prev_action, carry.prev_reward
    logps = []
    for t in range(obs.shape[1]):
        x = obs[:, t]
        if net.trial_inputs:
            first = torch.full((n,), float(t % horizon == 0), dtype=x.dtype, device=x.device)
            x = net.trial_input(x, prev_a, prev_r, first)
        y, new_state = net(x, state)
        logps.append(net.dist_log_prob(y, act[:, t]))
        real = mask[:, t] > 0
        state = keep_rows(new_state, state, real.tolist())
        if net.trial_inputs:
            prev_a = torch.where(real.unsqueeze(-1), net.action_features(act[:, t], x.dtype), prev_a)
            prev_r = torch.where(real, rew[:, t].to(x.dtype), prev_r)
    return logps, TrialCarry(state=state, prev_action=prev_a, prev_reward=prev_r)


def phase_log_prob(net: PolicyNet, params: Params, phase: dict[str, torch.Tensor], n: int,
                   carry: TrialCarry | None = None) -> tuple[torch.Tensor, TrialCarry]:
    """log π_params(a|s) of one phase's episodes (E, T), replayed per env from ``carry`` (None: a new trial), and
    the carry at the phase's end; differentiable w.r.t. ``params`` and the carry's tensors."""
    carry = (carry or TrialCarry()).filled(net, n)
    logps, end = call_with_params(net, params, lambda m: _phase_loop(m, phase, n, carry))
    logp = torch.stack(logps, dim=1)  # (n, Q*T)
    return unlayout(logp, phase["mask"].shape[0]) * phase["mask"], end


# --- credit assignment over the trial -------------------------------------------------------------------------------


def trial_returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float) -> torch.Tensor:
    """R_t = Σ γ^{steps} r over the real steps from t to the phase's end, running across episode boundaries (and
    over padding without discounting it). (n, L) -> (n, L), zero on padding."""
    rewards = rewards * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = torch.where(mask[:, t] > 0, rewards[:, t] + gamma * running, running)
        out[:, t] = running
    return out * mask


def trial_advantages(phase: dict[str, torch.Tensor], n: int, *, gamma: float, normalize: bool = True) -> torch.Tensor:
    """Â of one phase with returns running across its episodes per env and the linear baseline fitted on each
    env's whole phase (time-within-trial features); (E, T) in the dtype of ``obs``; no grad."""
    with torch.no_grad():
        e = phase["mask"].shape[0]
        mask = layout(phase["mask"], n).double()
        ret = trial_returns_to_go(layout(phase["rewards"], n).double(), mask, gamma=gamma)
        adv = ret - linear_baseline(layout(phase["obs"], n), ret, mask)
        if normalize:
            cnt = mask.sum().clamp_min(1.0)
            mean = (adv * mask).sum() / cnt
            std = (((adv - mean) ** 2 * mask).sum() / cnt).sqrt()
            adv = (adv - mean) / (std + 1e-8) * mask
        return unlayout(adv, e).to(phase["obs"].dtype)


# --- inner steps and the meta-gradient -----------------------------------------------------------------------------


def trial_inner_step(loss: torch.Tensor, params: Params, *, lr: float, first_order: bool) -> Params:
    """θ' = θ - lr ∂loss/∂θ, keeping the graph of ``loss`` (the carried state still needs it) and returning a new
    tensor for every parameter (so that the next phase's ∂/∂θ' never reaches back into the carried state)."""
    names = list(params)
    if lr == 0:  # θ' = θ (RL²'s in-context evaluation): new tensors with dθ'/dθ = I, no gradient to compute
        return {k: params[k].clone() for k in names}
    grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=not first_order, retain_graph=True,
                                allow_unused=True)
    out = {}
    for k, g in zip(names, grads):
        g = torch.zeros_like(params[k]) if g is None else (g.detach() if first_order else g)
        out[k] = params[k] - lr * g
    return out


def adapt_trial(net: PolicyNet, params: Params, support: Sequence[dict[str, torch.Tensor]], n: int, *, lr: float,
                first_order: bool, objective: str = "vpg",
                carry: TrialCarry | None = None) -> tuple[Params, TrialCarry, list[float]]:
    """θ_{k+1} = θ_k - lr ∂L_k/∂θ_k over the support phases of one trial (each dict with its ``"advantages"``),
    each phase run as sequences (``compact_phase``, ``sequence_log_prob``): what the runner (``sample_trial``, one
    phase from the carry it sampled with) and ``MetaPolicy.adapt`` compute. Returns (θ_K, the carry at the end of
    the support phases, a function of θ, the inner losses)."""
    check_lr(lr, names=params.keys(), allow_zero=True)
    loss_fn = inner_objective(objective)
    carry = (carry or TrialCarry()).filled(net, n)
    state, prev_a, prev_r = carry.state, carry.prev_action, carry.prev_reward
    losses = []
    for phase in support:
        c, prev_a, prev_r = compact_phase(net, phase, n, prev_a, prev_r)
        logp, state = sequence_log_prob(net, params, c, state, sequence_cuts(c["lengths"], c["mask"].shape[1]))
        loss = loss_fn(logp, c["advantages"], c["mask"])
        losses.append(float(loss.detach()))
        params = trial_inner_step(loss, params, lr=lr, first_order=first_order)
    return params, TrialCarry(state=state, prev_action=prev_a, prev_reward=prev_r), losses


def adapt_trial_steps(net: PolicyNet, params: Params, support: Sequence[dict[str, torch.Tensor]], n: int, *,
                      lr: float, first_order: bool, objective: str = "vpg") -> tuple[Params, TrialCarry, list[float]]:
    """``adapt_trial`` from a new trial, every phase replayed one step at a time through the layout with masks
    (``phase_log_prob``): the reference loop's (``trial_meta_gradient_loop``)."""
    check_lr(lr, names=params.keys(), allow_zero=True)
    loss_fn = inner_objective(objective)
    carry, losses = None, []
    for phase in support:
        logp, carry = phase_log_prob(net, params, phase, n, carry)
        loss = loss_fn(logp, phase["advantages"], phase["mask"])
        losses.append(float(loss.detach()))
        params = trial_inner_step(loss, params, lr=lr, first_order=first_order)
    return params, (carry or TrialCarry()).filled(net, n), losses


def trial_meta_gradient_loop(net: PolicyNet, params: Params, tasks: Sequence[PreparedTask], *, num_envs: int,
                             num_tasks_total: int, inner_lr: float, clip: float, first_order: bool = False,
                             objective: str = "vpg") -> tuple[float, float]:
    """``metarl.rl.meta_gradient_loop`` for trial memory: per task, θ_K and the carried state from the support
    phases (differentiable w.r.t. θ), the query phase replayed from that state with θ_K, the clipped surrogate,
    one backward into ``params``' ``.grad``; every phase one step at a time (``phase_log_prob``): the reference of
    ``metarl.meta_batch.trial_meta_gradient_batched``. Returns (mean outer loss, max |Δlogp| on real query steps)."""
    total, max_dlogp = 0.0, 0.0
    for task in tasks:
        adapted, carry, _ = adapt_trial_steps(net, params, task.support, num_envs, lr=inner_lr,
                                              first_order=first_order, objective=objective)
        q = task.query
        logp, _ = phase_log_prob(net, adapted, q, num_envs, carry)
        loss = clipped_surrogate_loss(logp, q["logp"], q["advantages"], q["mask"], clip=clip)
        (loss / num_tasks_total).backward()
        total += float(loss.detach())
        max_dlogp = max(max_dlogp, float(((logp.detach() - q["logp"]).abs() * q["mask"]).max()))
    return total / max(len(tasks), 1), max_dlogp


def compact_phase(net: PolicyNet, phase: dict[str, torch.Tensor], n: int, prev_action: torch.Tensor,
                  prev_reward: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One phase with each env's real steps end to end, so that it runs as sequences (``sequence_log_prob``).

    (n, L, ...) with L = the most real steps of an env in the phase, env i's steps in rows ``[i, :l_i]`` (``lengths``
    (n,) = l_i; the rest zero-padded with ``mask`` = 0): ``x`` the backbone's input (``trial_input`` when
    ``net.trial_inputs``, with the previous real step's action and reward, ``prev_action`` (n, A) and
    ``prev_reward`` (n,) at the phase's first step), ``actions``, ``mask`` and ``advantages`` and ``logp`` where
    the phase has them. Returns it with the RL² inputs carried to the next phase. Nothing here depends on θ.
    """
    horizon = phase["mask"].shape[1]
    real = layout(phase["mask"], n) > 0  # (n, Q*T)
    lengths = real.sum(1)  # (n,)
    order = torch.sort((~real).to(torch.uint8), dim=1, stable=True).indices[:, : int(lengths.max())]  # (n, L)
    rows = torch.arange(n, device=order.device).unsqueeze(1)
    keys = [k for k in ("obs", "actions", "rewards", "mask", "advantages", "logp") if k in phase]
    c = {k: layout(phase[k], n)[rows, order] for k in keys}
    x, rew = c.pop("obs"), c.pop("rewards")
    if net.trial_inputs:
        feats = net.action_features(c["actions"], x.dtype)  # (n, L, A)
        first = order % horizon == 0  # an episode's first step (every episode has one real step at least)
        x = net.trial_input(x, torch.cat([prev_action.unsqueeze(1), feats[:, :-1]], 1),
                            torch.cat([prev_reward.unsqueeze(1), rew[:, :-1]], 1), first)
        last = lengths.unsqueeze(1) - 1
        prev_action, prev_reward = feats[rows, last].squeeze(1), rew[rows, last].squeeze(1)
    return {**c, "x": x, "lengths": lengths}, prev_action, prev_reward


def compact_trial(net: PolicyNet, task: PreparedTask, n: int) -> list[dict[str, torch.Tensor]]:
    """``compact_phase`` of every phase of one task (support phases, then the query), the RL² inputs carried
    across phases from zeros at the trial's start."""
    obs = task.query["obs"]
    prev_a = torch.zeros(n, net.action_feature_dim, dtype=obs.dtype, device=obs.device)
    prev_r = torch.zeros(n, dtype=obs.dtype, device=obs.device)
    out = []
    for phase in [*task.support, task.query]:
        c, prev_a, prev_r = compact_phase(net, phase, n, prev_a, prev_r)
        out.append(c)
    return out


def sequence_cuts(lengths: torch.Tensor, steps: int) -> list[int]:
    """Where ``sequence_log_prob`` cuts a compacted phase of ``steps`` steps: every env's length, and ``steps``."""
    return sorted(set(lengths.flatten().tolist()) | {steps})


def hold(new: State, old: State, advance: torch.Tensor) -> State:
    """``new`` on the rows where ``advance`` (n,) is True, ``old`` elsewhere (a tensor ``keep_rows``)."""
    return {k: torch.where(advance.view(-1, *([1] * (v.dim() - 1))), v, old[k]) for k, v in new.items()}


def sequence_log_prob(net: PolicyNet, params: Params, phase: dict[str, torch.Tensor], state: State,
                      cuts: Sequence[int]) -> tuple[torch.Tensor, State]:
    """log π_params (n, L) of a compacted phase (``compact_phase``) run as sequences from ``state``, and each env's
    state after its last real step: the sequence is cut at ``cuts`` (``sequence_cuts``), and an env whose steps
    have ended keeps its state through the later pieces. Equals ``phase_log_prob`` on the real steps; vmappable."""

    def run(m: PolicyNet) -> tuple[torch.Tensor, State]:
        ys, start, s = [], 0, state
        for end in cuts if m.stateful else cuts[-1:]:
            y, new = m(phase["x"][:, start:end], s)  # (n, end - start, out)
            s = hold(new, s, phase["lengths"] >= end)
            ys.append(y)
            start = end
        return torch.cat(ys, 1), s

    y, end_state = call_with_params(net, params, run)
    return net.dist_log_prob(y, phase["actions"]), end_state


def prepare_trial_task(support: Sequence[EpisodeBatch], query: EpisodeBatch, n: int, *, dtype: torch.dtype, device,
                       gamma: float, normalize_advantages: bool = True, trial_returns: bool = True) -> PreparedTask:
    """``metarl.rl.prepare_task`` for trial memory: tensors and ``phase_advantages`` of every phase."""

    def with_adv(batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        t = batch.tensors(dtype, device)
        return {**t, "advantages": phase_advantages(t, n, gamma=gamma, normalize=normalize_advantages,
                                                    trial_returns=trial_returns)}

    return PreparedTask(tuple(with_adv(b) for b in support), with_adv(query))


# --- sampling a trial (what the runner does per task job) ---------------------------------------------------------


def phase_advantages(phase: dict[str, torch.Tensor], n: int, *, gamma: float, normalize: bool = True,
                     trial_returns: bool = True) -> torch.Tensor:
    """``trial_advantages`` (returns across the phase's episodes) or, without ``trial_returns``, per-episode Â."""
    if trial_returns:
        return trial_advantages(phase, n, gamma=gamma, normalize=normalize)
    return advantages(phase, gamma=gamma, normalize=normalize)


def copied(carry: TrialCarry) -> TrialCarry:
    """A copy of ``carry`` usable by autograd (the sampler's tensors are inference tensors; clone keeps a graph)."""
    state = None if carry.state is None else {k: v.clone() for k, v in carry.state.items()}
    return TrialCarry(state=state, prev_action=None if carry.prev_action is None else carry.prev_action.clone(),
                      prev_reward=None if carry.prev_reward is None else carry.prev_reward.clone())


def sample_trial(envs: Sequence[gym.Env], net: PolicyNet, *, inner_steps: int, num_episodes: int, seed: int,
                 lr: float, gamma: float, objective: str = "vpg", normalize_advantages: bool = True,
                 trial_returns: bool = True, weights_prefix: str = "") -> tuple[list[EpisodeBatch], list[Params],
                                                                                   list[float]]:
    """One task job with trial memory: phase k sampled with θ_k from the carry phase k-1 left (a fresh carry at
    phase 0), then θ_{k+1} = θ_k - lr ∂L_k/∂θ_k from that phase's starting carry. Returns (the K+1 batches,
    θ_1..θ_K detached, the inner losses); seeds as the episode-memory runner: ``derive_seed(seed, k)``."""
    params = {k: p.detach() for k, p in net.named_parameters()}
    p0 = next(net.parameters())
    carry, batches, adapted, losses = TrialCarry(), [], [], []
    for k in range(inner_steps + 1):
        start = copied(carry)
        batch = sample_episodes(envs, net, params, num_episodes=num_episodes, seed=derive_seed(seed, k),
                                weights_id=f"{weights_prefix}{k}", carry=carry)
        batches.append(batch)
        if k == inner_steps:
            break
        t = batch.tensors(p0.dtype, p0.device)
        t["advantages"] = phase_advantages(t, len(envs), gamma=gamma, normalize=normalize_advantages,
                                           trial_returns=trial_returns)
        with torch.enable_grad():  # ∂L_k/∂θ_k from the phase's starting carry
            p = {name: v.detach().requires_grad_() for name, v in params.items()}
            new, _, loss = adapt_trial(net, p, [t], len(envs), lr=lr, first_order=True, objective=objective,
                                       carry=start)
        params = {name: v.detach() for name, v in new.items()}
        losses += loss
        adapted.append(params)
    return batches, adapted, losses
