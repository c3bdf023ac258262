"""Tiny LLaMA / Mistral stand-ins for RepLLaMA and e5-Mistral, built offline and deterministically.

No weights can be downloaded in tests or CI, yet every code path that serves 7B models must run. This
module builds, from config alone:

- a byte-level-free BPE tokenizer trained on the toy corpus, with ``<unk>``=0, ``<s>``=1, ``</s>``=2
  like LLaMA's, and like LLaMA's it prepends BOS by itself (never EOS): the encoders must add both;
- a random causal LM of each architecture, saved in several safetensors shards (so shard-by-shard code
  is exercised);
- a retriever derived from each the way the real ones are: for LLaMA a PEFT LoRA over the *base*
  ``LlamaModel`` on q/v/o/gate/up/down (RepLLaMA's layout, k untouched), for Mistral full weights of a
  ``MistralModel`` (no LM head, keys without ``model.``) whose linear projections moved by a low-rank
  delta (e5-Mistral was a merged LoRA).

    python -m readaptir.models.tiny cache/tiny       # or ensure_tiny("llama", "cache/tiny")
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from readaptir.data.beir import RESOURCES, iter_corpus, load_queries
from readaptir.fs import remove_path, temp_sibling
from readaptir.store.artifacts import ArtifactStore
from readaptir.store.manifest import make_manifest, verify_manifest

log = logging.getLogger(__name__)

Family = Literal["llama", "mistral"]

# Shapes: small enough for CPU tests in seconds, but GQA (4 query heads, 2 kv heads) like Mistral-7B.
SHAPES = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
)
VOCAB_SIZE = 384
# LLaMA-2-7B's transformer (32 layers × 4096 wide, 11008 MLP, 32 heads: ≈ 6.5 GFLOP per token forward),
# for benchmarks with random weights at the real shapes.
LLAMA2_7B_SHAPES = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)
SHARD_SIZE = "150KB"  # ≈ 4 shards per model: exercises shard-by-shard weight arithmetic
RETRIEVER_LORA_TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # RepLLaMA's
E5_DELTA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class TinyModels:
    pretrained: Path  # causal LM folder (with LM head) + tokenizer
    retriever: Path  # LoRA adapter folder (llama) or full AutoModel folder (mistral) + tokenizer


def fixture_texts() -> list[str]:
    """Text the tiny tokenizer is trained on: the toy corpus and queries, plus prompt words."""
    root = RESOURCES / "toy"
    texts = [f"{p.title} {p.text}" for p in iter_corpus(root)] + list(load_queries(root).values())
    texts += [
        "query: passage: Instruct: Query: Given a question, retrieve passages that answer the question"
    ] * 4
    return texts


def build_tokenizer(out_dir: str | os.PathLike):
    """Train a small BPE tokenizer with LLaMA's special-token layout and save it in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(fixture_texts(), trainer=trainer)
    # Like LLaMA's tokenizer: BOS prepended automatically, EOS never.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=4096
    )
    hf.save_pretrained(out_dir)
    return hf


def _config(family: Family, vocab_size: int):
    from transformers import LlamaConfig, MistralConfig

    common = dict(
        SHAPES,
        vocab_size=vocab_size,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    if family == "llama":
        return LlamaConfig(**common)
    return MistralConfig(**common, sliding_window=4096)


def build_pretrained(family: Family, out_dir: Path, seed: int = 0) -> None:
    """A random causal LM of the family's architecture, saved in several shards with the tokenizer."""
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family, len(tok)))
    model.save_pretrained(out_dir, max_shard_size=SHARD_SIZE)


def build_retriever(family: Family, pretrained: Path, out_dir: Path, seed: int = 1) -> None:
    """A retriever fine-tuned-looking from ``pretrained``: RepLLaMA-style LoRA or e5-style full weights."""
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModel.from_pretrained(pretrained, dtype=torch.float32)
    AutoTokenizer.from_pretrained(pretrained).save_pretrained(out_dir)
    if family == "llama":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=RETRIEVER_LORA_TARGETS,
            init_lora_weights=False,
        )  # random A and B: a nonzero delta, as after training
        peft_model = get_peft_model(base, cfg)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.05)
        peft_model.save_pretrained(out_dir)
        # Record the base like a hub adapter does; readapt checks it against the pretrained model given.
        cfg_path = Path(out_dir) / "adapter_config.json"
        meta = json.loads(cfg_path.read_text())
        meta["base_model_name_or_path"] = str(pretrained)
        cfg_path.write_text(json.dumps(meta, indent=2))
    else:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in base.named_parameters():
                if p.ndim == 2 and any(t in name for t in E5_DELTA_TARGETS):
                    rank = 4
                    b = torch.randn(p.shape[0], rank, generator=gen) * 0.02
                    a = torch.randn(rank, p.shape[1], generator=gen) * 0.2
                    p.add_(b @ a)
        base.save_pretrained(out_dir, max_shard_size=SHARD_SIZE)


def ensure_tiny(family: Family, root: str | os.PathLike) -> TinyModels:
    """Build (once; later calls reuse the folders) the tiny pretrained model and retriever under root/family."""
    if family not in ("llama", "mistral"):
        raise ValueError(f"model.tiny={family!r}: use llama or mistral")
    root = Path(root).expanduser().resolve() / family
    store = ArtifactStore(root.parent)  # locks and atomic renames; paths are fixed, not hashed
    out = TinyModels(root / "pretrained", root / "retriever")
    for path, build in (
        (out.pretrained, lambda tmp: build_pretrained(family, tmp)),
        (out.retriever, lambda tmp: build_retriever(family, out.pretrained, tmp)),
    ):
        if _intact(path) is None:
            continue
        with store.lock(f"tiny-{family}-{path.name}"):
            if (why := _intact(path)) is None:
                continue
            if os.path.lexists(path):  # damaged, or of an older version: rebuilt (deterministic, same bytes)
                log.warning("cache: tiny %s %s cannot be reused (%s); rebuilding it", family, path.name, why)
                aside = temp_sibling(path, "bad")
                os.replace(path, aside)
                remove_path(aside)
            tmp = temp_sibling(path)
            remove_path(tmp)
            tmp.mkdir(parents=True)
            build(tmp)
            (tmp / ".done").write_text(
                json.dumps({"kind": f"tiny-{family}-{path.name}", "manifest": make_manifest(tmp)})
            )
            os.replace(tmp, path)
            log.info("Built tiny %s %s at %s", family, path.name, path)
    return out


def _intact(path: Path) -> str | None:
    """None when a tiny model folder is published and every byte matches its manifest; else why not."""
    try:
        manifest = json.loads((path / ".done").read_text()).get("manifest")
        if not isinstance(manifest, dict):
            return "no manifest"
        return verify_manifest(path, manifest, "full")
    except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        return f"unreadable: {type(e).__name__}"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    for fam in ("llama", "mistral"):
        print(ensure_tiny(fam, sys.argv[1] if len(sys.argv) > 1 else "cache/tiny"))
