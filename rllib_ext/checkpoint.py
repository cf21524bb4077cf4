"""Crash-safe checkpoints of a run folder: write aside, rename into place, then move the ``latest`` pointer.

Layout (``checkpoints/`` inside a run folder)::

    checkpoints/checkpoint_000002/   algo.save_to_path() output of the state after iteration 2
    checkpoints/checkpoint_000004/
    checkpoints/latest               one line: "checkpoint_000004"

A save goes to ``checkpoints/.tmp-checkpoint_<it>-<pid>/``, is renamed to its final name (``os.replace``, atomic on
one file system) and only then is ``latest`` rewritten (temp file + ``os.replace``). A process killed at any point
leaves ``latest`` naming a complete checkpoint; leftovers are ``.tmp-*`` folders, removed by ``clean_partial``.

Checksums: every save (ours, and ``MAML.save_checkpoint`` for Tune's trial checkpoints) writes ``checksums.json``,
the sha256 and size of every file of the checkpoint, before the checkpoint becomes visible. Every load verifies it
(``verify_checksums``: ``resolve_checkpoint``, ``latest_checkpoint``, ``MAML.restore_from_path``) and names the
file that differs. Checkpoints are pickles: checksums catch corruption, not tampering; load only your own.

Fault injection (tests): ``METARL_FAULT_IN_SAVE=kill`` SIGKILLs the process inside ``save_checkpoint`` after the
state is written and before it becomes visible (``=raise`` raises ``RuntimeError`` there instead); ``kill@N`` /
``raise@N`` only in the save of iteration N.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

LATEST = "latest"
CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^checkpoint_(\d{6,})$")
#: files every complete ``Algorithm.save_to_path`` folder has
_REQUIRED = ("rllib_checkpoint.json", "algorithm_state.pkl", "class_and_ctor_args.pkl")
POLICY_SUBDIR = Path("learner_group", "learner", "rl_module", "default_policy")
CHECKSUMS = "checksums.json"
#: env var of the fault-injection hook inside ``save_checkpoint`` (tests): "kill" or "raise"
FAULT_ENV = "METARL_FAULT_IN_SAVE"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, incomplete, or of another task/structure (the message says which)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(ckpt: Path) -> list[str]:
    return sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def write_checksums(ckpt: str | os.PathLike) -> Path:
    """Write ``<ckpt>/checksums.json``: {"sha256": {relpath: hex}, "bytes": {relpath: size}} of every file."""
    ckpt = Path(ckpt)
    files = _files(ckpt)
    manifest = {"format": 1, "sha256": {f: _sha256(ckpt / f) for f in files},
                "bytes": {f: (ckpt / f).stat().st_size for f in files}}
    write_text_atomic(ckpt / CHECKSUMS, json.dumps(manifest, indent=1, sort_keys=True))
    return ckpt / CHECKSUMS


def verify_checksums(ckpt: str | os.PathLike, *, missing_ok: bool = True) -> bool:
    """Compare every file listed in ``checksums.json`` with its recorded size and sha256.

    Raises ``CheckpointError`` naming the first file that is missing, of another size or another content. A
    checkpoint without a manifest (written before checksums existed, or not a local folder) is accepted with a
    warning when ``missing_ok``. Files added later (Tune adds its own metadata) are not checked. True if verified.
    """
    ckpt = Path(ckpt)
    manifest_path = ckpt / CHECKSUMS
    if not manifest_path.is_file():
        if not missing_ok:
            raise CheckpointError(f"checkpoint {str(ckpt)!r} has no {CHECKSUMS}: its files cannot be verified")
        if ckpt.is_dir():
            logger.warning("checkpoint %s has no %s (written before checksums were recorded): not verified", ckpt,
                           CHECKSUMS)
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        sums, sizes = manifest["sha256"], manifest["bytes"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint file {manifest_path} is corrupt ({type(e).__name__}: {e})") from e
    for rel, digest in sorted(sums.items()):
        f = ckpt / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing (listed in {CHECKSUMS})")
        if f.stat().st_size != sizes.get(rel):
            raise CheckpointError(f"checkpoint file {f} is corrupt: {f.stat().st_size} bytes, {sizes.get(rel)} "
                                  f"recorded at save time (truncated or overwritten)")
        if _sha256(f) != digest:
            raise CheckpointError(f"checkpoint file {f} is corrupt: its sha256 differs from the one recorded at "
                                  "save time")
    return True


def diagnose_unreadable(ckpt: str | os.PathLike, error: BaseException) -> CheckpointError | None:
    """After a failed load: the first ``.pkl`` file of ``ckpt`` that does not unpickle, as a named error."""
    for f in sorted(Path(ckpt).rglob("*.pkl")):
        try:
            load_pickle(f)
        except CheckpointError as e:
            return e
    return None


def load_pickle(f: Path):
    """Unpickle one checkpoint file; ``CheckpointError`` naming it when it is empty or does not unpickle."""
    if f.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {f} is empty (0 bytes): the checkpoint is corrupt")
    try:
        with open(f, "rb") as fh:
            return pickle.load(fh)
    except Exception as e:  # noqa: BLE001 - any unpickling failure names the file
        raise CheckpointError(f"checkpoint file {f} cannot be read ({type(e).__name__}: {e}): the checkpoint is "
                              "corrupt or truncated") from e


def _fault_hook(stage: str, iteration: int) -> None:
    what, _, at = os.environ.get(FAULT_ENV, "").partition("@")
    if at and int(at) != iteration:
        return
    if what == "kill":
        logger.warning("%s=kill: killing process %d %s", FAULT_ENV, os.getpid(), stage)
        os.kill(os.getpid(), signal.SIGKILL)
    elif what == "raise":
        raise RuntimeError(f"{FAULT_ENV}=raise: simulated failure {stage}")


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
    write_checksums(tmp)
    _fault_hook(f"inside save_checkpoint of iteration {iteration} (state written, not yet visible)", iteration)
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
    if not _NAME.match(name) or not ckpt.is_dir():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a checkpoint folder in {pointer.parent}")
    missing = [f for f in (*_REQUIRED, str(POLICY_SUBDIR)) if not (ckpt / f).exists()]
    if missing:
        raise CheckpointError(f"{pointer} names {name!r}, which is incomplete: {', '.join(missing)} is missing")
    verify_checksums(ckpt)
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
        verify_checksums(p)
        return p
    if (p / CHECKPOINTS / LATEST).is_file():
        return latest_checkpoint(p)
    if p.name == CHECKPOINTS and (p / LATEST).is_file():
        return latest_checkpoint(p.parent)
    if p.is_dir() and (p / "rllib_checkpoint.json").exists():
        missing = [f for f in (*_REQUIRED, str(POLICY_SUBDIR)) if not (p / f).exists()]
        raise CheckpointError(f"checkpoint {str(p)!r} is incomplete or corrupt: missing {missing}")
    raise ValueError(
        f"{str(p)!r} is not a checkpoint: expected a run folder with checkpoints/{LATEST}, or a folder written by "
        f"Algorithm.save_to_path (with {', '.join(_REQUIRED)})"
    )


def load_config(ckpt: str | os.PathLike):
    """The ``MAMLConfig`` a checkpoint was written with (unpickles RLlib classes: imports Ray, no ``ray.init``)."""
    from rllib_ext.config import MAMLConfig

    ckpt = resolve_checkpoint(ckpt)
    try:
        with open(ckpt / "class_and_ctor_args.pkl", "rb") as f:
            ctor = pickle.load(f)
        raw = ctor["ctor_args_and_kwargs"][0][0]
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"checkpoint file {ckpt / 'class_and_ctor_args.pkl'} cannot be read: its config is "
                              f"lost ({type(e).__name__}: {e})") from e
    return raw if isinstance(raw, MAMLConfig) else MAMLConfig.from_dict(raw)


def _shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}


def check_policy_fits(module, config, ckpt: str | os.PathLike) -> None:
    """``CheckpointError`` in words when the policy weights of ``ckpt`` do not fit the model ``module`` of
    ``config`` (the task's spaces, the backbone's parameter names and shapes): weights of another task/structure."""
    from metarl import tasks

    ckpt = Path(ckpt)
    what = f"task {config.task!r}, backbone {config.backbone!r}, width {config.width}"
    env = tasks.make(config.task)  # the spaces do not depend on the task options
    for name, space in (("observation", env.observation_space), ("action", env.action_space)):
        mine = getattr(module, f"{name}_space", None)
        if mine is not None and (mine.shape != space.shape or type(mine) is not type(space)):
            raise CheckpointError(
                f"checkpoint {str(ckpt)!r}: its policy was built for {name} space {mine}, but its config ({what}) "
                f"has {space}: the policy comes from another task"
            )
    env.close()
    state_file = ckpt / POLICY_SUBDIR / "module_state.pkl"
    if not state_file.is_file():
        return
    stored = _shapes(load_pickle(state_file))
    need = _shapes(module.state_dict())
    missing, extra = sorted(set(need) - set(stored)), sorted(set(stored) - set(need))
    differ = [(k, stored[k], need[k]) for k in sorted(set(need) & set(stored)) if stored[k] != need[k]]
    if missing or extra or differ:
        detail = "; ".join(filter(None, [
            f"parameters the model needs but the file lacks: {missing[:3]}" if missing else "",
            f"parameters the model does not have: {extra[:3]}" if extra else "",
            ", ".join(f"{k} is {a} in the file but {b} in the model" for k, a, b in differ[:3]),
        ]))
        raise CheckpointError(
            f"checkpoint file {state_file} holds weights of another task or model structure than its config "
            f"({what}): {detail}"
        )


def check_finite_parameters(module, ckpt: str | os.PathLike) -> None:
    """``CheckpointError`` naming the first parameter of ``module`` (as loaded from ``ckpt``) that is not finite."""
    import torch

    for name, p in module.state_dict().items():
        if torch.is_tensor(p) and p.is_floating_point() and not bool(torch.isfinite(p).all()):
            bad = int((~torch.isfinite(p)).sum())
            raise CheckpointError(f"checkpoint {str(ckpt)!r}: parameter {name!r} holds {bad} non-finite value(s) "
                                  "(nan/inf): the checkpoint is corrupt or its run diverged")
