"""Scoring runs: BeIR's metrics (pytrec_eval), per-query nDCG@10 and paired significance tests.

``evaluate_run`` turns a run into BeIR's metrics (fractions in [0, 1] named "NDCG@10", "Recall@100", ...,
plus a dataset's ``extra_metrics`` such as MS-MARCO's "MRR@10") and per-query NDCG@10; ``paired_test``
compares two runs' per-query scores (paired t-test and a sign-flip randomisation test).

The metrics are computed as the ``beir`` package's ``EvaluateRetrieval.evaluate`` and
``evaluate_custom(..., "mrr")`` compute them (pytrec_eval's measures, the mean over the run's queries,
rounded to 5 decimals), calling pytrec_eval directly: ``beir`` would pull sentence-transformers,
datasets and pandas into every install. ``tests/test_evaluate.py`` checks the two agree to the bit.

Self-hits are removed here as well as in search, for every dataset, base and readapted alike, so what
is scored is exactly what is saved.

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
    """``(metrics, per-query NDCG@10)``: BeIR's NDCG, MAP, Recall and P at ``k_values`` (10 always).

    Queries are scored when they have qrels; like BeIR, averages are over queries present in the run.
    """
    import pytrec_eval

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
    ks = ",".join(str(k) for k in k_values)
    measures = {f"{m}.{ks}" for m in ("ndcg_cut", "map_cut", "recall", "P")}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(scored)
    metrics = {}
    for name, measure in (("NDCG", "ndcg_cut"), ("MAP", "map_cut"), ("Recall", "recall"), ("P", "P")):
        for k in k_values:  # summed in the run's query order, then averaged and rounded, as BeIR does
            total = 0.0
            for s in scores.values():
                total += s[f"{measure}_{k}"]
            metrics[f"{name}@{k}"] = round(total / len(scores), 5)
    for name in extra_metrics:  # e.g. MRR@10, MS-MARCO's official measure (a dataset setting)
        _, k = _parse_extra(name)
        metrics[f"MRR@{k}"] = mrr({q: qrels[q] for q in scored}, scored, k)
    return (
        {k: float(v) for k, v in metrics.items()},
        {q: float(s["ndcg_cut_10"]) for q, s in sorted(scores.items())},
    )


def mrr(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], k: int) -> float:
    """Mean reciprocal rank of the first relevant (score > 0) document in each query's top ``k``, over
    the queries of ``qrels`` (BeIR's ``evaluate_custom(..., "mrr")``)."""
    total = 0.0
    for qid, docs in run.items():
        top = sorted(docs.items(), key=lambda item: item[1], reverse=True)[:k]
        relevant = {d for d, r in qrels[qid].items() if r > 0}
        for rank, (doc, _) in enumerate(top):
            if doc in relevant:
                total += 1.0 / (rank + 1)
                break
    return round(total / len(qrels), 5)


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
    """``MRR@10`` → (``mrr``, 10): the one extra measure (MS-MARCO's official one), at one cutoff."""
    measure, _, k = name.partition("@")
    if measure.lower() != "mrr" or not k.isdigit():
        raise DataError(f"dataset.extra_metrics: {name!r} is not a measure like MRR@10")
    return measure.lower(), int(k)
