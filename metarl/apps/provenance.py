"""What produced a results file: versions, git commit, the full config and the seeds (torch only; Ray lazily).

Every results file of the project carries ``provenance(config=..., seeds=...)`` under ``"provenance"`` so that a
number can be traced back to the code and settings that made it::

    {"created": "2026-11-25T23:30:00+00:00", "command": [...], "platform": "Linux-6.1", "cpus": 2,
     "versions": {"python": "3.11.9", "ray": "2.60.0", "torch": "2.13.0", ...},
     "git": {"commit": "be45971...", "dirty": true},
     "config": {...}, "seeds": {"seed": 0, "task_seed": 0}}
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: distributions whose versions decide the numbers (mujoco 4.0.0 and 3.17.0 are not bit-identical)
PACKAGES = ("ray", "torch", "gymnasium", "mujoco", "metaworld", "numpy")


def versions() -> dict[str, str | None]:
    """Installed versions of python and ``PACKAGES`` (None where a package is missing). Imports nothing."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_info(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding ``path`` (best effort)."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}


def json_safe(value: Any) -> Any:
    """A JSON-serialisable copy: numpy -> python, NaN/inf -> strings, classes -> qualified names, else repr."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, type) or callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def config_dict(config: Any) -> dict:
    """``config.to_dict()`` (RLlib configs), ``dataclasses.asdict`` or ``vars``, made JSON-safe."""
    if hasattr(config, "to_dict"):
        raw = config.to_dict()
    elif dataclasses.is_dataclass(config):
        raw = dataclasses.asdict(config)
    elif isinstance(config, dict):
        raw = config
    else:
        raw = vars(config)
    return json_safe(raw)


def relative_paths(value: Any, base: str | os.PathLike) -> Any:
    """A copy of a JSON-safe value whose absolute path strings are written relative to ``base`` (``..`` allowed on
    the same file system), so that results files name no machine's folders. Other strings are left as they are."""
    if isinstance(value, dict):
        return {k: relative_paths(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, base) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and "://" not in value:
        try:
            return os.path.relpath(value, base)
        except ValueError:  # another drive (Windows)
            return os.path.basename(value)
    return value


def provenance(*, config: Any = None, seeds: dict | None = None, extra: dict | None = None,
               base: str | os.PathLike | None = None) -> dict:
    """The provenance block of a results file (see the module docstring). Paths in the command line and in
    ``extra`` are written relative to ``base`` (default: the working directory); the host name is not recorded."""
    base = os.getcwd() if base is None else base
    block = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": relative_paths(json_safe(list(sys.argv)), base),
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "versions": versions(),
        "git": git_info(),
        "config": config_dict(config) if config is not None else None,
        "seeds": json_safe(seeds or {}),
    }
    return {**block, **relative_paths(json_safe(extra or {}), base)}
