#!/usr/bin/env bash
# The meta-update on a GPU, in one run of under 5 minutes; prints a PASS/FAIL summary (exit status 1 on a FAIL).
#
#   bash benchmarks/gpu_check.sh                 # on a machine with a CUDA build of torch and one GPU
#   DEVICE=cpu bash benchmarks/gpu_check.sh      # dry run of the same checks on the CPU (no GPU needed)
#
# 1. second order on the device, every backbone (float64): the batched meta-gradient (metarl.meta_batch) and the
#    per-task loop, both on the device, equal the per-task loop on the CPU (rtol 1e-8, atol 1e-11). cuDNN's RNN
#    kernels cannot double-backward: lstm/gru take the plain-op cell path off the CPU (metarl/models/rnn.py).
# 2. 1 GPU Learner = 1 CPU Learner: MAML on navigation-2d (gru, float64, 4 tasks, 2 outer steps), the local
#    Learner with num_gpus_per_learner=1 vs 0, same seeded tasks and episodes: θ after one iteration agrees.
#    (2 GPU Learners = 1 needs 2 GPUs: RLlib's NCCL group does not put two ranks on one GPU.)
# 3. time of one meta-gradient (second order, batched, float32), device vs CPU with one torch thread, per
#    backbone at the iteration benchmark's size: 4 tasks x 10 episodes x 100 steps, width 64, HalfCheetah shapes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
DEVICE=$DEVICE timeout 290 "$PY" - <<'EOF'
import os, time
import torch
from metarl import models
from metarl.meta_batch import meta_gradient_batched
from metarl.policy_net import PolicyNet, functional_log_prob
from metarl.rl import PreparedTask, advantages, meta_gradient_loop

dev = torch.device(os.environ["DEVICE"])
if dev.type == "cuda":
    assert torch.cuda.is_available(), "DEVICE=cuda but torch sees no CUDA device (a CPU build of torch?)"
    print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
results = []


def check(name, ok, detail=""):
    results.append((name, bool(ok), detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)


def tasks_for(n, E, T, obs, act, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        bs = []
        for _ in range(2):  # one support batch, one query batch
            b = dict(obs=torch.randn(E, T, obs, generator=g, dtype=dtype), actions=torch.randn(E, T, act, generator=g,
                     dtype=dtype), rewards=torch.randn(E, T, generator=g, dtype=dtype), mask=torch.ones(E, T, dtype=dtype),
                     logp=torch.randn(E, T, generator=g, dtype=dtype) * 0.1 - 3)
            b["advantages"] = advantages(b, gamma=0.99)
            bs.append({k: v.to(device) for k, v in b.items()})
        out.append(PreparedTask((bs[0],), bs[1]))
    return out


def grads(fn, net, tasks):
    params = dict(net.named_parameters())
    for p in params.values():
        p.grad = None
    fn(lambda p, o, a: functional_log_prob(net, p, o, a)[0], params, tasks, num_tasks_total=len(tasks), inner_lr=0.1,
       gamma=0.99, clip=0.3, first_order=False)
    return {k: p.grad.detach().cpu() for k, p in params.items()}


# 1. second order on the device == the loop on the CPU (float64)
for bb in models.available():
    torch.manual_seed(0)
    net = PolicyNet(models.build(bb, input_dim=17, output_dim=6, width=16), discrete=False).double()
    ref = grads(meta_gradient_loop, net, tasks_for(3, 4, 30, 17, 6, torch.float64, "cpu"))
    net.to(dev)
    dev_tasks = tasks_for(3, 4, 30, 17, 6, torch.float64, dev)
    try:
        errs = []
        for fn in (meta_gradient_batched, meta_gradient_loop):
            got = grads(fn, net, dev_tasks)
            errs.append(max(float(((got[k] - ref[k]).abs() / (1e-11 + 1e-8 * ref[k].abs())).max()) for k in ref))
        check(f"second order on {dev.type}, {bb}", max(errs) <= 1.0,
              f"max |err|/tol: batched {errs[0]:.2g}, loop {errs[1]:.2g}")
    except Exception as e:  # noqa: BLE001 - a failing backbone must not hide the others
        check(f"second order on {dev.type}, {bb}", False, f"{type(e).__name__}: {e}")

# 2. 1 device Learner == 1 CPU Learner on the same tasks (float64)
import numpy as np  # noqa: E402
import ray  # noqa: E402

from rllib_ext.algorithm import MAMLConfig  # noqa: E402

ray.init(address="local", num_cpus=2, num_gpus=1 if dev.type == "cuda" else 0, include_dashboard=False,
         log_to_driver=False)
weights = {}
for gpus in ([1, 0] if dev.type == "cuda" else [0, 0]):
    cfg = (MAMLConfig().meta(task="navigation-2d", backbone="gru", width=16, meta_batch_size=4, episodes_per_task=2,
                             outer_steps=2, dtype="float64")
           .env_runners(num_env_runners=0, num_envs_per_env_runner=2).learners(num_learners=0, num_gpus_per_learner=gpus)
           .debugging(seed=0))
    algo = cfg.build_algo()
    try:
        learner_device = next(algo.learner_group._learner.policy.parameters()).device
        algo.train()
        w = algo.learner_group.get_weights()["default_policy"]
        weights[(gpus, len(weights))] = ({k: np.asarray(v) for k, v in w.items()}, learner_device)
    finally:
        algo.stop()
ray.shutdown()
(w_dev, d_dev), (w_cpu, d_cpu) = weights.values()
err = max(float(np.max(np.abs(w_dev[k] - w_cpu[k]) / (1e-11 + 1e-8 * np.abs(w_cpu[k])))) for k in w_cpu)
check(f"1 Learner on {d_dev} == 1 Learner on {d_cpu}", err <= 1.0 and d_dev.type == dev.type,
      f"max |err|/tol {err:.2g} after one iteration")

# 3. time of one batched second-order meta-gradient: device vs CPU (one thread), float32
torch.set_num_threads(1)
print(f"\n{'backbone':<12}{'cpu s':>8}{dev.type + ' s':>9}{'cpu/' + dev.type:>10}")
for bb in models.available():
    torch.manual_seed(0)
    times = {}
    for d in dict.fromkeys(("cpu", dev.type)):  # the CPU once on a dry run
        net = PolicyNet(models.build(bb, input_dim=17, output_dim=6, width=64), discrete=False).to(d)
        tasks = tasks_for(4, 10, 100, 17, 6, torch.float32, d)
        grads(meta_gradient_batched, net, tasks)  # warm-up
        if d == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(2):
            grads(meta_gradient_batched, net, tasks)
        if d == "cuda":
            torch.cuda.synchronize()
        times[d] = (time.perf_counter() - t0) / 2
    print(f"{bb:<12}{times['cpu']:>8.3f}{times[dev.type]:>9.3f}{times['cpu'] / times[dev.type]:>10.2f}", flush=True)

failed = [n for n, ok, _ in results if not ok]
print(f"\nSUMMARY: {len(results) - len(failed)}/{len(results)} checks passed" + (f"; FAILED: {failed}" if failed else ""))
raise SystemExit(1 if failed else 0)
EOF
