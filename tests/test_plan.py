"""The grid plan: counts of cells, shared adapters and encodings, from config alone."""

from __future__ import annotations

from readaptir.grid.plan import grid_configs, summarize


def test_full_paper_grid_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("READAPTIR_CACHE", str(tmp_path))  # empty results store: nothing done
    text = summarize(grid_configs(["repllama", "e5-mistral"], [
        "msmarco", "fever", "climate-fever", "hotpotqa", "dbpedia-entity", "nq", "quora", "webis-touche2020",
        "trec-covid", "fiqa", "scidocs", "arguana", "scifact", "nfcorpus",
    ], ["in-domain", "msmarco"], ["both", "without", "with"]))  # fmt: skip
    lines = text.splitlines()
    # adapter=msmarco × ablation=with/without × 13 BeIR sets × 2 models are undefined.
    assert lines[0] == "cells: 168 (116 applicable, 52 not applicable, 0 already done)"
    # Per model: 14 datasets × 3 subsets = 42 in-domain adapters, minus Climate-FEVER's `both` (FEVER's);
    # the MS-MARCO adapter is MS-MARCO's in-domain one, shared by all 13 BeIR cells: 41 × 2 = 82.
    assert lines[1].startswith("unique knowledge adapters: 82 ")
    # Base embeddings once per model × dataset; readapted once per (adapter, dataset).
    assert lines[2].startswith("unique corpus encodings: 138 (28 base, 110 readapted;")
    assert "GPU-hours" in lines[3]


def test_packed_batching_cuts_the_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("READAPTIR_CACHE", str(tmp_path))

    def hours(*overrides):
        cfgs = grid_configs(["repllama"], ["scifact", "fiqa"], ["in-domain"], ["both"], list(overrides))
        line = summarize(cfgs).splitlines()[1]
        return float(line.split("≈")[2].split(" GPU-hours")[0].replace(",", ""))

    assert hours("train.batching=packed") < hours() / 5
