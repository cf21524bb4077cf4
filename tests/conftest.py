"""Shared test helpers: float64 default dtype, and a Ray session whose workers can import classes from tests/."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch


@pytest.fixture
def float64():
    """Run a test with torch's default dtype set to float64 (oracle comparisons at ~1e-10)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def init_ray_with_tests_on_path() -> None:
    """``ray.init`` for one test module; Ray workers get tests/ on PYTHONPATH to import test-only subclasses."""
    import ray

    tests_dir = str(pathlib.Path(__file__).parent)
    ray.init(
        address="local",  # a new local instance even when a `ray start` cluster runs on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}},
    )


def assert_same_run(got: list[dict], want: list[dict]) -> None:
    """Two runs' records are the same run: iterations, tasks, env-step counters, returns and outer loss."""
    assert [r["iteration"] for r in got] == [r["iteration"] for r in want]
    for g, w in zip(got, want):
        assert g["task_params"] == w["task_params"], f"iteration {g['iteration']}: different tasks"
        assert g["env_steps/lifetime"] == w["env_steps/lifetime"]
        for k in ("adapt/return_step_0", "adapt/return_step_1", "meta/outer_loss_last"):
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (g["iteration"], k)
