"""Several Ray nodes on this machine (``ray.cluster_utils.Cluster``): EnvRunners on a worker node, a node lost.

The cluster (module fixture): a head that offers NO CPU, to which this pytest process connects as the driver
(it holds the Learner, which needs no Ray CPU), and a worker node with 2 CPUs. Every EnvRunner (1 CPU) must land
on a worker node; the tests read the runners' node ids back (``ray.get_runtime_context().get_node_id()``).
Losing a node = ``Cluster.remove_node(allow_graceful=False)`` (its raylet and agents are killed) plus SIGKILL of
the node's EnvRunner processes: every Ray process of the node. GCS health checks every second (3 misses) let Ray
declare the node dead within seconds.

What a cluster user gets (README "Run on a cluster"):
- a worker node lost in the middle of an iteration: the run waits, Ray restarts the runners on the replacement
  node that joins, the tasks of that iteration run again, and every record equals that of an uninterrupted run
  (the oracle: the same seeds sampled in the driver, ``num_env_runners=0``);
- no replacement: the run fails after ``env_runner_restore_timeout_s``, naming the lost node.

The cluster's nodes are child processes of this test; ``Cluster.shutdown`` stops exactly them (never `ray stop`).
Marked ``cluster``: the Makefile runs it in its own pytest process (tests/run_cluster_tests.py).
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time

import pytest
import ray

from rllib_ext.algorithm import MAMLConfig
from rllib_ext.runner import MAMLEnvRunner

pytestmark = pytest.mark.cluster

HEAD_CPUS = 0  # the head offers no CPU: the EnvRunners can only run on a worker node
WORKER_CPUS = 2
FAST_HEALTH_CHECKS = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
                      "health_check_failure_threshold": 3}
BLOCK_ITERATION = 1  # Algorithm.iteration during the 2nd train(): the runners hold its tasks until released
TASKS = 4
STEPS_PER_ITER = TASKS * 2 * 2 * 20  # tasks x (support + query) x 2 episodes x horizon 20


class BlockOnceRunner(MAMLEnvRunner):
    """Holds the tasks of iteration ``BLOCK_ITERATION`` until ``<block_dir>/release`` exists: the test loses the
    node while both runners are inside an iteration. Each runner first writes ``started_<index>`` (its pid)."""

    def run_tasks(self, jobs):
        folder = pathlib.Path(self.config.block_dir)
        if jobs and jobs[0].iteration == BLOCK_ITERATION and not (folder / "release").exists():
            (folder / f"started_{self.worker_index}").write_text(str(os.getpid()))
            deadline = time.monotonic() + 240
            while not (folder / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().run_tasks(jobs)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=HEAD_CPUS, include_dashboard=False,
                                                          _system_config=FAST_HEALTH_CHECKS))
    try:
        c.add_node(num_cpus=WORKER_CPUS)
        tests_dir = str(pathlib.Path(__file__).parent)  # the runners import BlockOnceRunner from this file
        ray.init(address=c.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}})
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture
def worker(cluster):
    """A live worker node (a test that loses one leaves the cluster without; the next gets a new one)."""
    if not cluster.worker_nodes:
        cluster.add_node(num_cpus=WORKER_CPUS)
    (node,) = cluster.worker_nodes
    return node


def tiny(num_env_runners: int) -> MAMLConfig:
    return (
        MAMLConfig()
        .meta(task="navigation-2d", backbone="gru", width=8, meta_batch_size=TASKS, episodes_per_task=2,
              outer_steps=1, horizon=20)
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=2)
        .debugging(seed=5)
    )


def remote_config(block_dir, **fault_tolerance) -> MAMLConfig:
    cfg = tiny(2).env_runners(env_runner_cls=BlockOnceRunner).fault_tolerance(
        restart_failed_env_runners=True, delay_between_env_runner_restarts_s=0.0,
        env_runner_health_probe_timeout_s=1.0, **fault_tolerance)
    cfg.block_dir = str(block_dir)  # travels to the runners with the config
    return cfg


def runner_nodes(algo) -> list[str]:
    return algo.env_runner_group.foreach_env_runner(lambda er: ray.get_runtime_context().get_node_id(),
                                                    local_env_runner=False)


def numbers(result: dict) -> dict:
    """What must not change when a node is lost: returns before/after adaptation, outer loss, step counters."""
    return {"return_step_0": result["adapt"]["return_step_0"], "return_step_1": result["adapt"]["return_step_1"],
            "outer_loss_last": result["meta"]["outer_loss_last"], "steps": result["env_steps"]["this_iter"],
            "lifetime": result["env_steps"]["lifetime"]}


def assert_same(got: dict, want: dict, it: int) -> None:
    assert got["steps"] == want["steps"] == STEPS_PER_ITER and got["lifetime"] == want["lifetime"], (it, got, want)
    for k in ("return_step_0", "return_step_1", "outer_loss_last"):
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (it, k)


def lose_node(cluster, node, pids: list[int]) -> None:
    """Kill every Ray process of a worker node: raylet and agents (no graceful shutdown), then its workers."""
    cluster.remove_node(node, allow_graceful=False)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 60
    while any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
        assert time.monotonic() < deadline, "Ray never declared the lost node dead"
        time.sleep(0.2)


def wait_for(pred, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_node_lost_mid_iteration_run_continues_on_a_replacement_node(cluster, worker, tmp_path):
    ref_algo = tiny(0).build_algo()  # the oracle: the same seeds, sampled in the driver
    try:
        want = [numbers(ref_algo.train()) for _ in range(3)]
    finally:
        ref_algo.stop()

    algo = remote_config(tmp_path).build_algo()
    try:
        got = [numbers(algo.train())]
        first = runner_nodes(algo)
        assert first == [worker.node_id] * 2, f"runners on {first}; head {cluster.head_node.node_id}"
        pids = algo.env_runner_group.foreach_env_runner(lambda er: os.getpid(), local_env_runner=False)

        box: dict = {}
        thread = threading.Thread(target=lambda: box.update(result=_train_or_error(algo)))
        thread.start()
        wait_for(lambda: len(list(tmp_path.glob("started_*"))) == 2, "both runners inside iteration 2")
        lose_node(cluster, worker, pids)  # here, in the middle of iteration 2
        (tmp_path / "release").touch()  # restarted runners do not hold the tasks again
        time.sleep(2.0)  # the run waits: no node has a free CPU for a runner
        assert thread.is_alive(), box
        replacement = cluster.add_node(num_cpus=WORKER_CPUS)  # only the main thread may start nodes
        thread.join(timeout=240)
        assert not thread.is_alive(), "iteration 2 did not finish after the replacement node joined"
        r2 = box["result"]
        assert not isinstance(r2, BaseException), repr(r2)
        got.append(numbers(r2))
        assert r2["tasks"]["retried_lifetime"] == TASKS, "every task of the lost iteration ran again"
        got.append(numbers(algo.train()))

        def both_back_on_the_replacement() -> bool:  # a runner may still be restarting after the first came back
            algo.restore_env_runners(algo.env_runner_group)
            return runner_nodes(algo) == [replacement.node_id] * 2

        wait_for(both_back_on_the_replacement, f"both runners on the replacement node; got {runner_nodes(algo)}")
    finally:
        algo.stop()
    for it, (g, w) in enumerate(zip(got, want), 1):
        assert_same(g, w, it)


def _train_or_error(algo):
    try:
        return algo.train()
    except BaseException as e:  # noqa: BLE001 - handed to the main thread, which asserts on it
        return e


@pytest.mark.timeout(300)
def test_node_lost_without_replacement_fails_naming_the_node(cluster, worker, tmp_path):
    (tmp_path / "release").touch()  # no holding here: the node is lost between iterations
    algo = remote_config(tmp_path, env_runner_restore_timeout_s=5.0).build_algo()
    try:
        algo.train()
        assert runner_nodes(algo) == [worker.node_id] * 2
        pids = algo.env_runner_group.foreach_env_runner(lambda er: os.getpid(), local_env_runner=False)
        lose_node(cluster, worker, pids)
        with pytest.raises(RuntimeError) as err:
            algo.train()
    finally:
        algo.stop()
    msg = str(err.value)
    assert "env_runner_restore_timeout_s = 5.0" in msg, msg
    assert f"{worker.node_id} (" in msg and "dead" in msg and "runners [1, 2]" in msg, msg
