"""Token cache: each corpus tokenized once, stored memory-mapped, shared by every cell and run.

Knowledge-adapter training reads the same corpus under many cells (two ablation subsets, repeated
sweeps, both batching modes), and MS-MARCO alone is 8.84M passages, ≈ 0.7B tokens. So a corpus is
tokenized exactly once per tokenizer, streamed in batches (the corpus text is never held in memory),
and stored as an artifact keyed by the corpus contents and the tokenizer files:

    <cache>/tokens/tokens-<hash>/ids.bin       all token ids, concatenated (uint16 when the vocabulary fits)
                                 offsets.npy   int64 [N+1]: passage i is ids[offsets[i]:offsets[i+1]]
                                 doc_ids.txt   one doc id per line, row order = corpus.jsonl order
                                               (read as a stream, never as a list of N strings)
                                 meta.json     dtype, counts, tokenizer class

Ids hold ``passage_training_text(p)`` tokenized with ``add_special_tokens=False`` and *not truncated*:
BOS/EOS and the ``max_tokens`` cut are applied at training time, so a changed ``max_tokens`` reuses the
cache. Ablation subsets select rows by doc id (:meth:`TokenCache.select`), never re-tokenize.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from readaptir.data.beir import iter_corpus, passage_training_text
from readaptir.store.artifacts import ArtifactStore
from readaptir.store.rows import LineIds

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the on-disk layout or the text recipe changes
TOKENIZE_BATCH = 4096  # passages per tokenizer call: large enough for the Rust tokenizer's threads


class TokenCache:
    """Read-only view of a finished token cache folder (ids and offsets memory-mapped)."""

    def __init__(self, path: str | os.PathLike, key: str = "") -> None:
        self.path = Path(path)
        self.key = key or self.path.name
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.path}: not a token cache (meta.json missing)")
        self.meta = json.loads(meta_path.read_text())
        # Memory-mapped: 8 bytes per passage (71 MB for MS-MARCO) stay on disk until read.
        self.offsets = np.load(self.path / "offsets.npy", mmap_mode="r")
        n_tokens = int(self.offsets[-1])
        # np.memmap refuses zero-length files; an empty corpus gets an empty array instead.
        self.ids = (
            np.memmap(self.path / "ids.bin", dtype=self.meta["dtype"], mode="r", shape=(n_tokens,))
            if n_tokens
            else np.zeros(0, dtype=self.meta["dtype"])
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def doc_ids(self) -> LineIds:
        """Doc ids in row order, streamed from ``doc_ids.txt`` (no string per passage held in memory)."""
        n = _count_lines(self.path / "doc_ids.txt")
        if n != len(self):
            raise ValueError(f"{self.path}: {n} doc ids for {len(self)} passages; delete the folder")
        return LineIds(self.path / "doc_ids.txt", n)

    @cached_property
    def lengths(self) -> np.ndarray:
        """Number of tokens of each passage (no BOS/EOS, untruncated)."""
        return np.diff(self.offsets)

    def get(self, i: int) -> np.ndarray:
        """Token ids of passage ``i`` (no BOS/EOS), a view into the memory map."""
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def select(
        self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
    ) -> np.ndarray:
        """Row indices (ascending) whose doc id is in ``include`` (when given) and not in ``exclude``."""
        inc = None if include is None else frozenset(include)
        exc = frozenset(exclude or ())
        rows = (i for i, d in enumerate(self.doc_ids) if (inc is None or d in inc) and d not in exc)
        return np.fromiter(rows, dtype=np.int64)


def write_token_cache(
    out_dir: str | os.PathLike,
    items: Iterable[tuple[str, Sequence[int]]],
    vocab_size: int,
    extra_meta: dict | None = None,
) -> None:
    """Stream ``(doc_id, token_ids)`` pairs into a cache folder (used for corpora and synthetic benchmarks).

    Pairs are written ``TOKENIZE_BATCH`` at a time and offsets go to disk as they are known, so memory
    stays one batch at any corpus size."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    n = tokens = 0
    with (
        open(out / "ids.bin", "wb") as ids_f,
        open(out / "doc_ids.txt", "w", encoding="utf-8") as doc_f,
        open(out / "offsets.raw", "wb") as off_f,
    ):
        off_f.write(np.zeros(1, dtype=np.int64).tobytes())
        items = iter(items)
        while batch := list(itertools.islice(items, TOKENIZE_BATCH)):
            doc_ids, flat, lengths = _checked_batch(batch, vocab_size)
            ids_f.write(flat.astype(dtype).tobytes())
            doc_f.write("".join(d + "\n" for d in doc_ids))
            off_f.write((tokens + np.cumsum(lengths)).astype(np.int64).tobytes())
            n, tokens = n + len(batch), tokens + int(lengths.sum())
    _npy_from_raw(out / "offsets.raw", out / "offsets.npy", n + 1)
    meta = {
        "format": FORMAT_VERSION,
        "dtype": np.dtype(dtype).name,
        "passages": n,
        "tokens": tokens,
        "vocab_size": vocab_size,
        **(extra_meta or {}),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def _checked_batch(batch: list[tuple[str, Sequence[int]]], vocab_size: int):
    """``(doc ids, all token ids as one int64 array, lengths)`` of a batch, refusing ids a cache cannot hold."""
    doc_ids = [d for d, _ in batch]
    for doc_id in doc_ids:
        if "\n" in doc_id:
            raise ValueError(f"doc id {doc_id!r} contains a newline; the token cache cannot store it")
    lengths = np.fromiter((len(r) for _, r in batch), dtype=np.int64, count=len(batch))
    flat = np.fromiter(
        itertools.chain.from_iterable(r for _, r in batch), dtype=np.int64, count=int(lengths.sum())
    )
    bad = np.flatnonzero((flat < 0) | (flat >= vocab_size))
    if len(bad):
        row = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
        raise ValueError(f"doc {doc_ids[row]!r}: token id outside [0, {vocab_size})")
    return doc_ids, flat, lengths


def _npy_from_raw(raw: Path, out: Path, n: int) -> None:
    """``out`` (.npy, int64 [n], what ``np.save`` writes) from a file of raw int64s, copied in blocks."""
    with open(out, "wb") as f, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (n,)})
        shutil.copyfileobj(src, f, 1 << 24)
    raw.unlink()


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += chunk.count(b"\n")
    return n


def _tokenized(tokenizer, corpus_root: Path) -> Iterable[tuple[str, list[int]]]:
    """Stream the corpus in batches of TOKENIZE_BATCH passages through the (fast) tokenizer."""
    batch_ids: list[str] = []
    batch_texts: list[str] = []

    def flush():
        enc = tokenizer(batch_texts, add_special_tokens=False)["input_ids"]
        yield from zip(batch_ids, enc, strict=True)
        batch_ids.clear()
        batch_texts.clear()

    for p in iter_corpus(corpus_root):
        batch_ids.append(p.doc_id)
        batch_texts.append(passage_training_text(p))
        if len(batch_texts) >= TOKENIZE_BATCH:
            yield from flush()
    if batch_texts:
        yield from flush()


def ensure_token_cache(
    store: ArtifactStore, key: str, tokenizer_dir: str | os.PathLike, corpus_root: str | os.PathLike
) -> TokenCache:
    """The corpus's token cache at ``key``, tokenizing (streamed, once, with a progress bar) only when missing."""
    corpus_root = Path(corpus_root)

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        # Whole passages are cached untruncated (training truncates to train.max_tokens, keeping EOS):
        # silence the "longer than the maximum sequence length" warning meant for model inputs.
        tokenizer.model_max_length = 1 << 62
        total = _count_lines(corpus_root / "corpus.jsonl")
        log.info("Tokenizing %s (%d lines) with %s", corpus_root, total, tokenizer_dir)
        items = tqdm(
            _tokenized(tokenizer, corpus_root),
            total=total,
            desc=f"tokenize {corpus_root.name}",
            unit="psg",
            mininterval=2.0,
        )
        write_token_cache(
            tmp,
            items,
            vocab_size=len(tokenizer),
            extra_meta={"tokenizer": type(tokenizer).__name__, "corpus": str(corpus_root)},
        )

    path = store.build(
        "tokens", key, build, meta={"corpus": str(corpus_root), "tokenizer": str(tokenizer_dir)}
    )
    return TokenCache(path, key)
