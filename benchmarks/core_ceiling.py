"""What two cores of this machine deliver: the same single-threaded work in 1 process, then in 2 at once.

Run (about 2 minutes; on an idle machine, since it measures the machine)::

    .venv/bin/python benchmarks/core_ceiling.py                   # both workloads, 5 rounds of 5 s
    .venv/bin/python benchmarks/core_ceiling.py --rounds 3 --seconds 3

The layouts of ``benchmarks/scaling.py`` cannot be faster on 2 cores than the machine's own ceiling: two processes
that share nothing, each pinned to its own core (``os.sched_setaffinity``), doing the work a metarl iteration is
made of. Workloads, each one thread:

- ``mujoco``: HalfCheetah-v5 ``env.step`` with pre-drawn actions (sampling's main cost on MuJoCo families);
- ``torch``: forward and backward of the width-64 MLP policy on a (4,000 x 17) batch (the meta-update's kind of
  work at mlp size).

Per round: 1 process alone on core 0 for ``--seconds``, then 2 processes at once on cores 0 and 1 for as long
(order alternating between rounds); "speedup" = the pair's work per second / the single process's, the median
over rounds (2.00 = two full cores). On a virtual machine two vCPUs can share a physical core or its caches and
memory bandwidth with each other or with other guests, so the ceiling may be below 2. Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

WORKLOADS = ("mujoco", "torch")


def _mujoco_unit():
    """One unit = 100 HalfCheetah steps with pre-drawn actions (reset at every episode end)."""
    import gymnasium as gym
    import numpy as np

    env = gym.make("HalfCheetah-v5")
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (100, 6))

    def unit():
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()

    return unit


def _torch_unit():
    """One unit = forward + backward of a 17-64-64-6 tanh MLP on 4,000 rows (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(17, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 6))
    x = torch.randn(4000, 17, generator=gen)

    def unit():
        net.zero_grad()
        net(x).square().mean().backward()

    return unit


def _worker(workload: str, core: int, seconds: float, start, out) -> None:
    """Pin to ``core``, build the workload, warm up, wait for ``start``, count units for ``seconds``."""
    os.sched_setaffinity(0, {core})
    unit = {"mujoco": _mujoco_unit, "torch": _torch_unit}[workload]()
    for _ in range(5):
        unit()
    out.put(("ready", core))
    start.wait()
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        unit()
        n += 1
    out.put(("done", n / elapsed))


def rate(workload: str, cores: list[int], seconds: float) -> float:
    """Units per second summed over one process per core in ``cores``, all started together."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(workload, c, seconds, start, out)) for c in cores]
    for p in procs:
        p.start()
    for _ in procs:
        if out.get(timeout=120)[0] != "ready":  # a worker that fails dies before it says so: get() times out
            raise RuntimeError("a worker answered before it was ready")
    start.set()
    rates = [out.get(timeout=seconds + 120)[1] for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def measure(workload: str, rounds: int, seconds: float) -> dict:
    """Alternating rounds of 1 process and 2 processes; the median speedup and its rounds."""
    ratios, solos, pairs = [], [], []
    for k in range(rounds):
        order = ([0], [0, 1]) if k % 2 == 0 else ([0, 1], [0])
        got = {len(c): rate(workload, c, seconds) for c in order}
        solos.append(got[1])
        pairs.append(got[2])
        ratios.append(got[2] / got[1])
    return {"workload": workload, "speedup": statistics.median(ratios), "rounds": ratios,
            "solo": statistics.median(solos), "pair": statistics.median(pairs)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {WORKLOADS}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of work per measurement")
    args = ap.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad or not workloads:
        ap.error(f"--workloads {args.workloads!r}: each must be one of {', '.join(WORKLOADS)}")
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: must be >= 1")
    if not args.seconds > 0:
        ap.error(f"--seconds {args.seconds}: must be > 0")
    if len(os.sched_getaffinity(0)) < 2:
        ap.error("needs 2 cores (this process may use only 1)")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print("| workload | 1 process: units/s | 2 processes: units/s | speedup (median) | rounds |")
    print("|---|---:|---:|---:|---|")
    for w in workloads:
        m = measure(w, args.rounds, args.seconds)
        print(f"| {w} | {m['solo']:.1f} | {m['pair']:.1f} | **{m['speedup']:.2f}x** | "
              f"{', '.join(f'{r:.2f}' for r in m['rounds'])} |", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
