"""MetaRLModule: an RLlib ``TorchRLModule`` hosting any ``metarl.models`` backbone (forward only).

The backbone maps observations to the action-distribution inputs directly (its own output projection is the
policy head): ``[μ, log σ]`` for Box actions (log σ a state-independent parameter, RLlib's ``TorchDiagGaussian``
layout), logits for Discrete. Stateful backbones make a stateful module (``STATE_IN``/``STATE_OUT``); a backbone
whose state is a plain tensor is carried under the key ``"h"``. ``max_seq_len`` in ``model_config`` must cover
the horizon: MAML backpropagates through whole episodes.

``model_config`` keys: ``backbone`` (name in ``metarl.models.available()``), ``width``, ``backbone_kwargs``,
``init_log_std``, ``max_seq_len``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from metarl import models
from metarl.rl import categorical_log_prob, diag_gaussian_log_prob

TENSOR_STATE_KEY = "h"


class MetaRLModule(TorchRLModule):
    def setup(self):
        cfg = self.model_config or {}
        if not isinstance(self.observation_space, gym.spaces.Box) or len(self.observation_space.shape) != 1:
            raise ValueError(f"MetaRLModule needs a flat Box observation space, got {self.observation_space}")
        obs_dim = int(np.prod(self.observation_space.shape))
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        if self.discrete:
            out_dim = int(self.action_space.n)
        elif isinstance(self.action_space, gym.spaces.Box) and len(self.action_space.shape) == 1:
            out_dim = int(self.action_space.shape[0])
        else:
            raise ValueError(f"MetaRLModule supports Discrete or 1-D Box actions, got {self.action_space}")
        self.backbone = models.build(
            cfg.get("backbone", "gru"),
            input_dim=obs_dim,
            output_dim=out_dim,
            width=int(cfg.get("width", 64)),
            **dict(cfg.get("backbone_kwargs") or {}),
        )
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((out_dim,), float(cfg.get("init_log_std", 0.0))))
        if cfg.get("dtype", "float32") == "float64":
            self.double()
        h0 = self.backbone.init_hidden(1)
        self._tensor_state = isinstance(h0, torch.Tensor)

    # --- state conversion between the backbone's form and RLlib's dict form -------------------------------------
    def _to_backbone_state(self, state):
        if not self.backbone.stateful:
            return {}
        return state[TENSOR_STATE_KEY] if self._tensor_state else dict(state)

    def _to_rllib_state(self, state):
        if not self.backbone.stateful:
            return {}
        return {TENSOR_STATE_KEY: state} if self._tensor_state else dict(state)

    def initial_state(self, batch_size: int) -> dict:
        """Batched initial state in RLlib's dict form (parameter dtype/device)."""
        p = next(self.parameters())
        return self._to_rllib_state(self.backbone.init_hidden(batch_size, device=p.device, dtype=p.dtype))

    def get_initial_state(self) -> dict:
        # RLlib: per-sample state WITHOUT a batch dim.
        return {k: v[0] for k, v in self.initial_state(1).items()}

    # --- forward ------------------------------------------------------------------------------------------------
    def dist_inputs(self, obs: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        """obs (B, D) or (B, T, D) -> (action-distribution inputs (B, [T,] out), next state in RLlib form)."""
        if state is None or not state:
            state = self.initial_state(obs.shape[0])
        y, next_state = self.backbone(obs, self._to_backbone_state(state))
        if not self.discrete:
            y = torch.cat([y, self.log_std.expand_as(y)], dim=-1)
        return y, self._to_rllib_state(next_state)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log π(a|s) over whole episodes from the initial state: obs (E, T, D) -> (E, T)."""
        y, _ = self.dist_inputs(obs)
        return categorical_log_prob(y, actions) if self.discrete else diag_gaussian_log_prob(y, actions)

    def _forward(self, batch, **kwargs):
        obs = batch[Columns.OBS].to(next(self.parameters()).dtype)
        y, state_out = self.dist_inputs(obs, batch.get(Columns.STATE_IN))
        out = {Columns.ACTION_DIST_INPUTS: y}
        if self.backbone.stateful:
            out[Columns.STATE_OUT] = state_out
        return out


def functional_log_prob(module: MetaRLModule, params: dict, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log π_params(a|s) (E, T) through ``torch.func.functional_call`` (the module itself is never mutated)."""
    out = torch.func.functional_call(module, params, ({Columns.OBS: obs},), strict=False)
    y = out[Columns.ACTION_DIST_INPUTS]
    return categorical_log_prob(y, actions) if module.discrete else diag_gaussian_log_prob(y, actions)
