"""The MAML-RL meta-gradient of all tasks of a shard at once (the batched twin of ``metarl.rl.meta_gradient_loop``).

For task i = 1..n with support batches S_{i,0..K-1} and query batch Q_i (the objectives of ``metarl.rl``)::

    θ_{i,0} = θ,    θ_{i,k+1} = θ_{i,k} - α ∇ L_inner(θ_{i,k}; S_{i,k})       (first order: the gradient is detached)
    g_i     = ∇θ L_outer(θ_{i,K}(θ); Q_i)
    ∇θ (1/N) Σ_i L_outer,i(θ_{i,K}(θ)) = (1/N) Σ_i g_i        N = tasks of ALL Learners (each Learner sums its shard)

How it is batched: θ is expanded to one (view) copy per task, Θ = [θ, ..., θ] (n, ...); the policy runs on all
tasks at once under ``torch.vmap`` (parameters and episodes both carry the task axis), so a recurrent backbone
runs its time loop once per step for the whole shard. Because task i's loss depends on Θ_i only,

    ∂/∂Θ Σ_i L_inner(Θ_i; S_i) = [∇L_inner(θ_{1,k}; S_1), ..., ∇L_inner(θ_{n,k}; S_n)]

is every task's inner gradient in one ``torch.autograd.grad`` (``create_graph`` for second order), and one
backward of Σ_i L_outer,i from Θ into θ sums the g_i (the backward of ``expand`` is the sum over tasks).
vmap only batches the forward; all gradients are ordinary autograd. (The other composition, ``torch.func``'s
``vmap(grad(task_loss))``, gives the same numbers but costs ~1.3x more here: three functorch levels on every
op; and ``grad`` of ``vmap(task_loss).sum()`` with an inner ``torch.func.grad`` is WRONG through nn.LayerNorm in
torch 2.13, ≈1e-4 relative on lru's embedding.) Backbones compute with plain tensor ops inside
(``metarl.models.plain_ops``): the fused CPU RNN kernels have no batching rule and cuDNN's cannot double-backward.

Tasks may differ in their number of episodes and steps: every batch is zero-padded to the largest (E, T) of its
kind with ``mask`` = 0 on the padding, which changes neither the masked means nor (causal backbones) the real
steps. tests/test_batched_meta_grad.py checks equality with the loop (float64, rtol 1e-9).

Trial memory (``trial_meta_gradient_batched``, the twin of ``metarl.trial.trial_meta_gradient_loop``): the same
composition, with the recurrent state carried from phase to phase as a vmapped output and input (a function of
Θ, so the query loss reaches θ through it too). Each phase runs as sequences (``metarl.trial.compact_trial``:
every env's real steps end to end, so no padded step sits between two real ones); the sequence is cut at every
env's length, and an env whose steps have ended keeps its state through the later pieces. Every inner step yields
a new tensor per parameter, so ∂L_k/∂Θ_k never reaches back into the carried state (the phase's starting state is
held fixed, as the runner computes it). tests/test_trial_batched.py checks equality with the loop.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from metarl import models
from metarl.policy_net import PolicyNet, State
from metarl.rl import LogProbFn, PreparedTask, clipped_surrogate_loss, inner_objective
from metarl.trial import compact_trial, sequence_cuts, sequence_log_prob

__all__ = ["meta_gradient_batched", "pad_stack", "task_gradients", "trial_meta_gradient_batched",
           "trial_task_gradients"]

#: what the meta-gradient reads of a support batch (``advantages``: Â, precomputed; it does not depend on θ)
SUPPORT_KEYS = ("obs", "actions", "mask", "advantages")
#: ... and of a query batch (``logp``: log π_old of the policy that sampled it)
QUERY_KEYS = ("obs", "actions", "mask", "advantages", "logp")


def pad_stack(batches: Sequence[Mapping[str, torch.Tensor]], keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """One batch per task -> (n, E, T, ...) per key, zero-padding episodes (dim 0) and steps (dim 1) to the largest."""
    num_eps = max(b["mask"].shape[0] for b in batches)
    num_steps = max(b["mask"].shape[1] for b in batches)
    out = {}
    for key in keys:
        padded = []
        for b in batches:
            t = b[key]
            pad = [0, 0] * (t.ndim - 2) + [0, num_steps - t.shape[1], 0, num_eps - t.shape[0]]
            padded.append(F.pad(t, pad) if any(pad) else t)
        out[key] = torch.stack(padded)
    return out


def _check_tasks(tasks: Sequence[PreparedTask]) -> int:
    if not tasks:
        raise ValueError("tasks is empty; pass at least one PreparedTask")
    steps = {len(t.support) for t in tasks}
    if len(steps) != 1:
        raise ValueError(f"every task needs the same number of inner steps (support batches), got {sorted(steps)}")
    for i, t in enumerate(tasks):
        named = [*((f"support[{k}]", b, SUPPORT_KEYS) for k, b in enumerate(t.support)), ("query", t.query, QUERY_KEYS)]
        for name, batch, keys in named:
            missing = [k for k in keys if batch.get(k) is None]
            if missing:
                raise ValueError(f"tasks[{i}].{name} lacks {missing} (needs {list(keys)})")
    return steps.pop()


def task_gradients(
    log_prob_fn: LogProbFn,
    params: Mapping[str, torch.Tensor],
    tasks: Sequence[PreparedTask],
    *,
    inner_lr: float,
    clip: float,
    first_order: bool = False,
    objective: str = "vpg",
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Σ_i g_i (see the module docstring) without touching ``.grad``: (grads by name, losses (n,), logp (n, E, T)).

    ``log_prob_fn(params, obs (E,T,D), actions)`` -> log π (E, T) must be a pure function of its arguments (e.g.
    ``torch.func.functional_call`` of a policy). ``params`` are not modified. The query log-probs are padded to
    the largest query (E, T); the padding is undefined (mask it).
    """
    num_inner = _check_tasks(tasks)
    n = len(tasks)
    support = [pad_stack([t.support[k] for t in tasks], SUPPORT_KEYS) for k in range(num_inner)]
    query = pad_stack([t.query for t in tasks], QUERY_KEYS)
    names = list(params)
    theta = [params[k].detach().requires_grad_() for k in names]
    fast = [t.expand(n, *t.shape) for t in theta]  # Θ: one view of θ per task

    loss_fn = inner_objective(objective)

    def inner_loss(p: list, b: dict) -> torch.Tensor:
        return loss_fn(log_prob_fn(dict(zip(names, p)), b["obs"], b["actions"]), b["advantages"], b["mask"])

    def outer_loss(p: list, q: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logp = log_prob_fn(dict(zip(names, p)), q["obs"], q["actions"])  # (E, T)
        return clipped_surrogate_loss(logp, q["logp"], q["advantages"], q["mask"], clip=clip), logp

    with models.plain_ops():
        for batch in support:  # Θ_{k+1} = Θ_k - α ∂/∂Θ_k Σ_i L_inner(Θ_{k,i})
            losses = torch.vmap(inner_loss)(fast, batch)  # (n,)
            grads = torch.autograd.grad(losses.sum(), fast, create_graph=not first_order, allow_unused=True)
            fast = [p if g is None else p - inner_lr * g for p, g in zip(fast, grads)]
        losses, logp = torch.vmap(outer_loss)(fast, query)  # (n,), (n, E, T)
    grads = torch.autograd.grad(losses.sum(), theta, allow_unused=True)
    out = {k: torch.zeros_like(t) if g is None else g for k, t, g in zip(names, theta, grads)}
    return out, losses.detach(), logp.detach()


def accumulate_grads(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor], n: int) -> None:
    """``p.grad += grads[name] / n`` for every parameter (set when None), as ``backward()`` accumulates."""
    for name, p in params.items():
        g = grads[name] / n
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)


def meta_gradient_batched(
    log_prob_fn: LogProbFn,
    params: dict[str, torch.Tensor],
    tasks: Sequence[PreparedTask],
    *,
    num_tasks_total: int,
    inner_lr: float,
    gamma: float,
    clip: float,
    first_order: bool = False,
    objective: str = "vpg",
) -> tuple[float, float]:
    """``metarl.rl.meta_gradient_loop``'s contract, all tasks at once: accumulate Σ_i g_i / num_tasks_total into
    ``.grad`` of ``params``; returns (mean outer loss over ``tasks``, max |log π_θK(a|s) - recorded logp|).

    ``gamma`` is accepted for the same signature (the advantages in ``tasks`` are already computed).
    """
    del gamma
    grads, losses, logp = task_gradients(log_prob_fn, params, tasks, inner_lr=inner_lr, clip=clip,
                                         first_order=first_order, objective=objective)
    accumulate_grads(params, grads, num_tasks_total)
    query = pad_stack([t.query for t in tasks], ("logp", "mask"))
    max_dlogp = float(((logp - query["logp"]).abs() * query["mask"]).max())
    return float(losses.mean()), max_dlogp


# --- trial memory: the state carried across the phases of each task ------------------------------------------------

#: what the trial meta-gradient reads of a compacted phase (``metarl.trial.compact_trial``), besides ``lengths``
TRIAL_KEYS = ("x", "actions", "mask", "advantages", "logp")


def _stack_phase(phases: Sequence[Mapping[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """One compacted phase per task -> (n_tasks, n, L, ...) per key and ``lengths`` (n_tasks, n); and the cuts
    of the sequence (``metarl.trial.sequence_cuts``: every env's length of every task, and L)."""
    out = pad_stack(phases, TRIAL_KEYS)
    out["lengths"] = torch.stack([p["lengths"] for p in phases])
    return out, sequence_cuts(out["lengths"], out["mask"].shape[2])


def trial_task_gradients(net: PolicyNet, params: Mapping[str, torch.Tensor], tasks: Sequence[PreparedTask], *,
                         num_envs: int, inner_lr: float, clip: float, first_order: bool = False,
                         objective: str = "vpg") -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """Σ_i g_i of trial memory (see the module docstring) without touching ``.grad``: (grads by name, outer losses
    (n_tasks,), max |log π_θK(a|s) - recorded logp| over the real query steps)."""
    num_inner = _check_tasks(tasks)
    compact = [compact_trial(net, t, num_envs) for t in tasks]
    phases = [_stack_phase([c[k] for c in compact]) for k in range(num_inner + 1)]
    names = list(params)
    theta = [params[k].detach().requires_grad_() for k in names]
    fast = [t.expand(len(tasks), *t.shape) for t in theta]  # Θ: one view of θ per task
    state = {k: v.expand(len(tasks), *v.shape) for k, v in net.initial_state(num_envs).items()}
    loss_fn = inner_objective(objective)

    def inner_loss(p: list, b: dict, s: State, cuts: list) -> tuple[torch.Tensor, State]:
        logp, s = sequence_log_prob(net, dict(zip(names, p)), b, s, cuts)
        return loss_fn(logp, b["advantages"], b["mask"]), s

    def outer_loss(p: list, q: dict, s: State, cuts: list) -> tuple[torch.Tensor, torch.Tensor]:
        logp, _ = sequence_log_prob(net, dict(zip(names, p)), q, s, cuts)  # (n, L)
        return clipped_surrogate_loss(logp, q["logp"], q["advantages"], q["mask"], clip=clip), logp

    with models.plain_ops():
        for batch, cuts in phases[:-1]:  # Θ_{k+1} = Θ_k - α ∂/∂Θ_k Σ_i L_inner(Θ_{k,i}; state_{k,i})
            losses, state = torch.vmap(functools.partial(inner_loss, cuts=cuts))(fast, batch, state)
            grads = torch.autograd.grad(losses.sum(), fast, create_graph=not first_order, retain_graph=True,
                                        allow_unused=True)
            fast = [p - inner_lr * (torch.zeros_like(p) if g is None else g) for p, g in zip(fast, grads)]
        query, cuts = phases[-1]
        losses, logp = torch.vmap(functools.partial(outer_loss, cuts=cuts))(fast, query, state)
    grads = torch.autograd.grad(losses.sum(), theta, allow_unused=True)
    out = {k: torch.zeros_like(t) if g is None else g for k, t, g in zip(names, theta, grads)}
    max_dlogp = float(((logp.detach() - query["logp"]).abs() * query["mask"]).max())
    return out, losses.detach(), max_dlogp


def trial_meta_gradient_batched(net: PolicyNet, params: dict[str, torch.Tensor], tasks: Sequence[PreparedTask], *,
                                num_envs: int, num_tasks_total: int, inner_lr: float, clip: float,
                                first_order: bool = False, objective: str = "vpg") -> tuple[float, float]:
    """``metarl.trial.trial_meta_gradient_loop``'s contract, all tasks at once: accumulate Σ_i g_i / num_tasks_total
    into ``.grad`` of ``params``; returns (mean outer loss over ``tasks``, max |Δlogp| on real query steps)."""
    grads, losses, max_dlogp = trial_task_gradients(net, params, tasks, num_envs=num_envs, inner_lr=inner_lr,
                                                    clip=clip, first_order=first_order, objective=objective)
    accumulate_grads(params, grads, num_tasks_total)
    return float(losses.mean()), max_dlogp
