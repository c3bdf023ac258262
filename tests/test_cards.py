"""Model cards for knowledge adapters and readapted retrievers, and the opt-in Hub upload (faked: no network)."""

from __future__ import annotations

import json

import pytest

from readaptir.config import AdapterRecipe, ModelSpec, ReadaptSettings, TrainSettings
from readaptir.readapt.card import adapter_card, retriever_card

RECIPE = AdapterRecipe(
    name="in-domain", corpus="scifact", targets=("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
)
STATS = {
    "steps": 1296,
    "passages": 5183,
    "tokens": 1_546_260,
    "first_loss": 2.31,
    "final_loss": 1.87,
    "world_size": 1,
}


def test_adapter_card_names_the_hub_base_model_recipe_and_corpus():
    card = adapter_card("meta-llama/Llama-2-7b-hf", RECIPE, TrainSettings(), "scifact", "without", STATS)
    head = card.split("---")[1]
    assert "base_model: meta-llama/Llama-2-7b-hf" in head and "library_name: peft" in head
    assert "r=32, alpha=64, dropout=0.05" in card and "AdamW lr 0.0002" in card and "paper batching" in card
    assert "BeIR `scifact`, all passages except those judged relevant" in card and "5,183 passages" in card
    assert "final_loss: 1.87" in card
    local = adapter_card(None, RECIPE, TrainSettings(), "scifact", "both", STATS)
    assert "base_model" not in local  # a local folder means nothing on the Hub


def test_retriever_card_carries_the_cell_metrics():
    model = ModelSpec(name="repllama", pretrained="meta-llama/Llama-2-7b-hf",
                      retriever="castorini/repllama-v1-7b-lora-passage", query_template="query: {query}")  # fmt: skip
    results = {"cell": {"dataset": "scifact"}, "base": {"NDCG@10": 0.745, "Recall@100": 0.9},
               "readapted": {"NDCG@10": 0.763, "Recall@100": 0.91}, "significance": {"p_value": 0.03}}  # fmt: skip
    card = retriever_card(model, ReadaptSettings(), RECIPE, TrainSettings(), "scifact", "both", STATS, results,
                          "meta-llama/Llama-2-7b-hf")  # fmt: skip
    assert "W_pre + 0.5·Ψ + 1·Δ" in card and "castorini/repllama-v1-7b-lora-passage" in card
    assert "| NDCG@10 | 74.5 | 76.3 | +1.8 |" in card and "p = 0.03" in card
    assert "query: `query: {query}`" in card and "pipeline_tag: feature-extraction" in card


@pytest.mark.slow
def test_cell_writes_cards_and_pushes_only_when_asked(tmp_path, monkeypatch):
    import huggingface_hub
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from readaptir.config import CONF_DIR, CellConfig
    from readaptir.grid.cell import run_cell

    calls: list[tuple] = []

    class FakeApi:  # records what would be uploaded; no network
        def create_repo(self, repo, **kw):
            calls.append(("create", repo, kw.get("private")))

        def upload_folder(self, folder_path, repo_id, **kw):
            files = sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())
            calls.append(("folder", repo_id, files, kw.get("ignore_patterns")))

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, **kw):
            calls.append(("file", repo_id, path_in_repo, open(path_or_fileobj).read()))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    overrides = [f"paths.cache_dir={tmp_path / 'cache'}", "tracking.backend=none", "train.max_passages=24",
                 "search.top_k=50", "readapt.save_model=true", "readapt.push_to_hub=me/tiny-readapted"]  # fmt: skip
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = CellConfig.from_hydra(compose(config_name="config", overrides=overrides))
    GlobalHydra.instance().clear()
    record = run_cell(cfg, tmp_path / "job")
    adapter = tmp_path / "cache" / "adapter" / record.artifacts["adapter"]
    card = (adapter / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "# Knowledge adapter: toy" in card
    assert "base_model" not in card and "Model Card for Model ID" not in card  # PEFT's blank card is gone
    saved = tmp_path / "cache" / "readapted" / record.artifacts["readapted"] / "model"
    assert "# tiny-llama readapted with toy" in (saved / "README.md").read_text()
    assert calls[0] == ("create", "me/tiny-readapted", True)  # a new repo is private
    kind, repo, files, ignored = calls[1]
    assert (
        "config.json" in files and any(f.endswith(".safetensors") for f in files) and ignored == ["README.md"]
    )
    uploaded = calls[2][3]
    ndcg = json.loads((tmp_path / "job" / "results.json").read_text())["base"]["NDCG@10"]
    assert calls[2][2] == "README.md" and f"| NDCG@10 | {100 * ndcg:.1f} |" in uploaded
    # Not kept (readapt.save_model=false): the push rebuilds the readapted retriever instead.
    import shutil

    from readaptir.grid import stages
    from readaptir.models.hub import resolve_models
    from readaptir.runtime import Runtime
    from readaptir.store.artifacts import ArtifactStore

    shutil.rmtree(saved)
    calls.clear()
    stages.push_readapted(cfg, ArtifactStore(cfg.paths.cache_dir), record.artifacts, resolve_models(cfg.model),
                          record.model_dump(), Runtime.detect("float32"))  # fmt: skip
    assert "config.json" in calls[1][2] and "README.md" in calls[1][2] and not saved.exists()
