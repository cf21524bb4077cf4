"""``--num-env-runners auto`` / ``--num-learners auto``: the layout picked from the cores (metarl.apps.layout)."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

from metarl.apps.layout import Layout, pick_layout, resolve


@pytest.mark.parametrize("cores, batch, runners, learners", [
    (1, 20, 0, 0),  # one core: everything in the driver
    (2, 20, 2, 2),
    (3, 20, 3, 2),  # Learners shard the tasks: the largest divisor of 20 that is <= 3
    (16, 20, 16, 10),
    (2, 7, 2, 0),  # a prime meta-batch above the cores: no sharding, the Learner stays in the driver
    (8, 1, 8, 0),
])
def test_pick_layout(cores, batch, runners, learners):
    layout = pick_layout(cores, meta_batch_size=batch)
    assert (layout.num_env_runners, layout.num_learners) == (runners, learners)
    assert batch % max(layout.num_learners, 1) == 0
    assert layout.ray_cpus == 1 + runners + learners


def test_resolve_replaces_only_auto():
    assert resolve(3, 0, cores=2, meta_batch_size=20) == (3, 0, None)
    assert resolve("auto", 0, cores=2, meta_batch_size=20) == (2, 0, Layout(2, 2, 0))
    assert resolve(1, "auto", cores=2, meta_batch_size=20) == (1, 2, Layout(2, 1, 2))
    runners, learners, layout = resolve("auto", "auto", cores=4, meta_batch_size=20)
    assert (runners, learners) == (4, 4) and "4 remote EnvRunners, 4 remote Learners" in layout.describe()


@pytest.mark.parametrize("cores", [0, -1, 1.5, "2"])
def test_bad_core_counts_are_refused(cores):
    with pytest.raises(ValueError, match="cores"):
        pick_layout(cores, meta_batch_size=20)


def _args(*argv: str):
    import argparse

    from metarl.apps.flags import add_arguments

    return add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_auto_flags_become_the_layout_of_the_given_cores():
    from metarl.apps.flags import config_from_args

    args = _args("--num-env-runners", "auto", "--num-learners", "auto", "--num-cpus", "2", "--meta-batch-size", "20")
    config = config_from_args(args)
    assert (config.num_env_runners, config.num_learners) == (2, 2)
    assert args.layout == Layout(2, 2, 2) and "layout for 2 core(s)" in args.layout.describe()
    fixed = _args("--num-env-runners", "1", "--num-learners", "auto", "--num-cpus", "4", "--meta-batch-size", "6")
    config = config_from_args(fixed)
    assert (config.num_env_runners, config.num_learners) == (1, 3)
    plain = _args("--num-env-runners", "3")
    config_from_args(plain)
    assert plain.layout is None and plain.num_env_runners == 3


def test_run_mujoco_defaults_to_auto_and_metarl_train_to_zero():
    args = load_benchmark("run_mujoco").build_parser().parse_args([])
    assert (args.num_env_runners, args.num_learners) == ("auto", "auto")
    assert (_args().num_env_runners, _args().num_learners) == (0, 0)


def test_make_run_prints_the_layout_first_then_the_preset(monkeypatch, capsys):
    """``make run`` (run_mujoco.py's defaults: halfcheetah-dir, ``--preset auto``): its first line names the layout,
    the next what the MuJoCo preset set. The training itself is not what this checks: it is replaced."""
    mod = load_benchmark("run_mujoco")
    monkeypatch.setattr(mod, "run", lambda args: {"completed": 0, "out": args.out, "last": None, "checkpoint": None})
    assert mod.main(["--num-cpus", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "layout for 2 core(s)" in lines[0]
    assert lines[1].startswith("--preset auto (mujoco: task halfcheetah-dir) set first_order_until=9000000")


def test_a_count_that_is_neither_int_nor_auto_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        _args("--num-env-runners", "many")
    assert e.value.code == 2 and "'many' is neither an integer nor 'auto'" in capsys.readouterr().err
