"""RE-Adapt weight arithmetic: ``W = W_pre + α·Ψ + β·Δ``, tensor by tensor from safetensors shards.

What (docs/method.md §1): given a pretrained causal LM ``W_pre``, a retriever fine-tuned from it (``W_ret``: a
full-weight folder like e5-Mistral, or a PEFT LoRA over the base model like RepLLaMA) and a knowledge
adapter (PEFT DoRA/LoRA trained with next-token prediction on ``W_pre``), build the readapted retriever

    Δ = W_ret − W_pre                 (the RE-adapter; LM head dropped)
    Ψ = W_K − W_pre                   (W_K: the knowledge adapter merged at full strength)
    W = W_pre + α·Ψ + β·Δ             (defaults α=0.5, β=1 ⇒ W = W_ret + 0.5·Ψ)

keyed like ``AutoModel.from_pretrained(<retriever>).state_dict()`` (transformer only, no LM head).

Why it is written by hand: PEFT's ``add_weighted_adapter`` drops the DoRA magnitude vector and merging
through ``nn.Module`` s would hold three 7B models. Here every output tensor is computed in float32 from
one pretrained tensor, its retriever counterpart and the (small) adapter factors, then cast once, so
peak memory is the output model plus one input shard.

How α acts on a DoRA adapter is not stated by the paper. ``knowledge_scaling="delta"`` (default) is task
arithmetic on the merged delta, ``α·(W_K − W_pre)``; ``"peft_scale"`` is PEFT's ``set_scale(α)`` then
merge, which scales only the ``B·A`` direction term while the learned magnitude stays whole (the
alternative reading; for plain LoRA both are identical).

    from readaptir.readapt.model import build_readapted_model
    model, report = build_readapted_model("cache/tiny/llama/pretrained", "cache/tiny/llama/retriever",
                                          "path/to/dora_adapter", alpha=0.5, beta=1.0)
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from readaptir.logs import hidden
from readaptir.models.hub import resolve_model_dir
from readaptir.readapt.merge import AdapterModule, check_base_id, low_rank_factors, module_type, parse_adapter
from readaptir.readapt.weights import (
    ADAPTER_CONFIG,
    Layout,
    ReadaptError,
    automodel_keys,
    base_prefix,
    check_same_tensors,
    is_adapter_folder,
    layout,
    read_json,
    read_tensor,
    retriever_config,
)

log = logging.getLogger(__name__)


KnowledgeScaling = Literal["delta", "peft_scale"]


# ----------------------------------------------------------------------------------------------------
# The arithmetic
# ----------------------------------------------------------------------------------------------------


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Per-tensor temporaries below glibc's mmap threshold (≤ 32 MB) live on the heap; once freed between
    the output tensors allocated after them, glibc keeps them, which measured as +250 MB retained on a
    520 MB model; trimmed after every tensor the peak is the output + 38 MB (measured, 2-core CPU).
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def _readapt_inplace_(
    w: torch.Tensor, knowledge: torch.Tensor | None, delta: torch.Tensor | None, beta: float
) -> torch.Tensor:
    """``W_pre + knowledge + β·Δ`` in float32, where ``knowledge`` is α·Ψ (or PEFT's scaled merge − W_pre).

    Overwrites ``w`` (a fresh copy read from the shard): for a 7B model's 500 MB embedding matrix every
    avoided temporary is half a gigabyte of peak memory.
    """
    if knowledge is not None:
        w.add_(knowledge)
    if delta is not None:
        w.add_(delta, alpha=beta)
    return w


class _NormStats:
    """Per module type: how many tensors each delta touches and ``‖Δ‖_F / ‖W_pre‖_F`` over those tensors."""

    def __init__(self) -> None:
        self.w: dict[str, float] = {}
        self.sq: dict[str, dict[str, float]] = {"delta": {}, "psi": {}}
        self.count = {"delta": 0, "psi": 0}
        self.svd_err: dict[str, list[float]] = {}  # rank-r Δ reconstruction errors per module type

    def add(self, key: str, w: torch.Tensor, delta: torch.Tensor | None, psi: torch.Tensor | None) -> None:
        kind = module_type(key)
        self.w[kind] = self.w.get(kind, 0.0) + float(torch.linalg.vector_norm(w)) ** 2
        for name, d in (("delta", delta), ("psi", psi)):
            if d is not None and bool(
                d.any()
            ):  # an exactly-zero delta carries no information (docs/method.md §1)
                self.count[name] += 1
                self.sq[name][kind] = self.sq[name].get(kind, 0.0) + float(torch.linalg.vector_norm(d)) ** 2

    def report(self) -> dict[str, Any]:
        rel = {
            name: {k: math.sqrt(v / self.w[k]) if self.w[k] > 0 else math.inf for k, v in sq.items()}
            for name, sq in self.sq.items()
        }
        return {
            "n_delta_nonzero": self.count["delta"],
            "n_psi_nonzero": self.count["psi"],
            "delta_rel_norm": rel["delta"],
            "psi_rel_norm": rel["psi"],
        }


@dataclass
class _Inputs:
    """The three inputs of RE-Adapt, opened lazily: tensor layouts and the (small) adapter factors."""

    pre_dir: Path
    ret_dir: Path
    pre: Layout
    ret: Layout | None  # full-weight retriever (e5); None when the retriever is a LoRA (RepLLaMA)
    ret_modules: dict[str, AdapterModule]
    know_modules: dict[str, AdapterModule]
    ignored: list[str]


def _open_inputs(
    pretrained: str | os.PathLike, retriever: str | os.PathLike, knowledge_adapter: str | os.PathLike | None
) -> _Inputs:
    """Layouts of the pretrained model and retriever, adapter factors keyed by the weight they modify."""
    pre_dir, ret_dir = resolve_model_dir(pretrained), resolve_model_dir(retriever)
    prefix = base_prefix(pre_dir)
    pre = layout(pre_dir, prefix)
    ret: Layout | None = None
    ret_modules: dict[str, AdapterModule] = {}
    ignored: list[str] = []
    if is_adapter_folder(ret_dir):
        check_base_id(ret_dir, read_json(ret_dir / ADAPTER_CONFIG), pretrained, "retriever LoRA")
        ret_modules, ign = parse_adapter(ret_dir, pre, prefix, "retriever LoRA")
        ignored += ign
    else:
        ret = layout(ret_dir, base_prefix(ret_dir))
        check_same_tensors(pre, ret)
    know_modules: dict[str, AdapterModule] = {}
    if knowledge_adapter is not None:
        know_dir = resolve_model_dir(knowledge_adapter)
        config = read_json(know_dir / ADAPTER_CONFIG) if is_adapter_folder(know_dir) else {}
        check_base_id(know_dir, config, pretrained, "knowledge adapter")
        know_modules, ign = parse_adapter(know_dir, pre, prefix, "knowledge adapter")
        ignored += ign
    return _Inputs(pre_dir, ret_dir, pre, ret, ret_modules, know_modules, ignored)


def readapt(
    pretrained: str | os.PathLike,
    retriever: str | os.PathLike,
    knowledge_adapter: str | os.PathLike | None = None,
    alpha: float = 0.5,
    beta: float = 1.0,
    knowledge_scaling: KnowledgeScaling = "delta",
    dtype: torch.dtype = torch.float32,
    delta_rank: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state dict of W_pre + α·Ψ + β·Δ in AutoModel naming and ``dtype``, JSON-serialisable report)``.

    ``delta`` scaling: ``Ψ = W_K − W_pre`` with ``W_K`` the full-strength merge, times α (linear in α, β).
    ``peft_scale``: the knowledge term is ``W_K(α) − W_pre``, ``W_K(α)`` merged with scaling ``α·s`` (DoRA:
    ``m ⊙ (W + α·s·B·A)/‖W + α·s·B·A‖_row``; magnitude whole). ``delta_rank=r`` replaces each matrix's Δ by
    its rank-r truncated SVD (compact RE-adapter) and reports the reconstruction error per module type.
    Tensors are read one shard at a time; all arithmetic is float32, cast to ``dtype`` once at the end.
    """
    if knowledge_scaling not in ("delta", "peft_scale"):
        raise ReadaptError(f"knowledge_scaling={knowledge_scaling!r}: use 'delta' or 'peft_scale'")
    inp = _open_inputs(pretrained, retriever, knowledge_adapter)
    # Group work by (pretrained shard, retriever shard): each shard's pages are read in one sweep.
    groups: dict[str, dict[str | None, list[str]]] = {}
    for key, (shard, _) in inp.pre.files.items():
        ret_shard = inp.ret.files[key][0] if inp.ret is not None else None
        groups.setdefault(shard, {}).setdefault(ret_shard, []).append(key)
    out: dict[str, torch.Tensor] = {}
    stats = _NormStats()
    for by_ret in tqdm(groups.values(), desc="readapt shards", unit="shard", **hidden(len(groups) < 2)):
        for keys in by_ret.values():
            for key in keys:
                out[key] = _readapt_tensor(inp, key, alpha, beta, knowledge_scaling, delta_rank, stats).to(
                    dtype
                )
                _trim_heap()  # this tensor's temporaries are freed: hand them back before reading the next
    out = _automodel_order(out, inp)
    report: dict[str, Any] = {
        "retriever_kind": "full" if inp.ret is not None else "lora",
        "alpha": alpha,
        "beta": beta,
        "knowledge_scaling": knowledge_scaling,
        "dtype": str(dtype).removeprefix("torch."),
        "n_tensors": len(out),
        **stats.report(),
        "ignored_adapter_tensors": len(inp.ignored),
    }
    if delta_rank is not None:
        report["delta_rank"] = delta_rank
        report["delta_svd_rel_error_max"] = {k: max(v) for k, v in stats.svd_err.items()}
    log.info(
        "RE-Adapt α=%s β=%s (%s): %d tensors, Δ touches %d %s, Ψ touches %d %s",
        alpha,
        beta,
        knowledge_scaling,
        len(out),
        report["n_delta_nonzero"],
        _fmt(report["delta_rel_norm"]),
        report["n_psi_nonzero"],
        _fmt(report["psi_rel_norm"]),
    )
    return out, report


def _readapt_tensor(
    inp: _Inputs,
    key: str,
    alpha: float,
    beta: float,
    knowledge_scaling: KnowledgeScaling,
    delta_rank: int | None,
    stats: _NormStats,
) -> torch.Tensor:
    """One float32 output tensor ``W_pre + α·Ψ + β·Δ``, computed from fresh reads (overwritten in place)."""
    w = read_tensor(inp.pre_dir / inp.pre.files[key][0], inp.pre.files[key][1])
    if inp.ret is not None:
        delta = read_tensor(inp.ret_dir / inp.ret.files[key][0], inp.ret.files[key][1])
        delta.sub_(w)  # in place: no third full-size tensor
    else:  # RepLLaMA: Δ = merge(W_pre) − W_pre, exactly s·B·A for a LoRA
        delta = inp.ret_modules[key].delta(w) if key in inp.ret_modules else None
    if delta is not None and delta_rank is not None and delta.ndim == 2 and bool(delta.any()):
        u, v, err = low_rank_factors(delta, delta_rank)
        delta = u @ v
        stats.svd_err.setdefault(module_type(key), []).append(err)
    know = inp.know_modules.get(key)
    psi = know.delta(w) if know is not None else None
    stats.add(key, w, delta, psi)  # before w and psi are overwritten below
    if know is None:
        knowledge = None
    elif knowledge_scaling == "delta":
        knowledge = psi.mul_(alpha) if alpha != 1 else psi
    else:  # PEFT set_scale(α): W_K(α) − W_pre, the magnitude stays whole
        knowledge = know.delta(w, scale=alpha)
    return _readapt_inplace_(w, knowledge, delta, beta)


def _automodel_order(out: dict[str, torch.Tensor], inp: _Inputs) -> dict[str, torch.Tensor]:
    """Shards list tensors alphabetically; return them in the module order AutoModel's state_dict() uses."""
    order = automodel_keys(retriever_config(inp.pre_dir, inp.ret_dir))
    if set(order) == set(out):
        return {k: out[k] for k in order}
    log.warning(
        "readapted tensors differ from AutoModel's: missing %s, extra %s",
        sorted(set(order) - set(out))[:3],
        sorted(set(out) - set(order))[:3],
    )
    return out


def _fmt(rel: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:.2e}" for k, v in rel.items()) + "}"


def readapt_weights(
    pretrained: str | os.PathLike,
    retriever: str | os.PathLike,
    knowledge_adapter: str | os.PathLike | None = None,
    alpha: float = 0.5,
    beta: float = 1.0,
    knowledge_scaling: KnowledgeScaling = "delta",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """State dict of the readapted retriever ``W_pre + α·Ψ + β·Δ`` (see :func:`readapt`; report logged)."""
    return readapt(pretrained, retriever, knowledge_adapter, alpha, beta, knowledge_scaling, dtype)[0]
