"""The transformers attention implementation ``readaptir_varlen``: packed rows through the fused kernel.

:func:`register` adds it to transformers' ``AttentionInterface`` (the function) and
``AttentionMaskInterface`` (a mask function that never builds a dense mask); :func:`set_attention`
switches an already loaded model, PEFT-wrapped or not. Calling convention for packed rows, the same
keyword names transformers' own flash-attention integration passes down to every layer:

    model(input_ids=(1, T), position_ids=(1, T) restarting at 0 per passage, attention_mask=None,
          use_cache=False, cu_seq_lens_q=..., cu_seq_lens_k=..., max_length_q=..., max_length_k=...)

The ``cu_seq_lens_*`` / ``max_length_*`` keywords (:meth:`readaptir.attention.packing.PackedRow.kwargs`)
are optional; without them the boundaries come from ``position_ids`` (one device sync per forward). Each
call takes the fused kernel when :func:`~readaptir.attention.kernels.fused_usable` allows it and the exact
per-passage reference otherwise (CPU, float32, dropout); :data:`PATHS` counts which, so a benchmark can
prove the kernel really ran. Padded batches (a 2-D mask) are unpadded into passages, like FA2 does.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from readaptir.attention.kernels import (
    HALF,
    PositionBoundaries,
    cu_seqlens_from_lengths,
    fused_usable,
    varlen_api,
    varlen_fused,
    varlen_reference,
    window_left,
)

ATTN_NAME = "readaptir_varlen"
BACKENDS = {"sdpa": "sdpa", "varlen": ATTN_NAME}  # backend name (keys, Runtime) → attn_implementation


class PathCounts(Counter):
    """Layer calls per path (``fused:<source>``, ``reference:<source>``, ``sdpa:<why>``); ``reason`` says
    why the last reference call did not take the fused kernel."""

    reason: str = ""

    def reset(self) -> None:
        self.clear()
        self.reason = ""


PATHS = PathCounts()
FORCE_REFERENCE = False  # set True to run the reference even on CUDA (A/B checks in the GPU benchmark)
_BOUNDARIES = PositionBoundaries()


def _sdpa(module, query, key, value, attention_mask, dropout, scaling, kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _half_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The fp16/bf16 dtype of the layer's weights: fp32 activations from fp32 adapter layers are cast back
    to it, as transformers' FA2 path does (``fa_peft_integration_check``)."""
    return next((p.dtype for p in module.parameters() if p.dtype in HALF), None)


def _unpad(attention_mask, position_ids, b, s, tensors):
    """Keep the attended tokens of a padded batch; passages split at row starts and position restarts
    (so packed rows that also carry end padding stay isolated)."""
    mask = attention_mask[:, -s:].to(torch.bool).reshape(-1)
    keep = mask.nonzero().reshape(-1)
    n = keep.numel()
    starts = torch.ones(n, dtype=torch.bool, device=keep.device)
    if n > 1:
        row = torch.div(keep, s, rounding_mode="floor")
        starts[1:] = row[1:] != row[:-1]
        if position_ids is not None and position_ids.shape[-1] == s:
            p = position_ids.expand(b, -1).reshape(-1).index_select(0, keep)
            starts[1:] |= p[1:] != p[:-1] + 1
    cu = F.pad(starts.nonzero().reshape(-1).to(torch.int32), (0, 1), value=n)
    longest = int((cu[1:] - cu[:-1]).max()) if n else 0
    return keep, cu, longest, [t.index_select(0, keep) for t in tensors]


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``AttentionInterface`` function: query ``(B, H_q, S, D)``, key/value ``(B, H_kv, S, D)`` after RoPE →
    ``((B, S, H_q, D), None)``. Boundaries from, in order: ``cu_seq_lens_q`` keywords, a 2-D padding mask,
    ``position_ids`` (packed rows); otherwise every row is one sequence."""
    b, hq, s, d = query.shape
    is_causal = kwargs.pop("is_causal", None)
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    if attention_mask is not None and attention_mask.dim() != 2:
        PATHS["sdpa:4d-mask"] += 1  # a caller-prepared 4-D mask is honoured as given
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    if key.shape[2] != s:  # decoding with a KV cache: not what this implementation is for
        if attention_mask is not None:
            raise NotImplementedError(f"{ATTN_NAME}: a padding mask with a KV cache; generate with sdpa")
        PATHS["sdpa:kv-cache"] += 1
        return _sdpa(module, query, key, value, None, dropout, scaling, kwargs)
    q, k, v = (x.transpose(1, 2).reshape(b * s, x.shape[1], x.shape[-1]) for x in (query, key, value))
    keep, position_ids = None, kwargs.get("position_ids")
    if kwargs.get("cu_seq_lens_q") is not None and attention_mask is None:
        cu, longest, source = kwargs["cu_seq_lens_q"], kwargs.get("max_length_q"), "kwargs"
        longest = int(longest) if longest is not None else int((cu[1:] - cu[:-1]).max())
    elif attention_mask is not None:
        keep, cu, longest, (q, k, v) = _unpad(attention_mask, position_ids, b, s, (q, k, v))
        source = "padding-mask"
    elif position_ids is not None and s > 1:
        cu, longest = _BOUNDARIES(position_ids if position_ids.shape[0] == b else position_ids.expand(b, -1))
        source = "position-ids"
    else:
        cu, longest = cu_seqlens_from_lengths([s] * b, device=query.device)
        source = "rows"
    left = window_left(kwargs.get("sliding_window"), longest) if causal else -1
    in_dtype, p = q.dtype, dropout if module.training else 0.0
    if q.is_cuda and in_dtype == torch.float32 and not FORCE_REFERENCE and (half := _half_dtype(module)):
        q, k, v = q.to(half), k.to(half), v.to(half)
    ok, why = (False, "forced") if FORCE_REFERENCE else fused_usable(q, p)
    if ok and left >= 0 and not varlen_api().has_window_size:
        ok, why = False, "sliding window needs varlen_attn(window_size=...), torch ≥ 2.11"
    if ok:
        out = varlen_fused(q, k, v, cu, longest, scale=scaling, causal=causal, left=left)
        PATHS[f"fused:{source}"] += 1
    else:
        out = varlen_reference(q, k, v, cu, scale=scaling, causal=causal, left=left, dropout=p)
        PATHS[f"reference:{source}"] += 1
        PATHS.reason = why
    out = out.to(in_dtype)
    if keep is not None:
        out = out.new_zeros(b * s, hq, out.shape[-1]).index_copy(0, keep, out)
    return out.reshape(b, s, hq, out.shape[-1]), None


def varlen_mask(*args: Any, attention_mask: torch.Tensor | None = None, kv_length: int | None = None,
                **kwargs: Any) -> torch.Tensor | None:  # fmt: skip
    """``AttentionMaskInterface`` function: never a dense mask. ``None`` for packed or unpadded input, the
    2-D boolean padding mask otherwise (transformers' ``flash_attention_mask`` contract). Keyword-only
    because the keywords transformers passes changed across 5.x (``cache_position`` → ``q_length``)."""
    if attention_mask is None or attention_mask.dim() != 2:
        return attention_mask
    if kv_length is not None:
        attention_mask = attention_mask[:, -kv_length:]
    if (kv_length is None or attention_mask.shape[1] == kv_length) and bool(attention_mask.all()):
        return None
    return attention_mask.to(torch.bool)


def register() -> str:
    """Register the function and its mask function as ``readaptir_varlen`` (idempotent). The mask function
    matters: transformers skips mask creation for implementations it does not know, which would silently
    drop padding masks."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, varlen_attention)
    AttentionMaskInterface.register(ATTN_NAME, varlen_mask)
    return ATTN_NAME


def _unwrap(model: Any) -> Any:
    """The transformers model under PEFT (adapter layers stay in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def get_attention(model: Any) -> str | None:
    return getattr(_unwrap(model).config, "_attn_implementation", None)


def set_attention(model: Any, backend: str) -> str | None:
    """Switch a loaded model (or PEFT model) to ``backend`` (``sdpa``, ``varlen`` or an
    ``attn_implementation`` name); returns the previous ``attn_implementation``."""
    name = BACKENDS.get(backend, backend)
    if name == ATTN_NAME:
        register()
    base = _unwrap(model)
    previous = get_attention(base)
    base.set_attn_implementation(name)
    if get_attention(base) != name:
        raise RuntimeError(f"could not switch attention to {name!r} (still {get_attention(base)!r})")
    return previous


@contextlib.contextmanager
def use_attention(model: Any, backend: str) -> Iterator[Any]:
    """``with use_attention(model, "varlen"): ...`` then back to the previous implementation."""
    previous = set_attention(model, backend)
    try:
        yield model
    finally:
        if previous is not None:
            set_attention(model, previous)


def versions() -> dict[str, str]:
    """torch / transformers / peft versions and the varlen_attn signature (benchmark reports)."""
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__}
    with contextlib.suppress(ImportError):
        import peft

        info["peft"] = peft.__version__
    api = varlen_api()
    info["varlen_attn"] = api.signature if api.available else f"unavailable: {api.reason}"
    return info
