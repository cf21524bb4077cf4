"""``metarl report DIR``: turn a Tune sweep folder into ``DIR/report.md``, ``DIR/plots/*.png`` and
``DIR/results.json`` (every trial's held-out evaluations as data, with the sweep's plan and provenance).

Reads every trial folder ``DIR/<trial>/`` holding ``params.json`` plus ``result.json`` (one JSON result per line;
else ``progress.csv``); a restored trial's repeated iterations count once, from the restored run. The ranking uses the held-out evaluation every trial runs on itself (``eval/...``,
``rllib_ext.heldout``: the function of ``metarl evaluate``; every method adapts, the multitask baseline too), at
each trial's last fresh evaluation (``eval/fresh`` = 1), per task family:

    held-out before / after K  eval/return_step_0 / eval/return_post   (θ / θ_K on the family's test tasks)
    95% interval               two-level bootstrap over (seed x held-out task) of eval/task_return/<i>
                               (``metarl.apps.stats``), and which differences to the best are within noise
    env steps, wall time       env_steps/lifetime (the training budget; evaluation steps apart:
                               eval/env_steps_lifetime), time_total_s (evaluations included)

Each value is ``mean ± std`` over seeds (ddof=1; 0 with one seed). A second table keeps the training metrics of
the meta-batch at each trial's last iteration (``adapt/return_step_k``: for the multitask baseline the return
*before* adaptation, so it ranks nothing). With ``--evaluate K`` each trial's last checkpoint is also adapted
afresh (``metarl.evaluate``) and a third table reports those returns. Plots (PNG, axis labels with units, legend
outside the data): ``learning_<task>.png`` (held-out return after K steps vs training env steps, one line per
backbone x method, band = ±1 std over seeds) and ``adaptation_<task>.png`` (held-out return vs inner steps k at
the last evaluation). Where trials ran trial memory (``eval/return_step_k_episode_j`` logged), a section "In-context
adaptation" tables the held-out return of episode j within each phase and ``in_context_<task>.png`` plots it.
No Ray import; matplotlib with Agg.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Trial:
    name: str
    params: dict  # the trial's resolved config (params.json)
    rows: list[dict]  # one flat {column: float} per reported iteration

    @property
    def key(self) -> tuple[str, str, str]:
        """(task, backbone, method); method falls back to inner_steps (0 = multitask)."""
        p = self.params
        method = p.get("method") or ("multitask" if p.get("inner_steps") == 0 else "maml")
        return str(p.get("task")), str(p.get("backbone")), str(method)


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


#: columns the report reads: a cell here that is not a number is warned about (Tune's other columns hold text)
USED_PREFIXES = ("adapt/", "eval/", "meta/", "env_steps/", "model/", "training_iteration", "time_total_s")


class BrokenTrial(ValueError):
    """A trial file that cannot be read: the trial is skipped (the message names the file and the reason)."""


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data:
        raise BrokenTrial(f"{path}: binary content (NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BrokenTrial(f"{path}: not UTF-8 text ({e})") from e


def _csv_rows(path: Path) -> list[dict]:
    text = _read_text(path)
    if text and not text.endswith("\n"):
        raise BrokenTrial(f"{path}: the last row is cut (no line end): the file was truncated mid-row")
    rows = []
    reader = csv.DictReader(text.splitlines())
    for n, row in enumerate(reader, start=2):
        if None in row or None in row.values():
            fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())
            raise BrokenTrial(f"{path}: row {n} has {fields} fields, the header {len(reader.fieldnames)}: the file "
                              "is cut or garbled")
        rows.append({k: _cell(v, path, k, n) for k, v in row.items()})
    return rows


def _cell(v: str, path: Path, column: str, row: int) -> float:
    x = _number(v)
    if math.isnan(x) and v.strip() not in ("", "nan", "NaN") and column.startswith(USED_PREFIXES):
        logger.warning("report: %s row %d column %s: %r is not a number (reported as n/a)", path, row, column, v)
    return x


def _json_rows(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            try:
                rows.append(_flatten(json.loads(line)))
            except (json.JSONDecodeError, AttributeError) as e:
                raise BrokenTrial(f"{path}: line {n} is not a JSON result ({e})") from e
    return rows


def _read_rows(trial_dir: Path) -> list[dict]:
    """result.json first (Tune writes every result as one whole JSON line, also after a restore, whereas a
    restored trial's progress.csv gains rows with columns its header lacks), else progress.csv."""
    csv_path, json_path = trial_dir / "progress.csv", trial_dir / "result.json"
    if json_path.exists() and json_path.stat().st_size > 0:
        return drop_superseded(_json_rows(json_path))
    if csv_path.exists() and csv_path.stat().st_size > 0:
        return drop_superseded(_csv_rows(csv_path))
    return []


def drop_superseded(rows: list[dict]) -> list[dict]:
    """A trial restored from a checkpoint (a failure retried, ``metarl sweep --resume``) reports again the
    iterations after that checkpoint: keep the restored run's rows, drop the ones they replace."""
    out: list[dict] = []
    for row in rows:
        it = row.get("training_iteration", math.nan)
        while out and out[-1].get("training_iteration", math.nan) >= it:
            out.pop()
        out.append(row)
    return out


def _read_params(path: Path) -> dict:
    try:
        params = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise BrokenTrial(f"{path}: not valid JSON ({e})") from e
    if not isinstance(params, dict):
        raise BrokenTrial(f"{path}: expected a JSON object of the trial's config, got {type(params).__name__}")
    return params


def load_trials(exp_dir: str | Path, skipped: list[str] | None = None) -> list[Trial]:
    """Every trial folder under ``exp_dir`` with params.json and at least one result, sorted by name. A trial whose
    files cannot be read is skipped with a warning naming the file and the reason (appended to ``skipped``)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise ValueError(f"report: {str(exp_dir)!r} is not a folder (give the Tune experiment folder)")
    trials = []
    for params_path in sorted(exp_dir.glob("*/params.json")):
        try:
            params, rows = _read_params(params_path), _read_rows(params_path.parent)
        except (BrokenTrial, OSError) as e:
            logger.warning("report: trial %s skipped: %s", params_path.parent.name, e)
            if skipped is not None:
                skipped.append(f"{params_path.parent.name}: {e}")
            continue
        if not rows:
            logger.warning("report: %s has no results yet; skipped", params_path.parent.name)
            continue
        trials.append(Trial(params_path.parent.name, params, rows))
    if not trials:
        raise ValueError(f"report: no readable trial folders with params.json and progress.csv/result.json in "
                         f"{exp_dir}" + (f" ({len(skipped)} skipped: {skipped[0]})" if skipped else ""))
    return trials


def _step_columns(rows: list[dict], prefix: str) -> list[int]:
    """The k of every ``<prefix>return_step_<k>`` column (not trial memory's ``..._episode_<j>`` columns)."""
    head = f"{prefix}return_step_"
    return sorted({int(c[len(head):]) for r in rows for c in r if c.startswith(head) and c[len(head):].isdigit()})


def _steps(rows: list[dict]) -> list[int]:
    return _step_columns(rows, "adapt/")


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarize(trials: list[Trial]) -> list[dict]:
    """One dict per (task, backbone, method) cell: {"task", ..., "seeds", "return_step_k": (mean, std), ...}."""
    cells: dict[tuple, list[Trial]] = defaultdict(list)
    for t in trials:
        cells[t.key].append(t)
    out = []
    for (task, backbone, method), ts in sorted(cells.items()):
        last = [t.rows[-1] for t in ts]
        steps = _steps(last)
        cell = {"task": task, "backbone": backbone, "method": method, "seeds": len(ts), "steps": steps}
        for k in steps:
            cell[f"return_step_{k}"] = _mean_std([r.get(f"adapt/return_step_{k}", math.nan) for r in last])
            if any(f"adapt/success_step_{k}" in r for r in last):
                cell[f"success_step_{k}"] = _mean_std([r.get(f"adapt/success_step_{k}", math.nan) for r in last])
        if steps:
            cell["gain"] = _mean_std([r.get(f"adapt/return_step_{steps[-1]}", math.nan)
                                      - r.get("adapt/return_step_0", math.nan) for r in last])
        for name, col in (("iterations", "training_iteration"), ("env_steps", "env_steps/lifetime"),
                          ("wall_s", "time_total_s"), ("num_params", "model/num_params")):
            cell[name] = _mean_std([r.get(col, math.nan) for r in last])
        out.append(cell)
    return out


def _fmt(ms: tuple[float, float], digits: int = 1) -> str:
    m, s = ms
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def _success(c: dict) -> str:
    """``before → after`` success rate in % (mean ± std over seeds), "—" for families without success."""
    ks = [k for k in c.get("steps", []) if f"success_step_{k}" in c]
    if not ks:
        return "—"
    pct = [(100 * c[f"success_step_{k}"][0], 100 * c[f"success_step_{k}"][1]) for k in (ks[0], ks[-1])]
    return " → ".join(_fmt(ms, 1) + "%" for ms in (pct if len(ks) > 1 else pct[:1]))


def _with_success(head: list[str], cells: list[dict]) -> bool:
    if any("success_step_0" in c for c in cells):
        head.append("success before → after (%)")
        return True
    return False


def markdown_table(cells: list[dict]) -> str:
    k_max = max((c["steps"][-1] for c in cells if c["steps"]), default=0)
    head = ["task", "backbone", "method", "seeds", "params", "iters", "return before (θ)",
            *[f"after {k} step{'s' * (k > 1)}" for k in range(1, k_max + 1)], "gain", "env steps", "wall time (s)"]
    success = _with_success(head, cells)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        after = [_fmt(c[f"return_step_{k}"], 2) if f"return_step_{k}" in c else "—" for k in range(1, k_max + 1)]
        params = c["num_params"][0]
        row = [c["task"], c["backbone"], c["method"], str(c["seeds"]),
               "n/a" if math.isnan(params) else f"{int(round(params)):,}", f"{c['iterations'][0]:.0f}",
               _fmt(c.get("return_step_0", (math.nan, math.nan)), 2), *after,
               _fmt(c.get("gain", (math.nan, math.nan)), 2), _fmt(c["env_steps"], 0), _fmt(c["wall_s"], 1),
               *([_success(c)] if success else [])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _label(backbone: str, method: str) -> str:
    return f"{backbone} ({method})"


# --- the held-out ranking ---------------------------------------------------------------------------------------
EVAL_POST = "eval/return_post"


def _fresh_rows(t: Trial) -> list[dict]:
    """The trial's results that hold a new held-out evaluation (older sweeps without ``eval/fresh``: none)."""
    return [r for r in t.rows if r.get("eval/fresh") == 1 and not math.isnan(r.get(EVAL_POST, math.nan))]


def _task_returns(row: dict) -> list[float]:
    """Per held-out task: its mean return with θ_K (``eval/task_return/<i>``, i = 0, 1, ...)."""
    out, i = [], 0
    while f"eval/task_return/{i}" in row and not math.isnan(row[f"eval/task_return/{i}"]):
        out.append(row[f"eval/task_return/{i}"])
        i += 1
    return out


def heldout_cells(trials: list[Trial]) -> list[dict]:
    """One dict per (task, backbone, method) with evaluated trials: values at each trial's last fresh evaluation,
    ``per_task`` (seeds x held-out tasks) and its bootstrap ``interval`` (``metarl.apps.stats``)."""
    from metarl.apps.stats import interval

    cells: dict[tuple, list[Trial]] = defaultdict(list)
    for t in trials:
        if _fresh_rows(t):
            cells[t.key].append(t)
    out = []
    for (task, backbone, method), ts in sorted(cells.items()):
        last = [_fresh_rows(t)[-1] for t in ts]
        ends = [t.rows[-1] for t in ts]
        per_task = [_task_returns(r) for r in last]
        cell = {"task": task, "backbone": backbone, "method": method, "seeds": len(ts),
                "steps": _eval_steps(last), "after": _mean_std([r[EVAL_POST] for r in last])}
        for k in cell["steps"]:
            cell[f"return_step_{k}"] = _mean_std([r.get(f"eval/return_step_{k}", math.nan) for r in last])
        if per_task and all(per_task) and len({len(x) for x in per_task}) == 1:
            cell["per_task"] = per_task
            cell["interval"] = interval(per_task)
        for name, col in (("iterations", "training_iteration"), ("env_steps", "env_steps/lifetime"),
                          ("eval_env_steps", "eval/env_steps_lifetime"), ("wall_s", "time_total_s"),
                          ("num_params", "model/num_params")):
            cell[name] = _mean_std([r.get(col, math.nan) for r in ends])
        out.append(cell)
    return out


def _eval_steps(rows: list[dict]) -> list[int]:
    return _step_columns(rows, "eval/")


# --- in-context adaptation (trial memory) -------------------------------------------------------------------------
def _episode_curve(row: dict, k: int) -> list[float]:
    """``eval/return_step_<k>_episode_<j>``, j = 1, 2, ...: the j-th episode within phase k (trial memory)."""
    out, j = [], 1
    while not math.isnan(row.get(f"eval/return_step_{k}_episode_{j}", math.nan)):
        out.append(row[f"eval/return_step_{k}_episode_{j}"])
        j += 1
    return out


def in_context_cells(trials: list[Trial]) -> list[dict]:
    """One dict per (task, backbone, method) whose trials ran trial memory and logged the per-episode held-out
    returns: ``curve_<k>`` = [(mean, std over seeds) of episode j = 1..Q within phase k] at the last evaluation."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for t in trials:
        fresh = _fresh_rows(t)
        if fresh and _episode_curve(fresh[-1], 0):
            cells[t.key].append(fresh[-1])
    out = []
    for (task, backbone, method), last in sorted(cells.items()):
        cell = {"task": task, "backbone": backbone, "method": method, "seeds": len(last), "steps": _eval_steps(last)}
        for k in cell["steps"]:
            curves = [_episode_curve(r, k) for r in last]
            q = min(len(c) for c in curves)
            cell[f"curve_{k}"] = [_mean_std([c[j] for c in curves]) for j in range(q)]
        out.append(cell)
    return out


def in_context_markdown(cells: list[dict]) -> str:
    """Per family: one row per (backbone, method, step k), the held-out return of episode 1..Q within the phase."""
    parts = []
    for task in sorted({c["task"] for c in cells}):
        cs = [c for c in cells if c["task"] == task]
        q = max(len(c[f"curve_{k}"]) for c in cs for k in c["steps"])
        head = ["backbone", "method", "seeds", "step k", *[f"episode {j}" for j in range(1, q + 1)],
                "last − first"]
        lines = [f"### {task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in cs:
            for k in c["steps"]:
                curve = c[f"curve_{k}"]
                cols = [_fmt(ms, 2) for ms in curve] + ["—"] * (q - len(curve))
                gain = f"{curve[-1][0] - curve[0][0]:+.2f}" if curve else "n/a"
                lines.append("| " + " | ".join([c["backbone"], c["method"], str(c["seeds"]), str(k), *cols, gain])
                             + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot_in_context(cells: list[dict], plots_dir: Path) -> list[Path]:
    """in_context_<task>.png: held-out return vs episode within the phase, one line per backbone x method x step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in sorted({c["task"] for c in cells}):
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for c in (c for c in cells if c["task"] == task):
            for k in c["steps"]:
                ms = np.array(c[f"curve_{k}"])  # (Q, 2)
                ax.errorbar(np.arange(1, len(ms) + 1), ms[:, 0], yerr=ms[:, 1], marker="o", capsize=3,
                            ls="-" if k == c["steps"][-1] else "--", label=f"{_label(c['backbone'], c['method'])} θ_{k}")
        ax.set(title=f"{task}: in-context adaptation (trial memory), last evaluation, mean ± std over seeds",
               xlabel="episode j within the phase (the state carried from episode to episode)",
               ylabel="held-out return of episode j\n(episode reward sum)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        written.append(_save(fig, ax, plots_dir / f"in_context_{task}.png"))
    return written


def ranked(cells: list[dict]) -> dict[str, list[dict]]:
    """{task: cells best first by the mean held-out return after K steps}."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        by_task[c["task"]].append(c)
    return {task: sorted(cs, key=lambda c: -c["after"][0]) for task, cs in sorted(by_task.items())}


def _interval_text(c: dict) -> str:
    iv = c.get("interval")
    return "n/a" if iv is None else f"[{iv.low:.2f}, {iv.high:.2f}]"


def _difference_line(a: dict, b: dict) -> str:
    """``a`` minus ``b``: the difference of means, its 95% bootstrap interval and whether it is within noise (the
    interval contains 0; ``metarl.apps.stats.within_noise``)."""
    from metarl.apps.stats import difference

    name = f"{a['backbone']} ({a['method']}) vs {b['backbone']} ({b['method']})"
    if "per_task" not in a or "per_task" not in b:
        return f"- {name}: no per-task values, not tested"
    d = difference(a["per_task"], b["per_task"])  # within_noise's own test, without a second bootstrap
    verdict = "beyond noise" if d.excludes(0.0) else "within noise"
    return f"- {name}: Δ = {d.mean:.2f}, 95% interval [{d.low:.2f}, {d.high:.2f}]: {verdict}"


def noise_lines(cells: list[dict]) -> list[str]:
    """Each cell against the family's best (``_difference_line``)."""
    return [_difference_line(cells[0], c) for c in cells[1:]]


BASELINE = "multitask"


def baseline_lines(cells: list[dict]) -> list[str]:
    """Per backbone, each other method against the multitask baseline of the same backbone (``_difference_line``);
    none where a backbone has no baseline."""
    base = {c["backbone"]: c for c in cells if c["method"] == BASELINE}
    return [_difference_line(c, base[c["backbone"]]) for c in sorted(cells, key=lambda c: (c["backbone"], c["method"]))
            if c["method"] != BASELINE and c["backbone"] in base]


def ranking_markdown(cells: list[dict]) -> str:
    """Per family: the ranked table and which differences to the best are within noise."""
    parts = []
    for task, cs in ranked(cells).items():
        k = max((c["steps"][-1] for c in cs if c["steps"]), default=0)
        head = ["rank", "backbone", "method", "seeds", "params", "held-out before (θ)",
                f"held-out after {k} step{'s' * (k != 1)}", "95% interval (seed × task)", "env steps (budget)",
                "eval env steps", "iters", "wall time (s)"]
        lines = [f"### {task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for rank, c in enumerate(cs, start=1):
            params = c["num_params"][0]
            lines.append("| " + " | ".join([
                str(rank), c["backbone"], c["method"], str(c["seeds"]),
                "n/a" if math.isnan(params) else f"{int(round(params)):,}",
                _fmt(c.get("return_step_0", (math.nan, math.nan)), 2), _fmt(c["after"], 2), _interval_text(c),
                _fmt(c["env_steps"], 0), _fmt(c["eval_env_steps"], 0), f"{c['iterations'][0]:.0f}",
                _fmt(c["wall_s"], 1)]) + " |")
        noise = noise_lines(cs)
        if noise:
            lines += ["", "Differences to the best (bootstrap over seed × held-out task, 95%):", "", *noise]
        against = baseline_lines(cs)
        if against:
            lines += ["", "Each method against the multitask baseline of its backbone (same bootstrap):", "", *against]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# --- would early stopping have kept the ranking? ----------------------------------------------------------------
def asha_check(trials: list[Trial], *, grace_period: float, reduction_factor: float = 4) -> list[str]:
    """Replay the recorded results through ``PerGroupASHA`` (per family, on the held-out metric, clock in env
    steps, max_t = the longest trial's env steps; ``tune_configs.schedulers.replay``) and compare the ranking of
    trials by the value each would have ended with against the recorded final ranking: one line per family with
    the trials it stops, the fraction of trial pairs whose order is preserved and whether the best survives."""
    from tune_configs.schedulers import PerGroupASHA, replay

    lines = []
    by_task: dict[str, list[Trial]] = defaultdict(list)
    for t in trials:
        if _fresh_rows(t):
            by_task[t.key[0]].append(t)
    for task, ts in sorted(by_task.items()):
        max_t = max(t.rows[-1].get("env_steps/lifetime", 0.0) for t in ts)
        sched = PerGroupASHA(metric=EVAL_POST, mode="max", max_t=max_t, grace_period=min(grace_period, max_t),
                             reduction_factor=reduction_factor, fresh_attr="eval/fresh")
        stop_at = replay(sched, {t.name: ({"task": task}, t.rows) for t in ts})
        final = {t.name: _fresh_rows(t)[-1][EVAL_POST] for t in ts}
        early = {t.name: t.rows[stop_at[t.name]].get(EVAL_POST, math.nan) for t in ts}
        pairs = [(a, b) for i, a in enumerate(final) for b in list(final)[i + 1:]]
        kept = sum(np.sign(final[a] - final[b]) == np.sign(early[a] - early[b]) for a, b in pairs)
        stopped = sum(stop_at[t.name] < len(t.rows) - 1 for t in ts)
        best = max(final, key=final.get)
        survives = stop_at[best] == len(next(t for t in ts if t.name == best).rows) - 1
        lines.append(f"- {task}: ASHA (grace {grace_period:,.0f} env steps, reduction factor {reduction_factor:g}) "
                     f"stops {stopped} of {len(ts)} trials; {kept}/{len(pairs)} trial pairs keep their final order"
                     f"{f' ({kept / len(pairs):.0%})' if pairs else ''}; the best trial "
                     f"{'survives' if survives else 'is stopped'}")
    return lines


# --- plots ------------------------------------------------------------------------------------------------------
def _learning_curves(ts: list[Trial]) -> tuple[np.ndarray, np.ndarray]:
    """(x, curves): mean training env steps and held-out return after K at each evaluation, (seeds, evals)."""
    rows = [_fresh_rows(t) for t in ts]
    n = max(len(r) for r in rows)
    x, y = np.full((len(ts), n), np.nan), np.full((len(ts), n), np.nan)  # ASHA may stop some seeds early
    for i, rs in enumerate(rows):
        x[i, : len(rs)] = [r.get("env_steps/lifetime", np.nan) for r in rs]
        y[i, : len(rs)] = [r[EVAL_POST] for r in rs]
    with np.errstate(invalid="ignore"), _quiet():
        return np.nanmean(x, axis=0), y


#: line style per method in the learning plots (a backbone keeps one colour across methods)
METHOD_STYLE = {"maml": "-", "multitask": "--", "rl2": "-."}


def _colours(backbones) -> dict[str, str]:
    """One colour of matplotlib's default cycle per backbone, in sorted order."""
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {b: cycle[i % len(cycle)] for i, b in enumerate(sorted(set(backbones)))}


def plot(trials: list[Trial], cells: list[dict], plots_dir: Path) -> list[Path]:
    """learning_<task>.png and adaptation_<task>.png per task with held-out evaluations; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in sorted({c["task"] for c in cells}):
        fig, ax = plt.subplots(figsize=(7.5, 4))
        groups: dict[tuple, list[Trial]] = defaultdict(list)
        for t in trials:
            if t.key[0] == task and _fresh_rows(t):
                groups[t.key[1:]].append(t)
        colour = _colours(b for b, _ in groups)
        for (backbone, method), ts in sorted(groups.items()):
            x, curves = _learning_curves(ts)
            with np.errstate(invalid="ignore"), _quiet():
                mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
            ax.plot(x / 1e6, mean, marker="o", ms=3, label=_label(backbone, method), color=colour[backbone],
                    ls=METHOD_STYLE.get(method, ":"))
            ax.fill_between(x / 1e6, mean - std, mean + std, color=colour[backbone], alpha=0.15)
        k = max((c["steps"][-1] for c in cells if c["task"] == task and c["steps"]), default=0)
        ax.set(title=f"{task}: held-out return after {k} inner step(s), mean ± std over seeds",
               xlabel="training env steps (millions; env_steps/lifetime)",
               ylabel=f"held-out return after {k} step(s)\n(episode reward sum)")
        written.append(_save(fig, ax, plots_dir / f"learning_{task}.png"))

        fig, ax = plt.subplots(figsize=(6.5, 4))
        mine = [c for c in cells if c["task"] == task]
        colour = _colours(c["backbone"] for c in mine)
        for i, c in enumerate(mine):
            ks = np.asarray(c["steps"], dtype=float) + 0.03 * (i - (len(mine) - 1) / 2)  # bars side by side
            ms = np.array([c[f"return_step_{k}"] for k in c["steps"]])  # (K+1, 2)
            ax.errorbar(ks, ms[:, 0], yerr=ms[:, 1], marker="o", capsize=3, label=_label(c["backbone"], c["method"]),
                        color=colour[c["backbone"]], ls=METHOD_STYLE.get(c["method"], ":"))
        ax.set(title=f"{task}: held-out return vs inner steps (last evaluation)", xlabel="inner steps k",
               ylabel="held-out return with θ_k\n(episode reward sum)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        written.append(_save(fig, ax, plots_dir / f"adaptation_{task}.png"))
    return written


class _quiet:
    """Silence numpy's 'Mean of empty slice' for iterations no seed reached."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def _save(fig, ax, path: Path) -> Path:
    """Grid, legend outside the data (right of the axes), 150 dpi PNG cropped to its content."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def evaluate_trials(exp_dir: Path, trials: list[Trial], *, adapt_steps: int, num_tasks: int,
                    episodes: int) -> list[dict]:
    """Held-out evaluation of each trial's last checkpoint; cells like ``summarize`` (return_step_k over seeds)."""
    from metarl.apps.evaluate import evaluate

    per_trial: dict[str, list[float]] = {}
    successes: dict[str, list[float]] = {}
    for t in trials:
        ckpts = sorted((exp_dir / t.name).glob("checkpoint_*"))
        if not ckpts:
            logger.warning("report: %s has no checkpoint; not evaluated", t.name)
            continue
        try:  # checksums verified; a corrupt checkpoint skips this trial, named
            res = evaluate(ckpts[-1], adapt_steps=adapt_steps, episodes=episodes, num_tasks=num_tasks, seed=0)
        except (ValueError, FloatingPointError) as e:
            logger.warning("report: %s not evaluated: %s", t.name, e)
            continue
        per_trial[t.name] = [s["return_mean"] for s in res["steps"]]
        successes[t.name] = [s.get("success_rate", math.nan) for s in res["steps"]]
    groups: dict[tuple, list[list[float]]] = defaultdict(list)
    success_groups: dict[tuple, list[list[float]]] = defaultdict(list)
    for t in trials:
        if t.name in per_trial:
            groups[t.key].append(per_trial[t.name])
            success_groups[t.key].append(successes[t.name])
    cells = []
    for (task, backbone, method), rets in sorted(groups.items()):
        cell = {"task": task, "backbone": backbone, "method": method, "seeds": len(rets),
                "steps": list(range(adapt_steps + 1))}
        for k in range(adapt_steps + 1):
            cell[f"return_step_{k}"] = _mean_std([r[k] for r in rets])
            if not any(math.isnan(r[k]) for r in success_groups[(task, backbone, method)]):
                cell[f"success_step_{k}"] = _mean_std([r[k] for r in success_groups[(task, backbone, method)]])
        cell["gain"] = _mean_std([r[-1] - r[0] for r in rets])
        cells.append(cell)
    return cells


def evaluation_table(cells: list[dict]) -> str:
    k_max = max(c["steps"][-1] for c in cells)
    head = ["task", "backbone", "method", "seeds", "return before (θ)",
            *[f"after {k} step{'s' * (k > 1)}" for k in range(1, k_max + 1)], "gain"]
    success = _with_success(head, cells)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        lines.append("| " + " | ".join([c["task"], c["backbone"], c["method"], str(c["seeds"]),
                                         *[_fmt(c[f"return_step_{k}"], 2) for k in range(k_max + 1)],
                                         _fmt(c["gain"], 2), *([_success(c)] if success else [])]) + " |")
    return "\n".join(lines)


def short_of_budget(trials: list[Trial]) -> list[str]:
    """A line per trial whose last result is short of its budget (``budget_env_steps`` on ``env_steps/lifetime``,
    ``budget_iterations`` on ``training_iteration``): still running, or stopped early (a scheduler, an error)."""
    lines = []
    for t in trials:
        last = t.rows[-1] if t.rows else {}
        for budget_key, column, unit in (("budget_env_steps", "env_steps/lifetime", "env steps"),
                                         ("budget_iterations", "training_iteration", "iterations")):
            budget, done = t.params.get(budget_key), last.get(column, 0.0)
            if budget and not done >= budget:
                lines.append(f"- {t.name}: {done:,.0f} of {budget:,.0f} {unit}")
                break
    return lines


# --- the curves as data -------------------------------------------------------------------------------------------
def curves(trials: list[Trial]) -> list[dict]:
    """Per trial, every fresh held-out evaluation as data (what the plots and the ranking read), for other plots:
    training env steps, evaluation env steps, wall seconds, the held-out return after k = 0..K inner steps and
    after K per held-out task."""
    out = []
    for t in trials:
        rows = _fresh_rows(t)
        ks = _eval_steps(rows)
        task, backbone, method = t.key
        out.append({"trial": t.name, "task": task, "backbone": backbone, "method": method,
                    "seed": t.params.get("seed"), "num_params": t.rows[-1].get("model/num_params") if t.rows else None,
                    "evaluations": [{"iteration": r.get("training_iteration"), "env_steps": r.get("env_steps/lifetime"),
                                     "eval_env_steps": r.get("eval/env_steps_lifetime"), "wall_s": r.get("time_total_s"),
                                     "return_step": [r.get(f"eval/return_step_{k}") for k in ks],
                                     "task_returns": _task_returns(r)} for r in rows]})
    return out


def _sweep_meta(exp_dir: Path) -> dict | None:
    """``exp_dir/sweep.json`` (the sweep's plan, provenance, matched widths), or None without one."""
    path = exp_dir / "sweep.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_curves(exp_dir: Path, trials: list[Trial], sweep: dict | None) -> Path:
    """``exp_dir/results.json``: the sweep's plan and provenance (``sweep``, from ``_sweep_meta``) and ``curves``."""
    from metarl.apps.provenance import json_safe

    if sweep:  # the storage as resolved on the machine that ran it; the provenance's command has it as given
        sweep = {**sweep, "plan": {k: v for k, v in sweep.get("plan", {}).items() if k != "storage"}}
    out = exp_dir / "results.json"
    out.write_text(json.dumps(json_safe({"sweep": sweep, "trials": curves(trials)}), indent=1), encoding="utf-8")
    return out


def write_report(exp_dir: str | Path, *, evaluate_steps: int = 0, eval_tasks: int = 10,
                 eval_episodes: int = 10, asha_grace: float = 0) -> Path:
    """Write ``exp_dir/report.md``, ``exp_dir/plots/*.png`` and ``exp_dir/results.json`` (``write_curves``);
    returns the report path.

    ``evaluate_steps`` > 0 adds the held-out evaluation of every trial's last checkpoint (``evaluate_trials``).
    """
    exp_dir = Path(exp_dir)
    skipped: list[str] = []
    trials = load_trials(exp_dir, skipped)
    cells = summarize(trials)
    held = heldout_cells(trials)
    pngs = plot(trials, held, exp_dir / "plots")
    sweep = _sweep_meta(exp_dir)
    write_curves(exp_dir, trials, sweep)
    in_context = in_context_cells(trials)
    pngs += plot_in_context(in_context, exp_dir / "plots") if in_context else []
    short = short_of_budget(trials)
    parts = [f"# Sweep report: {exp_dir.name}", "", f"{len(trials)} trials.", ""]
    if short:
        parts += ["## Trials short of their budget", "",
                  f"{len(short)} of {len(trials)} trials have not reached their budget (still running, or stopped "
                  "early): the tables below mix them with finished ones.", "", *short, ""]
    if held:
        parts += ["## Ranking on held-out tasks", "",
                  "Per task family, best first: each trial's current θ adapted on the family's held-out test tasks "
                  "by the trial itself (`eval/...`, the function of `metarl evaluate`; every method adapts, the "
                  "multitask baseline too), at its last evaluation. Mean ± std over seeds; the 95% interval is a "
                  "two-level bootstrap over (seed × held-out task); env steps = the training budget "
                  "(`env_steps/lifetime`), evaluation steps apart; wall time includes the evaluations.", "",
                  ranking_markdown(held), ""]
        if in_context:
            parts += ["## In-context adaptation (trial memory)", "",
                      "Trials with trial memory: at the last evaluation, the held-out return of the j-th episode "
                      "within each step's phase (`eval/return_step_k_episode_j`: the state runs on from episode to "
                      "episode of a sub-env's trial), mean ± std over seeds; `last − first` > 0 is adaptation in "
                      "context.", "", in_context_markdown(in_context), ""]
        if asha_grace > 0:
            parts += ["## Would ASHA have kept this ranking?", "",
                      "The recorded results replayed through one ASHA per task family (held-out metric, clock in "
                      "env steps, rungs on evaluations), trials ranked by the value each would have ended with:",
                      "", *asha_check(trials, grace_period=asha_grace), ""]
    parts += ["## Training metrics (meta-batch)", "",
              "Values at each trial's last iteration, mean ± std over seeds. `return before` uses θ, `after k steps` "
              "θ_k on the training meta-batch (the multitask baseline does not adapt in training, so these do not "
              "rank methods); `gain` = last step − before; params = the whole policy module (`model/num_params`).",
              "", markdown_table(cells), ""]
    if evaluate_steps > 0:
        ev = evaluate_trials(exp_dir, trials, adapt_steps=evaluate_steps, num_tasks=eval_tasks,
                             episodes=eval_episodes)
        if ev:
            parts += ["## Held-out evaluation", "",
                      f"Each trial's last checkpoint adapted on {eval_tasks} held-out test tasks (`test_tasks`, "
                      f"seed 1) with {eval_episodes} episodes per step and the trial's inner lr, the multi-task "
                      "baseline the same way (`metarl evaluate`). Mean over tasks per seed, then mean ± std over "
                      "seeds.", "", evaluation_table(ev), ""]
    if sweep:
        widths = sweep.get("matched_widths") or {}
        if widths:
            parts += ["## Matched backbone sizes", "", "| task | backbone | width | backbone params |",
                      "|---|---|---|---|"]
            parts += [f"| {t} | {b} | {v['width']} | {v['backbone_params']:,} |"
                      for t, row in widths.items() for b, v in row.items()]
            parts.append("")
    if skipped:
        parts += ["## Skipped trials", "", "Files that could not be read (each trial left out of the tables above):",
                  "", *[f"- {s}" for s in skipped], ""]
    parts += ["## Plots", "", *[f"![{p.stem}](plots/{p.name})" for p in pngs], ""]
    out = exp_dir / "report.md"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("dir", help="the Tune experiment folder (<storage>/<name> of metarl sweep)")
    parser.add_argument("--evaluate", type=int, default=0, metavar="K",
                        help="also adapt each trial's last checkpoint K inner steps on held-out tasks (0: off)")
    parser.add_argument("--eval-tasks", type=int, default=10, help="held-out test tasks per trial (with --evaluate)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="episodes per inner step (with --evaluate)")
    parser.add_argument("--asha-grace", type=float, default=0, metavar="ENV_STEPS",
                        help="also replay the results through per-family ASHA with this grace period (0: off)")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        out = write_report(args.dir, evaluate_steps=getattr(args, "evaluate", 0),
                           eval_tasks=getattr(args, "eval_tasks", 10), eval_episodes=getattr(args, "eval_episodes", 10),
                           asha_grace=getattr(args, "asha_grace", 0))
    except ValueError as e:
        if getattr(args, "debug", False):
            raise
        print(f"metarl report: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out} and {out.parent / 'plots'}/")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m metarl.apps.report", description=__doc__.splitlines()[0])
    sys.exit(main(add_arguments(parser).parse_args()))
