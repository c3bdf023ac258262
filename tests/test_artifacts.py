"""Content-addressed store: keys, atomic builds, reuse, locking."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from omegaconf import OmegaConf

from readaptir.fs import atomic_write_json
from readaptir.store.artifacts import ArtifactStore, make_key


def test_keys_are_canonical_and_sensitive():
    k = make_key("adapter", {"r": 32, "targets": ["q_proj"], "lr": 2e-4})
    assert k.startswith("adapter-") and len(k) == len("adapter-") + 16
    assert k == make_key("adapter", {"lr": 0.0002, "targets": ["q_proj"], "r": 32})  # order, float spelling
    assert k == make_key("adapter", OmegaConf.create({"r": 32, "targets": ["q_proj"], "lr": 2e-4}))
    assert k != make_key("adapter", {"r": 16, "targets": ["q_proj"], "lr": 2e-4})
    assert k != make_key("adapter", {"r": 32, "targets": ["q_proj"], "lr": 2e-4}, parents=["tokens-1"])
    assert k != make_key("embeddings", {"r": 32, "targets": ["q_proj"], "lr": 2e-4})


def test_build_is_atomic_and_reused(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def fn(tmp):
        calls.append(tmp)
        (tmp / "x.txt").write_text("hello")

    p1 = store.build("thing", "thing-1", fn)
    p2 = store.build("thing", "thing-1", fn)
    assert p1 == p2 and (p1 / "x.txt").read_text() == "hello" and len(calls) == 1
    assert [e["reused"] for e in store.events] == [False, True]


def test_failed_build_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def boom(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.build("thing", "thing-2", boom)
    assert not store.is_done("thing-2") and not store.path("thing-2").exists()
    assert list(store.path("thing-2").parent.iterdir()) == []


def _slow_build(root, out):
    store = ArtifactStore(root)

    def fn(tmp):
        time.sleep(0.5)
        (tmp / "v").write_text("built")

    store.build("thing", "thing-3", fn)
    out.put(store.events[-1]["reused"])


def test_two_jobs_never_build_twice(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_slow_build, args=(tmp_path, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted([q.get(), q.get()]) == [False, True]


def test_atomic_write_json(tmp_path):
    atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert (tmp_path / "a" / "r.json").read_text().strip().startswith("{")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]
