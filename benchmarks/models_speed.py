"""Speed and memory of every registered backbone (metarl.models), side by side, as ratios to `gru`.

How to run::

    .venv/bin/python benchmarks/models_speed.py                 # T in {100, 1000, 4000}, B=32, width 128, 1 thread
    .venv/bin/python benchmarks/models_speed.py --quick         # T=100 only (used by the tests)
    .venv/bin/python benchmarks/models_speed.py --T 1000 --repeats 5 --threads 2

What it measures (all in one run, so ratios are comparable even on a noisy shared machine):
- parameter counts of ``build(name, input_dim=128, output_dim=128)`` (width 128);
- forward+backward of a (B, T, 128) sequence, median CPU seconds over ``--repeats`` (process CPU time, not wall:
  other processes on the machine do not count), and the ratio gru_time / time (>1 means faster than gru);
- peak memory of each configuration measured in a fresh subprocess (peak RSS, VmHWM / ru_maxrss, and its growth
  over the resident set just before the forward+backward); a configuration predicted (from T=100, linearly in T) to need more than ``--max-gb`` is skipped
  with the reason printed;
- acting: per-step time of step mode (x (B, 128), no grad), as a ratio to gru's step.

What to expect (shared 2-core AMD EPYC VM, 1 thread, B=32, T=1000; BENCHMARKS.md): lru 0.38 s,
~1.2-1.4x faster than gru; ssm ~1.3x (same FLOPs as lru: both are matmul-bound at width 128); lstm ~0.9-1.05x;
transformer ~0.26x (K=32 window, 2 layers; T=4000 skipped at --max-gb 4); mlp ~3x. Acting: lru step ~0.95x gru
step, transformer step ~0.12x. The whole run takes ~2 min (--quick: well under a minute).
Debug in-process: import this file and call ``time_fwd_bwd``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from metarl import models

D = 128


def time_fwd_bwd(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median CPU seconds of one forward+backward (after one warm-up)."""
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.process_time()
        y, _ = model(x)
        y.square().mean().backward()
        if i:
            times.append(time.process_time() - t0)
    return statistics.median(times)


def time_step(model: torch.nn.Module, batch: int, steps: int) -> float:
    """Median over 3 runs of CPU seconds per acting step (no grad)."""
    x = torch.randn(batch, D)
    runs = []
    with torch.no_grad():
        state = model.init_hidden(batch)
        for _ in range(10):
            _, state = model(x, state)
        for _ in range(3):
            t0 = time.process_time()
            for _ in range(steps):
                _, state = model(x, state)
            runs.append((time.process_time() - t0) / steps)
    return statistics.median(runs)


def _memory_child(name: str, T: int, batch: int) -> None:
    """Run in a subprocess: print the peak RSS and its growth over the resident set before one forward+backward."""
    torch.manual_seed(0)
    model = models.build(name, input_dim=D, output_dim=D)
    x = torch.randn(batch, T, D)
    with open("/proc/self/statm") as f:  # current resident set, in pages
        before = int(f.read().split()[1]) * resource.getpagesize() / 1024  # KiB
    y, _ = model(x)
    y.square().mean().backward()
    print(json.dumps({"peak_mib": _peak_kib() / 1024, "growth_mib": (_peak_kib() - before) / 1024}))


def _peak_kib() -> float:
    """Peak RSS of this process in KiB: VmHWM (Linux), else ru_maxrss.

    ru_maxrss of a child started by fork+exec starts at the parent's RSS at fork time (Linux keeps the larger of
    the two), so on Linux the per-address-space high-water mark VmHWM is the honest number.
    """
    try:
        with open("/proc/self/status") as f:
            return float(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
    except (OSError, StopIteration):
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def measure_memory(name: str, T: int, batch: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--_memory", name, str(T), str(batch), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[100, 1000, 4000], help="sequence lengths")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed forward+backward runs per configuration")
    parser.add_argument("--steps", type=int, default=200, help="acting steps per step-mode timing run")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: reproducible per-core)")
    parser.add_argument("--max-gb", type=float, default=4.0, help="skip configurations predicted to need more")
    parser.add_argument("--quick", action="store_true", help="T=100 only, 1 repeat, 20 steps")
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    parser.add_argument("--_memory", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._memory:
        name, T, batch = args._memory
        _memory_child(name, int(T), int(batch))
        return 0
    if args.quick:
        args.T, args.repeats, args.steps = [100], 1, 20
    names = models.available()
    base = "gru"
    print(f"torch {torch.__version__}, {args.threads} thread(s), B={args.batch}, width 128, input/output dim {D}")
    print("\n| backbone | params |")
    print("|---|---|")
    built = {}
    for name in names:
        torch.manual_seed(0)
        built[name] = models.build(name, input_dim=D, output_dim=D)
        print(f"| {name} | {models.num_params(built[name]):,} |")

    growth100 = {}
    if not args.no_memory:
        for name in names:
            growth100[name] = measure_memory(name, 100, args.batch, args.threads)["growth_mib"]

    for T in args.T:
        x = torch.randn(args.batch, T, D)
        rows = {}
        for name in names:
            predicted_gb = growth100.get(name, 0.0) * T / 100 / 1024
            if predicted_gb > args.max_gb:
                rows[name] = f"skipped: predicted {predicted_gb:.1f} GB > --max-gb {args.max_gb}"
                continue
            seconds = time_fwd_bwd(built[name], x, args.repeats)
            mem = measure_memory(name, T, args.batch, args.threads) if not args.no_memory else None
            rows[name] = (seconds, mem)
        print(f"\nT={T}: forward+backward, B={args.batch} (CPU s, median of {args.repeats}; x = gru_time / time)")
        print("| backbone | CPU s | speed vs gru | peak RSS MiB | RSS growth MiB |")
        print("|---|---|---|---|---|")
        ref = rows[base][0] if isinstance(rows.get(base), tuple) else float("nan")
        for name, row in rows.items():
            if isinstance(row, str):
                print(f"| {name} | - | {row} | - | - |")
                continue
            seconds, mem = row
            peak = f"{mem['peak_mib']:.0f}" if mem else "-"
            growth = f"{mem['growth_mib']:.0f}" if mem else "-"
            print(f"| {name} | {seconds:.3f} | {ref / seconds:.2f}x | {peak} | {growth} |")

    print(f"\nActing (step mode, B={args.batch}, no grad; x = gru_step / step)")
    print("| backbone | us/step | speed vs gru |")
    print("|---|---|---|")
    steps = {name: time_step(built[name], args.batch, args.steps) for name in names}
    for name, sec in steps.items():
        print(f"| {name} | {sec * 1e6:.0f} | {steps[base] / sec:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
