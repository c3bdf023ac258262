"""Evaluate any dense Hugging Face retriever on a BeIR folder, with the exact pipeline the grid uses.

For researchers who want the harness without the grid: same prompts, EOS pooling, length-sorted batches,
exact search with self-hits removed, BeIR metrics and per-query nDCG@10.

    from transformers import AutoModel, AutoTokenizer
    from readaptir import evaluate_hf_retriever
    metrics, per_query, run = evaluate_hf_retriever(
        AutoModel.from_pretrained("my/retriever"), AutoTokenizer.from_pretrained("my/retriever"),
        "data/scifact", query_template="query: {query}", passage_template="passage: {title} {text}")
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from readaptir.config import EncodeSettings, SearchSettings
from readaptir.data.beir import load_qrels, load_queries
from readaptir.evaluate import evaluate_run
from readaptir.retrieval.base import Run
from readaptir.retrieval.dense import DensePrompts, DenseRetriever


def evaluate_hf_retriever(
    model: Any,
    tokenizer: Any,
    dataset_root: str | os.PathLike,
    split: str = "test",
    query_template: str = "query: {query}",
    passage_template: str = "passage: {title} {text}",
    task: str = "",
    max_len: int = 512,
    top_k: int = 1000,
    index_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, float], dict[str, float], Run]:
    """``(metrics, per-query NDCG@10, run)`` of ``model`` (an ``AutoModel``) on a BeIR dataset folder.

    The corpus embeddings go to ``index_dir`` (a temporary folder when None, removed afterwards).
    """
    root = Path(dataset_root)
    qrels = load_qrels(root, split)
    queries = load_queries(root, set(qrels))
    prompts = DensePrompts(query_template, passage_template, task, max_len, max_len)
    retriever = DenseRetriever(model, tokenizer, prompts, EncodeSettings(), SearchSettings(top_k=top_k))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(index_dir) if index_dir is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        build = retriever.index_build(root)
        for step in (build.prepare, build.fill, build.finish):
            if step is not None:
                step(out)
        run = retriever.search(retriever.open_index(out), retriever.encode_queries(queries), top_k)
    metrics, per_query = evaluate_run(qrels, run)
    return metrics, per_query, run
