"""RE-Adapt weight arithmetic: ``W = W_pre + α·Ψ + β·Δ``, tensor by tensor from safetensors shards.

What (SPEC §1): given a pretrained causal LM ``W_pre``, a retriever fine-tuned from it (``W_ret``: a
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

    from readaptir.readapt import build_readapted_model
    model, report = build_readapted_model("cache/tiny/llama/pretrained", "cache/tiny/llama/retriever",
                                          "path/to/dora_adapter", alpha=0.5, beta=1.0)
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from readaptir.merge import (  # noqa: F401  (re-exported)
    AdapterModule,
    check_base_id,
    dora_merge,
    lora_delta,
    lora_scaling,
    low_rank_factors,
    module_type,
    parse_adapter,
)
from readaptir.weights import (
    Layout,
    ReadaptError,
    base_prefix,
    check_same_tensors,
    is_adapter_folder,
    layout,
    read_tensor,
    resolve_model_dir,
)

log = logging.getLogger(__name__)

__all__ = [
    "ReadaptError",
    "KnowledgeScaling",
    "lora_scaling",
    "lora_delta",
    "dora_merge",
    "low_rank_factors",
    "readapt",
    "readapt_weights",
    "build_readapted_model",
    "load_base_retriever",
    "save_readapted",
]

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

    def add(self, key: str, w: torch.Tensor, delta: torch.Tensor | None, psi: torch.Tensor | None) -> None:
        kind = module_type(key)
        self.w[kind] = self.w.get(kind, 0.0) + float(torch.linalg.vector_norm(w)) ** 2
        for name, d in (("delta", delta), ("psi", psi)):
            if d is not None and bool(d.any()):  # an exactly-zero delta carries no information (SPEC §1)
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
    pre_dir, ret_dir = resolve_model_dir(pretrained), resolve_model_dir(retriever)
    prefix = base_prefix(pre_dir)
    pre = layout(pre_dir, prefix)
    ret_is_lora = is_adapter_folder(ret_dir)
    ret_modules: dict[str, AdapterModule] = {}
    ignored: list[str] = []
    ret: Layout | None = None
    if ret_is_lora:
        ret_config = json.loads((ret_dir / "adapter_config.json").read_text())
        check_base_id(ret_dir, ret_config, pretrained, "retriever LoRA")
        ret_modules, ign = parse_adapter(ret_dir, pre, prefix, "retriever LoRA")
        ignored += ign
    else:
        ret = layout(ret_dir, base_prefix(ret_dir))
        check_same_tensors(pre, ret)
    know_modules: dict[str, AdapterModule] = {}
    if knowledge_adapter is not None:
        know_dir = resolve_model_dir(knowledge_adapter)
        know_config = (
            json.loads((know_dir / "adapter_config.json").read_text()) if is_adapter_folder(know_dir) else {}
        )
        check_base_id(know_dir, know_config, pretrained, "knowledge adapter")
        know_modules, ign = parse_adapter(know_dir, pre, prefix, "knowledge adapter")
        ignored += ign

    # Group work by (pretrained shard, retriever shard): each shard's pages are read in one sweep.
    groups: dict[str, dict[str | None, list[str]]] = {}
    for key, (shard, _) in pre.files.items():
        ret_shard = ret.files[key][0] if ret is not None else None
        groups.setdefault(shard, {}).setdefault(ret_shard, []).append(key)

    out: dict[str, torch.Tensor] = {}
    stats = _NormStats()
    svd_err: dict[str, list[float]] = {}
    for shard, by_ret in tqdm(groups.items(), desc="readapt shards", unit="shard", disable=len(groups) < 2):
        for ret_shard, keys in by_ret.items():
            for key in keys:
                w = read_tensor(pre_dir / shard, pre.files[key][1])
                if ret_shard is not None:
                    delta = read_tensor(ret_dir / ret_shard, ret.files[key][1])
                    delta.sub_(w)  # in place: no third full-size tensor
                else:  # RepLLaMA: Δ = merge(W_pre) − W_pre, exactly s·B·A for a LoRA
                    delta = ret_modules[key].delta(w) if key in ret_modules else None
                if delta is not None and delta_rank is not None and delta.ndim == 2 and bool(delta.any()):
                    u, v, err = low_rank_factors(delta, delta_rank)
                    delta = u @ v
                    svd_err.setdefault(module_type(key), []).append(err)
                know = know_modules.get(key)
                psi = know.delta(w) if know is not None else None
                stats.add(key, w, delta, psi)  # before w and psi are overwritten below
                if know is None:
                    knowledge = None
                elif knowledge_scaling == "delta":
                    knowledge = psi.mul_(alpha) if alpha != 1 else psi
                else:  # PEFT set_scale(α): W_K(α) − W_pre, the magnitude stays whole
                    knowledge = know.delta(w, scale=alpha)
                out[key] = _readapt_inplace_(w, knowledge, delta, beta).to(dtype)
                del w, delta, psi, knowledge  # free this tensor's buffers before reading the next
                _trim_heap()

    # Shards list tensors alphabetically; return them in the module order AutoModel's state_dict() uses.
    order = _automodel_keys(_retriever_config(pre_dir, ret_dir))
    if set(order) == set(out):
        out = {k: out[k] for k in order}
    else:
        log.warning(
            "readapted tensors differ from AutoModel's: missing %s, extra %s",
            sorted(set(order) - set(out))[:3],
            sorted(set(out) - set(order))[:3],
        )

    report: dict[str, Any] = {
        "retriever_kind": "lora" if ret_is_lora else "full",
        "alpha": alpha,
        "beta": beta,
        "knowledge_scaling": knowledge_scaling,
        "dtype": str(dtype).removeprefix("torch."),
        "n_tensors": len(out),
        **stats.report(),
        "ignored_adapter_tensors": len(ignored),
    }
    if delta_rank is not None:
        report["delta_rank"] = delta_rank
        report["delta_svd_rel_error_max"] = {k: max(v) for k, v in svd_err.items()}
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


# ----------------------------------------------------------------------------------------------------
# Models and folders
# ----------------------------------------------------------------------------------------------------


def _automodel_keys(config) -> list[str]:
    """State-dict keys of ``AutoModel.from_config(config)`` in module order, built on the meta device (free)."""
    from accelerate import init_empty_weights
    from transformers import AutoModel

    with init_empty_weights(include_buffers=True):
        return list(AutoModel.from_config(config).state_dict())


def _retriever_config(pretrained: Path, retriever: Path):
    """The AutoModel config: the retriever's own for a full folder, the pretrained one under a LoRA."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(pretrained if is_adapter_folder(retriever) else retriever)


def _model_from_state_dict(config, state_dict: dict[str, torch.Tensor], device: str | torch.device):
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
    return _model_from_state_dict(_retriever_config(pre_dir, ret_dir), state_dict, device), report


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
    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
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
