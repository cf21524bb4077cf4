"""The cost of summing the meta-gradient over 2 Learners: one collective per parameter tensor (before) vs one for all.

Run::

    .venv/bin/python benchmarks/allreduce_cost.py            # mlp 64 on HalfCheetahDir's shapes
    .venv/bin/python benchmarks/allreduce_cost.py --rounds 80

Two gloo ranks (``torch.multiprocessing``, as two Learner actors on one machine) reduce the same gradients, the
two ways alternating, each timed over one meta-update's reductions (``--outer-steps`` + 1 with a measuring pass):
``per-tensor`` is a frozen copy of ``MAMLLearner._all_reduce`` before the change (one ``all_reduce`` per parameter
tensor, then the loss), ``one buffer`` is ``MAMLLearner._all_reduce`` now. Prints the medians over rounds (ms) and
their ratio. On busy cores every collective waits until both ranks are scheduled, so the count of collectives,
not their bytes, is what costs. Results: BENCHMARKS.md (layouts).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

#: parameter shapes of the mlp policy (width 64) on HalfCheetahDir: 2 hidden layers, mean head, log std
MLP_SHAPES = [(64, 17), (64,), (64, 64), (64,), (6, 64), (6,), (6,)]


def per_tensor(params: list[torch.Tensor], loss_sum: float) -> float:
    """The reduction before: one collective per parameter tensor, then one for the loss."""
    for p in params:
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
    loss_t = torch.tensor([loss_sum], dtype=torch.float64)
    dist.all_reduce(loss_t)
    return float(loss_t)


def worker(rank: int, init_file: str, rounds: int, reductions: int) -> None:
    from rllib_ext.learner import MAMLLearner

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in MLP_SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape)
    times: dict[str, list[float]] = {"per-tensor": [], "one buffer": []}
    for _ in range(rounds):
        for name, fn in (("per-tensor", per_tensor), ("one buffer", MAMLLearner._all_reduce)):
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(reductions):
                fn(params, 1.0)
            times[name].append(time.perf_counter() - t0)
    if rank == 0:
        old, new = (statistics.median(times[k]) * 1e3 for k in ("per-tensor", "one buffer"))
        print(f"{reductions} reductions of {len(params)} tensors (one meta-update), median of {rounds} rounds: "
              f"per-tensor {old:.2f} ms, one buffer {new:.2f} ms, ratio {old / new:.2f}x")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--outer-steps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(f"{tmp}/init", args.rounds, args.outer_steps + 1), nprocs=2, join=True)


if __name__ == "__main__":
    main()
