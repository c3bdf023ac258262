"""Tiny stand-in models: offline, deterministic, laid out like the real retrievers."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from readaptir.models.tiny import ensure_tiny


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as s:
            out.update({k: s.get_tensor(k) for k in s.keys()})
    return out


def test_layouts_match_the_real_models(tiny_llama, tiny_mistral):
    assert len(list(tiny_llama.pretrained.glob("model-*.safetensors"))) >= 3  # sharded
    pre = _tensors(tiny_llama.pretrained)
    assert "lm_head.weight" in pre and "model.embed_tokens.weight" in pre
    cfg = json.loads((tiny_llama.retriever / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == {"q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    lora = _tensors(tiny_llama.retriever)
    assert all(k.startswith("base_model.model.layers.") for k in lora)  # over LlamaModel, like RepLLaMA
    assert not any("k_proj" in k for k in lora)
    ret = _tensors(tiny_mistral.retriever)
    assert "embed_tokens.weight" in ret and "lm_head.weight" not in ret  # MistralModel, like e5-Mistral
    mpre = _tensors(tiny_mistral.pretrained)
    changed = [k for k, v in ret.items() if not torch.equal(v, mpre["model." + k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)


def test_tokenizer_special_tokens(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama.pretrained)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, None)
    ids = tok("the otter eats").input_ids
    assert ids[0] == 1 and ids[-1] != 2  # BOS prepended, EOS never (like LLaMA's tokenizer)


def test_deterministic(tmp_path, tiny_llama):
    again = ensure_tiny("llama", tmp_path)
    a, b = _tensors(tiny_llama.pretrained), _tensors(again.pretrained)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = _tensors(tiny_llama.retriever), _tensors(again.retriever)
    assert all(torch.equal(la[k], lb[k]) for k in la)
