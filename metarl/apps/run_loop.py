"""The run loop shared by ``benchmarks/run_mujoco.py`` and ``python -m metarl.train`` (one parser, one loop).

``metarl.apps.flags`` defines the flags and turns them into a ``MAMLConfig``; ``run(args)`` validates everything
(before Ray starts, ``metarl.apps.run_folder.prepare``), trains to ``--iterations`` TOTAL iterations (also under
``--resume``) and writes into ``--out``::

    results.json       {"provenance": {...}, "resumes": [...], "records": [one flat dict per iteration]}
    progress.csv       the scalar columns of the records (glossary: metarl.apps.records)
    tb/                TensorBoard events (tensorboardX)
    adaptation.png     mean return before (θ) and after each inner step (θ_k) per iteration
    checkpoints/checkpoint_<iteration:06d>/, checkpoints/latest   (rllib_ext.checkpoint: crash-safe)

Shutdown: Ctrl-C (SIGINT) and SIGTERM stop the Algorithm's actors and the embedded Ray before the process exits;
the last checkpoint stays the resume point. A SIGKILL cannot be handled (see the README's "Reliability").

Ray: an already initialised Ray is used as is; with ``RAY_ADDRESS`` set (inside ``ray job submit``) a bare
``ray.init()`` joins that cluster; otherwise an embedded ``ray.init(num_cpus=..., include_dashboard=False)``.
No module-level Ray import: ``metarl train --help`` stays fast.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable

import numpy as np

from metarl.apps.provenance import provenance
from metarl.apps.ray_session import init_ray_for_run
from metarl.apps.records import check_finite, flatten, plot_adaptation, progress_line, write_outputs
from metarl.apps.run_folder import RESULTS, prepare


def save_checkpoint(algo, run_dir, iteration: int):
    """``rllib_ext.checkpoint.save_checkpoint`` (imported here, lazily; tests replace this name to inject faults)."""
    from rllib_ext.checkpoint import save_checkpoint as save

    return save(algo, run_dir, iteration)


def run(args: argparse.Namespace, *, echo: Callable[[str], None] = print) -> dict:
    """Train to ``args.iterations`` total iterations; returns {"out", "completed", "last", "checkpoint", ...}.

    SIGTERM is turned into ``SystemExit`` (like Ctrl-C's KeyboardInterrupt) while the run holds Ray, so that the
    ``finally`` below stops the Algorithm (its EnvRunner and Learner actors) and shuts down the Ray it started.
    """
    plan = prepare(args)
    output = plan["output"]
    try:
        return _train(args, plan, echo)
    finally:
        if plan["lock"] is not None:
            plan["lock"].release()
        output.cleanup()


def _terminate_as_exit():
    """SIGTERM -> SystemExit(143) in the main thread, so that ``finally`` clauses run; returns the old handler.

    Installed AFTER ``ray.init``: Ray's core worker installs its own SIGTERM handler in the driver (it logs and
    aborts, leaving the actors' processes to Ray's reaper)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, on_term)


def _results(args, plan: dict) -> dict:
    config, start = plan["config"], plan["start"]
    seeds = {"seed": args.seed, "task_seed": config.task_seed if config.task_seed is not None else args.seed}
    prov = provenance(config=config, seeds=seeds, extra={"args": vars(args)})
    results = plan["results"] or {"provenance": prov, "resumes": [], "records": []}
    if plan["results"] is not None:
        dropped = [r["iteration"] for r in results["records"] if r["iteration"] > start]
        results["records"] = [r for r in results["records"] if r["iteration"] <= start]  # re-run after the checkpoint
        results.setdefault("resumes", []).append({"from_iteration": start, "dropped_records": dropped,
                                                  "provenance": prov})
    return results


def _train(args, plan: dict, echo: Callable[[str], None]) -> dict:
    config, output, start = plan["config"], plan["output"], plan["start"]
    run_dir, total = output.local, args.iterations
    results = _results(args, plan)
    if start >= total:
        echo(f"{args.out}: {start} of {total} iterations already done; nothing to do")
        return {"out": args.out, "completed": start, "last": (results["records"] or [None])[-1], "checkpoint": None}
    run_dir.mkdir(parents=True, exist_ok=True)
    from rllib_ext.checkpoint import clean_partial

    clean_partial(run_dir)

    import torch

    torch.set_num_threads(args.torch_threads)  # the driver's own sampling/learning (Ray's workers use one thread)
    started_ray = init_ray_for_run(args)
    old_term = _terminate_as_exit()
    algo = writer = None
    ckpt = plan["checkpoint"]
    try:
        from tensorboardX import SummaryWriter

        algo = config.build_algo()
        if ckpt is not None:
            algo.restore_from_path(str(ckpt.resolve()))  # verifies checksums; pushes θ to every runner
            if algo.iteration != start:
                raise RuntimeError(f"restored {ckpt} but the Algorithm reports iteration {algo.iteration} != {start}")
            echo(f"resumed {args.out} from {ckpt.name} (iteration {start}); target {total}")
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1 if start else None)
        t_loop = time.perf_counter()
        for it in range(start + 1, total + 1):
            record = _iterate(algo, it)
            results["records"].append(record)
            write_outputs(run_dir, results)
            for key, v in record.items():
                if isinstance(v, float):
                    writer.add_scalar(key, v, it)
            writer.flush()
            eta = (time.perf_counter() - t_loop) / (it - start) * (total - it)
            echo(progress_line(record, total=total, eta_s=eta))
            if it % args.checkpoint_every == 0 or it == total:
                ckpt = save_checkpoint(algo, run_dir, it)
                plot_adaptation(run_dir, results["records"])
                output.upload(f"checkpoints/{ckpt.name}", "checkpoints/latest", RESULTS, "progress.csv",
                              "adaptation.png", "tb")
        last = results["records"][-1]
        where = f"{args.out.rstrip('/')}/checkpoints/{ckpt.name}" if output.fs is not None else str(ckpt)
        return {"out": args.out, "completed": total, "last": last, "checkpoint": where,
                "env_steps": last.get("env_steps/lifetime"), "records": len(results["records"])}
    finally:
        if writer is not None:
            writer.close()
        _stop(algo, started_ray, old_term)


def _iterate(algo, it: int) -> dict:
    t0 = time.perf_counter()
    try:
        result = algo.train()
    except FloatingPointError as e:
        raise FloatingPointError(f"iteration {it}: Learner meta-update failed: {e}") from e
    record = {"iteration": int(algo.iteration), **flatten(result), "wall_s": time.perf_counter() - t0}
    record["task_params"] = [np.asarray(t.as_array()).tolist() for t in algo.last_tasks]
    check_finite(record, it)
    return record


def _stop(algo, started_ray: bool, term_handler) -> None:
    """Stop the Algorithm's actors, then the Ray this run started; a second signal meanwhile does not cut it short.
    SIGTERM's handler goes back to ``term_handler`` (the one before the run)."""
    main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    if term_handler is not None:
        old[signal.SIGTERM] = term_handler
    try:
        if algo is not None:
            algo.stop()
        if started_ray:
            import ray

            ray.shutdown()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
