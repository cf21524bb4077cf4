"""Shared test helpers: float64 default dtype, and a Ray session whose workers can import classes from tests/."""

from __future__ import annotations

import importlib.util
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


def assert_vmap_grads_equal_loop(loss, stacked: list, xs, *shared) -> None:
    """``vmap(grad(fn))`` over tasks equals ``grad(fn)`` task by task, for fn = ``loss`` and the MAML meta-loss
    ``loss(θ - 0.01 ∇loss(θ))`` (a gradient through the backward); ``loss(ps, x, *shared)`` -> scalar, ``stacked``
    the parameters with a leading task axis, ``xs`` the inputs per task, ``shared`` unbatched (the vmap rules'
    unbatched-input branch). Every reference gradient must be nonzero."""
    from torch.func import grad, vmap

    def meta_loss(ps, x, *rest):
        inner = grad(loss)(ps, x, *rest)
        return loss([p - 0.01 * g for p, g in zip(ps, inner)], x, *rest)

    for fn in (loss, meta_loss):
        got = vmap(grad(fn), in_dims=(0, 0, *[None] * len(shared)))(stacked, xs, *shared)
        for i in range(len(xs)):
            want = grad(fn)([p[i] for p in stacked], xs[i], *shared)
            for j, (a, b) in enumerate(zip(got, want)):
                assert float(b.detach().abs().sum()) > 0
                torch.testing.assert_close(a[i], b, rtol=1e-10, atol=1e-12, msg=f"{fn.__name__}: task {i}, param {j}")


def second_order(args: list[torch.Tensor], out: torch.Tensor) -> tuple[tuple, tuple]:
    """(d out / d args, d/d args of Σ v·grad + |grad|²): first derivatives and the gradient of a grad-dependent
    scalar, as MAML's create_graph path needs."""
    g1 = torch.autograd.grad(out, args, create_graph=True)
    v = torch.Generator().manual_seed(3)
    dep = sum((g * torch.randn(g.shape, generator=v, dtype=g.dtype)).sum() + (g * g).sum() for g in g1)
    return g1, torch.autograd.grad(dep, args)


def assert_all_close(names, got, want, what: str) -> None:
    """Each of ``got`` equals ``want`` (float64 tolerances), and no reference is all zeros."""
    for name, a, b in zip(names, got, want, strict=True):
        assert float(b.detach().abs().sum()) > 0, f"{name}: the reference {what} is zero, the check proves nothing"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{what} w.r.t. {name}")


def tiny_gaussian_mlp(g: torch.Generator, obs_dim: int, hidden: int, act_dim: int) -> dict[str, torch.Tensor]:
    """Parameters of a one-hidden-layer Gaussian policy (w1, b1, w2, b2, log_std) for hand-written oracles."""
    return {
        "w1": torch.randn(hidden, obs_dim, generator=g) * 0.5, "b1": torch.randn(hidden, generator=g) * 0.1,
        "w2": torch.randn(act_dim, hidden, generator=g) * 0.5, "b2": torch.randn(act_dim, generator=g) * 0.1,
        "log_std": torch.full((act_dim,), -0.3),
    }


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (the scripts are not a package), loaded fresh."""
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
