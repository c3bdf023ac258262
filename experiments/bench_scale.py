"""Memory and time of the corpus pipeline (tokens → index → search) as the corpus grows (not in CI).

Synthetic BeIR-layout corpora of 10k, 100k, 1M and 8.84M passages (MS-MARCO's count; short passages drawn
from the toy corpus's words) go through the three stages a cell runs on a corpus:

- ``tokens``: the knowledge-adapter token cache (:func:`readaptir.train.tokens.ensure_token_cache`);
- ``index``: the dense index build (:meth:`DenseRetriever.index_build`: tokenize in sub-batches, encode
  length-sorted batches, write rows in place) with a stub encoder (token-embedding sums, ``--dim``
  dimensions: the real batching, pooling and writing code at a fraction of a model's cost), and with the
  tiny LLaMA at the sizes named by ``--model-sizes``;
- ``search``: exact top-100 of ``--queries`` queries with the streaming backend and with FAISS's flat index
  where FAISS is installed (the two runs' top-k must be identical).

Each stage runs in a fresh subprocess, so its peak resident memory (VmHWM) is its own. Figures go to
experiments/results/bench_scale-<date>.json and .md. Machine load (``uptime``) is recorded with them.

    OMP_NUM_THREADS=1 python experiments/bench_scale.py --sizes 10k,100k,1M,8.8M --data /tmp/scale
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000, "8.8M": 8_841_823}
WORDS = (
    2,
    9,
)  # words per synthetic passage, uniform in [2, 9): short, so 8.8M passages fit a shared 2-core CPU
QUERIES, TOP_K = 100, 100
GEN_BLOCK = 100_000


def vocabulary() -> np.ndarray:
    """Lower-case words of the toy corpus (the tiny tokenizer was trained on them)."""
    from readaptir.models.tiny import fixture_texts

    return np.asarray(sorted({w for t in fixture_texts() for w in re.findall(r"[a-z]+", t.lower())}))


def generate(n: int, root: Path, seed: int = 0) -> None:
    """A BeIR-layout folder of ``n`` passages (random toy words), ``QUERIES`` queries and their qrels."""
    if (root / "corpus.jsonl").is_file():
        return
    vocab, rng = vocabulary(), np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "corpus.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, n, GEN_BLOCK):
            lens = rng.integers(*WORDS, min(GEN_BLOCK, n - start))
            words = vocab[rng.integers(0, len(vocab), int(lens.sum()))].tolist()
            ends = np.cumsum(lens).tolist()
            f.writelines(
                f'{{"_id": "d{start + i}", "title": "", "text": "{" ".join(words[e - k : e])}"}}\n'
                for i, (e, k) in enumerate(zip(ends, lens.tolist(), strict=True))
            )
    os.replace(tmp, root / "corpus.jsonl")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for q in range(QUERIES):
            f.write(
                json.dumps({"_id": f"q{q}", "text": " ".join(vocab[rng.integers(0, len(vocab), 8)])}) + "\n"
            )
    (root / "qrels").mkdir(exist_ok=True)
    rel = rng.integers(0, n, QUERIES)
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{q}\td{d}\t1\n" for q, d in enumerate(rel))
    )


# ------------------------------------------------------------------------------------------ one stage


def stub_encoder(vocab_size: int, dim: int):
    """A backbone stand-in: the hidden state at a position is the running sum of token embeddings, so
    EOS pooling yields a per-passage vector at the cost of an embedding lookup."""
    import torch

    class Stub(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab_size, dim)
            torch.nn.init.normal_(self.embed.weight, generator=torch.Generator().manual_seed(0))
            self.config = SimpleNamespace(hidden_size=dim)

        def forward(self, input_ids, attention_mask=None, **_):
            h = self.embed(input_ids)
            if attention_mask is not None:
                h = h * attention_mask[..., None]
            return SimpleNamespace(last_hidden_state=h.cumsum(1))

    return Stub()


def retriever(work: Path, encoder: str, dim: int):
    from readaptir.config import EncodeSettings, SearchSettings
    from readaptir.models.tiny import ensure_tiny
    from readaptir.retrieval.dense import DensePrompts, DenseRetriever, load_tokenizer

    tiny = ensure_tiny("llama", work.parent / "tiny")
    tokenizer = load_tokenizer(tiny.pretrained)
    if encoder == "stub":
        model = stub_encoder(len(tokenizer), dim)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tiny.pretrained, dtype="float32")
    prompts = DensePrompts("query: {query}", "passage: {title} {text}", "", 32, 128)
    return DenseRetriever(model, tokenizer, prompts, EncodeSettings(), SearchSettings()), tiny


def run_stage(stage: str, root: Path, work: Path, dim: int) -> dict:
    """One stage in this (fresh) process; returns its figures (seconds of work, not of imports)."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    kind, _, variant = stage.partition(":")
    encoder = "model" if variant == "model" else "stub"
    ret, tiny = retriever(work, encoder, dim)
    out: dict = {}
    t0 = time.perf_counter()
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    if kind == "tokens":
        from readaptir.store.artifacts import ArtifactStore
        from readaptir.train.tokens import ensure_token_cache

        cache = ensure_token_cache(ArtifactStore(work / "store"), "tokens-bench", tiny.pretrained, root)
        out["tokens"] = int(cache.offsets[-1])
    elif kind == "index":
        folder = work / f"index-{encoder}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        build = ret.index_build(root)
        for step in (build.prepare, build.fill, build.finish):
            step(folder)
    elif kind == "search":
        from readaptir.data.beir import load_queries
        from readaptir.retrieval.search import search

        queries = ret.encode_queries(load_queries(root))
        index = ret.open_index(work / "index-stub")
        t0 = time.perf_counter()
        run = search(queries[0], queries[1], index, TOP_K, backend=variant)
        (work / f"run-{variant}.json").write_text(json.dumps(run))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["cpu_seconds"] = round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0, 2)
    return out


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("VmHWM not in /proc/self/status")


# ------------------------------------------------------------------------------------------ driver


def stages(name: str, model_sizes: set[str], faiss_sizes: set[str]) -> list[str]:
    import importlib.util

    out = ["tokens", "index:stub"] + (["index:model"] if name in model_sizes else []) + ["search:stream"]
    has_faiss = importlib.util.find_spec("faiss") is not None
    return out + (["search:faiss"] if has_faiss and name in faiss_sizes else [])


def spawn(stages: list[str], root: Path, work: Path, dim: int) -> dict[str, dict]:
    """Run stages at once, each in a fresh interpreter; their figures, peak RSS and whole wall time.

    Independent stages (tokens, index) may run side by side: each process's peak RSS and CPU time are
    its own, and on a CPU shared with other jobs two processes get their share of it sooner."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    procs, t0 = {}, time.perf_counter()
    for stage in stages:
        cmd = [sys.executable, __file__, "--stage", stage, "--root", str(root), "--work", str(work)]
        cmd += ["--dim", str(dim)]
        # stderr to a file: a pipe left undrained while the other stage is waited for would block it
        work.mkdir(parents=True, exist_ok=True)
        with open(work / f"{stage.replace(':', '-')}.log", "w") as err:
            procs[stage] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    rows = {}
    for stage, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode:
            log = (work / f"{stage.replace(':', '-')}.log").read_text()
            raise SystemExit(f"stage {stage} on {root} failed:\n{log[-3000:]}")
        rows[stage] = json.loads(out.strip().splitlines()[-1])
        rows[stage]["process_seconds"] = round(time.perf_counter() - t0, 2)
    return rows


def same_topk(work: Path, tol: float = 1e-5) -> dict | None:
    """Stream vs FAISS: identical ranked doc ids per query (strictly, and up to ties: the two orders may
    differ only among documents whose scores are within ``tol``), and the largest score difference."""
    a, b = work / "run-stream.json", work / "run-faiss.json"
    if not (a.is_file() and b.is_file()):
        return None
    return compare_runs(json.loads(a.read_text()), json.loads(b.read_text()), tol)


def compare_runs(ra: dict, rb: dict, tol: float = 1e-5) -> dict:
    def tie_equal(x: dict, y: dict) -> bool:
        sx, sy = np.array(list(x.values())), np.array(list(y.values()))
        if len(sx) != len(sy) or (len(sx) and np.abs(sx - sy).max() > tol):
            return False
        floor = sx.min(initial=np.inf) + tol  # documents clearly above the cut must be in both lists
        return all(d in y for d, s in x.items() if s > floor) and all(
            d in x for d, s in y.items() if s > floor
        )

    diff = max(
        (abs(s - sb) for q in ra for s, sb in zip(ra[q].values(), rb[q].values(), strict=False)), default=0
    )
    return {"identical_topk": ra.keys() == rb.keys() and all(list(ra[q]) == list(rb[q]) for q in ra),
            "identical_up_to_ties": ra.keys() == rb.keys() and all(tie_equal(ra[q], rb[q]) for q in ra),
            "max_rank_score_diff": float(diff)}  # fmt: skip


def save(results: dict, out: Path) -> None:
    """Merge into the day's file (sizes measured by separate invocations accumulate) and render the table."""
    old = json.loads(out.read_text()) if out.is_file() else {}
    merged = {**old, **results, "sizes": {**old.get("sizes", {}), **results["sizes"]}}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1))
    os.replace(tmp, out)
    lines = ["| passages | stage | seconds | CPU seconds | peak RSS (MiB) |", "|---:|---|---:|---:|---:|"]
    for size in sorted(merged["sizes"].values(), key=lambda v: v["passages"]):
        for stage, row in size["stages"].items():
            cells = f"{row['seconds']} | {row['cpu_seconds']} | {row['peak_rss_mb']:,.0f}"
            lines.append(f"| {size['passages']:,} | {stage} | {cells} |")
        if size.get("stream_vs_faiss"):
            lines.append(f"| {size['passages']:,} | stream vs faiss | {size['stream_vs_faiss']} | | |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def drive(args) -> None:
    day = datetime.date.today().isoformat()
    out = ROOT / "experiments" / "results" / f"bench_scale-{day}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS")},
               "dim": args.dim, "queries": QUERIES, "top_k": TOP_K, "sizes": {}}  # fmt: skip
    from readaptir.models.tiny import ensure_tiny

    # Built here, not in a stage: making the tiny LLaMA (its tokenizer trained) peaks near 525 MiB, which
    # the first stage to need it would report as its own (measured: 1M tokens 426 MiB, 524 building it).
    ensure_tiny("llama", args.data / "tiny")
    for name in args.sizes.split(","):
        root, work = args.data / name, args.data / f"work-{name}"
        t0 = time.perf_counter()
        generate(SIZES[name], root)
        print(f"{name}: corpus ready in {time.perf_counter() - t0:.0f} s", flush=True)
        size = {"passages": SIZES[name], "load_before": os.getloadavg(), "stages": {}}
        todo = stages(name, set(args.model_sizes.split(",")), set(args.faiss_sizes.split(",")))
        builds = [s for s in todo if not s.startswith("search")]
        groups = [builds] if args.parallel else [[s] for s in builds]
        for group in groups + [[s] for s in todo if s.startswith("search")]:  # searches read the stub index
            size["stages"].update(spawn(group, root, work, args.dim))
            print(name, {s: size["stages"][s] for s in group}, flush=True)
            results["sizes"][name] = size
            save(results, out)
        size["stream_vs_faiss"] = same_topk(work)
        size["load_after"] = os.getloadavg()
        save(results, out)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(root, ignore_errors=True)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10k,100k,1M,8.8M", help=f"comma-separated, of {list(SIZES)}")
    ap.add_argument("--data", type=Path, default=Path("/tmp/readaptir-bench-scale"))
    ap.add_argument("--dim", type=int, default=128, help="stub embedding dimension")
    ap.add_argument("--model-sizes", default="10k", help="sizes also indexed with the tiny LLaMA")
    ap.add_argument("--faiss-sizes", default="10k,100k,1M", help="sizes also searched with FAISS")
    ap.add_argument("--parallel", action="store_true", help="run the tokens and index stages side by side")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic data and products")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--stage"), ap.add_argument("--root", type=Path), ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    if args.stage:
        row = run_stage(args.stage, args.root, args.work, args.dim)
        print(json.dumps({**row, "peak_rss_mb": peak_rss_mb()}))
    elif args.generate_only:
        for name in args.sizes.split(","):
            generate(SIZES[name], args.data / name)
    else:
        drive(args)


if __name__ == "__main__":
    main()
