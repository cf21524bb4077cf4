"""The run folder of ``metarl train``: a local path or a URI (``pyarrow.fs``), and the checks made before Ray starts
(an existing run needs ``--resume``; ``--resume`` needs an existing run; a resume must keep the model's structure and
may not go backwards; ``--out`` must be writable), and the lock that keeps a second writer out of a run folder."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

from metarl.apps.flags import config_from_args
from metarl.apps.provenance import json_safe

RESULTS = "results.json"
LOCK = ".lock"
#: config fields that decide the shape of the weights: a resume must not change them
STRUCTURAL = ("task", "backbone", "width", "backbone_kwargs", "dtype", "memory", "trial_inputs")
#: fields a resume takes from its own command line even where their flags are not given: the layout (``auto`` is
#: resolved per machine) and the run's length; every other field not given keeps the run's stored value
RESUME_FREE = ("num_env_runners", "num_learners", "num_gpus_per_learner", "budget_iterations", "budget_env_steps")


def is_uri(out: str) -> bool:
    return "://" in str(out)


class Output:
    """The run folder. For a URI the run is written to a local temp folder and uploaded with ``pyarrow.fs``."""

    def __init__(self, out: str):
        self.out = str(out)
        self.keep_local = False  # set after a failed upload: the local copy is then the only complete one
        if is_uri(self.out):
            import pyarrow.fs as pafs

            try:
                self.fs, self.remote = pafs.FileSystem.from_uri(self.out)
            except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError/... for a bad URI
                raise ValueError(f"--out {self.out}: not a usable URI ({type(e).__name__}: {e})") from e
            self.local = Path(tempfile.mkdtemp(prefix="metarl-run-"))
        else:
            self.fs = self.remote = None
            self.local = Path(self.out)

    def remote_exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        try:
            return self.fs.get_file_info(f"{self.remote}/{rel}".rstrip("/")).type != pafs.FileType.NotFound
        except Exception as e:  # noqa: BLE001 - permission, bucket or network errors of the file system
            raise ValueError(f"--out {self.out}: cannot be read ({type(e).__name__}: {e})") from e

    def check_writable(self) -> None:
        """ValueError (one line, naming --out) unless a run can be written there; nothing is left behind."""
        if self.fs is not None:
            self._check_remote_writable()
            return
        out = self.local
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {self.out} is an existing file, not a folder")
        probe_in = out
        while not probe_in.exists():
            probe_in = probe_in.parent
        if not probe_in.is_dir():
            raise ValueError(f"--out {self.out}: {probe_in} is a file, so no folder can be made under it")
        try:
            Path(tempfile.mkdtemp(prefix=".metarl-write-test-", dir=probe_in)).rmdir()
        except OSError as e:
            raise ValueError(f"--out {self.out} is not writable: cannot create a folder in {probe_in} ({e})") from e

    def _check_remote_writable(self) -> None:
        probe = f"{self.remote}/.metarl-write-test-{uuid.uuid4().hex}"
        try:
            self.fs.create_dir(self.remote, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except Exception as e:  # noqa: BLE001 - pyarrow's errors differ by file system
            raise ValueError(f"--out {self.out} is not writable ({type(e).__name__}: {e})") from e

    def download(self) -> None:
        """Fetch results and checkpoints of an earlier run (URI only)."""
        import pyarrow.fs as pafs

        if self.fs is not None and self.remote_exists(""):
            pafs.copy_files(self.remote, str(self.local), source_filesystem=self.fs)

    def upload(self, *rel: str) -> None:
        """Copy ``rel`` paths (files or folders) to the URI, in the given order (URI only). On failure the local
        copy is kept (``keep_local``) and the error names it."""
        import pyarrow.fs as pafs

        if self.fs is None:
            return
        try:
            for r in rel:
                src = self.local / r
                if src.exists():
                    if src.is_dir():
                        self.fs.create_dir(f"{self.remote}/{r}", recursive=True)
                    pafs.copy_files(str(src), f"{self.remote}/{r}", destination_filesystem=self.fs)
        except Exception as e:  # noqa: BLE001 - any upload failure: keep the only complete copy
            self.keep_local = True
            raise UploadError(
                f"upload to {self.out} failed ({type(e).__name__}: {e}); the run is kept in {self.local}: resume it "
                f"with --out {self.local} --resume, or copy that folder to {self.out} and resume there"
            ) from e

    def cleanup(self) -> None:
        if self.fs is not None and not self.keep_local:
            shutil.rmtree(self.local, ignore_errors=True)


class UploadError(RuntimeError):
    """The run could not be uploaded to its URI; the message names the local copy that was kept."""


class RunLock:
    """``<run folder>/.lock``: one writer per run folder. Created with O_EXCL; holds pid, host and start time.

    A lock whose process is gone (same host, pid not alive) is stale: it is reported and replaced. A lock of a live
    process, or of another host, refuses the run (ValueError naming the holder and the file)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_holder()  # raises unless stale (then removed: try again)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise ValueError(f"run folder lock {self.path}: another process took it meanwhile; try again")

    def in_use(self) -> bool:
        """Whether another process holds the lock now (a live process, another host's, or an unreadable lock);
        False when there is no lock or it is stale."""
        return self.path.exists() and not _stale(self._holder())

    def _holder(self) -> tuple[int, str] | None:
        """(pid, host) of the lock file; None when it cannot be read."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            return int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _check_holder(self) -> None:
        holder = self._holder()
        pid, host = holder if holder is not None else (None, None)
        if _stale(holder):
            print(f"note: stale lock {self.path} of process {pid}, which is no longer running (killed or crashed), "
                  "was removed", flush=True)
            self.path.unlink(missing_ok=True)
            return
        who = f"process {pid} on host {host}" if holder else "an unknown process (unreadable lock file)"
        raise ValueError(
            f"run folder {self.path.parent} is in use by {who} (lock file {self.path}): two runs may not write the "
            "same folder. Wait for it to end, or, if it is not running any more (e.g. it ran on another host), "
            "delete the lock file"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _stale(holder: tuple[int, str] | None) -> bool:
    """A lock of a process on this host that is no longer running (an unreadable lock is never stale)."""
    return holder is not None and holder[1] == socket.gethostname() and not _alive(holder[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- validation, before Ray -----------------------------------------------------------------------------------------
def _read_results(path: Path) -> dict:
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} exists but cannot be read as JSON ({e}); refusing to overwrite it") from e
    if not isinstance(results, dict) or not isinstance(results.get("records"), list):
        raise ValueError(f"{path} is not the results.json of a metarl run (no 'records' list); refusing to use it")
    return results


def _check_flags(args: argparse.Namespace):
    config = config_from_args(args)
    config.validate_meta()
    for flag in ("iterations", "checkpoint_every", "num_envs_per_runner"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} = {getattr(args, flag)} must be >= 1")
    for flag in ("num_env_runners", "num_learners"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} = {getattr(args, flag)} must be >= 0")
    return config


def _no_run_to_resume(args: argparse.Namespace, output: Output) -> ValueError:
    where = output.local if output.fs is None else output.out
    state = "does not exist" if output.fs is None and not output.local.exists() else f"holds no {RESULTS}"
    return ValueError(
        f"--resume: --out {args.out} {state}, so there is no run to resume (expected {where}/{RESULTS} and "
        f"{where}/checkpoints/latest). Check the path, or drop --resume to start a new run there"
    )


def prepare(args: argparse.Namespace) -> dict:
    """Validate flags, config and output folder, take the run folder's lock; return the plan.

    Raises ValueError (values in the message) with nothing written. The caller releases ``plan["lock"]``.
    """
    config = _check_flags(args)
    output = Output(args.out)
    lock = None
    try:
        exists = output.remote_exists(RESULTS) if output.fs is not None else (output.local / RESULTS).is_file()
        if exists and not args.resume:
            raise ValueError(
                f"--out {args.out} already holds {RESULTS}: pass --resume to continue that run (with --iterations as "
                "the new TOTAL) or choose another --out; nothing was overwritten"
            )
        if args.resume and not exists:
            raise _no_run_to_resume(args, output)
        output.check_writable()
        lock = RunLock(output.local).acquire() if output.fs is None else None
        plan = {"config": config, "output": output, "start": 0, "checkpoint": None, "results": None, "lock": lock}
        if exists:
            output.download()
            results = _read_results(output.local / RESULTS)
            if keep_stored_fields(args, results):
                config = plan["config"] = _check_flags(args)
            plan.update(_resume_plan(args, config, output, results))
    except BaseException:
        if lock is not None:
            lock.release()
        output.cleanup()
        raise
    return plan


def keep_stored_fields(args: argparse.Namespace, results: dict) -> dict:
    """``--resume``: every config field whose flag was not given takes the value the run last ran with (the
    provenance of results.json's last resume, else of its start), so that a default or a preset changed since never
    changes it; given flags win, ``RESUME_FREE`` fields are the command line's. A field the run's record lacks (added
    to the table since it started) takes its table default, the behaviour the run had before the field existed.
    Returns {field: value} kept (printed when not empty)."""
    from rllib_ext.fields import FIELDS

    last = ([r for r in results.get("resumes") or [] if isinstance(r, dict)] or [results])[-1]
    stored = (last.get("provenance") or {}).get("config") or {}
    given = getattr(args, "given_fields", frozenset())
    kept = {}
    for f in FIELDS if stored else ():  # a record without a config (an old run) keeps the command line's values
        if f.name in RESUME_FREE or f.dest in given:
            continue
        value = stored.get(f.name, f.default)
        if value != getattr(args, f.dest):
            setattr(args, f.dest, dict(value) if isinstance(value, dict) else value)
            kept[f.name] = value
    if kept:
        print("--resume: kept the run's " + ", ".join(f"{k}={v!r}" for k, v in kept.items())
              + " (their flags were not given)", flush=True)
    return kept


def _resume_plan(args: argparse.Namespace, config, output: Output, results: dict) -> dict:
    from rllib_ext.checkpoint import iteration_of, latest_checkpoint, load_config  # lazily: no RLlib at import

    ckpt = latest_checkpoint(output.local)  # raises if `latest` names a broken folder or a file's checksum differs
    done = iteration_of(ckpt) if ckpt is not None else 0
    if args.iterations < done:
        raise ValueError(
            f"--iterations = {args.iterations} is below the {done} iterations already completed in {args.out} "
            f"(checkpoint {ckpt.name if ckpt else None}); --iterations is the TOTAL: pass >= {done}. "
            "Nothing was overwritten"
        )
    new = provenance_config(config)
    old = (results.get("provenance") or {}).get("config") or {}
    _check_structure(args, old, new, where=RESULTS)
    if ckpt is not None:
        _check_structure(args, provenance_config(load_config(ckpt)), new, where=f"checkpoints/{ckpt.name}")
    return {"start": done, "checkpoint": ckpt, "results": results}


def _check_structure(args: argparse.Namespace, old: dict, new: dict, *, where: str) -> None:
    changed = {k: (old.get(k), new.get(k)) for k in STRUCTURAL if k in old and old.get(k) != new.get(k)}
    if changed:
        raise ValueError(
            f"--resume of {args.out} with a different model/task: {changed} (stored in {where}, given); the "
            "checkpoint's weights do not fit. Use the original flags or another --out"
        )


def provenance_config(config) -> dict:
    return json_safe(config.to_dict())
