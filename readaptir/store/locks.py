"""Build locks that hold on network filesystems: a lock file created atomically, kept alive by a heartbeat.

``fcntl`` locks are unreliable on some NFS/Lustre mounts, so a build lock is a file created with
``O_CREAT | O_EXCL`` (atomic on NFSv3+ and Lustre) holding its owner's host, PID namespace, pid and a random
token. The owner changes the file's mtime every ``stale_s / 4`` seconds from a background thread: the
heartbeat. A waiter never compares that mtime with its own clock (another machine's clock, or a lock file
dated an hour ahead, says nothing about liveness); it watches whether the lock *changes* (token, inode,
size, mtime) and times that on its own monotonic clock. A lock seen unchanged for ``stale_s`` seconds
belongs to a dead job and is broken. The observation is kept beside the lock per boot
(``<lock>.seen-<boot>``; ``CLOCK_MONOTONIC`` is shared by every process of one boot), so jobs that look
once and exit (``on_busy="exit"``) still see a dead lock age. The only shortcut: an owner in this very PID
namespace (same boot, same container) whose pid is gone is dead at once (a killed local job). Host + pid
alone decides nothing: two containers may share a hostname with separate pids. A job that finds a live lock
either waits (``on_busy="wait"``, the default: local sweeps) or raises :class:`ProductBusy` at once
(``"exit"``: a cluster job records ``status: waiting`` and frees its GPU instead of idling on another job's
build).

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

from readaptir.fs import HOST, NAMESPACE, atomic_write, pid_alive

log = logging.getLogger(__name__)

OnBusy = Literal["wait", "exit"]
UNREADABLE_GRACE_S = 30.0  # a lock file still being written by its creator reads as empty for an instant


class ProductBusy(RuntimeError):
    """Another live job is building a product this cell needs (raised with ``on_busy="exit"``)."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"{key} is being built by {holder}; run this cell again once it is finished")
        self.key, self.holder = key, holder


class LockTakenOver(ProductBusy):
    """This job was stopped (SIGSTOP, a frozen node) for longer than ``stale_s``, another job broke its
    lock as a dead one's and is building the product: what this job made is not published."""

    def __init__(self, key: str, holder: str, stale_s: float) -> None:
        RuntimeError.__init__(
            self, f"{key}: this job stopped for over store.lock_stale_s ({stale_s:g} s) and {holder} took its "
            "build lock over; run this cell again once that job is finished (or raise store.lock_stale_s)",
        )  # fmt: skip
        self.key, self.holder = key, holder


def _read(path: Path) -> tuple[dict[str, Any] | None, list | None]:
    """(owner info or None if unreadable, the file's observable state or None if the file is gone).

    The state (inode, size, mtime_ns) is compared only with earlier states of the same file, never with a
    clock: a heartbeat is any change of it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, None
    state = [st.st_ino, st.st_size, st.st_mtime_ns]
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError):
        return None, state
    return (info if isinstance(info, dict) else None), state


def _boot() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return NAMESPACE  # no boot id: this namespace's observations only


def describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another job"
    try:  # a lock file of another version, or damaged: its fields are only shown, never trusted
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    except (TypeError, ValueError, OverflowError, OSError):
        since = "an unknown time"
    return f"{info.get('host')}:{info.get('pid')} (since {since})"


class BuildLock:
    """An exclusive lock on one product, safe across hosts sharing a filesystem (see module docstring)."""

    def __init__(self, path: str | os.PathLike, stale_s: float = 600.0, on_busy: OnBusy = "wait",
                 poll_s: float = 2.0) -> None:  # fmt: skip
        self.path, self.stale_s, self.on_busy, self.poll_s = Path(path), stale_s, on_busy, poll_s
        self.token = uuid.uuid4().hex
        self.owner = {"host": HOST, "ns": NAMESPACE, "pid": os.getpid()}  # who this lock says holds it
        self.holder = ""  # who holds it, when acquire() found it busy
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._seen: tuple[list, float] | None = None  # (lock state, monotonic time first seen in it)

    def stale(self, info: dict[str, Any] | None, state: list) -> bool:
        """A dead owner in this PID namespace, or a lock seen unchanged for ``stale_s`` seconds of this
        waiter's monotonic clock (an unreadable one for a shorter grace)."""
        pid = (info or {}).get("pid")
        if (
            info is not None
            and info.get("ns") == NAMESPACE
            and type(pid) is int
            and pid > 0
            and not pid_alive(pid)
        ):
            return True
        limit = self.stale_s if info is not None else min(UNREADABLE_GRACE_S, self.stale_s)
        return time.monotonic() - self._first_seen([(info or {}).get("token"), *state]) > limit

    def _first_seen(self, observation: list) -> float:
        """When this boot first saw the lock in exactly this state (monotonic seconds), remembered beside
        the lock so that a job that looks once and exits keeps the count of the one before it."""
        seen = self.path.with_name(f"{self.path.name}.seen-{_boot()}")
        now, since = time.monotonic(), []
        if self._seen is not None and self._seen[0] == observation:
            since.append(self._seen[1])
        try:
            saved = json.loads(seen.read_text())
            if saved["observation"] == observation and saved["since"] <= now:
                since.append(float(saved["since"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not since:
            try:
                atomic_write(seen, json.dumps({"observation": observation, "since": now}))
            except OSError:
                pass  # a read-only lock folder: counted by this process alone
        self._seen = (observation, min(since, default=now))
        return self._seen[1]

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        info = {**self.owner, "token": self.token, "started": time.time()}
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return True

    def _break(self, info: dict[str, Any] | None, state: list) -> None:
        """Move a stale lock aside; if what was moved turns out to be another lock, or one whose heartbeat
        beat meanwhile, put it back."""
        aside = self.path.with_name(f"{self.path.name}.stale-{HOST}-{os.getpid()}-{self.token[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved, moved_state = _read(aside)
        if (moved or {}).get("token") != (info or {}).get("token") or moved_state != state:
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
            info, state = _read(self.path)
            if state is None:
                continue  # released meanwhile
            if self.stale(info, state):
                self._break(info, state)
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
        """Change the lock's mtime: to now, or 1 s past the last beat when that is later (a coarse or
        frozen clock must still show a change; the value itself is never compared with a clock).

        Only a file holding this lock's token is changed, through the handle the token was read from: a job
        resuming from a stop past ``stale_s`` never keeps the lock of the job that took it over alive."""
        last = 0
        while not self._stop.wait(max(self.stale_s / 4, 0.05)):
            beat = max(time.time_ns(), last + 1_000_000_000)
            try:
                with open(self.path, "rb") as f:
                    info = json.loads(f.read())
                    if not isinstance(info, dict) or info.get("token") != self.token:
                        continue  # taken over (or damaged): not ours to keep alive
                    os.utime(f.fileno(), ns=(beat, beat))
                last = beat
            except (OSError, ValueError):
                continue  # moved aside by a job that thought it stale: it puts a live lock back

    def owned(self) -> bool:
        info, _ = _read(self.path)
        return (info or {}).get("token") == self.token

    def taken_over(self, key: str) -> LockTakenOver | None:
        """The error to raise when the lock file is no longer this lock's (broken as a dead job's while
        this one was stopped; perhaps released since by the job that broke it), else None."""
        info, state = _read(self.path)
        if (info or {}).get("token") == self.token:
            return None
        holder = (
            describe(info)
            if info is not None
            else "another job" + (" (finished since)" if state is None else "")
        )
        return LockTakenOver(key, holder, self.stale_s)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.owned():
            self.path.unlink(missing_ok=True)
            for seen in self.path.parent.glob(f"{self.path.name}.seen-*"):
                seen.unlink(missing_ok=True)

    def __enter__(self) -> BuildLock:
        if not self.acquire():
            raise ProductBusy(self.path.stem, self.holder)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
