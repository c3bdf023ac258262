"""Nothing non-finite is published: adapters, readapted weights, embeddings and run scores are checked."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from readaptir.data.beir import DataError
from readaptir.errors import NonFiniteError
from readaptir.retrieval.embeddings import CorpusEmbeddings, corpus_index_build, write_embeddings
from readaptir.retrieval.runs import read_run, write_run
from readaptir.store.artifacts import ArtifactStore
from readaptir.store.finite import check_finite_safetensors, check_finite_tensors


def test_nan_adapter_weights_are_refused(tmp_path):
    good = {"a.lora_A.weight": torch.ones(2, 3), "a.magnitude": torch.ones(3)}
    save_file(good, tmp_path / "ok.safetensors")
    check_finite_safetensors(tmp_path / "ok.safetensors")
    bad = {**good, "b.lora_B.weight": torch.tensor([[0.0, float("nan")]])}
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(NonFiniteError, match=r"bad\.safetensors: tensor b\.lora_B\.weight holds NaN"):
        check_finite_safetensors(tmp_path / "bad.safetensors")
    with pytest.raises(NonFiniteError, match="tensor w and 1 more"):
        check_finite_tensors({"w": torch.tensor([math.inf]), "v": torch.tensor([-math.inf])}, "readapted")


def test_nan_embeddings_are_never_published(tmp_path):
    vecs = np.ones((4, 3), dtype=np.float32)
    write_embeddings(tmp_path / "ok", ["a", "b", "c", "d"], vecs)
    vecs[2, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"1 of 4 embeddings hold NaN .* doc 'c', row 2"):
        write_embeddings(tmp_path / "bad", ["a", "b", "c", "d"], vecs)


def test_nan_embeddings_abort_an_index_build(tmp_path, toy_dir):
    def encode(rows, write, bar):
        vecs = np.full((len(rows), 4), np.nan if len(rows) else 0.0, dtype=np.float32)
        write(np.arange(len(rows)), vecs)

    build = corpus_index_build(toy_dir, "{title} {text}", 4, list, encode)
    store = ArtifactStore(tmp_path)
    with pytest.raises(NonFiniteError, match="240 of 240 embeddings"):
        store.build_collective("index", "index-nan", build.fill, prepare=build.prepare, finish=build.finish)
    assert not store.is_done("index-nan") and list((tmp_path / "index").iterdir()) == []


def test_non_finite_scores_are_refused(tmp_path):
    write_run(tmp_path / "ok.trec", {"q": {"d1": 0.5, "d2": 0.25}})
    assert read_run(tmp_path / "ok.trec") == {"q": {"d1": 0.5, "d2": 0.25}}
    with pytest.raises(NonFiniteError, match="score nan for doc 'd2' of query 'q'"):
        write_run(tmp_path / "bad.trec", {"q": {"d1": 0.5, "d2": float("nan")}})
    assert not (tmp_path / "bad.trec").exists()
    (tmp_path / "nan.trec").write_text("q Q0 d1 1 nan x\n")
    with pytest.raises(DataError, match=r"nan\.trec:1: score 'nan' is not a finite number"):
        read_run(tmp_path / "nan.trec")


def test_finite_embeddings_open_again(tmp_path):
    emb = write_embeddings(tmp_path / "e", ["a", "b"], np.eye(2, dtype=np.float32))
    again = CorpusEmbeddings.open(tmp_path / "e")
    assert again.ids == ["a", "b"] and np.array_equal(np.asarray(again.matrix), np.asarray(emb.matrix))
