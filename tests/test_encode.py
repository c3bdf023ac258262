"""Encoding conventions (docs/method.md §2) on the tiny models: golden ids, EOS pooling, padding invariance, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import readaptir.retrieval.embeddings as emb_mod
from readaptir.attention.interface import PATHS
from readaptir.config import EncodeSettings, SearchSettings
from readaptir.data.beir import iter_corpus
from readaptir.readapt.model import load_base_retriever
from readaptir.retrieval.dense import (
    DensePrompts,
    DenseRetriever,
    embed_batch,
    embed_packed,
    encode_ids,
    load_tokenizer,
    make_batches,
    padding_fraction,
)
from readaptir.retrieval.embeddings import CorpusEmbeddings
from readaptir.retrieval.prompts import EncodeError, build_input_ids, format_passage, format_query

REPLLAMA = {
    "name": "tiny-llama",
    "family": "llama",
    "retriever_kind": "lora",
    "query_template": "query: {query}",
    "passage_template": "passage: {title} {text}",
    "pooling": "last_eos",
    "normalize": True,
    "query_max_len": 64,
    "passage_max_len": 128,
    "pad_token": "eos",
    "tiny": None,
}
E5 = {
    **REPLLAMA,
    "name": "tiny-mistral",
    "family": "mistral",
    "retriever_kind": "full",
    "query_template": "Instruct: {task}\nQuery: {query}",
    "passage_template": "{title} {text}",
}
TASK = "Given a question, retrieve passages that answer the question"
ENCODE = EncodeSettings(token_budget=512, max_batch_size=8)
PROMPTS = DensePrompts(REPLLAMA["query_template"], REPLLAMA["passage_template"], TASK, 64, 128)


def _load(tiny):
    model = load_base_retriever(tiny.pretrained, tiny.retriever, device="cpu")
    return model, load_tokenizer(tiny.retriever, tiny.pretrained)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return _load(tiny_llama)


@pytest.fixture(scope="module")
def mistral(tiny_mistral):
    return _load(tiny_mistral)


def _q(m, q):
    return format_query(m["query_template"], TASK, q)


def _p(m, title, text):
    return format_passage(m["passage_template"], title, text)


def test_prompt_texts():
    assert _q(REPLLAMA, "q?") == "query: q?"
    assert _q(E5, "q?") == f"Instruct: {TASK}\nQuery: q?"
    assert _p(REPLLAMA, "T", "body") == "passage: T body"
    assert _p(REPLLAMA, "", "body") == "passage: body"  # one space when the title is empty
    assert _p(E5, "T", "body") == "T body"
    assert _p(E5, "", " body ") == "body"


def test_golden_ids_repllama(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama.retriever)
    q = build_input_ids(tok, [_q(REPLLAMA, "what do cats eat?")], 64)[0]
    # <s> ▁qu er y : ▁w hat ▁d o ▁c at s ▁eat? </s>
    assert q == [1, 155, 51, 40, 5, 80, 55, 83, 30, 57, 46, 34, 323, 2]
    p = build_input_ids(tok, [_p(REPLLAMA, "the cat", "cats eat mice")], 128)[0]
    # <s> ▁p as s a ge : ▁the ▁c at ▁c at s ▁eat ▁m i c e </s>
    assert p == [1, 96, 156, 34, 17, 317, 5, 49, 57, 46, 57, 46, 34, 166, 67, 25, 19, 21, 2]
    assert tok.convert_ids_to_tokens(p)[:8] == ["<s>", "▁p", "as", "s", "a", "ge", ":", "▁the"]
    # Truncation keeps BOS and EOS: [bos] + tokens[:max_len-2] + [eos].
    truncated = [1, 96, 156, 34, 17, 2]  # <s> ▁p as s a </s>
    assert build_input_ids(tok, [_p(REPLLAMA, "the cat", "cats eat mice")], 6)[0] == truncated


def test_golden_ids_e5(tiny_mistral):
    tok = AutoTokenizer.from_pretrained(tiny_mistral.retriever)
    q = build_input_ids(tok, [_q(E5, "what do cats eat?")], 64)[0]
    assert q[:9] == [1, 126, 29, 34, 35, 33, 36, 163, 5]  # <s> ▁I n s t r u ct :
    # The "\n" is <unk> (0) for the tiny vocabulary, then "Query:" and the query itself.
    assert tok.convert_ids_to_tokens(q[41:47]) == ["on", "<unk>", "Q", "u", "er", "y"]
    assert q[-11:] == [40, 5, 80, 55, 83, 30, 57, 46, 34, 323, 2]  # y : ▁w hat ▁d o ▁c at s ▁eat? </s>
    assert len(q) == 57 and q.count(2) == 1
    p = build_input_ids(tok, [_p(E5, "the cat", "cats eat mice")], 128)[0]
    assert p == [1, 49, 57, 46, 57, 46, 34, 166, 67, 25, 19, 21, 2]  # no instruction on passages
    untitled = [1, 57, 46, 34, 166, 67, 25, 19, 21, 2]  # <s> ▁c at s ▁eat ▁m i c e </s>
    assert build_input_ids(tok, [_p(E5, "", "cats eat mice")], 128)[0] == untitled
    short = build_input_ids(tok, [_q(E5, "what do cats eat?")], 8)[0]
    assert short == [1, 126, 29, 34, 35, 33, 36, 2]


@pytest.mark.parametrize("which", ["llama", "mistral"])
def test_padding_invariance(which, request):
    model, tok = request.getfixturevalue(which)
    texts = [
        "passage: cats eat mice and birds",
        "query: dog",
        "passage: the elephant is a large animal with a trunk",
    ]
    rows = build_input_ids(tok, texts, 128)
    right = embed_batch(model, rows, tok.eos_token_id, tok.eos_token_id, "right")
    left = embed_batch(model, rows, tok.eos_token_id, tok.eos_token_id, "left")
    alone = torch.cat([embed_batch(model, [r], tok.eos_token_id, tok.eos_token_id) for r in rows])
    assert torch.allclose(right, left, atol=1e-5) and torch.allclose(right, alone, atol=1e-5)
    assert torch.allclose(right.norm(dim=1), torch.ones(3), atol=1e-5)
    # A naive [:, -1] on the right-padded batch would pool pad tokens: the short row must differ.
    out = model(
        input_ids=torch.tensor([rows[1] + [tok.eos_token_id] * (len(rows[2]) - len(rows[1]))])
    ).last_hidden_state
    naive = torch.nn.functional.normalize(out[:, -1].float(), dim=-1)
    assert not torch.allclose(naive[0], alone[1], atol=1e-3)


def test_pooling_asserts_eos(llama):
    model, tok = llama
    with pytest.raises(EncodeError, match="not EOS"):
        embed_batch(model, [[1, 5, 6, 7]], tok.eos_token_id, tok.eos_token_id)


def test_lora_is_merged(tiny_llama, llama):
    from peft import PeftModel
    from transformers import AutoModel

    model, tok = llama
    assert type(model).__name__ == "LlamaModel" and not hasattr(model, "lm_head")
    peft = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tiny_llama.pretrained), str(tiny_llama.retriever)
    ).eval()
    base = AutoModel.from_pretrained(tiny_llama.pretrained).eval()
    ids = torch.tensor([build_input_ids(tok, ["passage: cats eat mice"], 32)[0]])
    with torch.no_grad():
        merged, unmerged, plain = (m(input_ids=ids).last_hidden_state for m in (model, peft, base))
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not torch.allclose(merged, plain, atol=1e-3)  # the LoRA did change the model


def test_make_batches_budget_and_padding():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(70), 0.6, 20000).astype(int), 4, 512)
    batches = make_batches(lengths, 65536, 256)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(lengths[b].max() * len(b) <= 65536 and len(b) <= 256 for b in batches)
    assert padding_fraction(lengths, batches) < 0.05
    assert padding_fraction(lengths, make_batches(lengths, 65536, 256, sort=False)) > 0.4


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_mistral"])
def test_padding_free_encoding_equals_one_at_a_time(family, request, toy_dir):
    """Packed rows (varlen, CPU: the per-passage reference) give each passage its vector alone, ≤ 1e-5."""
    model, tok = _load(request.getfixturevalue(family))  # a fresh copy: the varlen switch mutates it
    passages = list(iter_corpus(toy_dir))[:60]
    rows = build_input_ids(tok, [_p(REPLLAMA, p.title, p.text) for p in passages], 128)
    eos = tok.eos_token_id
    alone = np.concatenate([embed_batch(model, [r], eos, eos).numpy() for r in rows])
    retriever = DenseRetriever(model, tok, PROMPTS, ENCODE, SearchSettings(), attention="varlen")
    PATHS.reset()
    written: list[np.ndarray] = []
    packed = np.zeros_like(alone)

    def write(idx, vecs):
        written.append(idx)
        packed[idx] = vecs

    retriever.encoder()(rows, write)
    n_layers = model.config.num_hidden_layers
    assert dict(PATHS) == {"reference:kwargs": n_layers * len(written)}  # no dense mask, no padding
    assert len(written) > 1 and all(sum(len(rows[i]) for i in b) <= ENCODE.token_budget for b in written)
    assert sorted(np.concatenate(written).tolist()) == list(range(len(rows)))
    assert np.abs(packed - alone).max() <= 1e-5
    padded = encode_ids(model, rows, eos, eos, 512, 8)  # padded batches, unpadded by the varlen function
    assert np.abs(padded - alone).max() <= 1e-5
    with pytest.raises(EncodeError, match="not EOS"):
        embed_packed(model, [rows[0], rows[1][:-1]], eos)


def _index(retriever, root, out):
    b = retriever.index_build(root)
    out.mkdir(parents=True)
    for step in (b.prepare, b.fill, b.finish):
        step(out)
    return CorpusEmbeddings.open(out)


def test_corpus_index_rows(tmp_path, llama, toy_dir, monkeypatch):
    monkeypatch.setattr(emb_mod, "CHUNK_PASSAGES", 70)  # several chunks: rows must land at their places
    model, tok = llama
    retriever = DenseRetriever(model, tok, PROMPTS, ENCODE, SearchSettings())
    emb = _index(retriever, toy_dir, tmp_path / "idx")
    passages = list(iter_corpus(toy_dir))
    assert emb.ids == [p.doc_id for p in passages] and emb.matrix.dtype == np.float16
    assert emb.matrix.shape == (240, 64)
    for i in (0, 69, 70, 239):
        p = passages[i]
        rows = build_input_ids(tok, [_p(REPLLAMA, p.title, p.text)], 128)
        alone = embed_batch(model, rows, tok.eos_token_id, tok.eos_token_id)[0].numpy()
        np.testing.assert_allclose(emb.matrix[i].astype(np.float32), alone, atol=2e-3)
    qids, q = retriever.encode_queries({"a": "what do cats eat?", "b": "dog"})
    assert qids == ["a", "b"] and q.shape == (2, 64) and q.dtype == np.float32
    run = retriever.search(emb, (qids, q), top_k=5)
    assert set(run) == {"a", "b"} and all(len(v) == 5 for v in run.values())


def test_index_progress_bar_honours_tqdm_disable(tmp_path, llama, toy_dir, monkeypatch, capsys):
    import functools

    import tqdm

    # TQDM_DISABLE=1 is read when tqdm is imported and works as a default for disable=: an explicit
    # disable=False (rank 0) overrode it, so batch jobs and the scale benchmark still drew the bar
    monkeypatch.setattr(emb_mod, "tqdm", functools.partial(tqdm.tqdm, disable=True))
    model, tok = llama
    _index(DenseRetriever(model, tok, PROMPTS, ENCODE, SearchSettings()), toy_dir, tmp_path / "idx")
    assert "encode" not in capsys.readouterr().err


def test_hash_progress_bar_honours_tqdm_disable(tmp_path, monkeypatch, capsys):
    import functools

    import tqdm

    import readaptir.store.identity as identity

    monkeypatch.setattr(identity, "tqdm", functools.partial(tqdm.tqdm, disable=True))  # TQDM_DISABLE=1
    monkeypatch.setattr(identity, "HASH_BAR_MIN", 0)  # a large file: the bar is on unless disabled
    (tmp_path / "corpus.jsonl").write_bytes(b"x" * 1000)
    identity.content_identity(tmp_path / "corpus.jsonl")
    assert "hash" not in capsys.readouterr().err


DDP_SCRIPT = """
import json, sys
from accelerate import PartialState
state = PartialState(cpu=True)
import readaptir.retrieval.dense as dense
from readaptir.config import EncodeSettings, SearchSettings
from readaptir.readapt.model import load_base_retriever
from readaptir.store.artifacts import ArtifactStore
pre, ret, store_dir, toy, out = sys.argv[1:6]
model = load_base_retriever(pre, ret, device="cpu")
counted = [0]
real = dense.embed_batch
def counting(model, rows, *a, **k):
    counted[0] += len(rows)
    return real(model, rows, *a, **k)
dense.embed_batch = counting
prompts = dense.DensePrompts("query: {query}", "passage: {title} {text}", "t", 64, 128)
r = dense.DenseRetriever(model, dense.load_tokenizer(ret, pre), prompts, EncodeSettings(token_budget=512,
                         max_batch_size=8), SearchSettings(), (state.process_index, state.num_processes))
from pathlib import Path
b = r.index_build(Path(toy))
path = ArtifactStore(store_dir).build_collective("index", "index-x", b.fill, prepare=b.prepare, finish=b.finish)
with open(f"{out}.{state.process_index}", "w") as f:
    json.dump({"encoded": counted[0], "path": str(path)}, f)
"""


@pytest.mark.slow
def test_sharded_encoding_fills_every_row(tmp_path, tiny_llama, llama, toy_dir):
    """Two real processes (torchrun, gloo): alternate batches each, every passage once, same rows."""
    import json
    import os
    import subprocess
    import sys

    model, tok = llama
    single = _index(DenseRetriever(model, tok, PROMPTS, ENCODE, SearchSettings()), toy_dir, tmp_path / "one")
    script = tmp_path / "ddp_encode.py"
    script.write_text(DDP_SCRIPT)
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tiny_llama.pretrained), str(tiny_llama.retriever), str(tmp_path / "two"), str(toy_dir),
         str(tmp_path / "rank")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank.{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["encoded"] > 0 and ranks[1]["encoded"] > 0
    assert ranks[0]["encoded"] + ranks[1]["encoded"] == 240  # each passage exactly once
    two = CorpusEmbeddings.open(ranks[0]["path"])
    assert two.ids == single.ids
    np.testing.assert_array_equal(np.asarray(two.matrix), np.asarray(single.matrix))
