"""The README as it is now: every ```python block runs, every CLI example names flags its command has, and the
results tables equal what ``benchmarks/results_tables.py`` regenerates from the committed result files.

README.md is read when the tests run (never copied here). A snippet that trains runs at a tiny size: the sizes in
``TINY`` are substituted, and each substitution must find its target (so a reworded snippet fails loudly instead of
training at full size). CLI examples come from ```bash blocks, ``$ `` lines of plain blocks and inline code that
starts with ``metarl``, ``python -m metarl`` or ``python benchmarks/``; each distinct command runs with ``--help`` and must list every
``--flag`` the README uses with it.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: (pattern, replacement): a training snippet runs 2 tasks x 2 episodes on the local EnvRunner with 2 sub-envs
TINY = [
    (r"\bmeta_batch_size=\d+", "meta_batch_size=2"),
    (r"\bepisodes_per_task=\d+", "episodes_per_task=2"),
    (r"\bnum_env_runners=\d+", "num_env_runners=0"),
    (r"\bnum_envs_per_env_runner=\d+", "num_envs_per_env_runner=2"),
    (r"\bwidth=\d+", "width=8"),
    (r"\bray\.init\(\)", 'ray.init(address="local", num_cpus=2, include_dashboard=False)'),
]


def readme() -> str:
    return README.read_text(encoding="utf-8")


def fenced(text: str, lang: str) -> list[str]:
    """The bodies of the fenced blocks whose info string is ``lang`` ("" = a plain block)."""
    blocks, current, info = [], [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if info is None:
                info, current = line[3:].strip(), []
            else:
                if info == lang:
                    blocks.append("\n".join(current) + "\n")
                info = None
        elif info is not None:
            current.append(line)
    return blocks


def python_blocks() -> list[str]:
    return fenced(readme(), "python")


def tiny(code: str) -> str:
    """The snippet with TINY substituted; a snippet that trains must have every size substituted."""
    if ".train()" not in code:
        return code
    for pattern, repl in TINY:
        code, n = re.subn(pattern, repl, code)
        assert n, f"README training snippet no longer matches {pattern!r}: update TINY in {Path(__file__).name}"
    return code


def run_python(code: str, timeout: int = 280) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_readme_has_python_snippets():
    assert len(python_blocks()) >= 2


@pytest.mark.timeout(300)
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_snippet_runs(index):
    blocks = python_blocks()  # read again: the README may have changed since collection
    assert index < len(blocks), "README lost a python block since collection"
    code = tiny(blocks[index])
    proc = run_python(code)
    assert proc.returncode == 0, f"README python block {index} failed:\n{code}\n{proc.stderr[-3000:]}"
    if ".train()" in code:  # it prints the returns before and after adaptation
        numbers = [float(x) for x in proc.stdout.split()[-2:]]
        assert all(math.isfinite(x) for x in numbers), proc.stdout


# ---- CLI examples ------------------------------------------------------------------------------------------------
ENTRY = re.compile(r"(?:^|[\s;&|(])((?:python -m metarl(?:\.train)?|metarl|python benchmarks/\w+\.py)(?=\s|$).*)")


def shell_lines(text: str) -> list[str]:
    """Command lines of ```bash blocks (continuations joined, comments dropped), ``$ `` lines of plain blocks and
    inline code spans that start with an entry point."""
    lines = []
    for block in fenced(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(re.split(r"(?:^|\s)#", line, maxsplit=1)[0])
    for block in fenced(text, ""):
        lines += [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    lines += [s for s in re.findall(r"`([^`\n]+)`", text) if re.match(r"(python -m )?metarl\b|python benchmarks/", s)]
    return lines


def cli_examples() -> dict[tuple[str, ...], set[str]]:
    """{the command's argv before its arguments: the --flags the README uses with it}."""
    out: dict[tuple[str, ...], set[str]] = {}
    for line in shell_lines(readme()):
        m = ENTRY.search(line)
        if not m:
            continue
        words = shlex.split(m.group(1).replace("$", "_"), comments=False)
        if words[:3] == ["python", "-m", "metarl"] or words[0] == "metarl":
            rest = words[3:] if words[0] == "python" else words[1:]
            if rest and rest[0].startswith("<"):  # a placeholder: `python -m metarl <command>`
                continue
            sub = [rest[0]] if rest and not rest[0].startswith("-") else []
            cmd, args = ("-m", "metarl", *sub), rest[len(sub):]
        else:  # python -m metarl.train / python benchmarks/x.py
            cmd, args = tuple(words[1:3] if words[1] == "-m" else words[1:2]), words[3 if words[1] == "-m" else 2:]
        out.setdefault(cmd, set()).update(a.split("=")[0] for a in args if a.startswith("--"))
    return out


def test_cli_examples_are_found():
    commands = cli_examples()
    for cmd in [("-m", "metarl", "sweep"), ("-m", "metarl", "report"), ("-m", "metarl", "evaluate"),
                ("-m", "metarl.train")]:
        assert cmd in commands, sorted(commands)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cmd", sorted(cli_examples()), ids=" ".join)
def test_cli_example_flags_exist(cmd):
    flags = cli_examples().get(cmd)
    assert flags is not None, f"README no longer shows {cmd}"
    proc = subprocess.run([sys.executable, *cmd, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = set(re.findall(r"--[a-z][a-z0-9-]*", proc.stdout))
    assert flags <= listed, f"README uses {sorted(flags - listed)} with {' '.join(cmd)}, its --help does not list them"


# ---- results tables ----------------------------------------------------------------------------------------------
def test_results_tables_match_their_result_files():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import results_tables
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    stale = results_tables.stale()
    assert not stale, "regenerate with `python benchmarks/results_tables.py --write`:\n" + "\n".join(
        f"{name}:\n--- file\n{old}\n--- regenerated\n{new}" for name, (old, new) in stale.items())


COMPARISON_REPORT = """# Sweep report: hcdir-5M

## Ranking on held-out tasks

Per task family, best first: ...

### halfcheetah-dir

| rank | backbone | method | seeds | params | held-out before (θ) | held-out after 1 step | 95% interval (seed × task) | env steps (budget) | eval env steps | iters | wall time (s) |
|---|---|---|---|---|---|---|---|---|---|---|---|
| 1 | gru | maml | 2 | 49,992 | -17.76 ± 3.62 | 22.14 ± 5.54 | [16.16, 28.29] | 5000000 ± 0 | 1120000 ± 0 | 125 | 2666.9 ± 30.9 |
| 2 | mlp | multitask | 2 | 49,808 | -14.81 ± 1.00 | -7.79 ± 2.00 | [-13.82, -1.88] | 5000000 ± 0 | 2080000 ± 0 | 250 | 2274.8 ± 10.0 |

Differences to the best (bootstrap over seed × held-out task, 95%):

- gru (maml) vs mlp (multitask): Δ = 29.93, 95% interval [21.11, 38.54]: beyond noise

### navigation-2d

| rank | backbone | method | seeds | params | held-out before (θ) | held-out after 1 step | 95% interval (seed × task) | env steps (budget) | eval env steps | iters | wall time (s) |
|---|---|---|---|---|---|---|---|---|---|---|---|
| 1 | lru | maml | 2 | 5,000 | -40.00 ± 1.00 | -20.00 ± 1.00 | [-22.00, -18.00] | 1000 ± 0 | 100 ± 0 | 5 | 10.0 ± 1.0 |
| 2 | mlp | maml | 2 | 5,000 | -41.00 ± 1.00 | -21.00 ± 1.00 | [-23.00, -19.00] | 1000 ± 0 | 100 ± 0 | 5 | 10.0 ± 1.0 |

- lru (maml) vs mlp (maml): Δ = 1.00, 95% interval [-2.00, 4.00]: within noise

## Training metrics (meta-batch)
"""


def test_readme_comparison_selects_the_family_columns_and_noise_lines():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import results_tables
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert results_tables.readme_comparison(COMPARISON_REPORT) == "\n".join([
        "| rank | backbone | method | seeds | params | held-out before (θ) | held-out after 1 step | 95% interval "
        "(seed × task) | env steps (budget) | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| 1 | gru | maml | 2 | 49,992 | -17.76 ± 3.62 | 22.14 ± 5.54 | [16.16, 28.29] | 5000000 ± 0 | 2666.9 ± 30.9 |",
        "| 2 | mlp | multitask | 2 | 49,808 | -14.81 ± 1.00 | -7.79 ± 2.00 | [-13.82, -1.88] | 5000000 ± 0 | "
        "2274.8 ± 10.0 |",
        "",
        "Differences to the best (bootstrap over seed × held-out task, 95%):",
        "",
        "- gru (maml) vs mlp (multitask): Δ = 29.93, 95% interval [21.11, 38.54]: beyond noise",
    ])
