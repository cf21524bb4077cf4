"""PolicyNet: any ``metarl.models`` backbone as a stochastic policy, and its log-prob under given parameters (torch).

The backbone maps observations to the action-distribution inputs directly (its output projection is the policy
head): ``[μ, log σ]`` for Box actions, with log σ a state-independent parameter (RLlib's ``TorchDiagGaussian``
layout), logits for Discrete actions. The recurrent state is a dict (RLlib's form): a backbone whose state is a
plain tensor carries it under the key ``"h"``; stateless backbones have ``{}``::

    net = PolicyNet.for_spaces(env.observation_space, env.action_space, backbone="gru", width=64)
    state = net.initial_state(8)
    y, state = net(obs, state)                                  # obs (8, D) -> y (8, 2A); or (8, T, D) -> (8, T, 2A)
    logp, state = functional_log_prob(net, params, obs, actions)     # log π_params(a|s), net itself untouched

``rllib_ext.module.MetaRLModule`` hosts one (RLlib's forward); the sampler (``metarl.sampler``), the runner's inner
step, the Learner's meta-gradient and ``MetaPolicy`` all act and differentiate through this class.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from metarl import models
from metarl.rl import categorical_log_prob, diag_gaussian_log_prob

#: key of a backbone's tensor state in the dict form
TENSOR_STATE_KEY = "h"

State = dict[str, torch.Tensor]


class PolicyNet(nn.Module):
    """backbone (obs -> μ or logits) + state-independent log σ (Box actions)."""

    def __init__(self, backbone: models.Backbone, *, discrete: bool, init_log_std: float = 0.0,
                 trial_inputs: bool = False):
        super().__init__()
        self.backbone = backbone
        self.discrete = bool(discrete)
        self.trial_inputs = bool(trial_inputs)  # RL² inputs: [obs, prev action, prev reward, episode-start flag]
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((backbone.output_dim,), float(init_log_std)))
        self._tensor_state = isinstance(backbone.init_hidden(1), torch.Tensor)

    @classmethod
    def for_spaces(cls, observation_space: gym.Space, action_space: gym.Space, *, backbone: str = "gru",
                   width: int = 64, backbone_kwargs: dict | None = None, init_log_std: float = 0.0,
                   trial_inputs: bool = False) -> PolicyNet:
        """A flat Box observation space; Discrete or 1-D Box actions (ValueError naming the space otherwise).

        ``trial_inputs``: the backbone reads ``trial_input(obs, ...)``, RL²'s ``[obs, previous action (one-hot for
        Discrete), previous reward, episode-start flag]`` (D + A + 2 inputs) instead of ``obs``.
        """
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(f"PolicyNet needs a flat Box observation space, got {observation_space}")
        discrete = isinstance(action_space, gym.spaces.Discrete)
        if discrete:
            out_dim = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            out_dim = int(action_space.shape[0])
        else:
            raise ValueError(f"PolicyNet supports Discrete or 1-D Box actions, got {action_space}")
        in_dim = int(np.prod(observation_space.shape)) + (out_dim + 2 if trial_inputs else 0)
        net = models.build(backbone, input_dim=in_dim, output_dim=out_dim, width=int(width),
                           **dict(backbone_kwargs or {}))
        return cls(net, discrete=discrete, init_log_std=init_log_std, trial_inputs=trial_inputs)

    @property
    def action_feature_dim(self) -> int:
        """Width of an action as a trial input: the number of actions (one-hot) or the action dimension."""
        return int(self.backbone.output_dim)

    def action_features(self, actions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Actions (..., [A]) as trial inputs (..., action_feature_dim): one-hot for Discrete, as is for Box."""
        if self.discrete:
            return torch.nn.functional.one_hot(actions.long(), self.action_feature_dim).to(dtype)
        return actions.to(dtype)

    @staticmethod
    def trial_input(obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
                    first: torch.Tensor) -> torch.Tensor:
        """RL²'s input ``[obs, prev action features, prev reward, episode-start flag]`` along the last dim
        (obs (..., D), prev_action (..., A), prev_reward and first (...)); zeros for the previous action and
        reward at a trial's first step."""
        dt = obs.dtype
        return torch.cat([obs, prev_action.to(dt), prev_reward.to(dt).unsqueeze(-1), first.to(dt).unsqueeze(-1)], -1)

    @property
    def stateful(self) -> bool:
        return self.backbone.stateful

    def initial_state(self, batch_size: int) -> State:
        """Batched initial state in dict form, on the parameters' device and dtype."""
        if not self.backbone.stateful:
            return {}
        p = next(self.parameters())
        h = self.backbone.init_hidden(batch_size, device=p.device, dtype=p.dtype)
        return {TENSOR_STATE_KEY: h} if self._tensor_state else dict(h)

    def forward(self, obs: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """obs (B, D) or (B, T, D) -> (action-distribution inputs (B, [T,] out), next state); state None or {}: initial."""
        if not self.backbone.stateful:
            y, _ = self.backbone(obs, {})
            next_state = {}
        else:
            if not state:
                state = self.initial_state(obs.shape[0])
            y, h = self.backbone(obs, state[TENSOR_STATE_KEY] if self._tensor_state else dict(state))
            next_state = {TENSOR_STATE_KEY: h} if self._tensor_state else dict(h)
        if not self.discrete:
            y = torch.cat([y, self.log_std.expand_as(y)], dim=-1)
        return y, next_state

    def dist_log_prob(self, dist_inputs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log π(a|s) from this net's action-distribution inputs: (..., out) and actions -> (...)."""
        if self.discrete:
            return categorical_log_prob(dist_inputs, actions)
        return diag_gaussian_log_prob(dist_inputs, actions)


def functional_log_prob(
    net: PolicyNet, params: dict[str, torch.Tensor], obs: torch.Tensor, actions: torch.Tensor,
    state: State | None = None,
) -> tuple[torch.Tensor, State]:
    """log π_params(a|s) over whole sequences through ``torch.func.functional_call`` (``net`` is never mutated).

    obs (E, T, D), actions (E, T[, A]), ``state`` the state at t = 0 (None: the initial state) ->
    (log-probs (E, T), the state after the last step). ``params`` names parameters as ``net.named_parameters()``
    does (``backbone.*``, ``log_std``); differentiable w.r.t. ``params``.
    """
    y, state_out = torch.func.functional_call(net, params, (obs, state), strict=False)
    return net.dist_log_prob(y, actions), state_out
