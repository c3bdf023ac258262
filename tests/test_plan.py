"""The grid plan: counts of cells, shared adapters and encodings, token-scaled estimates, from config alone."""

from __future__ import annotations

import itertools
import re

import pytest

from readaptir.grid.plan import (
    PAPER_EXPERIMENTS,
    describe_cell,
    experiment_cells,
    grid_configs,
    main,
    plan_cell,
    summarize,
)

PAPER_DATASETS = [
    "msmarco", "fever", "climate-fever", "hotpotqa", "dbpedia-entity", "nq", "quora", "webis-touche2020",
    "trec-covid", "fiqa", "scidocs", "arguana", "scifact", "nfcorpus",
]  # fmt: skip


@pytest.fixture(autouse=True)
def empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("READAPTIR_CACHE", str(tmp_path / "cache"))  # empty results store: nothing done
    monkeypatch.setenv("READAPTIR_DATA", str(tmp_path / "no-data"))  # plans need no data


def _hours(line: str) -> float:
    """The last "≈N GPU-h" of a line, in hours."""
    value, unit = re.findall(r"≈([\d,.]+) GPU-(h|min)", line)[-1]
    return float(value.replace(",", "")) / (60 if unit == "min" else 1)


def test_full_paper_grid_plan():
    cells = itertools.product(
        ["repllama", "e5-mistral"], PAPER_DATASETS, ["in-domain", "msmarco"], ["both", "without", "with"]
    )
    lines = summarize(grid_configs(cells)).splitlines()
    # adapter=msmarco × ablation=with/without × 13 BeIR sets × 2 models are undefined.
    assert lines[0] == "cells: 168 (116 applicable, 52 not applicable, 0 already done)"
    # Per model: 14 datasets × 3 subsets = 42 in-domain adapters, minus Climate-FEVER's `both` (FEVER's);
    # the MS-MARCO adapter is MS-MARCO's in-domain one, shared by all 13 BeIR cells: 41 × 2 = 82.
    assert lines[1].startswith("unique knowledge adapters: 82 (82 to train")
    # Base embeddings once per model × dataset; readapted once per (adapter, dataset).
    assert lines[2].startswith("unique corpus encodings: 138 (28 base, 110 readapted; 138 to build;")
    assert _hours(lines[3]) == pytest.approx(_hours(lines[1]) + _hours(lines[2]), rel=0.01)


def test_paper_tables_are_the_experiments_cells():
    n = {e: len(experiment_cells(e)) for e in PAPER_EXPERIMENTS}
    assert n == {"table1": 28, "table2": 24, "table3": 52}
    assert experiment_cells("figure2") == experiment_cells("table1")
    paper = set().union(*(experiment_cells(e) for e in PAPER_EXPERIMENTS))
    # Table 2's `both` cells and Table 3's in-domain cells are Table 1's.
    assert len(paper) == 28 + 16 + 26


def test_make_plan_headline_is_the_paper_then_the_full_product(capsys):
    main([])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("The paper's Tables 1–3 and Figure 2")
    assert out[1].strip() == "cells: 70 (70 applicable, 0 not applicable, 0 already done)"
    # 26 in-domain `both` adapters (FEVER's serves Climate-FEVER) + 16 Table-2 subsets; MS-MARCO's is Table 1's.
    assert out[2].strip().startswith("unique knowledge adapters: 42 (42 to train")
    paper_total = _hours(out[4])
    full = next(line for line in out if line.startswith("Full product"))
    assert "168 cells, 116 applicable" in full and _hours(full) > 1.5 * paper_total > 1000


def test_packed_batching_cuts_the_estimate():
    def hours(*overrides):
        cells = [("repllama", d, "in-domain", "both") for d in ("scifact", "fiqa")]
        return _hours(summarize(grid_configs(cells, overrides)).splitlines()[1])

    assert hours("train.batching=packed") < hours() / 5


def _cell(*coords, overrides=()):
    return next(iter(grid_configs([coords], overrides)))


def test_ablation_subsets_are_sized_from_the_judged_passages():
    both, without, with_ = (
        plan_cell(_cell("repllama", "scifact", "in-domain", a)).train for a in ("both", "without", "with")
    )
    # SciFact ships 283 judged-relevant test passages among its 5,183 (conf/dataset/scifact.yaml).
    assert (both.passages, without.passages, with_.passages) == (5183, 5183 - 283, 283)
    assert without.tokens + with_.tokens == pytest.approx(both.tokens, abs=2)
    # Climate-FEVER's subsets filter FEVER's corpus by Climate-FEVER's own qrels.
    cf = plan_cell(_cell("repllama", "climate-fever", "in-domain", "with")).train
    assert cf.passages == _cell("repllama", "climate-fever", "in-domain", "with").dataset.judged_passages


def test_estimates_scale_with_tokens_not_passages():
    quora = plan_cell(_cell("repllama", "quora", "in-domain", "both"))  # ≈ 11 words per passage
    touche = plan_cell(_cell("repllama", "webis-touche2020", "in-domain", "both"))  # ≈ 292
    per_passage = [p.hours("adapter") / p.train.passages for p in (quora, touche)]
    per_token = [p.hours("adapter") / p.train.tokens for p in (quora, touche)]
    assert per_passage[1] > 10 * per_passage[0]
    assert per_token[0] == pytest.approx(per_token[1])
    # Encoding is priced too, for the base retriever as for the readapted one, truncated at 512 tokens.
    assert quora.hours("base_index") == quora.hours("ra_index") > 0
    short = plan_cell(
        _cell("repllama", "webis-touche2020", "in-domain", "both", overrides=["model.passage_max_len=64"])
    )
    assert short.encode.tokens == 64 * short.encode.passages


def test_cell_plan_marks_products_an_earlier_cell_plans():
    fever = plan_cell(_cell("repllama", "fever", "in-domain", "both"))
    text = describe_cell(_cell("repllama", "climate-fever", "in-domain", "both"), [fever])
    adapter = next(line for line in text.splitlines() if "train dora adapter on fever" in line)
    assert "planned above for repllama × fever × in-domain × both (counted once)" in adapter
    alone = describe_cell(_cell("repllama", "climate-fever", "in-domain", "both"))
    assert "GPU-h" in next(line for line in alone.splitlines() if "train dora adapter" in line)


def test_measured_rates_replace_the_configured_ones(tmp_path, monkeypatch):
    import json

    from readaptir.grid import workload

    monkeypatch.setenv("READAPTIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(workload, "RESULTS", tmp_path / "results")

    def total(*overrides) -> str:
        workload.measured_rates.cache_clear()
        cells = [("repllama", "msmarco", "in-domain", "both")]
        return summarize(grid_configs(cells, ["train.batching=packed", *overrides])).splitlines()[3]

    configured = total()
    assert "in `estimates:` (train 74.5 passages/s with packed batching, encode 404 passages/s" in configured
    (tmp_path / "results").mkdir()
    for name, gpu, shape, packed in (("a", "NVIDIA H200", "llama2-7b", 149.0), ("b", "NVIDIA H100 80GB HBM3",
                                     "llama2-7b", 120.0), ("c", "NVIDIA H200", "tiny", 9999.0)):  # fmt: skip
        rates = {"train_passages_per_s": {"paper": 8.0, "packed": packed}, "encode_passages_per_s": 800.0}
        meta = {"gpu": gpu, "shape": shape, "date": "2026-01-01 00:00:00", "rates": rates}
        (tmp_path / "results" / f"bench_gpu-{name}.json").write_text(json.dumps({"meta": meta, "rows": []}))
    measured = total()
    assert (
        "measured in bench_gpu-a.json (train 149.0 passages/s with packed batching, encode 800.0" in measured
    )
    assert "measured in bench_gpu-b.json (train 120.0" in total("estimates.gpu=H100")
    assert total("estimates.gpu=A100") == configured  # no report from that GPU: the configured rates
    hours = [
        float(line.split("total ≈")[1].split(" GPU-h")[0].replace(",", "")) for line in (configured, measured)
    ]
    assert hours[1] < hours[0]


def test_a_pinned_hub_revision_is_part_of_every_key(monkeypatch, tmp_path):
    """``org/name@<commit>`` pins a Hub model: keys change with the pin, the download asks for it, and the
    adapter's recorded base still compares equal to the plain id."""
    from readaptir.models import hub
    from readaptir.store.identity import model_identity

    rev = "01c7f73d771dfac7d292323805ebc428287df4f9"
    plain = plan_cell(_cell("repllama", "scifact", "in-domain", "both")).keys
    pinned = plan_cell(
        _cell(
            "repllama",
            "scifact",
            "in-domain",
            "both",
            overrides=[f"model.pretrained=meta-llama/Llama-2-7b-hf@{rev}"],
        )
    ).keys
    assert plain.keys() == pinned.keys()
    assert all(plain[k] != pinned[k] for k in ("adapter", "base_weights", "base_run", "readapted", "result"))
    assert model_identity(f"org/name@{rev}") == f"org/name@{rev}" != model_identity("org/name")
    assert hub.hub_id(f"meta-llama/Llama-2-7b-hf@{rev}") == "meta-llama/Llama-2-7b-hf"
    asked = {}

    def fake_download(repo, revision=None, allow_patterns=None):
        asked.update(repo=repo, revision=revision)
        return str(tmp_path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    assert hub.resolve_model_dir(f"org/name@{rev}") == tmp_path
    assert asked == {"repo": "org/name", "revision": rev}
    hub.resolve_model_dir("org/name")
    assert asked == {"repo": "org/name", "revision": None}


def test_stages_of_table3_build_what_its_sweep_needs(capsys):
    """Stage 1 is exactly Table 3's adapters: the MS-MARCO one per model and the in-domain ones (FEVER's
    serving Climate-FEVER), never MS-MARCO's with/without subsets; then base encodings, then the cells."""
    from readaptir.grid.plan import experiment_cells

    main(["--experiment", "table3", "hydra/launcher=slurm"])
    out = capsys.readouterr().out.splitlines()
    commands = [line.split() for line in out if line.strip().startswith("readaptir -m")]
    assert all(c[2:4] == ["experiment=table3", "hydra/launcher=slurm"] for c in commands)

    def cells(stage):
        found = set()
        for c in commands:
            if stage in c:
                g = dict(a.split("=", 1) for a in c if "=" in a)
                found |= set(
                    itertools.product(*(g[k].split(",") for k in ("model", "dataset", "adapter", "ablation")))
                )
        return found

    adapters = cells("run.stage=adapters")
    assert len(adapters) == 2 + 2 * 12 and all(c[3] == "both" for c in adapters)
    assert {c for c in adapters if c[2] == "msmarco"} == {("repllama", "fever", "msmarco", "both"),
                                                           ("e5-mistral", "fever", "msmarco", "both")}  # fmt: skip
    assert not any(c[1] == "climate-fever" for c in adapters)  # FEVER's adapter serves it
    assert len(cells("run.stage=base")) == 2 * 13  # one per model × dataset
    later = cells("run.on_busy=exit")  # the cells, in two waves: the shared readapted report first
    assert later == set(experiment_cells("table3")) and len(later) == 52
    assert any("stage 1, adapters: 26 unique knowledge adapters to build" in line for line in out)


def test_readme_slurm_commands_are_what_make_plan_prints(capsys):
    from pathlib import Path

    main(["--experiment", "table3", "hydra/launcher=slurm"])
    printed = {line.strip() for line in capsys.readouterr().out.splitlines()}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Running the grid on SLURM")[1].split("\n### ")[0]
    shown = [line.split("#")[0].strip() for line in section.splitlines() if line.startswith("readaptir -m")]
    assert shown and all(line in printed for line in shown), shown
    assert sum(line.startswith("readaptir -m") for line in printed) == len(shown)


def test_config_dir_shadowed_by_a_packaged_name_is_warned(tmp_path):
    from readaptir.cli import shadowed_configs

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "repllama.yaml").write_text("name: repllama\n")
    (tmp_path / "model" / "my-retriever.yaml").write_text("name: my-retriever\n")
    lines = shadowed_configs(["--config-dir", str(tmp_path), "model=repllama"])
    assert len(lines) == 1 and "model/repllama.yaml is ignored" in lines[0]
    assert shadowed_configs([f"--config-dir={tmp_path}"]) == lines


def test_report_defaults_to_the_configured_results_store(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "READAPTIR_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "readaptir.report", "table1", "--out", str(tmp_path / "t1")],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(tmp_path / "cache" / "results") in out.stderr and (tmp_path / "t1" / "table1.md").is_file()
