"""benchmarks/ablate_hcdir.py at a tiny budget: 2 variants x 1 seed on navigation-2d (real `metarl train` runs).

The iteration count is the budget over the env steps of one iteration (written out by hand below); a finished
run is read, not re-run; a run with fewer iterations than a larger budget asks for is continued with --resume; the
JSON holds every run's held-out per-task returns and the summary interval; the markdown table is printed.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from conftest import load_benchmark

from metarl.apps.run_folder import RunLock

ROOT = pathlib.Path(__file__).resolve().parents[1]
ablate = load_benchmark("ablate_hcdir")

#: 2 tasks x 2 episodes x (1 inner step + query) x horizon 20 = 160 env steps per iteration
TINY = "--meta-batch-size 2 --episodes-per-task 2 --num-envs-per-runner 2 --num-env-runners 0 --horizon 20 --width 8"


def argv(tmp_path, budget: int, variants: str = "default,first-order") -> list[str]:
    return ["--task", "navigation-2d", "--variants", variants, "--seeds", "1", "--budget", str(budget),
            "--eval-tasks", "2", "--eval-episodes", "2", "--root", str(tmp_path / "runs"),
            "--results", str(tmp_path / "ablation.json"), "--train-args", TINY]


def test_dry_run_plans_iterations_from_the_budget(tmp_path, capsys):
    assert ablate.main([*argv(tmp_path, 330, "default,paper"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "default seed 0: 3 iterations x 160 env steps" in out  # ceil(330 / 160)
    assert "paper seed 0: 3 iterations x 160 env steps" in out  # the given flags win over the preset's 40 x 20
    assert "--preset paper" in out and not (tmp_path / "ablation.json").exists()
    # every variant changes one knob of the table's defaults on any task: the base flags come first, so the
    # variant's own (e.g. its preset) win
    commands = [line for line in out.splitlines() if "-m metarl.train" in line]
    assert [c.split("--task navigation-2d ")[1].split(" --meta-batch-size")[0] for c in commands] == [
        "--preset default", "--preset default --preset paper"]


def test_bad_variant_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablate.main(argv(tmp_path, 320, "default,nope"))
    assert "unknown ['nope']" in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_tiny_ablation_runs_resumes_and_reports(tmp_path, capsys):
    assert ablate.main(argv(tmp_path, 320)) == 0  # 2 iterations each, then the held-out evaluation
    out = capsys.readouterr().out
    assert out.count("$ ") == 4 and out.count(" evaluate --checkpoint ") == 2
    assert "| default | (none) | defaults |" in out and "| first-order | first_order | True |" in out
    data = json.loads((tmp_path / "ablation.json").read_text())
    for name in ("default", "first-order"):
        run = data["runs"][name]["0"]
        assert run["done"] and run["iterations"] == 2 and run["env_steps"] == 2 * 160
        heldout = json.loads((tmp_path / "runs" / name / "seed0" / "heldout_2.json").read_text())
        assert heldout["num_tasks"] == 2 and heldout["episodes"] == 2 and heldout["adapt_steps"] == 1
        want = [float(np.mean(t["returns"][1])) for t in heldout["per_task"]]  # after one inner step
        assert run["task_returns"] == pytest.approx(want, rel=1e-12) and len(want) == 2
        assert run["cmd"].startswith("python -m metarl.train") and run["eval_cmd"].startswith("python -m metarl ")
        s = data["summary"][name]
        assert s["low"] <= s["mean"] <= s["high"] and s["mean"] == pytest.approx(np.mean(want), rel=1e-12)
    assert data["provenance"]["versions"]["mujoco"] and data["provenance"]["git"]["commit"]
    assert ablate.main(argv(tmp_path, 320)) == 0  # finished and evaluated: read, not re-run
    assert "$ " not in capsys.readouterr().out
    assert ablate.main(argv(tmp_path, 480, "default")) == 0  # 3 iterations: continued from the checkpoint
    out = capsys.readouterr().out
    train_line = out.split("$ ")[1].split("\n")[0]
    assert out.count("$ ") == 2 and "--iterations 3" in train_line and train_line.endswith("--resume")
    run = json.loads((tmp_path / "ablation.json").read_text())["runs"]["default"]["0"]
    assert run["iterations"] == 3 and run["env_steps"] == 3 * 160
    assert (tmp_path / "runs" / "default" / "seed0" / "heldout_3.json").exists()


def test_trial_memory_bench_plans_equal_env_steps_for_every_method(tmp_path, capsys):
    bench = load_benchmark("trial_memory_bench")
    assert bench.main(["--task", "navigation-2d", "--budget", "5000000", "--root", str(tmp_path / "runs"),
                       "--results", str(tmp_path / "t.json"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # 20 tasks x 20 episodes x H 100: 2 phases (one inner step) = 80,000 env steps, 1 phase (RL², multitask) 40,000
    for name in ("maml-mlp", "maml-gru", "maml-trial-gru", "maml-trial-lru"):
        assert f"{name} seed 1: 63 iterations x 80,000 env steps" in out
    for name in ("rl2-gru", "rl2-lru", "multitask-mlp"):
        assert f"{name} seed 1: 125 iterations x 40,000 env steps" in out
    assert out.count("--memory trial") == 8 and out.count("--inner-steps 0") == 6  # x 2 seeds
    # RL² is evaluated in context (θ unchanged for the query phase), every other variant with its inner step
    evals = [line for line in out.splitlines() if "metarl evaluate" in line]
    assert [("--inner-lr 0" in line) for line in evals] == [("/rl2-" in line) for line in evals] and len(evals) == 14
    assert bench.curve_key("rl2-lru") == "eval/return_step_0" and bench.curve_key("maml-trial-gru").endswith("_1")
    assert "--episodes-per-task 20 --num-envs-per-runner 10" in out and not (tmp_path / "t.json").exists()


def test_first_crossing_is_the_first_evaluation_at_or_above_the_level():
    long = load_benchmark("hcdir_long")
    steps, returns = [1e6, 2e6, 3e6, 4e6], [100.0, 149.9, 150.0, 300.0]
    assert long.first_crossing(steps, returns, 150.0) == 3e6  # at the level counts; below it does not
    assert long.first_crossing(steps, returns, 260.0) == 4e6
    assert long.first_crossing(steps, [400.0, 100.0, 100.0, 100.0], 260.0) == 1e6  # the first, not the last
    assert long.first_crossing(steps, returns, 400.0) is None


def test_hcdir_long_writes_its_curve_and_crossings(tmp_path, capsys):
    """The long run's script at a tiny budget on navigation-2d (real runs): 2 iterations, an evaluation inside
    training at each, the crossings (never: Navigation2D's returns are negative) and the curve PNG written."""
    long = load_benchmark("hcdir_long")
    results = tmp_path / "long.json"
    code = long.main(["--task", "navigation-2d", "--seeds", "1", "--budget", "320", "--eval-tasks", "2",
                      "--eval-episodes", "2", "--root", str(tmp_path / "runs"), "--results", str(results),
                      "--train-args", TINY + " --eval-every 1 --eval-tasks 2 --eval-episodes 2"])
    assert code == 0
    data = json.loads(results.read_text())
    assert data["crossings"] == {"switch-9M": {"0": {"150": None, "260": None}}}
    steps, returns = long.bench.curve(str(tmp_path / "runs" / "switch-9M" / "seed0"))
    assert steps == [160, 320] and all(r < 0 for r in returns)
    assert results.with_name("long_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "not reached" in capsys.readouterr().out


def test_trial_memory_phase_table_means_over_seeds_and_tasks():
    bench = load_benchmark("trial_memory_bench")
    trial = {"done": True, "task_returns_step_0": [-4.0, -2.0], "task_returns": [1.0, 3.0],
             "return_per_episode": [[-3.5, -2.5], [1.5, 2.5]]}
    data = {"runs": {
        "maml-trial-gru": {"0": trial, "1": {**trial, "task_returns": [5.0, 7.0], "return_per_episode": [[-3.5, -2.5],
                                                                                                       [5.5, 6.5]]}},
        "maml-mlp": {"0": {"done": True, "task_returns_step_0": [-10.0, -20.0], "task_returns": [0.0, 1.0]},
                     "1": {"done": False}},  # an unfinished seed is not counted
    }}
    lines = bench.phase_table(data).splitlines()
    # query phase: mean of (1, 3, 5, 7) = 4; query episode 1: mean of (1.5, 5.5) = 3.5
    assert lines[2] == "| maml-trial-gru | 2 | -3.0 | 4.0 | -3.5 | -2.5 | 3.5 | 4.5 |"
    assert lines[3] == "| maml-mlp | 1 | -15.0 | 0.5 | — | — | — | — |"


def test_runs_another_process_wrote_meanwhile_are_kept(tmp_path, monkeypatch):
    """Two ablation processes (other variants) share one JSON: what the other wrote during this one's run stays.
    The training is replaced here: the JSON's merge is what this checks."""
    path = tmp_path / "ablation.json"

    def run_one(plan, entry):
        path.write_text(json.dumps({"runs": {"lvc": {"0": {"done": True, "task_returns": [1.0, 3.0]}}}}))
        return {**entry, "done": True, "task_returns": [2.0, 4.0], "iterations": 1, "env_steps": 160}

    monkeypatch.setattr(ablate, "run_one", run_one)
    assert ablate.main(argv(tmp_path, 160, "default")) == 0
    data = json.loads(path.read_text())
    assert set(data["runs"]) == {"default", "lvc"} and data["runs"]["default"]["0"]["task_returns"] == [2.0, 4.0]
    assert data["summary"]["lvc"]["mean"] == pytest.approx(2.0) and not list(tmp_path.glob("*.tmp"))
    # the difference to the reference (the table's first variant): lvc's 2.0 minus default's 3.0
    lvc = data["summary"]["lvc"]
    assert lvc["reference"] == "default" and lvc["delta"] == pytest.approx(2.0 - 3.0, abs=1e-12)
    assert lvc["delta_low"] <= lvc["delta"] <= lvc["delta_high"] and "delta" not in data["summary"]["default"]
    table = ablate.markdown(data["summary"])
    assert "| difference to default (95% interval) |" in table
    assert f"| lvc | inner_objective | lvc | 2.0 [1.0, 3.0] | {lvc['delta']:+.1f} [" in table


def test_a_run_another_live_process_trains_is_skipped(tmp_path, capsys):
    """Two ablation processes on one plan: a run folder locked by a live process (this one) is neither trained nor
    evaluated, and its entry is not marked done."""
    run_dir = tmp_path / "runs" / "default" / "seed0"
    RunLock(run_dir).acquire()  # held by this live process (released with tmp_path)
    assert ablate.main(argv(tmp_path, 160, "default")) == 0
    out = capsys.readouterr().out
    assert "$ " not in out and f"skipped {run_dir}: another process is training it" in out
    assert not json.loads((tmp_path / "ablation.json").read_text())["runs"]["default"]["0"].get("done")


def test_a_run_the_other_process_takes_after_the_check_is_skipped_too(tmp_path, monkeypatch, capsys):
    """The race of two processes started together: both saw the run unlocked, the other one took it first, so this
    one's `metarl train` refuses the locked folder (exit 2): the run is skipped, the script goes on."""
    run_dir = tmp_path / "runs" / "default" / "seed0"
    real = ablate._timed

    def timed(cmd):  # the other process takes the lock just before this one's train starts
        RunLock(run_dir).acquire()
        monkeypatch.setattr(ablate, "_timed", real)
        return real(cmd)

    monkeypatch.setattr(ablate, "_timed", timed)
    assert ablate.main(argv(tmp_path, 160, "default")) == 0
    assert f"skipped {run_dir}: another process is training it" in capsys.readouterr().out
    assert not json.loads((tmp_path / "ablation.json").read_text())["runs"]["default"]["0"].get("done")


def test_a_skipped_run_that_the_other_process_finished_keeps_its_result(tmp_path, monkeypatch):
    """This process skipped a run (its entry unfinished); the other one finished it and wrote the JSON meanwhile:
    the finished entry survives this process's save."""
    run_dir = tmp_path / "runs" / "default" / "seed0"
    RunLock(run_dir).acquire()  # held by this live process (released with tmp_path)
    path, real = tmp_path / "ablation.json", ablate.run_one
    done = {"done": True, "task_returns": [2.0, 4.0], "iterations": 1, "env_steps": 160, "wall_s": 5.0}

    def run_one(plan, entry):  # skips (locked); the other process writes its finished entry before this one saves
        out = real(plan, entry)
        path.write_text(json.dumps({"runs": {"default": {"0": done}}}))
        return out

    monkeypatch.setattr(ablate, "run_one", run_one)
    assert ablate.main(argv(tmp_path, 160, "default")) == 0
    data = json.loads(path.read_text())
    assert data["runs"]["default"]["0"] == done and data["summary"]["default"]["mean"] == pytest.approx(3.0)
