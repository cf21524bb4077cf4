"""Bad inputs across the CLI (train, evaluate, report, dynamics), the config, the Python API and files on disk.

Each row of ``CASES`` is one bad input: what is called, the exit code or exception type expected, a pattern the
message must match (it names the field, flag or file), and the path that must be left byte-for-byte unchanged
(``--out``, the checkpoint, the sweep folder). One tiny navigation-2d run (2 iterations) is made once per module;
each row works on its own copy of it. Validation that belongs to the config's field table is called through the
public API here too, so that the table is complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import ray

from metarl.apps import cli, run_loop
from rllib_ext import checkpoint as ckpt_mod

TINY = ["--task", "navigation-2d", "--backbone", "gru", "--width", "16", "--meta-batch-size", "2",
        "--episodes-per-task", "2", "--num-envs-per-runner", "2", "--outer-steps", "1", "--horizon", "10",
        "--checkpoint-every", "1"]
CKPT = "checkpoints/checkpoint_000002"
POLICY = f"{CKPT}/learner_group/learner/rl_module/default_policy"


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished 2-iteration run (checkpoint_000002, with checksums)."""
    out = tmp_path_factory.mktemp("base") / "run"
    args = cli.build_parser("train").parse_args(["train", *TINY, "--iterations", "2", "--out", str(out)])
    run_loop.run(args, echo=lambda s: None)
    return out


# --- how a row changes its copy of the run -----------------------------------------------------------------------
def truncate(rel: str, size: int = 50) -> Callable[[Path], None]:
    def f(run: Path) -> None:
        with open(run / rel, "r+b") as fh:
            fh.truncate(size)
    return f


def flip_bytes(rel: str) -> Callable[[Path], None]:
    def f(run: Path) -> None:
        data = bytearray((run / rel).read_bytes())
        for i in range(len(data) - 64, len(data) - 8, 4):  # inside the last tensor's float data
            data[i] ^= 0x7F
        (run / rel).write_bytes(bytes(data))
    return f


def without_checksums(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """A checkpoint written before checksums existed (no manifest): the file's own error must name it."""
    def f(run: Path) -> None:
        (run / CKPT / ckpt_mod.CHECKSUMS).unlink()
        change(run)
    return f


def write(rel: str, data: bytes) -> Callable[[Path], None]:
    def f(run: Path) -> None:
        (run / rel).write_bytes(data)
    return f


def other_task_config(run: Path) -> None:
    """The checkpoint's config says pendulum-mass (3-d obs, 1-d actions); its policy is navigation-2d's (2-d, 2-d).
    Checksums are rewritten: the checkpoint is consistent, only of two tasks."""
    path = run / CKPT / "class_and_ctor_args.pkl"
    ctor = pickle.loads(path.read_bytes())
    cfg = ctor["ctor_args_and_kwargs"][0][0]
    if isinstance(cfg, dict):
        cfg["task"] = "pendulum-mass"
    else:
        cfg.task = "pendulum-mass"
    path.write_bytes(pickle.dumps(ctor))
    ckpt_mod.write_checksums(run / CKPT)


def live_lock(run: Path) -> None:
    (run / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "started": 0}))


def latest_names_missing(run: Path) -> None:
    (run / "checkpoints" / "latest").write_text("checkpoint_000009\n")


def sweep_dir(run: Path) -> None:
    """A Tune-like experiment folder with one good trial (used by the report rows)."""
    good = run / "sweep" / "good"
    good.mkdir(parents=True)
    (good / "params.json").write_text(json.dumps({"task": "navigation-2d", "backbone": "gru", "inner_steps": 1}))
    (good / "progress.csv").write_text("training_iteration,adapt/return_step_0,adapt/return_step_1\n1,-5.0,-4.0\n")


# --- the table ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    call: tuple  # ("cli", argv) | ("api", name) ; argv may hold {run}, {new}, {tmp}
    expect: int | type  # CLI exit code, or the exception type of an API call
    match: str  # regex the message must match (names the field / flag / file)
    setup: Callable[[Path], None] | None = None
    watch: str = "{run}"  # this path must be unchanged (or stay absent)
    xfail: str | None = None


def train(*extra: str, out: str = "{new}") -> tuple:
    return ("cli", ["train", *TINY, "--iterations", "2", "--out", out, *extra])


def resume(*extra: str, iterations: str = "3") -> tuple:
    return ("cli", ["train", *TINY, "--out", "{run}", "--resume", "--iterations", iterations, *extra])


def evaluate(*extra: str, ckpt: str = "{run}") -> tuple:
    return ("cli", ["evaluate", "--checkpoint", ckpt, "--adapt-steps", "1", "--episodes", "2", "--num-tasks", "2",
                    *extra])


def dynamics(*extra: str) -> tuple:
    return ("cli", ["dynamics", "--num-epochs", "1", "--num-train-tasks", "2", "--num-test-tasks", "1", *extra])


CASES = [
    # train flags (nothing may be created at --out)
    Case("train-iterations-0", train("--iterations", "0"), 2, r"--iterations = 0", watch="{new}"),
    Case("train-iterations-text", train("--iterations", "abc"), 2, r"--iterations", watch="{new}"),
    Case("train-checkpoint-every-0", train("--checkpoint-every", "0"), 2, r"--checkpoint-every", watch="{new}"),
    Case("train-num-envs-0", train("--num-envs-per-runner", "0"), 2, r"num.envs.per", watch="{new}"),
    Case("train-runners-negative", train("--num-env-runners", "-2"), 2, r"num.env.runners", watch="{new}"),
    Case("train-runners-minus-one", train("--num-env-runners", "-1"), 2, r"num.env.runners", watch="{new}"),
    Case("train-learners-negative", train("--num-learners", "-1"), 2, r"num.learners", watch="{new}"),
    Case("train-task", train("--task", "no-such-task"), 2, r"task.*no-such-task", watch="{new}"),
    Case("train-backbone", train("--backbone", "nope"), 2, r"backbone.*nope", watch="{new}"),
    Case("train-width-0", train("--width", "0"), 2, r"width", watch="{new}"),
    Case("train-inner-lr-negative", train("--inner-lr", "-0.1"), 2, r"inner.lr", watch="{new}"),
    Case("train-inner-lr-nan", train("--inner-lr", "nan"), 2, r"inner.lr", watch="{new}"),
    Case("train-outer-lr-0", train("--outer-lr", "0"), 2, r"\blr\b|outer.lr", watch="{new}"),
    Case("train-meta-batch-0", train("--meta-batch-size", "0"), 2, r"meta.batch.size", watch="{new}"),
    Case("train-episodes-not-multiple", train("--episodes-per-task", "3"), 2, r"episodes.per.task", watch="{new}"),
    Case("train-clip-param", train("--clip-param", "1.5"), 2, r"clip.param", watch="{new}"),
    Case("train-inner-steps-negative", train("--inner-steps", "-1"), 2, r"inner.steps", watch="{new}"),
    Case("train-outer-steps-0", train("--outer-steps", "0"), 2, r"outer.steps", watch="{new}"),
    Case("train-horizon-0", train("--horizon", "0"), 2, r"horizon", watch="{new}"),
    Case("train-seed-minus-one", train("--seed", "-1"), 2, r"seed", watch="{new}"),
    Case("train-gpus-negative", train("--num-gpus-per-learner", "-1"), 2, r"num.gpus.per.learner", watch="{new}"),
    Case("train-gpus-absent", train("--num-gpus-per-learner", "1"), 2, r"GPU|gpu", watch="{new}"),
    Case("train-num-cpus-0", train("--num-cpus", "0"), 2, r"num.cpus", watch="{new}"),
    Case("train-meta-batch-absurd", train("--meta-batch-size", "10000000000"), 2, r"meta.batch.size",
         watch="{new}"),
    Case("train-width-absurd", train("--width", "200000"), 2, r"width", watch="{new}"),
    # train --out
    Case("out-existing-file", train(out="{run}/results.json"), 2, r"--out .*results.json.*file"),
    Case("out-proc", train(out="/proc/metarl-x"), 2, r"--out /proc/metarl-x.*not writable", watch="{new}"),
    Case("out-file-uri-proc", train(out="file:///proc/metarl-x"), 2, r"--out file:///proc/metarl-x.*not writable",
         watch="{new}"),
    Case("out-bad-scheme", train(out="nosuchscheme://bucket/x"), 2, r"--out nosuchscheme://", watch="{new}"),
    Case("out-under-a-file", train(out="{run}/results.json/sub"), 2, r"--out .*results.json"),
    Case("out-existing-run-no-resume", train(out="{run}"), 2, r"already holds results.json.*--resume"),
    # --resume
    Case("resume-missing-folder", ("cli", ["train", *TINY, "--out", "{new}", "--resume", "--iterations", "2"]), 2,
         r"--resume.*does not exist", watch="{new}"),
    Case("resume-empty-folder", ("cli", ["train", *TINY, "--out", "{tmp}/empty", "--resume", "--iterations", "2"]),
         2, r"--resume.*holds no results.json", setup=lambda run: (run.parent / "empty").mkdir(),
         watch="{tmp}/empty"),
    Case("resume-below-done", resume(iterations="1"), 2, r"--iterations = 1 is below the 2 iterations"),
    Case("resume-other-width", resume("--width", "8"), 2, r"different model/task.*width"),
    Case("resume-other-task", resume("--task", "pendulum-mass"), 2, r"different model/task.*task"),
    Case("resume-locked", resume(), 2, r"in use by process .*lock file .*\.lock", setup=live_lock),
    Case("resume-results-corrupt", resume(), 2, r"results.json.*cannot be read as JSON",
         setup=write("results.json", b"{\"records\": [")),
    Case("resume-results-binary", resume(), 2, r"results.json", setup=write("results.json", b"\x00\xff\x13")),
    Case("resume-latest-missing", resume(), 2, r"latest names 'checkpoint_000009', which is not a checkpoint",
         setup=latest_names_missing),
    Case("resume-algorithm-state-truncated", resume(), 2, r"algorithm_state.pkl is corrupt",
         setup=truncate(f"{CKPT}/algorithm_state.pkl")),
    Case("resume-algorithm-state-empty", resume(), 2, r"algorithm_state.pkl is corrupt: 0 bytes",
         setup=truncate(f"{CKPT}/algorithm_state.pkl", 0)),
    Case("resume-module-state-flipped", resume(), 2, r"module_state.pkl is corrupt: its sha256",
         setup=flip_bytes(f"{POLICY}/module_state.pkl")),
    Case("resume-checksums-corrupt", resume(), 2, r"checksums.json is corrupt",
         setup=write(f"{CKPT}/checksums.json", b"{not json")),
    Case("resume-ckpt-of-other-task", resume(), 2, r"different model/task.*task.*pendulum-mass.*checkpoint_000002",
         setup=other_task_config),
    # evaluate
    Case("eval-checkpoint-missing", evaluate(ckpt="{new}"), 2, r"checkpoint path .* does not exist",
         watch="{new}"),
    Case("eval-checkpoint-not-one", evaluate(ckpt="{run}/tb"), 2, r"is not a checkpoint"),
    Case("eval-adapt-steps-negative", evaluate("--adapt-steps", "-1"), 2, r"adapt_steps = -1"),
    Case("eval-episodes-0", evaluate("--episodes", "0"), 2, r"episodes = 0"),
    Case("eval-num-tasks-0", evaluate("--num-tasks", "0"), 2, r"num_tasks = 0"),
    Case("eval-num-envs-not-divisor", evaluate("--num-envs", "3"), 2, r"num_envs = 3"),
    Case("eval-out-no-folder", evaluate("--out", "{tmp}/nodir/x.json"), 2, r"--out .*nodir/x.json.*does not exist",
         watch="{tmp}/nodir"),
    Case("eval-out-is-folder", evaluate("--out", "{run}/tb"), 2, r"--out .*tb is a folder"),
    Case("eval-module-state-truncated", evaluate(), 2, r"module_state.pkl is corrupt",
         setup=truncate(f"{POLICY}/module_state.pkl")),
    Case("eval-module-state-flipped", evaluate(), 2, r"module_state.pkl is corrupt: its sha256",
         setup=flip_bytes(f"{POLICY}/module_state.pkl")),
    Case("eval-module-state-truncated-no-manifest", evaluate(), 2, r"module_state.pkl cannot be read",
         setup=without_checksums(truncate(f"{POLICY}/module_state.pkl"))),
    Case("eval-module-state-empty-no-manifest", evaluate(), 2, r"module_state.pkl is empty",
         setup=without_checksums(truncate(f"{POLICY}/module_state.pkl", 0))),
    Case("eval-config-truncated-no-manifest", evaluate(), 2, r"class_and_ctor_args.pkl cannot be read",
         setup=without_checksums(truncate(f"{CKPT}/class_and_ctor_args.pkl"))),
    Case("eval-checksums-corrupt", evaluate(), 2, r"checksums.json is corrupt",
         setup=write(f"{CKPT}/checksums.json", b"[1, 2")),
    Case("eval-file-missing", evaluate(), 2, r"algorithm_state.pkl is missing",
         setup=lambda run: (run / CKPT / "algorithm_state.pkl").rename(run / "moved.pkl")),
    Case("eval-ckpt-of-other-task", evaluate(), 2, r"another task", setup=other_task_config),
    Case("eval-inner-lr-negative", evaluate("--inner-lr", "-0.1"), 2, r"--inner-lr = -0.1 must be a finite number >= 0"),
    Case("eval-inner-lr-diverges", evaluate("--inner-lr", "1e30", "--adapt-steps", "2"), 1,
         r"step k=\d.*not finite.*inner_lr = 1e\+30"),
    # report (the run's copy gets a sweep folder; bad trials are skipped by test_report_* below)
    Case("report-missing-dir", ("cli", ["report", "{new}"]), 2, r"is not a folder", watch="{new}"),
    Case("report-no-trials", ("cli", ["report", "{run}/tb"]), 2, r"no readable trial folders"),
    Case("report-only-broken-trial", ("cli", ["report", "{run}/sweep"]), 2, r"progress.csv.*cut",
         setup=lambda run: (sweep_dir(run), (run / "sweep/good/progress.csv").write_text("training_iteration,a\n1,"))),
    # dynamics
    Case("dyn-env-options-json", dynamics("--env-options", "{bad"), 2, r"--env-options is not valid JSON"),
    Case("dyn-env-options-list", dynamics("--env-options", "[1]"), 2, r"--env-options must be a JSON object"),
    Case("dyn-env-options-unknown", dynamics("--env-options", '{"bogus": 1}'), 2, r"--env-options.*bogus"),
    Case("dyn-env-options-reversed", dynamics("--env-options", '{"mass_range": [4, 0.5]}'), 2,
         r"mass_range = \[4, 0.5\] is a reversed"),
    Case("dyn-env-options-bad-value", dynamics("--env-options", '{"mass_range": [0, 1]}'), 2, r"mass_range"),
    Case("dyn-env", dynamics("--env", "no-such-env"), 2, r"--env 'no-such-env'"),
    Case("dyn-support-steps", dynamics("--support-steps", "40"), 2, r"--support-steps"),
    Case("dyn-inner-lr-0", dynamics("--inner-lr", "0"), 2, r"--inner-lr"),
    Case("dyn-out-folder", dynamics("--out", "{run}"), 2, r"--out .* is a folder"),
    Case("cli-unknown-command", ("cli", ["no-such-command"]), 2, r"unknown command 'no-such-command'"),
    # Python API
    Case("api-load-policy-missing", ("api", "load_policy_missing"), ValueError, r"does not exist", watch="{new}"),
    Case("api-load-policy-truncated", ("api", "load_policy"), ckpt_mod.CheckpointError, r"module_state.pkl",
         setup=without_checksums(truncate(f"{POLICY}/module_state.pkl"))),
    Case("api-load-policy-flipped", ("api", "load_policy"), ckpt_mod.CheckpointError,
         r"module_state.pkl is corrupt", setup=flip_bytes(f"{POLICY}/module_state.pkl")),
    Case("api-load-policy-other-task", ("api", "load_policy"), ckpt_mod.CheckpointError,
         r"observation space.*another task", setup=other_task_config),
    Case("api-adapt-diverges", ("api", "adapt_huge_lr"), FloatingPointError, r"parameter '.*' is not finite"),
    Case("api-evaluate-adapt-steps", ("api", "evaluate_bad_steps"), ValueError, r"adapt_steps = -1"),
    Case("api-verify-truncated", ("api", "verify"), ckpt_mod.CheckpointError, r"algorithm_state.pkl is corrupt",
         setup=truncate(f"{CKPT}/algorithm_state.pkl")),
    Case("api-from-checkpoint-truncated", ("api", "from_checkpoint"), ckpt_mod.CheckpointError,
         r"algorithm_state.pkl", setup=without_checksums(truncate(f"{CKPT}/algorithm_state.pkl"))),
    # config fields (the field table's checks, called through the public API)
    Case("cfg-clip-param-str", ("api", "meta:clip_param='0.3'"), ValueError, r"clip_param"),
    Case("cfg-first-order-str", ("api", "meta:first_order='no'"), ValueError, r"first_order"),
    Case("cfg-normalize-adv-str", ("api", "meta:normalize_advantages='false'"), ValueError, r"normalize_advantages"),
    Case("cfg-max-task-retries", ("api", "meta:max_task_retries=-1"), ValueError, r"max_task_retries"),
    Case("cfg-task-seed-str", ("api", "meta:task_seed='abc'"), ValueError, r"task_seed"),
    Case("cfg-init-log-std-nan", ("api", "meta:init_log_std=float('nan')"), ValueError, r"init_log_std"),
    Case("cfg-backbone-kwargs", ("api", "meta:backbone_kwargs={'bogus': 1}"), ValueError, r"bogus"),
    Case("cfg-task-option-unknown", ("api", "meta:task_options={'bogus': 1}"), ValueError, r"bogus"),
    Case("cfg-runners-minus-one", ("api", "runners:-1"), ValueError, r"num_env_runners"),
    Case("cfg-seed-minus-one", ("api", "seed:-1"), ValueError, r"seed"),
]


def _fill(s: str, paths: dict) -> str:
    for k, v in paths.items():
        s = s.replace("{" + k + "}", v)
    return s


def _snapshot(path: Path) -> dict | None:
    if not path.exists():
        return None
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def _call_api(name: str, run: Path, new: Path):
    from metarl.apps.evaluate import evaluate as evaluate_fn
    from rllib_ext.config import MAMLConfig
    from rllib_ext.policy import load_policy

    if name == "load_policy":
        return load_policy(run)
    if name == "load_policy_missing":
        return load_policy(new)
    if name == "adapt_huge_lr":
        import metarl.tasks

        policy = load_policy(run)
        env = metarl.tasks.make("navigation-2d", horizon=10)
        env.unwrapped.task = env.unwrapped.test_tasks(1)[0]
        return policy.adapt(policy.sample_episodes(env, 2, seed=0), lr=1e300)  # overflows float32
    if name == "evaluate_bad_steps":
        return evaluate_fn(run, adapt_steps=-1, episodes=2, num_tasks=1)
    if name == "verify":
        return ckpt_mod.verify_checksums(run / CKPT)
    if name == "from_checkpoint":
        from rllib_ext.algorithm import MAML

        return MAML.from_checkpoint(str((run / CKPT).resolve()))
    kind, _, arg = name.partition(":")
    cfg = MAMLConfig().meta(task="navigation-2d", backbone="gru", width=16)
    if kind == "meta":
        field, _, value = arg.partition("=")
        cfg.meta(**{field: eval(value)})  # noqa: S307 - the table's literal values
    elif kind == "runners":
        cfg.env_runners(num_env_runners=int(arg))
    elif kind == "seed":
        cfg.debugging(seed=int(arg))
    return cfg.validate()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)]
                                               if c.xfail else []) for c in CASES])
def test_bad_input(case: Case, base_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    if case.setup is not None:
        case.setup(run)
    paths = {"run": str(run), "new": str(tmp_path / "new"), "tmp": str(tmp_path)}
    watched = Path(_fill(case.watch, paths))
    before = _snapshot(watched)
    kind, what = case.call
    if kind == "cli":
        argv = [_fill(a, paths) for a in what]
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err
        assert code == case.expect, err
        lines = [ln for ln in err.strip().splitlines() if ln.startswith(("metarl", "usage", "error"))]
        assert "Traceback" not in err and lines, err
        assert re.search(case.match, err), err
    else:
        with pytest.raises(case.expect, match=case.match):
            _call_api(what, run, tmp_path / "new")
    assert _snapshot(watched) == before, f"{watched} changed"


def test_table_is_large_and_covers_every_surface():
    kinds = {c.id.split("-", 1)[0] for c in CASES}
    assert len(CASES) >= 60 and {"train", "out", "resume", "eval", "report", "dyn", "api", "cfg"} <= kinds
    assert len({c.id for c in CASES}) == len(CASES)


# --- report: broken trials are skipped with a warning, the rest reported ---------------------------------------
BROKEN_TRIALS = {
    # cut inside the last number: every row has its fields, only the missing line end shows the cut
    "cut-mid-row": ("progress.csv", b"training_iteration,adapt/return_step_0,adapt/return_step_1\n1,-5.0,-4.0\n2,-4.5,-3"),
    "binary-csv": ("progress.csv", b"\x00\x01\x02\xff\xfe binary"),
    "short-row": ("progress.csv", b"training_iteration,adapt/return_step_0,adapt/return_step_1\n1,-5.0\n"),
    "params-corrupt": ("params.json", b"{\"task\": "),
    "params-not-object": ("params.json", b"[1, 2]"),
    "result-json-corrupt": ("result.json", b"{\"training_iteration\": 1}\n{\"adapt\": \n"),
}


@pytest.mark.parametrize("broken", list(BROKEN_TRIALS))
def test_report_skips_a_broken_trial_and_reports_the_rest(tmp_path, caplog, broken):
    from metarl.apps.report import write_report

    sweep_dir(tmp_path)
    exp = tmp_path / "sweep"
    bad = exp / "bad"
    bad.mkdir()
    (bad / "params.json").write_text(json.dumps({"task": "navigation-2d", "backbone": "mlp", "inner_steps": 1}))
    name, data = BROKEN_TRIALS[broken]
    if name == "result.json":
        (bad / "progress.csv").write_bytes(b"")
    (bad / name).write_bytes(data)
    with caplog.at_level("WARNING"):
        report = write_report(exp).read_text()
    assert re.search(rf"trial bad skipped: .*{re.escape(str(bad / name))}", caplog.text), caplog.text
    assert "| navigation-2d | gru | maml | 1 |" in report  # the good trial is reported
    assert "| navigation-2d | mlp |" not in report and "## Skipped trials" in report and name in report


def test_report_warns_about_a_non_numeric_cell(tmp_path, caplog):
    from metarl.apps.report import load_trials

    sweep_dir(tmp_path)
    csv_path = tmp_path / "sweep" / "good" / "progress.csv"
    csv_path.write_text("training_iteration,adapt/return_step_0,hostname\n1,abc,node-1\n")
    with caplog.at_level("WARNING"):
        trials = load_trials(tmp_path / "sweep")
    assert math.isnan(trials[0].rows[0]["adapt/return_step_0"])
    assert re.search(r"progress.csv row 2 column adapt/return_step_0: 'abc' is not a number", caplog.text)
    assert "hostname" not in caplog.text  # Tune's text columns are not warned about


# --- CLI: one line, exit 2; --debug shows the traceback -------------------------------------------------------------
def test_debug_flag_shows_the_traceback(tmp_path):
    argv = [sys.executable, "-m", "metarl", "evaluate", "--checkpoint", str(tmp_path / "none")]
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    loud = subprocess.run([*argv, "--debug"], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and "does not exist" in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "does not exist" in loud.stderr


def test_stale_lock_of_a_dead_process_is_explained_and_replaced(tmp_path, capsys):
    from metarl.apps.run_folder import RunLock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not RunLock(tmp_path).in_use()  # no lock
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": 0}))
    assert not RunLock(tmp_path).in_use()  # stale
    lock = RunLock(tmp_path).acquire()
    out = capsys.readouterr().out
    assert "stale lock" in out and f"process {dead.pid}, which is no longer running" in out
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(ValueError, match=rf"in use by process {os.getpid()}"):
        RunLock(tmp_path).acquire()  # a live holder refuses a second writer
    assert RunLock(tmp_path).in_use()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_report_reads_a_restored_trial_once_from_result_json(tmp_path):
    """A trial restored from its checkpoint at iteration 1 reports iterations 2 and 3 again, with a column the
    first run lacked: Tune's progress.csv then has rows longer than its header (a real resumed sweep did); the
    report reads result.json and keeps the restored run's rows."""
    from metarl.apps.report import load_trials

    sweep_dir(tmp_path)
    trial = tmp_path / "sweep" / "good"

    def result(it, ret, **extra):
        return json.dumps({"training_iteration": it, "adapt": {"return_step_0": ret, "return_step_1": ret + 1},
                           **extra})

    first = [result(1, -5.0), result(2, -4.0), result(3, -3.0)]
    restored = [result(2, -2.5, eval={"fresh": 1.0}), result(3, -1.5, eval={"fresh": 0.0}), result(4, -0.5)]
    (trial / "result.json").write_text("\n".join(first + restored) + "\n")
    (trial / "progress.csv").write_text("training_iteration,adapt/return_step_0,adapt/return_step_1\n"
                                        "1,-5.0,-4.0\n2,-4.0,-3.0\n3,-3.0,-2.0\n2,-2.5,-1.5,1.0\n")
    rows = load_trials(tmp_path / "sweep")[0].rows
    assert [r["training_iteration"] for r in rows] == [1, 2, 3, 4]
    assert [r["adapt/return_step_0"] for r in rows] == [-5.0, -2.5, -1.5, -0.5]


def test_report_names_the_trials_short_of_their_budget(tmp_path):
    """A partial sweep (one trial at its env-step budget, one still short) gets a section naming the short one."""
    from metarl.apps.report import write_report

    exp = tmp_path / "sweep"
    for name, steps, it in (("done", 500, 5), ("short", 300, 3)):
        d = exp / name
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"task": "navigation-2d", "backbone": name, "inner_steps": 1,
                                                   "budget_env_steps": 500, "budget_iterations": None}))
        rows = [{"training_iteration": i, "env_steps": {"lifetime": steps * i / it},
                 "adapt": {"return_step_0": -5.0, "return_step_1": -4.0}} for i in range(1, it + 1)]
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_report(exp).read_text()
    section = report.split("## Trials short of their budget")[1].split("\n## ")[0]
    assert "1 of 2 trials" in section and "- short: 300 of 500 env steps" in section and "- done" not in section
    (exp / "short" / "result.json").write_text(json.dumps({"training_iteration": 5, "env_steps": {"lifetime": 500},
                                                           "adapt": {"return_step_0": -5.0}}) + "\n")
    assert "## Trials short of their budget" not in write_report(exp).read_text()
