"""Faults of the driver with remote EnvRunners: SIGKILL mid-iteration and mid-checkpoint, then ``--resume``, equals
the uninterrupted run (returns, counters, log-prob mismatch ≈ 0); SIGTERM leaves no process of the run behind; a
corrupted checkpoint file gives an error naming it.

Each run is a ``metarl train`` subprocess with its own embedded Ray (2 remote EnvRunners, tiny navigation-2d), in
its own session; whatever of its process tree outlives a SIGKILL is ended by pid at the end of the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_run as same_run

TINY = ["--task", "navigation-2d", "--backbone", "gru", "--width", "16", "--meta-batch-size", "2",
        "--episodes-per-task", "2", "--num-envs-per-runner", "2", "--outer-steps", "1", "--horizon", "10",
        "--checkpoint-every", "1", "--num-env-runners", "2", "--num-cpus", "3"]
ROOT = Path(__file__).resolve().parents[1]


def _children() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def descendants(pid: int) -> set[int]:
    parents = _children()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for c, pp in parents.items():
            if pp == p and c not in found:
                found.add(c)
                todo.append(c)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` that still run (zombies count as gone)."""
    live = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.add(p)
    return live


class Driver:
    """A ``metarl train`` subprocess; ``end()`` kills what is left of its process tree (by pid)."""

    def __init__(self, out: Path, iterations: int, *extra: str, env: dict | None = None):
        self.tree: set[int] = set()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metarl", "train", *TINY, "--out", str(out), "--iterations", str(iterations),
             *extra],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )

    def wait_for(self, predicate, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, self.proc.stdout.read()
            assert time.monotonic() < deadline, "timed out"
            self.tree |= descendants(self.proc.pid)
            time.sleep(0.05)
        self.tree |= descendants(self.proc.pid)

    def finish(self, timeout: float = 240.0) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for p in alive(self.tree):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def records(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["records"]


def latest(out: Path) -> str | None:
    p = out / "checkpoints" / "latest"
    return p.read_text().strip() if p.is_file() else None


def run_to_end(out: Path, iterations: int, *extra: str, env: dict | None = None) -> tuple[int, str]:
    d = Driver(out, iterations, *extra, env=env)
    try:
        return d.finish()
    finally:
        d.end()


def assert_same_run(got: list[dict], want: list[dict]) -> None:
    """``conftest.assert_same_run``, and the runners sampled with the Learner's weights at every iteration."""
    same_run(got, want)
    for g in got:
        assert g["meta/logp_mismatch"] < 1e-4, (g["iteration"], g["meta/logp_mismatch"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ref") / "run"
    code, log = run_to_end(out, 3)
    assert code == 0, log
    return records(out)


@pytest.mark.timeout(300)
def test_sigkill_inside_checkpoint_save_then_resume_equals_uninterrupted(tmp_path, reference):
    out = tmp_path / "run"
    code, log = run_to_end(out, 3, env={"METARL_FAULT_IN_SAVE": "kill@2"})
    assert code == -signal.SIGKILL, log
    assert latest(out) == "checkpoint_000001"  # the save of iteration 2 never became visible
    assert list((out / "checkpoints").glob(".tmp-checkpoint_000002-*")), "the partial save is left behind"
    assert (out / ".lock").exists()  # the killed driver could not release its lock: a stale lock
    code, log = run_to_end(out, 3, "--resume")
    assert code == 0, log
    assert "stale lock" in log and not (out / ".lock").exists()
    assert not list((out / "checkpoints").glob(".tmp-*")) and latest(out) == "checkpoint_000003"
    assert_same_run(records(out), reference)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_mid_iteration_then_resume_equals_uninterrupted(tmp_path, reference):
    out = tmp_path / "run"
    d = Driver(out, 3)
    try:
        d.wait_for(lambda: latest(out) == "checkpoint_000001")
        d.proc.send_signal(signal.SIGKILL)  # iteration 2 is being sampled/updated now
        d.proc.wait()
    finally:
        d.end()
    assert latest(out) == "checkpoint_000001"
    code, log = run_to_end(out, 3, "--resume")
    assert code == 0, log
    assert_same_run(records(out), reference)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM),
                                       pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_sigterm_stops_the_run_and_leaves_no_process_behind(tmp_path, sig, code):
    """SIGTERM (and Ctrl-C's SIGINT): the Algorithm's actors and the embedded Ray are stopped before the driver
    exits; no process of the run's tree outlives it."""
    out = tmp_path / "run"
    d = Driver(out, 50)
    try:
        d.wait_for(lambda: latest(out) == "checkpoint_000001")
        tree = set(d.tree)
        assert len(tree) >= 3  # Ray's processes and the 2 EnvRunners
        d.proc.send_signal(sig)
        got, log = d.finish(timeout=120)
        deadline = time.monotonic() + 60
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in alive(tree)}
    finally:
        d.end()
    assert got == code, log
    assert left == {}, left
    assert not (out / ".lock").exists() and latest(out) is not None  # lock released, last checkpoint kept


@pytest.mark.timeout(300)
def test_corrupted_checkpoint_file_is_named_at_resume(tmp_path, reference):
    out = tmp_path / "run"
    code, log = run_to_end(out, 1)
    assert code == 0, log
    bad = out / "checkpoints" / "checkpoint_000001" / "algorithm_state.pkl"
    bad.write_bytes(bad.read_bytes()[:-7])
    code, log = run_to_end(out, 2, "--resume")
    assert code == 2 and f"checkpoint file {bad} is corrupt" in log and "Traceback" not in log, log
    assert [r["iteration"] for r in records(out)] == [1]
