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


def test_measured_rates_replace_the_configured_ones(tmp_path, monkeypatch):
    import json

    from readaptir.grid import plan

    monkeypatch.setenv("READAPTIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(plan, "RESULTS", tmp_path / "results")

    def total(*overrides) -> str:
        plan.measured_rates.cache_clear()
        over = ["train.batching=packed", *overrides]
        cfgs = grid_configs(["repllama"], ["msmarco"], ["in-domain"], ["both"], over)
        return summarize(cfgs).splitlines()[3]

    configured = total()
    assert "in `estimates:` (train 74.5 passages/s, encode 404 passages/s)" in configured
    (tmp_path / "results").mkdir()
    for name, gpu, shape, packed in (("a", "NVIDIA H200", "llama2-7b", 149.0), ("b", "NVIDIA H100 80GB HBM3",
                                     "llama2-7b", 120.0), ("c", "NVIDIA H200", "tiny", 9999.0)):  # fmt: skip
        rates = {"train_passages_per_s": {"paper": 8.0, "packed": packed}, "encode_passages_per_s": 800.0}
        meta = {"gpu": gpu, "shape": shape, "date": "2026-01-01 00:00:00", "rates": rates}
        (tmp_path / "results" / f"bench_gpu-{name}.json").write_text(json.dumps({"meta": meta, "rows": []}))
    measured = total()
    assert "measured in bench_gpu-a.json (train 149.0 passages/s, encode 800.0 passages/s)" in measured
    assert "measured in bench_gpu-b.json (train 120.0" in total("estimates.gpu=H100")
    assert total("estimates.gpu=A100") == configured  # no report from that GPU: the configured rates
    hours = [
        float(line.split("≈")[1].split(" GPU-hours")[0].replace(",", "")) for line in (configured, measured)
    ]
    assert hours[1] < hours[0]
