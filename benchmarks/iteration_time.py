"""Where a MAML meta-iteration spends its time, per backbone, with the per-task meta-gradient loop and the batched one.

Run (about 5-10 minutes on one core)::

    .venv/bin/python benchmarks/iteration_time.py                       # all registered backbones
    .venv/bin/python benchmarks/iteration_time.py --backbones mlp,gru,lru,lstm --iterations 3
    .venv/bin/python benchmarks/iteration_time.py --backbones mlp,lru,lstm --autograd-sequences   # + before/after
    .venv/bin/python benchmarks/iteration_time.py --backbones mlp,gru --first-order   # + first-order update

Everything runs in this process (``num_env_runners=0``: the local EnvRunner samples, the local Learner updates) on
one torch thread, so the split is the cost of each phase on one core. Times are CPU seconds of the main thread
(``time.thread_time``: what one core spends, robust to other processes on a shared machine; the wall-clock
seconds are printed next to them). Each backbone's Algorithm alternates its iterations between the two
meta-gradients, the per-task loop (``metarl.rl.meta_gradient_loop``, the Learner with ``per_task_loop=True``) and
the batched one (``metarl.meta_batch``, the default), so both see the same machine state and the same kind of
episodes; sampling does not depend on the mode and is the median over all iterations. Printed per mode: seconds
per iteration, the meta-update's share, each backbone's iteration relative to ``mlp`` in the same mode, and the
loop/batched ratio of the meta-update. ``--autograd-sequences`` adds a third mode for lru and lstm: the batched
meta-gradient with their sequence functions (``lru_scan``, ``lstm_sequence``: the time loop as one autograd node
with a hand-written backward) replaced by the same recurrence through autograd op by op (what they ran before), so
the gain is measured side by side in one run. Results to expect (HalfCheetahDir H=100, 4 tasks x 10 episodes, width 64):
see BENCHMARKS.md.

Debug in-process: every phase runs in the driver, so ``python -m pdb benchmarks/iteration_time.py`` stops anywhere.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import ray
import torch

from metarl import models

MODES = ("loop", "batched")


def _reference_sequences() -> dict:
    """backbone -> (class, attribute, the sequence path through autograd op by op) for ``--autograd-sequences``."""
    from metarl.models.lru import LRULayer, _scan_autograd
    from metarl.models.rnn import LSTMBackbone

    return {
        "lru": (LRULayer, "forward", lambda self, x, h: self._parallel(x, h, _scan_autograd)),
        "lstm": (LSTMBackbone, "_sequence", LSTMBackbone._sequence_cells),
    }


def _with_reference(fn, cls: type, attr: str, ref):
    """``fn`` that runs with ``cls.attr`` replaced by ``ref`` (the meta-gradient only: sampling is untouched)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        own = cls.__dict__[attr]
        setattr(cls, attr, ref)
        try:
            return fn(*args, **kwargs)
        finally:
            setattr(cls, attr, own)

    return wrapper


def _first_order(fn, learner):
    """``fn`` with the Learner's meta-gradient first order (``first_order=True``) while it runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        own = learner.config.first_order
        learner.config.first_order = True
        try:
            return fn(*args, **kwargs)
        finally:
            learner.config.first_order = own

    return wrapper


def _timed(fn, sink: list):
    """``fn`` that appends its (thread CPU s, wall s) to ``sink`` on every call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        c0, w0 = time.thread_time(), time.perf_counter()
        out = fn(*args, **kwargs)
        sink.append((time.thread_time() - c0, time.perf_counter() - w0))
        return out

    return wrapper


def measure(backbone: str, args) -> dict:
    from rllib_ext.algorithm import MAMLConfig

    cfg = (
        MAMLConfig()
        .meta(
            task=args.task,
            horizon=args.horizon,
            backbone=backbone,
            width=args.width,
            meta_batch_size=args.meta_batch_size,
            episodes_per_task=args.episodes_per_task,
            outer_steps=args.outer_steps,
        )
        .env_runners(num_env_runners=0, num_envs_per_env_runner=args.episodes_per_task)
        .debugging(seed=0)
    )
    algo = cfg.build_algo()
    try:
        learner = algo.learner_group._learner
        num_params = models.num_params(learner.policy)
        batched = learner.meta_gradient
        fns = {"loop": functools.partial(batched, per_task_loop=True), "batched": batched}
        references = _reference_sequences() if args.autograd_sequences else {}
        if backbone in references:
            fns["autograd"] = _with_reference(batched, *references[backbone])
        if args.first_order:
            fns["first-order"] = _first_order(batched, learner)
        updates: list = []
        learner.meta_update = _timed(learner.meta_update, updates)
        rows = {m: [] for m in fns}
        for i in range(args.iterations + 1):  # the first round warms up
            for mode in list(fns) if i % 2 == 0 else list(fns)[::-1]:
                learner.meta_gradient = fns[mode]
                c0, w0 = time.thread_time(), time.perf_counter()
                algo.train()
                total = (time.thread_time() - c0, time.perf_counter() - w0)
                if i:
                    rows[mode].append((total, updates[-1]))
    finally:
        algo.stop()
    sample = statistics.median(t[0] - u[0] for r in rows.values() for t, u in r)
    sample_wall = statistics.median(t[1] - u[1] for r in rows.values() for t, u in r)
    out = dict(backbone=backbone, params=num_params, sample=sample, sample_wall=sample_wall)
    for mode, r in rows.items():
        out[mode] = statistics.median(u[0] for _, u in r)
        out[mode + "_wall"] = statistics.median(u[1] for _, u in r)
    return out


def report(res: list[dict], args) -> None:
    print(
        f"\nMAML iteration split: task={args.task} H={args.horizon} tasks={args.meta_batch_size} "
        f"episodes/task={args.episodes_per_task} (x2: support+query) width={args.width} outer_steps={args.outer_steps}"
        f"\nCPU seconds of one thread (wall seconds in brackets); load average at the end {os.getloadavg()[0]:.1f}"
    )
    ref = next((r for r in res if r["backbone"] == "mlp"), res[0])
    print(f"{'backbone':<12}{'params':>8}{'sample s':>14}"
          + "".join(f"{m + ' update s':>20}{m + ' %':>11}{'x ' + ref['backbone']:>8}" for m in MODES)
          + f"{'loop/batched':>14}")
    for r in res:
        line = f"{r['backbone']:<12}{r['params']:>8}{r['sample']:>6.2f} ({r['sample_wall']:>5.2f})"
        for m in MODES:
            total, ref_total = r["sample"] + r[m], ref["sample"] + ref[m]
            line += f"{r[m]:>12.2f} ({r[m + '_wall']:>5.2f}){100 * r[m] / total:>10.0f}%{total / ref_total:>8.2f}"
        print(line + f"{r['loop'] / r['batched']:>14.2f}")
    for r in (r for r in res if "autograd" in r):
        before, ref_total = r["sample"] + r["autograd"], ref["sample"] + ref["batched"]
        print(f"{r['backbone']}: batched update {r['autograd']:.2f} s ({r['autograd_wall']:.2f}) with the sequence "
              f"through autograd op by op -> {r['batched']:.2f} s ({r['batched_wall']:.2f}) with its sequence "
              f"function ({r['autograd'] / r['batched']:.2f}x); update {100 * r['autograd'] / before:.0f}% -> "
              f"{100 * r['batched'] / (r['sample'] + r['batched']):.0f}% of the iteration, "
              f"{before / ref_total:.2f}x -> {(r['sample'] + r['batched']) / ref_total:.2f}x {ref['backbone']}")


def _report_first_order(res: list[dict]) -> None:
    for r in (r for r in res if "first-order" in r):
        so, fo = r["batched"], r["first-order"]
        print(f"{r['backbone']}: batched update second order {so:.2f} s ({r['batched_wall']:.2f}) -> first order "
              f"{fo:.2f} s ({r['first-order_wall']:.2f}), {so / fo:.2f}x; update {100 * so / (r['sample'] + so):.0f}% "
              f"-> {100 * fo / (r['sample'] + fo):.0f}% of the iteration")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default=",".join(models.available()))
    p.add_argument("--task", default="halfcheetah-dir")
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--meta-batch-size", type=int, default=4)
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--outer-steps", type=int, default=5)
    p.add_argument("--iterations", type=int, default=2, help="measured iterations per mode, after one warm-up each")
    p.add_argument("--autograd-sequences", action="store_true",
                   help="also time lru's and lstm's batched meta-gradient with their sequence through autograd op by op")
    p.add_argument("--first-order", action="store_true",
                   help="also time the batched meta-gradient first order (the second-order term's cost)")
    args = p.parse_args()
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        res = [measure(b, args) for b in args.backbones.split(",")]
    finally:
        ray.shutdown()
    report(res, args)
    _report_first_order(res)


if __name__ == "__main__":
    main()
