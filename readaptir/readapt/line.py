"""Many α for the price of one read: ``W(α) = W_ret + α·Ψ`` formed in place on one model.

With ``knowledge_scaling=delta`` the readapted retriever is linear in α (docs/method.md §1): choosing α
among a grid needs ``W_ret = W_pre + β·Δ`` and ``Ψ = W_K − W_pre`` once, then each candidate is a float32
``W_ret + α·Ψ`` cast into the model's parameters, with no readapted model written per α. ``peft_scale`` is
not linear (the DoRA magnitude stays whole while the direction is rescaled) and needs one RE-Adapt per α.

The rounding order differs from :func:`readaptir.readapt.arithmetic.readapt` (``W_pre + α·Ψ + β·Δ``) in
the last float32 bit; this path serves α *selection* only, and the chosen α is then built exactly like a
fixed-α cell, so an auto cell that picks 0.5 reports the same numbers as the 0.5 cell.

    line = KnowledgeLine.open(pretrained, retriever, adapter, beta=1.0)
    model = line.model(alpha=0.0, dtype=torch.bfloat16, device="cuda")
    for alpha in (0.25, 0.5):
        line.move(model, alpha)   # parameters now hold W_ret + α·Ψ
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from readaptir.readapt.arithmetic import _open_inputs, readapt
from readaptir.readapt.model import model_from_state_dict
from readaptir.readapt.weights import read_tensor, retriever_config


@dataclass
class KnowledgeLine:
    """``W_ret`` (float32, every tensor) and ``Ψ`` (float32, the adapted tensors only)."""

    w_ret: dict[str, torch.Tensor]
    psi: dict[str, torch.Tensor]
    config: object  # the retriever's AutoModel config

    @classmethod
    def open(
        cls,
        pretrained: str | os.PathLike,
        retriever: str | os.PathLike,
        knowledge_adapter: str | os.PathLike,
        beta: float = 1.0,
    ) -> KnowledgeLine:
        w_ret, _ = readapt(pretrained, retriever, None, alpha=0.0, beta=beta)
        inp = _open_inputs(pretrained, retriever, knowledge_adapter)
        psi = {}
        for key, module in inp.know_modules.items():
            shard, name = inp.pre.files[key]
            psi[key] = module.delta(read_tensor(inp.pre_dir / shard, name))
        return cls(w_ret, psi, retriever_config(inp.pre_dir, inp.ret_dir))

    def weights(self, alpha: float) -> dict[str, torch.Tensor]:
        """Float32 state dict of ``W_ret + α·Ψ`` (new tensors; ``w_ret`` stays untouched)."""
        return {k: (w + alpha * self.psi[k]) if k in self.psi else w.clone() for k, w in self.w_ret.items()}

    def model(self, alpha: float, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        """An AutoModel holding ``W_ret + α·Ψ`` in ``dtype``."""
        state = {k: v.to(dtype) for k, v in self.weights(alpha).items()}
        return model_from_state_dict(self.config, state, device)

    @torch.no_grad()
    def move(self, model: torch.nn.Module, alpha: float) -> None:
        """Set ``model``'s adapted parameters to ``W_ret + α·Ψ`` in place (float32 sum, one cast)."""
        params = dict(model.named_parameters())
        for key, psi in self.psi.items():
            p = params[key]
            p.copy_((self.w_ret[key] + alpha * psi).to(device=p.device, dtype=p.dtype))
