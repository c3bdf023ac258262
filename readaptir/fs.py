"""Files that are never seen half-written: write a temporary sibling, then rename it into place.

Every result, table, run file and artifact folder of the project is written through these helpers, so a
killed job leaves either the old file or the new one, never a truncated mix. Temporary names carry the
host and process id, so concurrent jobs on a shared filesystem never write into each other's files.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def temp_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """``.<name>.<tag>-<host>-<pid>`` beside ``path``: unique per process, hidden from globbing readers."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{socket.gethostname()}-{os.getpid()}")


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write a file via a temporary sibling and a rename: readers never see half a file."""
    atomic_write_lines(path, [data])


def atomic_write_lines(path: str | os.PathLike, chunks: Iterable[str | bytes]) -> None:
    """Stream ``chunks`` into a temporary sibling, then rename it (run files reach 7M lines for MS-MARCO)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
