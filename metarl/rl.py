"""Policy-gradient math of MAML for RL, as pure functions (torch + numpy only; RLlib imports this).

One meta-iteration for one task (Finn et al. 2017; ProMP, Rothfuss et al. 2019, for the outer objective)::

    support_k ~ π(θ_k)                         episodes sampled with the k-times adapted policy
    θ_{k+1}   = θ_k - α ∇θ L_inner(θ_k; support_k),   L_inner = -mean_t[ log π_θ(a_t|s_t) · Â_t ]
    query     ~ π(θ_K)
    L_outer(θ) = -mean_t[ min(r_t Â_t, clip(r_t, 1-ε, 1+ε) Â_t) ],   r_t = π_{θ_K(θ)}(a_t|s_t) / π_old(a_t|s_t)

Â_t are returns-to-go minus the MAML paper's linear-feature baseline fitted per task (rllab's
``LinearFeatureBaseline``), normalised per batch. The SAME functions run on the EnvRunner (to adapt while sampling)
and on the Learner (to recompute θ_K differentiably), so both see the same θ_K for the same episodes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from metarl import maml

#: log_prob_fn(params, obs (E,T,D), actions (E,T,...)) -> log π(a|s) (E,T)
LogProbFn = Callable[[dict, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EpisodeBatch:
    """Whole episodes of ONE task, padded to the horizon (numpy; what EnvRunners send to Learners).

    ``obs`` (E, T, D); ``actions`` (E, T, A) or (E, T) for discrete; ``rewards``, ``mask``, ``logp`` (E, T).
    ``mask`` is 1 on real steps. ``logp`` is log π_old(a|s) of the policy that sampled the episode, and
    ``weights_id`` names those weights: ``"<iteration>/<inner step k>"``. ``success`` (E,) is 1.0 where
    ``info["success"]`` was truthy at any step of the episode, recorded only for envs that report success
    (``metarl.sampler.env_reports_success``), else None; it is per episode, so ``tensors()`` leaves it out.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray
    logp: np.ndarray
    weights_id: str = ""
    success: np.ndarray | None = field(default=None, metadata={"per_episode": True})

    @property
    def num_episodes(self) -> int:
        return int(self.obs.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.mask.sum())

    def episode_returns(self) -> np.ndarray:
        return (self.rewards * self.mask).sum(axis=1)

    def tensors(self, dtype: torch.dtype = torch.float32, device="cpu") -> dict[str, torch.Tensor]:
        """The (E, T, ...) arrays as tensors (floating ones in ``dtype``); per-episode fields are left out."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray) and not f.metadata.get("per_episode"):
                t = torch.tensor(v, device=device)  # a copy: arrays from Ray's object store are read-only
                out[f.name] = t.to(dtype) if t.is_floating_point() else t
        return out


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float) -> torch.Tensor:
    """R_t = Σ_{t'≥t} γ^{t'-t} r_t' over the real steps of each episode. (E, T) -> (E, T)."""
    rewards = rewards * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running * mask[:, t]
        out[:, t] = running
    return out * mask


def linear_baseline(obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *, reg: float = 1e-5) -> torch.Tensor:
    """The MAML paper's linear-feature baseline, fitted by ridge regression on one task's episodes.

    Features (rllab ``LinearFeatureBaseline``): [o, o², t/100, (t/100)², (t/100)³, 1] with o clipped to ±10.
    Fitted in float64 whatever the inputs; returns values (E, T) in float64 (zero on padding).
    """
    obs, returns, mask = obs.double(), returns.double(), mask.double()
    E, T = mask.shape
    o = obs.reshape(E, T, -1).clamp(-10.0, 10.0)
    t = torch.arange(T, dtype=torch.float64, device=obs.device).view(1, T, 1).expand(E, T, 1) / 100.0
    feats = torch.cat([o, o * o, t, t**2, t**3, torch.ones_like(t)], dim=2) * mask.unsqueeze(-1)  # (E, T, F)
    f = feats.reshape(E * T, -1)
    y = (returns * mask).reshape(E * T, 1)
    a, b = f.T @ f, f.T @ y
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    for _ in range(5):  # rllab: raise the ridge until the solve is finite
        w = torch.linalg.solve(a + reg * eye, b)
        if torch.isfinite(w).all():
            break
        reg *= 10.0
    return (feats @ w).squeeze(-1) * mask


def advantages(batch: dict[str, torch.Tensor], *, gamma: float, normalize: bool = True) -> torch.Tensor:
    """Â = R - b(s, t), normalised over the real steps of the batch. Returned in the dtype of ``obs``; no grad."""
    with torch.no_grad():
        mask = batch["mask"]
        ret = returns_to_go(batch["rewards"].double(), mask.double(), gamma=gamma)
        adv = ret - linear_baseline(batch["obs"], ret, mask)
        if normalize:
            m = mask.double()
            n = m.sum().clamp_min(1.0)
            mean = (adv * m).sum() / n
            std = (((adv - mean) ** 2 * m).sum() / n).sqrt()
            adv = (adv - mean) / (std + 1e-8) * m
        return adv.to(batch["obs"].dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def vpg_loss(logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inner objective: L = -mean_t[log π(a_t|s_t) Â_t]."""
    return -masked_mean(logp * adv, mask)


def lvc_loss(logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ProMP's low-variance curvature inner objective: L = -mean_t[(π(a_t|s_t) / ⊥π(a_t|s_t)) Â_t] (⊥: stop-gradient).

    At θ the ratio is 1, so its value is -mean(Â) and its gradient is ``vpg_loss``'s; its Hessian adds the
    score-function term the VPG surrogate drops: ∇²L = -mean_t[Â_t (∇² log π_t + ∇log π_t ∇log π_tᵀ)]. So a
    second-order meta-gradient through an LVC inner step accounts for θ's effect on the support sampling
    distribution (with ProMP's low-variance estimator), while first-order MAML is unchanged.
    """
    return -masked_mean(torch.exp(logp - logp.detach()) * adv, mask)


#: the inner objectives by their ``MAMLConfig.inner_objective`` name
INNER_OBJECTIVES = {"vpg": vpg_loss, "lvc": lvc_loss}


def inner_objective(name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The inner loss function called ``name`` (ValueError naming the allowed ones)."""
    try:
        return INNER_OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"inner_objective = {name!r} is invalid: allowed {sorted(INNER_OBJECTIVES)}") from None


def clipped_surrogate_loss(
    logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *, clip: float
) -> torch.Tensor:
    """ProMP's outer objective without the KL term: -mean_t[min(r Â, clip(r, 1±ε) Â)], r = exp(logp - logp_old)."""
    ratio = torch.exp(logp - logp_old)
    surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    return -masked_mean(surr, mask)


def gaussian_log_prob_of_noise(noise: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(μ + σ ε; μ, σ) = Σ_j (-ε_j²/2 - log σ_j - log(2π)/2), from the standard-normal noise ε (the one formula
    of the Gaussian log-prob: the sampler uses it on the ε it drew, ``diag_gaussian_log_prob`` on ε = (a - μ)/σ)."""
    return (-0.5 * noise * noise - log_std - 0.5 * np.log(2.0 * np.pi)).sum(-1)


def diag_gaussian_log_prob(dist_inputs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(a; μ, σ) summed over action dims; ``dist_inputs`` = [μ, log σ] along the last dim (RLlib's layout)."""
    mean, log_std = dist_inputs.chunk(2, dim=-1)
    return gaussian_log_prob_of_noise((actions - mean) * torch.exp(-log_std), log_std)


def categorical_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def adapt_policy(
    log_prob_fn: LogProbFn,
    params: dict[str, torch.Tensor],
    support: Sequence[dict[str, torch.Tensor]],
    *,
    lr: float,
    gamma: float,
    first_order: bool = False,
    normalize_advantages: bool = True,
    objective: str = "vpg",
) -> tuple[OrderedDict, list[float]]:
    """θ_{k+1} = θ_k - α ∇ L_inner(θ_k; support[k]) for k = 0..len(support)-1; returns (θ_K, inner losses).

    ``objective``: the inner loss, ``"vpg"`` (``vpg_loss``) or ``"lvc"`` (``lvc_loss``: same step, different
    second-order term).

    With ``first_order=False`` θ_K stays differentiable w.r.t. ``params`` to second order (the Learner's path);
    the EnvRunner calls it the same way and detaches. A batch may carry its ``"advantages"`` (they do not depend on
    θ); otherwise they are computed here.
    """
    loss_fn = inner_objective(objective)
    losses = []
    for batch in support:
        adv = batch.get("advantages")  # precomputed by a caller that adapts on the same episodes repeatedly
        if adv is None:
            adv = advantages(batch, gamma=gamma, normalize=normalize_advantages)
        loss = loss_fn(log_prob_fn(params, batch["obs"], batch["actions"]), adv, batch["mask"])
        losses.append(float(loss.detach()))
        params = maml.inner_step(loss, params, lr=lr, first_order=first_order)
    return OrderedDict(params), losses


def outer_loss(
    log_prob_fn: LogProbFn,
    adapted: dict[str, torch.Tensor],
    query: dict[str, torch.Tensor],
    *,
    gamma: float,
    clip: float,
    normalize_advantages: bool = True,
    adv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate of the adapted policy on the query episodes; returns (loss, logp)."""
    if adv is None:
        adv = advantages(query, gamma=gamma, normalize=normalize_advantages)
    logp = log_prob_fn(adapted, query["obs"], query["actions"])
    return clipped_surrogate_loss(logp, query["logp"], adv, query["mask"], clip=clip), logp


# --- the meta-gradient (what the Learner runs) --------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedTask:
    """One task's episodes as tensors for the meta-gradient, built once per meta-update (they do not depend on θ).

    ``support``: one dict per inner step, ``query``: one dict; each is ``EpisodeBatch.tensors()`` plus
    ``"advantages"`` (Â of those episodes).
    """

    support: tuple[dict[str, torch.Tensor], ...]
    query: dict[str, torch.Tensor]


def prepare_task(
    support: Sequence[EpisodeBatch], query: EpisodeBatch, *, dtype: torch.dtype, device, gamma: float,
    normalize_advantages: bool = True,
) -> PreparedTask:
    """Tensors and advantages of one task's episodes (new tensors: the batches are not touched)."""

    def with_adv(batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        t = batch.tensors(dtype, device)
        return {**t, "advantages": advantages(t, gamma=gamma, normalize=normalize_advantages)}

    return PreparedTask(tuple(with_adv(b) for b in support), with_adv(query))


def meta_gradient_loop(
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
    """Accumulate ∇θ Σ_tasks L_outer(θ_K,task(θ)) / num_tasks_total into ``.grad`` of ``params``, one task at a time.

    Per task: θ_K = ``adapt_policy`` on its support episodes (differentiable, second order unless ``first_order``),
    then the clipped surrogate on its query episodes, then one backward. The reference for any batched version.
    Returns (mean outer loss over ``tasks``, max |log π_θK(a|s) - logp recorded while sampling| over real steps).
    """
    total, max_dlogp = 0.0, 0.0
    for task in tasks:
        adapted, _ = adapt_policy(log_prob_fn, params, task.support, lr=inner_lr, gamma=gamma, first_order=first_order,
                                  objective=objective)
        loss, logp = outer_loss(log_prob_fn, adapted, task.query, gamma=gamma, clip=clip, adv=task.query["advantages"])
        (loss / num_tasks_total).backward()
        total += float(loss.detach())
        dlogp = ((logp.detach() - task.query["logp"]).abs() * task.query["mask"]).max()
        max_dlogp = max(max_dlogp, float(dlogp))
    return total / max(len(tasks), 1), max_dlogp


# --- a KL term on the outer step (ProMP) -----------------------------------------------------------------------------

#: dist_fn(params, obs (E,T,D)) -> the action-distribution inputs (E, T, ·): [μ, log σ] (Gaussian) or logits
DistFn = Callable[[dict, torch.Tensor], torch.Tensor]


def diag_gaussian_kl(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_o, σ_o) ‖ N(μ_n, σ_n)) summed over action dims; inputs [μ, log σ] along the last dim. (..., 2A) -> (...)

        KL = Σ_j [ log σ_n,j - log σ_o,j + (σ_o,j² + (μ_o,j - μ_n,j)²) / (2 σ_n,j²) - 1/2 ]
    """
    mu_o, log_std_o = old.chunk(2, dim=-1)
    mu_n, log_std_n = new.chunk(2, dim=-1)
    var_ratio = torch.exp(2.0 * (log_std_o - log_std_n))  # σ_o² / σ_n²
    mahalanobis = (mu_o - mu_n) ** 2 * torch.exp(-2.0 * log_std_n)
    return (log_std_n - log_std_o + 0.5 * (var_ratio + mahalanobis) - 0.5).sum(-1)


def categorical_kl(old_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_o ‖ p_n) = Σ_a p_o(a) (log p_o(a) - log p_n(a)) of two softmax distributions. (..., n) -> (...)"""
    log_p_o = torch.log_softmax(old_logits, dim=-1)
    return (log_p_o.exp() * (log_p_o - torch.log_softmax(new_logits, dim=-1))).sum(-1)


def policy_kl(old: torch.Tensor, new: torch.Tensor, *, discrete: bool) -> torch.Tensor:
    """Per-step KL(π_old ‖ π_new) from the two policies' distribution inputs (``categorical_kl`` or
    ``diag_gaussian_kl``)."""
    return categorical_kl(old, new) if discrete else diag_gaussian_kl(old, new)


def query_kls(
    log_prob_fn: LogProbFn,
    dist_fn: DistFn,
    params: dict[str, torch.Tensor],
    tasks: Sequence[PreparedTask],
    dists_old: Sequence[torch.Tensor],
    *,
    inner_lr: float,
    discrete: bool,
    first_order: bool = False,
    objective: str = "vpg",
) -> torch.Tensor:
    """The KL term of the outer objective, per task: KL̄_i(θ) = mean_t KL(π_θ'_old(·|s_t) ‖ π_θ'_i(θ)(·|s_t))
    over the real steps of task i's query episodes. (n,)

    θ'_i(θ) = ``adapt_policy`` on the task's support episodes (differentiable to second order unless
    ``first_order``), as in ``meta_gradient_loop``; ``dists_old[i]`` are the distribution inputs of the
    post-update policy before the meta-update's first outer step (``query_dists``, constants). ``log_prob_fn``
    adapts (the tasks carry their advantages: ``prepare_task``), ``dist_fn`` gives the adapted policy's
    distribution inputs on the query observations.
    """
    kls = []
    for task, old in zip(tasks, dists_old, strict=True):
        adapted, _ = adapt_policy(log_prob_fn, params, task.support, lr=inner_lr, gamma=1.0, first_order=first_order,
                                  objective=objective)
        kl = policy_kl(old, dist_fn(adapted, task.query["obs"]), discrete=discrete)
        kls.append(masked_mean(kl, task.query["mask"]))
    return torch.stack(kls)


def query_dists(
    log_prob_fn: LogProbFn, dist_fn: DistFn, params: dict[str, torch.Tensor], tasks: Sequence[PreparedTask], *,
    inner_lr: float, objective: str = "vpg",
) -> list[torch.Tensor]:
    """The post-update policy's distribution inputs on each task's query observations at ``params`` (constants:
    π_θ'_old of ``query_kls``)."""
    out = []
    for task in tasks:
        adapted, _ = adapt_policy(log_prob_fn, params, task.support, lr=inner_lr, gamma=1.0, first_order=True,
                                  objective=objective)
        with torch.no_grad():
            out.append(dist_fn({k: v.detach() for k, v in adapted.items()}, task.query["obs"]))
    return out
