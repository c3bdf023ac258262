"""The cases of experiments/hostile.py, by class, and the judges that turn a run into a verdict."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FAST = ["tracking.backend=none", "train.max_passages=24", "search.top_k=100", "encode.max_batch_size=64"]
# Longer training and encoding windows, so that a kill lands inside them: 32 steps, a checkpoint every 4.
KILL = ["train.max_passages=64", "train.batch_size=2", "train.checkpoint_every=4", "encode.max_batch_size=4"]
ROOT_ONLY = os.geteuid() == 0 and shutil.which("unshare") is not None
Verdict = tuple[str, str]


@dataclass
class Case:
    cls: str
    name: str
    fn: Callable[[Ctx], Verdict]


@dataclass
class Ctx:
    root: Path
    data: Path
    repo: Path
    ref: dict[str, dict] = field(default_factory=dict)
    n: int = 0

    def run(self, cache: Path, overrides: list[str], data: Path | None = None, multirun: bool = False,
            wrap: str | None = None, popen: bool = False, timeout: float = 900):  # fmt: skip
        """``run.py dataset=scifact <FAST> <overrides>`` → (process, job folder's record or None)."""
        self.n += 1
        job = self.root / "jobs" / str(self.n)
        where = ["-m", f"hydra.sweep.dir={job}"] if multirun else [f"hydra.run.dir={job}"]
        args = [sys.executable, str(self.repo / "run.py"), *where, "dataset=scifact", *FAST, *overrides]
        env = {**os.environ, "READAPTIR_DATA": str(data or self.data), "READAPTIR_CACHE": str(cache),
               "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(self.repo)}  # fmt: skip
        env.pop("WANDB_API_KEY", None)
        if wrap is not None:  # a shell prefix (a private mount namespace), the command as "$@"
            args = ["unshare", "-m", "sh", "-c", f'{wrap} && exec "$@"', "sh", *args]
        if popen:
            return subprocess.Popen(args, env=env, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True), job  # fmt: skip
        out = subprocess.run(args, env=env, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        return out, record(job)

    def prepare(self) -> None:
        for name, extra in (("base", []), ("kill", KILL)):
            out, rec = self.run(self.root / f"ref-{name}", extra)
            if rec is None or rec.get("status") != "done":
                raise SystemExit(f"reference run {name} failed:\n{out.stderr[-3000:]}")
            self.ref[name] = rec

    def cache(self, ref: str = "base") -> Path:
        """A copy of a reference run's cache (every product built, its result stored)."""
        self.n += 1
        dst = self.root / "caches" / str(self.n)
        shutil.copytree(self.root / f"ref-{ref}", dst)
        return dst

    def product(self, cache: Path, node: str, ref: str = "base") -> Path:
        key = self.ref[ref]["artifacts"][node]
        return cache / key.split("-", 1)[0] / key

    def bad_data(self, mutate: Callable[[Path], None]) -> Path:
        self.n += 1
        dst = self.root / "datas" / str(self.n)
        shutil.copytree(self.data, dst)
        mutate(dst / "scifact")
        return dst


def record(job: Path) -> dict | None:
    found = sorted(job.rglob("results.json"))
    return json.loads(found[0].read_text()) if found else None


def clear_error(out, rec, *must: str) -> Verdict:
    """Refused, with one line naming what to fix (ours, or Hydra's own override errors)."""
    err = out.stderr
    lines = [ln for ln in err.splitlines() if ln.startswith(("readaptir: error:", "Could not override",
                                                             "Error merging", "Missing mandatory"))]  # fmt: skip
    if out.returncode == 0:
        return "silently wrong", f"accepted, status {rec and rec.get('status')}"
    if "Traceback" in err:
        return "traceback", (err.strip().splitlines() or ["?"])[-1][:120]
    if lines and all(m in lines[0] for m in must):
        return "ok", lines[0][:150]
    return "unclear error", (err.strip().splitlines() or ["(nothing)"])[-1][:150]


def same_numbers(out, rec, ref: dict, poisoned: bool = False, tol: float = 0.0) -> Verdict:
    """Done, with the numbers of an undisturbed run."""
    if rec is None or rec.get("status") != "done" or out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["?"])[-1][:150]
        return ("traceback" if "Traceback" in out.stderr else "unclear error"), why
    for part in ("base", "readapted"):
        diff = max((abs(rec[part].get(k, -1) - v) for k, v in ref[part].items()), default=0.0)
        if diff > tol:
            bad = "reused poisoned" if poisoned else "silently wrong"
            return (
                bad,
                f"{part} differs by {diff:.3g} (nDCG@10 {rec[part].get('NDCG@10')} vs {ref[part]['NDCG@10']})",
            )
    return "ok", "the undisturbed run's numbers"


def leftovers(cache: Path) -> list[str]:
    return [p for p in glob.glob(f"{cache}/*/.*.tmp-*") + glob.glob(f"{cache}/work/*") if os.path.exists(p)]


def kill_when(ctx: Ctx, cache: Path, overrides: list[str], ready: Callable[[Path], bool]) -> bool:
    """Start a run, SIGKILL it once ``ready(cache)``; False when it finished before that happened."""
    proc, _ = ctx.run(cache, overrides, popen=True)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if ready(cache):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    return False


CASES: list[Case] = []


def case(cls: str, name: str):
    def add(fn: Callable[[Ctx], Verdict]) -> Callable[[Ctx], Verdict]:
        CASES.append(Case(cls, name, fn))
        return fn

    return add


# ---------------------------------------------------------------------------------------------- configs
BAD_CONFIGS = [
    ("train.batch_size=-1", "train.batch_size"), ("train.batch_size=0", "train.batch_size"),
    ("train.epochs=0", "train.epochs"), ("search.top_k=0", "search.top_k"), ("readapt.alpha=abc", "readapt.alpha"),
    ("train.batching=fast", "train.batching"), ("readapt.knowledge_scaling=x", "knowledge_scaling"),
    ("adapter.dropout=1.5", "adapter.dropout"), ("train.lr=-1", "train.lr"), ("encode.dtype=fp8", "encode.dtype"),
    ("model.query_max_len=1", "model.query_max_len"), ("store.verify=maybe", "store.verify"),
    ("model.retriever=???", "model.retriever"), ("train.lrr=1", "train.lrr"), ("run.stage=train", "run.stage"),
]  # fmt: skip
for _override, _key in BAD_CONFIGS:
    case("config", _override)(
        lambda ctx, o=_override, k=_key: clear_error(*ctx.run(ctx.root / "c-none", [o]), k)
    )


@case("config", "paths.data_dir is a file")
def _data_dir_file(ctx: Ctx) -> Verdict:
    f = ctx.root / "a-file"
    f.write_text("x")
    return clear_error(*ctx.run(ctx.root / "c-none", [f"paths.data_dir={f}"]), "paths.data_dir")


@case("config", "paths.cache_dir under a file")
def _cache_under_file(ctx: Ctx) -> Verdict:
    f = ctx.root / "a-file"
    f.write_text("x")
    return clear_error(*ctx.run(f / "cache", []), "paths.cache_dir")


# ------------------------------------------------------------------------------------------------- data
def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


DATA_CASES: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("non-UTF-8 byte in the corpus", lambda d: (d / "corpus.jsonl").write_bytes(
        (d / "corpus.jsonl").read_bytes().replace(b"a", b"\xe9", 1)), ("corpus.jsonl:", "not valid UTF-8")),
    ("non-UTF-8 byte in the qrels", lambda d: (d / "qrels" / "test.tsv").write_bytes(
        (d / "qrels" / "test.tsv").read_bytes() + b"q\xff\td\t1\n"), ("test.tsv:", "not valid UTF-8")),
    ("broken JSON line in queries", lambda d: (d / "queries.jsonl").write_text(
        (d / "queries.jsonl").read_text() + '{"_id": "x", "text": \n'), ("queries.jsonl:", "not valid JSON")),
    ("empty corpus", lambda d: (d / "corpus.jsonl").write_text(""), ("corpus.jsonl: no passages",)),
    ("duplicate doc ids", lambda d: (d / "corpus.jsonl").write_text(
        "".join(_lines(d / "corpus.jsonl") * 2)), ("occur more than once",)),
    ("qrels of another corpus", lambda d: shutil.copy(d.parent / "nfcorpus" / "qrels" / "test.tsv",
                                                      d / "qrels" / "test.tsv"), ("do not belong to this corpus",)),
    ("no judged query in queries.jsonl", lambda d: (d / "queries.jsonl").write_text(
        '{"_id": "nobody", "text": "x"}\n'), ("none of its",)),
    ("line without _id in the corpus", lambda d: (d / "corpus.jsonl").write_text(
        (d / "corpus.jsonl").read_text() + '{"text": "no id"}\n'), ("missing field(s) ['_id']",)),
    ("qrels score not a number", lambda d: (d / "qrels" / "test.tsv").write_text(
        (d / "qrels" / "test.tsv").read_text() + "q\td\thigh\n"), ("is not a number",)),
    ("qrels split missing", lambda d: (d / "qrels" / "test.tsv").rename(d / "qrels" / "other.tsv"),
     ("qrels split 'test' not found",)),
]  # fmt: skip
for _name, _mutate, _must in DATA_CASES:
    case("data", _name)(
        lambda ctx, m=_mutate, w=_must: clear_error(*ctx.run(ctx.cache(), [], ctx.bad_data(m)), *w)
    )


@case("data", "a few qrels at unknown docs: counted, run")
def _few_unknown(ctx: Ctx) -> Verdict:
    def add(d: Path) -> None:
        rows = _lines(d / "qrels" / "test.tsv")
        extra = [f"{r.split(chr(9))[0]}\tnowhere-{i}\t0\n" for i, r in enumerate(rows[1:4])]  # judged 0
        (d / "qrels" / "test.tsv").write_text("".join(rows + extra))

    out, rec = ctx.run(ctx.cache(), [], ctx.bad_data(add))
    said = out.stdout + out.stderr
    if "3 of" not in said or "point at doc ids not in corpus.jsonl" not in said:
        return "silently wrong", "no count of the unknown judgements"
    return same_numbers(out, rec, ctx.ref["base"])  # score 0 judgements change no metric


@case("data", "corpus edited in the middle, same size")
def _same_size_edit(ctx: Ctx) -> Verdict:
    def edit(d: Path) -> None:
        lines = _lines(d / "corpus.jsonl")
        row = json.loads(lines[60])
        row["text"] = "".join(reversed(row["text"]))  # same length, other words
        lines[60] = json.dumps(row) + "\n"
        (d / "corpus.jsonl").write_text("".join(lines))

    data = ctx.bad_data(edit)
    out, rec = ctx.run(ctx.cache(), [], data)
    fresh_out, fresh = ctx.run(ctx.root / f"fresh-{ctx.n}", [], data)
    if rec is None or fresh is None or rec.get("status") != "done":
        return "unclear error", "did not finish"
    if rec["artifacts"]["base_index"] == ctx.ref["base"]["artifacts"]["base_index"]:
        return "reused poisoned", "the old corpus's index was served"
    return same_numbers(out, rec, fresh)


# ---------------------------------------------------------------------------------------- cache damage
def _flip(path: Path, at: int = 3000, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(min(at, len(data) - n), min(at, len(data) - n) + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_lines(path: Path) -> None:
    lines = _lines(path)
    path.write_text("".join(lines[: len(lines) // 2]))


def _damaged(ctx: Ctx, damage: Callable[[Path], None], overrides: list[str] | None = None) -> Verdict:
    cache = ctx.cache()
    damage(cache)
    return same_numbers(*ctx.run(cache, overrides or []), ctx.ref["base"], poisoned=True)


DAMAGE: list[tuple[str, Callable[[Ctx, Path], None]]] = [
    ("flipped bytes in the adapter", lambda ctx, c: _flip(ctx.product(c, "adapter") / "adapter_model.safetensors")),
    ("truncated adapter", lambda ctx, c: (ctx.product(c, "adapter") / "adapter_model.safetensors").write_bytes(
        (ctx.product(c, "adapter") / "adapter_model.safetensors").read_bytes()[:5000])),
    ("base run cut at a line boundary", lambda ctx, c: _truncate_lines(ctx.product(c, "base_run") / "run.trec")),
    ("readapted run cut at a line boundary", lambda ctx, c: _truncate_lines(ctx.product(c, "ra_run") / "run.trec")),
    ("flipped bytes in readapted scores", lambda ctx, c: _flip(ctx.product(c, "ra_run") / "run.trec", 200, 2)),
    ("4 KB random in base embeddings + cut base run", lambda ctx, c: (
        (ctx.product(c, "base_index") / "embeddings.f16").write_bytes(
            os.urandom(4096) + (ctx.product(c, "base_index") / "embeddings.f16").read_bytes()[4096:]),
        _truncate_lines(ctx.product(c, "base_run") / "run.trec"))),
    ("token cache damaged, adapter deleted", lambda ctx, c: (
        _flip(ctx.product(c, "tokens") / "ids.bin", 10, 8), shutil.rmtree(ctx.product(c, "adapter")))),
    ("adapter's .done removed", lambda ctx, c: (ctx.product(c, "adapter") / ".done").unlink()),
    ("adapter's .done garbled", lambda ctx, c: (ctx.product(c, "adapter") / ".done").write_text("{not json")),
    ("stray file in the base run", lambda ctx, c: (ctx.product(c, "base_run") / "run.trec.orig").write_text("x")),
    ("identity memo garbled", lambda ctx, c: [p.write_text("garbage") for p in (c / "identity").glob("*.json")]),
]  # fmt: skip
for _name, _damage in DAMAGE:
    case("cache", _name)(lambda ctx, d=_damage: _damaged(ctx, lambda c: d(ctx, c)))


@case("cache", "bad adapter deleted by hand, then rerun")
def _repair(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    _flip(ctx.product(cache, "adapter") / "adapter_model.safetensors")
    ctx.run(cache, ["readapt.alpha=0.3"])  # another α made from the damaged adapter
    shutil.rmtree(ctx.product(cache, "adapter"))
    return same_numbers(*ctx.run(cache, []), ctx.ref["base"], poisoned=True)


# ------------------------------------------------------------------------------------------------ kills
def _exists(pattern: str) -> Callable[[Path], bool]:
    return lambda cache: bool(glob.glob(f"{cache}/{pattern}"))


KILL_POINTS: list[tuple[str, list[Callable[[Path], bool]]]] = [
    ("kill -9 while encoding the base corpus", [_exists("index/.index-*.tmp-*")]),
    ("kill -9 while training, before a checkpoint", [_exists("adapter/.adapter-*.tmp-*")]),
    ("kill -9 while training, after a checkpoint", [_exists("work/*/ckpt-*")]),
    ("kill -9 twice while training", [_exists("work/*/ckpt-000000004"), _exists("work/*/ckpt-000000012")]),
    ("kill -9 right after the adapter is published", [_exists("adapter/adapter-*/.done")]),
    ("kill -9 while encoding the readapted corpus", [lambda c: bool(glob.glob(f"{c}/readapted/readapted-*/.done"))
                                                     and bool(glob.glob(f"{c}/index/.index-*.tmp-*"))]),
]  # fmt: skip


def _killed(ctx: Ctx, points: list[Callable[[Path], bool]]) -> Verdict:
    cache = ctx.root / f"kill-{ctx.n}"
    for ready in points:
        if not kill_when(ctx, cache, KILL, ready):
            return "ok", "(the run finished before the kill point: nothing to judge)"
    out, rec = ctx.run(cache, KILL)
    left = leftovers(cache)
    if left:
        return "lost result", f"leftovers after the rerun: {left[:2]}"
    resumed = (rec or {}).get("train", {}).get("resumed_from_step", 0)
    verdict, detail = same_numbers(out, rec, ctx.ref["kill"], tol=1e-6)
    return verdict, f"{detail}; training resumed from step {resumed}"


for _name, _points in KILL_POINTS:
    case("kill", _name)(lambda ctx, p=_points: _killed(ctx, p))


# ------------------------------------------------------------------------------------------ concurrency
def _together(ctx: Ctx, cache: Path, runs: list[list[str]]) -> list[tuple[subprocess.Popen, dict | None]]:
    procs = [ctx.run(cache, o, popen=True) for o in runs]
    for p, _ in procs:
        p.communicate(timeout=900)
    return [(p, record(job)) for p, job in procs]


@case("concurrent", "two identical cells at once")
def _twins(ctx: Ctx) -> Verdict:
    cache = ctx.root / f"twins-{ctx.n}"
    done = _together(ctx, cache, [[], []])
    built = sum(1 for _, r in done for e in (r or {}).get("artifact_events", []) if e["kind"] == "adapter"
                and not e["reused"])  # fmt: skip
    for p, rec in done:
        v = same_numbers(p, rec, ctx.ref["base"])
        if v[0] != "ok":
            return v
    return ("ok", "adapter trained once") if built == 1 else ("silently wrong", f"adapter trained {built}×")


@case("concurrent", "two alphas sharing one adapter at once")
def _alphas(ctx: Ctx) -> Verdict:
    cache = ctx.root / f"alphas-{ctx.n}"
    (p5, r5), (p3, r3) = _together(ctx, cache, [[], ["readapt.alpha=0.3"]])
    if (r3 or {}).get("status") != "done":
        return "unclear error", "the α=0.3 cell did not finish"
    return same_numbers(p5, r5, ctx.ref["base"])


@case("concurrent", "on_busy=exit while another job trains")
def _busy(ctx: Ctx) -> Verdict:
    cache = ctx.root / f"busy-{ctx.n}"
    slow = [*KILL, "train.epochs=8"]  # 256 steps: still training when the second job (≈ 5 s to start) asks
    first, _ = ctx.run(cache, slow, popen=True)
    while first.poll() is None and not glob.glob(f"{cache}/adapter/.adapter-*.tmp-*"):
        time.sleep(0.05)
    second = [*slow, "readapt.alpha=0.3", "run.on_busy=exit"]  # shares the first job's adapter
    out, rec = ctx.run(cache, second)
    first.communicate(timeout=900)
    if out.returncode != 75 or (rec or {}).get("status") != "waiting":
        return "unclear error", f"exit {out.returncode}, status {(rec or {}).get('status')}"
    again, rec2 = ctx.run(cache, second)
    return ("ok", "waiting, then done on the rerun") if (rec2 or {}).get("status") == "done" else (
        "unclear error", (again.stderr.strip().splitlines() or ["?"])[-1][:150])  # fmt: skip


# ---------------------------------------------------------------------------- full disks, read-only folders
def _mounted(ctx: Ctx, what: str, mount: str, overrides: list[str], must: tuple[str, ...]) -> Verdict:
    if not ROOT_ONLY:
        return "skipped", "needs root and unshare"
    target = ctx.root / f"{what}-{ctx.n}"
    target.mkdir(parents=True)
    cache = ctx.cache() if what != "cache" else target
    wrap = mount.format(target=target)
    out, rec = ctx.run(cache, [o.format(target=target) for o in overrides], wrap=wrap)
    must = tuple(m.format(target=target) for m in must)  # the message names the folder
    return clear_error(out, rec, *must) if must else same_numbers(out, rec, ctx.ref["base"])


TMPFS = "mount -t tmpfs -o size={size} tmpfs {{target}}"
RO = "mount --bind {target} {target} && mount -o remount,ro,bind {target}"
MOUNT_CASES = [
    ("full disk under the cache", "cache", TMPFS.format(size="900k"), [], ("no space left on device", "{target}")),
    ("full disk under the results store", "results", TMPFS.format(size="4k"), ["paths.results_dir={target}"],
     ("no space left on device", "{target}")),
    ("read-only cache", "cache", RO, [], ("paths.cache_dir", "not writable")),
    ("read-only results store", "results", RO, ["paths.results_dir={target}"], ("paths.results_dir", "not writable")),
]  # fmt: skip
for _name, _what, _mount, _over, _must in MOUNT_CASES:
    case("disk", _name)(lambda ctx, w=_what, m=_mount, o=_over, x=_must: _mounted(ctx, w, m, o, x))


@case("disk", "read-only data folder")
def _ro_data(ctx: Ctx) -> Verdict:
    if not ROOT_ONLY:
        return "skipped", "needs root and unshare"
    data = ctx.bad_data(lambda d: None)
    out, rec = ctx.run(ctx.root / f"rodata-{ctx.n}", [], data, wrap=RO.format(target=data))
    return same_numbers(out, rec, ctx.ref["base"])


# ------------------------------------------------------------------------------------------------ results
def _stored(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in (cache / "results").rglob("*.json")}


def _kept(ctx: Ctx, overrides: list[str], multirun: bool = False, expect: int = 2) -> Verdict:
    cache = ctx.cache()
    before = _stored(cache)
    out, _ = ctx.run(cache, overrides, multirun=multirun)
    after = _stored(cache)
    jobs = list((ctx.root / "jobs" / str(ctx.n)).rglob("results.json"))
    if multirun and len(jobs) != expect - 1:
        return "lost result", f"{len(jobs)} job folders with a results.json for {expect - 1} jobs"
    if any(after.get(k) != v for k, v in before.items()):
        return "lost result", "the earlier result was replaced"
    if len(after) != expect or out.returncode != 0:
        return "lost result", f"{len(after)} results stored, {expect} expected (exit {out.returncode})"
    return "ok", f"{len(after)} variants stored side by side"


for _name, _over, _multi, _n in (
    ("same cell, another train.max_passages", ["train.max_passages=16"], False, 2),
    ("same cell, another search.top_k", ["search.top_k=10"], False, 2),
    ("same cell, another train.lr", ["train.lr=1e-3"], False, 2),
    ("sweep over α: one job folder each", ["readapt.alpha=0.3,0.7"], True, 3),
):
    case("results", _name)(lambda ctx, o=_over, m=_multi, n=_n: _kept(ctx, o, m, n))


@case("results", "table shows the experiment's own variant")
def _table(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    ctx.run(cache, ["search.top_k=10"])  # a newer variant of the same cell
    args = [sys.executable, "-m", "readaptir.report", "table1", "--results-dir", str(cache / "results"),
            "--out", str(ctx.root / f"table-{ctx.n}"), "--models", "tiny-llama", "--datasets", "scifact",
            "--experiment", "none", *[f"--override={o}" for o in FAST]]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ctx.repo), "READAPTIR_CACHE": str(cache)}
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ctx.root, timeout=300)
    want = f"{100 * ctx.ref['base']['readapted']['NDCG@10']:.1f}"
    row = next((ln for ln in out.stdout.splitlines() if ln.lower().startswith("| scifact")), "")
    if want not in row:
        return "silently wrong", f"row {row!r}, expected RA {want}"
    return ("ok", "the FAST variant, with a warning") if "2 results in the store" in out.stderr else (
        "silently wrong", "no word about the other variant")  # fmt: skip


@case("results", "truncated results.json in the store")
def _truncated_record(ctx: Ctx) -> Verdict:
    cache = ctx.cache()
    path = next((cache / "results").rglob("*.json"))
    path.write_text(path.read_text()[:200])
    args = [sys.executable, "-m", "readaptir.report", "table1", "--results-dir", str(cache / "results"), "--out",
            str(ctx.root / f"t-{ctx.n}"), "--models", "tiny-llama", "--datasets", "scifact", "--any-variant"]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ctx.repo)},
                         cwd=ctx.root, timeout=300)  # fmt: skip
    if out.returncode != 0 or "Traceback" in out.stderr:
        return "traceback", (out.stderr.strip().splitlines() or ["?"])[-1][:150]
    return ("ok", "skipped with a line naming the file") if str(path) in out.stderr else (
        "unclear error", "the file was not named")  # fmt: skip


@case("sweep", "a failing cell does not stop the sweep")
def _sweep(ctx: Ctx) -> Verdict:
    data = ctx.bad_data(lambda d: None)
    nf = data / "nfcorpus" / "corpus.jsonl"
    nf.write_text(nf.read_text() * 2)  # duplicate ids in nfcorpus only
    out, _ = ctx.run(ctx.cache(), ["dataset=nfcorpus,scifact"], data, multirun=True)
    recs = [json.loads(p.read_text()) for p in (ctx.root / "jobs" / str(ctx.n)).rglob("results.json")]
    status = sorted((r["cell"]["dataset"], r["status"]) for r in recs)
    if status != [("nfcorpus", "failed"), ("scifact", "done")]:
        return "lost result", f"cells: {status}"
    if out.returncode != 1 or "2 cells: 1 done, 1 failed" not in out.stderr or "Traceback" in out.stderr:
        return "unclear error", f"exit {out.returncode}"
    return "ok", "both cells ran; summary; exit 1"
