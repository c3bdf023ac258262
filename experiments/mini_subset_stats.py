"""What the mini reproduction's subsets are: sizes, relevant passages kept, BM25 on the subset and on the full corpus.

Cuts each subset of ``conf/dataset/mini/`` from ``READAPTIR_DATA`` the way a cell does (readaptir/data/nano.py)
into a temporary folder and prints, per subset: queries, passages, the relevant judgements of its queries it
keeps, and BM25's nDCG@10 on the subset's queries over the subset's corpus and over the full corpus (the same
BM25 as the hard negatives and distractors: bm25s, Lucene scoring, stemmed). Writes the figures as JSON.

    READAPTIR_DATA=/path/to/beir python experiments/mini_subset_stats.py [--out experiments/mini-cpu/subsets.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from readaptir.config import CONF_DIR, SubsetSpec  # noqa: E402
from readaptir.data.beir import iter_corpus, load_qrels, load_queries  # noqa: E402
from readaptir.data.bm25 import bm25_rankings  # noqa: E402
from readaptir.data.nano import write_subset  # noqa: E402
from readaptir.evaluate import evaluate_run  # noqa: E402
from readaptir.fs import atomic_write_json  # noqa: E402


def bm25_ndcg10(root: Path, qids: set[str], qrels: dict[str, dict[str, int]]) -> float:
    """BM25's nDCG@10 × 100 for ``qids`` over ``root``'s whole corpus, judged by ``qrels``."""
    docs = {p.doc_id: f"{p.title} {p.text}".strip() for p in iter_corpus(root)}
    queries = load_queries(root, qids)
    ranked = bm25_rankings(docs, queries, 100)
    run = {q: {d: float(100 - i) for i, d in enumerate(ranked[q])} for q in queries}
    return 100.0 * evaluate_run({q: qrels[q] for q in queries}, run)[0]["NDCG@10"]


def stats(name: str, data: Path, work: Path) -> dict:
    cfg = yaml.safe_load((CONF_DIR / "dataset" / "mini" / f"{name}.yaml").read_text())
    spec, split = SubsetSpec(**cfg["subset"]), cfg["split"]
    about = write_subset(data / spec.of, work / name, spec, split)
    sub_qrels = load_qrels(work / name, split)
    full_qrels = load_qrels(data / spec.of, split)
    qids = set(sub_qrels)
    corpus = {p.doc_id for p in iter_corpus(data / spec.of)}
    relevant_all = sum(1 for q in qids for d, s in full_qrels[q].items() if s > 0 and d in corpus)
    return {
        "subset": cfg["name"],
        "of": spec.of,
        "queries": about["n_queries"],
        "passages": about["n_passages"],
        "full_corpus": len(corpus),
        "relevant_kept": about["n_relevant_judgements"],
        "relevant_of_its_queries": relevant_all,
        "relevant_kept_pct": round(100.0 * about["n_relevant_judgements"] / relevant_all, 1),
        "bm25_ndcg10_subset": round(bm25_ndcg10(work / name, qids, sub_qrels), 1),
        "bm25_ndcg10_full_corpus": round(bm25_ndcg10(data / spec.of, qids, full_qrels), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--subsets", default="scifact,nfcorpus", help="conf/dataset/mini/ names")
    args = parser.parse_args()
    data = Path(os.environ.get("READAPTIR_DATA", "data"))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [stats(n, data, Path(tmp)) for n in args.subsets.split(",")]
    for r in rows:
        print(json.dumps(r))
    if args.out:
        atomic_write_json(Path(args.out), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
