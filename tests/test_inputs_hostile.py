"""Hostile inputs found by review: each was accepted silently, refused late or refused with a misleading line.

- ``true``/``false`` where a number belongs (pydantic read them as 1/0: ``readapt.alpha=true`` ran α = 1);
- ``dataset.extra_metrics`` refused only after the corpus was encoded;
- qrels: a header-less file whose first grade is ``1.0`` lost its first judgement, one (query, doc) pair
  graded twice differently kept the last grade, TREC's 4-column rows were reported as "wrong corpus", a
  folder named ``test.tsv`` was "not found (available: ['test'])";
- ids: ``"_id": null`` became the id "None", whitespace in an id broke the run file after all the work;
- ``corpus.jsonl`` a folder or a FIFO started a download instead of naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from readaptir.config import ConfigError, DatasetSpec, EvaluateSettings, ReadaptSettings, TrainSettings, typed
from readaptir.data.beir import DataError, ensure_dataset, iter_corpus, load_qrels, load_queries
from readaptir.data.checks import check_dataset

DATASET = {"name": "d", "beir_name": "d", "split": "test", "corpus_size": 1, "knowledge_corpus": "d"}


@pytest.mark.parametrize(
    "cls, values, key",
    [
        (TrainSettings, {"batch_size": True}, "batch_size"),
        (ReadaptSettings, {"alpha": True}, "alpha"),
        (ReadaptSettings, {"beta": False}, "beta"),
        (EvaluateSettings, {"k_values": [10, True]}, "k_values"),
    ],
)
def test_booleans_are_not_numbers(cls, values, key):
    with pytest.raises(ConfigError, match=rf"{key}.*true/false is not a number"):
        typed(cls, values)
    assert typed(TrainSettings, {"compile": True}).compile is True  # switches still take them


@pytest.mark.parametrize("metric", ["FOO@10", "MRR@0", "MRR", "MRR@-1", "MRR@1.5"])
def test_extra_metrics_are_checked_with_the_config(metric):
    with pytest.raises(ConfigError, match=r"dataset\.extra_metrics|extra_metrics.*MRR@10"):
        typed(DatasetSpec, {**DATASET, "extra_metrics": [metric]})
    assert typed(DatasetSpec, {**DATASET, "extra_metrics": ["MRR@10"]}).extra_metrics == ("MRR@10",)


def _qrels(tmp_path: Path, text: str) -> Path:
    (tmp_path / "qrels").mkdir(exist_ok=True)
    (tmp_path / "qrels" / "test.tsv").write_text(text)
    return tmp_path


def test_headerless_qrels_with_float_grades_keep_their_first_line(tmp_path):
    qrels = load_qrels(_qrels(tmp_path, "q1\td1\t1.0\nq2\td2\t2.0\n"), "test")
    assert qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}


def test_a_pair_graded_twice_differently_is_refused(tmp_path):
    _qrels(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t1\nq1\td1\t0\n")
    with pytest.raises(DataError, match=r"test\.tsv:4: .*'q1'.*'d1'.*graded 0 here and 1 on line 2"):
        load_qrels(tmp_path, "test")
    _qrels(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t1\n")  # the same grade twice: harmless
    assert load_qrels(tmp_path, "test") == {"q1": {"d1": 1}}


def test_trec_style_rows_name_the_columns(tmp_path):
    _qrels(tmp_path, "query-id\tcorpus-id\tscore\nq1\t0\td1\t1\n")
    with pytest.raises(
        DataError, match=r"test\.tsv:2: expected query-id<TAB>corpus-id<TAB>score \(3 fields\)"
    ):
        load_qrels(tmp_path, "test")


def test_a_qrels_folder_is_not_a_qrels_file(tmp_path):
    (tmp_path / "qrels" / "test.tsv").mkdir(parents=True)
    with pytest.raises(DataError, match=r"test\.tsv: not a regular file"):
        load_qrels(tmp_path, "test")


@pytest.mark.parametrize("doc_id", [None, True, 1.5, [1], "", "a b", "a\tb", "a\u2028b", "a\x00b"])
def test_bad_doc_ids_are_refused_with_file_and_line(tmp_path, doc_id):
    rows = [{"_id": "ok", "text": "x"}, {"_id": doc_id, "text": "y"}]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: "):
        list(iter_corpus(tmp_path))


def test_integer_ids_still_read(tmp_path):
    (tmp_path / "queries.jsonl").write_text('{"_id": 7, "text": "x"}\n')
    assert load_queries(tmp_path) == {"7": "x"}
    (tmp_path / "queries.jsonl").write_text('{"_id": "q 1", "text": "x"}\n')
    with pytest.raises(DataError, match=r"queries\.jsonl:1: id 'q 1'"):
        load_queries(tmp_path)


def test_check_dataset_refuses_a_null_doc_id(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": null, "text": "y"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    _qrels(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: field '_id' is null"):
        check_dataset(tmp_path, "test")


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_corpus_that_is_not_a_file_is_named_not_downloaded(tmp_path, kind):
    target = tmp_path / "d" / "corpus.jsonl"
    target.parent.mkdir()
    target.mkdir() if kind == "folder" else os.mkfifo(target)
    with pytest.raises(DataError, match=r"corpus\.jsonl: not a regular file"):
        ensure_dataset("d", tmp_path, url="http://127.0.0.1:9/never.zip")


@pytest.fixture
def hydra_ctx():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from readaptir.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_job_folder_names_fit_the_file_system_with_the_longest_names(hydra_ctx):
    """model.name and dataset.name of 128 characters each are valid, but Hydra's run folder joins both
    behind the time: 266 bytes, "File name too long" as a traceback before the cell ran."""
    from hydra import compose
    from omegaconf import OmegaConf

    long = "n" * 128
    cfg = compose(config_name="config", overrides=[f"model.name={long}", f"dataset.name={long}",
                  f"adapter.name={long}"], return_hydra_config=True)  # fmt: skip
    OmegaConf.update(cfg, "hydra.job.num", 12345, force_add=True)
    for key in ("hydra.run.dir", "hydra.sweep.subdir"):
        parts = Path(str(OmegaConf.select(cfg, key))).parts
        assert max(len(p.encode()) for p in parts) <= 255, (key, parts)


def test_a_results_folder_name_too_long_is_refused_before_any_model_is_built(
    hydra_ctx, tmp_path, monkeypatch
):
    """adapter.name of 128 characters is a valid name, but the variant folder `<adapter>-both-a0.5-b1-delta`
    is not: it was refused only after the cell had built its models."""
    from hydra import compose

    from readaptir.grid import cell
    from readaptir.paths import PathError

    def built(*_a, **_k):
        raise AssertionError("a model was built before the results folder was checked")

    monkeypatch.setattr(cell, "resolve_models", built)
    cfg = compose(config_name="config", overrides=[f"adapter.name={'n' * 128}", f"paths.cache_dir={tmp_path}",
                  f"paths.results_dir={tmp_path}/results", "tracking.backend=none"])  # fmt: skip
    with pytest.raises(PathError, match=r"adapter\.name"):
        cell.run_cell(cell.CellConfig.from_hydra(cfg), tmp_path)


@pytest.mark.parametrize("title", [{"a": 1}, [1, 2], 5])
def test_a_title_that_is_not_text_is_refused(tmp_path, title):
    """It was encoded as its Python repr ("{'a': 1}"); null or missing still means no title."""
    rows = [
        {"_id": "a", "title": None, "text": "x"},
        {"_id": "b", "text": "y"},
        {"_id": "c", "title": title, "text": "z"},
    ]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"corpus\.jsonl:3: field 'title'"):
        list(iter_corpus(tmp_path))
    assert [p.title for p in iter_corpus(tmp_path, doc_ids={"a", "b"})] == ["", ""]


def test_the_dataset_check_refuses_a_title_that_is_not_text(tmp_path):
    """The title was only checked when the corpus was encoded, after the models were built."""
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "d1", "text": "x"}\n{"_id": "d2", "title": [1], "text": "y"}\n'
    )
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    _qrels(tmp_path, "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: field 'title'"):
        check_dataset(tmp_path, "test")
