"""BeIR data layer: streaming reads, clear errors, ablation subsets, download."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from readaptir.data.beir import (
    DataError,
    Passage,
    ensure_dataset,
    iter_corpus,
    load_qrels,
    load_queries,
    passage_training_text,
)
from readaptir.data.subsets import count_unknown_qrels, knowledge_subset, relevant_doc_ids, subset_filter
from readaptir.store.identity import file_fingerprint


def test_toy_dataset_reads(toy_dir):
    docs = list(iter_corpus(toy_dir))
    assert len(docs) == 240 and len({d.doc_id for d in docs}) == 240
    qrels = load_qrels(toy_dir, "test")
    queries = load_queries(toy_dir, set(qrels))
    assert len(qrels) == len(queries) == 48
    assert count_unknown_qrels(qrels, {d.doc_id for d in docs}) == 0


def test_malformed_corpus_line_names_file_and_line(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "a", "text": "ok"}\n{"_id": "b", "text": oops}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: not valid JSON"):
        list(iter_corpus(tmp_path))
    (tmp_path / "corpus.jsonl").write_text('{"_id": "a", "text": "ok"}\n\n{"title": "no id"}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl:3: missing field\(s\) \['_id', 'text'\]"):
        list(iter_corpus(tmp_path))


def test_missing_qrels_split_lists_available(toy_dir):
    with pytest.raises(DataError, match=r"qrels split 'dev' not found \(available: \['test', 'train'\]\)"):
        load_qrels(toy_dir, "dev")


def test_unknown_qrels_rows_are_counted(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tzz\t2\nq2\tyy\t0\n"
    )
    qrels = load_qrels(tmp_path, "test")
    assert qrels == {"q1": {"d1": 1, "zz": 2}, "q2": {"yy": 0}}
    assert count_unknown_qrels(qrels, {"d1"}) == 2
    assert relevant_doc_ids(qrels) == {"d1", "zz"}  # score 0 is not relevant


def test_passage_text_strips_empty_title():
    assert passage_training_text(Passage("1", "", "body ")) == "body"
    assert passage_training_text(Passage("1", "T", "body")) == "T body"


def test_subset_applicability():
    assert knowledge_subset("scifact", "with", "scifact", "scifact", "test").applicable
    # Climate-FEVER's doc ids are FEVER's: its in-domain (FEVER corpus) ablations are well defined.
    assert knowledge_subset("fever", "without", "climate-fever", "fever", "test").applicable
    # MS-MARCO's integer ids are not FiQA's integer ids: never filter one corpus by another's qrels.
    sub = knowledge_subset("msmarco", "with", "fiqa", "fiqa", "test")
    assert not sub.applicable and "not the msmarco" in sub.reason
    assert knowledge_subset("msmarco", "both", "fiqa", "fiqa", "test").applicable
    assert knowledge_subset("msmarco", "with", "msmarco", "msmarco", "dev").applicable
    with pytest.raises(DataError, match="ablation 'some'"):
        knowledge_subset("fiqa", "some", "fiqa", "fiqa", "test")


@pytest.mark.real_data
def test_scifact_ablation_subsets_partition_the_corpus(beir_dir):
    root = beir_dir / "scifact"
    qrels = load_qrels(root, "test")
    rel = relevant_doc_ids(qrels)
    all_ids = [p.doc_id for p in iter_corpus(root)]
    assert len(all_ids) == 5183
    sub_with = knowledge_subset("scifact", "with", "scifact", "scifact", "test")
    sub_without = knowledge_subset("scifact", "without", "scifact", "scifact", "test")
    with_ids = [p.doc_id for p in iter_corpus(root, **subset_filter(sub_with, rel))]
    without_ids = [p.doc_id for p in iter_corpus(root, **subset_filter(sub_without, rel))]
    assert set(with_ids).isdisjoint(without_ids)
    assert set(with_ids) | set(without_ids) == set(all_ids)
    assert len(with_ids) + len(without_ids) == len(all_ids)
    # `with` is exactly the documents with relevance > 0 in qrels/test.tsv, read independently here.
    lines = (root / "qrels" / "test.tsv").read_text().splitlines()[1:]
    expected = {c for _, c, s in (line.split("\t") for line in lines) if int(s) > 0}
    assert set(with_ids) == expected and len(expected) > 0


def _zip_dataset(tmp_path: Path, name: str) -> Path:
    src = tmp_path / "src" / name
    (src / "qrels").mkdir(parents=True)
    (src / "corpus.jsonl").write_text(json.dumps({"_id": "d", "title": "", "text": "t"}) + "\n")
    (src / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "t"}) + "\n")
    (src / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t1\n")
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in src.rglob("*"):
            z.write(p, p.relative_to(src.parent))
    return archive


def test_download_unpacks_into_place(tmp_path):
    archive = _zip_dataset(tmp_path, "mini")
    root = ensure_dataset("mini", tmp_path / "data", archive.as_uri())
    assert root == (tmp_path / "data" / "mini").resolve()
    assert [p.doc_id for p in iter_corpus(root)] == ["d"]
    assert (
        ensure_dataset("mini", tmp_path / "data", "file:///nonexistent.zip") == root
    )  # present: no download


def test_failed_download_names_dataset_url_and_folder(tmp_path):
    url = (tmp_path / "missing.zip").as_uri()
    with pytest.raises(DataError) as e:
        ensure_dataset("fiqa", tmp_path / "data", url)
    msg = str(e.value)
    assert "fiqa" in msg and url in msg and str((tmp_path / "data" / "fiqa").resolve()) in msg
    assert "\n" not in msg
    assert not (tmp_path / "data" / "fiqa").exists()  # nothing half-written
    assert [p.name for p in (tmp_path / "data").iterdir()] == []


def test_fingerprint_tracks_content(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("a" * 10)
    k1 = file_fingerprint(f)
    f.write_text("a" * 9 + "b")
    assert file_fingerprint(f) != k1
