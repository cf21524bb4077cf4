"""Trial memory in the held-out evaluation, ``metarl evaluate`` and ``metarl report``: the return of episode j within
each phase (the in-context curve) next to the per-phase numbers; episode memory's output unchanged.

Oracles: numpy loops over the batch layout (sub-env i's episodes in rows i*Q..(i+1)*Q-1), hand-written report
folders (mean ± std over seeds by hand), and a real two-trial smoke sweep (``--memory episode,trial``) whose
in-trial evaluation, ``metarl evaluate`` on its checkpoint and ``MetaPolicy.sample_trial`` must agree.
"""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest

from metarl.rl import EpisodeBatch
from rllib_ext.heldout import heldout_metrics, per_task_record, phase_returns
from rllib_ext.jobs import TaskResult

NAV = "navigation-2d"
EPISODE_RECORD_KEYS = {"task", "returns", "env_steps", "success"}
EPISODE_STEP_KEYS = {"k", "return_mean", "return_sem_tasks", "return_std_tasks", "return_std_episodes", "env_steps",
                     "env_steps_cumulative"}
EPISODE_RESULT_KEYS = {"checkpoint", "task", "adapt_steps", "episodes", "num_tasks", "inner_lr", "steps", "per_task",
                       "provenance"}


def batch_with_returns(returns: list[float], horizon: int = 3) -> EpisodeBatch:
    """Episodes whose return is ``returns[e]`` (all of it on the first step; every step real)."""
    e = len(returns)
    rewards = np.zeros((e, horizon))
    rewards[:, 0] = returns
    return EpisodeBatch(obs=np.zeros((e, horizon, 2)), actions=np.zeros((e, horizon, 2)), rewards=rewards,
                        mask=np.ones((e, horizon)), logp=np.zeros((e, horizon)))


def task_result(per_phase: list[list[float]]) -> TaskResult:
    batches = [batch_with_returns(r) for r in per_phase]
    return TaskResult(task_index=0, task=np.zeros(2), support=tuple(batches[:-1]), query=batches[-1],
                      inner_losses=(), time_sample_s=0.0, time_adapt_s=0.0, runner=0)


def in_context_by_hand(returns: list[float], n: int) -> list[float]:
    """Episode j (0-based) of the phase: the mean over sub-envs i of row i*Q + j."""
    q = len(returns) // n
    return [sum(returns[i * q + j] for i in range(n)) / n for j in range(q)]


# --- held-out records and metrics ---------------------------------------------------------------------------------
def test_phase_returns_and_metrics_follow_the_batch_layout():
    rng = np.random.default_rng(0)
    tasks_ = [[rng.normal(size=6).round(3).tolist() for _ in range(2)] for _ in range(3)]  # 3 tasks, K=1, E=6
    recs = [per_task_record(task_result(t), trial_envs=2) for t in tasks_]
    for rec, t in zip(recs, tasks_):
        assert rec["phase_returns"] == [pytest.approx(in_context_by_hand(r, 2)) for r in t]
        np.testing.assert_allclose(rec["returns"], t)
    m = heldout_metrics(recs)
    for k in range(2):
        for j in range(3):  # episode j + 1 within phase k, mean over tasks
            want = np.mean([in_context_by_hand(t[k], 2)[j] for t in tasks_])
            assert m[f"return_step_{k}_episode_{j + 1}"] == pytest.approx(want, rel=1e-12)
        assert m[f"return_step_{k}"] == pytest.approx(np.mean(tasks_, axis=2)[:, k].mean())  # per phase, as before
    assert "return_step_2_episode_1" not in m and "return_step_0_episode_4" not in m
    # 3 sub-envs: Q = 2
    assert phase_returns([1, 2, 3, 4, 5, 6], 3) == [3.0, 4.0]
    with pytest.raises(ValueError, match="6 episodes do not split over num_envs = 4"):
        phase_returns([1, 2, 3, 4, 5, 6], 4)


def test_episode_memory_records_and_metrics_are_unchanged():
    rec = per_task_record(task_result([[1.0, 2.0], [3.0, 5.0]]))
    assert set(rec) == EPISODE_RECORD_KEYS
    m = heldout_metrics([rec])
    assert set(m) == {"return_step_0", "return_step_1", "return_post", "env_steps", "task_return/0"}
    assert (m["return_step_0"], m["return_post"], m["env_steps"]) == (1.5, 4.0, 12)


# --- metarl evaluate's table --------------------------------------------------------------------------------------
def _result(trial: bool) -> dict:
    steps = [{"k": k, "return_mean": -10.0 + k, "return_sem_tasks": 0.5, "return_std_tasks": 1.0,
              "return_std_episodes": 2.0, "env_steps": 400, "env_steps_cumulative": 400 * (k + 1)} for k in range(2)]
    res = {"task": NAV, "num_tasks": 2, "episodes": 4, "inner_lr": 0.1, "checkpoint": "ckpt", "steps": steps}
    if trial:
        res.update(memory="trial", num_envs=2)
        for s, curve in zip(steps, ([-12.0, -8.5], [-9.0, -7.25])):
            s["return_per_episode"] = curve
    return res


def test_format_table_adds_the_in_context_block_only_with_trial_memory():
    from metarl.apps.evaluate import format_table

    plain = format_table(_result(False)).splitlines()
    assert plain == [  # episode memory: the table as before
        f"{NAV}: 2 test tasks x 4 episodes, inner lr 0.1, checkpoint ckpt",
        "step k      return     ± sem  std tasks   std eps   env steps        cum.",
        "     0      -10.00      0.50       1.00      2.00         400         400",
        "     1       -9.00      0.50       1.00      2.00         400         800",
    ]
    trial = format_table(_result(True)).splitlines()
    assert trial[: len(plain)] == plain
    block = trial[len(plain):]
    assert block[0].startswith("in context (trial memory, 2 sub-env trial(s) per task)")
    assert block[1].split() == ["step", "k", "ep", "1", "ep", "2", "last-first"]
    assert block[2].split() == ["0", "-12.00", "-8.50", "+3.50"]
    assert block[3].split() == ["1", "-9.00", "-7.25", "+1.75"]


# --- metarl report ------------------------------------------------------------------------------------------------
def _write_trial(root, name: str, params: dict, rows: list[dict]) -> None:
    d = root / name
    d.mkdir()
    (d / "params.json").write_text(json.dumps(params))
    cols = sorted({c for r in rows for c in r})
    with open(d / "progress.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _row(it: int, fresh: int, base: float, curve: dict | None) -> dict:
    row = {"training_iteration": it, "env_steps/lifetime": 100 * it, "time_total_s": 1.0 * it,
           "adapt/return_step_0": base, "adapt/return_step_1": base + 1, "eval/fresh": fresh,
           "eval/return_step_0": base, "eval/return_step_1": base + 2, "eval/return_post": base + 2,
           "eval/task_return/0": base + 2, "eval/task_return/1": base + 2.5, "eval/env_steps_lifetime": 50 * it}
    for (k, j), v in (curve or {}).items():
        row[f"eval/return_step_{k}_episode_{j}"] = v
    return row


def test_report_tables_and_plots_the_in_context_curve_of_trial_memory_trials(tmp_path):
    from metarl.apps import report

    curves = {0: {(0, 1): -20.0, (0, 2): -15.0, (0, 3): -12.0, (1, 1): -11.0, (1, 2): -9.0, (1, 3): -8.0},
              1: {(0, 1): -22.0, (0, 2): -14.0, (0, 3): -13.0, (1, 1): -12.5, (1, 2): -10.0, (1, 3): -6.0}}
    stale = {key: 99.0 for key in curves[0]}  # a later carried-forward row (eval/fresh = 0): not reported
    for seed in (0, 1):
        p = {"task": NAV, "backbone": "gru", "method": "maml+trial", "memory": "trial", "seed": seed}
        _write_trial(tmp_path, f"trial_s{seed}", p, [_row(1, 1, -30.0, stale), _row(2, 1, -20.0 + seed, curves[seed]),
                                                      _row(3, 0, -20.0 + seed, stale)])
        p = {"task": NAV, "backbone": "gru", "method": "maml", "memory": "episode", "seed": seed}
        _write_trial(tmp_path, f"episode_s{seed}", p, [_row(1, 1, -25.0, None), _row(2, 1, -21.0 + seed, None)])
    md = report.write_report(tmp_path).read_text()
    section = md.split("## In-context adaptation (trial memory)")[1].split("\n## ")[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| gru")]
    assert [ln.split(" | ")[1] for ln in rows] == ["maml+trial", "maml+trial"]  # the episode-memory trials: none
    for k, line in enumerate(rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == ["gru", "maml+trial", "2", str(k)]
        for j in (1, 2, 3):
            vals = [curves[s][(k, j)] for s in (0, 1)]
            assert cells[3 + j] == f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}"
        first, last = (np.mean([curves[s][(k, j)] for s in (0, 1)]) for j in (1, 3))
        assert cells[7] == f"{last - first:+.2f}"
    # the per-episode columns leave the per-step tables alone: held-out after 1 step, not after 3
    ranking = md.split("## Ranking on held-out tasks")[1].split("\n## ")[0]
    assert "held-out after 1 step |" in ranking and "after 3" not in ranking
    line = next(ln for ln in ranking.splitlines() if "| maml+trial |" in ln)
    assert f"| {np.mean([-18.0, -17.0]):.2f} ± {np.std([-18.0, -17.0], ddof=1):.2f} |" in line
    png = tmp_path / "plots" / f"in_context_{NAV}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"![in_context_{NAV}]" in md


def test_report_of_episode_memory_trials_has_no_in_context_section(tmp_path):
    from metarl.apps import report

    for seed in (0, 1):
        p = {"task": NAV, "backbone": "gru", "method": "maml", "seed": seed}
        _write_trial(tmp_path, f"episode_s{seed}", p, [_row(1, 1, -25.0, None), _row(2, 1, -21.0 + seed, None)])
    md = report.write_report(tmp_path).read_text()
    assert "In-context" not in md and "in_context" not in md
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [f"adaptation_{NAV}.png", f"learning_{NAV}.png"]


# --- a real sweep with --memory episode,trial, its report, metarl evaluate and MetaPolicy ---------------------------
@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    import ray

    from metarl.apps.sweep import add_arguments, plan, run_sweep
    from tune_configs.baselines import with_size

    root = tmp_path_factory.mktemp("trial_sweep")
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--backbones", "gru", "--tasks", NAV, "--methods", "maml,rl2", "--memory", "episode,trial", "--seeds", "1",
         "--smoke", "--iterations", "1", "--storage", str(root), "--name", "mem"])
    p = plan(args)
    p["size"] = with_size(p["size"], episodes_per_task=4)  # 2 sub-envs: 2 episodes per sub-env and phase
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        grid = run_sweep(p, echo=lambda s: None)
    finally:
        ray.shutdown()
    assert len(grid) == 3 and all(r.error is None for r in grid), [r.error for r in grid]
    return root / "mem"


def _trial_dirs(exp) -> dict:
    return {json.loads((d / "params.json").read_text())["method"]: d for d in exp.iterdir()
            if (d / "params.json").exists()}


def _last_row(d) -> dict:
    with open(d / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))[-1]


@pytest.mark.timeout(300)
def test_memory_sweep_evaluates_in_context_and_evaluate_and_policy_agree(sweep_dir):
    from metarl import tasks
    from metarl.apps.evaluate import evaluate, format_table
    from metarl.sampler import derive_seed
    from rllib_ext.policy import load_policy

    dirs = _trial_dirs(sweep_dir)
    assert set(dirs) == {"maml", "maml+trial", "rl2"}
    assert {m: json.loads((d / "params.json").read_text())["memory"] for m, d in dirs.items()} == {
        "maml": "episode", "maml+trial": "trial", "rl2": "trial"}
    assert all(d.name.startswith(f"{NAV}_gru_{m}_s0_") for m, d in dirs.items())
    row = _last_row(dirs["maml+trial"])
    assert not any("_episode_" in c for c in _last_row(dirs["maml"]))
    logged = {(k, j): float(row[f"eval/return_step_{k}_episode_{j}"]) for k in (0, 1) for j in (1, 2)}

    # metarl evaluate on the trial checkpoint, with the trial's own evaluation settings: the same numbers
    ckpt = max(dirs["maml+trial"].glob("checkpoint_*"))
    res = evaluate(ckpt, adapt_steps=1, episodes=4, num_tasks=2, num_envs=2, seed=0)
    assert (res["memory"], res["num_envs"]) == ("trial", 2)
    for k, s in enumerate(res["steps"]):
        by_hand = np.mean([in_context_by_hand(t["returns"][k], 2) for t in res["per_task"]], axis=0)
        np.testing.assert_allclose(s["return_per_episode"], by_hand, rtol=1e-12)
        np.testing.assert_allclose(s["return_per_episode"], [logged[(k, 1)], logged[(k, 2)]], rtol=1e-5)
        assert s["return_mean"] == pytest.approx(float(row[f"eval/return_step_{k}"]), rel=1e-5)
    assert "in context (trial memory, 2 sub-env" in format_table(res)
    # without --num-envs: one trial per sub-env as in training (2), not the episode-memory default (4 here)
    assert evaluate(ckpt, adapt_steps=0, episodes=4, num_tasks=1, seed=0)["num_envs"] == 2

    # the deployed policy runs the same trials: MetaPolicy.sample_trial on each test task with the job's seed
    policy = load_policy(ckpt)
    assert policy.memory == "trial" and policy.trial_returns
    test_tasks = tasks.make(NAV).unwrapped.test_tasks(2, seed=1)
    for i, t in enumerate(res["per_task"]):
        envs = [tasks.make(NAV, horizon=20) for _ in range(2)]
        for env in envs:
            env.unwrapped.task = test_tasks[i]
        batches, _ = policy.sample_trial(envs, 4, inner_steps=1, seed=derive_seed(0, i))
        for k, b in enumerate(batches):
            np.testing.assert_allclose(b.episode_returns(), t["returns"][k], rtol=1e-6, atol=1e-6)

    # episode memory: evaluate's output as before (no per-episode keys, no in-context block)
    plain = evaluate(max(dirs["maml"].glob("checkpoint_*")), adapt_steps=1, episodes=4, num_tasks=2, seed=0)
    assert set(plain) == EPISODE_RESULT_KEYS
    assert all(set(s) == EPISODE_STEP_KEYS for s in plain["steps"])
    assert all(set(t) == EPISODE_RECORD_KEYS for t in plain["per_task"])


@pytest.mark.timeout(300)
def test_memory_sweep_report_labels_trial_memory_and_tables_its_curve(sweep_dir):
    from metarl.apps import report

    assert report.main(argparse.Namespace(dir=str(sweep_dir))) == 0
    md = (sweep_dir / "report.md").read_text()
    row = _last_row(_trial_dirs(sweep_dir)["maml+trial"])
    training = md.split("## Training metrics")[1]
    assert f"| {NAV} | gru | maml |" in training and f"| {NAV} | gru | maml+trial |" in training
    section = md.split("## In-context adaptation (trial memory)")[1].split("\n## ")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| gru")]
    assert len(lines) == 4 and [ln.split("|")[2].strip() for ln in lines] == ["maml+trial"] * 2 + ["rl2"] * 2
    for k, line in enumerate(lines[:2]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3] == str(k)
        for j in (1, 2):
            v = float(row[f"eval/return_step_{k}_episode_{j}"])
            assert cells[3 + j] == f"{v:.2f} ± 0.00" and not math.isnan(v)


@pytest.mark.timeout(300)
def test_rl2_is_evaluated_in_context_in_the_sweep_and_by_evaluate(sweep_dir):
    """The sweep's rl2 trial evaluates with eval_inner_lr = 0 (θ unchanged: the query phase continues the trial);
    ``metarl evaluate`` on its checkpoint defaults to the same α and gives the logged numbers; an explicit
    ``inner_lr=0`` is the same evaluation, the training α (0.1) a different one."""
    from metarl.apps.evaluate import evaluate

    rl2 = _trial_dirs(sweep_dir)["rl2"]
    assert json.loads((rl2 / "params.json").read_text())["eval_inner_lr"] == 0.0
    row = _last_row(rl2)
    ckpt = max(rl2.glob("checkpoint_*"))
    res = evaluate(ckpt, adapt_steps=1, episodes=4, num_tasks=2, num_envs=2, seed=0)
    assert res["inner_lr"] == 0.0
    for k, s in enumerate(res["steps"]):
        assert s["return_mean"] == pytest.approx(float(row[f"eval/return_step_{k}"]), rel=1e-5)
    explicit = evaluate(ckpt, adapt_steps=1, episodes=4, num_tasks=2, num_envs=2, seed=0, inner_lr=0)
    assert [s["return_mean"] for s in explicit["steps"]] == [s["return_mean"] for s in res["steps"]]
    stepped = evaluate(ckpt, adapt_steps=1, episodes=4, num_tasks=2, num_envs=2, seed=0, inner_lr=0.1)
    assert stepped["steps"][0]["return_mean"] == res["steps"][0]["return_mean"]  # the same first phase
    assert stepped["steps"][1]["return_mean"] != res["steps"][1]["return_mean"]
    with pytest.raises(ValueError, match=r"inner_lr = -1.0 must be a finite number >= 0"):
        evaluate(ckpt, adapt_steps=1, episodes=4, num_tasks=1, inner_lr=-1.0)
