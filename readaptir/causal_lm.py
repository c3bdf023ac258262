"""The model a knowledge adapter is trained on: the pretrained causal LM and the PEFT DoRA/LoRA config.

bf16 on CUDA (adapter weights stay float32 under autocast), float32 on CPU; flash-attention 2 when
installed, since its varlen kernel computes only the diagonal blocks of a packed row
(:mod:`readaptir.batching`), else PyTorch SDPA. The recipe (DoRA r=32, alpha=64, dropout 0.05 on
q/k/v/up/down) comes from ``conf/adapter/``. Used by :func:`readaptir.train.train_knowledge_adapter`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def attn_implementation() -> str:
    """flash-attention 2 (varlen on packed rows) when installed on CUDA, else PyTorch SDPA."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_causal_lm(pretrained: str | os.PathLike, device: torch.device | str | None = None):
    """The pretrained causal LM for training: bf16 on CUDA, float32 on CPU."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        pretrained, dtype=dtype, attn_implementation=attn_implementation()
    )
    return model.to(device) if device is not None else model


def peft_config(adapter_cfg: Any):
    from peft import LoraConfig

    method = str(_get(adapter_cfg, "method", "dora")).lower()
    if method not in ("dora", "lora"):
        raise ValueError(f"adapter.method={method!r}: use dora or lora")
    return LoraConfig(
        r=int(_get(adapter_cfg, "r")),
        lora_alpha=float(_get(adapter_cfg, "alpha")),
        lora_dropout=float(_get(adapter_cfg, "dropout")),
        target_modules=list(_get(adapter_cfg, "targets")),
        use_dora=method == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )
