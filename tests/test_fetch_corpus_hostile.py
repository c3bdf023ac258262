"""Hostile inputs to the dataset fetch (readaptir.data.fetch) and the corpus reader (readaptir.data.corpus):
odd zips, odd servers, broken Hub files, odd folders and tables, odd corpus_fields, an odd ``out=``. Each
must give the right result or one ``readaptir: error:`` line, with nothing half-written left behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from readaptir.config import ConfigError
from readaptir.data import fetch
from readaptir.data.beir import DataError, ensure_dataset, iter_corpus
from readaptir.data.corpus import CorpusFields, write_corpus
from readaptir.errors import UserError
from readaptir.grid.adapt import AdaptSettings, check_out, copy_out
from tests.test_fetch import (
    TOY,
    ZIP_URL,
    FakeHub,
    FakeServer,
    _assert_is_toy,
    _leftovers,
    _no_network,
    _toy_zip,
)


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def _zip(entries: dict[str, bytes], name: str = "scifact") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(TOY.rglob("*")):
            if p.is_file():
                z.write(p, f"{name}/{p.relative_to(TOY)}")
        for arcname, data in entries.items():
            z.writestr(arcname, data)
    return buf.getvalue()


def _serve(monkeypatch, body: bytes, server=None) -> None:
    monkeypatch.setitem(fetch.ZIP_MD5, "scifact", hashlib.md5(body).hexdigest())
    monkeypatch.setattr(fetch, "snapshot_download", _no_network)
    monkeypatch.setattr(fetch.httpx, "stream", server or FakeServer(body))


# --- fetch: zips ---------------------------------------------------------------------------------------


def test_zip_entries_escaping_the_folder_are_kept_inside(tmp_path, monkeypatch):
    body = _zip({"../../escaped.txt": b"x", "/abs/escaped.txt": b"y", "scifact/../../up.txt": b"z"})
    _serve(monkeypatch, body)
    root = ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source="zip")
    _assert_is_toy(root)
    assert _leftovers(tmp_path / "data") == ["scifact"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written beside the data folder


def test_zip_symlink_entry_is_no_link(tmp_path, monkeypatch):
    buf = io.BytesIO(_zip({}))
    with zipfile.ZipFile(buf, "a") as z:
        info = zipfile.ZipInfo("scifact/evil")
        info.external_attr = 0o120777 << 16  # a symlink entry pointing outside
        z.writestr(info, "/etc/passwd")
    _serve(monkeypatch, buf.getvalue())
    root = ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source="zip")
    assert not (root / "evil").is_symlink()


def test_zip_with_another_top_folder_is_refused_and_not_resumed_onto(tmp_path, monkeypatch):
    """A mirror's zip whose top folder is not the dataset's name: refused in one line, and its download is
    not kept as a partial file the next run would append the corrected zip to."""
    url = "https://mirror.example/scifact.zip"
    monkeypatch.setattr(fetch, "snapshot_download", _no_network)
    monkeypatch.setattr(fetch.httpx, "stream", FakeServer(_toy_zip("SciFact-v1")))
    data = tmp_path / "data"
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", data, url, source="zip")
    assert "scifact/corpus.jsonl" in str(e.value) and "\n" not in str(e.value)
    assert _leftovers(data) == []
    server = FakeServer(_toy_zip())  # the mirror is fixed
    monkeypatch.setattr(fetch.httpx, "stream", server)
    _assert_is_toy(ensure_dataset("scifact", data, url, source="zip"))
    assert server.ranges == [0]


def test_a_part_larger_than_the_file_is_refused_then_fetched_anew(tmp_path, monkeypatch):
    body = _toy_zip()

    class Server(FakeServer):
        @contextmanager
        def __call__(self, method, url, headers=None, **kw):
            start = int(headers["Range"][6:-1]) if headers and "Range" in headers else 0
            if start >= len(self.body):
                self.ranges.append(start)

                class Refused:
                    status_code = 416
                    headers = {}

                yield Refused()
                return
            with super().__call__(method, url, headers, **kw) as r:
                yield r

    server = Server(body)
    _serve(monkeypatch, body, server)
    data = tmp_path / "data"
    data.mkdir()
    (data / ".scifact.zip.part").write_bytes(body + b"garbage from another url")
    with pytest.raises(DataError, match="checksum mismatch"):
        ensure_dataset("scifact", data, ZIP_URL, source="zip")
    assert _leftovers(data) == []
    _assert_is_toy(ensure_dataset("scifact", data, ZIP_URL, source="zip"))
    assert server.ranges == [len(body) + 24, 0]


def test_a_server_ignoring_range_restarts_from_scratch(tmp_path, monkeypatch):
    body = _toy_zip()

    class NoRange(FakeServer):
        @contextmanager
        def __call__(self, method, url, headers=None, **kw):
            self.ranges.append(headers.get("Range") if headers else None)
            with super().__call__(method, url, None, **kw) as r:  # answers 200 with the whole file
                yield r

    server = NoRange(body)
    _serve(monkeypatch, body, server)
    data = tmp_path / "data"
    data.mkdir()
    (data / ".scifact.zip.part").write_bytes(body[:100])
    _assert_is_toy(ensure_dataset("scifact", data, ZIP_URL, source="zip"))
    assert server.ranges[0] == "bytes=100-" and _leftovers(data) == ["scifact"]


def test_a_corrupt_zip_from_a_mirror_is_one_line(tmp_path, monkeypatch):
    """A zip whose compressed data is damaged (no md5 is known for a mirror): one line, download deleted."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("scifact/corpus.jsonl", (TOY / "corpus.jsonl").read_bytes() * 20)
    body = bytearray(buf.getvalue())
    for i in range(60, 260):
        body[i] ^= 0x5A
    monkeypatch.setattr(fetch, "snapshot_download", _no_network)
    monkeypatch.setattr(fetch.httpx, "stream", FakeServer(bytes(body)))
    data = tmp_path / "data"
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", data, "https://mirror.example/scifact.zip", source="zip")
    assert "\n" not in str(e.value)
    assert _leftovers(data) == []


# --- fetch: the Hub ------------------------------------------------------------------------------------


def test_a_corrupt_non_lfs_gz_from_the_hub_is_one_line(tmp_path, monkeypatch):
    """A gz file of the snapshot that is no LFS blob (no sha256 to check) with damaged deflate data."""
    hub = FakeHub(tmp_path / "hf")
    link = Path(hub.repos["BeIR/scifact"]) / "corpus.jsonl.gz"
    data = bytearray(gzip.compress((TOY / "corpus.jsonl").read_bytes() * 20, mtime=0))
    for i in range(40, 240):
        data[i] ^= 0x5A
    link.unlink()
    link.write_bytes(bytes(data))
    monkeypatch.setattr(fetch, "snapshot_download", hub)
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source="hub")
    assert "corpus.jsonl.gz" in str(e.value) and "\n" not in str(e.value)
    assert _leftovers(tmp_path / "data") == []


def test_offline_with_a_partial_cache_says_the_cache_lacks_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub(tmp_path / "hf")
    hub.cached = True
    (Path(hub.repos["BeIR/scifact"]) / "queries.jsonl.gz").unlink()  # an interrupted earlier download
    monkeypatch.setattr(fetch, "snapshot_download", hub)
    monkeypatch.setattr(fetch.httpx, "stream", _no_network)
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", tmp_path / "data", ZIP_URL)
    msg = str(e.value)
    assert "\n" not in msg and "queries.jsonl.gz" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "cache" in msg.split("queries.jsonl.gz")[0].split("hub:")[-1]
    assert _leftovers(tmp_path / "data") == []


# --- corpus readers ------------------------------------------------------------------------------------


def test_folder_with_undecodable_text_names_the_file(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ok.txt").write_text("fine")
    (tmp_path / "docs" / "bad.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8"):
        write_corpus(tmp_path / "docs", CorpusFields(), tmp_path / "out")


def test_csv_with_undecodable_bytes_names_the_file(tmp_path):
    (tmp_path / "docs.csv").write_bytes(b"_id,text\na,caf\xe9\n")
    with pytest.raises(DataError, match=r"docs\.csv.*UTF-8"):
        write_corpus(tmp_path / "docs.csv", CorpusFields(), tmp_path / "out")


def test_csv_with_a_bom_and_embedded_newlines(tmp_path):
    (tmp_path / "docs.csv").write_bytes('\ufeff_id,text\na,"two\nlines"\nb,plain\n'.encode())
    write_corpus(tmp_path / "docs.csv", CorpusFields(), tmp_path / "out")
    assert [(p.doc_id, p.text) for p in iter_corpus(tmp_path / "out")] == [
        ("a", "two\nlines"),
        ("b", "plain"),
    ]


def test_csv_with_a_long_field_is_read(tmp_path):
    long = "word " * 40_000  # 200,000 characters: longer than the csv module's default field limit
    (tmp_path / "docs.csv").write_text(f'_id,text\na,"{long}"\n')
    write_corpus(tmp_path / "docs.csv", CorpusFields(), tmp_path / "out")
    assert [p.text for p in iter_corpus(tmp_path / "out")] == [long]


def test_parquet_with_null_and_non_string_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"_id": [1, 2, 3], "text": [None, "words", "more"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"_id": ["x"], "text": [12345]}), tmp_path / "b.parquet")
    write_corpus(tmp_path / "a.parquet", CorpusFields(), tmp_path / "a")
    assert [(p.doc_id, p.text) for p in iter_corpus(tmp_path / "a")] == [("2", "words"), ("3", "more")]
    write_corpus(tmp_path / "b.parquet", CorpusFields(), tmp_path / "b")
    assert [(p.doc_id, p.text) for p in iter_corpus(tmp_path / "b")] == [("x", "12345")]


def test_a_broken_parquet_file_is_one_line(tmp_path):
    (tmp_path / "docs.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"docs\.parquet"):
        write_corpus(tmp_path / "docs.parquet", CorpusFields(), tmp_path / "out")


def test_ids_the_index_would_refuse_are_made_single_words(tmp_path):
    """File names with spaces (and table ids with spaces or empty) must give ids the later stages accept."""
    docs = tmp_path / "docs"
    (docs / "my notes").mkdir(parents=True)
    (docs / "my notes" / "a b.txt").write_text("first")
    (docs / "my_notes").mkdir()
    (docs / "my_notes" / "a_b.txt").write_text("second")
    (docs / "rows.jsonl").write_text(json.dumps({"_id": "", "text": "third"}) + "\n")
    write_corpus(docs, CorpusFields(), tmp_path / "out")
    ids = [p.doc_id for p in iter_corpus(tmp_path / "out")]
    assert len(ids) == len(set(ids)) == 3


def test_symlink_outside_and_empty_files(tmp_path):
    (tmp_path / "secret.txt").write_text("outside")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.txt").write_text("")
    (docs / "inside.txt").write_text("inside")
    (docs / "link.txt").symlink_to(tmp_path / "secret.txt")
    counts = write_corpus(docs, CorpusFields(), tmp_path / "out")
    assert (counts.read, counts.empty) == (3, 1)
    assert sorted(tmp_path.iterdir()) == [docs, tmp_path / "out", tmp_path / "secret.txt"]


@pytest.mark.parametrize(
    "fields",
    [{"min_chars": 10, "max_chars": 5}, {"min_chars": -1}, {"max_chars": 0}, {"min_chars": "abc"},
     {"dedup": "maybe"}, {"text": ""}],
)  # fmt: skip
def test_bad_corpus_fields_are_one_config_line(fields):
    settings = AdaptSettings(retriever="r", corpus="c", corpus_fields=fields)
    with pytest.raises(ConfigError) as e:
        settings.fields()
    assert "corpus_fields." + next(iter(fields)) in str(e.value) and "\n" not in str(e.value)


# --- adapt: out= ---------------------------------------------------------------------------------------


def _product(tmp_path: Path) -> Path:
    folder = tmp_path / "cache" / "export" / "model"
    folder.mkdir(parents=True)
    (folder / "modules.json").write_text("[]")
    return folder


def test_out_an_existing_file_is_refused_and_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="out="):
        copy_out(_product(tmp_path), tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_out_a_folder_of_other_files_is_refused_and_kept(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="out="):
        copy_out(_product(tmp_path), tmp_path / "home")
    assert (tmp_path / "home" / "thesis.tex").read_text() == "years of work"


def test_out_a_previous_export_is_replaced(tmp_path):
    product = _product(tmp_path)
    copy_out(product, tmp_path / "mine")
    (product / "extra.json").write_text("{}")
    assert copy_out(product, tmp_path / "mine") == (tmp_path / "mine").resolve()
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["extra.json", "modules.json"]


@pytest.mark.parametrize("where", ["cache", "cache/export/model", "."])
def test_out_inside_or_holding_the_cache_is_refused(tmp_path, where):
    product = _product(tmp_path)
    with pytest.raises(UserError, match="out=.*cache"):
        check_out(tmp_path / where, tmp_path / "cache")
    assert (product / "modules.json").is_file()


@pytest.mark.parametrize(
    "override", ["out=HOME", "corpus_fields.min_chars=abc", "corpus_fields.max_chars=-1"]
)
def test_the_command_refuses_bad_out_and_fields_before_resolving_models(tmp_path, override):
    from readaptir.grid.adapt import split_config
    from tests.test_adapt import adapt_config

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    override = override.replace("HOME", str(tmp_path / "home"))
    container = adapt_config(tmp_path, "retriever=nowhere/none", f"corpus={tmp_path}", override)
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        split_config(container)
    assert (tmp_path / "home" / "thesis.tex").is_file()


@pytest.mark.parametrize("leftover", ["folder", "file"])
def test_a_half_unzipped_dataset_folder_is_one_line_and_kept(tmp_path, monkeypatch, leftover):
    """data/scifact/ holding a user's partial unzip (queries, no corpus), or data/scifact a file: the fetched
    copy cannot be renamed onto it; one line saying what to move away, the user's files untouched."""
    body = _toy_zip()
    _serve(monkeypatch, body)
    data = tmp_path / "data"
    data.mkdir()
    if leftover == "folder":
        (data / "scifact").mkdir()
        (data / "scifact" / "queries.jsonl").write_text("mine")
        mine = data / "scifact" / "queries.jsonl"
    else:
        (data / "scifact").write_text("mine")
        mine = data / "scifact"
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", data, ZIP_URL, source="zip")
    assert "scifact" in str(e.value) and "\n" not in str(e.value)
    assert mine.read_text() == "mine" and _leftovers(data) == ["scifact"]


@pytest.mark.parametrize(
    "source", ["my docs (v2)/", "hf:org/ds:cfg", "~/x y.csv", ".hidden", "/", "d/" + "é" * 200]
)
def test_any_corpus_source_gives_a_valid_dataset_label(source):
    """The label becomes the cell's dataset name (a folder name): a folder with a space or a hf: config
    must not end the command in a validation traceback after the corpus was converted."""
    from readaptir.grid.adapt import corpus_label
    from readaptir.paths import name_problem

    assert name_problem(corpus_label(source)) is None


def test_evaluate_on_a_folder_whose_name_is_no_dataset_name_is_one_line(tmp_path):
    """``readaptir evaluate dataset="/data/my beir copy"``: one config line naming the folder, no traceback."""
    import shutil

    from readaptir.grid.compare import split_config
    from tests.test_adapt import compose_config

    folder = tmp_path / "my beir copy"
    shutil.copytree(TOY, folder)
    container = compose_config("evaluate", ["retriever=nowhere/none", f"+data_path={folder}"])
    with pytest.raises(ConfigError, match="my beir copy") as e:
        split_config(container)
    assert "\n" not in str(e.value)


def _hub_errors():
    import httpx2
    from huggingface_hub.errors import EntryNotFoundError, XetDownloadError

    return [httpx2.ReadError("connection reset by peer"), XetDownloadError("xet: range request failed"),
            EntryNotFoundError("corpus.jsonl.gz not found")]  # fmt: skip


@pytest.mark.parametrize("error", _hub_errors(), ids=lambda e: type(e).__name__)
def test_a_hub_failure_of_any_class_falls_back_to_the_zip(tmp_path, monkeypatch, error):
    """huggingface_hub raises httpx2 errors (not httpx's), Xet errors and others outside HfHubHTTPError: a
    dropped connection to the Hub must fall back to the zip (auto), not end in a traceback."""

    def broken(*a, **k):
        raise error

    body = _toy_zip()
    _serve(monkeypatch, body)
    monkeypatch.setattr(fetch, "snapshot_download", broken)
    _assert_is_toy(ensure_dataset("scifact", tmp_path / "data", ZIP_URL))
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", tmp_path / "other", ZIP_URL, source="hub")
    assert str(error) in str(e.value) and "\n" not in str(e.value)


def test_a_part_from_another_url_is_never_unpacked_as_the_dataset(tmp_path, monkeypatch):
    """A .part left by another mirror's (different) zip, resumed from the new url: the spliced file is
    refused and deleted (never unpacked as a dataset), and the next run fetches the new zip whole."""
    url = "https://mirror.example/scifact.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:  # another zip: other bytes from the start
        z.writestr("scifact/corpus.jsonl", (TOY / "corpus.jsonl").read_bytes()[::-1] * 4)
    old = buf.getvalue()
    new = _toy_zip()
    monkeypatch.setattr(fetch, "snapshot_download", _no_network)
    server = FakeServer(new)
    monkeypatch.setattr(fetch.httpx, "stream", server)
    data = tmp_path / "data"
    data.mkdir()
    (data / ".scifact.zip.part").write_bytes(old[: len(new) // 2])
    assert old[:100] != new[:100]
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", data, url, source="zip")
    assert "\n" not in str(e.value) and _leftovers(data) == []
    _assert_is_toy(ensure_dataset("scifact", data, url, source="zip"))


def test_a_full_disk_while_unpacking_keeps_the_checked_download(tmp_path, monkeypatch):
    """ENOSPC while unzipping a download whose md5 matched: the zip is sound, so it is kept for the next run
    (not deleted as "not a valid zip"), and the message says the disk is full."""
    import errno

    body = _toy_zip()
    _serve(monkeypatch, body)

    def full(self, path=None, *a, **k):
        Path(path, "scifact").mkdir(parents=True)
        (Path(path) / "scifact" / "corpus.jsonl").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", full)
    data = tmp_path / "data"
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", data, ZIP_URL, source="zip")
    assert "no space left" in str(e.value).lower() and "not a valid zip" not in str(e.value)
    assert _leftovers(data) == [".scifact.zip.part"]  # no half-unpacked dataset, the download kept
    monkeypatch.undo()
    _serve(monkeypatch, body, server := FakeServer(body))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _assert_is_toy(ensure_dataset("scifact", data, ZIP_URL, source="zip"))
    assert server.ranges == [len(body)]  # nothing downloaded again


def test_a_full_disk_while_downloading_is_one_line_and_resumable(tmp_path, monkeypatch):
    import builtins
    import errno

    body = _toy_zip()
    _serve(monkeypatch, body)
    real_open = builtins.open

    class Full(io.BufferedWriter):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    def opener(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if str(file).endswith(".part") and mode in ("ab", "wb"):
            f.write(body[:10])
            f.close()
            return Full(real_open(file, "ab"))
        return f

    monkeypatch.setattr(builtins, "open", opener)
    data = tmp_path / "data"
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", data, ZIP_URL, source="zip")
    assert "no space left" in str(e.value).lower() and "\n" not in str(e.value)
    assert _leftovers(data) == [".scifact.zip.part"]


def test_a_full_disk_while_gunzipping_a_hub_file_says_so(tmp_path, monkeypatch):
    import errno

    hub = FakeHub(tmp_path / "hf")
    monkeypatch.setattr(fetch, "snapshot_download", hub)

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fetch.shutil, "copyfile", full)  # the qrels copy, after both gunzips
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source="hub")
    assert "no space left" in str(e.value).lower() and "\n" not in str(e.value)
    monkeypatch.setattr(fetch.gzip.GzipFile, "read", lambda self, n=-1: full(None, None))  # while unpacking
    with pytest.raises(DataError) as e:
        ensure_dataset("scifact", tmp_path / "data", ZIP_URL, source="hub")
    assert "no space left" in str(e.value).lower() and "not a valid gzip" not in str(e.value)
    assert _leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("value", [["two", "sentences"], {"en": "text"}])
def test_a_text_field_holding_a_list_or_object_is_refused_naming_the_row(tmp_path, value):
    """A list or object would become its Python repr ("['two', 'sentences']") and be learned as text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "docs.jsonl").write_text(json.dumps({"_id": "a", "text": "fine"}) + "\n" +
                                         json.dumps({"_id": "b", "text": value}) + "\n")  # fmt: skip
    with pytest.raises(DataError, match=r"docs\.jsonl:2.*'text'.*corpus_fields\.text"):
        write_corpus(tmp_path / "docs.jsonl", CorpusFields(), tmp_path / "a")
    pq.write_table(pa.Table.from_pylist([{"_id": "b", "text": value}]), tmp_path / "docs.parquet")
    with pytest.raises(DataError, match=r"docs\.parquet row 0.*'text'"):
        write_corpus(tmp_path / "docs.parquet", CorpusFields(), tmp_path / "b")


def test_a_folder_of_beir_folders_reads_their_corpora_not_their_queries(tmp_path):
    """corpus=data/ holding data/scifact/{corpus,queries}.jsonl + qrels/: the passages are the corpus rows
    (the queries are no passages: learning them would leak the test queries; the qrels are no table)."""
    import shutil

    shutil.copytree(TOY, tmp_path / "data" / "scifact")
    (tmp_path / "data" / "notes.txt").write_text("a note of mine")
    counts = write_corpus(tmp_path / "data", CorpusFields(dedup=False), tmp_path / "out")
    toy = [p.text for p in iter_corpus(TOY)]
    assert counts.read == len(toy) + 1
    assert sorted(p.text for p in iter_corpus(tmp_path / "out")) == sorted([*toy, "a note of mine"])


def test_tsv_quotes_are_text_not_quoting(tmp_path):
    """TSV has no quoting: a passage starting with a quote must keep it, and an unclosed one must not
    swallow the following rows into one passage."""
    (tmp_path / "docs.tsv").write_text('_id\ttext\n1\t"Quoted" start\n2\t"unclosed start\n3\tnext row\n')
    write_corpus(tmp_path / "docs.tsv", CorpusFields(), tmp_path / "out")
    assert [(p.doc_id, p.text) for p in iter_corpus(tmp_path / "out")] == [
        ("1", '"Quoted" start'), ("2", '"unclosed start'), ("3", "next row")]  # fmt: skip


def test_files_inside_hidden_folders_are_not_passages(tmp_path):
    """A notes folder that is a git repository or was opened in Jupyter: .git/ and .ipynb_checkpoints/
    copies are no passages (the module reads no hidden file, nor anything inside a hidden folder)."""
    docs = tmp_path / "docs"
    (docs / ".ipynb_checkpoints").mkdir(parents=True)
    (docs / ".git" / "info").mkdir(parents=True)
    (docs / "notes.md").write_text("my note")
    (docs / ".ipynb_checkpoints" / "notes-checkpoint.md").write_text("my older note")
    (docs / ".git" / "info" / "exclude.txt").write_text("*.pyc")
    counts = write_corpus(docs, CorpusFields(), tmp_path / "out")
    assert counts.read == 1 and [p.doc_id for p in iter_corpus(tmp_path / "out")] == ["notes"]


def test_a_parquet_binary_text_column_is_decoded_not_its_repr(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"_id": ["a", "b"], "text": pa.array([b"caf\xc3\xa9 au lait", b"\xff"], pa.binary())})
    pq.write_table(table.slice(0, 1), tmp_path / "ok.parquet")
    write_corpus(tmp_path / "ok.parquet", CorpusFields(), tmp_path / "a")
    assert [p.text for p in iter_corpus(tmp_path / "a")] == ["café au lait"]
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet row 1.*UTF-8"):
        write_corpus(tmp_path / "bad.parquet", CorpusFields(), tmp_path / "b")
