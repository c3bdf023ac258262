"""One interface for every retriever: index a corpus once, encode queries, search the index.

Dense LLM retrievers (:mod:`~readaptir.retrieval.dense`), sentence-transformers models
(:mod:`~readaptir.retrieval.sbert`) and BM25 (:mod:`~readaptir.retrieval.lexical`) all follow
:class:`Retriever`, so a cell evaluates any of them with the same sequence (index → queries → search):

    build = retriever.index_build(corpus_root)          # how to write the corpus index into a folder
    path = store.build_collective("index", key, build.fill, prepare=build.prepare, finish=build.finish)
    run = retriever.search(retriever.open_index(path), retriever.encode_queries(queries), top_k=1000)

Which implementation a model config gets is its ``kind:`` (dense, sbert, lexical). Runs are
``{query id: {doc id: score}}`` with self-hits (a document whose id is the query's) removed for every
dataset, base and readapted alike: ArguAna and Quora queries are themselves corpus documents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class IndexBuild:
    """Steps that write a corpus index into a temporary folder (see ``ArtifactStore.build_collective``).

    ``prepare`` runs on the main process first, ``fill`` on every process (multi-GPU encoding shares the
    work), ``finish`` on the main process last. A step that is None is skipped.
    """

    fill: Callable[[Path], Any] | None = None
    prepare: Callable[[Path], Any] | None = None
    finish: Callable[[Path], Any] | None = None


class Retriever(Protocol):
    """What a cell needs from a retriever; implementations hold their model and settings."""

    def index_build(self, corpus_root: Path) -> IndexBuild:
        """Steps that encode/index ``corpus_root/corpus.jsonl`` into a folder."""
        ...

    def open_index(self, path: Path) -> Any:
        """The finished index folder, opened for :meth:`search`."""
        ...

    def encode_queries(self, queries: Mapping[str, str]) -> Any:
        """Queries in the form :meth:`search` takes (vectors, token ids ...)."""
        ...

    def search(self, index: Any, queries: Any, top_k: int) -> Run:
        """The ``top_k`` best documents per query, self-hits removed."""
        ...


def without_self_hits(query_id: str, hits: Iterable[tuple[str, float]], top_k: int) -> dict[str, float]:
    """The first ``top_k`` of ``(doc id, score)`` pairs (best first) that are not the query itself."""
    out: dict[str, float] = {}
    for doc_id, score in hits:
        if doc_id == query_id:
            continue
        out[doc_id] = float(score)
        if len(out) == top_k:
            break
    return out


def remove_self_hits(run: Mapping[str, Mapping[str, float]]) -> Run:
    """A copy of ``run`` without documents whose id equals their query's id."""
    return {q: {d: float(s) for d, s in docs.items() if d != q} for q, docs in run.items()}
