"""Test-time adaptation: a few SGD steps on the model itself, in place.

Unlike the MAML inner loop (`metarl.maml`, functional, differentiable), test-time adaptation changes the deployed
model: each call of ``Adapter.update_step(x, y, hidden_state)`` takes ``config.num_steps`` steps

    θ ← θ - α · clip(∇θ L(f_θ(x, stopgrad(h)), y))            α = config.learning_rate

on the given batch, with the hidden state detached (no gradient flows into the past). Usage::

    adapter = Adapter(model, AdaptationConfig(learning_rate=0.01, num_steps=5))
    loss, steps = adapter.update_step(x, y, hidden_state=h)      # model's weights have changed

Keep a copy (``copy.deepcopy(model)``) if you need the pre-adaptation weights back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metarl.maml import (
    check_lr,
    check_state,
    check_steps,
    check_task,
    describe_state,
    functional_forward,
    map_state,
    params_of,
    sanitize_grads,
    state_leaves,
    takes_state,
)

logger = logging.getLogger(__name__)

__all__ = ["AdaptationConfig", "Adapter"]


@dataclass
class AdaptationConfig:
    """Numbers of test-time adaptation (validated on construction)."""

    learning_rate: float = 0.01
    """SGD step size α (> 0)."""
    num_steps: int = 5
    """Gradient steps taken by each ``update_step`` call (>= 1)."""
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    """``loss_fn(y_pred, y) -> scalar``; None means mean squared error."""
    grad_clip: float | None = None
    """Clip the global L2 norm of each step's gradient to this value (> 0); None: no clipping."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and what is allowed."""
        check_lr(self.learning_rate, name="learning_rate")
        check_steps(self.num_steps, name="num_steps")
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise ValueError(f"loss_fn must be callable(y_pred, y) or None, got {self.loss_fn!r}")
        if self.grad_clip is not None:
            check_lr(self.grad_clip, name="grad_clip")


class Adapter:
    """Adapts ``model`` in place by plain SGD on (x, y) batches; works with metarl backbones and plain modules."""

    def __init__(self, model: nn.Module, config: AdaptationConfig | None = None, device: str | torch.device = "cpu"):
        self.config = AdaptationConfig() if config is None else config
        if not isinstance(self.config, AdaptationConfig):
            raise ValueError(f"config must be an AdaptationConfig, got {type(self.config).__name__}")
        self.config.validate()
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.loss_fn = self.config.loss_fn or F.mse_loss

    def _check_hidden(self, hidden_state, batch: int):
        if hidden_state is None:
            return None
        if not takes_state(self.model):
            raise ValueError(f"hidden_state was given but {type(self.model).__name__}.forward takes no hidden state")
        check_state(self.model, hidden_state, name="hidden_state")
        lead = {t.shape[0] for t in state_leaves(hidden_state, name="hidden_state").values()}
        if lead - {batch}:
            raise ValueError(f"hidden_state has shapes {describe_state(hidden_state)} but x has batch {batch}")
        return map_state(hidden_state, lambda t: t.detach().to(self.device))

    def update_step(self, x: torch.Tensor, y: torch.Tensor, hidden_state=None) -> tuple[float, int]:
        """Take ``config.num_steps`` SGD steps on ``loss_fn(model(x, h), y)``; return (last loss, steps taken).

        x ``(B, D)`` or ``(B, T, D)``; y with the same leading dims; ``hidden_state`` a batch-first state for B rows
        (detached) or None. The returned loss is the loss at the last step, measured before that step was applied.
        """
        check_task(self.model, x, y)
        hidden = self._check_hidden(hidden_state, x.shape[0])
        x, y = x.to(self.device), y.to(self.device)
        params = params_of(self.model)
        alpha, clip = self.config.learning_rate, self.config.grad_clip
        loss_value = math.nan
        for _ in range(self.config.num_steps):
            y_pred, _ = functional_forward(self.model, x, hidden, params)  # (B, [T,] O)
            loss = self.loss_fn(y_pred, y)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            named = sanitize_grads(dict(zip(params, grads)))
            scale = 1.0
            if clip is not None:
                norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))
                scale = min(1.0, clip / (norm + 1e-6))  # as torch.nn.utils.clip_grad_norm_
            with torch.no_grad():
                for name, p in params.items():
                    if named[name] is not None:
                        p.sub_(alpha * scale * named[name])
            loss_value = float(loss.detach())
        logger.debug("adapted %d steps, last loss %.6g", self.config.num_steps, loss_value)
        return loss_value, self.config.num_steps
