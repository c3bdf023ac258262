"""Metrics match hand computation and the beir package to the bit; run files round-trip; paired tests; the HF harness."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from readaptir.evaluate import evaluate_run, paired_test
from readaptir.harness import evaluate_hf_retriever
from readaptir.readapt.model import load_base_retriever
from readaptir.retrieval.dense import load_tokenizer
from readaptir.retrieval.runs import read_run, write_run

REPO = Path(__file__).resolve().parents[1]

QRELS = {"q1": {"d1": 1, "d2": 1}, "q2": {"d5": 2}}
RUN = {"q1": {"d3": 3.0, "d1": 2.0, "d2": 1.0}, "q2": {"q2": 5.0, "d5": 4.0, "d6": 3.0}}


def test_hand_computed_ndcg():
    metrics, per_query = evaluate_run(QRELS, RUN, [1, 3, 10, 100])
    # q1: relevant at ranks 2 and 3 → DCG = 1/log2(3) + 1/log2(4); IDCG = 1 + 1/log2(3).
    q1 = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    # q2: its self-hit (doc id "q2") is removed, so d5 ranks first → 1.0 (it would be 1/log2(3) if kept).
    assert per_query == pytest.approx({"q1": q1, "q2": 1.0}, abs=1e-6)
    assert metrics["NDCG@10"] == pytest.approx((q1 + 1.0) / 2, abs=1e-5)
    assert metrics["NDCG@1"] == pytest.approx(0.5, abs=1e-5)
    assert metrics["Recall@100"] == pytest.approx(1.0) and 0 <= metrics["NDCG@3"] <= 1
    assert "MRR@10" not in metrics


def test_mrr_is_a_dataset_setting():
    metrics, _ = evaluate_run(QRELS, RUN, [10], extra_metrics=["MRR@10"])
    assert metrics["MRR@10"] == pytest.approx((0.5 + 1.0) / 2)


def test_metrics_equal_the_beir_package_bit_for_bit():
    """Our pytrec_eval calls give exactly BeIR's EvaluateRetrieval numbers (random qrels and runs, ties too)."""
    beir_eval = pytest.importorskip("beir.retrieval.evaluation").EvaluateRetrieval
    import random

    rng = random.Random(0)
    for trial in range(20):
        docs = [f"d{i}" for i in range(rng.randint(5, 60))]
        queries = [f"q{i}" for i in range(rng.randint(1, 30))]
        qrels = {
            q: {d: rng.choice([0, 1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 5))} for q in queries
        }
        run = {q: {d: float(rng.randint(0, 8)) for d in rng.sample(docs, rng.randint(1, len(docs)))}
               for q in queries if rng.random() < 0.9} or {queries[0]: {docs[0]: 1.0}}  # fmt: skip
        ks = sorted({10, *rng.sample([1, 3, 5, 20, 100], 3)})
        ours, per_query = evaluate_run(qrels, run, ks, extra_metrics=["MRR@10"])
        ndcg, _map, recall, p = beir_eval.evaluate(qrels, run, ks, ignore_identical_ids=False)
        theirs = {
            **ndcg,
            **_map,
            **recall,
            **p,
            **beir_eval.evaluate_custom({q: qrels[q] for q in run}, run, [10], "mrr"),
        }
        assert ours == theirs, trial  # exact equality, not approx
        assert set(per_query) == set(run)


def test_write_and_read_run(tmp_path):
    path = write_run(tmp_path / "run.trec", RUN)
    assert path.read_text().splitlines()[0] == "q1 Q0 d3 1 3.0 readaptir"
    assert read_run(path) == RUN
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]


def test_paired_test():
    from scipy import stats

    a = {f"q{i}": i / 20 for i in range(20)}
    b = {f"q{i}": min(1.0, i / 20 + 0.05 + 0.01 * (i % 3)) for i in range(20)} | {"extra": 1.0}
    out = paired_test(a, b)
    assert out["test"] == "paired t-test" and out["n"] == 20
    expect = stats.ttest_rel([b[f"q{i}"] for i in range(20)], [a[f"q{i}"] for i in range(20)]).pvalue
    assert out["p_value"] == pytest.approx(expect) and out["p_value"] < 0.01
    assert out["permutation_p_value"] < 0.01 and out["mean_diff"] > 0
    same = paired_test(a, a)
    assert same["p_value"] == 1.0 and same["permutation_p_value"] == 1.0


def test_evaluate_any_hf_retriever(tmp_path, tiny_mistral, toy_dir):
    model = load_base_retriever(tiny_mistral.pretrained, tiny_mistral.retriever)
    tok = load_tokenizer(tiny_mistral.retriever)
    metrics, per_query, run = evaluate_hf_retriever(
        model, tok, toy_dir, query_template="Instruct: {task}\nQuery: {query}", passage_template="{title} {text}",
        task="t", max_len=128, top_k=100, index_dir=tmp_path / "idx",
    )  # fmt: skip
    assert 0.0 <= metrics["NDCG@10"] <= 1.0 and len(per_query) == 48
    assert all(len(d) == 100 and q not in d for q, d in run.items())
    assert (tmp_path / "idx" / "embeddings.f16").is_file()
