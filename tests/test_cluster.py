"""Cluster: `ray job submit` against a real local head, and the docker/ manifests (which cannot be built here).

The job test starts its own head (`ray start --head --block` in a new process group) on free loopback ports
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) with token auth and a token file in a temporary folder
(RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH), submits a tiny MAML run with `--working-dir <repo>`, reads the run's
results.json back and stops exactly the head it started (SIGTERM, then SIGKILL, to its process group; never
`ray stop`, which would end every Ray process of the user). Marked `cluster`: the Makefile runs it in its own
pytest process (tests/run_cluster_tests.py). The manifest tests are plain tests.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def _pin(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


# --- docker/ manifests ----------------------------------------------------------------------------------------
def _entrypoint_commands(text: str) -> list[list[str]]:
    """Every `python -m <module> ...` in a text, as argv lists (module first)."""
    return [m.group(1).split() for m in re.finditer(r"python -m ([\w.]+(?: [\w.,=/:-]+)*)", text)]


def test_manifests_parse_and_name_existing_entry_points():
    from metarl.apps.cli import COMMANDS

    files = sorted(DOCKER.glob("*.yaml"))
    assert {f.name for f in files} >= {"cluster.yaml", "rayjob.yaml"}
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), f
        cmds = _entrypoint_commands(f.read_text())
        assert cmds, f"{f.name} names no `python -m` entry point"
        for argv in cmds:
            module = argv[0]
            if module == "metarl":  # `python -m metarl <command>`: the command must exist
                assert argv[1] in COMMANDS, (f.name, argv)
            else:
                assert module == "metarl.train", (f.name, argv)  # the job entry shim; other commands via `-m metarl`
            assert (REPO / (module.replace(".", "/") + ".py")).exists() or (REPO / module / "__main__.py").exists()


def test_rayjob_has_gpu_worker_group_running_a_sweep():
    job = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    assert "metarl sweep" in job["spec"]["entrypoint"]
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu = [g for g in workers
           if any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {})
                  for c in g["template"]["spec"]["containers"])]
    assert gpu, "no worker group requests nvidia.com/gpu"
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == _pin("ray")


def test_images_use_the_pinned_versions():
    ray_version, torch_version = _pin("ray"), _pin("torch")
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    assert "constraints.txt" in dockerfile and "TORCH_SPEC" in dockerfile
    assert f"torch=={torch_version}" in dockerfile  # the default TORCH_SPEC is the pinned CPU build
    for f in DOCKER.glob("*.yaml"):
        for tag in re.findall(r"rayproject/ray:([\w.\-]+)", f.read_text()):
            assert tag.split("-")[0] == ray_version, (f.name, tag)
        for tag in re.findall(r"metarl:([\w.\-]+)", f.read_text()):
            assert tag.startswith(f"ray{ray_version}"), (f.name, tag)


# --- ray job submit against a real head -------------------------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group of the head we started (and only to it)."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader: a zombie still counts as a member of its group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


@pytest.mark.cluster
@pytest.mark.timeout(420)
def test_ray_job_submit_runs_maml_and_returns_results(tmp_path):
    bin_dir = Path(sys.executable).parent
    ray = str(bin_dir / "ray")
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    gcs, dash, client, agent, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = _free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 chars
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={gcs}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={rt_env}", f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
         "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    out = tmp_path / "run"
    try:
        deadline = time.monotonic() + 120
        while True:  # the head is up when the jobs API answers (with our token)
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            r = subprocess.run([ray, "job", "list", "--address", address], env=env, capture_output=True, text=True)
            if r.returncode == 0:
                break
            assert time.monotonic() < deadline, r.stderr[-2000:]
            time.sleep(2)
        # the entrypoint first checks that .gitignore'd folders were not uploaded and that `python` is the venv's
        entry = (
            "test ! -e .venv && test ! -e runs && python -c 'import ray, metarl' && "
            "python -m metarl.train --task navigation-2d --backbone gru --iterations 2 --seed 3 "
            "--meta-batch-size 2 --episodes-per-task 2 --num-env-runners 0 --num-envs-per-runner 2 --width 8 "
            f"--outer-steps 1 --horizon 20 --checkpoint-every 1 --out {out}"
        )
        r = subprocess.run([ray, "job", "submit", "--address", address, "--working-dir", str(REPO), "--", "sh", "-c", entry],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-3000:]}"
        assert "succeeded" in r.stdout + r.stderr
        results = json.loads((out / "results.json").read_text())
        records = results["records"]
        assert [rec["iteration"] for rec in records] == [1, 2]
        assert results["provenance"]["seeds"]["seed"] == 3
        steps = [rec["env_steps/this_iter"] for rec in records]
        assert records[-1]["env_steps/lifetime"] == sum(steps) > 0
        assert (out / "checkpoints" / "latest").exists()
        # token auth is on: the same request without the token (and no ~/.ray/auth_token) is refused
        no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
        no_token["HOME"] = str(tmp_path / "home")
        r = subprocess.run([ray, "job", "list", "--address", address], env=no_token, capture_output=True, text=True)
        assert r.returncode != 0, r.stdout[-2000:]
    finally:
        _stop_group(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert head.poll() is not None
