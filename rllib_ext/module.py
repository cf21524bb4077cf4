"""MetaRLModule: an RLlib ``TorchRLModule`` hosting a ``metarl.policy_net.PolicyNet`` (forward only).

The policy itself (any ``metarl.models`` backbone, ``[μ, log σ]`` or logits, the recurrent state as a dict) is the
core's ``PolicyNet``, reached as ``module.net``; everything that acts or differentiates (sampler, inner step,
meta-gradient, ``MetaPolicy``) uses ``module.net`` and ``metarl.policy_net.functional_log_prob``. This class only
maps RLlib's batch columns to it. ``max_seq_len`` in ``model_config`` must cover the horizon: MAML backpropagates
through whole episodes.

``model_config`` keys: ``backbone`` (name in ``metarl.models.available()``), ``width``, ``backbone_kwargs``,
``init_log_std``, ``max_seq_len``, ``dtype`` (``"float32"`` or ``"float64"``), ``trial_inputs`` (RL² inputs). Parameter names: ``net.backbone.*``
and ``net.log_std``.
"""

from __future__ import annotations

from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch import TorchRLModule

from metarl.policy_net import PolicyNet


class MetaRLModule(TorchRLModule):
    def setup(self):
        cfg = self.model_config or {}
        self.net = PolicyNet.for_spaces(
            self.observation_space,
            self.action_space,
            backbone=cfg.get("backbone", "gru"),
            width=int(cfg.get("width", 64)),
            backbone_kwargs=cfg.get("backbone_kwargs"),
            init_log_std=float(cfg.get("init_log_std", 0.0)),
            trial_inputs=bool(cfg.get("trial_inputs", False)),
        )
        if cfg.get("dtype", "float32") == "float64":
            self.double()

    def get_initial_state(self) -> dict:
        # RLlib: per-sample state WITHOUT a batch dim.
        return {k: v[0] for k, v in self.net.initial_state(1).items()}

    def _forward(self, batch, **kwargs):
        obs = batch[Columns.OBS].to(next(self.parameters()).dtype)
        y, state_out = self.net(obs, batch.get(Columns.STATE_IN))
        out = {Columns.ACTION_DIST_INPUTS: y}
        if self.net.stateful:
            out[Columns.STATE_OUT] = state_out
        return out
