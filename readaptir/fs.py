"""Files that are never seen half-written: write a temporary sibling, then rename it into place.

Every result, table, run file and artifact folder of the project is written through these helpers, so a
killed job leaves either the old file or the new one, never a truncated mix. Temporary names carry the
host, the process namespace (:data:`NAMESPACE`) and the process id, so concurrent jobs on a shared
filesystem never write into each other's files, and a later run can tell a dead process's leftovers
(:func:`remove_dead_temps`) from a live job's work in progress. A pid says whether a process lives only
inside its own PID namespace: two containers may share a hostname while each has its own pids, so a
leftover is removed only by a process of the same boot and the same PID namespace, never by host + pid.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from readaptir.errors import StorageError

HOST = socket.gethostname()


def _namespace() -> str:
    """8 hex digits naming this kernel boot and PID namespace: processes that can see each other's pids
    share it; two containers with one hostname but separate PID namespaces (or two machines) do not."""
    parts = [HOST]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
        except OSError:
            parts.append("?")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


NAMESPACE = _namespace()
# ``.<name>.<tag>-<host>-<namespace>-<pid>``: the host may contain dashes, the pid is the last field.
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[a-z]+)-(?P<host>.+)-(?P<ns>[0-9a-f]{8})-(?P<pid>\d+)$")
# errno values that mean "the disk or the permissions", not a bug: reported as one line naming the folder.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                  errno.EROFS: "read-only file system"}  # fmt: skip
# A build that fails with less free space than this ran out of disk, whatever the library's message
# says (torch.save reports a full disk as "unexpected pos").
LOW_SPACE = 64 << 20


def temp_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """``.<name>.<tag>-<host>-<namespace>-<pid>`` beside ``path``: unique per process, hidden from readers."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{HOST}-{NAMESPACE}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists in this PID namespace (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_temps(folder: str | os.PathLike) -> Iterator[Path]:
    """Temporary siblings in ``folder`` left by processes of this boot and PID namespace that no longer run
    (another container's, another machine's and an older version's names are never judged here)."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return
    for path in entries:
        m = TEMP_RE.match(path.name)
        if m and m["host"] == HOST and m["ns"] == NAMESPACE and not pid_alive(int(m["pid"])):
            yield path


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file or a folder tree; gone already is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_dead_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed processes of this host left in ``folder`` (partial artifacts, half-written files)."""
    removed = list(dead_temps(folder))
    for path in removed:
        remove_path(path)
    return removed


def storage_problem(err: BaseException) -> str | None:
    """``"<what> (<path>)"`` when ``err`` (or an error it came from) is a disk-full/permission error."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            where = e.filename or ""
            return STORAGE_ERRNOS[e.errno] + (f" ({where})" if where else "")
        e = e.__cause__ or e.__context__
    return None


@contextmanager
def cleaned_on_error(tmp: Path, what: str) -> Iterator[None]:
    """Remove the temporary folder ``tmp`` when the block fails; a full disk or a permission error
    becomes one :class:`~readaptir.errors.StorageError` line naming the folder and the fix."""
    try:
        yield
    except BaseException as e:
        try:
            free: int | None = shutil.disk_usage(tmp.parent).free
        except OSError:
            free = None
        remove_path(tmp)
        problem = storage_problem(e)
        if problem is None and free is not None and free < LOW_SPACE and isinstance(e, Exception):
            problem = f"no space left on device ({free >> 20} MiB free)"
        if problem is None or isinstance(e, StorageError):
            raise
        raise StorageError(
            f"{problem} while building {what} in {tmp.parent}; free space, fix the folder's permissions, "
            "or set paths.cache_dir to another disk"
        ) from e


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
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed write names no file: name the one being written
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_once(path: str | os.PathLike, data: str | bytes) -> bool:
    """Write ``path`` only if it does not exist (False when it does), never half a file: a complete temporary
    sibling is hard-linked into place, which fails on an existing name (atomic on NFS and Lustre too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, "new")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.filename is None:  # a failed write names no file: name the one being written
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
