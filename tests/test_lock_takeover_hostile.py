"""A job stopped (SIGSTOP, a frozen node, a long GC pause) past ``store.lock_stale_s`` has its build lock broken
and taken over by another job. Whatever point it was stopped at, when it resumes it never publishes, never
removes or replaces the other job's product, never keeps the other job's lock alive, and ends with one line:
it uses the product the other job finished, or ends ``waiting`` (exit 75)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from readaptir.store.artifacts import ArtifactStore
from readaptir.store.locks import BuildLock, LockTakenOver, ProductBusy

STALE = 0.5  # store.lock_stale_s of every job here: a waiter breaks a lock it saw unchanged this long
KEY = "thing-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]  # the jobs import this checkout, whatever the venv has installed

# One job, stopping itself (a real SIGSTOP) at one point of its build: in fn, right after its publish step
# checked the lock was its own, after its manifest was hashed (before .done and the rename), or after it
# published (before it released its lock).
JOB = r"""
import os, signal, sys, time
from readaptir.store import artifacts
from readaptir.store.artifacts import ArtifactStore
from readaptir.store.locks import ProductBusy

root, key, point, stale, label, after = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5], float(sys.argv[6])

def stop(where):
    if where == point:
        print("stopped", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)

checked, manifest, record = artifacts.changed_input, artifacts.make_manifest, ArtifactStore._record
def changed_input(inputs):
    stop("check")
    return checked(inputs)
def make_manifest(root):
    m = manifest(root)
    stop("manifest")
    return m
def _record(self, kind, key, reused, seconds=0.0):
    if not reused:
        stop("published")
    return record(self, kind, key, reused, seconds)
artifacts.changed_input, artifacts.make_manifest, ArtifactStore._record = changed_input, make_manifest, _record

def fn(tmp):
    (tmp / "a").write_text(label)
    stop("fn")
    time.sleep(after)  # the rest of a long build
    tmp.mkdir(parents=True, exist_ok=True)  # as save_pretrained does: a removed folder is made again
    (tmp / "b").write_text(label)

try:
    path = ArtifactStore(root, lock_stale_s=stale).build("thing", key, fn)
except ProductBusy as e:
    print(f"readaptir: waiting: {e}", flush=True)
    sys.exit(75)
print("used", (path / "a").read_text(), (path / "b").read_text(), flush=True)
"""


class Job:
    """A job in its own process that stops itself at ``point``; ``resume()`` sends SIGCONT."""

    def __init__(self, root: Path, point: str, label: str, after: float = 0.0) -> None:
        script = root.parent / "job.py"
        script.write_text(JOB)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(root), KEY, point, str(STALE), label, str(after)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    def wait_stopped(self) -> None:
        assert self.proc.stdout.readline().strip() == "stopped", self.proc.stderr.read()
        _, status = os.waitpid(self.proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def end(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


def _other(root: Path) -> ArtifactStore:
    return ArtifactStore(root, lock_stale_s=STALE)


def _write(label: str):
    def fn(tmp: Path) -> None:
        (tmp / "a").write_text(label)
        (tmp / "b").write_text(label)

    return fn


def _finished(root: Path, label: str) -> None:
    """The product is the intact one ``label`` made, as a fresh process sees it."""
    store = ArtifactStore(root)
    assert store.valid(KEY), sorted(p.name for p in store.path(KEY).parent.iterdir())
    assert [(store.path(KEY) / f).read_text() for f in "ab"] == [label, label]


def _one_line_waiting(code: int, out: str, err: str) -> None:
    assert code == 75 and "Traceback" not in out + err, out + err
    assert out.strip().startswith("readaptir: waiting:") and len(out.strip().splitlines()) == 1, out


# ------------------------------------------------------------------ the other job finished before this one resumed
@pytest.mark.parametrize("point", ["fn", "check", "manifest"])
def test_a_stopped_job_uses_the_product_the_other_job_finished_meanwhile(tmp_path, point):
    root = tmp_path / "cache"
    job = Job(root, point, "A")
    job.wait_stopped()
    _other(root).build("thing", KEY, _write("B"))  # breaks the lock after STALE s, builds, publishes
    job.resume()
    code, out, err = job.end()
    assert code == 0 and out.strip() == "used B B" and "Traceback" not in err, out + err
    _finished(root, "B")  # never replaced, removed, or mixed with the stopped job's files


# ------------------------------------------------------------------ the other job is still building when it resumes
@pytest.mark.parametrize("point", ["fn", "check", "manifest"])
def test_a_stopped_job_resuming_during_the_other_build_publishes_nothing(tmp_path, point):
    root = tmp_path / "cache"
    job = Job(root, point, "A")
    job.wait_stopped()
    ended = []

    def build_while_the_stopped_job_resumes(tmp: Path) -> None:
        job.resume()
        ended.append(job.end())
        assert not ArtifactStore(root).is_done(KEY)  # it published nothing, not even a .done alone
        _write("B")(tmp)

    _other(root).build("thing", KEY, build_while_the_stopped_job_resumes)
    _one_line_waiting(*ended[0])
    assert "took its build lock over" in ended[0][1]
    _finished(root, "B")


def test_three_jobs_two_of_them_stopped(tmp_path):
    """A stopped in fn; B took A's lock over, then stopped after hashing its product; C took B's lock over
    and published. A and B both use C's product."""
    root = tmp_path / "cache"
    a = Job(root, "fn", "A")
    a.wait_stopped()
    b = Job(root, "manifest", "B")  # waits STALE s on A's frozen lock, breaks it, builds, stops
    b.wait_stopped()
    _other(root).build("thing", KEY, _write("C"))
    a.resume(), b.resume()
    for code, out, err in (a.end(), b.end()):
        assert code == 0 and out.strip() == "used C C" and "Traceback" not in err, out + err
    _finished(root, "C")


# ------------------------------------------------------------------ stopped after publishing, before releasing
def test_a_job_stopped_after_publishing_keeps_its_product_and_never_removes_the_next_lock(tmp_path):
    root = tmp_path / "cache"
    job = Job(root, "published", "A")
    job.wait_stopped()
    other = BuildLock(root / "locks" / f"{KEY}.lock", stale_s=STALE, poll_s=0.05)
    assert other.acquire()  # broke the stopped job's lock: it holds it now
    job.resume()
    code, out, err = job.end()
    assert code == 0 and out.strip() == "used A A", out + err
    assert other.owned()  # the resumed job's release left the other job's lock alone
    other.release()
    _finished(root, "A")
    assert _other(root).build("thing", KEY, _write("B")) and ArtifactStore(root).valid(KEY)


# ------------------------------------------------------------------ the resumed job's heartbeat
def test_a_resumed_job_never_keeps_the_lock_of_the_job_that_took_over_alive(tmp_path):
    """After the takeover, the job that took over dies on another node (its heartbeat stops). The stopped
    job resumes and goes on with its long fn: its heartbeat must not refresh the dead job's lock, or every
    waiter would wait for the resumed job's fn instead of stale_s."""
    root = tmp_path / "cache"
    job = Job(root, "fn", "A", after=4.0)
    job.wait_stopped()
    path = root / "locks" / f"{KEY}.lock"
    dead = BuildLock(path, stale_s=STALE, poll_s=0.05)
    assert dead.acquire()
    dead._stop.set()  # its node froze for good: no more heartbeat
    dead._beat.join()
    before = path.stat().st_mtime_ns
    job.resume()
    time.sleep(STALE)  # the resumed job's heartbeat beats every STALE / 4
    assert path.stat().st_mtime_ns == before, "the resumed job changed another job's lock file"
    t0 = time.monotonic()
    waiter = BuildLock(path, stale_s=STALE, poll_s=0.05)
    assert waiter.acquire() and time.monotonic() - t0 < 2.5  # not after the resumed job's 4 s fn
    waiter.release()
    _one_line_waiting(*job.end())


# ------------------------------------------------------------------ on_busy=exit jobs meanwhile
def test_on_busy_exit_jobs_wait_then_take_a_frozen_lock_over(tmp_path):
    root = tmp_path / "cache"
    job = Job(root, "fn", "A")
    job.wait_stopped()
    exiting = ArtifactStore(root, lock_stale_s=STALE, on_busy="exit")
    with pytest.raises(ProductBusy) as busy:
        exiting.build("thing", KEY, _write("E"))
    assert not isinstance(busy.value, LockTakenOver)
    time.sleep(STALE + 0.2)  # a later exit job counts from the first one's observation
    ArtifactStore(root, lock_stale_s=STALE, on_busy="exit").build("thing", KEY, _write("E"))
    job.resume()
    code, out, err = job.end()
    assert code == 0 and out.strip() == "used E E", out + err
    _finished(root, "E")


# ------------------------------------------------------------------ in one process
def _take_over(lock_path: Path) -> BuildLock:
    other = BuildLock(lock_path, stale_s=0.05, poll_s=0.01)
    assert other.acquire()
    return other


def test_release_after_a_takeover_leaves_the_other_lock_and_its_observations(tmp_path):
    path = tmp_path / "locks" / "k.lock"
    mine = BuildLock(path, stale_s=60)
    assert mine.acquire()
    theirs = _take_over(path)
    assert not BuildLock(path, stale_s=60, on_busy="exit").acquire()  # a waiter's .seen-* observation
    seen = sorted(path.parent.glob("k.lock.seen-*"))
    assert seen
    assert mine.taken_over("k") is not None
    mine.release()
    assert theirs.owned() and sorted(path.parent.glob("k.lock.seen-*")) == seen
    theirs.release()
    assert not path.exists() and not list(path.parent.glob("k.lock.seen-*"))


def test_a_heartbeat_never_touches_a_lock_file_that_is_not_its_own(tmp_path):
    path = tmp_path / "k.lock"
    mine = BuildLock(path, stale_s=0.2)
    assert mine.acquire()
    for foreign in (json.dumps({"host": "node-2", "ns": "0badc0de", "pid": 7, "token": "t"}), "{garbled"):
        path.unlink()
        path.write_text(foreign)
        before = path.stat().st_mtime_ns
        time.sleep(0.3)
        assert path.stat().st_mtime_ns == before
    mine.release()
    assert path.read_text() == "{garbled"  # not its own: not removed either


def test_a_garbled_lock_under_a_build_publishes_nothing_and_does_not_block_the_next_job(tmp_path):
    store = ArtifactStore(tmp_path, lock_stale_s=STALE)

    def fn(tmp: Path) -> None:
        (tmp / "a").write_text("A")
        (tmp_path / "locks" / f"{KEY}.lock").write_text("\0\0\0")  # a damaged lock file: nobody's

    with pytest.raises(LockTakenOver, match="took its build lock over"):
        store.build("thing", KEY, fn)
    assert not store.is_done(KEY)
    t0 = time.monotonic()
    _other(tmp_path).build("thing", KEY, _write("B"))
    assert time.monotonic() - t0 < 3
    _finished(tmp_path, "B")


def test_build_collective_in_one_process_publishes_nothing_after_a_takeover(tmp_path):
    store = ArtifactStore(tmp_path)
    taken = []

    def finish(tmp: Path) -> None:
        taken.append(_take_over(tmp_path / "locks" / f"{KEY}.lock"))

    with pytest.raises(LockTakenOver):
        store.build_collective("thing", KEY, _write("A"), prepare=lambda tmp: None, finish=finish)
    assert not store.is_done(KEY) and taken[0].owned()
    taken[0].release()


def test_the_stopped_jobs_temp_folder_is_moved_away_before_it_is_deleted(tmp_path, monkeypatch):
    """Deleting a big temporary folder takes a while: a stopped job resuming meanwhile must find nothing to
    rename into place (it would publish a half-deleted folder)."""
    import readaptir.store.artifacts as artifacts

    store = ArtifactStore(tmp_path)
    final = store.path(KEY)
    final.parent.mkdir(parents=True)
    theirs = final.with_name(f".{KEY}.tmp-node-2-0badc0de-7")  # the stopped job's, on another node
    theirs.mkdir()
    (theirs / "a").write_text("A")
    renamed, real = [], artifacts.remove_path

    def remove_path(path):  # the stopped job resumes while the folder is being deleted
        if not renamed and not final.exists():
            try:
                os.rename(theirs, final)
                renamed.append(True)
            except OSError:
                renamed.append(False)
        real(path)

    monkeypatch.setattr(artifacts, "remove_path", remove_path)
    store.build("thing", KEY, _write("B"))
    assert renamed == [False] and not theirs.exists()
    _finished(tmp_path, "B")


def test_a_lock_taken_over_and_released_without_a_product_ends_waiting_and_the_next_job_builds(tmp_path):
    """The job that took the lock over failed and released it: the resumed job has no lock and no product
    to use; it publishes nothing and ends waiting, and the next job builds."""
    store = ArtifactStore(tmp_path)

    def fn(tmp: Path) -> None:
        (tmp / "a").write_text("A")
        _take_over(tmp_path / "locks" / f"{KEY}.lock").release()

    with pytest.raises(LockTakenOver, match=r"another job \(finished since\) took its build lock over"):
        store.build("thing", KEY, fn)
    assert not store.is_done(KEY) and not (tmp_path / "locks" / f"{KEY}.lock").exists()
    _other(tmp_path).build("thing", KEY, _write("B"))
    _finished(tmp_path, "B")
