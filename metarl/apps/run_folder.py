"""The run folder of ``metarl train``: a local path or a URI (``pyarrow.fs``), and the checks made before Ray starts
(an existing run needs ``--resume``; a resume must keep the model's structure and may not go backwards)."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from metarl.apps.flags import config_from_args
from metarl.apps.provenance import json_safe
from rllib_ext.checkpoint import iteration_of, latest_checkpoint

RESULTS = "results.json"
#: config fields that decide the shape of the weights: a resume must not change them
STRUCTURAL = ("task", "backbone", "width", "backbone_kwargs", "dtype")


def is_uri(out: str) -> bool:
    return "://" in str(out)


class Output:
    """The run folder. For a URI the run is written to a local temp folder and uploaded with ``pyarrow.fs``."""

    def __init__(self, out: str):
        self.out = str(out)
        if is_uri(self.out):
            import pyarrow.fs as pafs

            self.fs, self.remote = pafs.FileSystem.from_uri(self.out)
            self.local = Path(tempfile.mkdtemp(prefix="metarl-run-"))
        else:
            self.fs = self.remote = None
            self.local = Path(self.out)

    def remote_exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(f"{self.remote}/{rel}").type != pafs.FileType.NotFound

    def download(self) -> None:
        """Fetch results and checkpoints of an earlier run (URI only)."""
        import pyarrow.fs as pafs

        if self.fs is not None and self.remote_exists(""):
            pafs.copy_files(self.remote, str(self.local), source_filesystem=self.fs)

    def upload(self, *rel: str) -> None:
        """Copy ``rel`` paths (files or folders) to the URI, in the given order (URI only)."""
        import pyarrow.fs as pafs

        if self.fs is None:
            return
        for r in rel:
            src = self.local / r
            if src.exists():
                if src.is_dir():
                    self.fs.create_dir(f"{self.remote}/{r}", recursive=True)
                pafs.copy_files(str(src), f"{self.remote}/{r}", destination_filesystem=self.fs)

    def cleanup(self) -> None:
        if self.fs is not None:
            shutil.rmtree(self.local, ignore_errors=True)


# --- validation, before Ray -----------------------------------------------------------------------------------------
def _read_results(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} exists but cannot be read as JSON ({e}); refusing to overwrite it") from e


def prepare(args: argparse.Namespace) -> dict:
    """Validate flags, config and output folder; return the plan. Raises ValueError (values in the message)."""
    config = config_from_args(args)
    config.validate_meta()
    for flag in ("iterations", "checkpoint_every", "num_envs_per_runner"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} = {getattr(args, flag)} must be >= 1")
    for flag in ("num_env_runners", "num_learners"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} = {getattr(args, flag)} must be >= 0")
    output = Output(args.out)
    exists = output.remote_exists(RESULTS) if output.fs is not None else (output.local / RESULTS).exists()
    if exists and not args.resume:
        output.cleanup()
        raise ValueError(
            f"--out {args.out} already holds {RESULTS}: pass --resume to continue that run (with --iterations as the "
            "new TOTAL) or choose another --out; nothing was overwritten"
        )
    plan = {"config": config, "output": output, "start": 0, "checkpoint": None, "results": None}
    if args.resume and exists:
        output.download()
        results = _read_results(output.local / RESULTS)
        ckpt = latest_checkpoint(output.local)  # raises if `latest` names a broken folder
        done = iteration_of(ckpt) if ckpt is not None else 0
        if args.iterations < done:
            output.cleanup()
            raise ValueError(
                f"--iterations = {args.iterations} is below the {done} iterations already completed in {args.out} "
                f"(checkpoint {ckpt.name if ckpt else None}); --iterations is the TOTAL: pass >= {done}. "
                "Nothing was overwritten"
            )
        old = (results.get("provenance") or {}).get("config") or {}
        new = provenance_config(config)
        changed = {k: (old.get(k), new.get(k)) for k in STRUCTURAL if k in old and old.get(k) != new.get(k)}
        if changed:
            output.cleanup()
            raise ValueError(
                f"--resume of {args.out} with a different model/task: {changed} (stored, given); the checkpoint's "
                "weights do not fit. Use the original flags or another --out"
            )
        plan.update(start=done, checkpoint=ckpt, results=results)
    return plan


def provenance_config(config) -> dict:
    return json_safe(config.to_dict())

