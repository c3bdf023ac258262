"""Memory bounded by chunk sizes: per-passage state lives in numpy arrays and files, results are unchanged.

Small corpora with tiny chunk/batch sizes (monkeypatched) exercise the same code paths as MS-MARCO:
index builds tokenize in sub-batches and keep a chunk's token rows in one array, the streaming search
converts sub-blocks, ids are read from their file instead of a list, and every result equals the
whole-corpus-at-once computation bit for bit. Figures at scale: experiments/bench_scale.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import readaptir.retrieval.dense as dense_mod
import readaptir.retrieval.embeddings as emb_mod
import readaptir.retrieval.search as search_mod
import readaptir.train.tokens as tokens
from readaptir.config import EncodeSettings, SearchSettings
from readaptir.data.beir import iter_corpus
from readaptir.readapt.model import load_base_retriever
from readaptir.retrieval.dense import DensePrompts, DenseRetriever, encode_ids, load_tokenizer, pad_id_for
from readaptir.retrieval.embeddings import CorpusEmbeddings, write_embeddings
from readaptir.retrieval.prompts import build_input_ids, format_passage
from readaptir.retrieval.search import search, stream_topk
from readaptir.store.rows import LineIds, Ragged, RowFile
from readaptir.train.tokens import TokenCache, write_token_cache

PROMPTS = DensePrompts("query: {query}", "passage: {title} {text}", "t", 64, 128)
ENCODE = EncodeSettings(token_budget=512, max_batch_size=8)


@pytest.mark.parametrize("tail", ["", "\n"])
def test_line_ids_stream_lookup_and_index_like_a_list(tmp_path, monkeypatch, tail):
    monkeypatch.setattr("readaptir.store.rows.BLOCK_BYTES", 7)  # lines straddle blocks
    ids = [f"doc-{i}" for i in range(23)] + ["", "ü-last"]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + tail, encoding="utf-8")
    lines = LineIds(tmp_path / "ids.txt", len(ids))
    assert list(lines) == ids and lines == ids and len(lines) == 25
    assert lines.lookup(np.array([[24, -1], [3, 3], [0, 23]])) == {
        24: "ü-last",
        3: "doc-3",
        0: "doc-0",
        23: "",
    }
    assert [lines[i] for i in (0, 5, 23, 24, -1)] == ["doc-0", "doc-5", "", "ü-last", "ü-last"]
    assert list(LineIds(tmp_path / "ids.txt", 4)) == ids[:4]  # rows beyond n are not the index's
    with pytest.raises(IndexError):
        lines[25]


def test_row_file_writes_scattered_rows_in_place(tmp_path):
    rng = np.random.default_rng(0)
    want = rng.standard_normal((50, 6)).astype(np.float16)
    (tmp_path / "m").write_bytes(b"\0" * want.nbytes)
    rows = RowFile(tmp_path / "m", 50, 6)
    for part in np.array_split(rng.permutation(50), 7):  # runs and single rows, unsorted
        rows.write(part, want[part].astype(np.float32))
    assert np.array_equal(rows.read(0, 50), want) and np.array_equal(rows[10:13], want[10:13])
    assert rows.read(48, 99).shape == (2, 6)


def test_ragged_rows_are_one_array():
    parts = [Ragged.of([[1, 2, 3], [4]]), Ragged.of([]), Ragged.of([[5, 6], [], [7]])]
    r = Ragged.concat(parts)
    assert r[:] == [[1, 2, 3], [4], [5, 6], [], [7]] and r.lengths.tolist() == [3, 1, 2, 0, 1]
    assert r.flat.dtype == np.int32 and isinstance(r.offsets, np.ndarray)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    model = load_base_retriever(tiny_llama.pretrained, tiny_llama.retriever, device="cpu")
    return model, load_tokenizer(tiny_llama.retriever, tiny_llama.pretrained)


def test_index_build_tokenizes_in_sub_batches_and_matches_whole_chunk_encoding(
    tmp_path, llama, toy_dir, monkeypatch
):
    """Chunks of 70 passages tokenized 16 at a time into one array; rows bitwise equal to encoding each
    chunk's token lists in one call (what the build did before)."""
    monkeypatch.setattr(emb_mod, "CHUNK_PASSAGES", 70)
    monkeypatch.setattr(emb_mod, "TOKENIZE_BATCH", 16)
    model, tok = llama
    retriever = DenseRetriever(model, tok, PROMPTS, ENCODE, SearchSettings())
    seen: list[tuple[str, int]] = []
    encode = retriever.encoder()

    def spy(rows, write, bar=None):
        seen.append((type(rows).__name__, len(rows)))
        encode(rows, write, bar)

    retriever.encoder = lambda: spy
    build = retriever.index_build(toy_dir)
    out = tmp_path / "idx"
    out.mkdir()
    calls: list[int] = []
    orig = dense_mod.build_input_ids
    monkeypatch.setattr(dense_mod, "build_input_ids", lambda t, x, n: calls.append(len(x)) or orig(t, x, n))
    for step in (build.prepare, build.fill, build.finish):
        step(out)
    assert seen == [("Ragged", 70), ("Ragged", 70), ("Ragged", 70), ("Ragged", 30)]
    assert max(calls) == 16 and sum(calls) == 240
    emb = CorpusEmbeddings.open(out)
    passages = list(iter_corpus(toy_dir))
    assert isinstance(emb.ids, LineIds) and emb.ids == [p.doc_id for p in passages]
    texts = [format_passage(PROMPTS.passage_template, p.title, p.text) for p in passages]
    for start in range(0, 240, 70):
        rows = build_input_ids(tok, texts[start : start + 70], 128)
        want = encode_ids(model, rows, pad_id_for(tok), tok.eos_token_id, 512, 8).astype(np.float16)
        assert np.array_equal(np.asarray(emb.matrix[start : start + 70]), want)


def test_stream_search_converts_sub_blocks_with_bitwise_equal_scores(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    m = rng.standard_normal((300, 16)).astype(np.float16)
    corpus = write_embeddings(tmp_path, [f"d{i}" for i in range(300)], m)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    full = torch.from_numpy(q) @ torch.from_numpy(m.astype(np.float32)).T
    want_s, want_i = torch.topk(full, 20, dim=1)
    monkeypatch.setattr(search_mod, "CONVERT_BYTES", 4 * 16 * 45)  # 45 rows at a time
    blocks: list[int] = []
    real = CorpusEmbeddings.chunks

    def spy(self, size):
        for start, rows in real(self, size):
            blocks.append(len(rows))
            yield start, rows

    monkeypatch.setattr(CorpusEmbeddings, "chunks", spy)
    s, i = stream_topk(q, corpus, 20, chunk_size=262144, device="cpu")
    assert max(blocks) == 45 and sum(blocks) == 300
    assert np.array_equal(s, want_s.numpy()) and np.array_equal(i, want_i.numpy())
    run = search([f"q{j}" for j in range(7)], q, corpus, top_k=19, backend="stream")
    assert [list(run[f"q{j}"]) for j in range(7)] == [
        [f"d{k}" for k in want_i[j, :19].tolist()] for j in range(7)
    ]


def test_token_cache_written_in_batches_is_the_same_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(tokens, "TOKENIZE_BATCH", 3)
    items = [(f"d{i}", list(range(i % 4))) for i in range(10)]
    write_token_cache(tmp_path / "c", items, vocab_size=100)
    offsets = np.concatenate([[0], np.cumsum([len(r) for _, r in items])]).astype(np.int64)
    np.save(tmp_path / "want.npy", offsets)
    assert (tmp_path / "c" / "offsets.npy").read_bytes() == (tmp_path / "want.npy").read_bytes()
    cache = TokenCache(tmp_path / "c")
    assert isinstance(cache.doc_ids, LineIds) and cache.doc_ids == [d for d, _ in items]
    assert isinstance(cache.offsets, np.memmap)  # 8 bytes per passage stay on disk until read
    assert [cache.get(i).tolist() for i in range(10)] == [r for _, r in items]
    assert cache.select(exclude={"d1", "d9"}).tolist() == [0, 2, 3, 4, 5, 6, 7, 8]
    assert not (tmp_path / "c" / "offsets.raw").exists()
    with pytest.raises(ValueError, match="doc 'x7': token id outside"):  # named in a later batch
        write_token_cache(tmp_path / "d", [*items[:7], ("x7", [100])], vocab_size=100)
