"""Choosing α on withheld queries (``readapt.alpha=auto``): which queries, which pool, which α.

The paper fixes α = 0.5 and notes that per-dataset values help and "can be set using withheld queries".
Here a cell picks α among ``readapt.alpha_selection.grid`` (α = 0, the retriever alone when β = 1, is
always a candidate) by nDCG@10 of *selection* queries, which are never the reported ones:

- ``dev``: the dataset's dev split, when it is not the evaluated split;
- ``train``: its train split, when the retriever was not trained on this dataset (``seen_by``);
- ``crossfit``: otherwise the evaluated queries are cut into k seeded folds, each fold's α is chosen on the
  other folds' queries, and each reported query is scored at an α chosen without it.

Scoring every α on the whole corpus would cost one full encoding per candidate (MS-MARCO: hours each), so
each candidate is scored on a *pool*: the union of the base retriever's and BM25's top ``pool_depth`` for
the selection queries plus their judged passages, encoded once per α. The pool is drawn from the base
retriever, so it can favour α values near 0; the README reports how often pool and full-corpus selection
agree. Ties go to the candidate nearest 0.5 (the paper's default), then to the smaller α.
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
    """Selection and reported queries per fold; selection queries never include a reported query."""
    protocol, split = selection_split(root, eval_split, zero_shot)
    reported = sorted(reported)
    if protocol != "crossfit":
        pool = [q for q in judged(load_qrels(root, split)) if q not in set(reported)]
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
        others = [q for g, part in enumerate(parts) if g != f for q in part]
        folds.append(Fold(_sample(others, settings.max_queries, settings.seed + f), report))
    return SelectionPlan(protocol, split, tuple(folds))


def choose(scores: Mapping[float, float]) -> float:
    """The best α; ties go to the candidate nearest 0.5, then to the smaller α."""
    best = max(scores.values())
    tied = [a for a, s in scores.items() if s >= best - TIE]
    return min(tied, key=lambda a: (abs(a - 0.5), a))


def candidate_pool(
    select: Sequence[str], runs: Sequence[Run], qrels: Mapping[str, Mapping[str, int]], depth: int,
    corpus_ids: set[str],
) -> list[str]:  # fmt: skip
    """Doc ids of the union of each run's top ``depth`` for the selection queries plus their judged documents."""
    pool: set[str] = set()
    for q in select:
        for run in runs:
            ranked = sorted(run.get(q, {}).items(), key=lambda kv: -kv[1])[:depth]
            pool.update(d for d, _ in ranked)
        pool.update(d for d in qrels.get(q, {}) if d in corpus_ids)
    return sorted(pool)


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
    folds: list[dict]  # per fold: n_select, n_report, scores {α: mean nDCG@10 on the pool}, chosen
    pool_size: int
    corpus_size: int

    @property
    def chosen(self) -> list[float]:
        return [f["chosen"] for f in self.folds]

    def fold_plan(self) -> list[Fold]:
        return [Fold(tuple(f["select"]), tuple(f["report"])) for f in self.folds]

    def record(self) -> dict:
        """The results.json view (query counts, not ids), with the pool's cost against full encodings."""
        n = len(self.candidates)
        folds = [{"n_select": len(f["select"]), "n_report": len(f["report"]), "scores": f["scores"],
                  "chosen": f["chosen"]} for f in self.folds]  # fmt: skip
        return {
            "protocol": self.protocol, "split": self.split, "candidates": self.candidates,
            "chosen": self.chosen, "folds": folds, "pool_size": self.pool_size,
            "pool_encodings": n,
            "cost_vs_full_encodings": round(n * self.pool_size / max(self.corpus_size, 1), 6),
        }  # fmt: skip


def fold_scores(per_query: Mapping[float, Mapping[str, float]], folds: Sequence[Fold]) -> list[dict]:
    """Mean pool nDCG@10 of each fold's selection queries per α, and the α each fold chooses."""
    out = []
    for fold in folds:
        scores = {a: float(np.mean([pq.get(q, 0.0) for q in fold.select])) for a, pq in per_query.items()}
        out.append({"select": list(fold.select), "report": list(fold.report),
                    "scores": {f"{a:g}": s for a, s in scores.items()}, "chosen": choose(scores)})  # fmt: skip
    return out
