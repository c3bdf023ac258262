"""A Table-3-shaped sweep in stages through Hydra's submitit launcher (local processes, parallel jobs).

2 tiny models × 3 datasets × {MS-MARCO adapter (shared by the 3 datasets), in-domain adapter}: the plan of
the sweep prints its stages; running exactly those commands builds every product once, no job ever
finds a product being built by another (it would record ``status: waiting``), and the results equal a
serial run's.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path

import pytest
from test_pipeline import FAST, make_data_dir, run_py

from readaptir.grid.launch import job_name
from readaptir.grid.stageplan import sweeps
from readaptir.models.tiny import ensure_tiny

SWEEP = ["model=tiny-llama,tiny-mistral", "dataset=scifact,nfcorpus,fever", "adapter=msmarco,in-domain",
         "ablation=both", *FAST]  # fmt: skip


def _cells(sweep_dir: Path) -> dict[tuple, dict]:
    out = {}
    for path in sweep_dir.rglob("results.json"):
        rec = json.loads(path.read_text())
        c = rec["cell"]
        out[c["model"], c["dataset"], c["adapter"], c["ablation"]] = rec
    return out


def test_sweeps_cover_exactly_the_cells():
    cells = [("a", "x", "msmarco", "both"), ("b", "x", "msmarco", "both"), ("a", "y", "in-domain", "both"),
             ("a", "z", "in-domain", "both"), ("b", "z", "in-domain", "both")]  # fmt: skip
    lines = sweeps(cells)
    assert lines == [
        "model=a,b dataset=x adapter=msmarco ablation=both",
        "model=a dataset=y adapter=in-domain ablation=both",
        "model=a,b dataset=z adapter=in-domain ablation=both",
    ]


def test_job_names_say_the_cell_and_stage():
    defaults = {"model": "repllama", "dataset": "scifact", "adapter": "msmarco", "ablation": "both"}
    assert job_name(["model=e5-mistral", "dataset=fiqa"], defaults) == "e5-mistral/fiqa/msmarco-both"
    assert (
        job_name(["run.stage=adapters"], {**defaults, "run.stage": "all"})
        == "repllama/scifact/msmarco-both:adapters"
    )


@pytest.mark.slow
def test_table3_shaped_sweep_in_stages_builds_each_shared_product_once(tmp_path):
    data = make_data_dir(tmp_path / "beir")
    staged, serial = tmp_path / "cache-staged", tmp_path / "cache-serial"
    for cache in (staged, serial):  # the tiny models exist before any job (a cluster has its weights)
        for family in ("llama", "mistral"):
            ensure_tiny(family, cache / "tiny")
    env = {"READAPTIR_DATA": str(data), "READAPTIR_CACHE": str(staged)}
    plan = run_py(["-m", *SWEEP, "hydra/launcher=local", "run.plan=true"], env, tmp_path)
    assert plan.returncode == 0, plan.stderr[-3000:]
    stages = plan.stdout.split("[plan stages]")[1]
    commands = [
        shlex.split(line)[2:] for line in stages.splitlines() if line.strip().startswith("readaptir -m")
    ]
    shared = [c for c in commands if any(a.startswith("run.stage=") for a in c)]
    assert {"run.stage=adapters", "run.stage=base"} <= {a for c in shared for a in c}
    assert commands[: len(shared)] == shared  # the shared products first, then the cells
    records: dict[str, list[dict]] = {"shared": [], "cells": []}
    for i, args in enumerate(commands):  # in the printed order, each once the one before is done
        out = run_py(["-m", *args, f"hydra.sweep.dir={tmp_path}/job{i}"], env, tmp_path)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        done = _cells(tmp_path / f"job{i}")
        ends = [line for line in out.stderr.splitlines() if line.startswith("[") and ": done" in line]
        assert len(ends) == len(done) > 0, out.stderr[-3000:]  # each cell's end line on the console
        records["shared" if args in shared else "cells"] += done.values()
    assert not list(tmp_path.rglob("%j")), "a submitit folder named after an unexpanded %j"
    every = records["shared"] + records["cells"]
    assert all(r["status"] == "done" for r in every), [r.get("reason") for r in every]  # none waited
    built = Counter(e["key"] for r in every for e in r["artifact_events"] if not e["reused"])
    assert built and max(built.values()) == 1, built  # every product built exactly once
    early = {e["key"] for r in records["shared"] for e in r["artifact_events"] if not e["reused"]}
    msmarco = {e["key"] for r in every for e in r["artifact_events"]
               if e["kind"] == "adapter" and r["cell"]["adapter"] == "msmarco"}  # fmt: skip
    assert len(msmarco) == 2 and msmarco <= early  # one per model, built in the first stage
    late = Counter(e["kind"] for r in records["cells"] for e in r["artifact_events"] if not e["reused"])
    assert not ({"adapter", "tokens"} & set(late)), late  # the cells reuse what the stages built
    final = {(r["cell"]["model"], r["cell"]["dataset"], r["cell"]["adapter"], r["cell"]["ablation"]): r
             for r in records["cells"]}  # fmt: skip

    one = run_py(["-m", *SWEEP, f"hydra.sweep.dir={tmp_path}/serial"], {**env, "READAPTIR_CACHE": str(serial)},
                 tmp_path)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    alone = _cells(tmp_path / "serial")
    assert len(final) == len(alone) == 12
    for cell, rec in alone.items():
        assert final[cell]["base"] == rec["base"] and final[cell]["readapted"] == rec["readapted"], cell
