"""The pipeline on replicas of the real Hub layouts (tests/hub_layouts.py, facts in fixtures/hub_layouts/FACTS.md).

Tiny random weights, real file layouts: Llama-2's float16 shards with the rotary ``inv_freq`` buffers stored
in them, RepLLaMA's ``adapter_model.bin``-only LoRA over the bare LlamaModel naming a hub base, Mistral's
bfloat16 shards split inside a layer, e5-Mistral's float16 ``MistralModel`` without the ``model.`` prefix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hub_layouts import build_all
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from readaptir.config import CellConfig
from readaptir.grid.cell import run_cell
from readaptir.readapt.model import build_readapted_model, load_base_retriever
from readaptir.readapt.weights import layout
from readaptir.retrieval.dense import embed_batch, load_tokenizer, pad_id_for
from readaptir.retrieval.prompts import build_input_ids

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["query: what is a vaccine?", "passage: Vaccines train the immune system to recognise a virus."]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("hub"), include_k_proj=True)


def _knowledge_adapter(pretrained: Path, out: Path, seed: int = 5) -> Path:
    """A DoRA adapter (the paper's targets) with random nonzero factors, as after training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, use_dora=True, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])  # fmt: skip
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    peft.save_pretrained(out)
    return out


def _encode(model, tokenizer_dirs: tuple[Path, ...]) -> torch.Tensor:
    tok = load_tokenizer(*tokenizer_dirs)
    rows = build_input_ids(tok, TEXTS, 32)
    assert all(r[0] == tok.bos_token_id and r[-1] == tok.eos_token_id for r in rows)
    return embed_batch(model, rows, pad_id_for(tok, "eos"), tok.eos_token_id)


def test_llama2_replica_stores_rotary_buffers(hub):
    index = json.loads((hub["llama2"] / "model.safetensors.index.json").read_text())["weight_map"]
    inv = {k: f for k, f in index.items() if k.endswith("rotary_emb.inv_freq")}
    assert len(inv) == 4 and set(inv.values()) == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    lay = layout(hub["llama2"])
    assert sorted(lay.buffers) == sorted(inv) and not any("inv_freq" in k for k in lay.files)
    assert lay.outside == {"lm_head.weight"}


def test_repllama_on_llama2_layout_equals_peft_merge(hub):
    """Strict loading of the merged retriever used to fail on the stored inv_freq buffers."""
    from peft import PeftModel
    from transformers import AutoModel

    ours = load_base_retriever(hub["llama2"], hub["repllama"])
    base = AutoModel.from_pretrained(hub["llama2"], dtype=torch.float32)
    ref = PeftModel.from_pretrained(base, hub["repllama"]).merge_and_unload().eval()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert set(our_sd) == set(ref_sd)
    for k, v in ref_sd.items():
        torch.testing.assert_close(our_sd[k], v, rtol=0, atol=1e-6, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(_encode(ours, (hub["repllama"], hub["llama2"])),
                                   _encode(ref, (hub["llama2"],)), rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("retriever, ret_kinds", [("repllama", 6), ("repllama_k", 7)])
def test_readapted_repllama_encodes(hub, tmp_path, retriever, ret_kinds):
    adapter = _knowledge_adapter(hub["llama2"], tmp_path / "knowledge")
    model, report = build_readapted_model(hub["llama2"], hub[retriever], adapter, alpha=0.5, beta=1.0)
    assert report["retriever_kind"] == "lora"
    assert report["n_delta_nonzero"] == 4 * ret_kinds and len(report["delta_rel_norm"]) == ret_kinds
    assert report["n_psi_nonzero"] == 4 * 5  # q, k, v, up, down in 4 layers
    emb = _encode(model, (hub[retriever], hub["llama2"]))
    assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(2))


def test_e5_on_mistral_layout(hub, tmp_path):
    """Full float16 weights over a bfloat16 base: Δ sits on the 7 LoRA projections, α=0 gives e5 back."""
    from transformers import AutoModel

    e5, report = build_readapted_model(hub["mistral"], hub["e5"], None, 0.0, 1.0, dtype=torch.float16)
    assert report["retriever_kind"] == "full"
    real = {k for k, v in report["delta_rel_norm"].items() if v > 1e-3}
    assert real == {"q", "k", "v", "o", "gate", "up", "down"}
    assert report["delta_rel_norm"].get("norm", 0.0) == 0.0  # norms equal exactly (FACTS §4.6)
    ref = AutoModel.from_pretrained(hub["e5"]).state_dict()
    for k, v in e5.state_dict().items():
        assert torch.equal(v, ref[k]), k
    adapter = _knowledge_adapter(hub["mistral"], tmp_path / "knowledge")
    model, report = build_readapted_model(hub["mistral"], hub["e5"], adapter, 0.5, 1.0)
    assert report["n_psi_nonzero"] == 4 * 5
    emb = _encode(model, (hub["e5"],))
    assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("model, pretrained, retriever", [("repllama", "llama2", "repllama"),
                                                          ("e5-mistral", "mistral", "e5")])  # fmt: skip
def test_cell_on_replicas(hub, tmp_path, model, pretrained, retriever):
    """One grid cell end to end (knowledge adapter, RE-Adapt, encoding, search) on the replica layouts."""
    overrides = [f"model={model}", f"model.pretrained={hub[pretrained]}", f"model.retriever={hub[retriever]}",
                 "model.torch_dtype=float32", "model.query_max_len=32", "model.passage_max_len=64",
                 "dataset=demo/toy", "train.max_passages=8", "tracking.backend=none", "search.top_k=50",
                 f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = CellConfig.from_hydra(compose(config_name="config", overrides=overrides))
    GlobalHydra.instance().clear()
    record = run_cell(cfg, tmp_path / "job")
    assert record.status == "done" and "NDCG@10" in record.base and "NDCG@10" in record.readapted
    assert record.delta_report["n_delta_nonzero"] > 0 and record.delta_report["n_psi_nonzero"] == 4 * 5
