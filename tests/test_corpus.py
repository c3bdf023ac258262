"""Corpus readers: every source becomes the same BeIR corpus.jsonl, filtered and deduplicated with counts."""

from __future__ import annotations

import json

import pytest

from readaptir.data.beir import DataError, iter_corpus
from readaptir.data.corpus import CorpusFields, write_corpus

ROWS = [
    {"doc": "a", "head": "Cats", "body": "Cats purr."},
    {"doc": "b", "head": "", "body": "Dogs bark loudly at night."},
    {"doc": "a", "head": "Owls", "body": "Owls hoot."},  # a repeated id, another passage: kept as a#2
    {"doc": "c", "head": "Cats", "body": "Cats purr."},  # a repeat of a's passage
    {"doc": "d", "head": "", "body": "   "},  # empty
]
FIELDS = CorpusFields(text="body", title="head", id="doc")


def _write(path, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "csv":
        lines = ["doc,head,body"] + [f'{r["doc"]},{r["head"]},"{r["body"]}"' for r in ROWS]
        path.write_text("\n".join(lines) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_table_format_gives_the_same_corpus(fmt, tmp_path):
    counts = write_corpus(_write(tmp_path / f"docs.{fmt}", fmt), FIELDS, tmp_path / "out")
    assert (counts.read, counts.kept, counts.duplicates, counts.empty) == (5, 3, 1, 1)
    got = [(p.doc_id, p.title, p.text) for p in iter_corpus(tmp_path / "out")]
    assert got == [
        ("a", "Cats", "Cats purr."),
        ("b", "", "Dogs bark loudly at night."),
        ("a#2", "Owls", "Owls hoot."),
    ]


def test_filters_and_dedup_switch(tmp_path):
    src = _write(tmp_path / "docs.jsonl", "jsonl")
    keep_all = CorpusFields(text="body", title="head", id="doc", dedup=False)
    assert write_corpus(src, keep_all, tmp_path / "all").kept == 4
    short = write_corpus(src, CorpusFields(text="body", title="head", id="doc", min_chars=16), tmp_path / "s")
    assert (short.too_short, short.kept) == (3, 1)  # "Cats Cats purr." has 15 characters
    assert [p.doc_id for p in iter_corpus(tmp_path / "s")] == ["b"]
    long = write_corpus(src, CorpusFields(text="body", title="head", id="doc", max_chars=20), tmp_path / "l")
    assert (long.too_long, long.kept, long.duplicates) == (1, 2, 1)


def test_text_folder_ids_are_paths_and_tables_inside_are_read(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "one.txt").write_text("First passage.")
    (docs / "sub" / "two.md").write_text("\ufeffSecond passage.\nWith two lines.")
    (docs / ".hidden.txt").write_text("never read")
    counts = write_corpus(docs, CorpusFields(), tmp_path / "out")
    assert counts.kept == 2
    assert [(p.doc_id, p.text) for p in iter_corpus(tmp_path / "out")] == [
        ("one", "First passage."), ("sub/two", "Second passage.\nWith two lines.")]  # fmt: skip


def test_bad_sources_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"docs\.jsonl:1: no field 'text'.*corpus_fields\.text"):
        write_corpus(_write(tmp_path / "docs.jsonl", "jsonl"), CorpusFields(), tmp_path / "a")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        write_corpus(tmp_path / "bad.jsonl", CorpusFields(), tmp_path / "b")
    (tmp_path / "notes.docx").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"a \.docx file"):
        write_corpus(tmp_path / "notes.docx", CorpusFields(), tmp_path / "c")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    with pytest.raises(DataError, match="no passage left"):
        write_corpus(tmp_path / "blank.jsonl", CorpusFields(), tmp_path / "d")
