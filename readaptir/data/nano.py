"""NanoBEIR-style subsets: a small BeIR folder cut deterministically from a full dataset.

For runs that must fit a CPU (``experiment=mini-cpu``): ``queries`` eval-split queries that have a
judged-relevant passage, sampled with ``seed``; the corpus is up to ``relevant_per_query`` of each query's
judged-relevant passages (sampled with the same generator), then BM25 distractors — each query's BM25
ranking over the *full* corpus, taken round-robin by rank (every query's first hit, then every second
hit, ...) — until ``passages`` passages; qrels keep every judgement of the chosen queries whose passage
is in the subset. Because BM25 chose the distractors, BM25 scores on such a subset are inflated and
comparable to nothing; dense retrievers face BM25-hard negatives.

The folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``, ``subset.json`` describing it) is
a cached product keyed by the source files' contents and the subset's settings (:func:`subset_key`).

    key = subset_key(spec, source_root, "test");  write_subset(source_root, out_dir, spec, "test")
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from readaptir.config import SubsetSpec
from readaptir.data.beir import DataError, iter_corpus, load_qrels, load_queries
from readaptir.data.bm25 import bm25_rankings
from readaptir.fs import atomic_write, atomic_write_json
from readaptir.store.artifacts import make_key
from readaptir.store.identity import content_identity

BM25_DEPTH = 200
FORMAT = 1


def subset_key(spec: SubsetSpec, source: Path, split: str, memo_dir: Path | None = None) -> str:
    """Key of the subset folder: the source files' contents (identities remembered in ``memo_dir``) and the
    subset's settings."""
    files = ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv")
    return make_key("dataset", {"subset": spec.model_dump(), "split": split, "format": FORMAT,
                                **{f: content_identity(Path(source) / f, memo_dir) for f in files}})  # fmt: skip


def choose(
    qrels: dict[str, dict[str, int]], passages: dict[str, str], queries: dict[str, str], spec: SubsetSpec
) -> tuple[list[str], list[str]]:
    """``(query ids, doc ids)`` of the subset, in a deterministic order."""
    rng = random.Random(spec.seed)
    candidates = sorted(
        q for q, d in qrels.items() if q in queries and any(s > 0 and x in passages for x, s in d.items())
    )
    if not candidates:
        raise DataError(
            "no query of the split has a judged-relevant passage in the corpus: cannot cut a subset"
        )
    qids = sorted(rng.sample(candidates, min(spec.queries, len(candidates))))
    docs: list[str] = []
    for q in qids:
        relevant = sorted(d for d, s in qrels[q].items() if s > 0 and d in passages)
        docs += [
            d for d in rng.sample(relevant, min(spec.relevant_per_query, len(relevant))) if d not in docs
        ]
    if len(docs) > spec.passages:  # cutting judged-relevant passages would make every metric wrong
        raise DataError(
            f"dataset.subset.passages={spec.passages} cannot hold the {len(docs)} judged-relevant passages of its "
            f"{len(qids)} queries; set dataset.subset.passages ≥ {len(docs)} (or lower queries/relevant_per_query)"
        )
    chosen = set(docs)
    ranked = bm25_rankings(passages, {q: queries[q] for q in qids}, BM25_DEPTH)
    for depth in range(BM25_DEPTH):
        for q in qids:
            if len(docs) >= spec.passages:
                return qids, docs
            if depth < len(ranked[q]) and ranked[q][depth] not in chosen:
                docs.append(ranked[q][depth])
                chosen.add(ranked[q][depth])
    return qids, docs


def write_subset(source: Path, out: Path, spec: SubsetSpec, split: str) -> dict[str, Any]:
    """Write the subset of ``source`` as a BeIR folder into ``out``; returns its description."""
    source, out = Path(source), Path(out)
    qrels = load_qrels(source, split)
    rows = {p.doc_id: p for p in iter_corpus(source)}
    queries = load_queries(source, set(qrels))
    qids, docs = choose(qrels, {d: f"{p.title} {p.text}".strip() for d, p in rows.items()}, queries, spec)
    chosen = set(docs)
    atomic_write(out / "corpus.jsonl", "".join(
        json.dumps({"_id": d, "title": rows[d].title, "text": rows[d].text}) + "\n" for d in docs))  # fmt: skip
    atomic_write(
        out / "queries.jsonl", "".join(json.dumps({"_id": q, "text": queries[q]}) + "\n" for q in qids)
    )
    lines = [f"{q}\t{d}\t{s}\n" for q in qids for d, s in sorted(qrels[q].items()) if d in chosen]
    atomic_write(out / "qrels" / f"{split}.tsv", "query-id\tcorpus-id\tscore\n" + "".join(lines))
    relevant = sum(1 for line in lines if int(line.rsplit("\t", 1)[1]) > 0)
    about = {"source": str(source.name), "split": split, **spec.model_dump(), "n_queries": len(qids),
             "n_passages": len(docs), "n_relevant_judgements": relevant, "bm25_depth": BM25_DEPTH}  # fmt: skip
    atomic_write_json(out / "subset.json", about)
    return about
