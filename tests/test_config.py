"""MAMLConfig's table of fields (rllib_ext/fields.py): one source for the defaults, the ``.meta()`` docs, the CLI
flags and the validation. Bad configs and flags are refused before RLlib sees them (no Ray here), each message
naming the field and the value. Oracles: hand-written bad values, RLlib's own -1 behaviour, a hand-computed size.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re

import pytest
import torch

from metarl.apps import cli, flags
from rllib_ext import fields
from rllib_ext.config import META_DEFAULTS, MAMLConfig
from rllib_ext.fields import FIELDS

NO_CUDA = torch.cuda.device_count() == 0
TINY = ["--task", "navigation-2d", "--backbone", "gru", "--width", "8", "--meta-batch-size", "2",
        "--episodes-per-task", "2", "--num-envs-per-runner", "2", "--outer-steps", "1", "--horizon", "10"]


def tiny() -> MAMLConfig:
    """A good config (validates in milliseconds): navigation-2d, GRU of width 8, 2 tasks x 2 episodes."""
    return (MAMLConfig().meta(task="navigation-2d", backbone="gru", width=8, meta_batch_size=2, episodes_per_task=2,
                              horizon=10)
            .env_runners(num_envs_per_env_runner=2))


# --- the table of bad configs (Python API) ------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
BAD_CONFIGS = [  # (change, what the message must name: "field = value", or a tuple of such parts)
    # bools are bools
    (lambda c: c.meta(first_order="no"), "first_order = 'no'"),
    (lambda c: c.meta(normalize_advantages="false"), "normalize_advantages = 'false'"),
    (lambda c: c.meta(first_order=1), "first_order = 1"),
    # -1 is no sentinel anywhere (RLlib would drop it on save)
    (lambda c: c.meta(max_task_retries=-1), "max_task_retries = -1"),
    (lambda c: c.env_runners(num_env_runners=-1), "num_env_runners = -1"),
    (lambda c: c.debugging(seed=-1), "seed = -1"),
    (lambda c: c.meta(task_seed=-1), "task_seed = -1"),
    (lambda c: c.meta(init_log_std=-1.0), "init_log_std = -1.0"),
    (lambda c: c.learners(num_gpus_per_learner=-1), "num_gpus_per_learner = -1"),
    # types
    (lambda c: c.meta(clip_param="0.3"), "clip_param = '0.3'"),
    (lambda c: c.meta(task_seed="abc"), "task_seed = 'abc'"),
    (lambda c: c.meta(horizon=2.5), "horizon = 2.5"),
    (lambda c: c.meta(width=True), "width = True"),
    (lambda c: c.meta(task_options="velocity_range=0,3"), "task_options = 'velocity_range=0,3'"),
    (lambda c: c.meta(task=None), "task = None"),
    # ranges and finiteness
    (lambda c: c.meta(init_log_std=NAN), "init_log_std = nan"),
    (lambda c: c.meta(inner_lr=INF), "inner_lr = inf"),
    (lambda c: c.meta(inner_lr=0.0), "inner_lr = 0.0"),
    (lambda c: c.meta(eval_inner_lr=-0.5), "eval_inner_lr = -0.5"),
    (lambda c: c.meta(horizon=0), "horizon = 0"),
    (lambda c: c.meta(clip_param=1.0), "clip_param = 1.0"),
    (lambda c: c.training(gamma=1.01), "gamma = 1.01"),
    (lambda c: c.training(lr=0.0), "lr = 0.0"),
    (lambda c: c.training(grad_clip=0.0), "grad_clip = 0.0"),
    (lambda c: setattr(c, "num_envs_per_env_runner", 0) or c, "num_envs_per_env_runner = 0"),  # as from_dict sets it
    (lambda c: c.meta(max_seq_len=5), "max_seq_len = 5"),
    # choices
    (lambda c: c.meta(dtype="float16"), "dtype = 'float16'"),
    (lambda c: c.meta(task="navigation-3d"), "task = 'navigation-3d'"),
    (lambda c: c.meta(backbone="resnet"), "backbone = 'resnet'"),
    # task options and backbone kwargs against their signatures
    (lambda c: c.meta(task_options={"bogus": 1}), ("task_options = {'bogus': 1}", "allowed: ['goal_tolerance'")),
    (lambda c: c.meta(task_options={"max_episode_steps": 5}), "task_options = {'max_episode_steps': 5}"),
    (lambda c: c.meta(task_options={"goal_tolerance": -1.0}), "task_options = {'goal_tolerance': -1.0}"),
    (lambda c: c.meta(backbone_kwargs={"bogus": 1}), ("backbone_kwargs = {'bogus': 1}", "allowed: ['use_fused']")),
    (lambda c: c.meta(backbone="transformer", backbone_kwargs={"bogus": 1}), "backbone_kwargs = {'bogus': 1}"),
    (lambda c: c.meta(backbone="transformer", width=10), "width = 10"),
    # sizes that cannot fit
    (lambda c: c.meta(meta_batch_size=10_000_000_000), "meta_batch_size = 10000000000"),
    (lambda c: c.meta(width=200_000), "width = 200000"),
    (lambda c: c.meta(horizon=1_000_000_000_000), "horizon = 1000000000000"),
    # fields together
    (lambda c: c.meta(episodes_per_task=3), "episodes_per_task = 3"),
]
GPU_CONFIGS = [  # GPUs asked for on a machine without CUDA (no Ray running: this machine's devices count)
    (lambda c: c.learners(num_gpus_per_learner=1), "num_gpus_per_learner = 1"),
    (lambda c: c.learners(num_gpus_per_learner=1, num_learners=1), "num_gpus_per_learner = 1"),
]


@pytest.mark.parametrize(("change", "named"), BAD_CONFIGS + (GPU_CONFIGS if NO_CUDA else []),
                         ids=lambda x: x if isinstance(x, str) else x[0] if isinstance(x, tuple) else "")
def test_bad_config_is_refused_naming_field_and_value(change, named):
    cfg = change(tiny())
    with pytest.raises(ValueError) as e:
        cfg.validate_meta()  # what validate(), build_algo() and `metarl train` call (local GPUs: not in validate())
    for part in (named,) if isinstance(named, str) else named:
        assert part in str(e.value)
    assert re.search(r"allowed|must|invalid|needs?", str(e.value))  # and says what is allowed


def test_bad_config_fails_in_build_algo_before_ray_starts(monkeypatch):
    import ray

    def no_ray(*a, **k):
        raise AssertionError("ray.init called although the config was bad")

    monkeypatch.setattr(ray, "init", no_ray)
    with pytest.raises(ValueError, match=r"first_order = 'no'"):
        tiny().meta(first_order="no").build_algo()


def test_a_good_config_validates_and_reaches_the_envs():
    cfg = (tiny().meta(task_options={"goal_tolerance": 0.5}, backbone_kwargs={"use_fused": False}, task_seed=3,
                       max_seq_len=10, dtype="float64", init_log_std=-0.5)
           .training(grad_clip=None))
    cfg.validate()
    assert cfg.env_config == {"goal_tolerance": 0.5, "max_episode_steps": 10}  # the horizon reaches every env
    assert cfg.get_default_rl_module_spec().model_config["max_seq_len"] == 10
    default_horizon = tiny().meta(horizon=None)
    default_horizon.validate()
    assert default_horizon.max_episode_steps == 100 and "max_episode_steps" not in default_horizon.env_config


# --- -1: RLlib drops it, so we refuse it ------------------------------------------------------------------------
def test_rllib_drops_minus_one_on_save_which_is_why_it_is_refused():
    """The upstream behaviour the -1 rows guard against: ``get_state`` leaves out every value equal to -1."""
    state = MAMLConfig().debugging(seed=-1).meta(max_task_retries=-1, init_log_std=-1.0).get_state()
    assert "seed" not in state and "max_task_retries" not in state and "init_log_std" not in state
    assert state["inner_lr"] == 0.1  # other values are kept


def test_removing_the_minus_one_rule_lets_the_row_through(monkeypatch):
    """Mutation shown in a test: without the -1 rule, init_log_std = -1.0 (a finite number) would validate."""
    cfg = tiny().meta(init_log_std=-1.0)
    with pytest.raises(ValueError, match="init_log_std = -1.0"):
        cfg.validate_meta()
    monkeypatch.setattr(fields, "RLLIB_DROPPED", object())
    cfg.validate_meta()


# --- the CLI: same table, exit code 2 before Ray ------------------------------------------------------------------
BAD_FLAGS = [  # (extra argv of `metarl train`, what stderr must name)
    (["--seed", "-1"], "seed = -1"),
    (["--max-task-retries", "-1"], "max_task_retries = -1"),
    (["--num-env-runners", "-1"], "num_env_runners = -1"),
    (["--num-gpus-per-learner", "-1"], "num_gpus_per_learner = -1.0"),
    (["--num-cpus", "0"], "--num-cpus = 0"),
    (["--iterations", "0"], "--iterations = 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every = 0"),
    (["--torch-threads", "0"], "--torch-threads = 0"),
    (["--horizon", "0"], "horizon = 0"),
    (["--horizon", "1000000000000"], "horizon = 1000000000000"),
    (["--meta-batch-size", "10000000000"], "meta_batch_size = 10000000000"),
    (["--width", "200000"], "width = 200000"),
    (["--inner-lr", "0"], "inner_lr = 0.0"),
    (["--outer-lr", "-1"], "lr = -1.0 (flag --outer-lr)"),
    (["--clip-param", "1.5"], "clip_param = 1.5"),
    (["--init-log-std", "nan"], "init_log_std = nan"),
    (["--gamma", "0"], "gamma = 0.0"),
    (["--dtype", "float16"], "dtype = 'float16'"),
    (["--task", "navigation-3d"], "task = 'navigation-3d'"),
    (["--episodes-per-task", "3"], "episodes_per_task = 3"),
    (["--max-seq-len", "5"], "max_seq_len = 5"),
    (["--task-options", '{"bogus": 1}'], "task_options = {'bogus': 1} (flag --task-options) is invalid: unknown"),
    (["--task-options", '{"max_episode_steps": 5}'], "--horizon 5"),
    (["--backbone-kwargs", '{"bogus": 1}'], "backbone_kwargs = {'bogus': 1}"),
    (["--task-options", "goal_tolerance=1"], "--task-options: 'goal_tolerance=1' is not JSON"),  # argparse
    (["--backbone-kwargs", "[1]"], "--backbone-kwargs: '[1]' is not a JSON object"),  # argparse
    (["--seed", "abc"], "--seed: invalid int value: 'abc'"),  # argparse
    (["--num-envs-per-runner", "0"], "num_envs_per_env_runner = 0 (flag --num-envs-per-runner)"),
]
GPU_FLAGS = [
    (["--num-gpus-per-learner", "1"], "num_gpus_per_learner = 1.0"),
    (["--num-gpus-per-learner", "1", "--num-learners", "1"], "num_gpus_per_learner = 1.0"),  # hung in Ray before
]


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, " ".join(capsys.readouterr().err.split())


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    def refuse(*a, **k):
        raise AssertionError("ray.init called although the input was bad")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.mark.parametrize(("extra", "named"), BAD_FLAGS + (GPU_FLAGS if NO_CUDA else []),
                         ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_bad_train_flag_exits_2_before_ray_naming_field_and_value(extra, named, tmp_path, capsys, no_ray):
    out = tmp_path / "run"
    rc, err = _cli(["train", *TINY, "--out", str(out), *extra], capsys)
    assert rc == 2
    assert named in err
    assert not out.exists()


@pytest.mark.parametrize(("extra", "named"), [
    (["--backbones", ""], "--backbones is empty"),  # ran all six backbones before
    (["--tasks", ""], "--tasks is empty"),
])
def test_sweep_empty_axis_exits_2(extra, named, tmp_path, capsys, no_ray):
    rc, err = _cli(["sweep", "--tasks", "navigation-2d", "--seeds", "1", "--smoke", "--storage", str(tmp_path),
                    *extra], capsys)
    assert rc == 2 and named in err


def test_bad_inputs_table_is_large():
    assert len(BAD_CONFIGS) + len(BAD_FLAGS) >= 30


# --- one table: defaults, flags, help, .meta() docs ------------------------------------------------------------------
def _train_parser() -> argparse.ArgumentParser:
    return cli.build_parser("train")._subparsers._group_actions[0].choices["train"]


def test_every_field_has_a_flag_with_the_table_default_in_its_help():
    parser = _train_parser()
    actions = {o: a for a in parser._actions for o in a.option_strings}
    help_text = "".join(parser.format_help().split())  # argparse wraps lines: compare without white space
    for f in FIELDS:
        action = actions[f.option]
        assert action.default == f.default, f.name
        shown = f"(default:{''.join(f.shown_default().split())})"
        assert shown in help_text, (f.name, shown)
    assert len({a.dest for a in actions.values()} & {f.dest for f in FIELDS}) == len(FIELDS)


def test_every_meta_field_is_documented_in_meta_and_settable():
    doc = MAMLConfig.meta.__doc__
    assert set(META_DEFAULTS) == {f.name for f in fields.META_FIELDS}
    for f in fields.META_FIELDS:
        assert re.search(rf"^\s+{f.name} \({f.kind.__name__}, default {re.escape(f.shown_default())}\): ", doc,
                         re.M), f.name
        MAMLConfig().meta(**{f.name: f.default})
    with pytest.raises(ValueError, match="inner_lrr"):
        MAMLConfig().meta(inner_lrr=0.1)


def test_one_set_of_defaults_cli_equals_config_and_make_run_is_unchanged():
    args = flags.add_arguments(argparse.ArgumentParser()).parse_args([])
    from_cli, plain = flags.config_from_args(args), MAMLConfig()
    preset = flags.PRESETS["mujoco"]  # --preset auto on the default task (a MuJoCo family): the only difference
    for f in FIELDS:
        assert getattr(from_cli, f.name) == preset.get(f.name, f.default), f.name
        assert getattr(plain, f.name) == f.default, f.name
    # `make run` as before this table: HalfCheetahDir, MLP of width 64, 20 tasks x 10 episodes, 60 iterations
    assert (plain.task, plain.backbone, plain.width, plain.meta_batch_size, plain.episodes_per_task) == (
        "halfcheetah-dir", "mlp", 64, 20, 10)
    assert (args.iterations, plain.max_episode_steps, plain.num_envs_per_env_runner) == (60, 100, 10)
    from_cli.validate_meta()


def test_flags_set_every_builder_field():
    args = flags.add_arguments(argparse.ArgumentParser()).parse_args(
        [*TINY, "--seed", "5", "--outer-lr", "0.01", "--gamma", "0.9", "--num-learners", "2", "--no-normalize-advantages",
         "--first-order", "--task-options", '{"goal_tolerance": 0.5}'])
    cfg = flags.config_from_args(args)
    assert (cfg.seed, cfg.lr, cfg.gamma, cfg.num_learners, cfg.horizon) == (5, 0.01, 0.9, 2, 10)
    assert cfg.normalize_advantages is False and cfg.first_order is True
    assert cfg.env_config == {"goal_tolerance": 0.5, "max_episode_steps": 10}


def test_eval_every_evaluates_the_last_iteration_of_metarl_train():
    parse = flags.add_arguments(argparse.ArgumentParser()).parse_args
    assert flags.config_from_args(parse([*TINY, "--iterations", "7"])).budget_iterations is None
    assert flags.config_from_args(parse([*TINY, "--iterations", "7", "--eval-every", "3"])).budget_iterations == 7
    given = parse([*TINY, "--iterations", "7", "--eval-every", "3", "--budget-iterations", "5"])
    assert flags.config_from_args(given).budget_iterations == 5


def test_a_config_saved_before_horizon_was_a_field_loads():
    old = tiny().to_dict()
    old.pop("horizon")
    old["task_options"] = {"max_episode_steps": 7}
    cfg = MAMLConfig.from_dict(old)
    assert (cfg.horizon, cfg.task_options) == (7, {})
    legacy = tiny()
    del legacy.horizon
    legacy.task_options = {"max_episode_steps": 9, "goal_tolerance": 0.5}
    restored = pickle.loads(pickle.dumps(legacy))  # checkpoints pickle the config object
    assert (restored.horizon, restored.task_options) == (9, {"goal_tolerance": 0.5})
    restored.validate_meta()


# --- the size estimate --------------------------------------------------------------------------------------------
def test_size_estimate_matches_a_hand_count():
    cfg = tiny().meta(inner_steps=2)  # 2 tasks x 2 episodes x (2 + 1) sampling rounds = 12 episodes of 10 steps
    est = fields.size_estimate(cfg, obs_dim=2, act_dim=2, num_params=306)
    assert est == {"episode tensors": 12 * 10 * (2 + 2 + 5) * 4,
                   "BPTT": 12 * 10 * 8 * fields.ACTIVATIONS_PER_WIDTH * 4,
                   "parameters": 306 * 4 * (4 + 2 * 2)}
    gru = torch.nn.GRU(2, 8)  # the GRU backbone: GRU(2 -> 8) + a linear head 8 -> 2
    assert fields.backbone_num_params("gru", width=8, input_dim=2, output_dim=2, kwargs={}) == (
        sum(p.numel() for p in gru.parameters()) + 8 * 2 + 2)
    total = sum(fields.check_size(cfg).values())
    fields.check_size(cfg, memory=total)  # fits exactly
    with pytest.raises(ValueError, match=r"meta_batch_size = 2, .*does not fit|need about .* but this machine"):
        fields.check_size(cfg, memory=total - 1)


def test_gpu_check_uses_the_ray_cluster_when_ray_runs(monkeypatch):
    import ray

    cfg = tiny().learners(num_gpus_per_learner=0.5, num_learners=2)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0})
    fields.check_gpus(cfg)  # 2 x 0.5 = 1 GPU: fits
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    with pytest.raises(ValueError, match=r"num_gpus_per_learner = 0.5 .*need 1 GPUs; GPUs in the Ray cluster: 0"):
        fields.check_gpus(cfg)


def test_messages_say_what_is_allowed():
    assert fields.BY_NAME["clip_param"].allowed() == "a finite number > 0 and < 1"
    assert fields.BY_NAME["horizon"].allowed() == "an integer >= 1, or None (the task family's registered horizon)"
    assert fields.BY_NAME["first_order"].allowed().startswith("True or False")
    assert math.isclose(fields.defaults()["lr"], 1e-3)


def test_readme_shows_the_table():
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert fields.markdown_table() in readme
