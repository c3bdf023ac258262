"""The model a knowledge adapter is trained on: the pretrained causal LM and the PEFT DoRA/LoRA config.

bf16 on CUDA (adapter weights stay float32 under autocast), float32 on CPU. Attention: ``varlen`` (packed
rows through PyTorch's fused kernel, which computes only the diagonal blocks of a packed row; what
:class:`readaptir.runtime.Runtime` picks for ``train.batching=packed`` on CUDA) or ``sdpa`` (paper
batches, CPU, and the fallback). DoRA's weight norm is computed once per step
(:mod:`readaptir.train.dora_norm`); ``train.compile`` compiles each decoder layer with ``torch.compile``.
The recipe (DoRA r=32, alpha=64, dropout 0.05 on q/k/v/up/down) comes from ``conf/adapter/``. Used by
:func:`readaptir.train.knowledge.train_knowledge_adapter`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from readaptir.attention.interface import BACKENDS, register, set_attention
from readaptir.train.dora_norm import cache_dora_norms

if TYPE_CHECKING:  # annotations only: the GPU benchmark imports this module without pydantic
    from readaptir.config import AdapterRecipe, TrainSettings


def load_causal_lm(
    pretrained: str | os.PathLike, device: torch.device | str | None = None, attention: str = "sdpa"
):
    """The pretrained causal LM for training: bf16 on CUDA, float32 on CPU; ``attention``: sdpa | varlen."""
    from transformers import AutoModelForCausalLM

    if attention == "varlen":
        register()
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        pretrained, dtype=dtype, attn_implementation=BACKENDS[attention]
    )
    return model.to(device) if device is not None else model


def compile_layers(model: Any) -> int:
    """``torch.compile`` every decoder layer in place (dynamic shapes: packed rows vary in length);
    returns how many. Whole-model compilation would also trace the data-dependent loss gather."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def peft_config(recipe: AdapterRecipe):
    """PEFT ``LoraConfig`` of the recipe (``use_dora`` for DoRA) over the causal LM."""
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.r,
        lora_alpha=float(recipe.alpha),
        lora_dropout=float(recipe.dropout),
        target_modules=list(recipe.targets),
        use_dora=recipe.method == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )


def special_ids(pretrained: Path) -> tuple[int, int, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pretrained)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    if bos is None or eos is None:
        raise ValueError(f"{pretrained}: tokenizer needs BOS and EOS tokens (got {bos}, {eos})")
    return bos, eos, tok.pad_token_id if tok.pad_token_id is not None else eos  # padding is masked


def setup_training(
    pretrained: Path,
    recipe: AdapterRecipe,
    train: TrainSettings,
    model: Any,
    accelerator,
    total_steps,
    attention: str = "sdpa",
):
    """PEFT model, optimizer and schedule, seeded so the adapter's initialisation is reproducible."""
    from peft import get_peft_model
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(train.seed)  # adapter init (LoRA A) is drawn from torch's RNG
    random.seed(train.seed)
    np.random.seed(train.seed)
    base = model if model is not None else load_causal_lm(pretrained, attention=attention)
    if model is not None:
        set_attention(base, attention)
    base.config.use_cache = False
    if train.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = get_peft_model(base, peft_config(recipe)).to(accelerator.device)
    cache_dora_norms(peft_model)
    if train.compile:
        compile_layers(peft_model)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)
    # Not passed through accelerator.prepare: its wrapper would step the schedule `world` times per step.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(train.warmup_ratio * total_steps), total_steps)
    peft_model, optimizer = accelerator.prepare(peft_model, optimizer)
    peft_model.train()
    return peft_model, optimizer, scheduler, trainable
