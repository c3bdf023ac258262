"""Tracking: offline W&B runs without a key, a no-op backend, and wandb failures that never fail training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from readaptir.data.beir import RESOURCES
from readaptir.grid.keys import tokens_key
from readaptir.store.artifacts import ArtifactStore
from readaptir.tracking import resolve_mode, run_id, start_tracker
from readaptir.train.knowledge import train_knowledge_adapter
from readaptir.train.tokens import ensure_token_cache

ADAPTER = {"method": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}
TRAIN = {
    "batching": "packed",
    "batch_size": 2,
    "max_tokens": 64,
    "lr": 1e-3,
    "epochs": 1,
    "seed": 0,
    "max_grad_norm": 1.0,
    "max_passages": 12,
    "checkpoint_every": 0,
    "log_every": 1,
}
CELL = {"model": "tiny-llama", "dataset": "toy", "adapter": "in-domain", "ablation": "both"}


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls; see test_train.py
    yield
    torch.set_num_threads(n)


def test_resolve_mode_leaves_auto_to_wandb(monkeypatch):
    """``auto`` hands wandb no mode, so WANDB_MODE and `wandb login` decide as wandb documents them (a key in
    the environment is not required for an online run)."""
    assert resolve_mode("auto") is None and resolve_mode(None) is None
    assert resolve_mode("offline") == "offline" and resolve_mode("online") == "online"
    with pytest.raises(ValueError, match="tracking.mode"):
        resolve_mode("sometimes")


def test_auto_mode_passes_no_mode_and_falls_back_offline(tmp_path, monkeypatch):
    import wandb

    calls = []

    class Run:
        id, summary = "r", {}

        def finish(self, *a, **k):
            pass

    def init(*a, **k):
        calls.append(k)
        if len(calls) == 1:
            raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")
        return Run()

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    t = start_tracker(
        {"backend": "wandb", "dir": str(tmp_path / "wb")}, CELL, "n", None, "cell", run_id="result-1"
    )
    assert t.active and calls[0]["mode"] is None  # wandb decides (its login, WANDB_MODE)
    assert calls[0]["id"] == "result-1" and calls[0]["resume"] == "allow"
    assert calls[1]["mode"] == "offline"  # no credentials: kept locally instead of lost
    t.finish()


@pytest.mark.parametrize("how", [{"WANDB_MODE": "disabled"}, {"WANDB_DISABLED": "true"}, "setting"])
def test_disabled_writes_nothing(tmp_path, monkeypatch, how):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init called while disabled"))
    settings = {"backend": "wandb", "mode": "auto", "dir": str(tmp_path / "wb")}
    if how == "setting":
        settings["mode"] = "disabled"
    else:
        for k, v in how.items():
            monkeypatch.setenv(k, v)
    t = start_tracker(settings, CELL, "n", None, "cell", run_id="result-1")
    t.log({"a": 1})
    t.finish()
    assert not t.active and not (tmp_path / "wb").exists()


def test_run_id_is_a_valid_wandb_id():
    assert run_id("result-0123456789abcdef") == "result-0123456789abcdef"
    assert run_id("a/b:c d") == "a-b-c-d" and len(run_id("x" * 200)) == 64


def test_backend_none_is_a_noop(tmp_path):
    t = start_tracker({"backend": "none", "dir": str(tmp_path / "wb")}, CELL, "n", None, "train")
    t.log({"a": 1}, step=1)
    t.summary({"b": 2})
    t.table("t", ["x"], [[1]])
    t.finish()
    assert not t.active and not (tmp_path / "wb").exists()
    with pytest.raises(ValueError, match="backend"):
        start_tracker({"backend": "mlflow"}, CELL, "n", None, "train")


def test_backend_auto_tracks_only_when_wandb_is_installed(tmp_path, monkeypatch):
    from readaptir.errors import UserError

    settings = {"backend": "auto", "mode": "offline", "dir": str(tmp_path / "wb")}
    t = start_tracker(settings, CELL, "n", None, "cell")
    assert t.enabled and t.active  # wandb is a dev dependency: auto tracks
    t.finish()
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else object())
    assert not start_tracker(settings, CELL, "n", None, "cell").enabled  # the wandb extra is not installed
    with pytest.raises(UserError, match=r"pip install 'readaptir\[wandb\]'"):
        start_tracker({**settings, "backend": "wandb"}, CELL, "n", None, "cell")


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory, tiny_llama, toy_dir):
    store = ArtifactStore(tmp_path_factory.mktemp("store"))
    return ensure_token_cache(
        store, tokens_key(tiny_llama.pretrained, toy_dir), tiny_llama.pretrained, toy_dir
    )


def test_offline_run_files_written_without_key(tmp_path, tiny_llama, toy_cache):
    wdir = tmp_path / "wandb-dir"
    tracker = start_tracker(
        {"backend": "wandb", "project": "readaptir-test", "entity": None, "mode": "auto", "dir": str(wdir)},
        CELL,
        name="cell",
        group="g",
        job_type="train",
    )
    assert tracker.active
    stats = train_knowledge_adapter(
        tiny_llama.pretrained, toy_cache, ADAPTER, TRAIN, tmp_path / "out", tmp_path / "work", tracker=tracker
    )
    tracker.table("per_query", ["qid", "ndcg"], [["q1", 0.5]])
    tracker.finish()
    runs = list((wdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(wdir.rglob("*"))
    assert list(runs[0].glob("*.wandb")) and stats["steps"] > 0


def test_training_survives_wandb_raising(tmp_path, tiny_llama, toy_cache, monkeypatch, caplog):
    import wandb

    class Run:
        summary: dict = {}

        def log(self, *a, **k):
            raise ConnectionError("wandb server unreachable")

        def finish(self, *a, **k):
            pass

    monkeypatch.setattr(wandb, "init", lambda *a, **k: Run())
    tracker = start_tracker(
        {"backend": "wandb", "mode": "offline", "dir": str(tmp_path / "wb")}, CELL, "c", None, "train"
    )
    assert tracker.active
    with caplog.at_level("WARNING", logger="readaptir.tracking"):
        stats = train_knowledge_adapter(
            tiny_llama.pretrained,
            toy_cache,
            ADAPTER,
            TRAIN,
            tmp_path / "out",
            tmp_path / "work",
            tracker=tracker,
        )
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file() and stats["steps"] > 1
    warnings = [r for r in caplog.records if "W&B log failed" in r.getMessage()]
    assert len(warnings) == 1 and not tracker.active  # warned once, then a no-op

    def broken_init(*a, **k):
        raise RuntimeError("wandb.init exploded")

    monkeypatch.setattr(wandb, "init", broken_init)
    tracker = start_tracker({"backend": "wandb", "mode": "offline"}, CELL, "c", None, "train")
    assert not tracker.active
    train_knowledge_adapter(
        tiny_llama.pretrained,
        toy_cache,
        ADAPTER,
        TRAIN,
        tmp_path / "out2",
        tmp_path / "work2",
        tracker=tracker,
    )
    assert (tmp_path / "out2" / "adapter_config.json").is_file()


def _offline_run(wandb_dir) -> dict:
    """State, config and summary of the one offline run under ``wandb_dir``, as W&B's own reader replays it."""
    import json
    import subprocess
    import sys

    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(runs[0])],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    if out.returncode != 0:
        pytest.skip(f"this wandb cannot replay offline runs (wandb leet inspect): {out.stderr[-300:]}")
    return json.loads(out.stdout)


def _cell_config(*overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from readaptir.config import CONF_DIR, CellConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = CellConfig.from_hydra(compose(config_name="config", overrides=list(overrides)))
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.slow
def test_finished_cell_run_summary_equals_results_json(tmp_path):
    """A cell's W&B run says what its results.json says: training stats (not the last log window),
    metrics, and the coordinates Figure 2 and dashboards need."""
    import json

    from readaptir.grid.cell import run_cell

    cfg = _cell_config(f"paths.cache_dir={tmp_path / 'cache'}", "tracking.backend=wandb", "tracking.mode=offline",
                       f"tracking.dir={tmp_path / 'wb'}", "train.max_passages=40", "train.log_every=3",
                       "search.top_k=50")  # fmt: skip
    run_cell(cfg, tmp_path / "job")
    res = json.loads((tmp_path / "job" / "results.json").read_text())
    run_cell(cfg, tmp_path / "job2")  # a rerun of the finished cell: everything reused, no second run
    run = _offline_run(tmp_path / "wb")
    assert run["run_id"] == res["artifacts"]["result"]  # one run per result
    assert {"experiment:none", f"variant:{res['variant']}", "stage:all", "demo"} <= set(run["tags"])
    assert run["config"]["result_key"] == res["artifacts"]["result"]
    summary, config = run["summary"], run["config"]
    assert run["state"] == "finished" and res["train"]["steps"] > 3  # several log windows
    for k, v in res["train"].items():
        assert summary[f"train/{k}"] == v, k
    for part in ("base", "readapted", "delta"):
        assert {k: summary[f"{part}/{k}"] for k in res[part]} == res[part]
    assert (
        summary["status"] == res["status"] == "done" and summary["p_value"] == res["significance"]["p_value"]
    )
    for k in ("corpus_size", "zero_shot", "seed", "git_commit", "versions"):
        assert config[k] == res[k], k
    assert res["versions"]["torch"] and res["corpus_size"] == 240 and res["seed"] == 0
    assert config["recipe"]["corpus"] == "toy" and config["alpha"] == 0.5  # resolved, α/β coordinates
    assert "-a0.5-b1-" in run["name"] and "window_passages_per_s" in json.dumps(run)  # curves stay in history


@pytest.mark.slow
def test_baseline_run_has_no_adapter_coordinates(tmp_path, monkeypatch):
    import json
    import shutil

    from readaptir.grid.cell import run_cell

    data = tmp_path / "data"
    shutil.copytree(RESOURCES / "toy", data / "scifact")
    cfg = _cell_config("model=bm25", "dataset=scifact", f"paths.data_dir={data}", f"paths.cache_dir={tmp_path / 'c'}",
                       "tracking.mode=offline", f"tracking.dir={tmp_path / 'wb'}")  # fmt: skip
    run_cell(cfg, tmp_path / "job")
    run = _offline_run(tmp_path / "wb")
    assert run["config"]["model"] == "bm25" and run["config"]["readapt"] is False
    assert not {"adapter", "ablation", "alpha", "beta", "recipe"} & set(run["config"])
    assert run["name"] == "bm25/scifact/baseline" and run["summary"]["status"] == "done"
    # the stored record has no coordinates it does not have either, and sits in a `baseline` folder
    (stored,) = (tmp_path / "c" / "results" / "bm25" / "scifact" / "baseline").glob("*.json")
    cell = json.loads(stored.read_text())["cell"]
    assert cell["model"] == "bm25" and not any(
        cell[k] is not None for k in ("adapter", "ablation", "alpha", "beta")
    )


@pytest.mark.slow
def test_failed_cell_logs_its_status(tmp_path, monkeypatch):
    import shutil

    from readaptir.grid import stages
    from readaptir.grid.cell import run_cell

    data = tmp_path / "data"
    shutil.copytree(RESOURCES / "toy", data / "scifact")

    def broken(*a, **k):
        raise RuntimeError("scoring exploded")

    monkeypatch.setattr(stages, "score", broken)
    cfg = _cell_config("model=bm25", "dataset=scifact", f"paths.data_dir={data}", f"paths.cache_dir={tmp_path / 'c'}",
                       "tracking.mode=offline", f"tracking.dir={tmp_path / 'wb'}")  # fmt: skip
    with pytest.raises(RuntimeError):
        run_cell(cfg, tmp_path / "job")
    run = _offline_run(tmp_path / "wb")
    assert run["state"] == "failed" and run["summary"]["status"] == "failed"
    assert "scoring exploded" in run["summary"]["reason"]


def test_not_applicable_cell_logs_its_status_once(tmp_path):
    from readaptir.grid.cell import run_cell

    cfg = _cell_config("adapter=msmarco", "ablation=with", f"paths.cache_dir={tmp_path / 'c'}",
                       "tracking.mode=offline", f"tracking.dir={tmp_path / 'wb'}")  # fmt: skip
    assert run_cell(cfg, tmp_path / "job").status == "not_applicable"
    run_cell(cfg, tmp_path / "job2")
    run = _offline_run(tmp_path / "wb")  # one run, also after the rerun
    assert run["summary"]["status"] == "not_applicable" and run["summary"]["reason"]


def test_report_wandb_logs_records_and_tables_once(tmp_path, monkeypatch):
    """`python -m readaptir.report wandb`: the records the tables read and Tables 1-3, one run per store state."""
    import json

    from readaptir.report.render import main
    from readaptir.report.results import load_results

    fixtures = Path(__file__).parent / "fixtures" / "results"
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = [
        "wandb",
        "--results-dir",
        str(fixtures),
        "--wandb-dir",
        str(tmp_path / "wb"),
        "--models",
        "repllama,e5-mistral",
    ]
    assert main(args) == 0
    assert main(args) == 0  # the same store again: no second run
    run = _offline_run(tmp_path / "wb")
    summary = run["summary"]
    assert summary["records"]["nrows"] == len(list(load_results(fixtures))) > 0
    assert {"table1", "table2", "table3"} <= set(summary) and run["tags"] == ["report"]
    files = {p.name.split("_")[0]: p for p in (tmp_path / "wb" / "wandb").rglob("*.table.json")}
    records = json.loads(files["records"].read_text())
    assert records["columns"][:4] == ["model", "dataset", "adapter", "ablation"]
    assert {r[0] for r in records["data"]} <= {"repllama", "e5-mistral", "bm25", "minilm"}
