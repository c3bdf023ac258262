"""Token cache: streamed tokenization, keys that change exactly when corpus or tokenizer change, reuse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import readaptir.train.tokens as tokens
from readaptir.data.beir import iter_corpus, passage_training_text
from readaptir.grid.keys import tokens_key
from readaptir.store.artifacts import ArtifactStore
from readaptir.train.tokens import TokenCache, write_token_cache


def ensure_token_cache(store, tokenizer_dir, corpus):
    return tokens.ensure_token_cache(store, tokens_key(tokenizer_dir, corpus), tokenizer_dir, corpus)


def token_cache_key(store, tokenizer_dir, corpus):
    return tokens_key(tokenizer_dir, corpus)


@pytest.fixture()
def corpus(tmp_path, toy_dir) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    shutil.copy(toy_dir / "corpus.jsonl", root / "corpus.jsonl")
    return root


@pytest.fixture()
def tokenizer_dir(tmp_path, tiny_llama) -> Path:
    out = tmp_path / "tok"
    out.mkdir()
    for f in tiny_llama.pretrained.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


def test_cache_contents_match_tokenizer(tmp_path, corpus, tokenizer_dir, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setattr(tokens, "TOKENIZE_BATCH", 7)  # several streamed batches, one partial
    cache = ensure_token_cache(ArtifactStore(tmp_path / "store"), tokenizer_dir, corpus)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    passages = list(iter_corpus(corpus))
    assert len(cache) == len(passages) == 240
    assert cache.doc_ids == [p.doc_id for p in passages]
    for i in (0, 6, 7, 123, 239):
        want = tok(passage_training_text(passages[i]), add_special_tokens=False)["input_ids"]
        assert cache.get(i).tolist() == want
        assert want[0] != tok.bos_token_id  # no BOS/EOS stored
    assert isinstance(cache.ids, np.memmap)
    rows = cache.select(include={passages[3].doc_id, passages[9].doc_id, "missing"})
    assert rows.tolist() == [3, 9]
    assert len(cache.select(exclude={passages[3].doc_id})) == 239


def test_cache_key_changes_only_with_corpus_or_tokenizer(tmp_path, corpus, tokenizer_dir):
    store = ArtifactStore(tmp_path / "store")
    k0 = token_cache_key(store, tokenizer_dir, corpus)
    (tokenizer_dir / "unrelated.bin").write_bytes(b"weights do not matter")
    assert token_cache_key(store, tokenizer_dir, corpus) == k0
    copy = tmp_path / "elsewhere"
    shutil.copytree(corpus, copy)
    assert token_cache_key(store, tokenizer_dir, copy) == k0  # content-addressed, not path-addressed

    with open(corpus / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "new", "title": "", "text": "one more passage"}) + "\n")
    k1 = token_cache_key(store, tokenizer_dir, corpus)
    assert k1 != k0

    cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 123
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert token_cache_key(store, tokenizer_dir, corpus) not in (k0, k1)


def test_cache_reused_on_second_call(tmp_path, corpus, tokenizer_dir, monkeypatch):
    store = ArtifactStore(tmp_path / "store")
    first = ensure_token_cache(store, tokenizer_dir, corpus)

    def boom(*a, **k):
        raise AssertionError("re-tokenized")

    monkeypatch.setattr(tokens, "_tokenized", boom)
    second = ensure_token_cache(ArtifactStore(tmp_path / "store"), tokenizer_dir, corpus)
    assert second.path == first.path and second.key == first.key
    assert [e["reused"] for e in store.events] == [False]


def test_write_token_cache_dtype_and_empty_rows(tmp_path):
    write_token_cache(tmp_path / "c", [("a", [1, 2, 3]), ("b", []), ("c", [70000])], vocab_size=80000)
    cache = TokenCache(tmp_path / "c")
    assert cache.ids.dtype == np.uint32 and len(cache) == 3
    assert cache.get(1).tolist() == [] and cache.get(2).tolist() == [70000]
    assert cache.lengths.tolist() == [3, 0, 1]
    with pytest.raises(ValueError, match="outside"):
        write_token_cache(tmp_path / "d", [("a", [5])], vocab_size=5)
