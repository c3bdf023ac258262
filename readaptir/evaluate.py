"""Scoring runs: BeIR's metrics (pytrec_eval), per-query nDCG@10 and paired significance tests.

``evaluate_run`` turns a run into BeIR's metrics (fractions in [0, 1] named "NDCG@10", "Recall@100", ...,
plus a dataset's ``extra_metrics`` such as MS-MARCO's "MRR@10") and per-query NDCG@10; ``paired_test``
compares two runs' per-query scores (paired t-test and a sign-flip randomisation test).

Self-hits are removed here as well as in search: BeIR's evaluator only drops identical ids when
``ignore_identical_ids`` is left on; we remove them explicitly for every dataset, base and readapted alike,
and call BeIR with it off, so what is scored is exactly what is saved.

    metrics, per_query = evaluate_run(qrels, run, k_values=[10, 100], extra_metrics=["MRR@10"])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from readaptir.data.beir import DataError
from readaptir.retrieval.base import remove_self_hits

log = logging.getLogger(__name__)


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    k_values: Sequence[int] = (1, 3, 5, 10, 100, 1000),
    extra_metrics: Sequence[str] = (),
) -> tuple[dict[str, float], dict[str, float]]:
    """``(metrics, per-query NDCG@10)`` via ``beir.retrieval.evaluation.EvaluateRetrieval``.

    Queries are scored when they have qrels; like BeIR, averages are over queries present in the run.
    """
    import pytrec_eval
    from beir.retrieval.evaluation import EvaluateRetrieval

    k_values = sorted({int(k) for k in k_values} | {10})
    scored = {q: docs for q, docs in remove_self_hits(run).items() if q in qrels}
    missing = len(set(qrels) - set(scored))
    if missing:
        log.warning(
            "%d of %d judged queries have no run entry; they are left out of the averages (BeIR's rule)",
            missing,
            len(qrels),
        )
    if not scored:
        raise DataError("no query of the run has qrels: wrong dataset or split?")
    qrels = {q: dict(v) for q, v in qrels.items()}
    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(
        qrels, scored, k_values, ignore_identical_ids=False
    )
    metrics = {**ndcg, **_map, **recall, **precision}
    for name in extra_metrics:  # e.g. MRR@10, MS-MARCO's official measure (a dataset setting)
        measure, k = _parse_extra(name)
        metrics.update(EvaluateRetrieval.evaluate_custom({q: qrels[q] for q in scored}, scored, [k], measure))
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(scored)
    return (
        {k: float(v) for k, v in metrics.items()},
        {q: float(s["ndcg_cut_10"]) for q, s in sorted(per_query.items())},
    )


def paired_test(
    per_query_a: Mapping[str, float],
    per_query_b: Mapping[str, float],
    permutations: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Two-sided paired t-test (scipy) of per-query NDCG@10 on the queries both runs scored.

    Also reports a paired randomisation test (random sign flips of the differences), which makes no
    normality assumption. ``mean_diff`` is b − a.
    """
    from scipy import stats

    common = sorted(set(per_query_a) & set(per_query_b))
    a = np.array([per_query_a[q] for q in common], dtype=np.float64)
    b = np.array([per_query_b[q] for q in common], dtype=np.float64)
    diff = b - a
    n = len(common)
    if n < 2 or not np.any(diff != 0):
        p = 1.0  # identical runs (or too few queries): no evidence of a difference
        p_perm = 1.0
    else:
        p = float(stats.ttest_rel(b, a).pvalue)
        if math.isnan(p):
            p = 1.0
        rng = np.random.default_rng(seed)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(permutations, n))
        null = np.abs((signs * diff).mean(axis=1))
        p_perm = float((np.sum(null >= abs(diff.mean()) - 1e-12) + 1) / (permutations + 1))
    return {
        "test": "paired t-test",
        "p_value": p,
        "n": n,
        "mean_diff": float(diff.mean()) if n else 0.0,
        "permutation_p_value": p_perm,
        "permutations": permutations,
    }


def _parse_extra(name: str) -> tuple[str, int]:
    """``MRR@10`` → (``mrr``, 10): a measure BeIR's ``evaluate_custom`` knows, at one cutoff."""
    measure, _, k = name.partition("@")
    if measure.lower() not in ("mrr", "r_cap", "hole", "top_k_acc") or not k.isdigit():
        raise DataError(f"dataset.extra_metrics: {name!r} is not a measure like MRR@10")
    return measure.lower(), int(k)
