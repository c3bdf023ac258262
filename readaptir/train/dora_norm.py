"""DoRA's weight norm, computed once per optimizer step instead of once per forward.

PEFT's DoRA layer scales its output by ``m / ‖W + s·BA‖`` (row norms, detached from the graph, as the
DoRA paper prescribes): every forward rebuilds ``BA`` through an identity matrix and reads the whole base
weight to take the norm. With gradient checkpointing each layer's forward runs twice per step, so the norm
is computed twice though ``A`` and ``B`` only change at the optimizer step. :func:`cache_dora_norms` keeps
each layer's norm until ``A`` or ``B`` changes (their in-place version counters, bumped by every optimizer
step and every checkpoint load), and computes ``BA`` without an autograd graph (it is only used detached).
PEFT's own forward runs unchanged, so the semantics (dropout, magnitude gradient) are PEFT's: a test checks
loss and gradients against the unpatched layers.

    n = cache_dora_norms(peft_model)   # number of DoRA layers patched (0 for LoRA)
"""

from __future__ import annotations

from typing import Any

import torch


def _patch(dora: torch.nn.Module, lora_a: torch.nn.Module, lora_b: torch.nn.Module) -> None:
    norm_of, lora_weight_of = dora.get_weight_norm, dora.get_lora_weight  # PEFT's bound methods
    cache: dict[tuple, torch.Tensor] = {}

    def version() -> tuple[int, int]:
        return lora_a.weight._version, lora_b.weight._version

    def get_lora_weight(lora_A, lora_B, adapter_name=None):  # noqa: N803 (PEFT's keyword names)
        if any(key[0] == version() for key in cache):
            # Only ever used (detached) to compute the norm, which is cached for these A and B.
            return lora_a.weight.new_empty(0)
        with torch.no_grad():
            return lora_weight_of(lora_A, lora_B, adapter_name=adapter_name)

    def get_weight_norm(weight, lora_weight, scaling, adapter_name=None):
        key = (version(), weight.dtype, weight.device, float(scaling))
        if key not in cache:
            with torch.no_grad():
                if lora_weight.numel() == 0:  # cached for another dtype only: build BA after all
                    lora_weight = lora_weight_of(lora_a, lora_b, adapter_name=adapter_name).to(weight.dtype)
                cache.clear()
                cache[key] = norm_of(weight, lora_weight, scaling, adapter_name=adapter_name)
        return cache[key]

    dora.get_lora_weight, dora.get_weight_norm = get_lora_weight, get_weight_norm


def cache_dora_norms(model: Any) -> int:
    """Patch every DoRA linear layer of ``model`` (a PEFT model) in place; returns how many."""
    from peft.tuners.lora.dora import DoraLinearLayer

    n = 0
    for module in model.modules():
        for name, dora in getattr(module, "lora_magnitude_vector", {}).items():
            if type(dora) is DoraLinearLayer:  # embeddings and convolutions keep PEFT's own path
                _patch(dora, module.lora_A[name], module.lora_B[name])
                n += 1
    return n
