"""MAMLLearner: a ``TorchLearner`` whose update is the MAML meta-gradient step (loss only; math in metarl.rl).

For its shard of tasks (``TaskResult``s, never modified: their tensors are prepared once per meta-update,
``prepare``) it recomputes θ' differentiably from the support episodes with the same function the EnvRunner used
(``metarl.rl.adapt_policy``; second order unless ``first_order``), then takes ``outer_steps`` Adam steps on
ProMP's clipped surrogate of θ'(θ) on the query episodes (``meta_gradient``: all tasks of the shard at once,
``metarl.meta_batch.meta_gradient_batched``; the per-task loop ``metarl.rl.meta_gradient_loop`` is its reference
and stays callable, ``per_task_loop=True``). With several Learners the meta-gradient is
all-reduced by hand (RLlib 2.60's functional path does not), scaled so that N Learners equal one Learner on the
same tasks: every Learner divides by the TOTAL number of tasks, then the gradients are summed.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from metarl import trial
from metarl.meta_batch import meta_gradient_batched, trial_meta_gradient_batched
from metarl.policy_net import functional_log_prob
from metarl.rl import PreparedTask, meta_gradient_loop, prepare_task, query_dists, query_kls
from rllib_ext.jobs import TaskResult

logger = logging.getLogger(__name__)


class MAMLLearner(TorchLearner):
    def _make_modules_ddp_if_necessary(self) -> None:
        # No DDP wrapper: the functional meta-gradient bypasses DDP's hooks; we all-reduce ourselves. Start every
        # Learner from rank 0's initialisation instead (what DDP's constructor would have done).
        if dist.is_available() and dist.is_initialized():
            with torch.no_grad():
                for p in self.policy.parameters():
                    dist.broadcast(p.data, src=0)

    @property
    def policy(self):
        return self.module[DEFAULT_MODULE_ID].unwrapped()

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        params = self.get_parameters(self.module[module_id])
        self.register_optimizer(
            module_id=module_id,
            optimizer=torch.optim.Adam(params, lr=config.lr),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        raise NotImplementedError("MAMLLearner updates through meta_update(), not the batch update path")

    # --- the meta-update -----------------------------------------------------------------------------------------
    def prepare(self, task_results: Sequence[TaskResult]) -> list[PreparedTask]:
        """Episode tensors and advantages of each task, on this Learner's device and dtype (inputs untouched)."""
        p0 = next(self.policy.parameters())
        cfg = self.config
        if cfg.memory == "trial":
            return [
                trial.prepare_trial_task(r.support, r.query, cfg.num_envs_per_env_runner, dtype=p0.dtype,
                                         device=p0.device, gamma=cfg.gamma,
                                         normalize_advantages=cfg.normalize_advantages,
                                         trial_returns=cfg.uses_trial_returns)
                for r in task_results
            ]
        return [
            prepare_task(r.support, r.query, dtype=p0.dtype, device=p0.device, gamma=cfg.gamma,
                         normalize_advantages=cfg.normalize_advantages)
            for r in task_results
        ]

    def meta_gradient(
        self, tasks: Sequence[PreparedTask], *, num_tasks_total: int, per_task_loop: bool = False,
        first_order: bool | None = None,
    ) -> tuple[float, float]:
        """Accumulate ∇θ Σ_tasks L_outer(θ'_task(θ)) / num_tasks_total into ``.grad``; returns (loss, max |Δlogp|).

        All tasks at once (``metarl.meta_batch.meta_gradient_batched``; trial memory:
        ``trial_meta_gradient_batched``); ``per_task_loop=True`` runs the reference, ``metarl.rl.meta_gradient_loop``
        (trial memory: ``metarl.trial.trial_meta_gradient_loop``; same numbers, tests/test_batched_meta_grad.py,
        tests/test_trial_batched.py). Δlogp compares the recomputed log π_θ'(a|s) with the one recorded while
        sampling: ~0 at θ unchanged, which proves the query episodes were sampled by the θ' the Learner reconstructs.
        """
        cfg = self.config
        net = self.policy.net
        first_order = cfg.first_order if first_order is None else first_order
        if cfg.memory == "trial":  # whole trials through the carried state (tests/test_trial_batched.py)
            return (trial.trial_meta_gradient_loop if per_task_loop else trial_meta_gradient_batched)(
                net, dict(net.named_parameters()), tasks, num_envs=cfg.num_envs_per_env_runner,
                num_tasks_total=num_tasks_total, inner_lr=cfg.inner_lr, clip=cfg.clip_param,
                first_order=first_order, objective=cfg.inner_objective)
        return (meta_gradient_loop if per_task_loop else meta_gradient_batched)(
            lambda p, o, a: functional_log_prob(net, p, o, a)[0],
            dict(net.named_parameters()),
            tasks,
            num_tasks_total=num_tasks_total,
            inner_lr=cfg.inner_lr,
            gamma=cfg.gamma,
            clip=cfg.clip_param,
            first_order=first_order,
            objective=cfg.inner_objective,
        )

    def meta_update(self, task_results: Sequence[TaskResult], *, num_tasks_total: int,
                    first_order: bool | None = None) -> dict:
        """``outer_steps`` Adam steps on the meta-objective of this Learner's shard of tasks.

        With ``outer_kl_coeff`` > 0 the objective adds coeff · KL(π_θ'_old ‖ π_θ') of the post-update (query) policy;
        with ``outer_target_kl`` the remaining steps are skipped once that KL (mean over all tasks) exceeds it
        (the step that crossed it is kept). Logs ``outer_kl`` (after the last step taken) and ``outer_steps_run``.
        With ``outer_monotone`` a step after which the meta-objective (all-reduced) is worse than before it is
        shortened or undone (``_backtrack``) and ends the update; a pass after the last step measures it.
        ``first_order`` (None: the config's) is the Algorithm's choice under ``first_order_until``; logged.
        Also logs where this Learner's time went, in seconds: ``time_prepare_s`` (episode tensors, advantages),
        ``time_gradient_s`` (the meta-gradients), ``time_allreduce_s`` (the collectives, waits included) and
        ``time_learner_s`` (this whole method: those parts, Adam, clipping); the rest of ``time/meta_update_s`` is the
        calls to the Learners (the shards' way in, the metrics' way back, the wait for the slowest Learner).
        """
        cfg = self.config
        first_order = cfg.first_order if first_order is None else first_order
        t0 = time.perf_counter()
        tasks = self.prepare(task_results)  # episode tensors and advantages do not change across outer steps
        self._seconds = {"time_prepare_s": time.perf_counter() - t0, "time_gradient_s": 0.0, "time_allreduce_s": 0.0}
        optim = self.get_optimizer(DEFAULT_MODULE_ID)
        params = list(self.policy.parameters())
        metrics = {"first_order": int(first_order)}
        kl_on = cfg.outer_kl_coeff > 0 or cfg.outer_target_kl is not None
        dists_old = self._query_dists(tasks) if kl_on else None
        before = None  # (θ, Adam's state, metrics) before the last step taken: what a rejection restores
        for step in range(cfg.outer_steps + int(kl_on or cfg.outer_monotone)):
            measuring = step == cfg.outer_steps  # the pass after the last step: it measures, it does not step
            kl_grads = None
            if kl_on and step > 0:  # at step 0 θ' = θ'_old: KL and its gradient are 0
                metrics["outer_kl"], kl_grads = self._outer_kl(
                    tasks, dists_old, num_tasks_total=num_tasks_total, with_grad=not measuring, first_order=first_order)
            stop = measuring or (cfg.outer_target_kl is not None and metrics.get("outer_kl", 0.0) > cfg.outer_target_kl)
            if stop and not cfg.outer_monotone:
                break  # .grad keeps the last step's gradient
            optim.zero_grad(set_to_none=False)
            for p, g in zip(params, kl_grads or ()):
                p.grad = g.clone() if p.grad is None else p.grad.add_(g)
            loss, max_dlogp = self._reduced_meta_gradient(tasks, params, num_tasks_total, first_order)
            if before is not None and loss > metrics["outer_loss_last"]:  # the last step made it worse
                metrics = self._backtrack(tasks, params, optim, before, num_tasks_total=num_tasks_total,
                                          first_order=first_order)
                break
            metrics["outer_loss_last"] = loss
            if stop:
                break
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip else math.inf)
            if not torch.isfinite(norm):
                raise FloatingPointError(
                    f"non-finite meta-gradient (norm {float(norm)}) at outer step {step}: meta-update aborted, "
                    "parameters left unchanged"
                )
            if step == 0:
                metrics.update(outer_loss=loss, grad_norm=float(norm), logp_mismatch=max_dlogp, outer_steps_run=0)
            if cfg.outer_monotone:
                before = ([p.detach().clone() for p in params], copy.deepcopy(optim.state_dict()), dict(metrics))
            optim.step()
            metrics["outer_steps_run"] = step + 1
        if cfg.outer_monotone:
            metrics.setdefault("outer_step_kept", 1.0)
        return {**metrics, **self._seconds, "time_learner_s": time.perf_counter() - t0}

    def _reduced_meta_gradient(self, tasks, params: list[torch.Tensor], num_tasks_total: int,
                               first_order: bool) -> tuple[float, float]:
        """``meta_gradient`` into ``.grad``, summed with the other Learners' (loss too): (loss, max |Δlogp|). Adds
        the seconds of each part to ``time_gradient_s`` and ``time_allreduce_s`` (the waits for the other Learners
        included)."""
        t0 = time.perf_counter()
        loss, max_dlogp = self.meta_gradient(tasks, num_tasks_total=num_tasks_total, first_order=first_order)
        t1 = time.perf_counter()
        if dist.is_available() and dist.is_initialized():
            loss = self._all_reduce(params, loss * len(tasks)) / num_tasks_total
        self._seconds["time_gradient_s"] += t1 - t0
        self._seconds["time_allreduce_s"] += time.perf_counter() - t1
        return loss, max_dlogp

    def _backtrack(self, tasks, params: list[torch.Tensor], optim, before: tuple, *, num_tasks_total: int,
                   first_order: bool) -> dict:
        """The last step Δ made the meta-objective worse: θ_before + Δ/2^j for j = 1..``outer_backtracks`` (a line
        search, as TRPO's), keeping the first that is not worse than θ_before (Adam's moments stay: they are of
        the gradient at θ_before); if none is, θ and Adam's state as before the step. Returns the metrics, with
        ``outer_step_kept`` the fraction of Δ kept (0: undone)."""
        theta_before, adam_before, metrics = before
        deltas = [p.detach() - t for p, t in zip(params, theta_before)]
        for j in range(1, self.config.outer_backtracks + 1):
            with torch.no_grad():
                for p, t, d in zip(params, theta_before, deltas):
                    p.copy_(t + d / 2**j)
            for p in params:  # the pass also writes a gradient: the update ends here, so it is dropped
                p.grad.zero_()
            loss, _ = self._reduced_meta_gradient(tasks, params, num_tasks_total, first_order)
            if loss <= metrics["outer_loss_last"]:
                return {**metrics, "outer_loss_last": loss, "outer_steps_run": metrics["outer_steps_run"] + 1,
                        "outer_step_kept": 0.5**j}
        with torch.no_grad():
            for p, t in zip(params, theta_before):
                p.copy_(t)
        optim.load_state_dict(adam_before)
        return {**metrics, "outer_step_kept": 0.0}

    def _query_dists(self, tasks: Sequence[PreparedTask]) -> list[torch.Tensor]:
        """π_θ'_old: the post-update policy's distribution inputs on each task's query, before the first step."""
        net, cfg = self.policy.net, self.config
        return query_dists(lambda p, o, a: functional_log_prob(net, p, o, a)[0], self._dist_fn,
                           dict(net.named_parameters()), tasks, inner_lr=cfg.inner_lr, objective=cfg.inner_objective)

    def _dist_fn(self, params: dict, obs: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.policy.net, params, (obs, None), strict=False)[0]

    def _outer_kl(self, tasks: Sequence[PreparedTask], dists_old, *, num_tasks_total: int, with_grad: bool,
                  first_order: bool) -> tuple[float, list[torch.Tensor] | None]:
        """(mean over ALL tasks of KL(π_θ'_old ‖ π_θ'(θ)) on the query, all-reduced so that every Learner stops at the
        same step; with ``with_grad`` and outer_kl_coeff > 0: outer_kl_coeff · ∇θ Σ_tasks KL / num_tasks_total)."""
        net, cfg = self.policy.net, self.config
        grad = with_grad and cfg.outer_kl_coeff > 0
        kls = query_kls(lambda p, o, a: functional_log_prob(net, p, o, a)[0], self._dist_fn,
                        dict(net.named_parameters()), tasks, dists_old, inner_lr=cfg.inner_lr,
                        discrete=net.discrete, first_order=first_order or not grad,
                        objective=cfg.inner_objective)
        grads = None
        if grad:
            grads = torch.autograd.grad(cfg.outer_kl_coeff * kls.sum() / num_tasks_total,
                                        list(self.policy.parameters()), allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.policy.parameters(), grads)]
        kl_sum = torch.tensor([float(kls.detach().sum())], dtype=torch.float64, device=kls.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(kl_sum)
        return float(kl_sum) / num_tasks_total, grads

    @staticmethod
    def _all_reduce(params: list[torch.Tensor], loss_sum: float) -> float:
        """Sum the gradients and ``loss_sum`` over Learners in ONE collective; returns the summed loss.

        Every gradient and the loss travel in one float64 buffer (exact for float32 gradients of 2 Learners: the sum
        is rounded once, as float32's own sum): one synchronisation point per outer step instead of one per
        parameter tensor, which on busy cores is what the per-tensor reduce waited on (BENCHMARKS.md, layouts)."""
        for p in params:  # every Learner reduces the same list of tensors, used or not
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        loss_t = torch.tensor([loss_sum], dtype=torch.float64, device=params[0].device)  # NCCL: on the device
        flat = torch.cat([p.grad.reshape(-1).to(torch.float64) for p in params] + [loss_t])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for p, chunk in zip(params, flat.split([p.numel() for p in params] + [1])):
            p.grad.copy_(chunk.view_as(p.grad))
        return float(flat[-1])
