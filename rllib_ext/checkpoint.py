"""Crash-safe checkpoints of a run folder: write aside, rename into place, then move the ``latest`` pointer.

Layout (``checkpoints/`` inside a run folder)::

    checkpoints/checkpoint_000002/   algo.save_to_path() output of the state after iteration 2
    checkpoints/checkpoint_000004/
    checkpoints/latest               one line: "checkpoint_000004"

A save goes to ``checkpoints/.tmp-checkpoint_<it>-<pid>/``, is renamed to its final name (``os.replace``, atomic on
one file system) and only then is ``latest`` rewritten (temp file + ``os.replace``). A process killed at any point
leaves ``latest`` naming a complete checkpoint; leftovers are ``.tmp-*`` folders, removed by ``clean_partial``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

LATEST = "latest"
CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^checkpoint_(\d{6,})$")
#: files every complete ``Algorithm.save_to_path`` folder has
_REQUIRED = ("rllib_checkpoint.json", "algorithm_state.pkl", "class_and_ctor_args.pkl")
POLICY_SUBDIR = Path("learner_group", "learner", "rl_module", "default_policy")


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint_{iteration:06d}"


def iteration_of(path: str | os.PathLike) -> int:
    """The iteration encoded in a ``checkpoint_<iteration>`` folder name."""
    m = _NAME.match(Path(path).name)
    if not m:
        raise ValueError(f"checkpoint folder name {Path(path).name!r} is not of the form checkpoint_<iteration:06d>")
    return int(m.group(1))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def is_complete(ckpt: str | os.PathLike) -> bool:
    ckpt = Path(ckpt)
    return ckpt.is_dir() and all((ckpt / f).is_file() for f in _REQUIRED) and (ckpt / POLICY_SUBDIR).is_dir()


def save_checkpoint(
    algo, run_dir: str | os.PathLike, iteration: int, *, before_rename: Callable[[Path], None] | None = None
) -> Path:
    """Save ``algo`` as ``<run_dir>/checkpoints/checkpoint_<iteration>`` and point ``latest`` at it.

    ``before_rename(tmp_path)`` runs after the state is written and before anything becomes visible (tests use it
    to simulate a crash mid-save).
    """
    ckpt_dir = Path(run_dir).resolve() / CHECKPOINTS  # absolute: RLlib reads a relative path as a URI
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(iteration)
    tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    algo.save_to_path(str(tmp))
    if not is_complete(tmp):
        raise RuntimeError(f"checkpoint write of iteration {iteration} to {tmp} is incomplete; `latest` left as is")
    if before_rename is not None:
        before_rename(tmp)
    final = ckpt_dir / name
    if final.exists():  # a stale checkpoint of a run resumed from an earlier one: replace it
        old = ckpt_dir / f".tmp-old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    write_text_atomic(ckpt_dir / LATEST, name + "\n")
    logger.info("checkpoint %s written", final)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``<run_dir>/checkpoints/latest`` names, or None if there is none yet."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    ckpt = pointer.parent / name
    if not _NAME.match(name) or not is_complete(ckpt):
        raise ValueError(f"{pointer} names {name!r}, which is not a complete checkpoint folder in {pointer.parent}")
    return ckpt


def clean_partial(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the ``.tmp-*`` leftovers of interrupted saves; returns what was removed."""
    ckpt_dir = Path(run_dir) / CHECKPOINTS
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        logger.warning("removed %d partial checkpoint write(s): %s", len(removed), [p.name for p in removed])
    return removed


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder (its ``checkpoints/latest``), a ``checkpoints/`` folder or a checkpoint folder -> checkpoint.

    Raises ValueError naming the path and what was expected when it is none of these or is incomplete.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint path {str(p)!r} does not exist")
    if is_complete(p):
        return p
    if (p / CHECKPOINTS / LATEST).is_file():
        return latest_checkpoint(p)
    if p.name == CHECKPOINTS and (p / LATEST).is_file():
        return latest_checkpoint(p.parent)
    if p.is_dir() and (p / "rllib_checkpoint.json").exists():
        missing = [f for f in (*_REQUIRED, str(POLICY_SUBDIR)) if not (p / f).exists()]
        raise ValueError(f"checkpoint {str(p)!r} is incomplete or corrupt: missing {missing}")
    raise ValueError(
        f"{str(p)!r} is not a checkpoint: expected a run folder with checkpoints/{LATEST}, or a folder written by "
        f"Algorithm.save_to_path (with {', '.join(_REQUIRED)})"
    )


def load_config(ckpt: str | os.PathLike):
    """The ``MAMLConfig`` a checkpoint was written with (unpickles RLlib classes: imports Ray, no ``ray.init``)."""
    import pickle

    from rllib_ext.config import MAMLConfig

    ckpt = resolve_checkpoint(ckpt)
    try:
        with open(ckpt / "class_and_ctor_args.pkl", "rb") as f:
            ctor = pickle.load(f)
        raw = ctor["ctor_args_and_kwargs"][0][0]
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"checkpoint {str(ckpt)!r}: cannot read its config from class_and_ctor_args.pkl: {e}") from e
    return raw if isinstance(raw, MAMLConfig) else MAMLConfig.from_dict(raw)
