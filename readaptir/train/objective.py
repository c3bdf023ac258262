"""The knowledge adapter's objective, computed only where it has targets: next-token cross-entropy.

transformers' causal-LM loss projects every position onto the vocabulary and keeps the float32 logits for
backward: a 4096-token row × 32,000 words ≈ 0.5 GB, and in ``paper`` batches most positions are padding.
Here the model returns its final hidden states (its LM head is an identity for the forward,
:func:`hidden_states_out`), the hidden states that predict a target are gathered (indices built on the
host, :class:`Targets`), and :class:`_TargetCrossEntropy` projects them chunk by chunk, computing the loss
and its gradient w.r.t. the hidden states in one pass, so no logits outlive their chunk. The objective is
unchanged: Σ over target tokens of ``-log softmax(W h + b)[y]`` in float32 (as transformers upcasts), the
caller dividing by the number of targets; tests compare loss and gradients with transformers' own.

    targets = Targets.of(labels)                                  # on the host: no device sync
    loss_sum = target_loss_sum(model, inputs, targets.to(device))   # a float32 scalar with a graph

Depends on torch only (the GPU benchmark imports it on bare CUDA images).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IGNORE = -100  # label value excluded from the loss (HF convention)
CHUNK_ROWS = 2048  # target rows projected at once: 2048 × 32,000 float32 logits ≈ 0.26 GB


@dataclass(frozen=True)
class Targets:
    """Which hidden states predict a target and what it is: ``index`` into the flattened ``(B·T)``
    positions (position t predicts token t + 1 of its row) and the target ``ids``."""

    index: torch.Tensor
    ids: torch.Tensor

    @classmethod
    def of(cls, labels: torch.Tensor) -> Targets:
        """From HF-style labels ``(B, T)`` (label t is predicted at t - 1; ``IGNORE`` = no target)."""
        nxt = labels[:, 1:]
        rows, cols = (nxt != IGNORE).nonzero(as_tuple=True)
        return cls(rows * labels.shape[1] + cols, nxt[rows, cols])

    def __len__(self) -> int:
        return int(self.ids.numel())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Targets:
        return Targets(
            self.index.to(device, non_blocking=non_blocking), self.ids.to(device, non_blocking=non_blocking)
        )


class _TargetCrossEntropy(torch.autograd.Function):
    """Σ cross-entropy of ``hidden @ weightᵀ + bias`` against ``ids``, chunk by chunk; the gradient w.r.t.
    ``hidden`` is computed in the same pass (``(softmax - onehot) @ weight``), so backward only scales it.
    The weight gets no gradient (the LM head is frozen; :func:`target_cross_entropy` checks)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, chunk):  # noqa: D102
        total = hidden.new_zeros((), dtype=torch.float32)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s : s + chunk], ids[s : s + chunk]
            logits = F.linear(h, weight, bias).float()
            lse = logits.logsumexp(-1)
            total += (lse - logits.gather(1, y[:, None])[:, 0]).sum()
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()  # d loss / d logits = softmax - onehot
                probs[torch.arange(len(y), device=y.device), y] -= 1
                grad[s : s + chunk] = probs.to(h.dtype) @ weight.to(h.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        (grad,) = ctx.saved_tensors
        return grad * g.to(grad.dtype), None, None, None, None


def target_cross_entropy(
    hidden: torch.Tensor, ids: torch.Tensor, head: torch.nn.Module, chunk: int = CHUNK_ROWS
) -> torch.Tensor:
    """Σ over rows of ``-log softmax(head(hidden))[ids]`` as a float32 scalar; ``hidden`` is ``(n, H)``."""
    weight, bias = head.weight, getattr(head, "bias", None)
    if weight.requires_grad or (bias is not None and bias.requires_grad):  # a trained head: plain autograd
        return F.cross_entropy(head(hidden).float(), ids, reduction="sum")
    if torch.is_autocast_enabled(hidden.device.type):  # what the head's matmul would run in
        hidden = hidden.to(torch.get_autocast_dtype(hidden.device.type))
    return _TargetCrossEntropy.apply(hidden, weight, bias, ids, chunk)


def causal_lm(model: Any) -> Any:
    """The transformers ``*ForCausalLM`` inside DDP and PEFT wrappers."""
    model = getattr(model, "module", model)
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@contextlib.contextmanager
def hidden_states_out(model: Any) -> Iterator[torch.nn.Module]:
    """For the duration, the model's "logits" are its final hidden states (the LM head is an identity);
    yields the real head. Called through the outermost wrapper, so DDP still sees the forward."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    lm.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        lm.set_output_embeddings(head)


def target_loss_sum(
    model: Any, inputs: Mapping[str, Any], targets: Targets, chunk: int = CHUNK_ROWS
) -> torch.Tensor:
    """Σ next-token cross-entropy over ``targets`` of one forward of ``model(**inputs, use_cache=False)``."""
    with hidden_states_out(model) as head:
        hidden = model(**inputs, use_cache=False).logits
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, targets.index)
    return target_cross_entropy(flat, targets.ids, head, chunk)
