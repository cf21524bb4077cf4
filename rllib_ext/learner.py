"""MAMLLearner: a ``TorchLearner`` whose update is the MAML meta-gradient step (loss only; math in metarl.rl).

For its shard of tasks it recomputes θ' differentiably from the support episodes with the same function the
EnvRunner used (``metarl.rl.adapt_policy``; second order unless ``first_order``), then takes ``outer_steps`` Adam
steps on ProMP's clipped surrogate of θ'(θ) on the query episodes. With several Learners the meta-gradient is
all-reduced by hand (RLlib 2.60's functional path does not), scaled so that N Learners equal one Learner on the
same tasks: every Learner divides by the TOTAL number of tasks, then the gradients are summed.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from metarl.rl import adapt_policy, advantages, outer_loss
from rllib_ext.module import functional_log_prob

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
    def meta_gradient(self, task_results: list[dict], *, num_tasks_total: int) -> tuple[float, float]:
        """Accumulate ∇θ Σ_tasks L_outer(θ'_task(θ)) / num_tasks_total into ``.grad``; returns (loss, max |Δlogp|).

        Δlogp compares the recomputed log π_θ'(a|s) with the one recorded while sampling: ~0 at θ unchanged,
        which proves the query episodes were sampled by the θ' the Learner reconstructs.
        """
        cfg = self.config
        module = self.policy
        p0 = next(module.parameters())
        params = dict(module.named_parameters())
        fn = lambda p, o, a: functional_log_prob(module, p, o, a)  # noqa: E731
        total, max_dlogp = 0.0, 0.0
        for res in task_results:
            support = res.get("_support_t") or [b.tensors(p0.dtype, p0.device) for b in res["support"]]
            query = res["_query_t"] if "_query_t" in res else res["query"].tensors(p0.dtype, p0.device)
            adapted, _ = adapt_policy(
                fn,
                params,
                support,
                lr=cfg.inner_lr,
                gamma=cfg.gamma,
                first_order=cfg.first_order,
                normalize_advantages=cfg.normalize_advantages,
            )
            loss, logp = outer_loss(fn, adapted, query, gamma=cfg.gamma, clip=cfg.clip_param, adv=res.get("_adv"))
            (loss / num_tasks_total).backward()
            total += float(loss.detach())
            dlogp = ((logp.detach() - query["logp"]).abs() * query["mask"]).max()
            max_dlogp = max(max_dlogp, float(dlogp))
        return total / max(len(task_results), 1), max_dlogp

    def meta_update(self, task_results: list[dict], *, num_tasks_total: int) -> dict:
        """``outer_steps`` Adam steps on the meta-objective of this Learner's shard of tasks."""
        cfg = self.config
        module = self.policy
        p0 = next(module.parameters())
        norm = cfg.normalize_advantages
        for res in task_results:  # episode tensors and their advantages do not change across outer steps
            res["_support_t"] = []
            for b in res["support"]:
                t = b.tensors(p0.dtype, p0.device)
                res["_support_t"].append({**t, "advantages": advantages(t, gamma=cfg.gamma, normalize=norm)})
            res["_query_t"] = res["query"].tensors(p0.dtype, p0.device)
            res["_adv"] = advantages(res["_query_t"], gamma=cfg.gamma, normalize=norm)
        optim = self.get_optimizer(DEFAULT_MODULE_ID)
        params = list(module.parameters())
        metrics = {}
        for step in range(cfg.outer_steps):
            optim.zero_grad(set_to_none=False)
            loss, max_dlogp = self.meta_gradient(task_results, num_tasks_total=num_tasks_total)
            if dist.is_available() and dist.is_initialized():
                for p in params:  # every Learner reduces the same list of tensors, used or not
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                loss_t = torch.tensor([loss * len(task_results)], dtype=torch.float64, device=p0.device)  # NCCL: CUDA
                dist.all_reduce(loss_t)
                loss = float(loss_t) / num_tasks_total
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip else math.inf)
            if not torch.isfinite(norm):
                raise FloatingPointError(
                    f"non-finite meta-gradient (norm {float(norm)}) at outer step {step}: meta-update aborted, "
                    "parameters left unchanged"
                )
            optim.step()
            if step == 0:
                metrics = {"outer_loss": loss, "grad_norm": float(norm), "logp_mismatch": max_dlogp}
        metrics["outer_loss_last"] = loss
        for res in task_results:
            for key in ("_support_t", "_query_t", "_adv"):
                res.pop(key, None)
        return metrics
