"""Corpus embeddings on disk: a float16 memmap in corpus order, written once and searched many times.

A finished index folder holds ``embeddings.f16`` (rows in corpus order, L2-normalised), ``ids.txt`` (one
doc id per line) and ``meta.json`` (n, dim). float16 halves disk and page cache against float32
(MS-MARCO at 4096 dims: 72 GB); search streams it in slices instead of loading it.

Building one streams the corpus in chunks of ``CHUNK_PASSAGES``: each chunk is turned into model inputs,
encoded in length-sorted batches, and every batch is written in place at its original rows. Under a
multi-GPU launch the steps run as ``ArtifactStore.build_collective`` orders them: the main process
creates the empty memmap, every process fills its share of batches, the main process writes ids and meta.

    emb = CorpusEmbeddings.open(path)
    for start, rows in emb.chunks(100_000): ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from readaptir.data.beir import Passage, iter_corpus
from readaptir.fs import atomic_write
from readaptir.retrieval.base import IndexBuild
from readaptir.retrieval.prompts import EncodeError, format_passage
from readaptir.store.finite import check_finite_rows

EMB_FILE, IDS_FILE, META_FILE = "embeddings.f16", "ids.txt", "meta.json"
# Passages turned into inputs, sorted and encoded together: 100k × ≤512 ids ≈ 200 MB of Python ints at
# worst, and sorting inside 100k passages already brings padding to ~2-5%.
CHUNK_PASSAGES = 100_000

# encode(rows, write, progress): encodes this process's share of `rows`, calling write(indices, vectors).
Encoder = Callable[[Sequence[Any], Callable[[np.ndarray, np.ndarray], None], Any], None]


@dataclass
class CorpusEmbeddings:
    """A finished corpus-embedding index: ``matrix[i]`` (float16, normalised) is document ``ids[i]``."""

    path: Path
    ids: list[str]
    matrix: np.memmap

    @classmethod
    def open(cls, path: str | os.PathLike) -> CorpusEmbeddings:
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        ids = (path / IDS_FILE).read_text(encoding="utf-8").split("\n")[: meta["n"]]
        matrix = np.memmap(path / EMB_FILE, dtype=np.float16, mode="r", shape=(meta["n"], meta["dim"]))
        return cls(path, ids, matrix)

    def __len__(self) -> int:
        return len(self.ids)

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start row, float16 rows)`` slices of the memmap, never more than ``chunk_size`` rows at once."""
        for start in range(0, len(self.ids), chunk_size):
            yield start, np.asarray(self.matrix[start : start + chunk_size])


def check_ids(ids: Sequence[str]) -> None:
    """Doc ids are stored one per line: refuse the ones that would shift every later row."""
    for doc_id in ids:
        if "\n" in doc_id or "\r" in doc_id:
            raise EncodeError(f"doc id {doc_id!r} contains a line break; ids.txt stores one id per line")


def write_ids_meta(out_dir: Path, ids: Sequence[str], dim: int) -> None:
    """``ids.txt`` (one id per line, row order) and ``meta.json`` beside ``embeddings.f16``, once every row
    is known to be finite (a NaN embedding is never published)."""
    check_finite_rows(_memmap(out_dir, len(ids), dim, "r"), ids, out_dir / EMB_FILE)
    atomic_write(out_dir / IDS_FILE, "\n".join(ids))
    atomic_write(out_dir / META_FILE, json.dumps({"n": len(ids), "dim": dim, "dtype": "float16"}, indent=1))


def write_embeddings(out_dir: str | os.PathLike, ids: Sequence[str], vectors: np.ndarray) -> CorpusEmbeddings:
    """An index folder from vectors already in memory (row i is document ``ids[i]``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_ids(ids)
    matrix = _memmap(out_dir, len(ids), vectors.shape[1], "w+")
    matrix[: len(ids)] = vectors.astype(np.float16)
    matrix.flush()
    write_ids_meta(out_dir, ids, vectors.shape[1])
    return CorpusEmbeddings.open(out_dir)


def _memmap(out_dir: Path, n: int, dim: int, mode: str) -> np.memmap:
    return np.memmap(out_dir / EMB_FILE, dtype=np.float16, mode=mode, shape=(max(n, 1), dim))


def _chunks(corpus_root: Path) -> Iterator[tuple[int, list[Passage]]]:
    buf: list[Passage] = []
    start = 0
    for p in iter_corpus(corpus_root):
        buf.append(p)
        if len(buf) == CHUNK_PASSAGES:
            yield start, buf
            start, buf = start + len(buf), []
    if buf:
        yield start, buf


def corpus_index_build(
    corpus_root: Path,
    passage_template: str,
    dim: int,
    to_rows: Callable[[list[str]], Sequence[Any]],
    encode: Encoder,
    rank: int = 0,
) -> IndexBuild:
    """Steps writing the embeddings of ``corpus_root`` (passages formatted with ``passage_template``).

    ``to_rows`` turns a chunk's passage texts into model inputs; ``encode`` encodes this process's share.
    """
    ids: list[str] = []  # one pass over the corpus fixes the row count and order

    def read_ids() -> None:
        if not ids:
            ids.extend(p.doc_id for p in iter_corpus(corpus_root))
            check_ids(ids)

    def prepare(tmp: Path) -> None:  # main process: the empty memmap, filled in place by every process
        read_ids()
        _memmap(tmp, len(ids), dim, "w+").flush()

    def fill(tmp: Path) -> None:
        read_ids()
        matrix = _memmap(tmp, len(ids), dim, "r+")
        with tqdm(total=len(ids), desc=f"encode {corpus_root.name}", unit="psg", disable=rank != 0) as bar:
            for start, psgs in _chunks(corpus_root):
                rows = to_rows([format_passage(passage_template, p.title, p.text) for p in psgs])

                def write(idx: np.ndarray, vecs: np.ndarray, start: int = start) -> None:
                    matrix[start + idx] = vecs.astype(np.float16)

                encode(rows, write, bar)
        matrix.flush()  # before the barrier, so the main process never publishes rows still in a cache

    return IndexBuild(fill=fill, prepare=prepare, finish=lambda tmp: write_ids_meta(tmp, ids, dim))
