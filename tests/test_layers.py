"""The one-way chain of layers, checked on every import statement of every module (AST: inside functions too).

    0 core          metarl/ (models, tasks, maml.py, rl.py, adaptation.py, ...): torch + gymnasium only
    1 rllib         rllib_ext/: the only code that knows RLlib
    2 tune          tune_configs/: sweeps as data
    3 apps          metarl/apps/ and the entry shims metarl/cli.py, metarl/__main__.py, metarl/train.py

A module may import from its own layer and the layers below it; an arrow that points up the chain fails.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("metarl", "rllib_ext", "tune_configs")
LAYERS = {"core": 0, "rllib": 1, "tune": 2, "apps": 3}
#: modules of the metarl package that belong to the application layer (thin entry shims)
APP_SHIMS = {"metarl.cli", "metarl.__main__", "metarl.train"}
#: third-party packages a layer may not import (the core knows nothing of Ray)
FORBIDDEN_THIRD_PARTY = {"core": ("ray",), "rllib": (), "tune": (), "apps": ()}


def layer_of(module: str) -> str | None:
    """The layer of a project module name (None for third-party modules)."""
    top = module.split(".")[0]
    if top == "rllib_ext":
        return "rllib"
    if top == "tune_configs":
        return "tune"
    if top == "metarl":
        if module in APP_SHIMS or module == "metarl.apps" or module.startswith("metarl.apps."):
            return "apps"
        return "core"
    return None


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the tree, relative imports resolved."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            # `from metarl import apps` names a submodule
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names if layer_of(f"{name}.{a.name}") == "apps"]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
    return out


def project_files() -> list[pathlib.Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def violations(files: list[pathlib.Path]) -> list[str]:
    bad = []
    for path in files:
        module = module_name(path)
        src_layer = layer_of(module)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, target in imported_modules(tree, module, path.name == "__init__.py"):
            dst_layer = layer_of(target)
            where = f"{path.relative_to(REPO)}:{line}"
            if dst_layer is not None and LAYERS[dst_layer] > LAYERS[src_layer]:
                bad.append(f"{where}: {src_layer} module {module} imports {target} ({dst_layer} layer)")
            if target.split(".")[0] in FORBIDDEN_THIRD_PARTY[src_layer]:
                bad.append(f"{where}: {src_layer} module {module} imports {target}")
    return bad


def test_no_import_points_up_the_chain():
    files = project_files()
    assert len(files) > 30  # the walk found the packages
    assert violations(files) == []


def test_every_package_module_has_a_layer():
    for path in project_files():
        assert layer_of(module_name(path)) in LAYERS, path


@pytest.mark.parametrize(
    "src, code, expect",
    [
        ("metarl/rl.py", "def f():\n    from rllib_ext.module import MetaRLModule\n", "imports rllib_ext.module"),
        ("metarl/maml.py", "import ray\n", "imports ray"),
        ("rllib_ext/x.py", "from metarl.apps.records import flatten\n", "apps layer"),
        ("rllib_ext/x.py", "import importlib\nimportlib.import_module('tune_configs.baselines')\n", "tune layer"),
        ("tune_configs/x.py", "from metarl import apps\n", "apps layer"),
        ("metarl/models/x.py", "from ..apps import cli\n", "apps layer"),
    ],
)
def test_the_walk_catches_an_upward_arrow(tmp_path, monkeypatch, src, code, expect):
    """The checker itself: a planted upward import (inside a function, relative, dynamic) is reported."""
    fake = tmp_path / src
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text(code)
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    found = violations([fake])
    assert found and all(expect in f for f in found), found


def test_downward_and_same_layer_imports_pass(tmp_path, monkeypatch):
    fake = tmp_path / "metarl/apps/x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import ray\nfrom rllib_ext.config import MAMLConfig\nfrom tune_configs import baselines\n"
                    "from metarl import tasks\nfrom metarl.apps import records\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    assert violations([fake]) == []


def test_no_module_of_the_metarl_package_imports_ray_or_the_upper_layers_at_import_time():
    """Even the commands (metarl/apps) import RLlib, Ray and Tune inside functions: `metarl --help` and the core
    stay light, and Ray workers that import metarl get no framework with it."""
    bad = []
    for path in sorted((REPO / "metarl").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module-level statements only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                    if n.split(".")[0] in ("ray", "rllib_ext", "tune_configs")]
    assert bad == []
