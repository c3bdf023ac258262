"""Corpus embeddings on disk: a float16 memmap in corpus order, written once and searched many times.

A finished index folder holds ``embeddings.f16`` (rows in corpus order, L2-normalised), ``ids.txt`` (one
doc id per line) and ``meta.json`` (n, dim). float16 halves disk and page cache against float32
(MS-MARCO at 4096 dims: 72 GB); search streams it in slices instead of loading it.

Building one streams the corpus in chunks of ``CHUNK_PASSAGES``: each chunk is turned into model inputs
``TOKENIZE_BATCH`` passages at a time, encoded in length-sorted batches, and every batch is written in
place at its original rows (file writes, not a memory map, so written rows leave the resident set). No
state grows with the corpus: ids go straight to ``ids.txt``, token rows of a chunk are one flat array
(:class:`~readaptir.store.rows.Ragged`). Under a multi-GPU launch the steps run as
``ArtifactStore.build_collective`` orders them: the main process writes ``ids.txt`` and the empty matrix
file, every process fills its share of batches, the main process checks the rows and writes meta.

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

from readaptir.data.beir import iter_corpus
from readaptir.fs import atomic_write
from readaptir.logs import hidden
from readaptir.retrieval.base import IndexBuild
from readaptir.retrieval.prompts import EncodeError, format_passage
from readaptir.store.finite import check_finite_rows
from readaptir.store.rows import LineIds, Ragged, RowFile

EMB_FILE, IDS_FILE, META_FILE = "embeddings.f16", "ids.txt", "meta.json"
# Passages sorted and encoded together: sorting inside 100k passages already brings padding to ~2-5%;
# their token rows are one int32 array (100k × ≤512 ids ≤ 200 MB). They are tokenized TOKENIZE_BATCH
# passages per call, so no tokenizer output for the whole chunk exists as Python lists.
CHUNK_PASSAGES = 100_000
TOKENIZE_BATCH = 4096

# encode(rows, write, progress): encodes this process's share of `rows`, calling write(indices, vectors).
Encoder = Callable[[Sequence[Any], Callable[[np.ndarray, np.ndarray], None], Any], None]


@dataclass
class CorpusEmbeddings:
    """A finished corpus-embedding index: ``matrix[i]`` (float16, normalised) is document ``ids[i]``.

    ``ids`` streams ``ids.txt`` (:class:`LineIds`: no string per passage in memory); ``matrix`` is a
    memory map for random access, ``rows`` reads blocks by file I/O (what search streams through)."""

    path: Path
    ids: Sequence[str]
    matrix: np.memmap

    @classmethod
    def open(cls, path: str | os.PathLike) -> CorpusEmbeddings:
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        ids = LineIds(path / IDS_FILE, meta["n"])
        matrix = np.memmap(
            path / EMB_FILE, dtype=np.float16, mode="r", shape=(max(meta["n"], 1), meta["dim"])
        )
        return cls(path, ids, matrix[: meta["n"]])

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def rows(self) -> RowFile:
        return RowFile(self.path / EMB_FILE, len(self.ids), self.matrix.shape[1])

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start row, float16 rows)`` blocks read from the file, never more than ``chunk_size`` rows."""
        rows = self.rows
        for start in range(0, len(self.ids), chunk_size):
            yield start, rows.read(start, start + chunk_size)


def check_ids(ids: Sequence[str]) -> None:
    """Doc ids are stored one per line: refuse the ones that would shift every later row."""
    for doc_id in ids:
        if "\n" in doc_id or "\r" in doc_id:
            raise EncodeError(f"doc id {doc_id!r} contains a line break; ids.txt stores one id per line")


def write_ids_meta(out_dir: Path, ids: Sequence[str], dim: int) -> None:
    """``ids.txt`` (one id per line, row order) and ``meta.json`` beside ``embeddings.f16``, once every row
    is known to be finite (a NaN embedding is never published)."""
    check_finite_rows(RowFile(out_dir / EMB_FILE, len(ids), dim), ids, out_dir / EMB_FILE)
    atomic_write(out_dir / IDS_FILE, "\n".join(ids))
    atomic_write(out_dir / META_FILE, json.dumps({"n": len(ids), "dim": dim, "dtype": "float16"}, indent=1))


def write_meta(out_dir: Path, n: int, dim: int) -> None:
    """``meta.json`` for the ``n`` rows of ``embeddings.f16`` and ``ids.txt``, once every row is finite."""
    check_finite_rows(RowFile(out_dir / EMB_FILE, n, dim), LineIds(out_dir / IDS_FILE, n), out_dir / EMB_FILE)
    atomic_write(out_dir / META_FILE, json.dumps({"n": n, "dim": dim, "dtype": "float16"}, indent=1))


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


def _stream_ids(corpus_root: Path, out: Path) -> int:
    """Write the corpus's doc ids to ``out`` (one per line, no final newline); their count."""
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for p in iter_corpus(corpus_root):
            check_ids((p.doc_id,))
            f.write(("\n" if n else "") + p.doc_id)
            n += 1
    return n


def _count_ids(path: Path) -> int:
    """Rows of an ``ids.txt`` written by :func:`_stream_ids` (lines; the last one has no newline)."""
    size, n = path.stat().st_size, 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            n += block.count(b"\n")
    return n + 1 if size else 0


def _chunks(corpus_root: Path, template: str, to_rows: Callable[[list[str]], Sequence[Any]]):
    """``(first row, model inputs)`` of ``CHUNK_PASSAGES`` passages at a time, tokenized in sub-batches."""
    parts: list[Sequence[Any]] = []
    texts: list[str] = []
    start = have = 0

    def joined() -> Sequence[Any]:
        if parts and all(isinstance(p, Ragged) for p in parts):
            return Ragged.concat(parts)
        return [r for p in parts for r in p]

    for p in iter_corpus(corpus_root):
        texts.append(format_passage(template, p.title, p.text))
        if len(texts) == TOKENIZE_BATCH or have + len(texts) == CHUNK_PASSAGES:
            parts.append(to_rows(texts))
            have, texts = have + len(texts), []
        if have == CHUNK_PASSAGES:
            yield start, joined()
            start, have, parts = start + have, 0, []
    if texts:
        parts.append(to_rows(texts))
        have += len(texts)
    if have:
        yield start, joined()


def corpus_index_build(
    corpus_root: Path,
    passage_template: str,
    dim: int,
    to_rows: Callable[[list[str]], Sequence[Any]],
    encode: Encoder,
    rank: int = 0,
) -> IndexBuild:
    """Steps writing the embeddings of ``corpus_root`` (passages formatted with ``passage_template``).

    ``to_rows`` turns up to ``TOKENIZE_BATCH`` passage texts into model inputs (a :class:`Ragged` keeps a
    chunk's token rows in one array); ``encode`` encodes this process's share of a chunk.
    """

    def prepare(tmp: Path) -> None:  # main process: ids.txt and the empty matrix, filled by every process
        n = _stream_ids(corpus_root, tmp / IDS_FILE)
        with open(tmp / EMB_FILE, "wb") as f:
            f.truncate(max(n, 1) * dim * 2)

    def fill(tmp: Path) -> None:
        n = _count_ids(tmp / IDS_FILE)
        matrix = RowFile(tmp / EMB_FILE, max(n, 1), dim)
        with tqdm(total=n, desc=f"encode {corpus_root.name}", unit="psg", **hidden(rank != 0)) as bar:
            for start, rows in _chunks(corpus_root, passage_template, to_rows):

                def write(idx: np.ndarray, vecs: np.ndarray, start: int = start) -> None:
                    matrix.write(start + np.asarray(idx), vecs)

                encode(rows, write, bar)

    return IndexBuild(
        fill=fill, prepare=prepare, finish=lambda tmp: write_meta(tmp, _count_ids(tmp / IDS_FILE), dim)
    )
