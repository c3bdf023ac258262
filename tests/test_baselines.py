"""Baselines check the harness against published numbers (docs/method.md §5): BM25 and all-MiniLM-L6-v2 on SciFact."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from readaptir.config import CellConfig, ModelSpec
from readaptir.data.beir import load_qrels, load_queries
from readaptir.evaluate import evaluate_run
from readaptir.grid.cell import run_cell
from readaptir.retrieval.lexical import BM25Retriever

REPO = Path(__file__).resolve().parents[1]
BM25 = ModelSpec(name="bm25", kind="lexical", readapt=False, k1=1.5, b=0.75, method="lucene", stemmer="english",
                 stopwords="en")  # fmt: skip


def bm25_search(root, queries, spec, top_k):
    """BM25 through the Retriever interface: index into a folder, search it."""
    r = BM25Retriever(spec)
    out = root / ".bm25-index"
    out.mkdir(exist_ok=True)
    r.index_build(root).finish(out)
    return r.search(r.open_index(out), r.encode_queries(queries), top_k)


def _cfg(cache, data, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"paths.cache_dir={cache}", f"paths.data_dir={data}", *overrides])
    return CellConfig.from_hydra(cfg)


def test_bm25_toy(toy_dir, tmp_path):
    import shutil

    shutil.copytree(toy_dir, tmp_path / "toy")
    qrels = load_qrels(tmp_path / "toy", "test")
    run = bm25_search(tmp_path / "toy", load_queries(toy_dir, set(qrels)), BM25, top_k=100)
    metrics, _ = evaluate_run(qrels, run, [10, 100])
    assert metrics["NDCG@10"] > 0.3  # lexical overlap is strong on the toy set; random would be ≈ 0.02


def test_bm25_self_hits(tmp_path):
    root = tmp_path / "mini"
    (root / "qrels").mkdir(parents=True)
    docs = [("a", "cats eat mice"), ("b", "cats chase mice at night"), ("c", "dogs bark")]
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs)
    )
    run = bm25_search(root, {"a": "cats eat mice", "z": "dogs"}, BM25, top_k=2)
    assert "a" not in run["a"] and list(run["a"]) == ["b"]  # its own document is gone
    assert list(run["z"]) == ["c"]  # documents without any matching term are not returned


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize(
    "model,low,high",
    [
        ("bm25", 0.655, 0.697),
        pytest.param("minilm", 0.635, 0.655, marks=pytest.mark.heavy),
    ],  # minilm: ≈ 5 min
)
def test_scifact_reference_numbers(beir_dir, tmp_path, model, low, high):
    cfg = _cfg(tmp_path, beir_dir, f"model={model}", "dataset=scifact")
    t0 = time.time()
    record = run_cell(cfg, tmp_path / "job")
    ndcg = record.base["NDCG@10"]
    print(f"{model} SciFact NDCG@10={ndcg:.4f} in {time.time() - t0:.0f}s")
    assert low <= ndcg <= high, f"{model}: NDCG@10 {ndcg:.4f} outside [{low}, {high}]"
    assert record.status == "done" and not record.readapted and (tmp_path / "job" / "results.json").is_file()
