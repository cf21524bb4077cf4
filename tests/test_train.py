"""The run loop (metarl.apps.run_loop) behind run_mujoco.py and `metarl train`: resume = uninterrupted, crash-safe
checkpoints, NaN stops, identical flags, clear errors. Tiny budgets (navigation-2d, horizon 10); one Ray per module.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
import re
import shutil

import numpy as np
import pytest
import ray
from conftest import assert_same_run, load_benchmark

from metarl.apps import flags, run_loop
from metarl.apps import ray_session as ray_session_mod
from metarl.apps import records as records_mod
from rllib_ext import checkpoint as ckpt_mod

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--task", "navigation-2d", "--backbone", "gru", "--width", "16", "--meta-batch-size", "2",
        "--episodes-per-task", "2", "--num-envs-per-runner", "2", "--outer-steps", "1", "--horizon", "10",
        "--checkpoint-every", "1"]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_args(out, iterations: int, *extra: str) -> argparse.Namespace:
    parser = flags.add_arguments(argparse.ArgumentParser())
    return parser.parse_args([*TINY, "--out", str(out), "--iterations", str(iterations), *extra])


def records(out) -> list[dict]:
    return json.loads((pathlib.Path(out) / "results.json").read_text())["records"]


def latest_name(out) -> str:
    return (pathlib.Path(out) / "checkpoints" / "latest").read_text().strip()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-iteration run: what every interrupted/resumed run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run_loop.run(tiny_args(out, 3), echo=lambda s: None)
    return records(out)


@pytest.mark.timeout(240)
def test_resume_to_larger_total_equals_uninterrupted_run(tmp_path, reference, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a RELATIVE --out, as `make run`'s default runs/mujoco
    out = pathlib.Path("run")
    lines = []
    s2 = run_loop.run(tiny_args(out, 2), echo=lines.append)
    assert s2["completed"] == 2 and latest_name(out) == "checkpoint_000002"
    assert len(lines) == 2 and "iter    1/2" in lines[0] and "ETA" in lines[0]
    s3 = run_loop.run(tiny_args(out, 3, "--resume"), echo=lines.append)
    assert s3["completed"] == 3 and latest_name(out) == "checkpoint_000003"
    got = records(out)
    assert_same_run(got, reference)
    # counters continued: lifetime steps are the running sum of the per-iteration steps
    assert np.cumsum([r["env_steps/this_iter"] for r in got]).tolist() == [r["env_steps/lifetime"] for r in got]
    res = json.loads((out / "results.json").read_text())
    assert [r["from_iteration"] for r in res["resumes"]] == [2]
    assert res["provenance"]["config"]["task"] == "navigation-2d" and "torch" in res["provenance"]["versions"]
    csv_rows = (out / "progress.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 3 and csv_rows[0].startswith("iteration,")
    assert (out / "adaptation.png").stat().st_size > 0 and any((out / "tb").iterdir())


@pytest.mark.timeout(300)
def test_resume_with_remote_runners_samples_with_the_restored_weights(tmp_path, reference):
    """2 iterations, then --resume to 3, with 2 remote EnvRunners == the uninterrupted run (0 runners: the same
    episodes, MAMLEnvRunner seeds them from the job). A runner left with stale weights after the restore samples
    iteration 3 with other weights: other returns and a log-prob mismatch far from 0 at the Learner."""
    out = tmp_path / "run"
    run_loop.run(tiny_args(out, 2, "--num-env-runners", "2"), echo=lambda s: None)
    run_loop.run(tiny_args(out, 3, "--num-env-runners", "2", "--resume"), echo=lambda s: None)
    got = records(out)
    assert_same_run(got, reference)
    assert max(r["meta/logp_mismatch"] for r in got) < 1e-4
    assert np.cumsum([r["env_steps/this_iter"] for r in got]).tolist() == [r["env_steps/lifetime"] for r in got]


@pytest.mark.timeout(240)
def test_resume_keeps_the_runs_own_values_of_flags_not_given(tmp_path, capsys):
    """A run started with non-default flags, resumed WITHOUT them, continues as started (== the uninterrupted run
    with those flags): a default or preset changed between sittings never changes a run. A flag given on resume
    wins; the layout is the resume's own."""
    own = ("--inner-lr", "0.3", "--first-order", "--seed", "5", "--gamma", "0.95")
    uninterrupted, out = tmp_path / "ref", tmp_path / "run"
    run_loop.run(tiny_args(uninterrupted, 3, *own), echo=lambda s: None)
    run_loop.run(tiny_args(out, 2, *own), echo=lambda s: None)
    capsys.readouterr()
    run_loop.run(tiny_args(out, 3, "--resume", "--num-env-runners", "1"), echo=lambda s: None)
    assert "--resume: kept the run's inner_lr=0.3, first_order=True" in capsys.readouterr().out
    assert_same_run(records(out), records(uninterrupted))
    def last_config() -> dict:  # the config of the last resume
        return json.loads((out / "results.json").read_text())["resumes"][-1]["provenance"]["config"]

    assert (last_config()["num_env_runners"], last_config()["seed"], last_config()["gamma"]) == (1, 5, 0.95)
    run_loop.run(tiny_args(out, 4, "--resume", "--inner-lr", "0.2"), echo=lambda s: None)
    assert (last_config()["inner_lr"], last_config()["first_order"]) == (0.2, True)
    run_loop.run(tiny_args(out, 5, "--resume"), echo=lambda s: None)  # the value it last ran with: 0.2
    assert (last_config()["inner_lr"], last_config()["num_env_runners"]) == (0.2, 0)


def test_resume_gives_a_field_newer_than_the_run_its_table_default(capsys):
    """A field added since the run started (absent from its record) takes the table's default, not a preset's
    value: the run goes on as it ran before the field existed. A flag given on resume still wins."""
    from metarl.apps.run_folder import keep_stored_fields
    from rllib_ext.fields import FIELDS

    args = tiny_args("unused", 1)
    stored = {f.name: getattr(args, f.dest) for f in FIELDS if f.name != "outer_monotone"}  # before it existed
    results = {"provenance": {"config": stored}}
    args.outer_monotone = True  # as a preset would set it
    assert keep_stored_fields(args, results) == {"outer_monotone": False} and args.outer_monotone is False
    assert "kept the run's outer_monotone=False" in capsys.readouterr().out
    args = tiny_args("unused", 1, "--outer-monotone")  # given on resume: it wins
    assert keep_stored_fields(args, results) == {} and args.outer_monotone is True


@pytest.mark.timeout(240)
def test_first_order_until_is_first_order_then_second_order(tmp_path):
    """--first-order-until N (N within iteration 2's env steps) == a first-order run resumed after iteration 1
    with --no-first-order (resumed runs continue exactly), and differs from first order throughout at iteration 2."""
    steps_1 = 2 * 2 * 2 * 10  # tasks x episodes x phases x horizon: env steps of one iteration
    switch = tiny_args(tmp_path / "switch", 2, "--first-order-until", str(steps_1 + 1))
    run_loop.run(switch, echo=lambda s: None)
    run_loop.run(tiny_args(tmp_path / "forked", 1, "--first-order"), echo=lambda s: None)
    run_loop.run(tiny_args(tmp_path / "forked", 2, "--resume", "--no-first-order"), echo=lambda s: None)
    run_loop.run(tiny_args(tmp_path / "first", 2, "--first-order"), echo=lambda s: None)
    got, forked, first = (records(tmp_path / n) for n in ("switch", "forked", "first"))
    assert [r["env_steps/lifetime"] for r in got] == [steps_1, 2 * steps_1]
    assert [r["meta/first_order"] for r in got] == [1, 0]
    assert_same_run(got, forked)
    assert got[1]["meta/grad_norm"] == pytest.approx(forked[1]["meta/grad_norm"], rel=1e-5)
    assert got[0]["meta/grad_norm"] == pytest.approx(first[0]["meta/grad_norm"], rel=1e-5)
    assert got[1]["meta/grad_norm"] != pytest.approx(first[1]["meta/grad_norm"], rel=1e-3)  # the order matters


def test_first_order_until_with_first_order_is_refused():
    with pytest.raises(ValueError, match=r"first_order_until = 100 .*first_order = True"):
        flags.config_from_args(tiny_args("unused", 1, "--first-order", "--first-order-until", "100")).validate_meta()


@pytest.mark.timeout(240)
def test_crash_mid_checkpoint_keeps_latest_and_resume_recovers(tmp_path, reference, monkeypatch):
    out = tmp_path / "run"
    run_loop.run(tiny_args(out, 2), echo=lambda s: None)

    class Killed(BaseException):  # not an Exception: nothing may catch and "handle" the simulated kill
        pass

    def die_before_rename(tmp):
        assert (tmp / "algorithm_state.pkl").exists()  # the state is written, not yet visible
        raise Killed

    monkeypatch.setattr(run_loop, "save_checkpoint",
                        functools.partial(ckpt_mod.save_checkpoint, before_rename=die_before_rename))
    with pytest.raises(Killed):
        run_loop.run(tiny_args(out, 4, "--resume"), echo=lambda s: None)
    assert latest_name(out) == "checkpoint_000002"
    assert not (out / "checkpoints" / "checkpoint_000003").exists()
    assert list((out / "checkpoints").glob(".tmp-checkpoint_000003-*")), "the partial write is left behind"
    assert [r["iteration"] for r in records(out)] == [1, 2, 3]  # iteration 3 logged, not checkpointed

    monkeypatch.undo()
    run_loop.run(tiny_args(out, 3, "--resume"), echo=lambda s: None)
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert latest_name(out) == "checkpoint_000003"
    res = json.loads((out / "results.json").read_text())
    assert res["resumes"][-1] == {**res["resumes"][-1], "from_iteration": 2, "dropped_records": [3]}
    assert_same_run(res["records"], reference)


@pytest.mark.timeout(240)
def test_nan_loss_stops_with_iteration_and_component_and_keeps_checkpoint(tmp_path, monkeypatch):
    from rllib_ext.learner import MAMLLearner

    out = tmp_path / "run"
    calls = {"n": 0}
    original = MAMLLearner.meta_update

    def nan_on_second_call(self, *a, **kw):
        m = original(self, *a, **kw)
        calls["n"] += 1
        return {**m, "outer_loss_last": float("nan")} if calls["n"] == 2 else m

    monkeypatch.setattr(MAMLLearner, "meta_update", nan_on_second_call)
    with pytest.raises(FloatingPointError, match=r"iteration 2: meta/outer_loss_last = nan .*Learner meta-update"):
        run_loop.run(tiny_args(out, 3), echo=lambda s: None)
    assert latest_name(out) == "checkpoint_000001"
    assert [r["iteration"] for r in records(out)] == [1]


@pytest.mark.timeout(240)
def test_held_out_evaluations_land_in_the_records_of_the_iterations_that_ran_them(tmp_path):
    out = tmp_path / "run"
    run_loop.run(tiny_args(out, 3, "--eval-every", "5", "--eval-tasks", "2"), echo=lambda s: None)
    recs = records(out)
    evaluated = [r["iteration"] for r in recs if "eval/return_step_1" in r]
    assert evaluated == [1, 3]  # the first and the last (budget_iterations = --iterations), not iteration 2
    assert all(r["eval/fresh"] == 1.0 and {"eval/task_return/0", "eval/task_return/1"} <= set(r)
               for r in recs if r["iteration"] in evaluated)
    assert recs[2]["eval/return_step_1"] == pytest.approx(
        (recs[2]["eval/task_return/0"] + recs[2]["eval/task_return/1"]) / 2)


@pytest.mark.timeout(240)
def test_the_driver_runs_on_the_torch_threads_asked_for(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            run_loop.run(tiny_args(tmp_path / f"t{threads}", 1, "--torch-threads", str(threads)), echo=lambda s: None)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_check_finite_table():
    ok = {"iteration": 1, "adapt/return_step_0": -3.0, "meta/outer_loss": 0.1, "time/meta_update_s": 2.0}
    records_mod.check_finite(ok, 1)
    for key, component in (("adapt/return_step_1", "EnvRunner returns"), ("inner/loss", "EnvRunner inner step"),
                           ("meta/grad_norm", "Learner meta-update")):
        for bad in (math.nan, math.inf):
            with pytest.raises(FloatingPointError, match=f"iteration 7: {key} = .*{component}"):
                records_mod.check_finite({**ok, key: bad}, 7)
    records_mod.check_finite({**ok, "time/meta_update_s": math.nan}, 1)  # bookkeeping is not checked


@pytest.mark.timeout(240)
def test_failed_upload_keeps_the_local_copy_and_names_it(tmp_path, monkeypatch):
    """The URI's folder is replaced by a file after the writability check (the bucket went away mid-run): the
    upload fails, the run stops with an error naming the local copy, which is kept and resumable."""
    from metarl.apps.run_folder import UploadError

    remote = tmp_path / "bucket" / "run"
    save = run_loop.save_checkpoint

    def save_then_break_the_bucket(*a, **kw):
        ckpt = save(*a, **kw)
        if remote.is_dir():
            shutil.rmtree(remote)
            remote.write_text("not a folder any more")
        return ckpt

    monkeypatch.setattr(run_loop, "save_checkpoint", save_then_break_the_bucket)
    with pytest.raises(UploadError, match=r"upload to file://.* failed.*the run is kept in (\S+): resume it") as e:
        run_loop.run(tiny_args(f"file://{remote}", 2), echo=lambda s: None)
    local = pathlib.Path(re.search(r"the run is kept in (\S+):", str(e.value)).group(1))
    assert latest_name(local) == "checkpoint_000001" and [r["iteration"] for r in records(local)] == [1]
    monkeypatch.undo()
    assert run_loop.run(tiny_args(local, 2, "--resume"), echo=lambda s: None)["completed"] == 2
    shutil.rmtree(local)


@pytest.mark.timeout(240)
def test_metarl_train_main_in_process_to_file_uri(tmp_path, capsys):
    from metarl.apps import cli, train

    remote = tmp_path / "bucket" / "run"
    uri = f"file://{remote}"
    args = cli.build_parser("train").parse_args(["train", *TINY, "--iterations", "2", "--out", uri])
    assert train.main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["completed"] == 2
    assert latest_name(remote) == "checkpoint_000002"
    assert [r["iteration"] for r in records(remote)] == [1, 2]
    assert ckpt_mod.is_complete(remote / "checkpoints" / "checkpoint_000002")
    # resume through the URI: downloads, continues, uploads
    args = cli.build_parser("train").parse_args(["train", *TINY, "--iterations", "3", "--out", uri, "--resume"])
    assert train.main(args) == 0
    assert [r["iteration"] for r in records(remote)] == [1, 2, 3] and latest_name(remote) == "checkpoint_000003"


def _run_mujoco():
    return load_benchmark("run_mujoco")


def test_flags_of_metarl_train_and_run_mujoco_match():
    from metarl.apps import cli

    def options(parser):
        return {tuple(a.option_strings): (a.default, a.type, a.nargs) for a in parser._actions if a.option_strings}

    train_parser = cli.build_parser("train")._subparsers._group_actions[0].choices["train"]
    got, want = options(train_parser), options(_run_mujoco().build_parser())
    # the one intended difference: run_mujoco.py (make run) lays out runners/learners from the cores by default
    for flag in (("--num-env-runners",), ("--num-learners",)):
        assert want[flag][0] == "auto" and got[flag][0] == 0 and got[flag][1:] == want[flag][1:]
        got[flag] = want[flag]
    assert got == want
    assert ("--iterations",) in got and ("--resume",) in got and ("--horizon",) in got


@pytest.mark.timeout(120)
def test_bad_input_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"task = 'no-such-task'.*navigation-2d"):
        run_loop.run(tiny_args(out, 1, "--task", "no-such-task"))
    with pytest.raises(ValueError, match=r"backbone = 'nope'.*gru"):
        run_loop.run(tiny_args(out, 1, "--backbone", "nope"))
    with pytest.raises(SystemExit) as e:  # the script: argparse-style error with the message
        _run_mujoco().main([*TINY, "--out", str(out), "--task", "no-such-task"])
    assert e.value.code == 2 and "no-such-task" in capsys.readouterr().err
    assert not out.exists()

    run_loop.run(tiny_args(out, 2), echo=lambda s: None)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"--iterations = 1 is below the 2 iterations already completed"):
        run_loop.run(tiny_args(out, 1, "--resume"))
    with pytest.raises(ValueError, match=r"already holds results.json.*--resume"):
        run_loop.run(tiny_args(out, 5))
    with pytest.raises(ValueError, match=r"different model/task.*width"):
        run_loop.run(tiny_args(out, 5, "--resume", "--width", "8"))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # the total reached already: nothing to do, nothing rewritten
    assert run_loop.run(tiny_args(out, 2, "--resume"), echo=lambda s: None)["completed"] == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_latest_pointer_is_atomic_and_resolve_errors(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="does not exist"):
        ckpt_mod.resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(ValueError, match="is not a checkpoint"):
        ckpt_mod.resolve_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("checkpoint_000009\n")
    with pytest.raises(ValueError, match="names .checkpoint_000009., which is not a checkpoint folder"):
        ckpt_mod.resolve_checkpoint(tmp_path)
    ckpt_mod.write_text_atomic(tmp_path / "checkpoints" / "latest", "x\n")
    assert (tmp_path / "checkpoints" / "latest").read_text() == "x\n"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["latest"]  # no temp file left


def test_init_ray_joins_a_job_cluster_bare_and_leaves_a_running_ray_alone(monkeypatch):
    calls = []
    args = tiny_args("unused", 1)
    monkeypatch.setattr(ray, "init", lambda *a, **kw: calls.append((a, kw)))
    assert ray_session_mod.init_ray_for_run(args) is False and calls == []  # the module's Ray is running: used as is
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert ray_session_mod.init_ray_for_run(args) is True and calls == [((), {})]  # inside `ray job submit`: no resources
    monkeypatch.delenv("RAY_ADDRESS")
    ray_session_mod.init_ray_for_run(tiny_args("unused", 1, "--num-cpus", "1", "--num-env-runners", "2"))
    assert calls[-1] == ((), {"address": "local", "num_cpus": 3, "include_dashboard": False})  # driver + 2 runners at least
