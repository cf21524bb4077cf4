"""Cluster: `ray job submit` to a real two-node Ray cluster on this machine, and the docker/ manifests.

The job test runs on a cluster of its own (fixture ``ray_cluster``): a head that offers NO CPU (``ray start --head
--num-cpus=0``, as the head of docker/rayjob.yaml) and a worker node with 2 CPUs (``WORKER_NODE``: `ray start
--address` refuses in loopback mode), each in its own process group and temp dir, on free loopback ports
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), with token auth and the token file in a temporary folder
(RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH). A job's driver runs on the head, so every EnvRunner (1 CPU) must land
on the worker node: the test reads the runners' node ids back from Ray's state API. The fixture stops exactly the
two nodes it started (SIGTERM, then SIGKILL, to their process groups; never `ray stop`, which would end every Ray
process of the user). Marked `cluster`: the Makefile runs them in their own pytest process
(tests/run_cluster_tests.py). The manifest tests (parse, entry points, versions, resource math) are plain tests.
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
from conftest import assert_same_run

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


# --- resource math: the worker nodes of the manifests vs what a sweep trial asks Ray for ----------------------------
#: (vCPUs, GPUs) of the AWS instance types docker/cluster.yaml may name (AWS instance-type tables)
AWS_INSTANCES = {"m5.4xlarge": (16, 0), "m5.8xlarge": (32, 0), "g5.4xlarge": (16, 1), "g5.8xlarge": (32, 1),
                 "g5.12xlarge": (48, 4), "g5.16xlarge": (64, 1), "g6.8xlarge": (32, 1)}


def _sweep_args(text: str):
    """The `python -m metarl sweep ...` of a manifest, parsed by the real `metarl sweep` parser."""
    import argparse

    from metarl.apps.sweep import add_arguments

    sweeps = [argv for argv in _entrypoint_commands(text) if argv[:2] == ["metarl", "sweep"] and "..." not in argv]
    assert len(sweeps) == 1, sweeps
    return add_arguments(argparse.ArgumentParser()).parse_known_args(sweeps[0][2:])[0]


def _trial_request(args, monkeypatch) -> tuple[float, float]:
    """(CPUs, GPUs) of one trial: the placement group Tune asks Ray for, from ``MAML.default_resource_request``."""
    import torch

    from rllib_ext.algorithm import MAML
    from tune_configs.baselines import SIZES, base_config

    size = SIZES[args.size or ("smoke" if args.smoke else "full")]
    # the check that a local Learner's GPU exists runs where the trial runs (a GPU node), not on this machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    bundles = MAML.default_resource_request(base_config(size, gpus_per_trial=args.gpus_per_trial)).bundles
    return sum(b.get("CPU", 0) for b in bundles), sum(b.get("GPU", 0) for b in bundles)


def _trials_per_node(node_cpus: float, node_gpus: float, trial: tuple[float, float]) -> tuple[int, int]:
    """(trials the node's CPUs fit, trials its GPUs fit); 1e-9: 3 x 0.33 GPUs fit in 1."""
    cpu, gpu = trial
    by_cpu = int(node_cpus // cpu)
    by_gpu = int((node_gpus + 1e-9) // gpu) if gpu else by_cpu
    return by_cpu, by_gpu


def _stated_trials_per_gpu(text: str) -> tuple[int, float]:
    m = re.search(r"(\d+) trials per GPU at `?--gpus-per-trial (\d+(?:\.\d+)?)", text)
    assert m, "the text must state 'N trials per GPU at --gpus-per-trial X'"
    return int(m.group(1)), float(m.group(2))


def _check_worker(name: str, cpus: float, gpus: float, args, trial, text: str) -> None:
    by_cpu, by_gpu = _trials_per_node(cpus, gpus, trial)
    assert gpus >= 1 and by_gpu >= 1, f"{name}: a trial ({trial[0]:g} CPUs, {trial[1]:g} GPUs) does not fit a worker"
    # the GPU share is what the trial pays for: every share a node offers must have the CPUs to run its trial
    assert by_cpu >= by_gpu, (f"{name}: {cpus:g} CPUs run {by_cpu} trial(s) of {trial[0]:g} CPUs, but {gpus:g} GPU(s) at "
                              f"--gpus-per-trial {args.gpus_per_trial:g} are sold as {by_gpu}")
    stated, stated_gpt = _stated_trials_per_gpu(text)
    assert (stated, stated_gpt) == (by_gpu / gpus, args.gpus_per_trial), (name, stated, stated_gpt, by_gpu / gpus)


def test_manifest_workers_fit_the_trials_their_sweep_asks_for(monkeypatch):
    # docker/cluster.yaml: the GPU worker type; its Ray resources are those of its instance type
    text = (DOCKER / "cluster.yaml").read_text()
    cluster = yaml.safe_load(text)
    args = _sweep_args(text)
    trial = _trial_request(args, monkeypatch)
    for name, t in cluster["available_node_types"].items():
        cpus, gpus = AWS_INSTANCES[t["node_config"]["InstanceType"]]
        assert t["resources"] == {"CPU": cpus, **({"GPU": gpus} if gpus else {})}, (name, t["resources"])
    worker = cluster["available_node_types"]["gpu_worker"]["resources"]
    _check_worker("cluster.yaml gpu_worker", worker["CPU"], worker["GPU"], args, trial, text)

    # docker/rayjob.yaml: Ray counts a pod's CPU and nvidia.com/gpu limits; the head offers no CPU to trials
    text = (DOCKER / "rayjob.yaml").read_text()
    spec = yaml.safe_load(text)["spec"]
    args = _sweep_args(spec["entrypoint"])
    trial = _trial_request(args, monkeypatch)
    assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert container["resources"]["requests"] == limits, group["groupName"]
        _check_worker(f"rayjob.yaml {group['groupName']}", float(limits["cpu"]), float(limits["nvidia.com/gpu"]),
                      args, trial, text)

    # the README states the same packing
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Run on a cluster"):]
    section = section[:section.index("\n## ", 1)]
    assert _stated_trials_per_gpu(section) == _stated_trials_per_gpu((DOCKER / "cluster.yaml").read_text())


# --- ray job submit against a real two-node cluster ---------------------------------------------------------------
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
    """SIGTERM, then SIGKILL, to the process group of a node we started (and only to it)."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
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


HEAD_CPUS = 0  # the head offers no CPU: EnvRunners (1 CPU each) can only run on the worker node
WORKER_CPUS = 2


def _node_ports() -> list[str]:
    """The per-node ports of `ray start` (head and worker share this machine: none may collide)."""
    names = ["node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port"]
    return [f"--{n}={p}" for n, p in zip(names, _free_ports(len(names)))]


#: A worker node joining the head at argv[1] with argv[2] CPUs and temp dir argv[3], until SIGTERM. `ray start
#: --address` refuses to start a worker node under RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the loopback-only mode of
#: every test here), so this starts it the way Ray's own ray.cluster_utils.Cluster.add_node does.
WORKER_NODE = """
import signal, sys
from ray._private.node import Node
from ray._private.parameter import RayParams

params = RayParams(gcs_address=sys.argv[1], num_cpus=int(sys.argv[2]), num_gpus=0, temp_dir=sys.argv[3],
                   node_manager_port=0, min_worker_port=0, max_worker_port=0, include_log_monitor=False,
                   object_store_memory=150 * 1024 * 1024)
params.dashboard_agent_listen_port = None  # a free port, not the default one (other Ray sessions on this machine)
node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit runs Node's shutdown hook: raylet and agents stop
signal.pause()
"""


def _ray_json(ray: str, env: dict, *args: str) -> list[dict]:
    r = subprocess.run([ray, *args, "--format", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return [] if r.stdout.startswith("No resource") else json.loads(r.stdout)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head (no CPU) and a worker node (2 CPUs) started with `ray start --block`; yields what the tests need."""
    base = tmp_path_factory.mktemp("cluster")
    bin_dir = Path(sys.executable).parent
    ray = str(bin_dir / "ray")
    token = base / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    gcs, dash, client = _free_ports(3)
    temp_dirs = [tempfile.mkdtemp(prefix="rt", dir="/tmp") for _ in range(2)]  # short: unix sockets < 108 chars
    logs, procs = [], []

    def start(name: str, *args: str) -> subprocess.Popen:
        logs.append(open(base / f"{name}.log", "w"))
        procs.append(subprocess.Popen([ray, "start", "--block", *args], env=env, cwd=base, stdout=logs[-1],
                                      stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]

    def start_worker(gcs_address: str, temp_dir: str) -> subprocess.Popen:
        logs.append(open(base / "worker.log", "w"))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER_NODE, gcs_address, str(WORKER_CPUS), temp_dir],
                                      env=env, cwd=base, stdout=logs[-1], stderr=subprocess.STDOUT,
                                      start_new_session=True))
        return procs[-1]

    address = f"http://127.0.0.1:{dash}"
    try:
        head = start("head", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                     f"--ray-client-server-port={client}", *_node_ports(), f"--num-cpus={HEAD_CPUS}",
                     "--disable-usage-stats", f"--temp-dir={temp_dirs[0]}")
        deadline = time.monotonic() + 120
        while True:  # the head is up when the jobs API answers (with our token)
            assert head.poll() is None, (base / "head.log").read_text()[-3000:]
            r = subprocess.run([ray, "job", "list", "--address", address], env=env, capture_output=True, text=True)
            if r.returncode == 0:
                break
            assert time.monotonic() < deadline, r.stderr[-2000:]
            time.sleep(2)
        worker = start_worker(f"127.0.0.1:{gcs}", temp_dirs[1])
        deadline = time.monotonic() + 120
        while True:
            assert worker.poll() is None, (base / "worker.log").read_text()[-3000:]
            nodes = [n for n in _ray_json(ray, env, "list", "nodes", "--address", address) if n["state"] == "ALIVE"]
            if len(nodes) == 2:
                break
            assert time.monotonic() < deadline, nodes
            time.sleep(2)
        ids = {n["is_head_node"]: n["node_id"] for n in nodes}
        yield dict(ray=ray, env=env, address=address, head_id=ids[True], worker_id=ids[False], base=base)
    finally:
        for proc in reversed(procs):  # worker first, then head
            _stop_group(proc)
        for f in logs:
            f.close()
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
    assert all(p.poll() is not None for p in procs)


def _submit(c: dict, entry: str) -> str:
    r = subprocess.run([c["ray"], "job", "submit", "--address", c["address"], "--working-dir", str(REPO), "--",
                        "sh", "-c", entry], env=c["env"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-3000:]}"
    assert "succeeded" in r.stdout + r.stderr
    return r.stdout


TINY = ("--task navigation-2d --backbone gru --seed 3 --meta-batch-size 2 --episodes-per-task 2 "
        "--num-envs-per-runner 2 --width 8 --outer-steps 1 --horizon 20 --checkpoint-every 1")


@pytest.mark.cluster
@pytest.mark.timeout(420)
def test_ray_job_submit_runs_maml_on_the_worker_node_and_resumes_exactly(ray_cluster, tmp_path):
    """A 3-iteration job with 2 remote EnvRunners (they must run on the worker node: the head offers no CPU); then
    the same run as if its job had been lost after iteration 3's record but before its checkpoint: a second job
    resumes it from checkpoint 2 and gives the records of the uninterrupted run. Both nodes see the run folder."""
    c = ray_cluster
    full, part = tmp_path / "full", tmp_path / "part"
    train = f"python -m metarl.train {TINY} --num-env-runners 2 --iterations 3"
    before = {a["actor_id"] for a in _runner_actors(c)}
    # the entrypoint first checks that .gitignore'd folders were not uploaded and that `python` is the venv's
    _submit(c, f"test ! -e .venv && test ! -e runs && python -c 'import ray, metarl' && {train} --out {full}")
    want = json.loads((full / "results.json").read_text())
    records = want["records"]
    assert [rec["iteration"] for rec in records] == [1, 2, 3]
    assert want["provenance"]["seeds"]["seed"] == 3
    steps = [rec["env_steps/this_iter"] for rec in records]
    assert records[-1]["env_steps/lifetime"] == sum(steps) > 0

    shutil.copytree(full, part)  # the job lost between iteration 3's record and its checkpoint
    shutil.rmtree(part / "checkpoints" / "checkpoint_000003")
    (part / "checkpoints" / "latest").write_text("checkpoint_000002\n")
    _submit(c, f"{train} --resume --out {part}")
    got = json.loads((part / "results.json").read_text())
    assert [(r["from_iteration"], r["dropped_records"]) for r in got["resumes"]] == [(2, [3])]
    assert_same_run(got["records"], records)
    assert (part / "checkpoints" / "latest").read_text().strip() == "checkpoint_000003"

    # where the runners ran: 2 jobs x 2 EnvRunners, every one on the worker node
    runners = [a for a in _runner_actors(c) if a["actor_id"] not in before]
    assert len(runners) == 2 * 2, runners
    nodes = {a["node_id"] for a in runners}
    assert nodes == {c["worker_id"]}, f"EnvRunners ran on {nodes}; head {c['head_id']}, worker {c['worker_id']}"

    # token auth is on: the same request without the token (and no ~/.ray/auth_token) is refused
    no_token = {k: v for k, v in c["env"].items() if k != "RAY_AUTH_TOKEN_PATH"}
    no_token["HOME"] = str(tmp_path / "home")
    r = subprocess.run([c["ray"], "job", "list", "--address", c["address"]], env=no_token, capture_output=True,
                       text=True)
    assert r.returncode != 0, r.stdout[-2000:]


def _runner_actors(c: dict) -> list[dict]:
    """Every EnvRunner actor the cluster has seen (dead ones too), from Ray's state API."""
    return _ray_json(c["ray"], c["env"], "list", "actors", "--address", c["address"], "--detail", "--limit", "1000",
                     "--filter", "class_name=MAMLEnvRunner")
