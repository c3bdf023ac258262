"""Segment boundaries of packed rows and the two attention kernels over them: fused (CUDA) and reference.

Token-first layout throughout: ``q`` is ``(T, H_q, D)``, ``k``/``v`` are ``(T, H_kv, D)`` and
``cu_seqlens`` (int32, ``N + 1`` entries from 0 to T) marks where each of the N passages starts.

- :func:`varlen_fused` calls ``torch.nn.attention.varlen.varlen_attn`` with the signature of the installed
  torch, found by introspection (never by version number): 2.10 takes ``is_causal``; 2.11 a keyword-only
  ``window_size`` where ``(-1, 0)`` means causal; 2.12+ adds ``enable_gqa``, before which grouped-query
  models get their KV heads repeated here. The kernel needs CUDA, fp16/bf16, sm80+, head dim ≤ 256 and
  no attention dropout (:func:`fused_usable` says why not).
- :func:`varlen_reference` is one causal SDPA call per passage: exact, any device and dtype, the CPU path
  the tests compare everything against.

    cu, max_len = cu_seqlens_from_lengths([5, 3, 9])
    out = varlen_fused(q, k, v, cu, max_len) if fused_usable(q)[0] else varlen_reference(q, k, v, cu)
"""

from __future__ import annotations

import functools
import inspect
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class VarlenAPI:
    """What the installed ``varlen_attn`` accepts (introspected once)."""

    available: bool
    fn: Callable[..., torch.Tensor] | None = None
    has_is_causal: bool = False  # torch 2.10
    has_window_size: bool = False  # torch ≥ 2.11: keyword-only, (-1, 0) = causal
    has_scale: bool = False
    has_enable_gqa: bool = False  # torch ≥ 2.12
    signature: str = ""
    reason: str = ""  # why it is unavailable


@functools.lru_cache(maxsize=1)
def varlen_api() -> VarlenAPI:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as exc:  # torch < 2.10
        return VarlenAPI(False, reason=f"torch {torch.__version__} has no torch.nn.attention.varlen ({exc})")
    try:
        params = inspect.signature(varlen_attn).parameters
    except (TypeError, ValueError) as exc:
        return VarlenAPI(False, reason=f"cannot read the signature of varlen_attn: {exc}")
    known = "is_causal" in params or "window_size" in params
    return VarlenAPI(
        available=known,
        fn=varlen_attn,
        has_is_causal="is_causal" in params,
        has_window_size="window_size" in params,
        has_scale="scale" in params,
        has_enable_gqa="enable_gqa" in params,
        signature=str(inspect.signature(varlen_attn)),
        reason="" if known else "varlen_attn takes neither is_causal nor window_size",
    )


@functools.lru_cache(maxsize=16)
def _capability_major(device_index: int) -> int:
    return torch.cuda.get_device_capability(device_index)[0]


def fused_available(device: torch.device | str) -> tuple[bool, str]:
    """Whether the fused kernel can run on ``device`` at all (``(False, why)`` otherwise)."""
    api, device = varlen_api(), torch.device(device)
    if not api.available:
        return False, api.reason
    if device.type != "cuda" or not torch.cuda.is_available():
        return False, f"device {device} is not CUDA"
    if torch.version.hip is None:  # FlashAttention-2 kernels need sm80+ (A100, H100, ...)
        major = _capability_major(device.index if device.index is not None else torch.cuda.current_device())
        if major < 8:
            return False, f"compute capability {major}.x < 8.0"
    return True, ""


def fused_usable(q: torch.Tensor, dropout: float = 0.0) -> tuple[bool, str]:
    """Whether the fused kernel can take this call; else the caller runs :func:`varlen_reference`."""
    ok, why = fused_available(q.device)
    if not ok:
        return ok, why
    if q.dtype not in HALF:
        return False, f"dtype {q.dtype} (the flash kernel takes fp16/bf16)"
    if q.shape[-1] % 8 or q.shape[-1] > 256:
        return False, f"head dim {q.shape[-1]} unsupported by the flash kernel"
    if dropout > 0:
        return False, "attention dropout > 0 (varlen_attn has none)"
    return True, ""


# ------------------------------------------------------------------------------------------ boundaries


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(cu_seqlens, longest)`` of packed rows ``(T,)`` or ``(B, T)``, flattened row-major.

    A passage starts at every row start and wherever the position does not continue the previous one
    (``pos[t] != pos[t-1] + 1``): transformers' ``find_packed_sequence_indices`` rule, so this path and
    the dense block-diagonal SDPA mask isolate the same passages. ``longest`` costs one device sync.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be 1-D or 2-D, got shape {tuple(position_ids.shape)}")
    b, t = position_ids.shape
    if t == 0:
        return torch.zeros(1, dtype=torch.int32, device=position_ids.device), 0
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    start_idx = starts.reshape(-1).nonzero().reshape(-1).to(torch.int32)
    cu = torch.cat([start_idx, start_idx.new_tensor([b * t])])
    return cu, int((cu[1:] - cu[:-1]).max())


def cu_seqlens_from_lengths(
    lengths: Sequence[int], device: torch.device | str | None = None
) -> tuple[torch.Tensor, int]:
    """``(cu_seqlens, longest)`` of passages of the given lengths, built on the host (no device sync)."""
    lengths = [int(n) for n in lengths]
    if any(n <= 0 for n in lengths):
        raise ValueError(f"passage lengths must be positive, got {min(lengths)}")
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    return cu.to(device) if device is not None else cu, max(lengths, default=0)


class PositionBoundaries:
    """Boundaries from ``position_ids``, computed once per forward instead of once per layer.

    Every decoder layer receives the same ``position_ids`` object; it is recognised by a weak reference
    and its in-place version counter (never by address, which the caching allocator reuses).
    """

    def __init__(self) -> None:
        self._ref: weakref.ref | None = None
        self._version = -1
        self._value: tuple[torch.Tensor, int] | None = None

    def __call__(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        same = self._ref is not None and self._ref() is position_ids
        if same and self._version == position_ids._version and self._value is not None:
            return self._value
        self._value = cu_seqlens_from_position_ids(position_ids)
        self._ref, self._version = weakref.ref(position_ids), position_ids._version
        return self._value


# ------------------------------------------------------------------------------------------ kernels


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(T, H_kv, D)`` → ``(T, H_kv · n_rep, D)``; query head h reads KV head ``h // n_rep`` (as transformers)."""
    if n_rep == 1:
        return x
    t, h, d = x.shape
    return x[:, :, None, :].expand(t, h, n_rep, d).reshape(t, h * n_rep, d)


def window_left(sliding_window: int | None, longest: int) -> int:
    """Tokens a query may see to its left (-1: all). transformers keeps kv where ``q - kv < W``."""
    if not sliding_window or sliding_window <= 0 or longest <= sliding_window:
        return -1
    return int(sliding_window) - 1


def varlen_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    left: int = -1,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Exact attention within each passage: one SDPA call per passage. Returns ``(T, H_q, D)``."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    bounds = cu_seqlens.tolist()
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        qs, ks, vs = (x[s:e].transpose(0, 1)[None] for x in (q, k, v))  # (1, H, L, D)
        n = e - s
        if causal and 0 <= left < n - 1:
            i = torch.arange(n, device=q.device)
            allowed = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] <= left)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed, dropout_p=dropout, scale=scale)
        else:
            o = F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=causal and n > 1, dropout_p=dropout, scale=scale
            )
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs) if outs else q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])


def varlen_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    longest: int,
    *,
    scale: float | None = None,
    causal: bool = True,
    left: int = -1,
) -> torch.Tensor:
    """``varlen_attn`` called the way the installed torch expects. Returns ``(T, H_q, D)``."""
    api = varlen_api()
    kwargs: dict[str, Any] = {}
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        if api.has_enable_gqa:
            kwargs["enable_gqa"] = True
        else:  # torch 2.10 / 2.11 document H_q == H_kv only
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    default = q.shape[-1] ** -0.5
    if scale is not None and not math.isclose(scale, default, rel_tol=1e-6):
        if api.has_scale:
            kwargs["scale"] = float(scale)
        else:  # softmax((c·q) kᵀ / √d) with c = scale·√d
            q = q * (scale / default)
    if api.has_window_size:
        # A tuple: varlen_attn derives is_causal from `window_size == (-1, 0)`, which a list never equals.
        kwargs["window_size"] = (left, 0) if causal else (-1, -1)
    elif left >= 0:
        raise ValueError("this torch's varlen_attn has no window_size: use the reference for sliding windows")
    else:
        kwargs["is_causal"] = bool(causal)
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    assert api.fn is not None
    return api.fn(
        q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, int(longest), int(longest), **kwargs
    )
