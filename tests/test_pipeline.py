"""The grid end to end: run.py sweeps on tiny models, artifact reuse, keys, not-applicable cells."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from readaptir.config import CellConfig
from readaptir.data.beir import RESOURCES
from readaptir.grid.cell import run_cell
from readaptir.grid.keys import cell_keys
from readaptir.grid.plan import plan_cell
from readaptir.models.hub import resolve_models
from readaptir.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]


def make_data_dir(root: Path) -> Path:
    """Small BeIR-format datasets named like paper datasets, cut from the toy set."""
    toy = RESOURCES / "toy"
    lines = (toy / "corpus.jsonl").read_text().splitlines()
    parts = {"scifact": lines[:120], "nfcorpus": lines[120:], "msmarco": lines[::2], "fever": lines[1::2],
             "climate-fever": lines[1::2]}  # Climate-FEVER's corpus is FEVER's, as in BeIR  # fmt: skip
    for name, part in parts.items():
        d = root / name
        (d / "qrels").mkdir(parents=True)
        (d / "corpus.jsonl").write_text("\n".join(part) + "\n")
        shutil.copy(toy / "queries.jsonl", d / "queries.jsonl")
        ids = {json.loads(x)["_id"] for x in part}
        rows = [
            r for r in (toy / "qrels" / "test.tsv").read_text().splitlines()[1:] if r.split("\t")[1] in ids
        ]
        split = "dev" if name == "msmarco" else "test"
        (d / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("beir"))


def run_py(args: list[str], env_extra: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true", **env_extra}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


FAST = [
    "train.max_passages=24",
    "train.batch_size=4",
    "tracking.backend=none",
    "encode.max_batch_size=64",
    "search.top_k=100",
]


@contextlib.contextmanager
def cell_factory(data_dir: Path):
    """``make(cache, *overrides)`` → a validated CellConfig (tiny-llama × scifact on ``data_dir``, FAST)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("READAPTIR_DATA", str(data_dir))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):

        def make(cache: Path, *overrides: str) -> CellConfig:
            cfg = compose(config_name="config", overrides=["dataset=scifact", f"paths.cache_dir={cache}",
                                                           "tracking.backend=none", *FAST, *overrides])  # fmt: skip
            spec = CellConfig.from_hydra(cfg)
            resolve_models(spec.model)
            return spec

        try:
            yield make
        finally:
            GlobalHydra.instance().clear()
            mp.undo()


@pytest.mark.slow
def test_sweep_writes_results_then_reuses_everything(tmp_path, data_dir):
    env = {"READAPTIR_DATA": str(data_dir), "READAPTIR_CACHE": str(tmp_path / "cache")}
    args = [
        "-m",
        "model=tiny-llama",
        "dataset=scifact,nfcorpus",
        "ablation=both,without",
        f"hydra.sweep.dir={tmp_path}/sweep1",
        *FAST,
    ]
    first = run_py(args, env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    results = sorted((tmp_path / "sweep1").rglob("results.json"))
    assert len(results) == 4
    for r in results:
        res = json.loads(r.read_text())
        assert res["status"] == "done" and res["demo"] is True
        for part in ("base", "readapted", "delta"):
            assert 0.0 <= res["base"]["NDCG@10"] <= 1.0 and "NDCG@10" in res[part]
        assert res["significance"]["metric"] == "NDCG@10" and "p_value" in res["significance"]
        assert res["delta_report"] and res["timings"]["train_adapter"] >= 0
        assert any(not e["reused"] and e["kind"] == "adapter" for e in res["artifact_events"])
    # Same sweep again: every artifact reused, nothing trained or encoded.
    second = run_py([*args[: -len(FAST) - 1], f"hydra.sweep.dir={tmp_path}/sweep2", *FAST], env, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    again = sorted((tmp_path / "sweep2").rglob("results.json"))
    assert len(again) == 4
    for r in again:
        events = json.loads(r.read_text())["artifact_events"]
        assert events and all(e["reused"] for e in events), events
    before = {
        json.loads(r.read_text())["cell"]["dataset"]
        + json.loads(r.read_text())["cell"]["ablation"]: json.loads(r.read_text())["readapted"]
        for r in results
    }
    after = {
        json.loads(r.read_text())["cell"]["dataset"]
        + json.loads(r.read_text())["cell"]["ablation"]: json.loads(r.read_text())["readapted"]
        for r in again
    }
    assert before == after


def test_not_applicable_cell_exits_cleanly(tmp_path, data_dir):
    env = {"READAPTIR_DATA": str(data_dir), "READAPTIR_CACHE": str(tmp_path / "cache")}
    out = run_py(
        [
            "model=tiny-llama",
            "dataset=scifact",
            "adapter=msmarco",
            "ablation=with",
            f"hydra.run.dir={tmp_path}/job",
            *FAST,
        ],
        env,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "job" / "results.json").read_text())
    assert res["status"] == "not_applicable" and "msmarco" in res["reason"]
    assert res["cell"] == {
        "model": "tiny-llama",
        "dataset": "scifact",
        "adapter": "msmarco",
        "ablation": "with",
        "alpha": 0.5,
        "beta": 1.0,
        "knowledge_scaling": "delta",
    }
    assert not (tmp_path / "cache" / "adapter").exists()  # nothing trained


def test_plan_mode_loads_nothing(tmp_path):
    # planned here even with the SLURM launcher named: a plan must not submit a job per cell
    out = run_py(
        [
            "-m",
            "model=repllama",
            "dataset=glob(*)",
            "hydra/launcher=slurm",
            "run.plan=true",
            f"hydra.sweep.dir={tmp_path}/s",
        ],  # fmt: skip
        {"READAPTIR_DATA": str(tmp_path / "nodata"), "READAPTIR_CACHE": str(tmp_path / "cache")},
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    plans = [line for line in out.stdout.splitlines() if line.startswith("[plan]")]
    assert len(plans) == 14 and all("repllama" in p for p in plans)
    assert "train dora adapter on scifact" in out.stdout
    assert not (tmp_path / "cache").exists() and not (tmp_path / "nodata").exists()
    assert not (tmp_path / "s").exists()  # a plan writes no job folder, even where the user points Hydra
    # The sweep ends with its total: Climate-FEVER's adapter is FEVER's, counted once (13 of 14 cells).
    total = out.stdout.split("[plan total]")[1]
    assert "cells: 14 (14 applicable" in total and "unique knowledge adapters: 13 (13 to train" in total
    fever = next(line for line in out.stdout.splitlines() if "train dora adapter on fever" in line)
    assert "planned above for repllama × climate-fever × in-domain × both (counted once)" in out.stdout, fever


def test_missing_key_is_refused_before_loading(tmp_path):
    out = run_py(
        ["model.retriever=???", f"hydra.run.dir={tmp_path}/j"],
        {"READAPTIR_CACHE": str(tmp_path / "c")},
        tmp_path,
    )
    assert out.returncode != 0
    assert "model.retriever" in out.stderr and not (tmp_path / "c").exists()


@pytest.fixture()
def compose_cell():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        yield lambda *o: compose(config_name="config", overrides=list(o))
    GlobalHydra.instance().clear()


def _keys(compose_cell, *overrides):
    cfg = CellConfig.from_hydra(compose_cell(*overrides))
    resolve_models(cfg.model)  # the tiny stand-ins exist, as after any first run
    return cell_keys(cfg, Runtime.detect(cfg.encode.dtype, cfg.model.torch_dtype))


def test_adapter_keys(tmp_path, data_dir, compose_cell, monkeypatch):
    monkeypatch.setenv("READAPTIR_DATA", str(data_dir))
    cache = tmp_path / "cache"
    c = [f"paths.cache_dir={cache}"]
    sci = _keys(compose_cell, "dataset=scifact", "adapter=msmarco", *c)["adapter"]
    nf = _keys(compose_cell, "dataset=nfcorpus", "adapter=msmarco", *c)["adapter"]
    assert sci == nf  # one MS-MARCO adapter serves every BeIR cell of a model
    assert _keys(compose_cell, "dataset=scifact", *c)["adapter"] != sci  # in-domain: scifact's corpus
    assert _keys(compose_cell, "dataset=scifact", "adapter=msmarco", "adapter.r=16", *c)["adapter"] != sci
    assert _keys(compose_cell, "dataset=scifact", "adapter=msmarco", "train.lr=1e-4", *c)["adapter"] != sci
    same = [
        ("tracking.backend=none",),
        ("tracking.project=other",),
        ("train.checkpoint_every=7",),
        ("train.log_every=1",),
        ("paths.results_dir=/elsewhere",),
        ("readapt.alpha=0.3",),
    ]
    for o in same:
        assert _keys(compose_cell, "dataset=nfcorpus", "adapter=msmarco", *c, *o)["adapter"] == sci, o
    # Another cache folder (the tiny models rebuilt elsewhere): keys follow contents, not paths.
    other = _keys(compose_cell, "dataset=scifact", "adapter=msmarco", f"paths.cache_dir={tmp_path / 'other'}")
    assert other["adapter"] == sci
    # α changes the readapted weights and everything below them, never the adapter or the base run.
    a3 = _keys(compose_cell, "dataset=scifact", "readapt.alpha=0.3", *c)
    a5 = _keys(compose_cell, "dataset=scifact", *c)
    assert a3["base_run"] == a5["base_run"] and a3["adapter"] == a5["adapter"]
    assert all(a3[k] != a5[k] for k in ("readapted", "ra_index", "ra_run", "result"))


def test_attention_backend_and_dtype_enter_the_keys(tmp_path, data_dir, compose_cell, monkeypatch):
    """Packed rows through the fused kernel and padded SDPA batches round differently: other products.
    Base and RA of a cell share one Runtime, so RA − Base never mixes the two."""
    import torch

    monkeypatch.setenv("READAPTIR_DATA", str(data_dir))

    def keys(batching: str, varlen: bool, dtype=torch.bfloat16) -> dict[str, str]:
        over = ("dataset=scifact", f"train.batching={batching}", f"paths.cache_dir={tmp_path}")
        cfg = CellConfig.from_hydra(compose_cell(*over))
        resolve_models(cfg.model)
        precision = "bf16" if dtype == torch.bfloat16 else "fp32"
        return cell_keys(cfg, Runtime(0, 1, torch.device("cpu"), dtype, precision, varlen))

    sdpa, fused = keys("packed", False), keys("packed", True)
    assert all(sdpa[k] != fused[k] for k in ("adapter", "base_index", "ra_index", "base_run", "ra_run"))
    assert keys("paper", False)["adapter"] == keys("paper", True)["adapter"]  # paper batches: always SDPA
    # float32 never takes the fused kernel: the backend follows the dtype, and the dtype is in the key
    assert (
        keys("packed", True, torch.float32)["base_index"]
        == keys("packed", False, torch.float32)["base_index"]
    )
    assert keys("packed", False, torch.float32)["base_index"] != sdpa["base_index"]


PLAN_CELLS = [
    ("dataset=scifact",),
    ("dataset=scifact", "ablation=without"),
    ("dataset=scifact", "adapter=msmarco"),
    ("dataset=nfcorpus", "adapter=msmarco"),
    ("dataset=fever",),
    ("dataset=climate-fever",),
]


@pytest.mark.slow
def test_plan_and_run_agree_on_every_key(tmp_path, data_dir, compose_cell, monkeypatch):
    """The keys plan mode shows are the keys a run builds, cell by cell, shared products included."""
    monkeypatch.setenv("READAPTIR_DATA", str(data_dir))
    c = [f"paths.cache_dir={tmp_path / 'cache'}", "tracking.backend=none", *FAST]
    records = {}
    for cell in PLAN_CELLS:
        cfg = CellConfig.from_hydra(compose_cell(*cell, *c))
        resolve_models(cfg.model)
        planned = plan_cell(cfg).keys
        record = run_cell(cfg, tmp_path / "job" / "-".join(cell))
        assert record.status == "done" and record.artifacts == planned, cell
        assert plan_cell(cfg).missing == frozenset()  # after the run, plan finds every product
        records[cell] = record.artifacts
    by = {
        cell[0].split("=")[1] + ("-ms" if "adapter=msmarco" in cell else ""): k for cell, k in records.items()
    }
    assert by["scifact-ms"]["adapter"] == by["nfcorpus-ms"]["adapter"]  # the MS-MARCO adapter, reused
    assert by["fever"]["adapter"] == by["climate-fever"]["adapter"]  # FEVER's corpus, one adapter
    assert records[PLAN_CELLS[0]]["base_run"] == records[PLAN_CELLS[1]]["base_run"]  # ablation: same base


@pytest.mark.slow
def test_cell_under_two_process_launch(tmp_path):
    """`torchrun`/`accelerate launch` with 2 CPU processes: one DDP adapter, one results file, no deadlock."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "READAPTIR_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "run.py"), "tracking.backend=none", "train.max_passages=32", f"hydra.run.dir={tmp_path}/job"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "on 2 process(es)" in out.stderr + out.stdout
    res = json.loads((tmp_path / "job" / "results.json").read_text())
    assert res["status"] == "done" and res["train"]["world_size"] == 2
    assert len(list((tmp_path / "cache" / "adapter").iterdir())) == 1
    cell = tmp_path / "cache" / "results" / "tiny-llama" / "toy" / "in-domain-both-a0.5-b1-delta"
    assert list((tmp_path / "cache" / "results").rglob("*.json")) == [
        cell / f"{res['artifacts']['result']}.json"
    ]


def test_unreachable_hub_model_is_one_clear_line(tmp_path, data_dir):
    env = {"READAPTIR_DATA": str(data_dir), "READAPTIR_CACHE": str(tmp_path / "c"), "HF_HUB_OFFLINE": "1"}
    out = run_py(["model=repllama", "dataset=scifact", "tracking.backend=none", f"hydra.run.dir={tmp_path}/j"],
                 env, tmp_path)  # fmt: skip
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("readaptir: error: model.pretrained=meta-llama/Llama-2-7b-hf")
    assert "hf auth login" in last
