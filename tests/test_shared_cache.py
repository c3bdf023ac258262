"""A cache a lab can share: every product bound to its key and inputs, records written once and verified,
locks that survive skewed clocks and containers that share a hostname.

Store-level cases are fast; the ones that run a tiny cell, or wait on a lock's heartbeat, are ``slow``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from test_pipeline import FAST, REPO, make_data_dir

from readaptir import fs
from readaptir.config import CellConfig
from readaptir.fs import HOST
from readaptir.grid.cell import run_cell
from readaptir.grid.record import CellCoords, CellRecord
from readaptir.models.hub import resolve_models
from readaptir.report.results import Selection, load_results
from readaptir.store import locks
from readaptir.store.artifacts import ArtifactStore
from readaptir.store.identity import InputChanged, content_identity, watched_inputs
from readaptir.store.locks import BuildLock


def _dead_pid() -> int:
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(out.stdout)


# ------------------------------------------------------------------------------- products bound to keys
def test_a_product_copied_under_another_key_is_rebuilt(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    store.build("thing", "thing-a", lambda tmp: (tmp / "v").write_text("made for a"))
    shutil.copytree(store.path("thing-a"), store.path("thing-b"))  # intact files, .done of another key
    fresh = ArtifactStore(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert not fresh.valid("thing-b")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "thing-b" in lines[0] and "belongs to thing-a" in lines[0]
    fresh.build("thing", "thing-b", lambda tmp: (tmp / "v").write_text("made for b"))
    assert (fresh.path("thing-b") / "v").read_text() == "made for b"
    assert fresh.record("thing-b")["key"] == "thing-b" and fresh.valid("thing-b")
    assert fresh.valid("thing-a")  # the original is untouched


# ----------------------------------------------------------------------- inputs checked before publish
@pytest.mark.parametrize("restore", [False, True])
def test_an_input_rewritten_before_publish_publishes_nothing(tmp_path, restore):
    corpus = tmp_path / "data" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text('{"_id": "d1", "text": "one"}\n')
    with watched_inputs() as seen:
        content_identity(corpus)
    store = ArtifactStore(tmp_path / "cache", inputs=seen)

    def build(tmp: Path) -> None:
        original = corpus.read_bytes()
        corpus.write_text('{"_id": "d1", "text": "other text"}\n')
        (tmp / "tokens").write_text(corpus.read_text())
        if restore:  # put back afterwards: the product was still made from the other text
            time.sleep(0.01)
            corpus.write_bytes(original)

    with pytest.raises(InputChanged) as e:
        store.build("tokens", "tokens-k", build)
    msg = str(e.value)
    assert "\n" not in msg and f"{corpus} changed while this cell ran" in msg
    assert ("contents are back" in msg) == restore
    assert not store.path("tokens-k").exists() and list(store.path("tokens-k").parent.iterdir()) == []


def test_unchanged_inputs_are_checked_by_a_stat(tmp_path, monkeypatch):
    from readaptir.store import identity

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("x\n")
    with watched_inputs() as seen:
        content_identity(corpus)
    monkeypatch.setattr(identity, "_hash_contents", lambda *a: pytest.fail("an unchanged input was hashed"))
    store = ArtifactStore(tmp_path / "cache", inputs=seen)
    store.build("thing", "thing-i", lambda tmp: (tmp / "v").write_text("ok"))
    assert store.valid("thing-i")


# ---------------------------------------------------------------------------- stored results, verified
def _record(base: float = 0.5) -> CellRecord:
    coords = CellCoords(
        model="m", dataset="scifact", adapter="in-domain", ablation="both", alpha=0.5, beta=1.0
    )
    rec = CellRecord(cell=coords, base={"NDCG@10": base}, readapted={"NDCG@10": base + 0.1})
    rec.delta = {"NDCG@10": 0.1}
    return rec


def test_an_edited_stored_record_is_skipped_naming_it(tmp_path, caplog):
    root = tmp_path / "results"
    good, edited = (root / "m" / "scifact" / n / "result-x.json" for n in ("a", "b"))
    _record().write(once=good)
    _record().write(once=edited)
    assert len(load_results(root)) == 1  # the same cell twice: one index entry, both intact
    raw = json.loads(edited.read_text())
    raw["readapted"]["NDCG@10"] = 0.99  # a hand edit
    edited.write_text(json.dumps(raw, indent=2))
    with caplog.at_level(logging.WARNING):
        results = load_results(root)
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1 and str(edited) in skipped[0] and "digest" in skipped[0]
    shown = results.get("m", "scifact", "in-domain", "both", Selection())
    assert shown is not None and shown.path == str(good)


def test_a_stored_record_is_written_once(tmp_path):
    path = tmp_path / "results" / "r.json"
    _record(0.5).write(once=path)
    first = path.read_bytes()
    _record(0.4).write(tmp_path / "job.json", once=path)
    assert (
        path.read_bytes() == first
        and json.loads((tmp_path / "job.json").read_text())["base"]["NDCG@10"] == 0.4
    )
    raw = json.loads(first)
    raw["base"]["NDCG@10"] = 0.7
    path.write_text(json.dumps(raw))  # damaged: the next run replaces it
    _record(0.4).write(once=path)
    assert json.loads(path.read_text())["base"]["NDCG@10"] == 0.4


# ------------------------------------------------------------------------------------------------ locks
@pytest.mark.slow
def test_a_lock_dated_in_the_future_goes_stale_on_the_waiters_clock(tmp_path):
    path = tmp_path / "locks" / "k.lock"
    path.parent.mkdir()
    path.write_text(json.dumps({"host": "elsewhere", "ns": "0badc0de", "pid": 1, "token": "t", "started": 0}))
    ahead = time.time() + 3600  # written by a node whose clock runs an hour ahead, then it died
    os.utime(path, (ahead, ahead))
    assert not BuildLock(path, stale_s=0.3, on_busy="exit").acquire()  # first seen now: not judged yet
    time.sleep(0.5)  # no heartbeat meanwhile, by this waiter's monotonic clock
    lock = BuildLock(path, stale_s=0.3, on_busy="exit")
    assert lock.acquire() and lock.owned()
    lock.release()
    assert list(path.parent.iterdir()) == []


@pytest.mark.slow
def test_same_hostname_and_pid_in_another_container_is_not_broken(tmp_path, monkeypatch):
    """Two containers with one hostname and separate PID namespaces: the other's pid means nothing here."""
    dead = _dead_pid()
    real_getpid, real_ns = os.getpid, fs.NAMESPACE
    monkeypatch.setattr(os, "getpid", lambda: dead)  # the other container's job, as our filesystem sees it
    monkeypatch.setattr(fs, "NAMESPACE", "0badc0de")
    monkeypatch.setattr(locks, "NAMESPACE", "0badc0de")
    theirs = BuildLock(tmp_path / "locks" / "thing-k.lock", stale_s=0.3)
    assert theirs.acquire()
    their_tmp = fs.temp_sibling(tmp_path / "thing" / "thing-k")
    their_tmp.mkdir(parents=True)
    monkeypatch.setattr(os, "getpid", real_getpid)
    monkeypatch.setattr(fs, "NAMESPACE", real_ns)
    monkeypatch.setattr(locks, "NAMESPACE", real_ns)
    try:
        info = json.loads(theirs.path.read_text())
        assert info["host"] == HOST and info["pid"] == dead
        store = ArtifactStore(tmp_path, lock_stale_s=0.3, on_busy="exit")
        assert store.remove_leftovers() == [] and their_tmp.is_dir()
        for _ in range(10):  # 1.5 s, five times stale_s: the heartbeat keeps it live
            assert not BuildLock(theirs.path, stale_s=0.3, on_busy="exit").acquire()
            time.sleep(0.15)
        assert theirs.owned() and their_tmp.is_dir()
    finally:
        theirs.release()
    assert BuildLock(theirs.path, stale_s=0.3, on_busy="exit").acquire()


# ------------------------------------------------------------------------------------- whole cells
@pytest.fixture()
def cell(tmp_path, monkeypatch):
    """``cell(*overrides)`` → a validated CellConfig on a private copy of the data (tests rewrite it)."""
    data = make_data_dir(tmp_path / "beir")
    monkeypatch.setenv("READAPTIR_DATA", str(data))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):

        def make(*overrides: str) -> CellConfig:
            cfg = compose(config_name="config", overrides=["dataset=scifact", f"paths.cache_dir={tmp_path / 'cache'}",
                                                           f"paths.results_dir={tmp_path / 'results'}", *FAST, *overrides])  # fmt: skip
            spec = CellConfig.from_hydra(cfg)
            resolve_models(spec.model)
            return spec

        make.data = data
        yield make
    GlobalHydra.instance().clear()


@pytest.mark.slow
def test_a_corpus_rewritten_mid_cell_fails_it_and_publishes_nothing(tmp_path, cell, monkeypatch):
    from readaptir.train import tokens

    cfg = cell()
    corpus = cell.data / "scifact" / "corpus.jsonl"
    real = tokens.ensure_token_cache

    def rewrite_then_tokenize(*a, **k):  # after the keys are computed, before the token cache is built
        lines = corpus.read_text().splitlines()
        corpus.write_text("\n".join(lines[::-1]) + "\n")
        return real(*a, **k)

    monkeypatch.setattr(tokens, "ensure_token_cache", rewrite_then_tokenize)
    with pytest.raises(InputChanged):
        run_cell(cfg, tmp_path / "job")
    rec = json.loads((tmp_path / "job" / "results.json").read_text())
    assert rec["status"] == "failed" and rec["reason"].startswith(f"{corpus} changed while this cell ran")
    store = ArtifactStore(tmp_path / "cache")
    assert not store.is_done(rec["artifacts"]["tokens"]) and not store.is_done(rec["artifacts"]["adapter"])
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_rerun_with_another_corpus_size_does_not_rewrite_the_record(tmp_path, cell):
    first = run_cell(cell(), tmp_path / "j1")
    stored = next((tmp_path / "results").rglob("*.json"))
    before = stored.read_bytes()
    assert first.corpus_size == 120 == json.loads(before)["corpus_size"]  # counted from the data
    second = run_cell(cell("dataset.corpus_size=1"), tmp_path / "j2")
    assert second.corpus_size == 120 and stored.read_bytes() == before
    assert [p for p in (tmp_path / "results").rglob("*.json")] == [stored]
