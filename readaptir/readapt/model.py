"""Readapted retrievers as models: build one in memory, load a base retriever, save one to a folder.

:func:`build_readapted_model` turns the state dict of :func:`readaptir.readapt.arithmetic.readapt` into an
``AutoModel`` (LlamaModel / MistralModel, no LM head) without a second copy of the weights. The base
retriever ``W_ret`` is the same arithmetic with α=0, β=1 (:func:`load_base_retriever`), so a cell's Base and
RA share every rounding step. :func:`save_readapted` writes a ``from_pretrained``-loadable folder atomically.

    from readaptir.readapt.model import build_readapted_model
    model, report = build_readapted_model("cache/tiny/llama/pretrained", "cache/tiny/llama/retriever",
                                          "path/to/dora_adapter", alpha=0.5, beta=1.0)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from readaptir.fs import temp_sibling
from readaptir.models.hub import resolve_model_dir
from readaptir.readapt.arithmetic import KnowledgeScaling, readapt
from readaptir.readapt.weights import ReadaptError, retriever_config

log = logging.getLogger(__name__)


def model_from_state_dict(config, state_dict: dict[str, torch.Tensor], device: str | torch.device):
    """AutoModel with ``state_dict`` as its parameters, never allocating a second copy of the weights.

    Parameters are created on the meta device (buffers such as rotary ``inv_freq`` stay real, which is why
    ``include_buffers=False``) and ``assign=True`` adopts the given tensors instead of copying into them.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModel

    with init_empty_weights(include_buffers=False):
        model = AutoModel.from_config(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.config.architectures = [type(model).__name__]
    some = next(iter(state_dict.values()))
    model.config.dtype = some.dtype
    return model.to(device).eval()


def build_readapted_model(
    pretrained: str | os.PathLike,
    retriever: str | os.PathLike,
    knowledge_adapter: str | os.PathLike | None = None,
    alpha: float = 0.5,
    beta: float = 1.0,
    knowledge_scaling: KnowledgeScaling = "delta",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """``(AutoModel in eval mode — LlamaModel/MistralModel, no LM head — with readapted weights, report)``."""
    pre_dir, ret_dir = resolve_model_dir(pretrained), resolve_model_dir(retriever)
    state_dict, report = readapt(pre_dir, ret_dir, knowledge_adapter, alpha, beta, knowledge_scaling, dtype)
    return model_from_state_dict(retriever_config(pre_dir, ret_dir), state_dict, device), report


def load_base_retriever(
    pretrained: str | os.PathLike,
    retriever: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """The plain retriever ``W_ret`` as an AutoModel: LoRA merged into the base (RepLLaMA) or full weights (e5).

    Same arithmetic with α=0, β=1 (the LoRA kind is detected from adapter_config.json).
    """
    return build_readapted_model(pretrained, retriever, None, 0.0, 1.0, "delta", dtype, device)[0]


def save_readapted(
    out_dir: str | os.PathLike,
    pretrained: str | os.PathLike,
    retriever: str | os.PathLike,
    knowledge_adapter: str | os.PathLike | None = None,
    alpha: float = 0.5,
    beta: float = 1.0,
    knowledge_scaling: KnowledgeScaling = "delta",
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Write the readapted retriever as an ``AutoModel.from_pretrained``-loadable folder, atomically.

    The folder holds safetensors shards, config.json, the retriever's tokenizer and ``readapt_report.json``;
    it is built in a temporary sibling and renamed into place, so a crash never leaves a half-written model.
    """
    from transformers import AutoTokenizer

    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not overwrite:
        raise ReadaptError(f"{out_dir} exists; pass overwrite=True to replace it")
    pre_dir, ret_dir = resolve_model_dir(pretrained), resolve_model_dir(retriever)
    model, report = build_readapted_model(
        pre_dir, ret_dir, knowledge_adapter, alpha, beta, knowledge_scaling, dtype
    )
    tmp = temp_sibling(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tok_src = ret_dir if (ret_dir / "tokenizer_config.json").is_file() else pre_dir
        AutoTokenizer.from_pretrained(tok_src).save_pretrained(tmp)
        (tmp / "readapt_report.json").write_text(json.dumps(report, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("Saved readapted retriever to %s", out_dir)
    return out_dir, report
