"""A Tune trial that crashes is retried from its last checkpoint (FailureConfig) and continues its counters, with
local sampling and with remote EnvRunners (which must act with the restored weights: returns and log-prob mismatch of
the re-run iterations equal the reference's). Tune's checkpoints carry our checksum manifest and are verified.

One Ray session for the module; the trial actors import ``CrashOnceCallback`` from this file (tests/ on their path).
"""

from __future__ import annotations

import csv
import os
import pathlib

import pytest
import ray
from conftest import init_ray_with_tests_on_path

from tune_configs.baselines import SIZES, matched_widths, param_space, with_size
from tune_configs.callbacks import ModelSizeCallback

NAV = "navigation-2d"
SIZE = with_size(SIZES["smoke"], iterations=3)
#: env steps per iteration at the smoke size: 2 tasks x (2 support + 2 query episodes) x 20 steps
STEPS_PER_ITER = 2 * 4 * 20


class CrashOnceCallback(ModelSizeCallback):
    """Raises at the end of iteration 2, once per test (O_EXCL marker): what a lost trial looks like to Tune."""

    def on_train_result(self, *, algorithm, metrics_logger=None, result, **kwargs):
        super().on_train_result(algorithm=algorithm, metrics_logger=metrics_logger, result=result, **kwargs)
        if algorithm.iteration == 2:
            try:
                os.close(os.open(algorithm.config.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            raise RuntimeError("simulated trial failure at iteration 2")


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    init_ray_with_tests_on_path()  # workers import the crashing subclass below from this file
    yield
    ray.shutdown()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("num_env_runners", [0, 2])
def test_failed_trial_resumes_from_its_checkpoint_with_counters_and_tasks(tmp_path, num_env_runners):
    from ray import tune

    from rllib_ext.algorithm import MAML
    from rllib_ext.checkpoint import CHECKSUMS, verify_checksums

    # 2 remote runners at 0.5 CPU each: driver + runners fit the module's 2 CPUs
    size = with_size(SIZE, num_env_runners=num_env_runners, num_cpus_per_env_runner=0.5)
    widths = matched_widths(backbones=["mlp"], task_names=[NAV], target_params=size.target_params)
    results = {}
    for name, crash in (("retry", True), ("reference", False)):
        space = param_space(size, backbones=["mlp"], task_names=[NAV], seeds=1, methods=["maml"], widths=widths)
        if crash:
            space["callbacks_class"] = CrashOnceCallback
            space["crash_marker"] = str(tmp_path / "crashed")
        grid = tune.Tuner(
            MAML,
            param_space=space,
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(tmp_path),
                stop={"training_iteration": size.iterations},
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1),
                failure_config=tune.FailureConfig(max_failures=1),
                verbose=0,
            ),
        ).fit()
        assert len(grid) == 1 and grid[0].error is None, grid[0].error
        results[name] = grid[0]
    assert (tmp_path / "crashed").exists(), "the trial must actually have failed once"

    final = results["retry"].metrics
    assert final["training_iteration"] == 3
    # restored from checkpoint 1: lifetime counters continue, the failed iteration is not counted twice
    assert final["env_steps"]["lifetime"] == 3 * STEPS_PER_ITER
    # the task sampler's state came back too: the re-run iterations saw the reference run's tasks and returns
    ref = results["reference"].metrics
    assert final["adapt"]["return_step_0"] == pytest.approx(ref["adapt"]["return_step_0"], rel=1e-6)
    assert final["adapt"]["return_step_1"] == pytest.approx(ref["adapt"]["return_step_1"], rel=1e-6)
    assert final["meta"]["logp_mismatch"] < 1e-4  # the runners sampled with the Learner's (restored) weights
    ckpts = sorted(pathlib.Path(results["retry"].path).glob("checkpoint_*"))
    assert ckpts and all((c / CHECKSUMS).is_file() and verify_checksums(c, missing_ok=False) for c in ckpts)
    with open(pathlib.Path(results["retry"].path) / "progress.csv", newline="") as f:
        iters = [int(r["training_iteration"]) for r in csv.DictReader(f)]
    assert iters[-1] == 3 and 1 in iters
