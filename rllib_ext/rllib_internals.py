"""The only place that touches private RLlib attributes (checked against ray 2.60.0; re-check on upgrade).

Why they are needed:

- ``LearnerGroup._learner``: with ``num_learners=0`` the Learner lives in the driver. RLlib 2.60 has no public
  accessor for it, and the meta-update must call our own method (``MAMLLearner.meta_update``) on it, with Python
  objects (``TaskResult``s), not through ``LearnerGroup.update``'s batch path.
- ``LearnerGroup._worker_manager``: ``LearnerGroup.foreach_learner`` sends the SAME function to every remote
  Learner; the meta-update sends each Learner its own shard of tasks, which needs the actor manager's
  ``foreach_actor`` with one function per actor (results come back in actor order).

If a Ray upgrade renames either, only this file changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def local_learner(learner_group):
    """The Learner of a local ``LearnerGroup`` (``num_learners=0``); ValueError for a group of remote Learners."""
    if not learner_group.is_local:
        raise ValueError("local_learner(): the LearnerGroup has remote Learners (num_learners > 0)")
    return learner_group._learner


def call_each_learner(learner_group, fns: Sequence[Callable]) -> list:
    """Run ``fns[i](learner_i)`` on remote Learner i (one function per Learner, in actor order); their results.

    Raises the remote error if a call failed (Learners are not restarted by RLlib).
    """
    if len(fns) != len(learner_group):
        raise ValueError(f"call_each_learner(): {len(fns)} functions for {len(learner_group)} Learners")
    return [r.get() for r in learner_group._worker_manager.foreach_actor(list(fns))]
