"""RLlib callbacks the sweeps attach with ``config.callbacks(...)`` (importable by every Tune trial).

``ModelSizeCallback`` adds ``result["model"] = {"num_params": n}`` to every training result, where ``n`` is the
number of scalar parameters of the Learner's RLModule (backbone + policy head + log σ). Tune flattens it to the
column ``model/num_params``, which ``metarl report`` reads to show that the compared backbones are matched in size.
"""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core import DEFAULT_MODULE_ID


def _module_num_params(learner) -> int:
    return int(sum(p.numel() for p in learner.module[DEFAULT_MODULE_ID].parameters()))


class ModelSizeCallback(RLlibCallback):
    """Log ``model/num_params`` (counted once per Algorithm, on the first Learner)."""

    def __init__(self):
        super().__init__()
        self._num_params: int | None = None

    def on_train_result(self, *, algorithm, metrics_logger=None, result: dict, **kwargs) -> None:
        if self._num_params is None:
            counts = [r.get() for r in algorithm.learner_group.foreach_learner(_module_num_params)]
            self._num_params = int(counts[0])
        result["model"] = {"num_params": self._num_params}
