"""Fair baseline comparisons: one real tiny sweep (navigation-2d, horizon 20, gru, methods maml and multitask,
float64) under an env-step budget with held-out evaluation every 3 iterations, then four oracles on its files:

- both methods end at the same training budget ``env_steps/lifetime`` (MAML samples 2 batches per task, the
  baseline 1, so the baseline runs twice the iterations), each at the first iteration that reaches the budget;
- the held-out ``eval/return_step_k`` (and the per-task returns) a trial logged equal ``metarl evaluate`` on its
  last checkpoint with the same tasks, seeds, episodes and sub-envs (float64, 1e-8), for the baseline too;
- the held-out metric is carried forward between evaluations (never NaN after the first, ``eval/fresh`` = 0 on a
  carried row), and evaluation env steps stay out of ``env_steps/lifetime``;
- ``metarl report``: the ranked table, its bootstrap intervals and the within-noise statement recomputed here
  from the raw progress.csv with ``metarl.apps.stats``.
"""

from __future__ import annotations

import csv
import math

import pytest

from tune_configs.baselines import SIZES, with_size

NAV = "navigation-2d"
# budget 320 env steps: 2 MAML iterations of 160, 4 multitask ones of 80; eval_every=1 (MAML's): multitask
# evaluates every 2nd of its iterations, at the same env steps, besides the first and the last
SIZE = with_size(SIZES["smoke"], eval_every=1, meta_overrides={"dtype": "float64"})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """{method: (trial folder, progress rows as floats)} of one finished two-trial sweep."""
    import ray

    from metarl.apps.sweep import run_sweep

    storage = tmp_path_factory.mktemp("fair")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        grid = run_sweep(dict(backbones=["gru"], task_names=[NAV], methods=["maml", "multitask"], seeds=1,
                              size=SIZE, name="fair", storage=str(storage), gpus_per_trial=0.0), echo=lambda *a: None)
    finally:
        ray.shutdown()
    assert len(grid) == 2 and all(r.error is None for r in grid)
    out = {}
    for d in (storage / "fair").iterdir():
        if (d / "params.json").exists():
            with open(d / "progress.csv", newline="") as f:
                rows = [{k: _float(v) for k, v in r.items()} for r in csv.DictReader(f)]
            out[d.name.split("_")[2]] = (d, rows)
    assert set(out) == {"maml", "multitask"}
    return out


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.nan


def test_methods_end_at_the_same_env_step_budget(sweep):
    budget = SIZE.env_steps
    ends = {}
    for m, (_, rows) in sweep.items():
        last = rows[-1]
        ends[m] = last["env_steps/lifetime"]
        # stopped by the env-step budget, at the first iteration that reached it
        assert ends[m] >= budget and ends[m] - last["env_steps/this_iter"] < budget, m
        assert ends[m] == sum(r["env_steps/this_iter"] for r in rows)  # evaluation steps are not counted
    per_iter = max(sweep[m][1][-1]["env_steps/this_iter"] for m in sweep)
    assert abs(ends["maml"] - ends["multitask"]) < per_iter  # equal within one iteration
    # the baseline samples half per iteration, so the budget gives it twice the iterations
    assert len(sweep["multitask"][1]) == 2 * len(sweep["maml"][1])


def test_trial_evaluation_equals_metarl_evaluate(sweep):
    from metarl.apps.evaluate import evaluate

    for m, (d, rows) in sweep.items():
        last = rows[-1]
        assert last["eval/fresh"] == 1  # the last iteration is always evaluated
        res = evaluate(max(d.glob("checkpoint_*")), adapt_steps=SIZE.eval_inner_steps,
                       episodes=SIZE.eval_episodes or SIZE.episodes_per_task, num_tasks=SIZE.eval_tasks,
                       num_envs=SIZE.num_envs_per_env_runner, test_seed=1, seed=0)
        for s in res["steps"]:
            assert abs(last[f"eval/return_step_{s['k']}"] - s["return_mean"]) <= 1e-8, (m, s["k"])
        for i, t in enumerate(res["per_task"]):
            assert abs(last[f"eval/task_return/{i}"] - sum(t["returns"][-1]) / len(t["returns"][-1])) <= 1e-8
        assert last["eval/env_steps"] == sum(s["env_steps"] for s in res["steps"])


def test_heldout_metric_is_carried_forward_and_every_method_adapts(sweep):
    for m, (_, rows) in sweep.items():
        assert rows[0]["eval/fresh"] == 1  # the first iteration is evaluated
        previous = None
        for r in rows:
            assert math.isfinite(r["eval/return_post"]) and math.isfinite(r["eval/return_step_1"]), m
            if r["eval/fresh"] == 0:
                assert r["eval/return_post"] == previous["eval/return_post"]
                assert r["eval/env_steps_lifetime"] == previous["eval/env_steps_lifetime"]
            previous = r
        assert rows[-1]["eval/env_steps_lifetime"] == sum(r["eval/env_steps"] for r in rows if r["eval/fresh"])
    fresh = [r["eval/fresh"] for r in sweep["multitask"][1]]
    assert fresh == [1, 1, 0, 1]  # the first, every 2nd, the last; the 3rd carried forward
    at = {m: [r["env_steps/lifetime"] for r in rows if r["eval/fresh"]] for m, (_, rows) in sweep.items()}
    assert at["maml"] == [160, 320] and at["multitask"] == [80, 160, 320]  # MAML's evaluations at the same steps
    # the baseline never adapts in training but adapts at evaluation
    assert "adapt/return_step_1" not in sweep["multitask"][1][-1] or math.isnan(
        sweep["multitask"][1][-1]["adapt/return_step_1"])


def test_report_ranks_on_heldout_with_intervals_and_noise(sweep):
    from metarl.apps import report, stats

    exp = next(iter(sweep.values()))[0].parent
    md = report.write_report(exp).read_text()
    section = md.split("## Ranking on held-out tasks")[1].split("## Training metrics")[0]
    assert f"### {NAV}" in section
    per_task = {}
    for m, (_, rows) in sweep.items():
        last = [r for r in rows if r["eval/fresh"] == 1][-1]
        per_task[m] = [[last[f"eval/task_return/{i}"] for i in range(SIZE.eval_tasks)]]
    order = sorted(per_task, key=lambda m: -sum(per_task[m][0]))
    lines = [ln for ln in section.splitlines() if ln.startswith(("| 1 |", "| 2 |"))]
    assert len(lines) == 2
    for rank, (m, ln) in enumerate(zip(order, lines), start=1):
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert cells[0] == str(rank) and cells[2] == m
        iv = stats.interval(per_task[m])
        assert cells[6] == f"{iv.mean:.2f} ± 0.00"
        assert cells[7] == f"[{iv.low:.2f}, {iv.high:.2f}]"
        assert cells[8] == f"{SIZE.env_steps} ± 0"
    verdict = "within noise" if stats.within_noise(per_task[order[0]], per_task[order[1]]) else "beyond noise"
    d = stats.difference(per_task[order[0]], per_task[order[1]])
    assert f"Δ = {d.mean:.2f}, 95% interval [{d.low:.2f}, {d.high:.2f}]: {verdict}" in section
    # MAML against the multitask baseline of the same backbone, whichever ranks first
    against = section.split("Each method against the multitask baseline of its backbone")[1]
    b = stats.difference(per_task["maml"], per_task["multitask"])
    verdict = "within noise" if stats.within_noise(per_task["maml"], per_task["multitask"]) else "beyond noise"
    assert f"- gru (maml) vs gru (multitask): Δ = {b.mean:.2f}, 95% interval [{b.low:.2f}, {b.high:.2f}]: " \
           f"{verdict}" in against
    pngs = sorted((exp / "plots").glob("*.png"))
    assert {p.name for p in pngs} == {f"learning_{NAV}.png", f"adaptation_{NAV}.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


# --- would ASHA have kept the ranking? (a replay of recorded results; no Ray cluster) ------------------------------
def _synthetic(name: str, values: list[float]):
    from metarl.apps.report import Trial

    rows = [{"env_steps/lifetime": 1000.0 * (i + 1), "eval/return_post": v, "eval/fresh": 1.0, "training_iteration":
             i + 1} for i, v in enumerate(values)]
    return Trial(name, {"task": NAV, "backbone": name, "method": "maml"}, rows)


def test_asha_replay_measures_what_early_stopping_keeps_of_the_ranking():
    """Four trials, results every 1,000 env steps, grace 2,000: at the first rung (2,000) trial a arrives first and
    continues; b, c, d are below the cutoff of those before them (ASHA's 75th percentile) and stop there. With
    curves that never cross every pair keeps its order; when d starts worst but ends best, its 3 pairs flip."""
    from metarl.apps.report import asha_check

    steady = [_synthetic(n, [q * (i + 1) for i in range(8)]) for n, q in (("a", 4), ("b", 3), ("c", 2), ("d", 1))]
    line, = asha_check(steady, grace_period=2000)
    assert "stops 3 of 4 trials; 6/6 trial pairs keep their final order (100%); the best trial survives" in line
    bloomer = steady[:3] + [_synthetic("d", [0.5, 0.5, 1, 2, 40, 50, 60, 70])]
    line, = asha_check(bloomer, grace_period=2000)
    assert "stops 3 of 4 trials; 3/6 trial pairs keep their final order (50%); the best trial is stopped" in line


def test_report_writes_every_evaluation_as_data(sweep):
    """results.json: each trial's fresh held-out evaluations as the trial logged them (read here from progress.csv),
    with the sweep's plan."""
    import json

    from metarl.apps import report

    exp = next(iter(sweep.values()))[0].parent
    report.write_report(exp)
    data = json.loads((exp / "results.json").read_text())
    assert data["sweep"]["plan"]["methods"] == ["maml", "multitask"]
    assert str(exp.parent) not in json.dumps(data)  # no path of this machine (the sweep's resolved storage)
    trials = {t["method"]: t for t in data["trials"]}
    assert set(trials) == set(sweep)
    for m, (_, rows) in sweep.items():
        fresh = [r for r in rows if r["eval/fresh"] == 1]
        got = trials[m]["evaluations"]
        assert [e["env_steps"] for e in got] == [r["env_steps/lifetime"] for r in fresh], m
        assert [e["return_step"] for e in got] == [[r["eval/return_step_0"], r["eval/return_step_1"]] for r in fresh]
        assert got[-1]["task_returns"] == [fresh[-1][f"eval/task_return/{i}"] for i in range(SIZE.eval_tasks)]
        assert trials[m]["backbone"] == "gru" and trials[m]["seed"] == 0
