"""BM25 (``kind: lexical``): the reference retriever that checks the harness against published numbers.

Not RE-Adapted; a wrong qrels reader or an evaluation bug shows up as a miss against a well-known number
on real data (SciFact nDCG@10: 68.7 with bm25s, Lucene k1=1.5 b=0.75, English stopwords and the Snowball
stemmer; 66.2 without the stemmer). The index (bm25s's sparse score matrix) is stored like any other
corpus index and reused by later runs.

    python run.py model=bm25 dataset=scifact
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from readaptir.config import ModelSpec
from readaptir.data.beir import iter_corpus
from readaptir.fs import atomic_write
from readaptir.retrieval.base import IndexBuild, Run, without_self_hits
from readaptir.retrieval.embeddings import IDS_FILE, check_ids

log = logging.getLogger(__name__)


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


class BM25Retriever:
    """bm25s over ``title + " " + text``; queries tokenized with the same stemmer and stopwords."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.stemmer = _stemmer(spec.stemmer)
        self.stopwords = spec.stopwords or None

    def _tokenize(self, texts: list[str], return_ids: bool = True) -> Any:
        import bm25s

        return bm25s.tokenize(
            texts, stopwords=self.stopwords, stemmer=self.stemmer, return_ids=return_ids, show_progress=False
        )

    def index_build(self, corpus_root: Path) -> IndexBuild:
        def build(tmp: Path) -> None:  # main process only: BM25 indexing is single-process
            import bm25s

            ids, texts = [], []
            for p in iter_corpus(corpus_root):
                ids.append(p.doc_id)
                texts.append(f"{p.title} {p.text}".strip())
            check_ids(ids)
            retriever = bm25s.BM25(k1=self.spec.k1, b=self.spec.b, method=self.spec.method)
            retriever.index(self._tokenize(texts), show_progress=False)
            retriever.save(tmp / "bm25", show_progress=False)
            atomic_write(tmp / IDS_FILE, "\n".join(ids))

        return IndexBuild(finish=build)

    def open_index(self, path: Path) -> tuple[Any, list[str]]:
        import bm25s

        ids = (path / IDS_FILE).read_text(encoding="utf-8").split("\n")
        return bm25s.BM25.load(path / "bm25", show_progress=False), ids

    def encode_queries(self, queries: Mapping[str, str]) -> tuple[list[str], Any]:
        qids = list(queries)
        return qids, self._tokenize([queries[q] for q in qids], return_ids=False)

    def search(self, index: tuple[Any, list[str]], queries: tuple[list[str], Any], top_k: int) -> Run:
        retriever, ids = index
        qids, tokens = queries
        k = min(top_k + 1, len(ids))  # one spare slot for a self-hit
        docs, scores = retriever.retrieve(tokens, k=k, show_progress=False)
        run: Run = {}
        for qi, qid in enumerate(qids):
            # bm25s pads with score 0 when fewer docs match; Lucene would not return those, so drop them.
            hits = sorted(
                ((ids[j], float(s)) for j, s in zip(docs[qi], scores[qi], strict=True) if s > 0),
                key=lambda kv: -kv[1],
            )
            run[qid] = without_self_hits(qid, hits, top_k)
        return run
