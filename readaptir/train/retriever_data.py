"""What a retriever trains on, step by step: Tevatron's data conventions as a pure function of the inputs.

- Data: a BeIR folder's ``qrels/<split>.tsv`` (``train`` for NFCorpus and SciFact; MS-MARCO's when present),
  its queries and corpus. Training queries are those with a judged-relevant passage (score > 0) in the corpus.
- One epoch visits each training query once, in a seeded order (a new one per epoch), with one positive
  chosen as ``(h(query) + epoch) mod n_positives`` (Tevatron's ``TrainDataset``), so epochs cycle positives.
- Batches: micro-batches of ``queries_per_batch`` queries (the in-batch negatives of a query are the other
  groups of its micro-batch, Tevatron without cross-device negatives); ``grad_accum_steps`` consecutive
  micro-batches of an epoch make one optimizer step (the epoch's last step may hold fewer). ``max_steps``
  counts optimizer steps.
- Hard negatives: BM25's top ``bm25_depth`` for the query minus every passage judged for it in *any*
  qrels split (a judged passage is never a negative, whatever its score), shuffled with the query's seed
  and sliced per epoch; sampled with replacement when too few (Tevatron). ``group_size=1`` uses in-batch
  negatives only and skips BM25.

The plan (:func:`build_plan`) lists every step's examples, so a resumed run continues exactly where a killed
one stopped, and its fingerprint refuses a checkpoint made for other data or another recipe.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from readaptir.config import RetrieverTraining
from readaptir.data.beir import DataError, iter_corpus, load_qrels, load_queries
from readaptir.data.bm25 import bm25_rankings


@dataclass(frozen=True)
class TrainData:
    """A BeIR dataset's training split in memory: passages, queries, the split's qrels, all judgements."""

    passages: dict[str, tuple[str, str]]  # doc id -> (title, text)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    judged: dict[str, set[str]]  # query id -> every doc judged for it in any split

    @classmethod
    def load(cls, root: Path, split: str) -> TrainData:
        qrels = load_qrels(root, split)  # a missing split is refused naming the file and the splits present
        judged: dict[str, set[str]] = {}
        for path in sorted((root / "qrels").glob("*.tsv")):
            for q, docs in load_qrels(root, path.stem).items():
                judged.setdefault(q, set()).update(docs)
        passages = {p.doc_id: (p.title, p.text) for p in iter_corpus(root)}
        return cls(passages, load_queries(root, set(qrels)), qrels, judged)


@dataclass(frozen=True)
class Example:
    query: str
    positive: str
    negatives: tuple[str, ...]


@dataclass(frozen=True)
class TrainPlan:
    """Every optimizer step's micro-batches of examples, in order."""

    steps: list[list[list[Example]]]  # step -> micro-batch -> examples
    queries: int  # training queries (before max_steps cuts the epoch)

    @property
    def total_steps(self) -> int:
        return len(self.steps)

    def fingerprint(self, recipe: RetrieverTraining) -> str:
        """Identity of this run's data and recipe: a checkpoint of another run is refused."""
        steps = [[[(e.query, e.positive, e.negatives) for e in m] for m in s] for s in self.steps]
        blob = json.dumps([recipe.determining(), steps])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def query_seed(seed: int, qid: str) -> int:
    """Stable per-query integer (Tevatron's ``hash(query + seed)``, the same in every process)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{qid}".encode()).digest()[:8], "little")


def _positives(data: TrainData) -> dict[str, list[str]]:
    return {
        q: sorted(d for d, s in docs.items() if s > 0 and d in data.passages)
        for q, docs in data.qrels.items()
        if q in data.queries
    }


def hard_negatives(data: TrainData, qids: list[str], depth: int) -> dict[str, list[str]]:
    """BM25's top ``depth`` passages per query that were never judged for it (nor are the query itself)."""
    extra = max((len(data.judged.get(q, ())) for q in qids), default=0) + 1  # depth left after removals
    texts = {d: f"{t} {x}".strip() for d, (t, x) in data.passages.items()}
    ranked = bm25_rankings(texts, {q: data.queries[q] for q in qids}, depth + extra)
    return {q: [d for d in ranked[q] if d not in data.judged.get(q, ()) and d != q][:depth] for q in qids}


def _negatives(negs: list[str], n: int, h: int, epoch: int) -> tuple[str, ...]:
    """Tevatron's choice of ``n`` negatives: a per-query shuffle sliced by epoch, with replacement if short."""
    if n == 0:
        return ()
    if len(negs) < n:
        return tuple(random.Random(h + epoch).choices(negs, k=n))
    negs = list(negs)
    random.Random(h).shuffle(negs)
    offset = epoch * n % len(negs)
    return tuple((negs * 2)[offset : offset + n])


def build_plan(data: TrainData, recipe: RetrieverTraining) -> TrainPlan:
    """The deterministic plan of every step (see the module docstring)."""
    positives = {q: p for q, p in _positives(data).items() if p}
    qids = sorted(positives)
    if not qids:
        raise DataError(
            f"no {recipe.split} query has a judged-relevant passage in the corpus: nothing to train on"
        )
    if recipe.max_queries is not None and recipe.max_queries < len(qids):
        qids = sorted(random.Random(recipe.seed).sample(qids, recipe.max_queries))
    n_neg = recipe.group_size - 1
    negatives = hard_negatives(data, qids, recipe.bm25_depth) if n_neg else {}
    corpus = sorted(data.passages)
    per_epoch, accum = math.ceil(len(qids) / recipe.queries_per_batch), recipe.grad_accum_steps
    steps: list[list[list[Example]]] = []
    for epoch in range(recipe.epochs):
        order = list(qids)
        random.Random(recipe.seed + epoch).shuffle(order)
        micro: list[list[Example]] = []
        for b in range(per_epoch):
            batch = []
            for q in order[b * recipe.queries_per_batch : (b + 1) * recipe.queries_per_batch]:
                h = query_seed(recipe.seed, q)
                negs = negatives.get(q) or [d for d in corpus if d not in data.judged.get(q, ()) and d != q]
                pos = positives[q][(h + epoch) % len(positives[q])]
                batch.append(Example(q, pos, _negatives(negs, n_neg, h, epoch)))
            micro.append(batch)
        steps += [micro[i : i + accum] for i in range(0, per_epoch, accum)]
    if recipe.max_steps is not None:
        steps = steps[: recipe.max_steps]
    return TrainPlan(steps, len(qids))
