"""BeIR data layer: streaming reads, clear errors, ablation subsets, download."""

from __future__ import annotations

import json
import os
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
from readaptir.data.checks import check_corpus, check_dataset
from readaptir.data.subsets import count_unknown_qrels, knowledge_subset, relevant_doc_ids, subset_filter
from readaptir.store.identity import content_identity


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


def test_a_local_model_is_its_weights_whole_contents(tmp_path):
    """A checkpoint saved over another with the same size, header, first and last MiB (a LoRA merge leaves
    embeddings and norms alone) is a different model: keys built on it must change."""
    from readaptir.store.identity import model_identity

    folder = tmp_path / "retriever"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "_name_or_path": "/somewhere/else"}')
    weights = bytearray(os.urandom(6 << 20))
    (folder / "model.safetensors").write_bytes(bytes(weights))
    memo = tmp_path / "cache" / "identity"
    before = model_identity(folder, memo)
    assert before.startswith("local:") and model_identity(folder, memo) == before
    stat = (folder / "model.safetensors").stat()
    weights[3 << 20 : (3 << 20) + 8] = b"MERGED!!"  # one tensor in the middle; same size
    (folder / "model.safetensors").write_bytes(bytes(weights))
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = model_identity(folder, memo)
    assert after != before
    moved = tmp_path / "moved"
    folder.rename(moved)  # where it sits and where it says it came from do not matter
    (moved / "config.json").write_text('{"model_type": "llama", "_name_or_path": "/moved"}')
    assert model_identity(moved, memo) == after


# ------------------------------------------------------------------------- data identity and data checks
def test_identity_sees_an_edit_in_the_middle_of_a_same_size_file(tmp_path, monkeypatch):
    from readaptir.store import identity

    f = tmp_path / "data" / "corpus.jsonl"
    f.parent.mkdir()
    body = b"".join(b'{"_id": "%d", "text": "passage %06d"}\n' % (i, i) for i in range(200_000))  # 7 MB
    f.write_bytes(body)
    memo = tmp_path / "cache" / "identity"
    first = content_identity(f, memo)
    assert first.startswith("xxh3:")
    edited = bytearray(body)
    mid = len(body) // 2
    edited[mid : mid + 6] = b"EDITED"  # same size; first and last MiB untouched
    old = f.stat()
    f.write_bytes(bytes(edited))
    os.utime(f, ns=(old.st_atime_ns, old.st_mtime_ns))  # even the mtime is put back
    assert content_identity(f, memo) != first
    # Remembered by path, size, mtime, ctime and inode: a second process does not hash it again.
    identity._REMEMBERED.clear()
    monkeypatch.setattr(identity, "_hash_contents", lambda *a: pytest.fail("hashed again"))
    assert content_identity(f, memo) == content_identity(f, memo)


def test_identity_of_a_read_only_data_folder_is_remembered_in_the_cache(tmp_path):
    f = tmp_path / "ro" / "queries.jsonl"
    f.parent.mkdir()
    f.write_text('{"_id": "q", "text": "x"}\n')
    f.parent.chmod(0o555)
    try:
        ident = content_identity(f, tmp_path / "cache")
    finally:
        f.parent.chmod(0o755)
    assert ident.startswith("xxh3:") and len(list((tmp_path / "cache").glob("*.json"))) == 1
    assert content_identity(tmp_path / "absent" / "corpus.jsonl") == "unknown:absent/corpus.jsonl"


def _dataset(root: Path, corpus: list[str], qrels: list[str], queries: list[str] | None = None) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": f"t {i}"}) + "\n"
                                               for i in corpus))  # fmt: skip
    qids = queries if queries is not None else sorted({r.split("\t")[0] for r in qrels})
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": q}) + "\n" for q in qids))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    return root


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    root = _dataset(tmp_path, ["a", "b"], ["q\ta\t1"])
    (root / "corpus.jsonl").write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 26\)"):
        list(iter_corpus(root))
    (root / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\nq\ta\t1\nq\t\xff\t1\n")
    with pytest.raises(DataError, match=r"test\.tsv:3: not valid UTF-8"):
        load_qrels(root, "test")
    (root / "queries.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"_id": "q", "text": "a BOM is fine"}\n')
    assert load_queries(root) == {"q": "a BOM is fine"}


def test_empty_corpus_is_refused_naming_the_file(tmp_path):
    root = _dataset(tmp_path, [], ["q\ta\t1"])
    with pytest.raises(DataError, match=r"corpus\.jsonl: no passages"):
        check_dataset(root, "test")


def test_duplicate_doc_ids_are_refused_with_counts_and_lines(tmp_path):
    root = _dataset(tmp_path, ["a", "b", "a", "c", "b", "a"], ["q\ta\t1"])
    with pytest.raises(DataError) as e:
        check_dataset(root, "test")
    msg = str(e.value)
    assert "2 doc id(s) occur more than once (3 extra rows), e.g. 'a' on lines 1 and 3" in msg
    with pytest.raises(DataError, match="occur more than once"):
        check_corpus(root)  # a knowledge corpus too


def test_qrels_pointing_outside_the_corpus(tmp_path, caplog):
    few = [f"q{i}\td{i}\t1" for i in range(200)] + ["q0\tgone\t1", "q1\tgone2\t0"]
    root = _dataset(tmp_path / "few", [f"d{i}" for i in range(200)], few)
    with caplog.at_level("WARNING"):
        warnings = check_dataset(root, "test")
    assert (
        len(warnings) == 1
        and "2 of 202 judgements (1 of 201 relevant) point at doc ids not in" in warnings[0]
    )
    assert "data: " in caplog.text
    many = [f"q{i}\td{i}\t1" for i in range(10)] + [f"q{i}\tother{i}\t1" for i in range(10)]
    root = _dataset(tmp_path / "many", [f"d{i}" for i in range(10)], many)
    with pytest.raises(DataError, match=r"10 of 20 judgements .* do not belong to this corpus"):
        check_dataset(root, "test")


def test_qrels_whose_queries_are_all_missing_are_refused(tmp_path):
    root = _dataset(tmp_path, ["a"], ["q1\ta\t1", "q2\ta\t1"], queries=["other"])
    with pytest.raises(DataError, match=r"none of its 2 judged queries is in .*queries\.jsonl"):
        check_dataset(root, "test")
    root = _dataset(tmp_path / "2", ["a"], ["q1\ta\t1", "q2\ta\t1"], queries=["q1"])
    assert "1 of 2 judged queries are not in queries.jsonl" in check_dataset(root, "test")[0]


def test_dataset_checks_are_remembered_per_content(tmp_path, monkeypatch, toy_dir):
    from readaptir.data import checks

    memo = tmp_path / "memo"
    assert check_dataset(toy_dir, "test", memo) == []
    monkeypatch.setattr(checks, "corpus_id_hashes", lambda root: pytest.fail("checked again"))
    assert check_dataset(toy_dir, "test", memo) == []


def _write(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("score", ["0.9", "inf", "nan", "-inf", "1.5", "1e400"])
def test_qrels_grades_that_are_not_integers_name_file_and_line(tmp_path, score):
    """0.9 was read as 0 (nDCG 0, exit 0) and inf was a traceback."""
    root = _dataset(tmp_path, ["a", "b"], ["q\ta\t1", f"q\tb\t{score}"])
    with pytest.raises(DataError, match=rf"test\.tsv:3: score '{score}' is not an integer relevance grade"):
        load_qrels(root, "test")


def test_integral_grades_in_any_spelling_are_kept(tmp_path):
    root = _dataset(tmp_path, ["a", "b", "c"], ["q\ta\t2", "q\tb\t1.0", "q\tc\t-1"])
    assert load_qrels(root, "test") == {"q": {"a": 2, "b": 1, "c": -1}}


def test_null_or_non_string_texts_name_file_and_line(tmp_path):
    """A null query text was encoded as the string "None"; a null passage text as an empty passage."""
    root = _dataset(tmp_path, ["a"], ["q\ta\t1"])
    _write(root / "queries.jsonl", [{"_id": "q", "text": "fine"}, {"_id": "r", "text": None}])
    with pytest.raises(DataError, match=r"queries\.jsonl:2: field 'text' is null, not a string"):
        load_queries(root)
    _write(root / "queries.jsonl", [{"_id": "q", "text": 3}])
    with pytest.raises(DataError, match=r"queries\.jsonl:1: field 'text' is 3, not a string"):
        load_queries(root)
    _write(root / "queries.jsonl", [{"_id": "q"}])
    with pytest.raises(DataError, match=r"queries\.jsonl:1: missing field\(s\) \['text'\]"):
        load_queries(root)
    _write(root / "corpus.jsonl", [{"_id": "a", "title": None, "text": "ok"}, {"_id": "b", "text": None}])
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: field 'text' is null"):
        list(iter_corpus(root))
    assert next(iter_corpus(root)).title == ""  # a null title is no title


def test_duplicate_query_ids_are_refused_naming_both_lines(tmp_path):
    """The last text silently won."""
    root = _dataset(tmp_path, ["a"], ["q\ta\t1"])
    _write(
        root / "queries.jsonl",
        [{"_id": "q", "text": "one"}, {"_id": "x", "text": "x"}, {"_id": "q", "text": "2"}],
    )
    with pytest.raises(DataError, match=r"queries\.jsonl:3: query id 'q' also on line 1"):
        load_queries(root, {"q"})


def test_empty_queries_are_refused_when_all_are_empty_and_counted_otherwise(tmp_path):
    root = _dataset(tmp_path, ["a", "b"], ["q1\ta\t1", "q2\tb\t1"])
    _write(root / "queries.jsonl", [{"_id": "q1", "text": ""}, {"_id": "q2", "text": "  "}])
    with pytest.raises(
        DataError, match=r"queries\.jsonl: every one of the 2 queries judged in .* has an empty"
    ):
        check_dataset(root, "test")
    _write(root / "queries.jsonl", [{"_id": "q1", "text": ""}, {"_id": "q2", "text": "words"}])
    assert any(
        "1 of 2 judged queries have an empty text (e.g. 'q1')" in w for w in check_dataset(root, "test")
    )


def test_a_subset_too_small_for_its_relevant_passages_is_refused(toy_dir, tmp_path):
    """passages=1 kept one relevant passage of many queries: nDCG 1.0 on a corpus of one."""
    from readaptir.config import SubsetSpec
    from readaptir.data.nano import write_subset

    with pytest.raises(DataError, match=r"dataset\.subset\.passages=1 cannot hold the \d+ judged-relevant"):
        write_subset(toy_dir, tmp_path / "s", SubsetSpec(of="toy", queries=5, passages=1), "test")
    assert not (tmp_path / "s" / "corpus.jsonl").exists()
