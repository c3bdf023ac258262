"""How a PEFT LoRA/DoRA adapter changes a weight: the merge formulas and the adapter's key mapping.

What: pure, float32 formulas for one weight matrix — LoRA's ``s·B·A`` (:func:`lora_delta`, with
:func:`lora_scaling`), DoRA's ``m ⊙ (W + s·B·A)/‖W + s·B·A‖_row`` (:func:`dora_merge`), a truncated-SVD
compact RE-adapter (:func:`low_rank_factors`) — and :func:`parse_adapter`, which keys an adapter's factors
by the ``AutoModel`` weight they modify (PEFT ``base_model.model.<module>.lora_A.weight`` → causal-LM
``model.<module>`` → AutoModel ``<module>.weight``).

Why: PEFT only merges through ``nn.Module`` s (three 7B models in memory for RE-Adapt) and its
``add_weighted_adapter`` drops the DoRA magnitude. These functions reproduce PEFT's ``merge`` on bare
tensors, so :mod:`readaptir.readapt.arithmetic` can stream a model shard by shard; tests check them against
``merge_and_unload``.

How:

    from readaptir.readapt.merge import dora_merge, lora_scaling
    w_k = dora_merge(w, lora_A, lora_B, magnitude, lora_scaling(lora_alpha=16, r=8))
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from readaptir.models.hub import hub_id
from readaptir.readapt.weights import Layout, ReadaptError, load_adapter

log = logging.getLogger(__name__)

_PEFT_PREFIX = "base_model.model."
_LORA_KEY_RE = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.weight)?$"
)


def lora_scaling(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    """``s = lora_alpha / r``, or ``lora_alpha / √r`` with rank-stabilised LoRA (PEFT's ``use_rslora``)."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def lora_delta(
    lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, fan_in_fan_out: bool = False
) -> torch.Tensor:
    """LoRA's weight update ``s·B·A`` (shape ``[out, in]``; transposed when the base stores ``[in, out]``).

    The LoRA merge is then ``W + s·B·A``. Product before scaling, as PEFT's ``get_delta_weight`` does,
    so float32 results agree with PEFT's to the last bit or two.
    """
    delta = lora_B.float() @ lora_A.float()
    return (delta.T if fan_in_fan_out else delta) * scaling


def dora_merge(
    weight: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    magnitude: torch.Tensor,
    scaling: float,
    fan_in_fan_out: bool = False,
) -> torch.Tensor:
    """DoRA merged weight ``W_K = m ⊙ (W + s·B·A) / ‖W + s·B·A‖_row``.

    ``W`` is ``[out, in]`` (``[in, out]`` with ``fan_in_fan_out``), ``m`` has one entry per output row and
    the norm is the L2 norm of each output row taken over the input dimension — what PEFT's
    ``DoraLinearLayer.get_weight_norm`` and ``merge`` compute. PEFT's ``set_scale(k)`` multiplies ``s`` by
    ``k`` and leaves ``m`` alone, so ``dora_merge(..., scaling=k·s)`` is PEFT's scaled merge.
    """
    w = weight.float().T if fan_in_fan_out else weight.float()  # work in [out, in]
    directed = w + (lora_B.float() @ lora_A.float()) * scaling
    norm = torch.linalg.norm(directed, dim=1)
    merged = (magnitude.float() / norm).view(-1, 1) * directed
    return merged.T if fan_in_fan_out else merged


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD ``Δ ≈ U_r·V_r`` with ``U_r = U[:, :r]·diag(S[:r])``, ``V_r = Vᵀ[:r]``.

    Returns ``(U_r [out, r], V_r [r, in], ‖Δ − U_r·V_r‖_F / ‖Δ‖_F)``; storing a full-weight RE-adapter
    this way costs ``r·(out + in)`` numbers per matrix instead of ``out·in`` (e5-Mistral's Δ was a merged
    LoRA, so a small r should reconstruct it almost exactly).
    """
    d = delta.float()
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    rank = min(rank, s.numel())
    u_r, v_r = u[:, :rank] * s[:rank], vh[:rank]
    denom = torch.linalg.norm(d)
    err = float(torch.linalg.norm(d - u_r @ v_r) / denom) if denom > 0 else 0.0
    return u_r, v_r, err


@dataclass
class AdapterModule:
    """One adapted weight: LoRA factors (+ DoRA magnitude), its scaling and orientation."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    scaling: float
    magnitude: torch.Tensor | None = None
    fan_in_fan_out: bool = False
    embedding: bool = False  # lora_embedding_A/B: B·A is [dim, vocab], the weight is [vocab, dim]

    def merged(self, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The merged float32 weight with the adapter's scaling multiplied by ``scale`` (PEFT's set_scale)."""
        if self.magnitude is not None:
            return dora_merge(
                weight, self.lora_A, self.lora_B, self.magnitude, self.scaling * scale, self.fan_in_fan_out
            )
        return weight.float() + self.delta(weight, scale)

    def delta(self, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``merged(W) − W``: exactly ``s·B·A`` for LoRA (no round trip through W), the DoRA difference otherwise."""
        if self.magnitude is None:
            fifo = self.fan_in_fan_out or self.embedding
            return lora_delta(self.lora_A, self.lora_B, self.scaling * scale, fifo)
        return self.merged(weight, scale) - weight.float()


def module_type(key: str) -> str:
    """Report bucket of a weight: projection name without ``_proj`` (q, k, ..., down), ``embed`` or ``norm``."""
    leaf = key.rsplit(".", 2)[-2] if key.count(".") >= 1 else key
    if "embed" in leaf:
        return "embed"
    if "norm" in leaf:
        return "norm"
    return leaf.removesuffix("_proj")


def check_base_id(
    adapter_dir: Path, config: Mapping[str, Any], pretrained: str | os.PathLike, what: str
) -> None:
    """Refuse an adapter whose recorded base and the given pretrained model are different hub ids."""
    base, given = hub_id(config.get("base_model_name_or_path")), hub_id(pretrained)
    if base and given and base.lower() != given.lower():
        raise ReadaptError(f"{what} {adapter_dir} was trained on {base}, not on the pretrained model {given}")


def parse_adapter(
    folder: Path, pre: Layout, prefix: str, what: str
) -> tuple[dict[str, AdapterModule], list[str]]:
    """Adapter factors keyed by the AutoModel weight they modify, plus the names of ignored tensors.

    Adapter keys are ``base_model.model.<module path>.lora_A.weight``; the module path is relative to the
    model the adapter was created over (``model.layers...`` for a causal LM, ``layers...`` for an
    AutoModel), so the causal-LM prefix is stripped when present.
    """
    config, tensors = load_adapter(folder)
    if config.get("peft_type", "LORA") != "LORA":
        raise ReadaptError(
            f"{what} {folder} is a {config.get('peft_type')} adapter; only LoRA/DoRA are supported"
        )
    parts: dict[str, dict[str, torch.Tensor]] = {}
    ignored: list[str] = []
    for name, tensor in tensors.items():
        m = _LORA_KEY_RE.match(name)
        if m is None:  # modules_to_save copies, saved base layers of targeted embeddings, trainable tokens
            ignored.append(name)
            continue
        module = m.group("module").removeprefix(_PEFT_PREFIX)
        parts.setdefault(module, {})[m.group("part")] = tensor

    modules: dict[str, AdapterModule] = {}
    for module, p in parts.items():
        key = _weight_key(module, pre, prefix)
        if key is None:
            if f"{module}.weight" in pre.outside:  # lm_head: not part of the retriever
                ignored.extend(f"{module}.{part}" for part in p)
                continue
            raise ReadaptError(
                f"{what} {folder} targets module {module!r}, which the model {pre.folder} lacks"
            )
        modules[key] = _adapter_module(config, module, p, pre.shapes[key], f"{what} {folder}", pre.folder)
    if ignored:
        log.warning(
            "%s %s: ignoring %d tensors outside the retriever's LoRA weights (LM head / modules_to_save), "
            "e.g. %s",
            what,
            folder,
            len(ignored),
            ignored[0],
        )
    return modules, ignored


def _weight_key(module: str, pre: Layout, prefix: str) -> str | None:
    """AutoModel weight name an adapter module modifies (causal-LM prefix stripped), None if absent."""
    dot = prefix + "."
    path = (
        module[len(dot) :]
        if module.startswith(dot) and f"{module[len(dot) :]}.weight" in pre.files
        else module
    )
    key = f"{path}.weight"
    return key if key in pre.files else None


def _adapter_module(
    config: Mapping[str, Any], module: str, p: Mapping[str, torch.Tensor], shape: tuple, what: str, base: Path
) -> AdapterModule:
    """One module's factors with its rank/alpha pattern applied, refused when they do not fit ``shape``."""
    from peft.utils.other import get_pattern_key

    embedding = "lora_embedding_A" in p
    a, b = (
        (p.get("lora_embedding_A"), p.get("lora_embedding_B"))
        if embedding
        else (p.get("lora_A"), p.get("lora_B"))
    )
    if a is None or b is None:
        raise ReadaptError(f"{what}: module {module!r} lacks lora_A or lora_B")
    ranks, alphas = config.get("rank_pattern", {}), config.get("alpha_pattern", {})
    r = ranks.get(get_pattern_key(ranks.keys(), module), config["r"])
    alpha = alphas.get(get_pattern_key(alphas.keys(), module), config["lora_alpha"])
    if a.shape[0] != r:
        raise ReadaptError(f"{what}: module {module!r} has rank {a.shape[0]}, config says r={r}")
    fifo = bool(config.get("fan_in_fan_out", False))
    delta_shape = (b.shape[0], a.shape[1])
    expected = shape[::-1] if (fifo or embedding) else shape
    if tuple(delta_shape) != tuple(expected):
        raise ReadaptError(
            f"{what}: lora_B·lora_A of {module!r} is {list(delta_shape)} but the weight "
            f"in {base} is {list(shape)}: adapter trained on another base model"
        )
    magnitude = p.get("lora_magnitude_vector")
    if magnitude is not None:
        if embedding:
            raise ReadaptError(f"{what}: DoRA on embedding {module!r} is not supported")
        if magnitude.numel() != delta_shape[0]:
            raise ReadaptError(
                f"{what}: DoRA magnitude of {module!r} has {magnitude.numel()} entries, "
                f"the weight has {delta_shape[0]} output rows"
            )
        magnitude = magnitude.reshape(-1)
    scaling = lora_scaling(alpha, r, bool(config.get("use_rslora", False)))
    return AdapterModule(a, b, scaling, magnitude, fifo, embedding)
