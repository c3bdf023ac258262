"""A cache and a results store that never serve a wrong number, and sweeps that survive failures.

End to end on tiny models: damaged cache files are rebuilt (with the numbers of an undamaged run), every
setting keeps its own result, a failing cell is recorded while the sweep goes on, a product being built
elsewhere gives ``status: waiting``, shared products build as their own stage, a failing rank of a
two-process launch does not leave the other waiting.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline import FAST, REPO, cell_factory, make_data_dir, run_py

from readaptir.fs import HOST
from readaptir.grid.cell import run_cell
from readaptir.grid.plan import grid_configs, plan_cell, unique_adapters
from readaptir.grid.record import CellRecord
from readaptir.report.results import load_results
from readaptir.report.variants import expected_variants
from readaptir.store.artifacts import ArtifactStore
from readaptir.store.locks import ProductBusy


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("beir"))


@pytest.fixture()
def cell(data_dir):
    """``cell(cache, *overrides)`` → a validated CellConfig (tiny-llama × scifact by default)."""
    with cell_factory(data_dir) as make:
        yield make


def _flip(path: Path, at: int, n: int = 1) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, at + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _events(record: CellRecord) -> dict[str, bool]:
    return {e["key"]: e["reused"] for e in record.artifact_events}


@pytest.mark.slow
def test_damaged_cache_files_never_reach_the_results(tmp_path, cell, caplog):
    cfg = cell(tmp_path / "cache")
    first = run_cell(cfg, tmp_path / "j1")
    store, keys = ArtifactStore(tmp_path / "cache"), first.artifacts
    # Flipped bytes in the knowledge adapter (once: NaN weights, NaN embeddings, an empty run as "done"),
    # 4 KB of random bytes in the base embeddings and a base run cut at a line boundary.
    _flip(store.path(keys["adapter"]) / "adapter_model.safetensors", 3000, 64)
    emb = store.path(keys["base_index"]) / "embeddings.f16"
    data = bytearray(emb.read_bytes())
    data[4096:8192] = os.urandom(4096)
    emb.write_bytes(bytes(data))
    run = store.path(keys["base_run"]) / "run.trec"
    lines = run.read_text().splitlines(keepends=True)
    run.write_text("".join(lines[: len(lines) // 2]))
    with caplog.at_level("WARNING"):
        second = run_cell(cell(tmp_path / "cache"), tmp_path / "j2")
    assert second.status == "done" and second.artifacts == keys
    assert second.base == first.base and second.readapted == first.readapted  # the undamaged numbers
    rebuilt = {k for k, reused in _events(second).items() if not reused}
    assert {
        keys[n] for n in ("adapter", "base_index", "base_run", "readapted", "ra_index", "ra_run")
    } <= rebuilt
    warned = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "cache:" in r.getMessage()
    ]
    assert len(warned) == 3 and all("cannot be reused" in w for w in warned)  # the three damaged products
    # Deleting an adapter and running again retrains it; what was made from the old one is made again.
    import shutil

    shutil.rmtree(store.path(keys["adapter"]))
    third = run_cell(cell(tmp_path / "cache"), tmp_path / "j3")
    assert not _events(third)[keys["ra_run"]] and third.readapted == first.readapted


@pytest.mark.slow
def test_each_setting_keeps_its_own_result_and_tables_pick_the_experiments(tmp_path, cell, caplog):
    a = run_cell(cell(tmp_path / "cache"), tmp_path / "a")  # search.top_k=100 (FAST)
    b = run_cell(cell(tmp_path / "cache", "search.top_k=10"), tmp_path / "b")
    assert a.artifacts["result"] != b.artifacts["result"] and a.variant != b.variant
    stored = sorted((tmp_path / "cache" / "results").rglob("*.json"))
    assert len(stored) == 2 and {p.stem for p in stored} == {a.artifacts["result"], b.artifacts["result"]}
    assert a.base["Recall@100"] != b.base["Recall@100"]  # top 10 cannot recall what ranks 11-100 hold
    coords = ("tiny-llama", "scifact", "in-domain", "both")
    from readaptir.report.results import Selection

    with caplog.at_level("WARNING"):
        for overrides, want in ((["search.top_k=10"], b), (["search.top_k=100"], a)):
            res = load_results(
                tmp_path / "cache" / "results", expected_variants(None, [*FAST[:-1], *overrides])
            )
            got = res.get(*coords, Selection())
            assert got is not None and got.record.variant == want.variant
    assert "2 results in the store (they differ in search.top_k)" in caplog.text
    none = load_results(tmp_path / "cache" / "results", expected_variants(None, ["train.lr=0.1"]))
    assert none.get(*coords, Selection()) is None  # nothing from that config: missing, not another's number


@pytest.mark.slow
def test_sweep_runs_every_cell_records_failures_and_exits_nonzero(tmp_path, data_dir):
    bad = tmp_path / "data"
    import shutil

    shutil.copytree(data_dir, bad)
    corpus = bad / "nfcorpus" / "corpus.jsonl"
    lines = corpus.read_text().splitlines(keepends=True)
    corpus.write_text("".join(lines + lines[:3]))  # three doc ids twice
    env = {"READAPTIR_DATA": str(bad), "READAPTIR_CACHE": str(tmp_path / "cache")}
    out = run_py(["-m", "model=tiny-llama", "dataset=nfcorpus,scifact", "readapt.alpha=0.3,0.5",
                  f"hydra.sweep.dir={tmp_path}/sweep", *FAST], env, tmp_path)  # fmt: skip
    assert out.returncode == 1, out.stderr[-3000:]
    records = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "sweep").rglob("results.json")}
    assert len(records) == 4  # one folder per job: the α values no longer overwrite each other
    status = sorted((r["cell"]["dataset"], r["cell"]["alpha"], r["status"]) for r in records.values())
    assert status == [("nfcorpus", 0.3, "failed"), ("nfcorpus", 0.5, "failed"),
                      ("scifact", 0.3, "done"), ("scifact", 0.5, "done")]  # fmt: skip
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert all("corpus.jsonl: 3 doc id(s) occur more than once" in r["reason"] for r in failed)
    assert "4 cells: 2 done, 2 failed" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_product_built_elsewhere_gives_status_waiting(tmp_path, cell, data_dir):
    cfg = cell(tmp_path / "cache", "run.on_busy=exit")
    adapter = plan_cell(cfg).keys["adapter"]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a live builder
    try:
        lock = tmp_path / "cache" / "locks" / f"{adapter}.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"host": HOST, "pid": other.pid, "token": "t", "started": time.time()}))
        with pytest.raises(ProductBusy):
            run_cell(cfg, tmp_path / "job")
        rec = json.loads((tmp_path / "job" / "results.json").read_text())
        assert (
            rec["status"] == "waiting" and f"{adapter} is being built by {HOST}:{other.pid}" in rec["reason"]
        )
        env = {"READAPTIR_DATA": str(data_dir), "READAPTIR_CACHE": str(tmp_path / "cache")}
        out = run_py(
            ["dataset=scifact", "run.on_busy=exit", f"hydra.run.dir={tmp_path}/j2", *FAST], env, tmp_path
        )
        assert out.returncode == 75 and out.stderr.strip().splitlines()[-1].startswith("readaptir: waiting: ")
    finally:
        other.kill()


@pytest.mark.slow
def test_adapters_stage_builds_only_the_shared_products(tmp_path, cell):
    rec = run_cell(cell(tmp_path / "cache", "run.stage=adapters"), tmp_path / "s")
    assert rec.status == "done" and rec.stage == "adapters"
    kinds = sorted(
        p.name for p in (tmp_path / "cache").iterdir() if p.name not in ("tiny", "identity", "locks")
    )
    assert kinds == ["adapter", "tokens"] and not (tmp_path / "cache" / "results").exists()
    full = run_cell(cell(tmp_path / "cache"), tmp_path / "all")
    assert _events(full)[full.artifacts["adapter"]] is True  # the stage's adapter, reused


def test_plan_lists_one_cell_per_unique_adapter(tmp_path, monkeypatch):
    monkeypatch.setenv("READAPTIR_CACHE", str(tmp_path / "cache"))
    cells = itertools.product(["repllama"], ["scifact", "nfcorpus", "fever", "climate-fever"],
                              ["in-domain", "msmarco"], ["both"])  # fmt: skip
    cfgs = grid_configs(cells)
    assert unique_adapters(cfgs) == [
        "model=repllama dataset=scifact adapter=in-domain ablation=both",
        "model=repllama dataset=scifact adapter=msmarco ablation=both",  # shared by the 3 other BeIR cells
        "model=repllama dataset=nfcorpus adapter=in-domain ablation=both",
        "model=repllama dataset=fever adapter=in-domain ablation=both",  # Climate-FEVER trains on it too
    ]


RANK0_FAILS = """
import os, sys
from hydra import compose, initialize_config_dir
import readaptir.grid.stages as stages
from readaptir.grid.sweep import run_job

score = stages.score
def failing_score(*a, **k):  # only the main process scores: the other rank goes on to the next collective
    raise RuntimeError("scoring failed on rank 0")
stages.score = failing_score
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose(config_name="config", overrides=sys.argv[2:])
run_job(cfg)
"""


@pytest.mark.slow
def test_a_failing_rank_does_not_leave_the_other_waiting(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(RANK0_FAILS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "READAPTIR_CACHE": str(tmp_path / "cache")}
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(REPO / "conf"), "tracking.backend=none", "train.max_passages=16", f"+run.out_dir={tmp_path}/job"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode != 0 and time.time() - t0 < 600
    rec = json.loads((tmp_path / "job" / "results.json").read_text())
    assert rec["status"] == "failed" and rec["reason"] == "RuntimeError: scoring failed on rank 0"


def test_sweep_summary_counts_and_exit_codes(tmp_path):
    from readaptir.grid.sweep import summarize

    assert summarize(tmp_path) == ("", 0)
    for name, status in (("a", "done"), ("b", "not_applicable"), ("c", "waiting")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"status": status, "reason": f"why {name}"}))
    text, code = summarize(tmp_path)
    assert code == 75 and "3 cells: 1 done, 1 not applicable, 1 waiting" in text and "c: why c" in text
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.json").write_text(json.dumps({"status": "running"}))  # a killed job
    text, code = summarize(tmp_path)
    assert code == 1 and "1 killed" in text and "the job was killed or crashed" in text
