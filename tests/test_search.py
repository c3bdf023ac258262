"""FAISS and streaming search agree with brute force, and self-hits are removed."""

from __future__ import annotations

import numpy as np
import pytest

from readaptir.retrieval.embeddings import CorpusEmbeddings, write_embeddings
from readaptir.retrieval.search import auto_backend, search


def _corpus(tmp_path, n=97, dim=16, seed=0, ids=None) -> tuple[CorpusEmbeddings, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, dim)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    m = m.astype(np.float16)
    ids = ids or [f"d{i}" for i in range(n)]
    return write_embeddings(tmp_path, ids, m), m.astype(np.float32)


@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_faiss_and_stream_agree_with_brute_force(tmp_path, chunk_size):
    corpus, m = _corpus(tmp_path)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    qids = [f"q{i}" for i in range(5)]
    runs = {
        b: search(qids, q, corpus, top_k=10, backend=b, chunk_size=chunk_size) for b in ("faiss", "stream")
    }
    for i, qid in enumerate(qids):
        expect = [f"d{j}" for j in np.argsort(-(m @ q[i]))[:10]]
        for backend, run in runs.items():
            got = sorted(run[qid], key=lambda d: -run[qid][d])
            assert got == expect, backend
            np.testing.assert_allclose(
                [run[qid][d] for d in got], np.sort(m @ q[i])[::-1][:10], rtol=1e-5, atol=1e-5
            )


@pytest.mark.parametrize("backend", ["faiss", "stream"])
def test_self_hits_removed(tmp_path, backend):
    corpus, m = _corpus(tmp_path, n=20)
    # Queries equal to documents d3 and d7 (and named like them): their best hit is themselves.
    run = search(["d3", "d7", "x"], m[[3, 7, 3]], corpus, top_k=5, backend=backend, chunk_size=6)
    assert "d3" not in run["d3"] and "d7" not in run["d7"]
    assert len(run["d3"]) == len(run["d7"]) == 5  # still top_k documents after the removal
    assert next(iter(sorted(run["x"], key=lambda d: -run["x"][d]))) == "d3"  # other ids keep it


def test_top_k_larger_than_corpus(tmp_path):
    corpus, m = _corpus(tmp_path, n=4)
    for backend in ("faiss", "stream"):
        run = search(["d0"], m[:1], corpus, top_k=1000, backend=backend)
        assert set(run["d0"]) == {"d1", "d2", "d3"}


def test_bad_backend(tmp_path):
    corpus, m = _corpus(tmp_path, n=4)
    with pytest.raises(ValueError, match="backend"):
        search(["q"], m[:1], corpus, backend="annoy")


def test_auto_backend_uses_faiss_only_on_a_gpu_that_holds_twice_the_float32_corpus():
    gib = 2**30
    assert auto_backend((5183, 4096), 32, gpu_free_bytes=80 * gib) == "faiss"  # SciFact: 81 MiB float32
    assert auto_backend((5183, 4096), 32, gpu_free_bytes=0) == "stream"  # host: streaming is faster
    assert auto_backend((8_841_823, 4096), 32, gpu_free_bytes=80 * gib) == "stream"  # MS-MARCO: 135 GiB
    # SmolLM2 on MS-MARCO: 20.3 GiB as float32, ≈ 41 GiB while FAISS grows it: over faiss_max_gb=32.
    assert auto_backend((8_841_823, 576), 32, gpu_free_bytes=80 * gib) == "stream"
    assert auto_backend((8_841_823, 576), 64, gpu_free_bytes=30 * gib) == "stream"  # over free memory
    assert auto_backend((8_841_823, 576), 64, gpu_free_bytes=60 * gib) == "faiss"


def test_without_faiss_auto_streams_and_faiss_is_a_clear_error(tmp_path, monkeypatch):
    """FAISS is an extra: a core install searches by streaming, and asking for faiss names the fix."""
    import sys

    from readaptir.errors import UserError

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss → ImportError
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "faiss" else object())
    assert auto_backend((5183, 4096), 32) == "stream"
    corpus, m = _corpus(tmp_path)
    qids = [f"q{i}" for i in range(4)]
    assert search(qids, m[:4], corpus, top_k=5, backend="auto")  # streams
    with pytest.raises(UserError, match=r"pip install 'readaptir\[cpu\]'"):
        search(qids, m[:4], corpus, top_k=5, backend="faiss")
