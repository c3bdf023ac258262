"""Build locks that hold on network filesystems: a lock file created atomically, owned by host and pid.

``fcntl`` locks are unreliable on some NFS/Lustre mounts, so a build lock is a file created with
``O_CREAT | O_EXCL`` (atomic on NFSv3+ and Lustre) holding its owner's host, pid and a random token. The
owner refreshes the file's mtime every ``stale_s / 4`` seconds from a background thread. Another job finds
the lock stale, and breaks it, when the owner is on the same host and its pid is gone (killed job), or when
nobody refreshed it for ``stale_s`` seconds (a node that died). A job that finds a live lock either waits
(``on_busy="wait"``, the default: local sweeps) or raises :class:`ProductBusy` at once (``"exit"``: a
cluster job records ``status: waiting`` and frees its GPU instead of idling on another job's build).

    with BuildLock(root / "locks" / f"{key}.lock", stale_s=600, on_busy="wait"):
        ...  # build the product
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from readaptir.fs import HOST, pid_alive

log = logging.getLogger(__name__)

OnBusy = Literal["wait", "exit"]
UNREADABLE_GRACE_S = 30.0  # a lock file still being written by its creator reads as empty for an instant


class ProductBusy(RuntimeError):
    """Another live job is building a product this cell needs (raised with ``on_busy="exit"``)."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"{key} is being built by {holder}; run this cell again once it is finished")
        self.key, self.holder = key, holder


def _read(path: Path) -> tuple[dict[str, Any] | None, float | None]:
    """(owner info or None if unreadable, mtime or None if the file is gone)."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None, None
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError):
        return None, mtime
    return (info if isinstance(info, dict) else None), mtime


def describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another job"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"{info.get('host')}:{info.get('pid')} (since {since})"


class BuildLock:
    """An exclusive lock on one product, safe across hosts sharing a filesystem (see module docstring)."""

    def __init__(self, path: str | os.PathLike, stale_s: float = 600.0, on_busy: OnBusy = "wait",
                 poll_s: float = 2.0) -> None:  # fmt: skip
        self.path, self.stale_s, self.on_busy, self.poll_s = Path(path), stale_s, on_busy, poll_s
        self.token = uuid.uuid4().hex
        self.holder = ""  # who holds it, when acquire() found it busy
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def stale(self, info: dict[str, Any] | None, mtime: float) -> bool:
        """Dead owner on this host, or no refresh for ``stale_s`` seconds (or unreadable for a while)."""
        age = time.time() - mtime
        if info is None:
            return age > min(UNREADABLE_GRACE_S, self.stale_s)
        if info.get("host") == HOST and not pid_alive(int(info.get("pid", -1))):
            return True
        return age > self.stale_s

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        info = {"host": HOST, "pid": os.getpid(), "token": self.token, "started": time.time()}
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return True

    def _break(self, info: dict[str, Any] | None) -> None:
        """Move a stale lock aside; if what was moved turns out to be a fresh lock, put it back."""
        aside = self.path.with_name(f"{self.path.name}.stale-{HOST}-{os.getpid()}-{self.token[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved, _ = _read(aside)
        if (moved or {}).get("token") != (info or {}).get("token"):
            try:
                os.link(aside, self.path)  # a live owner's lock: restore it (fails if a new one exists)
            except OSError:
                pass
        else:
            log.warning("Removed a stale build lock %s held by %s", self.path.name, describe(info))
        aside.unlink(missing_ok=True)

    def acquire(self) -> bool:
        """Take the lock; False (``on_busy="exit"``) when a live job holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        waited_since = None
        while not self._try_create():
            info, mtime = _read(self.path)
            if mtime is None:
                continue  # released meanwhile
            if self.stale(info, mtime):
                self._break(info)
                continue
            if self.on_busy == "exit":
                self.holder = describe(info)
                return False
            if waited_since is None:
                waited_since = time.time()
                log.info("Waiting for %s, which %s is building", self.path.stem, describe(info))
            time.sleep(self.poll_s)
        if waited_since is not None:
            log.info("Lock on %s acquired after %.0fs", self.path.stem, time.time() - waited_since)
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-{self.path.stem}", daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(self.stale_s / 4, 0.05)):
            try:
                os.utime(self.path)
            except OSError:
                return

    def owned(self) -> bool:
        info, _ = _read(self.path)
        return (info or {}).get("token") == self.token

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.owned():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> BuildLock:
        if not self.acquire():
            raise ProductBusy(self.path.stem, self.holder)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
