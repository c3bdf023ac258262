"""Stored corpus embeddings: one float16 memmap per (retriever weights × corpus), encoded once, reused.

What: :func:`encode_corpus_cached` turns a BeIR corpus into the artifact that search reads
(``embeddings.f16`` rows in corpus order, ``ids.txt`` one doc id per line, ``meta.json`` with n/dim/key),
and :class:`CorpusEmbeddings` opens it again as a read-only memmap.

Why: encoding a corpus is expensive (MS-MARCO's 8.84M passages through a 7B model) and every readapted
retriever is compared against its base on the same corpus, so the vectors are content-addressed by
exactly what changes them (:func:`embedding_key`: prompt, lengths, pooling, dtype, corpus fingerprint,
parent weights) and never recomputed. float16 halves the memmap's disk and page-cache footprint against
float32; search streams it in slices instead of loading it.

How: the corpus is streamed in chunks of ``CHUNK_PASSAGES`` (defined in :mod:`readaptir.encode`, read at
call time); each chunk is tokenized, sorted and batched by :func:`readaptir.encode.encode_ids`, and every
batch is written in place at its original rows. Under ``accelerate launch`` the build goes through
``ArtifactStore.build_collective``: rank 0 creates the empty memmap, every rank encodes every
``num_processes``-th batch into the shared temporary folder, rank 0 writes ids/meta and publishes.

    from readaptir.embeddings import encode_corpus_cached, CorpusEmbeddings
    emb = encode_corpus_cached(store, parent_key, model, tok, model_cfg, dataset_cfg, corpus_root, encode_cfg)
    for start, rows in emb.chunks(100_000): ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from readaptir import encode
from readaptir.artifacts import ArtifactStore, atomic_write_text
from readaptir.data import Passage, file_fingerprint, iter_corpus
from readaptir.encode import (
    EncodeError,
    _dist,
    backbone,
    build_input_ids,
    encode_ids,
    format_passage,
    pad_id_for,
)

EMB_FILE, IDS_FILE, META_FILE = "embeddings.f16", "ids.txt", "meta.json"


@dataclass
class CorpusEmbeddings:
    """A finished corpus-embedding artifact: ``matrix[i]`` (float16, normalised) is document ``ids[i]``."""

    path: Path
    key: str
    ids: list[str]
    matrix: np.memmap

    @classmethod
    def open(cls, path: str | os.PathLike, key: str = "") -> CorpusEmbeddings:
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        ids = (path / IDS_FILE).read_text(encoding="utf-8").split("\n")[: meta["n"]]
        matrix = np.memmap(path / EMB_FILE, dtype=np.float16, mode="r", shape=(meta["n"], meta["dim"]))
        return cls(path, key or meta.get("key", ""), ids, matrix)

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


def write_corpus_files(
    out_dir: Path, ids: Sequence[str], dim: int, key: str, fill: Callable[[np.memmap], None]
) -> None:
    """Create the float16 memmap + ids + meta in ``out_dir``; ``fill(memmap)`` writes the rows."""
    check_ids(ids)
    matrix = np.memmap(out_dir / EMB_FILE, dtype=np.float16, mode="w+", shape=(max(len(ids), 1), dim))
    fill(matrix)
    matrix.flush()
    del matrix
    write_ids_meta(out_dir, ids, dim, key)


def write_ids_meta(out_dir: Path, ids: Sequence[str], dim: int, key: str) -> None:
    """``ids.txt`` (one id per line, row order) and ``meta.json`` beside ``embeddings.f16``."""
    (out_dir / IDS_FILE).write_text("\n".join(ids), encoding="utf-8")
    atomic_write_text(
        out_dir / META_FILE, json.dumps({"n": len(ids), "dim": dim, "dtype": "float16", "key": key}, indent=1)
    )


def corpus_fields(corpus_root: str | os.PathLike) -> dict[str, Any]:
    return {"corpus": file_fingerprint(Path(corpus_root) / "corpus.jsonl")}


def embedding_key(
    store: ArtifactStore,
    parent_key: str,
    model_cfg: Mapping[str, Any],
    dataset_cfg: Mapping[str, Any],
    corpus_root: str | os.PathLike,
    dtype: str,
) -> str:
    """Key of a corpus's embeddings: what changes the vectors (prompt, lengths, pooling, dtype, corpus)."""
    fields = {
        "family": model_cfg.get("family"),
        "passage_template": model_cfg.get("passage_template"),
        "passage_max_len": model_cfg.get("passage_max_len"),
        "pooling": model_cfg.get("pooling"),
        "normalize": model_cfg.get("normalize", True),
        "dtype": dtype,
        "dataset": dataset_cfg.get("beir_name", dataset_cfg.get("name")),
        **corpus_fields(corpus_root),
    }
    return store.key("embeddings", fields, parents=[parent_key])


def encode_corpus_cached(
    store: ArtifactStore,
    parent_key: str,
    model: torch.nn.Module,
    tokenizer: Any,
    model_cfg: Mapping[str, Any],
    dataset_cfg: Mapping[str, Any],
    corpus_root: str | os.PathLike,
    encode_cfg: Mapping[str, Any],
) -> CorpusEmbeddings:
    """Corpus embeddings of ``model`` (identified by ``parent_key``), encoded once and then reused.

    Streams the corpus in chunks of ``CHUNK_PASSAGES``: tokenize, sort by length, encode, write rows in
    place. Distributed (``accelerate launch``): every rank encodes its share of batches into a shared
    temporary folder (``ArtifactStore.build_collective``); rank 0 then publishes it.
    """
    dtype = str(next(backbone(model).parameters()).dtype).removeprefix("torch.")
    key = embedding_key(store, parent_key, model_cfg, dataset_cfg, corpus_root, dtype)
    rank, world, _, _ = _dist()
    max_len = int(model_cfg.get("passage_max_len", 512))
    pad_id, eos_id = pad_id_for(tokenizer, model_cfg), tokenizer.eos_token_id
    budget, max_bs = int(encode_cfg.get("token_budget", 65536)), int(encode_cfg.get("max_batch_size", 256))
    normalize = bool(model_cfg.get("normalize", True))
    dim = int(backbone(model).config.hidden_size)
    ids: list[str] = []  # filled by a first pass over the corpus (row count and order) when building

    def encode_into(matrix: np.memmap) -> None:
        def chunks() -> Iterator[tuple[int, list[Passage]]]:
            buf: list[Passage] = []
            start = 0
            for p in iter_corpus(corpus_root):
                buf.append(p)
                if len(buf) == encode.CHUNK_PASSAGES:  # read at call time, so patching it applies
                    yield start, buf
                    start, buf = start + len(buf), []
            if buf:
                yield start, buf

        with tqdm(
            total=len(ids), desc=f"encode {dataset_cfg.get('name')}", unit="psg", disable=rank != 0
        ) as bar:
            for start, psgs in chunks():
                rows = build_input_ids(
                    tokenizer, [format_passage(model_cfg, p.title, p.text) for p in psgs], max_len
                )

                def write(idx: np.ndarray, vecs: np.ndarray, start: int = start) -> None:
                    matrix[start + idx] = vecs.astype(np.float16)

                encode_ids(
                    model.eval(),
                    rows,
                    pad_id,
                    eos_id,
                    budget,
                    max_bs,
                    normalize=normalize,
                    write=write,
                    shard=(rank, world),
                    progress=bar,
                )

    def read_ids() -> None:
        if not ids:
            ids.extend(p.doc_id for p in iter_corpus(corpus_root))
            check_ids(ids)

    def prepare(tmp: Path) -> None:  # rank 0 (or the only process): an empty memmap filled in place
        read_ids()
        np.memmap(tmp / EMB_FILE, dtype=np.float16, mode="w+", shape=(max(len(ids), 1), dim)).flush()

    def fill(tmp: Path) -> None:  # every rank: its share of the batches (all of them in one process)
        read_ids()
        matrix = np.memmap(tmp / EMB_FILE, dtype=np.float16, mode="r+", shape=(max(len(ids), 1), dim))
        encode_into(matrix)
        matrix.flush()  # before the barrier, so rank 0 never publishes rows still in another node's cache
        del matrix

    meta = {"model": model_cfg.get("name"), "dataset": dataset_cfg.get("name")}
    store.build_collective(
        "embeddings", key, fill, meta, prepare=prepare, finish=lambda tmp: write_ids_meta(tmp, ids, dim, key)
    )
    return CorpusEmbeddings.open(store.path(key), key)
