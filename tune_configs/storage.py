"""Where a sweep writes: a local folder, ``file://`` or a cloud URI (``s3://``, ``gs://``, ...), checked up front.

``check_storage(path)`` writes and deletes a marker file through ``pyarrow.fs`` (the library Tune itself uses
for ``storage_path``), so that a typo, a missing bucket or a read-only folder fails before any trial starts,
with the path and the file system's own error in the message.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

MARKER = ".metarl_write_check"


def normalize(path: str) -> str:
    """Local paths become absolute (Tune needs that); URIs are returned unchanged."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def check_storage(path: str) -> str:
    """Return the normalized storage path; ValueError when it cannot be created or written."""
    import pyarrow.fs as pafs

    if not path:
        raise ValueError("--storage is empty: give a folder, file:///folder or a URI such as s3://bucket/prefix")
    where = normalize(path)
    try:
        fs, root = pafs.FileSystem.from_uri(where if "://" in where else Path(where).as_uri())
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for unknown schemes and bad URIs
        raise ValueError(f"--storage {path!r} is not a usable folder or URI: {e}") from e
    marker = f"{root.rstrip('/')}/{MARKER}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(marker) as f:
            f.write(b"metarl sweep write check\n")
        fs.delete_file(marker)
    except Exception as e:  # PermissionError, OSError from S3/GCS, ...: report them all the same way
        raise ValueError(f"--storage {path!r} is not writable (tried to write {marker}): {e}") from e
    return where
