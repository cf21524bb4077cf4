"""Records of a training run: one flat dict per iteration, written as results.json, progress.csv, adaptation.png,
and the progress line printed per iteration.

Logged metrics (record keys; glossary):
    adapt/return_step_k   mean episode return over the meta-batch with θ_k (k inner steps; k=0 = before adaptation)
    adapt/gain            adapt/return_step_K - adapt/return_step_0
    meta/outer_loss       ProMP clipped surrogate of the adapted policy at the first outer step
    meta/logp_mismatch    max |log π recomputed by the Learner - log π recorded by the sampler| (≈0 when consistent)
    inner/loss            VPG loss of the inner steps;  env_steps/*  sampled steps;  time/*  seconds
    eval/return_step_k    held-out evaluation (--eval-every), only in the records of iterations that ran one
    task_params           the meta-batch's tasks as arrays (Task.as_array()), to check resumed runs
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from metarl.apps.provenance import json_safe
from metarl.apps.run_folder import RESULTS

#: result sections copied into the records (the rest of RLlib's result dict is bookkeeping)
SECTIONS = ("adapt", "meta", "inner", "env_steps", "time", "tasks", "eval")
#: sections whose non-finite values stop the run (component named in the error)
CHECKED = {"adapt": "EnvRunner returns", "inner": "EnvRunner inner step", "meta": "Learner meta-update"}


def flatten(result: dict, prefix: str = "") -> dict:
    """Nested RLlib result -> {"adapt/return_step_0": float, ...} (numeric leaves of ``SECTIONS`` only)."""
    out = {}
    for k, v in result.items():
        if not prefix and (k not in SECTIONS or (k == "eval" and not v.get("fresh"))):
            continue  # an evaluation carried forward from an earlier iteration is that iteration's record
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def check_finite(record: dict, iteration: int) -> None:
    """FloatingPointError naming the iteration, the metric and the component when a loss/return is not finite."""
    for key, v in record.items():
        section = key.split("/", 1)[0]
        if section in CHECKED and isinstance(v, float) and not math.isfinite(v):
            raise FloatingPointError(
                f"iteration {iteration}: {key} = {v} is not finite (component: {CHECKED[section]}); run stopped "
                "without checkpointing this iteration: the last good checkpoint is kept"
            )


def write_outputs(run_dir: Path, results: dict) -> None:
    """results.json (atomically) and progress.csv from the records."""
    from rllib_ext.checkpoint import write_text_atomic  # lazily: `metarl --help` imports no RLlib

    write_text_atomic(run_dir / RESULTS, json.dumps(json_safe(results), indent=1))
    records = results["records"]
    cols = sorted({k for r in records for k, v in r.items() if not isinstance(v, list)})
    cols = ["iteration", *[c for c in cols if c != "iteration"]]
    tmp = run_dir / ".progress.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    os.replace(tmp, run_dir / "progress.csv")


def plot_adaptation(run_dir: Path, records: list[dict]) -> None:
    """adaptation.png: adapt/return_step_k per iteration, k = 0 (before adaptation) .. K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    its = [r["iteration"] for r in records]
    steps = sorted({int(k.rsplit("_", 1)[1]) for r in records for k in r if k.startswith("adapt/return_step_")})
    for k in steps:
        ax.plot(its, [r.get(f"adapt/return_step_{k}", np.nan) for r in records], marker="o", ms=3,
                label="before adaptation (θ)" if k == 0 else f"after {k} inner step{'s' * (k > 1)} (θ_{k})")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean return over the meta-batch")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / ".adaptation.tmp.png", dpi=100)
    plt.close(fig)
    os.replace(run_dir / ".adaptation.tmp.png", run_dir / "adaptation.png")


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_line(record: dict, *, total: int, eta_s: float) -> str:
    k = max(int(key.rsplit("_", 1)[1]) for key in record if key.startswith("adapt/return_step_"))
    before, after = record["adapt/return_step_0"], record[f"adapt/return_step_{k}"]
    steps = record.get("env_steps/this_iter", 0.0)
    wall = record.get("wall_s", float("nan"))
    return (
        f"iter {record['iteration']:>4d}/{total} | return before {before:9.2f} after {after:9.2f} "
        f"(gain {after - before:+8.2f}) | {int(steps):>7,d} steps {steps / wall:7.0f} steps/s | "
        f"{wall:6.1f} s/it | ETA {_fmt_s(eta_s)}"
    )

