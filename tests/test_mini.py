"""The mini reproduction's parts: NanoBEIR-style subsets, a cell on a subset, the mini table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from readaptir.config import CellConfig, SubsetSpec
from readaptir.data.beir import RESOURCES, iter_corpus, load_qrels, load_queries
from readaptir.data.nano import write_subset
from readaptir.grid.cell import run_cell
from readaptir.grid.plan import plan_cell
from readaptir.grid.record import CellCoords, CellRecord
from readaptir.report.mini import mini_table
from readaptir.report.results import CellResult, Results, Selection

REPO = Path(__file__).resolve().parents[1]


def _check_subset(root: Path, source: Path, spec: SubsetSpec) -> None:
    qrels, full = load_qrels(root, "test"), load_qrels(source, "test")
    docs = [p.doc_id for p in iter_corpus(root)]
    assert len(docs) == len(set(docs)) <= spec.passages and len(qrels) <= spec.queries
    assert set(load_queries(root)) == set(qrels)
    for q, judged in qrels.items():
        assert judged == {d: s for d, s in full[q].items() if d in set(docs)}  # every judgement kept
        assert any(s > 0 for s in judged.values())


def test_toy_subset_is_deterministic(tmp_path):
    spec = SubsetSpec(of="toy", queries=6, passages=20, relevant_per_query=1, seed=3)
    a = write_subset(RESOURCES / "toy", tmp_path / "a", spec, "test")
    write_subset(RESOURCES / "toy", tmp_path / "b", spec, "test")
    for f in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "subset.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (a["n_queries"], a["n_passages"]) == (6, 20)
    _check_subset(tmp_path / "a", RESOURCES / "toy", spec)
    other = write_subset(RESOURCES / "toy", tmp_path / "c", spec.model_copy(update={"seed": 4}), "test")
    assert (tmp_path / "c" / "queries.jsonl").read_text() != (tmp_path / "a" / "queries.jsonl").read_text()
    assert other["n_passages"] == 20


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_real_subsets(beir_dir, tmp_path, name):
    spec = SubsetSpec(of=name)
    about = write_subset(beir_dir / name, tmp_path / name, spec, "test")
    assert (about["n_queries"], about["n_passages"]) == (30, 200)
    _check_subset(tmp_path / name, beir_dir / name, spec)


def test_cell_on_a_subset(tmp_path):
    """dataset=mini/scifact cuts its subset from paths.data_dir/scifact into the cache, once."""
    data = tmp_path / "data"
    shutil.copytree(RESOURCES / "toy", data / "scifact")  # stands in for SciFact
    overrides = ["model=tiny-llama", "dataset=mini/scifact", "dataset.subset.passages=40", "train.max_passages=8",
                 "tracking.backend=none", "search.top_k=20", f"paths.data_dir={data}",
                 f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = CellConfig.from_hydra(compose(config_name="config", overrides=overrides))
    GlobalHydra.instance().clear()
    record = run_cell(cfg, tmp_path / "job")
    assert record.status == "done" and record.cell.dataset == "scifact-mini"
    subsets = list((tmp_path / "cache" / "dataset").glob("dataset-*"))
    assert len(subsets) == 1 and (subsets[0] / "subset.json").is_file()
    assert record.artifacts == plan_cell(cfg).keys and not plan_cell(cfg).missing


def _record(
    dataset: str, ablation: str, alpha: float, base: float, ra: float, untrained: float
) -> CellResult:
    coords = CellCoords(model="smollm2", dataset=dataset, adapter="in-domain", ablation=ablation, alpha=alpha,
                        beta=1.0)  # fmt: skip
    rec = CellRecord(cell=coords, base={"NDCG@10": base}, readapted={"NDCG@10": ra}, untrained={"NDCG@10": untrained},
                     significance={"metric": "NDCG@10", "p_value": 0.01 if ablation == "with" else 0.5})  # fmt: skip
    rec.set_metrics(rec.base, rec.readapted)
    return CellResult(rec)


def test_mini_table_has_an_alpha_column_and_the_untrained_model():
    cells = [_record("scifact", ab, a, 0.5, 0.5 + a / 10 + i / 100, 0.04)
             for a in (0.25, 1.0) for i, ab in enumerate(("both", "without", "with"))]  # fmt: skip
    cells.append(_record("nfcorpus", "both", 0.5, 0.3, 0.29, 0.06))
    t = mini_table(Results(cells), ["smollm2"], ["scifact", "nfcorpus"], Selection())
    rows = {tuple(labels): [c.text() for c in cells] for labels, cells in t.rows}
    assert list(rows) == [
        ("smollm2", "scifact", "0.25"),
        ("smollm2", "scifact", "1"),
        ("smollm2", "nfcorpus", "0.5"),
    ]
    assert rows[("smollm2", "scifact", "1")] == ["4.0", "50.0", "60.0", "+10.0", "+11.0", "+12.0†"]
    assert rows[("smollm2", "nfcorpus", "0.5")] == ["6.0", "30.0", "29.0", "-1.0", "—", "—"]
    assert "Untrained" in t.markdown() and "| α |" in t.markdown()


def test_mini_table_skips_cells_whose_results_come_from_other_settings():
    """A store holding only another experiment's variant of a cell: the table shows it as missing (no crash)."""
    cells = [
        _record("scifact", "both", 0.5, 0.5, 0.55, 0.04),
        _record("nfcorpus", "both", 0.5, 0.3, 0.29, 0.06),
    ]
    for c in cells:
        c.record.variant = "variant-of-another-experiment"
    results = Results(
        cells, expect=lambda key: "variant-of-this-experiment" if key[1] == "nfcorpus" else None
    )
    assert [c.dataset for c in results] == ["scifact"]
    t = mini_table(results, ["smollm2"], ["scifact", "nfcorpus"], Selection())
    rows = {tuple(labels): [c.text() for c in cells] for labels, cells in t.rows}
    assert rows[("smollm2", "nfcorpus", "0.5")] == ["—", "—", "—", "—", "—", "—"]
    assert rows[("smollm2", "scifact", "0.5")][1:3] == ["50.0", "55.0"]


def test_mini_table_on_subsets_says_they_are_not_beir():
    """Subsets (a config with `subset:`) are named in the caption and notes; full datasets are not."""
    cells = [
        _record("scifact-mini", "both", 0.5, 0.5, 0.55, 0.04),
        _record("scifact", "both", 0.5, 0.5, 0.55, 0.04),
    ]
    sub = mini_table(Results(cells), ["smollm2"], ["scifact-mini"], Selection())
    full = mini_table(Results(cells), ["smollm2"], ["scifact"], Selection())
    caption = sub.latex().split(r"\caption{", 1)[1].split(r"\label", 1)[0]
    assert "not BeIR datasets" in caption and "30 scifact queries, 200 passages" in caption
    assert any("compare with no BeIR number" in n for n in sub.notes)
    assert "BeIR" not in full.markdown() and "BeIR" not in full.latex()
