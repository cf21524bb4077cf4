"""The repository stands alone: no tracked file names a folder of some machine or links outside the repo."""

from __future__ import annotations

import pathlib
import re
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
#: absolute folders of a machine, and links to the folder next to a checkout (which a user's clone does not have)
_UP = "." + "./"  # built from pieces so that this file itself names no such path
_SIBLING = _UP + "sha" + "red"  # the folder next to a checkout, which a user's clone does not have
_ROOTS = ["work/", "root/", r"home/\w", r"Users/\w", r"tmp/\w"]  # absolute folders of some machine
FORBIDDEN = re.compile(r"(?<![\w.])(" + "|".join(["/" + r for r in _ROOTS] + [re.escape(_SIBLING)]) + ")")
#: (file, reason) pairs allowed to name a machine folder
ALLOWED = {
    "tests/test_cluster.py": "Ray's unix socket paths must stay below 108 characters: the head's temp dir is /tmp",
}


def offending_lines(files: list[str]) -> list[str]:
    out = []
    for rel in files:
        if rel in ALLOWED:
            continue
        try:
            text = (REPO / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary files (plots), files deleted in the work tree
        out += [f"{rel}:{i}: {line.strip()[:120]}" for i, line in enumerate(text.splitlines(), 1)
                if FORBIDDEN.search(line)]
    return out


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


def test_no_tracked_file_names_a_machine_folder_or_links_outside_the_repo():
    files = tracked_files()
    assert "README.md" in files
    assert offending_lines(files) == []


def test_the_check_sees_each_kind(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    planted = [f"see {_SIBLING}/PROTOCOL.md", "cd /" + "work/main && x", "out: /" + "tmp/run1",
               '"/' + 'root/.cache"', "/" + "home/alice/x"]
    for i, line in enumerate(planted):
        (tmp_path / f"f{i}.md").write_text(f"ok line\n{line}\n")
    (tmp_path / "fine.md").write_text("runs/sweeps, s3://bucket/tmp/x, docs/tasks.md, a/tmp/b\n")
    found = offending_lines([f"f{i}.md" for i in range(5)] + ["fine.md"])
    assert [f.split(":")[0] for f in found] == [f"f{i}.md" for i in range(5)]


def layout_block() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_readme_layout_names_every_module():
    """A newcomer finds each file in README's Layout: every module of the packages is named there."""
    block = layout_block()
    missing = []
    for pkg in ("metarl", "rllib_ext", "tune_configs"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO)
            if path.name == "__init__.py" or len(rel.parts) > 3 or rel.parts[1] in ("models", "tasks"):
                continue  # packages are named by their folder
            if not re.search(rf"(?<![\w/]){re.escape(path.name)}", block):
                missing.append(str(rel))
    assert missing == []
    for folder in ("models/", "tasks/", "apps/", "rllib_ext/", "tune_configs/", "benchmarks/", "docker/", "tests/"):
        assert folder in block
