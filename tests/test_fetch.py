"""Fetching a missing dataset (readaptir.data.fetch) with no network: the Hub's and the zip server's
answers are served from the toy dataset by fakes of huggingface_hub.snapshot_download and httpx.stream."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from readaptir.config import CellConfig
from readaptir.data import fetch
from readaptir.data.beir import DataError, ensure_dataset, iter_corpus, load_qrels, load_queries
from readaptir.grid.record import variant_settings

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "readaptir" / "resources" / "toy"
ZIP_URL = fetch.BEIR_ZIP.format(name="scifact")


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """The tests run with HF_HUB_OFFLINE=1; a fetch test starts online (fakes stand in for the network)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def _blob(cache: Path, snapshot: Path, name: str, data: bytes) -> None:
    """A file of a Hub cache snapshot: a link to ``blobs/<sha256>``, as huggingface_hub stores LFS files."""
    blob = cache / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / name).symlink_to(blob)


class FakeHub:
    """``snapshot_download`` over BeIR/scifact (the toy files, gzipped) and BeIR/scifact-qrels."""

    def __init__(self, root: Path):
        self.calls: list[str] = []
        self.cached = False  # what an offline snapshot_download (local_files_only) finds
        self.repos = {"BeIR/scifact": root / "snap" / "docs", "BeIR/scifact-qrels": root / "snap" / "qrels"}
        for name in ("corpus.jsonl", "queries.jsonl"):
            raw = (TOY / name).read_bytes()
            _blob(root, self.repos["BeIR/scifact"], f"{name}.gz", gzip.compress(raw, mtime=0))
        for split in ("test", "train"):
            _blob(
                root,
                self.repos["BeIR/scifact-qrels"],
                f"{split}.tsv",
                (TOY / "qrels" / f"{split}.tsv").read_bytes(),
            )

    def __call__(self, repo_id, *, repo_type=None, allow_patterns=None, local_files_only=False, **_):
        assert repo_type == "dataset"
        self.calls.append(repo_id)
        if local_files_only and not self.cached:
            raise OSError(f"{repo_id} is not in the cache and outgoing traffic has been disabled")
        if repo_id not in self.repos:
            raise OSError(f"404 Client Error: {repo_id} not found")
        return str(self.repos[repo_id])


def _toy_zip(name: str = "scifact") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(TOY.rglob("*")):
            if p.is_file():
                z.write(p, f"{name}/{p.relative_to(TOY)}")
    return buf.getvalue()


class FakeServer:
    """``httpx.stream`` serving one file, honouring ``Range``; ``cut`` bytes into the first answer the
    connection drops."""

    def __init__(self, body: bytes, cut: int | None = None):
        self.body, self.cut, self.ranges = body, cut, []

    @contextmanager
    def __call__(self, method, url, headers=None, **_):
        start = (
            int(headers["Range"].removeprefix("bytes=").rstrip("-")) if headers and "Range" in headers else 0
        )
        self.ranges.append(start)
        body, cut = self.body[start:], self.cut
        self.cut = None

        class Response:
            status_code = 206 if start else 200
            headers = {"Content-Length": str(len(body))}

            def raise_for_status(self):
                pass

            def iter_bytes(self, n):
                yield body[:cut] if cut is not None else body
                if cut is not None:
                    raise httpx.ReadError("connection reset by peer")

        yield Response()


def _no_network(*a, **k):
    raise AssertionError("a network fetch was attempted")


def _assert_is_toy(root: Path) -> None:
    assert [p.doc_id for p in iter_corpus(root)] == [p.doc_id for p in iter_corpus(TOY)]
    assert list(iter_corpus(root)) == list(iter_corpus(TOY))
    assert load_queries(root) == load_queries(TOY)
    for split in ("test", "train"):
        assert load_qrels(root, split) == load_qrels(TOY, split)


def _leftovers(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir()) if data.exists() else []


def test_hub_copy_becomes_the_beir_layout(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hf")
    monkeypatch.setattr(fetch, "snapshot_download", hub)
    monkeypatch.setattr(fetch.httpx, "stream", _no_network)
    root = ensure_dataset("scifact", tmp_path / "data", ZIP_URL)  # auto: the Hub first
    assert hub.calls == ["BeIR/scifact", "BeIR/scifact-qrels"]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "corpus.jsonl", "qrels/test.tsv", "qrels/train.tsv", "queries.jsonl"]  # fmt: skip
    _assert_is_toy(root)
    assert _leftovers(tmp_path / "data") == ["scifact"]


@pytest.mark.parametrize("source", ["auto", "hub", "zip", "local"])
def test_a_local_folder_wins_without_any_network_call(tmp_path, monkeypatch, source):
    shutil.copytree(TOY, tmp_path / "data" / "scifact")
    monkeypatch.setattr(fetch, "snapshot_download", _no_network)
    monkeypatch.setattr(fetch.httpx, "stream", _no_network)
    root = ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source=source)
    assert root == (tmp_path / "data" / "scifact").resolve()


def test_zip_is_md5_checked_and_unpacked(tmp_path, monkeypatch):
    body = _toy_zip()
    monkeypatch.setitem(fetch.ZIP_MD5, "scifact", hashlib.md5(body).hexdigest())
    monkeypatch.setattr(fetch, "snapshot_download", _no_network)
    monkeypatch.setattr(fetch.httpx, "stream", FakeServer(body))
    root = ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source="zip")
    _assert_is_toy(root)
    assert _leftovers(tmp_path / "data") == ["scifact"]  # the download itself is gone too


def test_zip_checksum_mismatch_is_refused_leaving_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.httpx, "stream", FakeServer(_toy_zip()))  # not BeIR's published scifact.zip
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source="zip")
    msg = str(e.value)
    assert "checksum mismatch" in msg and fetch.ZIP_MD5["scifact"] in msg and "\n" not in msg
    assert _leftovers(tmp_path / "data") == []


def test_hub_checksum_mismatch_is_refused_leaving_nothing(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hf")
    blob = (Path(hub.repos["BeIR/scifact"]) / "corpus.jsonl.gz").resolve()
    blob.write_bytes(gzip.compress(b'{"_id": "x", "text": "tampered"}\n'))
    monkeypatch.setattr(fetch, "snapshot_download", hub)
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source="hub")
    msg = str(e.value)
    assert "checksum mismatch" in msg and "corpus.jsonl.gz" in msg and "\n" not in msg
    assert _leftovers(tmp_path / "data") == [] and not blob.exists()  # the next run downloads it anew


def test_interrupted_zip_download_leaves_no_dataset_and_resumes(tmp_path, monkeypatch):
    body = _toy_zip()
    server = FakeServer(body, cut=len(body) // 2)
    monkeypatch.setitem(fetch.ZIP_MD5, "scifact", hashlib.md5(body).hexdigest())
    monkeypatch.setattr(fetch.httpx, "stream", server)
    data = tmp_path / "data"
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", data, ZIP_URL, source="zip")
    assert "run again to resume" in str(e.value) and "\n" not in str(e.value)
    assert _leftovers(data) == [".scifact.zip.part"]  # the partial download only, no dataset folder
    root = ensure_dataset("scifact", data, ZIP_URL, source="zip")
    assert server.ranges == [0, len(body) // 2]  # the second request asked only for the rest
    _assert_is_toy(root)
    assert _leftovers(data) == ["scifact"]


def test_broken_hub_file_leaves_no_half_written_dataset(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hf")
    link = Path(hub.repos["BeIR/scifact"]) / "queries.jsonl.gz"
    link.unlink()
    link.write_bytes(gzip.compress((TOY / "queries.jsonl").read_bytes())[:200])  # truncated gzip
    monkeypatch.setattr(fetch, "snapshot_download", hub)
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source="hub")
    assert "queries.jsonl.gz" in str(e.value)
    assert _leftovers(tmp_path / "data") == []  # corpus.jsonl was unpacked into a temp folder, now gone


def test_auto_falls_back_to_the_zip_when_the_hub_fails(tmp_path, monkeypatch):
    body = _toy_zip()
    monkeypatch.setitem(fetch.ZIP_MD5, "scifact", hashlib.md5(body).hexdigest())
    hub = FakeHub(tmp_path / "hf")
    hub.repos.pop("BeIR/scifact")
    monkeypatch.setattr(fetch, "snapshot_download", hub)
    monkeypatch.setattr(fetch.httpx, "stream", FakeServer(body))
    _assert_is_toy(ensure_dataset("scifact", tmp_path / "data", ZIP_URL))
    assert hub.calls == ["BeIR/scifact"]


def test_offline_is_one_line_saying_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub(tmp_path / "hf")  # nothing cached
    monkeypatch.setattr(fetch, "snapshot_download", hub)
    monkeypatch.setattr(fetch.httpx, "stream", _no_network)
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", tmp_path / "data", ZIP_URL)
    msg, root = str(e.value), (tmp_path / "data" / "scifact").resolve()
    assert "\n" not in msg and "HF_HUB_OFFLINE=1" in msg and ZIP_URL in msg
    assert f"{root}/corpus.jsonl" in msg and "BeIR/scifact-qrels" in msg
    assert _leftovers(tmp_path / "data") == []


def test_offline_uses_what_the_hugging_face_cache_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub(tmp_path / "hf")
    hub.cached = True
    monkeypatch.setattr(fetch, "snapshot_download", hub)
    monkeypatch.setattr(fetch.httpx, "stream", _no_network)
    _assert_is_toy(ensure_dataset("scifact", tmp_path / "data", ZIP_URL))


def test_a_dataset_fetched_by_another_job_while_waiting_is_not_fetched_again(tmp_path, monkeypatch):
    @contextmanager
    def other_job_finishes_first(folder):
        shutil.copytree(TOY, folder / "scifact")  # what the job holding the lock wrote
        yield

    monkeypatch.setattr(fetch, "fetch_lock", other_job_finishes_first)
    monkeypatch.setattr(fetch, "snapshot_download", _no_network)
    monkeypatch.setattr(fetch.httpx, "stream", _no_network)
    _assert_is_toy(ensure_dataset("scifact", tmp_path / "data", ZIP_URL))


def test_fetch_lock_excludes_a_second_holder(tmp_path):
    with fetch.fetch_lock(tmp_path):
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind


def test_source_local_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "snapshot_download", _no_network)
    monkeypatch.setattr(fetch.httpx, "stream", _no_network)
    with pytest.raises(DataError, match="dataset.source=local"):
        ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source="local")


def test_source_is_a_config_key_outside_result_keys():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfgs = [CellConfig.from_hydra(compose(config_name="config", overrides=[f"dataset.source={s}"]))
                for s in ("auto", "hub", "zip", "local")]  # fmt: skip
    GlobalHydra.instance().clear()
    assert [c.dataset.source for c in cfgs] == ["auto", "hub", "zip", "local"]
    assert all(variant_settings(c) == variant_settings(cfgs[0]) for c in cfgs)
    assert "dataset.source" not in variant_settings(cfgs[0])
