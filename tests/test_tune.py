"""Sweeps: MAMLConfig <-> dict, the Tune grid, resources per trial, bad input, and a real two-trial smoke sweep
whose results `metarl report` turns into a table and plots (values checked against the raw progress.csv). The
env-step budget and the held-out evaluation inside trials are checked on a real sweep in tests/test_fair.py."""

from __future__ import annotations

import argparse
import csv
import math
import re

import pytest

from metarl import models
from tune_configs.baselines import SIZES, check_axes, matched_widths, param_space, with_size

NAV = "navigation-2d"
TINY = with_size(SIZES["smoke"], iterations=2)
ACTION_DIM = 2  # navigation-2d: 2-D velocity actions -> 2 log σ parameters on top of the backbone


def _expand(space: dict) -> list[dict]:
    """Resolve a param_space exactly as Tune's BasicVariantGenerator does (no trials run)."""
    from ray.tune.search.variant_generator import generate_variants

    return [cfg for _, cfg in generate_variants(space)]


# --- config <-> dict, grid, resources ------------------------------------------------------------------------
def test_maml_config_round_trips_through_dict():
    from rllib_ext.algorithm import META_DEFAULTS, MAMLConfig
    from tune_configs.callbacks import ModelSizeCallback

    cfg = (MAMLConfig()
           .meta(task=NAV, backbone="lstm", width=8, inner_steps=0, inner_lr=0.37, meta_batch_size=2,
                 episodes_per_task=2, outer_steps=1, first_order=True, horizon=20)
           .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
           .callbacks(ModelSizeCallback))
    for restored in (MAMLConfig.from_dict(cfg.to_dict()), MAMLConfig().update_from_dict(cfg.to_dict())):
        assert type(restored) is MAMLConfig
        for field in META_DEFAULTS:
            assert getattr(restored, field) == getattr(cfg, field), field
        assert (restored.backbone, restored.inner_steps, restored.inner_lr) == ("lstm", 0, 0.37)
        assert restored.num_envs_per_env_runner == 2 and restored.env == cfg.env
        assert restored.callbacks_class is ModelSizeCallback
        restored.validate()


def test_grid_over_backbones_gives_one_trial_per_backbone_at_matched_width():
    backbones = models.available()
    widths = matched_widths(backbones=backbones, task_names=[NAV], target_params=TINY.target_params)
    trials = _expand(param_space(TINY, backbones=backbones, task_names=[NAV], seeds=1, methods=["maml"],
                                 widths=widths))
    assert sorted(t["backbone"] for t in trials) == sorted(backbones)
    for t in trials:
        assert t["width"] == widths[NAV][t["backbone"]]["width"] and t["inner_steps"] == TINY.inner_steps
        net = models.build(t["backbone"], input_dim=2, output_dim=2, width=t["width"])
        assert models.num_params(net) == widths[NAV][t["backbone"]]["backbone_params"]
        # matched: no width of this backbone is closer to the budget than the chosen one
        others = []
        for w in (t["width"] - 1, t["width"] + 1):
            try:
                others.append(models.num_params(models.build(t["backbone"], input_dim=2, output_dim=2, width=w)))
            except ValueError:
                pass
        target = TINY.target_params
        assert all(abs(models.num_params(net) - target) <= abs(n - target) for n in others), t["backbone"]


def test_full_grid_is_the_product_of_axes_and_multitask_has_no_inner_step():
    widths = {t: {b: {"width": 8, "backbone_params": 0} for b in ("gru", "mlp")} for t in (NAV, "pendulum-mass")}
    trials = _expand(param_space(TINY, backbones=["gru", "mlp"], task_names=[NAV, "pendulum-mass"], seeds=3,
                                 widths=widths))
    assert len(trials) == 2 * 2 * 2 * 3
    keys = {(t["task"], t["backbone"], t["method"], t["seed"]) for t in trials}
    assert len(keys) == 24
    assert all(t["inner_steps"] == (0 if t["method"] == "multitask" else TINY.inner_steps) for t in trials)
    # every trial: the same env-step budget and the same held-out evaluation, whatever its method, at the same
    # env steps (multitask samples one phase per task where maml samples K + 1, so it evaluates every K + 1 x
    # eval_every of its iterations)
    assert {(t["budget_env_steps"], t["eval_tasks"], t["eval_inner_steps"]) for t in trials} == {
        (TINY.env_steps, TINY.eval_tasks, TINY.eval_inner_steps)}
    steps_between_evals = {t["eval_every"] * t["meta_batch_size"] * t["episodes_per_task"] * (t["inner_steps"] + 1)
                           for t in trials}
    assert steps_between_evals == {TINY.eval_every * TINY.meta_batch_size * TINY.episodes_per_task * (TINY.inner_steps + 1)}


def test_memory_axis_crosses_methods_except_rl2_and_labels_trial_memory():
    from rllib_ext.config import MAMLConfig

    widths = {NAV: {"gru": {"width": 8, "backbone_params": 0}}}
    space = param_space(TINY, backbones=["gru"], task_names=[NAV], seeds=2, methods=["maml", "multitask", "rl2"],
                        memories=["episode", "trial"], widths=widths)
    trials = _expand(space)
    got = {(t["method"], t["seed"]): (t["inner_steps"], t["memory"]) for t in trials}
    k = TINY.inner_steps
    want = {"maml": (k, "episode"), "maml+trial": (k, "trial"), "multitask": (0, "episode"),
            "multitask+trial": (0, "trial"), "rl2": (0, "trial")}
    assert got == {(m, s): v for m, v in want.items() for s in (0, 1)}
    # held out, RL² keeps θ for the query phase (in context); every other method takes its inner step
    assert {t["method"]: t["eval_inner_lr"] for t in trials} == {**{m: None for m in want}, "rl2": 0.0}
    for t in trials:  # every trial's config validates (memory, inner_steps and the size's fields together)
        MAMLConfig().update_from_dict({k: v for k, v in t.items() if k != "method"}).validate_meta(
            local_learner_here=False)
    # the default axis (episode memory) is the grid as before: no memory column, the methods' own names
    plain = _expand(param_space(TINY, backbones=["gru"], task_names=[NAV], seeds=1, widths=widths))
    assert sorted(t["method"] for t in plain) == ["maml", "multitask"]
    assert {t["memory"] for t in plain} == {"episode"}
    only_trial = _expand(param_space(TINY, backbones=["gru"], task_names=[NAV], seeds=1, methods=["maml", "rl2"],
                                     memories=["trial"], widths=widths))
    assert sorted(t["method"] for t in only_trial) == ["maml+trial", "rl2"]


def test_sweep_help_lists_every_method_and_the_memory_axis(capsys):
    from metarl.apps.sweep import add_arguments
    from tune_configs.baselines import MEMORIES, METHODS

    with pytest.raises(SystemExit):
        add_arguments(argparse.ArgumentParser()).parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    methods_help = out.split("--methods METHODS")[-1].split(" --")[0]  # the option's help, not the usage
    assert all(m in methods_help for m in METHODS), methods_help
    memory_help = out.split("--memory MEMORY")[-1].split(" --")[0]
    assert all(m in memory_help for m in MEMORIES) and "maml+trial" in memory_help, memory_help


def test_sweep_stops_on_env_steps_and_early_stops_per_family_on_the_heldout_metric():
    from tune_configs.baselines import CLOCK, FRESH, METRIC, make_scheduler, stop_criteria
    from tune_configs.schedulers import PerGroupASHA

    full = SIZES["full"]
    assert METRIC == "eval/return_post" and CLOCK == "env_steps/lifetime"
    assert stop_criteria(full) == {CLOCK: full.env_steps}
    assert stop_criteria(with_size(full, iterations=7)) == {CLOCK: full.env_steps, "training_iteration": 7}
    assert stop_criteria(with_size(full, env_steps=None, iterations=7)) == {"training_iteration": 7}
    asha = make_scheduler(with_size(full, scheduler="asha"))
    assert isinstance(asha, PerGroupASHA) and asha._group_by == "task" and asha._fresh_attr == FRESH
    assert asha._settings["time_attr"] == CLOCK and asha._settings["max_t"] == full.env_steps
    assert asha._settings["grace_period"] == full.grace_period
    with pytest.raises(ValueError, match="needs an env-step budget"):
        make_scheduler(with_size(full, scheduler="asha", env_steps=None, iterations=5))
    with pytest.raises(ValueError, match="needs a budget"):
        stop_criteria(with_size(full, env_steps=None, iterations=None))


def test_trial_resources_come_from_the_config(monkeypatch):
    from rllib_ext import fields
    from rllib_ext.algorithm import MAML
    from tune_configs.baselines import base_config

    # the bundles a GPU cluster would get, computed here without GPUs: skip the check that the GPUs exist
    monkeypatch.setattr(fields, "check_gpus", lambda config, local=True: None)

    size = with_size(TINY, num_env_runners=2, num_cpus_per_env_runner=0.5, num_learners=2,
                     num_cpus_for_main_process=1.0, meta_batch_size=2)
    bundles = MAML.default_resource_request(base_config(size, gpus_per_trial=0.5).meta(task=NAV).to_dict())
    got = [{k: v for k, v in b.items() if v} for b in bundles.bundles]
    # main process, 2 EnvRunners at 0.5 CPU, 2 Learners sharing the trial's 0.5 GPU (GPU learners: 0 CPUs)
    assert got == [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}, {"GPU": 0.25}, {"GPU": 0.25}]
    local = MAML.default_resource_request(base_config(TINY, gpus_per_trial=0.5).meta(task=NAV).to_dict())
    assert [{k: v for k, v in b.items() if v} for b in local.bundles] == [{"CPU": 1.0, "GPU": 0.5}]
    smoke = MAML.default_resource_request(base_config(TINY).meta(task=NAV).to_dict())
    assert sum(b.get("CPU", 0) for b in smoke.bundles) <= 1.0  # two smoke trials fit on 2 CPUs side by side


# --- bad input: clear errors before Ray starts ------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, pattern", [
    (dict(backbones=["gru", "nope"]), r"unknown backbone.*'nope'.*available"),
    (dict(task_names=["half-cheetah"]), r"unknown task.*'half-cheetah'.*available"),
    (dict(seeds=0), r"--seeds = 0.*>= 1"),
    (dict(methods=["reptile"]), r"--methods.*'reptile'.*allowed"),
    (dict(backbones=[]), r"--backbones is empty"),
    (dict(memories=["episodic"]), r"--memory.*'episodic'.*allowed: \['episode', 'trial'\]"),
    (dict(memories=["trial", "trial"]), r"--memory lists a value twice"),
])
def test_check_axes_rejects_bad_axes(kwargs, pattern):
    args = dict(backbones=["gru"], task_names=[NAV], seeds=1, methods=["maml"]) | kwargs
    with pytest.raises(ValueError, match=pattern):
        check_axes(**args)


@pytest.mark.parametrize("argv, pattern", [
    (["--backbones", "gru,nope"], "unknown backbone"),
    (["--tasks", "navigation-3d"], "unknown task"),
    (["--seeds", "0"], "--seeds = 0"),
    (["--storage", "{unwritable}"], "not writable"),
    (["--storage", "nope://bucket/x"], "not a usable folder or URI"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial = -1"),
    (["--env-steps", "0"], "--env-steps = 0 must be >= 1"),
    (["--scheduler", "asha", "--iterations", "2"], "scheduler 'asha' needs an env-step budget"),
    (["--memory", "episode,trail"], "--memory: unknown or empty ['trail']; allowed: ['episode', 'trial']"),
])
def test_sweep_cli_fails_before_ray_starts(argv, pattern, tmp_path, monkeypatch, capsys):
    import ray

    from metarl.apps.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = [a.replace("{unwritable}", str(blocker / "sub")) for a in argv]

    def no_ray(*a, **k):
        raise AssertionError("ray.init called although the input was bad")

    monkeypatch.setattr(ray, "init", no_ray)
    storage = ["--storage", str(tmp_path / "store")] if "--storage" not in argv else []
    rc = main(["sweep", "--backbones", "gru", "--tasks", NAV, "--seeds", "1", "--smoke", *storage, *argv])
    assert rc == 2
    assert re.search(re.escape(pattern), capsys.readouterr().err)
    assert not (tmp_path / "store").exists() or "--storage" in argv[:1]


def test_storage_accepts_folders_and_file_uris(tmp_path):
    from tune_configs.storage import check_storage

    assert check_storage(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())  # marker removed
    uri = (tmp_path / "c").as_uri()
    assert check_storage(uri) == uri and (tmp_path / "c").is_dir()


# --- a real two-trial smoke sweep and its report ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _last_row(trial_dir) -> dict:
    with open(trial_dir / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None) and _is_number(v)} | {"n": len(rows)}


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def test_smoke_sweep_then_report(ray_session, tmp_path, capsys):
    from metarl.apps import report
    from metarl.apps.sweep import add_arguments, plan, run_sweep

    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--backbones", "gru", "--tasks", NAV, "--methods", "maml,multitask", "--seeds", "1", "--smoke",
         "--iterations", "2", "--storage", str(tmp_path), "--name", "smoke"])
    p = plan(args)
    grid = run_sweep(p)
    assert len(grid) == 2 and all(r.error is None for r in grid)
    printed = capsys.readouterr().out
    assert re.search(rf"{NAV}/gru/maml/s0\s+2\s", printed) and re.search(rf"{NAV}/gru/multitask/s0\s+2\s", printed)

    exp = tmp_path / "smoke"
    dirs = {d.name.split("_")[2]: d for d in exp.iterdir() if (d / "params.json").exists()}
    assert set(dirs) == {"maml", "multitask"}
    widths = matched_widths(backbones=["gru"], task_names=[NAV], target_params=TINY.target_params)
    rows = {m: _last_row(d) for m, d in dirs.items()}
    for row in rows.values():
        assert row["n"] == 2 and row["training_iteration"] == 2
        # the callback counts the Learner's module: matched backbone + log σ
        assert row["model/num_params"] == widths[NAV]["gru"]["backbone_params"] + ACTION_DIM
    assert "adapt/return_step_1" in rows["maml"] and "adapt/return_step_1" not in rows["multitask"]

    # Tune's checkpoints restore into a MAML at the same iteration (what FailureConfig retries rely on)
    from rllib_ext.algorithm import MAML

    ckpt = max((dirs["maml"]).glob("checkpoint_*"))
    algo = MAML.from_checkpoint(str(ckpt))
    try:
        assert algo.iteration == 2 and algo.config.backbone == "gru" and algo.config.inner_steps == 1
    finally:
        algo.stop()

    # report: the table's numbers are the progress.csv numbers; plots are PNG files
    assert report.main(argparse.Namespace(dir=str(exp))) == 0
    md = (exp / "report.md").read_text()
    for m, row in rows.items():
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {NAV} | gru | {m} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4] == f"{int(row['model/num_params']):,}"
        assert cells[6] == f"{row['adapt/return_step_0']:.2f} ± 0.00"
        gain = row.get("adapt/return_step_1", row["adapt/return_step_0"]) - row["adapt/return_step_0"]
        assert math.isclose(float(cells[-3].split(" ± ")[0]), gain, abs_tol=0.006)
        assert cells[-2] == f"{row['env_steps/lifetime']:.0f} ± 0"
    pngs = sorted((exp / "plots").glob("*.png"))
    assert {p.name for p in pngs} == {f"learning_{NAV}.png", f"adaptation_{NAV}.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    # --evaluate: every trial (the multitask baseline too) adapted on held-out tasks; numbers = metarl evaluate's
    from metarl.apps.evaluate import evaluate

    report.write_report(exp, evaluate_steps=1, eval_tasks=2, eval_episodes=2)
    md = (exp / "report.md").read_text()
    assert "## Held-out evaluation" in md
    for m, d in dirs.items():
        want = [s["return_mean"] for s in evaluate(max(d.glob("checkpoint_*")), adapt_steps=1, episodes=2,
                                                    num_tasks=2, seed=0)["steps"]]
        section = md.split("## Held-out evaluation")[1]
        line = next(ln for ln in section.splitlines() if ln.startswith(f"| {NAV} | gru | {m} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4] == f"{want[0]:.2f} ± 0.00" and cells[5] == f"{want[1]:.2f} ± 0.00"


def test_report_rejects_a_folder_without_trials(tmp_path, capsys):
    from metarl.apps import report

    assert report.main(argparse.Namespace(dir=str(tmp_path))) == 2
    assert re.search(r"no (readable )?trial folders", capsys.readouterr().err)


def test_a_gpu_trial_with_a_local_learner_is_requested_from_a_cpu_only_sweep_driver():
    """Tune computes a trial's resources in the sweep driver (a CPU-only head): the local Learner's GPU is checked
    inside the trial (``MAML.setup``), not there; ``metarl train`` on a CPU machine still refuses it up front."""
    import torch

    from rllib_ext.algorithm import MAML
    from tune_configs.baselines import base_config

    assert torch.cuda.device_count() == 0  # the project's test machines have no GPU
    config = base_config(with_size(TINY, num_learners=0), gpus_per_trial=0.25).meta(task=NAV)
    bundles = MAML.default_resource_request(config.to_dict())
    assert {"GPU": 0.25} in [{k: v for k, v in b.items() if k == "GPU" and v} for b in bundles.bundles]
    with pytest.raises(ValueError, match="num_gpus_per_learner = 0.25"):
        config.validate_meta()
