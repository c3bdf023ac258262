"""Hostile cases against the shared cache (issue #19): records of the wrong shape or under other keys,
dangling links, damaged memos and tiny models, planted pickles, foreign and unreadable locks, other jobs'
temp folders, inputs rewritten mid-run, edited results, damaged checkpoints. Registered into
:data:`hostile_cases.CASES`; every class starts with ``store-`` (``python experiments/hostile.py --only store-``)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from hostile_cases import KILL, Ctx, Verdict, case, kill_when, same_numbers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from readaptir.fs import HOST, NAMESPACE  # noqa: E402


def _edit_done(ctx: Ctx, cache: Path, node: str, **fields) -> None:
    done = ctx.product(cache, node) / ".done"
    record = json.loads(done.read_text())
    record.update(fields)
    done.write_text(json.dumps(record))


def _rerun(ctx: Ctx, damage, overrides: list[str] | None = None) -> Verdict:
    cache = ctx.cache()
    damage(cache)
    return same_numbers(*ctx.run(cache, overrides or []), ctx.ref["base"], poisoned=True)


@case("store-record", "adapter .done: a manifest of the wrong type")
def _manifest_type(ctx: Ctx) -> Verdict:
    return _rerun(ctx, lambda c: _edit_done(ctx, c, "adapter", manifest="x"))


@case("store-record", "readapted run .done: parents of the wrong type")
def _parents_type(ctx: Ctx) -> Verdict:
    ra = ctx.ref["base"]["artifacts"]["ra_index"]
    return _rerun(ctx, lambda c: _edit_done(ctx, c, "ra_run", parents={ra: "x"}))


@case("store-record", "base index copied under the readapted index's key")
def _copied_index(ctx: Ctx) -> Verdict:
    def copy(c: Path) -> None:
        shutil.rmtree(ctx.product(c, "ra_index"))
        shutil.copytree(ctx.product(c, "base_index"), ctx.product(c, "ra_index"))
        shutil.rmtree(ctx.product(c, "ra_run"))

    return _rerun(ctx, copy)


@case("store-link", "a dangling link in place of an adapter file")
def _dangling_file(ctx: Ctx) -> Verdict:
    def link(c: Path) -> None:
        f = ctx.product(c, "adapter") / "adapter_model.safetensors"
        f.unlink()
        f.symlink_to(c / "nowhere")

    return _rerun(ctx, link)


@case("store-link", "a dangling link in place of the adapter folder")
def _dangling_folder(ctx: Ctx) -> Verdict:
    def link(c: Path) -> None:
        shutil.rmtree(ctx.product(c, "adapter"))
        ctx.product(c, "adapter").symlink_to(c / "nowhere")

    return _rerun(ctx, link)


def _memo_edit(cache: Path, old: str, new: str) -> None:
    for p in (cache / "identity").glob("*.json"):
        p.write_text(p.read_text().replace(old, new))


@case("store-memo", "a flipped digit in a remembered line count")
def _lines_memo(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    _memo_edit(cache, '"lines": 120', '"lines": 113')
    out, rec = ctx.run(cache, ["readapt.alpha=0.3"])  # a new cell: its record counts the corpus again
    size = (rec or {}).get("corpus_size")
    if (rec or {}).get("status") != "done":
        return "unclear error", (out.stderr.strip().splitlines() or ["?"])[-1][:150]
    return (
        ("ok", "corpus_size 120, counted again") if size == 120 else ("silently wrong", f"corpus_size {size}")
    )


@case("store-memo", "a remembered identity of the wrong type")
def _identity_type(ctx: Ctx) -> Verdict:
    def edit(c: Path) -> None:
        for p in (c / "identity").glob("*.json"):
            text = p.read_text()
            if '"identity": "xxh3:' in text:
                p.write_text(text.split('"identity": ')[0] + '"identity": 5}')

    return _rerun(ctx, edit)


@case("store-tiny", "flipped bytes in the tiny model's weights")
def _tiny(ctx: Ctx) -> Verdict:
    def flip(c: Path) -> None:
        shard = sorted((c / "tiny" / "llama" / "pretrained").glob("*.safetensors"))[-1]
        data = bytearray(shard.read_bytes())
        for i in range(len(data) - 200, len(data) - 100):
            data[i] ^= 0xFF
        shard.write_bytes(bytes(data))

    return _rerun(ctx, flip)


def _pickle(marker: Path) -> bytes:
    """Protocol-0 pickle bytes whose loading runs ``touch marker`` (written by hand: nothing here pickles)."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


@case("store-pickle", "a pickle in every cache file: run, plan, tables")
def _pickles(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    marker = ctx.root / f"PWNED-{ctx.n}"
    for p in [p for p in cache.rglob("*") if p.is_file()]:
        p.write_bytes(_pickle(marker))
    work = cache / "work" / ctx.ref["base"]["artifacts"]["adapter"]
    for step in (4, 8):  # a killed run's checkpoints, every file a pickle
        (work / f"ckpt-{step:09d}").mkdir(parents=True)
        for name in (
            "state.pt",
            "state.json",
            "adapter.safetensors",
            "rng-0.pt",
            "manifest.json",
            "optimizer.bin",
        ):
            (work / f"ckpt-{step:09d}" / name).write_bytes(_pickle(marker))
    results = str(cache / "results")
    plan, _ = ctx.run(cache, ["run.plan=true"])
    table = subprocess.run([sys.executable, "-m", "readaptir.report", "table1", "--results-dir", results, "--out",
                            str(ctx.root / f"t-{ctx.n}"), "--models", "tiny-llama", "--datasets", "scifact",
                            "--any-variant"], capture_output=True, text=True, cwd=ctx.root, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ctx.repo)})  # fmt: skip
    out, rec = ctx.run(cache, [])
    if marker.exists():
        return "insecure", "a planted pickle was executed"
    if "Traceback" in plan.stderr + table.stderr:
        return "traceback", "plan or tables: " + ((plan.stderr + table.stderr).strip().splitlines() or ["?"])[
            -1
        ][:120]
    return same_numbers(out, rec, ctx.ref["base"], poisoned=True)


# ---------------------------------------------------------------------------------------------- locks
def _plant_lock(ctx: Ctx, cache: Path, node: str, info: dict | str, mtime_ahead: float = 0.0) -> Path:
    shutil.rmtree(ctx.product(cache, node))
    lock = cache / "locks" / f"{ctx.ref['base']['artifacts'][node]}.lock"
    lock.parent.mkdir(exist_ok=True)
    lock.write_text(info if isinstance(info, str) else json.dumps(info))
    if mtime_ahead:
        t = time.time() + mtime_ahead
        os.utime(lock, (t, t))
    return lock


@case("store-lock", "a foreign lock dated an hour ahead goes stale")
def _future_lock(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    info = {
        "host": "other-node",
        "ns": "0badc0de",
        "pid": 1,
        "token": "f" * 32,
        "started": time.time() + 3600,
    }
    _plant_lock(ctx, cache, "adapter", info, mtime_ahead=3600)
    return same_numbers(*ctx.run(cache, ["store.lock_stale_s=3"]), ctx.ref["base"])


@case("store-lock", "an empty lock file (its creator killed mid-write)")
def _empty_lock(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    _plant_lock(ctx, cache, "adapter", "")
    return same_numbers(*ctx.run(cache, ["store.lock_stale_s=3"]), ctx.ref["base"])


@case("store-lock", "a live lock of a container sharing our hostname")
def _container_lock(ctx: Ctx) -> Verdict:
    """Same hostname, another PID namespace, a pid that is dead here: alive while its heartbeat beats."""
    cache = ctx.cache()
    info = {"host": HOST, "ns": "0badc0de", "pid": 999_999, "token": "e" * 32, "started": time.time()}
    lock = _plant_lock(ctx, cache, "adapter", info)
    stop = threading.Event()

    def beat() -> None:  # the other container's heartbeat
        while not stop.wait(0.5):
            os.utime(lock) if lock.exists() else None

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        out, rec = ctx.run(cache, ["store.lock_stale_s=3", "run.on_busy=exit"])
        time.sleep(4)  # longer than lock_stale_s: a waiter counting wall time or trusting host+pid breaks it
        out2, rec2 = ctx.run(cache, ["store.lock_stale_s=3", "run.on_busy=exit"])
    finally:
        stop.set()
        thread.join()
    statuses = [(r or {}).get("status") for r in (rec, rec2)]
    if not lock.exists() or statuses != ["waiting", "waiting"]:
        return "lost result", f"statuses {statuses}; lock {'kept' if lock.exists() else 'broken'}"
    return (
        ("ok", "waited twice, lock kept")
        if out2.returncode == 75
        else ("unclear error", f"exit {out2.returncode}")
    )


@case("store-temp", "other jobs' temp folders are left alone, a dead one here removed")
def _temps(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    folder = cache / "adapter"
    foreign = folder / f".adapter-00000000000000aa.tmp-{HOST}-0badc0de-{os.getpid()}"  # our host, other ns
    live = folder / f".adapter-00000000000000bb.tmp-{HOST}-{NAMESPACE}-1"  # this namespace, pid 1 lives
    dead = folder / f".adapter-00000000000000cc.tmp-{HOST}-{NAMESPACE}-999999"
    for p in (foreign, live, dead):
        p.mkdir()
        (p / "adapter_model.safetensors").write_bytes(b"in progress")
    out, rec = ctx.run(cache, [])
    if not foreign.exists() or not live.exists():
        return "lost result", "a live job's temp folder was removed"
    if dead.exists():
        return "unclear error", "a dead job's temp folder was left"
    return same_numbers(out, rec, ctx.ref["base"])


@case("store-input", "queries rewritten with the same bytes while training")
def _input_touched(ctx: Ctx) -> Verdict:
    data = ctx.bad_data(lambda d: None)
    cache = ctx.root / f"touch-{ctx.n}"
    queries = data / "scifact" / "queries.jsonl"
    proc, job = ctx.run(cache, KILL, data=data, popen=True)
    deadline = time.time() + 600
    while (
        proc.poll() is None and time.time() < deadline and not glob.glob(f"{cache}/adapter/.adapter-*.tmp-*")
    ):
        time.sleep(0.05)
    queries.write_bytes(queries.read_bytes())  # the same contents, a new stamp: what was read meanwhile?
    _, err = proc.communicate(timeout=900)
    lines = [ln for ln in err.splitlines() if ln.startswith("readaptir: error:")]
    # made before the touch (tokens, base index and run) may stand; nothing trained or scored after it
    published = glob.glob(f"{cache}/adapter/*/.done") + glob.glob(f"{cache}/readapted/*/.done")
    published += list((cache / "results").rglob("*.json"))
    if proc.returncode == 0 or published:
        return "reused poisoned", f"exit {proc.returncode}, {len(published)} run/result products published"
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1][:150]
    if lines and "queries.jsonl" in lines[0]:
        return "ok", lines[0][:150]
    return "unclear error", (err.strip().splitlines() or ["?"])[-1][:150]


# -------------------------------------------------------------------------------------------- results
def _table(ctx: Ctx, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "readaptir.report", "table1", "--results-dir", str(results), "--out",
                           str(ctx.root / f"t-{ctx.n}"), "--models", "tiny-llama", "--datasets", "scifact",
                           "--any-variant"], capture_output=True, text=True, cwd=ctx.root, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ctx.repo)})  # fmt: skip


@case("store-results", "a stored record's number edited by hand")
def _edited(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    path = next((cache / "results").rglob("*.json"))
    record = json.loads(path.read_text())
    record["readapted"]["NDCG@10"] = 0.999
    path.write_text(json.dumps(record))
    out = _table(ctx, cache / "results")
    row = next((ln for ln in out.stdout.splitlines() if ln.lower().startswith("| scifact")), "")
    if "99.9" in row:
        return "reused poisoned", f"row {row!r}"
    if out.returncode != 0 or "Traceback" in out.stderr:
        return "traceback", (out.stderr.strip().splitlines() or ["?"])[-1][:150]
    return (
        ("ok", "skipped, the file named") if str(path) in out.stderr else ("unclear error", "file not named")
    )


@case("store-results", "junk in the store: non-number metric, a folder and a dead link named .json")
def _junk(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    path = next((cache / "results").rglob("*.json"))
    record = json.loads(path.read_text())
    record.pop("digest")
    record["readapted"]["NDCG@10"] = "abc"
    (path.parent / "old.json").write_text(json.dumps(record))
    (path.parent / "dir.json").mkdir()
    (path.parent / "dead.json").symlink_to(cache / "nowhere")
    out = _table(ctx, cache / "results")
    if out.returncode != 0 or "Traceback" in out.stderr:
        return "traceback", (out.stderr.strip().splitlines() or ["?"])[-1][:150]
    named = all(str(path.parent / n) in out.stderr for n in ("old.json", "dir.json", "dead.json"))
    return (
        ("ok", "each junk file named, the table written")
        if named
        else ("unclear error", "a junk file not named")
    )


@case("store-results", "a rerun with another corpus_size leaves the record alone")
def _corpus_size(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    before = {p: p.read_bytes() for p in (cache / "results").rglob("*.json")}
    out, rec = ctx.run(cache, ["dataset.corpus_size=999"])
    after = {p: p.read_bytes() for p in (cache / "results").rglob("*.json")}
    if before != after:
        return "lost result", "the stored record was rewritten or another was added"
    if (rec or {}).get("corpus_size") != 120:
        return "silently wrong", f"the job's record says corpus_size {(rec or {}).get('corpus_size')}"
    return same_numbers(out, rec, ctx.ref["base"])


# --------------------------------------------------------------------------------------- checkpoints
def _checkpoints_damaged(ctx: Ctx, which: slice) -> Verdict:
    cache = ctx.root / f"ckpt-{ctx.n}"
    if not kill_when(ctx, cache, KILL, lambda c: bool(glob.glob(f"{c}/work/*/ckpt-000000012"))):
        return "ok", "(the run finished before the kill point: nothing to judge)"
    ckpts = sorted(glob.glob(f"{cache}/work/*/ckpt-*"), reverse=True)[which]
    for ckpt in ckpts:
        f = Path(ckpt) / "adapter.safetensors"
        data = bytearray(f.read_bytes())
        data[-50] ^= 0xFF
        f.write_bytes(bytes(data))
    out, rec = ctx.run(cache, KILL)
    log = "".join(p.read_text() for p in (ctx.root / "jobs" / str(ctx.n)).rglob("run.log"))
    warned = [ln for ln in log.splitlines() if "checkpoint" in ln.lower() and "[WARNING]" in ln]
    verdict, detail = same_numbers(out, rec, ctx.ref["kill"], poisoned=True, tol=1e-6)
    if verdict == "ok" and len(warned) != 1:
        return "unclear error", f"{len(warned)} warning lines about checkpoints"
    return verdict, f"{detail}; resumed from step {(rec or {}).get('train', {}).get('resumed_from_step', 0)}"


@case("store-ckpt", "newest checkpoint damaged after a kill: the one before")
def _newest_damaged(ctx: Ctx) -> Verdict:
    return _checkpoints_damaged(ctx, slice(0, 1))


@case("store-ckpt", "every checkpoint damaged after a kill: from step 0")
def _all_damaged(ctx: Ctx) -> Verdict:
    return _checkpoints_damaged(ctx, slice(None))


@case("store-results", "another cell's record copied under this result key")
def _copied_record(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    ctx.run(cache, ["readapt.alpha=0.3"])
    mine = ctx.ref["base"]["artifacts"]["result"]
    paths = {p.stem: p for p in (cache / "results").rglob("*.json")}
    other = next((k for k in paths if k != mine), None)
    if other is None:
        return "lost result", "the α=0.3 cell stored nothing"
    shutil.copy(paths[mine], paths[other])  # α=0.5's intact record over α=0.3's file
    out, rec = ctx.run(cache, ["readapt.alpha=0.3"])
    held = json.loads(paths[other].read_text())["artifacts"]["result"]
    if held != other:
        return "lost result", f"{paths[other].name} still holds {held}'s record"
    return (
        ("ok", "replaced, with a warning")
        if out.returncode == 0
        else ("unclear error", f"exit {out.returncode}")
    )
