"""Hostile-cache cases found by review: records of the right JSON with the wrong shape, dangling links in and
in place of products, memos with a flipped digit, a damaged tiny model. Each is rebuilt or recomputed, never
a failed cell, never a reused damaged input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from readaptir.store.artifacts import ArtifactStore
from readaptir.store.identity import _REMEMBERED, content_identity, count_lines


def _built(tmp_path: Path) -> tuple[ArtifactStore, str]:
    store = ArtifactStore(tmp_path / "cache")
    key = "adapter-0123456789abcdef"
    store.build("adapter", key, lambda tmp: (tmp / "w.bin").write_bytes(b"good" * 100))
    return store, key


def _rebuilt(store: ArtifactStore, key: str) -> bytes:
    fresh = ArtifactStore(store.root)  # another process: nothing remembered
    assert not fresh.valid(key)
    fresh.build("adapter", key, lambda tmp: (tmp / "w.bin").write_bytes(b"good" * 100))
    assert fresh.valid(key) and ArtifactStore(store.root).valid(key)
    return (fresh.path(key) / "w.bin").read_bytes()


@pytest.mark.parametrize(
    "field, value",
    [("manifest", "x"), ("manifest", {"version": 1, "files": {"w.bin": 5}}), ("parents", {"adapter-0123456789abcdef": "x"}),
     ("parents", "x")],
)  # fmt: skip
def test_a_done_record_of_the_wrong_shape_is_rebuilt(tmp_path, field, value):
    store, key = _built(tmp_path)
    done = store.path(key) / ".done"
    record = json.loads(done.read_text())
    record[field] = value
    done.write_text(json.dumps(record))
    assert _rebuilt(store, key) == b"good" * 100


def test_a_dangling_link_in_a_product_is_rebuilt(tmp_path):
    store, key = _built(tmp_path)
    f = store.path(key) / "w.bin"
    f.unlink()
    f.symlink_to(tmp_path / "nowhere")
    assert _rebuilt(store, key) == b"good" * 100


def test_a_dangling_link_in_place_of_a_product_is_replaced(tmp_path):
    store, key = _built(tmp_path)
    final = store.path(key)
    for p in final.iterdir():
        p.unlink()
    final.rmdir()
    final.symlink_to(tmp_path / "nowhere")
    assert _rebuilt(store, key) == b"good" * 100
    assert not final.is_symlink()


def test_an_identity_memo_with_a_flipped_digit_is_not_trusted(tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"_id": "a", "text": "x"}\n' * 5)
    memo = tmp_path / "identity"
    want = content_identity(data, memo)
    assert count_lines(data, memo) == 5
    for m in memo.glob("*.json"):  # a digit flipped on disk, the JSON still valid
        text = m.read_text()
        m.write_text(
            text.replace('"lines": 5', '"lines": 4').replace(
                want[-4:], "0000" if want[-4:] != "0000" else "1111"
            )
        )
    _REMEMBERED.clear()
    assert content_identity(data, memo) == want
    assert count_lines(data, memo) == 5


def test_an_identity_memo_of_the_wrong_type_is_not_trusted(tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"_id": "a", "text": "x"}\n')
    memo = tmp_path / "identity"
    want = content_identity(data, memo)
    for m in memo.glob("*.json"):
        m.write_text(m.read_text().replace(f'"{want}"', "5"))
    _REMEMBERED.clear()
    assert content_identity(data, memo) == want
    assert count_lines(data, memo) == 1


@pytest.mark.slow
def test_a_damaged_tiny_model_is_rebuilt_not_used(tmp_path):
    from readaptir.models.tiny import ensure_tiny

    tiny = ensure_tiny("llama", tmp_path / "tiny")
    shard = sorted(tiny.pretrained.glob("*.safetensors"))[-1]
    good = shard.read_bytes()
    data = bytearray(good)
    for i in range(len(data) - 200, len(data) - 100):  # tensor bytes, the header intact
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))
    ensure_tiny("llama", tmp_path / "tiny")
    assert shard.read_bytes() == good


@pytest.mark.parametrize(
    "info", [{"started": "yesterday"}, {"started": 1e30}, {"pid": "abc"}, {"pid": None}, {"pid": -1}]
)
def test_a_lock_file_with_fields_of_the_wrong_type_is_waited_on_not_a_crash(tmp_path, info):
    from readaptir.fs import NAMESPACE
    from readaptir.store.locks import BuildLock

    path = tmp_path / "locks" / "x.lock"
    path.parent.mkdir()
    path.write_text(json.dumps({"host": "h", "ns": NAMESPACE, "pid": 1, "token": "t", **info}))
    lock = BuildLock(path, stale_s=600, on_busy="exit")
    assert not lock.acquire()  # alive: its heartbeat has not been seen unchanged for 600 s
    assert lock.holder.startswith("h:")
    assert path.exists()


def test_a_record_copied_under_another_result_key_does_not_block_this_keys_record(tmp_path):
    from readaptir.grid.record import _write_once, record_digest

    def text(key: str, ndcg: float) -> str:
        raw = {"artifacts": {"result": key}, "readapted": {"NDCG@10": ndcg}}
        return json.dumps({**raw, "digest": record_digest(raw)})

    path = tmp_path / "result-bbbb.json"
    path.write_text(text("result-aaaa", 0.5))  # another cell's intact record, copied here
    _write_once(path, text("result-bbbb", 0.3))
    assert json.loads(path.read_text())["artifacts"]["result"] == "result-bbbb"
    _write_once(path, text("result-bbbb", 0.9))  # a rerun with other non-key settings: kept
    assert json.loads(path.read_text())["readapted"]["NDCG@10"] == 0.3
