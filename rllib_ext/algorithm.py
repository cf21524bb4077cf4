"""MAML (the loop) on RLlib's new API stack; its numbers are ``rllib_ext.config.MAMLConfig``.

One meta-iteration (``MAML.training_step``)::

    tasks  = sample meta_batch_size tasks (seeded sampler; its state is checkpointed)
    runner r, for each of its tasks (MAMLEnvRunner.run_task, no weight round-trip to the driver):
        support_0 ~ π(θ); θ_1 = θ - α∇L_inner; ... ; query ~ π(θ_K)   (θ_k in a dict: the module keeps θ)
    learners: θ <- Adam step(s) on Σ_tasks L_outer(θ_K(θ)) (MAMLLearner.meta_update), shards all-reduced
    runners  <- θ

``inner_steps=0`` is the non-meta baseline: multi-task training of θ on the same tasks without the inner step
(adapted the same way at test time by ``metarl evaluate``).

With ``eval_every`` > 0, after the update of the first iteration, of every ``eval_every``-th and of the last (the
one reaching ``budget_env_steps`` / ``budget_iterations``) the new θ is adapted on the family's held-out test tasks
(``MAML.evaluate_heldout`` = ``rllib_ext.heldout.run_heldout`` over ``run_jobs``, the function ``metarl evaluate``
runs) and logged as ``eval/...``; between evaluations the last values are logged again with ``eval/fresh`` = 0.
Evaluation env steps are ``eval/env_steps_lifetime``, never ``env_steps/lifetime``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import COMPONENT_LEARNER_GROUP, DEFAULT_MODULE_ID
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

from metarl import tasks
from rllib_ext import checkpoint
from rllib_ext.config import META_DEFAULTS, MAMLConfig, gym_env_id
from rllib_ext.jobs import TaskJob, TaskResult, iteration_metrics, reduce_learner_metrics
from rllib_ext.rllib_internals import call_each_learner, local_learner

__all__ = ["MAML", "MAMLConfig", "META_DEFAULTS", "gym_env_id"]

logger = logging.getLogger(__name__)


def weights_digest(state: dict, keys=None) -> str:
    """sha256 over a module state's arrays (names sorted; only ``keys`` if given): equal digests = equal weights."""
    h = hashlib.sha256()
    for name in sorted(keys if keys is not None else state):
        a = np.ascontiguousarray(np.asarray(state[name].detach().cpu() if hasattr(state[name], "detach")
                                            else state[name]))
        h.update(name.encode())
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _node_id() -> str:
    """The Ray node id of the calling process (run inside an EnvRunner: where its tasks ran)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _lost_runners_message(runner_nodes: dict[int, str], config) -> str:
    """Why no EnvRunner came back: the nodes the runners last ran on, as Ray reports them now, and what to do."""
    import ray

    nodes = {n["NodeID"]: n for n in ray.nodes()}
    where = []
    for node_id in sorted(set(runner_nodes.values())):
        n = nodes.get(node_id, {})
        state = "alive" if n.get("Alive") else f"dead: {n.get('DeathReasonMessage') or 'unknown reason'}"
        where.append(f"{node_id} ({n.get('NodeManagerAddress', '?')}, {state}; runners "
                     f"{sorted(i for i, v in runner_nodes.items() if v == node_id)})")
    need = {"CPU": config.num_cpus_per_env_runner, "GPU": config.num_gpus_per_env_runner,
            **(config.custom_resources_per_env_runner or {})}
    need = {k: v for k, v in need.items() if v}
    return (
        f"MAML: no EnvRunner came back within env_runner_restore_timeout_s = {config.env_runner_restore_timeout_s} s. "
        f"The runners last ran on node(s): {'; '.join(where) or 'none recorded'}. Ray restarts a lost runner only "
        f"on a node with {need} free per runner: add one (or let the autoscaler replace the lost node), then "
        f"resume from the last checkpoint (metarl train --resume)."
    )


class MAML(Algorithm):
    @classmethod
    def get_default_config(cls) -> MAMLConfig:
        return MAMLConfig()

    def setup(self, config) -> None:
        config.validate_meta()
        super().setup(config)
        self._task_env = tasks.make(self.config.task, **self.config.task_options).unwrapped
        seed = self.config.task_seed if self.config.task_seed is not None else (self.config.seed or 0)
        self._task_rng = np.random.default_rng(seed)
        self.last_tasks: list = []
        self._retried_tasks = 0  # tasks re-run after a runner failure (lifetime of this Algorithm object)
        self._runner_nodes: dict[int, str] = {}  # EnvRunner index -> Ray node id it last ran tasks on (named if lost)
        self._last_eval: dict[str, float] = {}  # the latest held-out evaluation, carried forward between evaluations
        self._eval_env_steps = 0  # env steps of every held-out evaluation (lifetime; not in env_steps/lifetime)
        self._trained_steps = 0  # training env steps so far (what env_steps/lifetime reports)
        self.push_weights()

    # --- one meta-iteration --------------------------------------------------------------------------------------
    def training_step(self) -> None:
        cfg = self.config
        iteration = self.iteration
        task_list = self._task_env.sample_tasks(cfg.meta_batch_size, seed=int(self._task_rng.integers(2**31)))
        self.last_tasks = task_list  # the meta-batch of the latest iteration (recorded by the run loop)
        jobs = [
            TaskJob(task=t, task_index=i, iteration=iteration, seed=int(self._task_rng.integers(2**31)),
                    inner_steps=cfg.inner_steps, episodes_per_task=cfg.episodes_per_task)
            for i, t in enumerate(task_list)
        ]
        t0 = time.perf_counter()
        results = self.run_jobs(jobs)
        t_sample = time.perf_counter() - t0
        trained_steps = self._lifetime_steps(results)
        t0 = time.perf_counter()
        learner_metrics = self.meta_update(results, first_order=self._first_order_now(trained_steps))
        t_update = time.perf_counter() - t0
        self.push_weights()
        self._log_iteration(results, learner_metrics, t_sample=t_sample, t_update=t_update)
        self._log_heldout(iteration, trained_steps=trained_steps)

    def _first_order_now(self, trained_steps: int) -> bool:
        """The meta-gradient's order this iteration: ``first_order``, or first order while ``trained_steps`` (this
        iteration's included) is below ``first_order_until``."""
        cfg = self.config
        return cfg.first_order if cfg.first_order_until is None else trained_steps < cfg.first_order_until

    # --- held-out evaluation (rllib_ext.heldout: the same function as metarl evaluate) ---------------------------
    def evaluate_heldout(self) -> tuple[list[dict], dict[str, float]]:
        """Adapt the current θ on the family's held-out test tasks (``eval_*`` fields), the jobs spread over the
        runners by ``run_jobs``; returns (per-task records, ``eval/...`` metrics without the prefix)."""
        from rllib_ext.heldout import heldout_metrics, run_heldout, trial_envs_of

        cfg = self.config
        per_task = run_heldout(self.run_jobs, task=cfg.task, task_options=cfg.task_options,
                               num_tasks=cfg.eval_tasks, test_seed=cfg.eval_test_seed,
                               inner_steps=cfg.eval_inner_steps,
                               episodes=cfg.eval_episodes or cfg.episodes_per_task, seed=cfg.eval_seed,
                               trial_envs=trial_envs_of(cfg), inner_lr=cfg.eval_inner_lr)
        return per_task, heldout_metrics(per_task)

    def _eval_due(self, iteration: int, trained_steps: int) -> bool:
        """Evaluate at the first iteration, every ``eval_every`` iterations and at the last (the budget's)."""
        cfg = self.config
        if not cfg.eval_every:
            return False
        last = ((cfg.budget_env_steps is not None and trained_steps >= cfg.budget_env_steps)
                or (cfg.budget_iterations is not None and iteration + 1 >= cfg.budget_iterations))
        return iteration == 0 or (iteration + 1) % cfg.eval_every == 0 or last

    def _lifetime_steps(self, results: list[TaskResult]) -> int:
        """Training env steps up to and including this iteration (``env_steps/lifetime`` once reduced)."""
        self._trained_steps += sum(r.env_steps for r in results)
        return self._trained_steps

    def _log_heldout(self, iteration: int, *, trained_steps: int) -> None:
        """Log the held-out metrics: fresh ones when due, else the last ones carried forward (``eval/fresh`` = 0),
        so that the metric is never NaN after the first evaluation (ASHA would let a NaN pass a rung)."""
        fresh = self._eval_due(iteration, trained_steps)
        if fresh:
            t0 = time.perf_counter()
            _, values = self.evaluate_heldout()
            self._eval_env_steps += values["env_steps"]
            self._last_eval = {**values, "time_s": time.perf_counter() - t0, "at_env_steps": trained_steps}
        if not self._last_eval:
            return
        m = self.metrics
        for key, v in self._last_eval.items():
            m.log_value(("eval", *key.split("/")), v, window=1)
        m.log_value(("eval", "fresh"), int(fresh), window=1)
        m.log_value(("eval", "env_steps_lifetime"), self._eval_env_steps, window=1)

    def run_jobs(self, jobs: list[TaskJob]) -> list[TaskResult]:
        """Run every job on the runners; re-run the jobs of dead runners. Never drops a task silently."""
        group = self.env_runner_group
        done: dict[int, TaskResult] = {}
        todo = list(jobs)
        for attempt in range(self.config.max_task_retries + 1):
            if group.num_remote_env_runners() == 0:
                for r in group.local_env_runner.run_tasks(todo):
                    done[r.task_index] = r
            else:
                if attempt > 0 or not group.healthy_env_runner_ids():
                    self._wait_for_runners()
                ids = group.healthy_env_runner_ids()
                shares = [todo[i :: len(ids)] for i in range(len(ids))]
                ids, shares = zip(*[(i, s) for i, s in zip(ids, shares) if s])
                fns = [lambda er, s=s: (er.worker_index, _node_id(), er.run_tasks(s)) for s in shares]
                for index, node, out in group.foreach_env_runner(fns, local_env_runner=False,
                                                                 remote_worker_ids=list(ids)):
                    self._runner_nodes[index] = node
                    for r in out:
                        done[r.task_index] = r
            todo = [j for j in jobs if j.task_index not in done]
            if not todo:
                return [done[j.task_index] for j in jobs]
            logger.warning(
                "MAML: %d task(s) %s lost with a failed EnvRunner; retrying (%d/%d)",
                len(todo), [j.task_index for j in todo], attempt + 1, self.config.max_task_retries,
            )
            self._retried_tasks += len(todo)
        raise RuntimeError(
            f"MAML: tasks {[j.task_index for j in todo]} of iteration {jobs[0].iteration} could not be sampled after "
            f"{self.config.max_task_retries} retries"
        )

    def _wait_for_runners(self) -> None:
        """Bring failed runners back, push θ to them; wait until at least one is healthy.

        Ray restarts a dead runner wherever its resources are free: on a surviving node, or on a node that joins
        later (the replacement of a lost one). The wait is bounded by ``env_runner_restore_timeout_s``; then the
        run fails naming the nodes the runners last ran on (and whether Ray reports them dead).
        """
        group = self.env_runner_group
        deadline = time.monotonic() + self.config.env_runner_restore_timeout_s
        while True:
            self.restore_env_runners(group)
            if group.healthy_env_runner_ids():
                self.push_weights()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(_lost_runners_message(self._runner_nodes, self.config))
            time.sleep(1.0)

    def meta_update(self, results: list[TaskResult], *, first_order: bool | None = None) -> dict:
        """The Learners' meta-update on the meta-batch; metrics reduced over Learners (``reduce_learner_metrics``).
        ``first_order``: this update's order (None: the config's ``first_order``)."""
        n = len(results)
        group = self.learner_group
        if group.is_local:
            return local_learner(group).meta_update(results, num_tasks_total=n, first_order=first_order)
        k = len(group)  # one shard per Learner (by task)
        shards = [results[i * n // k : (i + 1) * n // k] for i in range(k)]
        per_learner = call_each_learner(group, [lambda lr, s=s: lr.meta_update(s, num_tasks_total=n,
                                                                                first_order=first_order)
                                                for s in shards])
        return reduce_learner_metrics(per_learner)

    # --- metrics ----------------------------------------------------------------------------------------------
    def _log_iteration(self, results, learner_metrics, *, t_sample: float, t_update: float) -> None:
        m = self.metrics
        values = iteration_metrics(results)
        for key, v in values.items():
            m.log_value(tuple(key.split("/")), v, window=1)
        for key, v in learner_metrics.items():
            m.log_value(("meta", key), float(v), window=1)
        steps = values["env_steps/this_iter"]
        m.log_value(("env_steps", "lifetime"), steps, reduce="lifetime_sum")
        m.log_value((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), steps, reduce="lifetime_sum")
        m.log_value(("time", "sample_and_adapt_s"), t_sample, window=1)
        m.log_value(("time", "meta_update_s"), t_update, window=1)
        m.log_value(("tasks", "retried_lifetime"), self._retried_tasks, window=1)

    # --- weights: Learner -> EnvRunners, a push the caller waits for -------------------------------------------
    #: seconds ``push_weights`` waits for every healthy EnvRunner to confirm the new weights
    weights_push_timeout_s: float = 300.0

    def push_weights(self, runner_ids: list[int] | None = None) -> list[int]:
        """Set the Learner's θ on the local EnvRunner and on every healthy remote one, and WAIT until each confirms.

        Why not ``EnvRunnerGroup.sync_weights``: in RLlib 2.60 it is fire-and-forget (``timeout_seconds=0``) through
        the actor manager's async path, which silently DROPS a call to a runner that still has a ``set_state`` call
        in flight (``max_requests_in_flight_per_env_runner=1``). RLlib's ``setup``, ``restore_from_path`` and
        ``set_state`` send such calls back to back, so after a restore a runner could keep the initial weights and
        sample the first resumed iteration with them. Here each runner sets the weights on its module (no
        ``weights_seq_no`` gating) and answers with a digest of what it now holds; a healthy runner that does not
        answer, or holds other weights, is an error. A runner that dies meanwhile is left to the restart path
        (``restore_env_runners`` pushes again). Returns the ids of the remote runners that confirmed.
        """
        import ray

        state = self.learner_group.get_state(components=f"learner/rl_module/{DEFAULT_MODULE_ID}",
                                             inference_only=True)["learner"]["rl_module"][DEFAULT_MODULE_ID]
        want = weights_digest(state)
        group = self.env_runner_group
        if group.local_env_runner is not None:
            group.local_env_runner.module.set_state(state)
        if group.num_remote_env_runners() == 0:
            return []
        ids = list(runner_ids) if runner_ids is not None else group.healthy_env_runner_ids()
        ref = ray.put(state)

        def set_weights(er):
            er.module.set_state(ray.get(ref))
            return er.worker_index, weights_digest(er.module.get_state(inference_only=True), keys=state)

        answers = dict(group.foreach_env_runner(set_weights, local_env_runner=False, remote_worker_ids=ids,
                                                timeout_seconds=self.weights_push_timeout_s))
        wrong = sorted(i for i, d in answers.items() if d != want)
        silent = sorted(set(group.healthy_env_runner_ids()) & set(ids) - set(answers))
        if wrong or silent:
            raise RuntimeError(
                f"MAML: weight push to EnvRunners failed: runners {silent} did not confirm within "
                f"{self.weights_push_timeout_s} s, runners {wrong} hold other weights than the Learner's"
            )
        return sorted(answers)

    def restore_env_runners(self, env_runner_group):
        """RLlib's restart of failed runners, then the Learner's weights pushed (and confirmed) to those runners."""
        restored = super().restore_env_runners(env_runner_group)
        if restored and env_runner_group is self.env_runner_group:
            self.push_weights(runner_ids=restored)
        return restored

    def restore_from_path(self, path, *args, **kwargs):
        """Verify the checkpoint's checksums (when it has a manifest), restore, then push θ to every runner.

        Every restore goes through here: the run loop's ``--resume``, Tune's trial restart (``load_checkpoint``)
        and ``Algorithm.from_checkpoint``.
        """
        checkpoint.verify_checksums(path, missing_ok=True)
        try:
            super().restore_from_path(path, *args, **kwargs)
        except Exception as e:
            named = checkpoint.diagnose_unreadable(path, e) if os.path.isdir(path) else None
            if named is None:
                raise
            raise named from e
        self.push_weights()

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Tune's save (sweep trials): RLlib's, plus the checksum manifest of every file written."""
        super().save_checkpoint(checkpoint_dir)
        checkpoint.write_checksums(checkpoint_dir)

    # --- checkpoint: the task sampler's random state travels with the Algorithm --------------------------------
    def get_state(self, *args, **kwargs):
        state = super().get_state(*args, **kwargs)
        state["maml_task_rng"] = self._task_rng.bit_generator.state
        state["maml_heldout"] = {"last_eval": dict(self._last_eval), "eval_env_steps": self._eval_env_steps,
                                 "trained_steps": self._trained_steps}
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        if "maml_task_rng" in state:
            self._task_rng.bit_generator.state = state["maml_task_rng"]
        if "maml_heldout" in state:  # the carried-forward evaluation survives a restore
            h = state["maml_heldout"]
            self._last_eval, self._eval_env_steps = dict(h["last_eval"]), h["eval_env_steps"]
            self._trained_steps = h["trained_steps"]
        if COMPONENT_LEARNER_GROUP in state:  # RLlib's own sync here is fire-and-forget (see push_weights)
            self.push_weights()
