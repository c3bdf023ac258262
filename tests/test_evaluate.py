"""Metrics through BeIR match hand computation; run files round-trip; paired tests; the one-stop path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import readaptir.encode as enc
from readaptir.artifacts import ArtifactStore
from readaptir.evaluate import evaluate_retriever, evaluate_run, load_run, paired_test, save_run

REPO = Path(__file__).resolve().parents[1]

QRELS = {"q1": {"d1": 1, "d2": 1}, "q2": {"d5": 2}}
RUN = {"q1": {"d3": 3.0, "d1": 2.0, "d2": 1.0}, "q2": {"q2": 5.0, "d5": 4.0, "d6": 3.0}}


def test_hand_computed_ndcg():
    metrics, per_query = evaluate_run(QRELS, RUN, [1, 3, 10, 100], "toy")
    # q1: relevant at ranks 2 and 3 → DCG = 1/log2(3) + 1/log2(4); IDCG = 1 + 1/log2(3).
    q1 = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    # q2: its self-hit (doc id "q2") is removed, so d5 ranks first → 1.0 (it would be 1/log2(3) if kept).
    assert per_query == pytest.approx({"q1": q1, "q2": 1.0}, abs=1e-6)
    assert metrics["NDCG@10"] == pytest.approx((q1 + 1.0) / 2, abs=1e-5)
    assert metrics["NDCG@1"] == pytest.approx(0.5, abs=1e-5)
    assert metrics["Recall@100"] == pytest.approx(1.0) and 0 <= metrics["NDCG@3"] <= 1
    assert "MRR@10" not in metrics


def test_mrr_for_msmarco():
    metrics, _ = evaluate_run(QRELS, RUN, [10], "msmarco")
    assert metrics["MRR@10"] == pytest.approx((0.5 + 1.0) / 2)


def test_save_and_load_run(tmp_path):
    metrics, per_query = evaluate_run(QRELS, RUN, [10], "toy")
    path = save_run(tmp_path, RUN, metrics, per_query)
    assert path.read_text().splitlines()[0] == "q1 Q0 d3 1 3.0 readaptir"
    assert load_run(path) == RUN
    assert {p.name for p in tmp_path.iterdir()} == {"run.trec", "metrics.json", "per_query.json"}


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


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=[f"paths.cache_dir={tmp_path}", *overrides])


def test_evaluate_retriever_tiny_reuses_run(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "model=tiny-llama", "dataset=demo/toy", "search.top_k=100")
    store = ArtifactStore(cfg.paths.cache_dir)
    out = evaluate_retriever(cfg, store, out_dir=tmp_path / "out")
    assert 0.0 <= out["metrics"]["NDCG@10"] <= 1.0 and len(out["per_query"]) == 48
    assert {a["kind"] for a in out["artifacts"]} == {"embeddings", "run"}
    assert (tmp_path / "out" / "metrics.json").is_file() and Path(out["run_path"]).is_file()
    run = load_run(out["run_path"])
    assert all(len(d) == 100 and q not in d for q, d in run.items())

    def boom(*a, **k):
        raise AssertionError("the model must not be loaded when the run is cached")

    monkeypatch.setattr(enc, "load_base_retriever", boom)
    again = evaluate_retriever(cfg, ArtifactStore(cfg.paths.cache_dir))
    assert again["metrics"] == out["metrics"] and again["run_path"] == out["run_path"]
    with pytest.raises(ValueError, match="weights_key"):
        evaluate_retriever(cfg, store, model=object(), tokenizer=None)


def test_evaluate_retriever_in_memory_model(tmp_path):
    cfg = _cfg(
        tmp_path, "model=tiny-mistral", "dataset=demo/toy", "search.backend=stream", "search.chunk_size=50"
    )
    model, tok = enc.load_base_retriever(cfg.model, device="cpu")
    store = ArtifactStore(cfg.paths.cache_dir)
    a = evaluate_retriever(cfg, store, model=model, tokenizer=tok, weights_key="readapted-test")
    b = evaluate_retriever(cfg, store)  # base retriever loaded from config: same weights, other key
    assert a["artifacts"][0]["key"] != b["artifacts"][0]["key"]
    assert a["metrics"]["NDCG@10"] == pytest.approx(b["metrics"]["NDCG@10"], abs=1e-4)
