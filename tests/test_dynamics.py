"""`metarl dynamics`: tiny runs in-process and as a subprocess; adaptation beats no adaptation on held-out data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metarl.apps.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-epochs", "20", "--num-train-tasks", "10", "--num-test-tasks", "5", "--trajectories-per-task", "4",
        "--adapt-steps", "3"]


def _rows(result):
    return {(r["method"], r["adapt_steps"]): r["mse"] for r in result["rows"]}


def _run(tmp_path, *extra, seed=0):
    out = tmp_path / f"dyn_{seed}.json"
    assert main(["dynamics", *TINY, "--seed", str(seed), "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_tiny_run_writes_all_rows_and_provenance(tmp_path):
    result = _run(tmp_path)
    rows = _rows(result)
    assert set(rows) == {("copy-last-observation", None), ("no-adaptation", 0)} | {("adapted", k) for k in (1, 2, 3)}
    assert set(result["versions"]) == {"python", "torch", "gymnasium", "mujoco", "numpy"}
    assert result["args"]["env"] == "pendulum-mass" and result["seed"] == 0 and "git_commit" in result
    assert len(result["test_tasks"]) == 5
    # a learned model must beat predicting "nothing changes" by a wide margin on pendulum physics
    assert rows[("no-adaptation", 0)] < 0.2 * rows[("copy-last-observation", None)]


def test_adaptation_beats_no_adaptation_on_held_out_transitions(tmp_path):
    """pendulum-mass, mass ~ U(0.5, 2): after K=3 SGD steps on the support transitions of a held-out task, the
    one-step MSE on that task's *query* transitions (never used for adaptation) is below the no-adaptation MSE for
    each of seeds 0-2, and their mean ratio adapted(K=3) / no-adaptation is < 0.85.

    Calibration with this tiny config (20 epochs, 10 train tasks, 5 test tasks, 4 trajectories/task), seeds 0-11:
    0.36, 0.64, 0.87, 0.87, 0.16, 0.38, 0.34, 0.79, 0.79, 0.84, 0.39, 0.94 (max 0.94 < 1; the spread over seeds is
    wide, so one seed's ratio is only required to be < 1); means of consecutive seed triples 0.62, 0.47, 0.64, 0.72
    (max 0.72; threshold 0.85). With the default config (50 epochs, 20 train tasks) 0.62, 0.67, 0.45, 0.74 for
    seeds 0-3 (K=5).
    """
    ratios = []
    for seed in (0, 1, 2):
        rows = _rows(_run(tmp_path, seed=seed))
        ratios.append(rows[("adapted", 3)] / rows[("no-adaptation", 0)])
        assert ratios[-1] < 1.0, (seed, rows)
    assert sum(ratios) / len(ratios) < 0.85, ratios


def test_same_seed_same_numbers(tmp_path):
    a, b = _run(tmp_path / "a", "--num-epochs", "2"), _run(tmp_path / "b", "--num-epochs", "2")
    assert a["rows"] == b["rows"]


def test_subprocess_run(tmp_path):
    out = tmp_path / "sub.json"
    cmd = [sys.executable, "-m", "metarl", "dynamics", *TINY, "--num-epochs", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "no-adaptation" in proc.stdout and "copy-last-observation" in proc.stdout
    assert len(json.loads(out.read_text())["rows"]) == 2 + 3


def test_unknown_env_lists_known_names(capsys):
    assert main(["dynamics", "--env", "CartPole-v1"]) == 2
    err = capsys.readouterr().err
    assert "'CartPole-v1'" in err and "pendulum-mass" in err and "halfcheetah-vel" in err


@pytest.mark.parametrize("flag,value,match", [
    ("--support-steps", "40", "--support-steps (40) must be < --trajectory-length (40)"),
    ("--inner-lr", "0", "--inner-lr must be > 0, got 0.0"),
    ("--adapt-steps", "0", "--adapt-steps must be >= 1, got 0"),
    ("--env-options", "[1]", "--env-options must be a JSON object"),
])
def test_bad_arguments_are_reported(capsys, flag, value, match):
    assert main(["dynamics", flag, value]) == 2
    assert match in capsys.readouterr().err


def test_unknown_backbone_lists_names(capsys):
    assert main(["dynamics", "--backbone", "nope"]) == 2
    assert "available backbones: " in capsys.readouterr().err


def test_sequence_backbone_runs(tmp_path):
    rows = _rows(_run(tmp_path, "--backbone", "gru", "--width", "16", "--num-epochs", "2"))
    assert all(v == v and v > 0 for v in rows.values())  # finite, positive MSEs from a recurrent model


@pytest.mark.slow
def test_default_run_adaptation_gain(tmp_path):
    """Default config (see the module docstring of metarl.dynamics): adapted(K=5) < 0.8x no-adaptation."""
    out = tmp_path / "default.json"
    assert main(["dynamics", "--out", str(out)]) == 0
    rows = _rows(json.loads(out.read_text()))
    assert rows[("adapted", 5)] < 0.8 * rows[("no-adaptation", 0)], rows
