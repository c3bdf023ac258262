"""Choosing α on withheld queries (``readapt.alpha=auto``): which queries, which candidate set, which α.

The paper fixes α = 0.5 and notes that per-dataset values help and "can be set using withheld queries".
Here a cell picks α among ``readapt.alpha_selection.grid`` (α = 0 is always a candidate: the retriever
alone when β = 1 and ``knowledge_scaling=delta``) by nDCG@10 of *selection* queries, never the reported ones:

- ``dev``: the dataset's dev split, when it is not the evaluated split;
- ``train``: its train split, when the retriever was not trained on this dataset (``seen_by``);
- ``crossfit``: otherwise the evaluated queries are cut into k seeded folds, each fold's α is chosen on the
  other folds' queries, and each reported query is scored at an α chosen without it.

The reported queries are exactly Base's (every query of the evaluated qrels, judged-relevant or not), so
RA − Base and its paired test compare the same queries; selection uses only queries with a relevant passage.

Scoring every α on the whole corpus would cost one full encoding per candidate, so each fold scores every
candidate on the *same* candidate set, built without the answers (docs/method.md §8):

- the fold's pool: the union of the base retriever's and BM25's top ``pool_depth`` for *that fold's*
  selection queries only (judged passages outside it are misses for every α alike);
- a seeded uniform sample of ``sample_size`` corpus passages, which estimates for each pool passage how many
  passages outside the pool α would rank above it: its full-corpus rank ≈ pool rank + (corpus − pool) ×
  the fraction of outside sample passages scored above it.

With β = 1 and ``knowledge_scaling=delta`` α = 0 is the base retriever, whose top ``pool_depth`` the pool
holds: it is scored exactly. For α > 0 two biases remain, in opposite directions: relevant passages only α
would find outside the pool are missed (towards α = 0), and outside passages too few for the sample to catch
are left out of the rank (towards α > 0 once (corpus − pool) / (sample outside the pool) is above about 25:
one sampled intruder then already pushes a passage past rank 10; below that it can go either way).
``experiments/alpha_pool_check.md`` measures both on real encodings and a calibrated simulation.
Ties go to the candidate nearest 0.5 (the paper's default), then to the smaller α.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from readaptir.config import AlphaSelection
from readaptir.data.beir import DataError, load_qrels
from readaptir.retrieval.base import Run

TIE = 1e-12  # scores equal within float noise are a tie
K = 10  # selection metric: nDCG@10


@dataclass(frozen=True)
class Fold:
    select: tuple[str, ...]  # selection query ids (α is chosen on these)
    report: tuple[str, ...]  # reported query ids scored at this fold's α


@dataclass(frozen=True)
class SelectionPlan:
    protocol: str  # dev | train | crossfit
    split: str  # the qrels split the selection queries come from
    folds: tuple[Fold, ...]

    def selection_ids(self) -> set[str]:
        return {q for f in self.folds for q in f.select}


def selection_split(root: Path, eval_split: str, zero_shot: bool) -> tuple[str, str]:
    """``(protocol, split)``: dev if it exists, else train when the retriever never saw it, else crossfit."""
    have = {p.stem for p in (root / "qrels").glob("*.tsv")} - {eval_split}
    if "dev" in have:
        return "dev", "dev"
    if "train" in have and zero_shot:
        return "train", "train"
    return "crossfit", eval_split


def _sample(ids: Sequence[str], n: int, seed: int) -> tuple[str, ...]:
    ids = sorted(ids)
    if len(ids) <= n:
        return tuple(ids)
    pick = np.random.default_rng([seed, 7]).choice(len(ids), size=n, replace=False)
    return tuple(ids[i] for i in sorted(pick))


def judged(qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Queries with at least one relevant (score > 0) document: the only ones nDCG can rank."""
    return [q for q, docs in qrels.items() if any(s > 0 for s in docs.values())]


def plan_selection(
    root: Path, eval_split: str, zero_shot: bool, reported: Sequence[str], settings: AlphaSelection
) -> SelectionPlan:
    """Selection and reported queries per fold; selection queries never include a reported query.

    ``reported`` are Base's queries (all of them, judged-relevant or not): every one lands in exactly one
    fold. Selection queries are those of the other folds (or the other split) with a relevant passage.
    """
    protocol, split = selection_split(root, eval_split, zero_shot)
    reported = sorted(reported)
    rankable = set(judged(load_qrels(root, split)))
    if protocol != "crossfit":
        pool = sorted(rankable - set(reported))
        if not pool:
            raise DataError(
                f"{root}/qrels/{split}.tsv: no judged query outside the reported ones to select α on"
            )
        return SelectionPlan(
            protocol, split, (Fold(_sample(pool, settings.max_queries, settings.seed), tuple(reported)),)
        )
    k = min(settings.folds, len(reported))
    if k < 2:
        raise DataError(f"{root}: {len(reported)} reported queries cannot be cross-fitted (need ≥ 2)")
    order = np.random.default_rng([settings.seed, 5]).permutation(len(reported))
    parts = [tuple(sorted(reported[i] for i in order[f::k])) for f in range(k)]
    folds = []
    for f, report in enumerate(parts):
        others = [q for g, part in enumerate(parts) if g != f for q in part if q in rankable]
        if not others:
            raise DataError(f"{root}/qrels/{split}.tsv: fold {f} has no judged query to select α on")
        folds.append(Fold(_sample(others, settings.max_queries, settings.seed + f), report))
    return SelectionPlan(protocol, split, tuple(folds))


def choose(scores: Mapping[float, float]) -> float:
    """The best α; ties go to the candidate nearest 0.5, then to the smaller α."""
    best = max(scores.values())
    tied = [a for a, s in scores.items() if s >= best - TIE]
    return min(tied, key=lambda a: (abs(a - 0.5), a))


def fold_pools(folds: Sequence[Fold], runs: Sequence[Run], depth: int) -> list[list[str]]:
    """Per fold, doc ids of the union of each run's top ``depth`` for *that fold's* selection queries.

    No judged passage is added: a pool built from the answers scores α > 0 on a set where the passages it
    would wrongly rank above them are missing.
    """
    out = []
    for fold in folds:
        pool: set[str] = set()
        for q in fold.select:
            for run in runs:
                ranked = sorted(run.get(q, {}).items(), key=lambda kv: -kv[1])[:depth]
                pool.update(d for d, _ in ranked)
        out.append(sorted(pool))
    return out


def corpus_sample(ids: Sequence[str], size: int, seed: int) -> list[str]:
    """A seeded uniform sample of ``size`` corpus ids (all of them when the corpus is smaller)."""
    if size >= len(ids):
        return sorted(ids)
    pick = np.random.default_rng([seed, 11]).choice(len(ids), size=size, replace=False)
    return sorted(ids[i] for i in pick)


def idcg(rels: Mapping[str, int], k: int = K) -> float:
    """Ideal DCG@k with linear gains (trec_eval's ndcg_cut), over every judged passage of the query."""
    gains = sorted((g for g in rels.values() if g > 0), reverse=True)[:k]
    return float(sum(g / np.log2(i + 2) for i, g in enumerate(gains)))


def estimated_ndcg(
    pool_scores: np.ndarray, pool_gains: np.ndarray, outside_scores: np.ndarray, scale: float, ideal: float,
    k: int = K,
) -> float:  # fmt: skip
    """nDCG@k of one query from its pool, each pool passage at its estimated full-corpus rank.

    ``outside_scores``: the query's scores of sample passages outside the pool, each standing for ``scale``
    corpus passages outside it (1: the outside is whole, the rank exact; 0: pool-only ranking).
    """
    if ideal <= 0 or len(pool_scores) == 0:
        return 0.0
    top = np.argsort(-pool_scores, kind="stable")[:k]  # only the pool's top k can rank within k
    ranks = np.arange(1, len(top) + 1, dtype=np.float64)
    if scale > 0 and len(outside_scores):
        above = len(outside_scores) - np.searchsorted(np.sort(outside_scores), pool_scores[top], side="right")
        ranks = ranks + scale * above
    hit = ranks <= k
    return float(np.sum(pool_gains[top][hit] / np.log2(ranks[hit] + 1)) / ideal)


def fold_scores(
    scores: Mapping[float, np.ndarray], qids: Sequence[str], doc_ids: Sequence[str], folds: Sequence[Fold],
    pools: Sequence[Sequence[str]], sample: Sequence[str], corpus_size: int,
    qrels: Mapping[str, Mapping[str, int]],
) -> list[dict]:  # fmt: skip
    """Per fold: mean estimated nDCG@10 of its selection queries per α on its own pool, and its choice.

    ``scores[α]`` is ``[len(qids), len(doc_ids)]``: every selection query against every encoded passage
    (the union of the folds' pools and the sample).
    """
    col = {d: i for i, d in enumerate(doc_ids)}
    row = {q: i for i, q in enumerate(qids)}
    out = []
    for fold, pool in zip(folds, pools, strict=True):
        at = {d: i for i, d in enumerate(pool)}
        outside = [d for d in sample if d not in at]
        scale = (corpus_size - len(pool)) / len(outside) if outside else 0.0
        pidx, oidx = (
            np.array([col[d] for d in pool], dtype=np.int64),
            np.array([col[d] for d in outside], dtype=np.int64),
        )
        per_alpha: dict[float, list[float]] = {a: [] for a in scores}
        for q in fold.select:
            rels = qrels.get(q, {})
            gains = np.zeros(len(pool))
            for d, g in rels.items():
                if d in at and g > 0:
                    gains[at[d]] = g
            keep = np.array([d != q for d in pool]) if q in at else slice(None)  # self-hits are removed
            okeep = np.array([d != q for d in outside]) if q in set(outside) else slice(None)
            ideal = idcg(rels)
            for alpha, matrix in scores.items():
                s = matrix[row[q]]
                per_alpha[alpha].append(
                    estimated_ndcg(s[pidx][keep], gains[keep], s[oidx][okeep], scale, ideal)
                )
        means = {a: float(np.mean(v)) if v else 0.0 for a, v in per_alpha.items()}
        out.append({"select": list(fold.select), "report": list(fold.report), "pool_size": len(pool),
                    "scores": {f"{a:g}": s for a, s in means.items()}, "chosen": choose(means)})  # fmt: skip
    return out


def crossfit(runs: Mapping[float, Run], folds: Sequence[Fold], chosen: Sequence[float]) -> Run:
    """One run: each fold's reported queries taken from the run at that fold's chosen α."""
    out: Run = {}
    for fold, alpha in zip(folds, chosen, strict=True):
        for q in fold.report:
            if q in runs[alpha]:
                out[q] = runs[alpha][q]
    return out


@dataclass
class Selection:
    """What a selection decided (stored as the ``selection`` artifact, copied into results.json)."""

    protocol: str
    split: str
    candidates: list[float]
    folds: list[dict]  # per fold: select, report, pool_size, scores {α: mean estimated nDCG@10}, chosen
    pool_size: int  # passages encoded per candidate: the folds' pools and the sample together
    corpus_size: int
    sample_size: int = 0

    @property
    def chosen(self) -> list[float]:
        return [f["chosen"] for f in self.folds]

    def fold_plan(self) -> list[Fold]:
        return [Fold(tuple(f["select"]), tuple(f["report"])) for f in self.folds]

    def record(self) -> dict:
        """The results.json view (query counts, not ids), with the pool's cost against full encodings."""
        n = len(self.candidates)
        folds = [{"n_select": len(f["select"]), "n_report": len(f["report"]), "pool_size": f.get("pool_size"),
                  "scores": f["scores"], "chosen": f["chosen"]} for f in self.folds]  # fmt: skip
        return {
            "protocol": self.protocol, "split": self.split, "candidates": self.candidates,
            "chosen": self.chosen, "folds": folds, "pool_size": self.pool_size,
            "sample_size": self.sample_size, "pool_encodings": n,
            "cost_vs_full_encodings": round(n * self.pool_size / max(self.corpus_size, 1), 6),
        }  # fmt: skip
