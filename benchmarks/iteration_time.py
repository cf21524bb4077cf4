"""Where a MAML meta-iteration spends its time, per backbone, with the per-task meta-gradient loop and the batched one.

Run (about 5-10 minutes on one core)::

    .venv/bin/python benchmarks/iteration_time.py                       # all registered backbones
    .venv/bin/python benchmarks/iteration_time.py --backbones mlp,gru,lru,lstm --iterations 3
    .venv/bin/python benchmarks/iteration_time.py --backbones mlp,gru,lru --modes batched --iterations 7   # ratios
    .venv/bin/python benchmarks/iteration_time.py --backbones mlp,lru,lstm --autograd-sequences   # + before/after
    .venv/bin/python benchmarks/iteration_time.py --backbones mlp,gru --first-order   # + first-order update

Everything runs in this process (``num_env_runners=0``: the local EnvRunner samples, the local Learner updates) on
one torch thread, so the split is the cost of each phase on one core. Times are CPU seconds of the main thread
(``time.thread_time``: what one core spends, robust to other processes on a shared machine; the wall-clock
seconds are printed next to them). Every backbone's Algorithm is built first; then each round runs every
backbone once (the order rotating from round to round), and each backbone alternates its iterations between the
meta-gradients of ``--modes``: the per-task loop (``metarl.rl.meta_gradient_loop``, the Learner with
``per_task_loop=True``) and the batched one (``metarl.meta_batch``, the default). So the modes and the backbones
see the same machine state within a round (on a shared host the load moves within minutes) and the same kind of
episodes; sampling does not depend on the mode and is the median over all iterations. Printed per mode: seconds
per iteration, the meta-update's share, each backbone's iteration relative to ``mlp`` in the same mode, and the
loop/batched ratio of the meta-update; then, per round, each backbone's iteration over mlp's in the same round
(median and range over the rounds) and its update share. ``--autograd-sequences`` adds a third mode for lru and lstm: the batched
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


def _first_order(fn):
    """``fn`` (the Learner's meta-gradient) always first order, whatever order its caller asks for."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **{**kwargs, "first_order": True})

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


def build(backbone: str, args) -> dict:
    """One backbone's Algorithm (everything in this process) and the meta-gradients its rounds alternate."""
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
    learner = algo.learner_group._learner
    batched = learner.meta_gradient
    fns = {"loop": functools.partial(batched, per_task_loop=True), "batched": batched}
    fns = {m: fns[m] for m in args.modes}
    references = _reference_sequences() if args.autograd_sequences else {}
    if backbone in references:
        fns["autograd"] = _with_reference(batched, *references[backbone])
    if args.first_order:
        fns["first-order"] = _first_order(batched)
    updates: list = []
    learner.meta_update = _timed(learner.meta_update, updates)
    return dict(backbone=backbone, algo=algo, learner=learner, fns=fns, updates=updates,
                params=models.num_params(learner.policy), rows={m: [] for m in fns})


def run_round(b: dict, i: int) -> None:
    """One iteration per mode of backbone ``b`` (mode order alternating with the round); round 0 warms up."""
    for mode in list(b["fns"]) if i % 2 == 0 else list(b["fns"])[::-1]:
        b["learner"].meta_gradient = b["fns"][mode]
        c0, w0 = time.thread_time(), time.perf_counter()
        b["algo"].train()
        total = (time.thread_time() - c0, time.perf_counter() - w0)
        if i:
            b["rows"][mode].append((total, b["updates"][-1]))


def measure(backbones: list[str], args) -> list[dict]:
    """All backbones' Algorithms side by side: every round runs each of them once (the order rotating), so the
    ratios between backbones are taken within a round, not minutes apart."""
    built = []
    try:
        for backbone in backbones:
            built.append(build(backbone, args))
        for i in range(args.iterations + 1):  # the first round warms up
            for k in range(len(built)):
                run_round(built[(i + k) % len(built)], i)
    finally:
        for b in built:
            b["algo"].stop()
    return [summarise(b) for b in built]


def summarise(b: dict) -> dict:
    """Medians over the rounds; per round and mode, the iteration's CPU seconds (``rounds``) for the ratios."""
    rows = b["rows"]
    sample = statistics.median(t[0] - u[0] for r in rows.values() for t, u in r)
    sample_wall = statistics.median(t[1] - u[1] for r in rows.values() for t, u in r)
    out = dict(backbone=b["backbone"], params=b["params"], sample=sample, sample_wall=sample_wall, rounds={})
    for mode, r in rows.items():
        out[mode] = statistics.median(u[0] for _, u in r)
        out[mode + "_wall"] = statistics.median(u[1] for _, u in r)
        out["rounds"][mode] = [(t[0], u[0]) for t, u in r]
    return out


def round_ratios(r: dict, ref: dict, mode: str) -> tuple[float, list[float], float]:
    """(median, per-round values) of r's iteration / ref's in the same round, and the median update share."""
    ratios = [t / t_ref for (t, _), (t_ref, _) in zip(r["rounds"][mode], ref["rounds"][mode])]
    share = statistics.median(u / t for t, u in r["rounds"][mode])
    return statistics.median(ratios), ratios, share


def report(res: list[dict], args) -> None:
    print(
        f"\nMAML iteration split: task={args.task} H={args.horizon} tasks={args.meta_batch_size} "
        f"episodes/task={args.episodes_per_task} (x2: support+query) width={args.width} outer_steps={args.outer_steps}"
        f"\nCPU seconds of one thread (wall seconds in brackets), medians of {args.iterations} rounds; load average "
        f"at the end {os.getloadavg()[0]:.1f}"
    )
    ref = next((r for r in res if r["backbone"] == "mlp"), res[0])
    modes = args.modes
    print(f"{'backbone':<12}{'params':>8}{'sample s':>14}"
          + "".join(f"{m + ' update s':>20}{m + ' %':>11}{'x ' + ref['backbone']:>8}" for m in modes)
          + (f"{'loop/batched':>14}" if len(modes) == 2 else ""))
    for r in res:
        line = f"{r['backbone']:<12}{r['params']:>8}{r['sample']:>6.2f} ({r['sample_wall']:>5.2f})"
        for m in modes:
            total, ref_total = r["sample"] + r[m], ref["sample"] + ref[m]
            line += f"{r[m]:>12.2f} ({r[m + '_wall']:>5.2f}){100 * r[m] / total:>10.0f}%{total / ref_total:>8.2f}"
        print(line + (f"{r['loop'] / r['batched']:>14.2f}" if len(modes) == 2 else ""))
    print("per round (the backbones' iterations side by side in each round), median [range] over the rounds:")
    for m in (m for m in ref["rounds"] if all(m in r["rounds"] for r in res)):
        for r in res:
            ratio, ratios, share = round_ratios(r, ref, m)
            print(f"  {m:<8} {r['backbone']:<12} update {100 * share:3.0f}% of the iteration, iteration "
                  f"{ratio:.2f}x {ref['backbone']} [{min(ratios):.2f}, {max(ratios):.2f}]")
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


def parse_modes(text: str) -> list[str]:
    """``--modes`` -> a list of MODES; a clear error for anything else."""
    modes = [m for m in text.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SystemExit(f"--modes {text!r}: allowed are {', '.join(MODES)} (comma-separated, at least one)")
    return modes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default=",".join(models.available()))
    p.add_argument("--task", default="halfcheetah-dir")
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--meta-batch-size", type=int, default=4)
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--outer-steps", type=int, default=5)
    p.add_argument("--iterations", type=int, default=2,
                   help="measured rounds (one iteration per backbone and mode each), after one warm-up round")
    p.add_argument("--modes", default="loop,batched",
                   help="meta-gradients to alternate: loop (the per-task reference), batched (the default), or both")
    p.add_argument("--autograd-sequences", action="store_true",
                   help="also time lru's and lstm's batched meta-gradient with their sequence through autograd op by op")
    p.add_argument("--first-order", action="store_true",
                   help="also time the batched meta-gradient first order (the second-order term's cost)")
    args = p.parse_args()
    args.modes = parse_modes(args.modes)
    if (args.first_order or args.autograd_sequences) and "batched" not in args.modes:
        raise SystemExit(f"--modes {','.join(args.modes)}: --first-order and --autograd-sequences compare against "
                         "the batched meta-gradient; add batched to --modes")
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        res = measure(args.backbones.split(","), args)
    finally:
        ray.shutdown()
    report(res, args)
    _report_first_order(res)


if __name__ == "__main__":
    main()
