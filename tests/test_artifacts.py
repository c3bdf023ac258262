"""Content-addressed store: keys, atomic builds, reuse verified against manifests, kills, locking."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from readaptir.errors import StorageError
from readaptir.fs import HOST, NAMESPACE, atomic_write_json
from readaptir.store.artifacts import ArtifactStore, make_key
from readaptir.store.locks import BuildLock, LockTakenOver, ProductBusy


def test_keys_are_canonical_and_sensitive():
    k = make_key("adapter", {"r": 32, "targets": ["q_proj"], "lr": 2e-4})
    assert k.startswith("adapter-") and len(k) == len("adapter-") + 16
    assert k == make_key("adapter", {"lr": 0.0002, "targets": ["q_proj"], "r": 32})  # order, float spelling
    assert k == make_key("adapter", OmegaConf.create({"r": 32, "targets": ["q_proj"], "lr": 2e-4}))
    assert k != make_key("adapter", {"r": 16, "targets": ["q_proj"], "lr": 2e-4})
    assert k != make_key("adapter", {"r": 32, "targets": ["q_proj"], "lr": 2e-4}, parents=["tokens-1"])
    assert k != make_key("embeddings", {"r": 32, "targets": ["q_proj"], "lr": 2e-4})


def test_build_is_atomic_and_reused(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def fn(tmp):
        calls.append(tmp)
        (tmp / "x.txt").write_text("hello")

    p1 = store.build("thing", "thing-1", fn)
    p2 = store.build("thing", "thing-1", fn)
    assert p1 == p2 and (p1 / "x.txt").read_text() == "hello" and len(calls) == 1
    assert [e["reused"] for e in store.events] == [False, True]


def test_failed_build_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def boom(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.build("thing", "thing-2", boom)
    assert not store.is_done("thing-2") and not store.path("thing-2").exists()
    assert list(store.path("thing-2").parent.iterdir()) == []


def _slow_build(root, out):
    store = ArtifactStore(root)

    def fn(tmp):
        time.sleep(0.5)
        (tmp / "v").write_text("built")

    store.build("thing", "thing-3", fn)
    out.put(store.events[-1]["reused"])


def test_two_jobs_never_build_twice(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_slow_build, args=(tmp_path, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted([q.get(), q.get()]) == [False, True]


def test_atomic_write_json(tmp_path):
    atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert (tmp_path / "a" / "r.json").read_text().strip().startswith("{")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]


# ------------------------------------------------------------------------------ verification on reuse
def _store_with(tmp_path, files: dict[str, bytes], key: str = "thing-v", **kw) -> tuple[ArtifactStore, list]:
    store = ArtifactStore(tmp_path / "cache", **kw)
    calls = []

    def fn(tmp):
        calls.append(1)
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)

    store.build("thing", key, fn)
    return store, calls


def _again(store: ArtifactStore, key: str = "thing-v") -> tuple[ArtifactStore, list]:
    """A later process: a fresh store object on the same folder, building the same key."""
    fresh = ArtifactStore(store.root, store.verify, store.full_check_max_gb)
    calls = []
    fresh.build("thing", key, lambda tmp: (calls.append(1), (tmp / "a.bin").write_bytes(b"rebuilt")))
    return fresh, calls


def test_manifest_records_sizes_and_digests(tmp_path):
    store, _ = _store_with(tmp_path, {"a.bin": b"x" * 10, "sub/b.txt": b"y"})
    done = store.record("thing-v")
    files = done["manifest"]["files"]
    assert set(files) == {"a.bin", "sub/b.txt"} and files["a.bin"]["size"] == 10
    assert done["manifest"]["build"] and done["manifest"]["content"]
    assert store.valid("thing-v")


def test_flipped_bytes_are_rebuilt_with_one_warning(tmp_path, caplog):
    store, _ = _store_with(tmp_path, {"a.bin": bytes(range(256)) * 64})
    path = store.path("thing-v") / "a.bin"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0x01  # one flipped bit, same size
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        fresh, calls = _again(store)
    assert calls == [1] and (fresh.path("thing-v") / "a.bin").read_bytes() == b"rebuilt"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "thing-v cannot be reused (a.bin: bytes 0-16,383 differ" in warnings[0]
    assert fresh.valid("thing-v")


def test_truncated_file_is_rebuilt(tmp_path):
    lines = b"".join(b"q%d Q0 d%d 1 0.5 x\n" % (i, i) for i in range(100))
    store, _ = _store_with(tmp_path, {"run.trec": lines})
    (store.path("thing-v") / "run.trec").write_bytes(lines[: lines.index(b"q50 ")])  # cut at a line boundary
    assert "run.trec has" in ArtifactStore(store.root).problem("thing-v")
    _, calls = _again(store)
    assert calls == [1]


def test_missing_extra_files_and_old_marks_are_rebuilt(tmp_path):
    store, _ = _store_with(tmp_path, {"a.bin": b"1", "b.bin": b"2"})
    (store.path("thing-v") / "b.bin").unlink()
    assert "b.bin is missing" in ArtifactStore(store.root).problem("thing-v")
    store, _ = _store_with(tmp_path / "2", {"a.bin": b"1"})
    (store.path("thing-v") / "stray.bin").write_bytes(b"?")
    assert "stray.bin" in ArtifactStore(store.root).problem("thing-v")
    store, _ = _store_with(tmp_path / "3", {"a.bin": b"1"})
    (store.path("thing-v") / ".done").write_text('{"key": "thing-v"}')  # a mark from before manifests
    assert "older version" in ArtifactStore(store.root).problem("thing-v")


def test_sampled_mode_checks_sizes_and_some_blocks(tmp_path, monkeypatch):
    from readaptir.store import manifest

    monkeypatch.setattr(manifest, "BLOCK", 16)  # 4 KiB file = 256 blocks
    monkeypatch.setattr(manifest, "WHOLE_FILE_MAX", 64)
    data = bytes(range(256)) * 16
    store, _ = _store_with(tmp_path, {"e.f16": data}, verify="sampled")
    path = store.path("thing-v") / "e.f16"
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF  # the last block is always among the sampled ones
    path.write_bytes(bytes(corrupt))
    assert "differ" in ArtifactStore(store.root, verify="sampled").problem("thing-v")
    corrupt = bytearray(data)
    corrupt[16 * 100] ^= 0xFF  # one middle block: caught in full mode, in sampled mode only if drawn
    path.write_bytes(bytes(corrupt))
    assert "differ" in ArtifactStore(store.root, verify="full").problem("thing-v")
    assert "differ" in ArtifactStore(store.root, verify="auto", full_check_max_gb=1.0).problem("thing-v")
    path.write_bytes(data[:-16])
    assert "has 4,080 bytes" in ArtifactStore(store.root, verify="sampled").problem("thing-v")


def test_rebuilt_parent_invalidates_everything_made_from_it(tmp_path):
    store = ArtifactStore(tmp_path)
    store.parents.update({"kid-1": ("par-1",), "grandkid-1": ("kid-1",)})
    for key in ("par-1", "kid-1", "grandkid-1"):
        store.build(key.split("-")[0], key, lambda tmp, k=key: (tmp / "f").write_text(k))
    assert store.record("kid-1")["parents"]["par-1"]["build"] == store.record("par-1")["manifest"]["build"]
    (store.path("par-1") / "f").write_text("damaged")
    later = ArtifactStore(tmp_path)
    later.parents.update(store.parents)
    later.build("par", "par-1", lambda tmp: (tmp / "f").write_text("par-1"))  # rebuilt: a new build id
    assert not later.valid("kid-1") and not later.valid("grandkid-1")  # made from the damaged one
    later.build("kid", "kid-1", lambda tmp: (tmp / "f").write_text("kid-1"))
    assert later.valid("kid-1") and not later.valid("grandkid-1")
    later.build("grandkid", "grandkid-1", lambda tmp: (tmp / "f").write_text("grandkid-1"))
    assert later.valid("grandkid-1")
    # A parent pruned from the cache (embeddings deleted to save disk) leaves its products usable.
    shutil.rmtree(later.path("par-1"))
    assert ArtifactStore(tmp_path).valid("kid-1")


# ------------------------------------------------------------------------ kills, leftovers, full disks
KILLED_BUILD = """
import os, signal, sys
from readaptir.store.artifacts import ArtifactStore
store = ArtifactStore(sys.argv[1])
def fn(tmp):
    (tmp / "half.bin").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)
store.build("thing", "thing-k", fn)
"""


def test_killed_build_leaves_nothing_that_is_reused_or_kept(tmp_path):
    out = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(tmp_path)], capture_output=True, timeout=60)
    assert out.returncode == -9
    kind_dir = tmp_path / "thing"
    leftovers = [p.name for p in kind_dir.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".thing-k.tmp-")  # killed mid-build
    assert (tmp_path / "locks" / "thing-k.lock").is_file()  # its lock, held by a dead pid
    store = ArtifactStore(tmp_path, lock_stale_s=3600)
    assert [p.name for p in store.remove_leftovers()] == leftovers  # a later run on the same host
    t0 = time.time()
    store.build(
        "thing", "thing-k", lambda tmp: (tmp / "v").write_text("ok")
    )  # the dead owner's lock is broken
    assert time.time() - t0 < 10 and [p.name for p in kind_dir.iterdir()] == ["thing-k"]


def test_live_jobs_temp_folders_are_kept(tmp_path):
    live = tmp_path / "thing" / f".thing-x.tmp-{HOST}-{NAMESPACE}-{os.getpid()}"
    other_host = tmp_path / "thing" / ".thing-y.tmp-elsewhere-0badc0de-1"
    for p in (live, other_host):
        p.mkdir(parents=True)
    assert ArtifactStore(tmp_path).remove_leftovers() == [] and live.exists() and other_host.exists()


def test_full_disk_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    import errno

    store = ArtifactStore(tmp_path)

    def enospc(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "x"))

    with pytest.raises(StorageError, match=r"no space left on device .* while building thing thing-d in "):
        store.build("thing", "thing-d", enospc)

    def torch_style(tmp):  # torch.save reports a full disk as "unexpected pos"
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 576 vs 470")

    Usage = type(shutil.disk_usage(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(StorageError) as e:
        store.build("thing", "thing-d", torch_style)
    assert "no space left on device (1 MiB free)" in str(e.value) and "\n" not in str(e.value)
    assert [p.name for p in (tmp_path / "thing").iterdir()] == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare")
def test_real_full_disk_during_torch_save(tmp_path):
    """A 2 MiB tmpfs as the cache, in a private mount namespace: torch.save fails, the message does not."""
    script = (
        "import torch, sys\n"
        "from readaptir.store.artifacts import ArtifactStore\n"
        "from readaptir.errors import StorageError\n"
        "store = ArtifactStore(sys.argv[1])\n"
        "try:\n"
        "    store.build('thing', 'thing-f', lambda tmp: torch.save(torch.zeros(1 << 20), tmp / 'w.pt'))\n"
        "except StorageError as e:\n"
        "    print('ONE LINE:', e)\n"
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cmd = f'mount -t tmpfs -o size=2m tmpfs {mnt} && {sys.executable} -c "$0" {mnt}'
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", cmd, script], capture_output=True, text=True, timeout=120
    )
    assert "ONE LINE: no space left on device" in out.stdout, out.stderr[-2000:]
    assert f"in {mnt}/thing" in out.stdout and "Traceback" not in out.stdout + out.stderr


# ----------------------------------------------------------------------------- cluster-safe build locks
def test_lock_file_is_exclusive_and_can_give_up(tmp_path):
    path = tmp_path / "locks" / "k.lock"
    first = BuildLock(path)
    assert first.acquire()
    info = json.loads(path.read_text())
    assert info["host"] == HOST and info["pid"] == os.getpid()
    second = BuildLock(path, on_busy="exit")
    assert not second.acquire() and f"{HOST}:{os.getpid()}" in second.holder
    with pytest.raises(ProductBusy, match="k is being built by"):
        with BuildLock(path, on_busy="exit"):
            pass
    first.release()
    assert not path.exists() and second.acquire()
    second.release()


@pytest.mark.slow
def test_stale_locks_are_broken(tmp_path):
    path = tmp_path / "k.lock"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    owner = {"host": HOST, "ns": NAMESPACE, "pid": int(dead.stdout), "token": "t", "started": 0}
    path.write_text(json.dumps(owner))
    lock = BuildLock(path, on_busy="exit")
    assert lock.acquire()  # the owner's pid is gone in this PID namespace
    lock.release()
    path.write_text(
        json.dumps({"host": "another-node", "ns": "0badc0de", "pid": 1, "token": "t", "started": 0})
    )
    old = time.time() - 700  # its date says nothing: another node's clock
    os.utime(path, (old, old))
    assert not BuildLock(path, stale_s=0.3, on_busy="exit").acquire()  # first seen now
    time.sleep(0.5)
    lock = BuildLock(path, stale_s=0.3, on_busy="exit")
    assert lock.acquire()  # seen unchanged for longer than stale_s on this waiter's clock: a dead node
    lock.release()


def test_lock_holder_keeps_its_lock_fresh(tmp_path):
    path = tmp_path / "k.lock"
    lock = BuildLock(path, stale_s=0.4)
    assert lock.acquire()
    os.utime(path, (time.time() - 100, time.time() - 100))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 0.4 and lock.owned()
    lock.release()


def test_busy_product_raises_with_on_busy_exit(tmp_path):
    held = BuildLock(tmp_path / "locks" / "thing-b.lock")
    assert held.acquire()
    store = ArtifactStore(tmp_path, on_busy="exit")
    with pytest.raises(ProductBusy):
        store.build("thing", "thing-b", lambda tmp: (tmp / "v").write_text("x"))
    held.release()
    store.build("thing", "thing-b", lambda tmp: (tmp / "v").write_text("x"))
    assert store.valid("thing-b")


def _take_over(lock_path) -> BuildLock:
    """What a waiter does to a job stopped (SIGSTOP, a frozen node) past stale_s: breaks its lock, takes it."""
    other = BuildLock(lock_path, stale_s=0.05, poll_s=0.01)
    assert other.acquire()
    return other


def test_a_job_whose_lock_was_taken_over_publishes_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    taken = []

    def fn(tmp):
        (tmp / "v").write_text("mine")
        taken.append(_take_over(tmp_path / "locks" / "thing-t.lock"))  # while this job was stopped

    with pytest.raises(
        LockTakenOver, match=r"thing-t: this job stopped for over store.lock_stale_s.*run this cell again"
    ):
        store.build("thing", "thing-t", fn)
    assert not store.path("thing-t").exists() and list(store.path("thing-t").parent.iterdir()) == []
    assert taken[0].owned()  # the job that took it over still holds its lock: it publishes, not us
    taken[0].release()


def test_a_job_whose_lock_was_taken_over_uses_the_product_the_other_job_finished(tmp_path):
    store = ArtifactStore(tmp_path)

    def fn(tmp):
        (tmp / "a").write_text("mine, part 1")
        _take_over(tmp_path / "locks" / "thing-u.lock").release()  # the other job came and went...
        ArtifactStore(tmp_path).build("thing", "thing-u", lambda t: (t / "a").write_text("theirs"))
        (tmp / "b").write_text("mine, part 2")  # ...and removed this job's temporary folder as a leftover

    assert (store.build("thing", "thing-u", fn) / "a").read_text() == "theirs"
    assert store.valid("thing-u") and store.events[-1]["reused"]


@pytest.mark.parametrize("write", ["atomic_write", "create_once"])  # create_once: the results store's records
def test_a_failed_write_names_the_file(tmp_path, monkeypatch, write):
    import builtins
    import errno

    from readaptir import fs
    from readaptir.fs import storage_problem

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")  # what a full disk gives: no file name

    monkeypatch.setattr(builtins, "open", lambda p, m="r", *a, **k: Full(real_open(p, m, *a, **k)) if "w" in m
                        else real_open(p, m, *a, **k))  # fmt: skip
    with pytest.raises(OSError) as e:
        getattr(fs, write)(tmp_path / "results" / "r.json", "{}")
    assert storage_problem(e.value) == f"no space left on device ({tmp_path / 'results' / 'r.json'})"
    assert list((tmp_path / "results").iterdir()) == []
