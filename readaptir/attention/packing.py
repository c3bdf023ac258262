"""Packed rows: passages grouped under a token budget, laid out padding-free, pooled at their own EOS.

Used by padding-free encoding (:func:`readaptir.retrieval.dense.encode_ids` with ``attention="varlen"``),
by packed training (:mod:`readaptir.train.batching`) and by the GPU benchmark. Everything here is built on
the host: boundaries and the longest passage are Python ints, so a forward pass needs no device sync to
find them.

    rows = pack_rows([len(s) for s in seqs], token_budget=65536, max_per_row=256)
    row = PackedRow.of([seqs[i] for i in rows[0]]).to(device)
    hidden = model(input_ids=row.input_ids, position_ids=row.position_ids, attention_mask=None,
                   use_cache=False, **row.kwargs()).last_hidden_state
    vectors = pool_last_tokens(hidden, row.last_index)          # (passages, hidden), L2-normalised
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from readaptir.attention.kernels import cu_seqlens_from_lengths


def pack_rows(lengths: Sequence[int], token_budget: int, max_per_row: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``token_budget`` tokens (and ``max_per_row``
    passages): best-fit decreasing, each passage, longest first, into the fullest row it still fits.

    Deterministic; within a row indices come longest first. A passage longer than the budget is refused.
    """
    if token_budget <= 0:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted: the first that fits is the fullest
    for i in order:
        n = int(lengths[i])
        if not 0 < n <= token_budget:
            raise ValueError(f"passage {i} has {n} tokens; rows hold 1..{token_budget}")
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            room, r = free.pop(j)
            rows[r].append(i)
            room -= n
        else:
            r, room = len(rows), token_budget - n
            rows.append([i])
        if room > 0 and (max_per_row is None or len(rows[r]) < max_per_row):
            bisect.insort(free, (room, r))
    return rows


@dataclass(frozen=True)
class PackedRow:
    """Several passages as one ``(1, T)`` row; ``position_ids`` restart at 0 for each passage."""

    input_ids: torch.Tensor  # (1, T) long
    position_ids: torch.Tensor  # (1, T) long
    cu_seqlens: torch.Tensor  # (N + 1,) int32: passage i is tokens cu[i]:cu[i+1]
    longest: int
    last_index: torch.Tensor  # (N,) long: each passage's last token (its EOS)

    @classmethod
    def of(cls, seqs: Sequence[Sequence[int]]) -> PackedRow:
        lengths = [len(s) for s in seqs]
        if not lengths or min(lengths) == 0:
            raise ValueError("a packed row needs at least one passage and no empty one")
        cu, longest = cu_seqlens_from_lengths(lengths)
        return cls(
            input_ids=torch.tensor([t for s in seqs for t in s], dtype=torch.long)[None],
            position_ids=torch.cat([torch.arange(n) for n in lengths])[None],
            cu_seqlens=cu,
            longest=longest,
            last_index=cu[1:].long() - 1,
        )

    def to(self, device: torch.device | str) -> PackedRow:
        move = {
            k: getattr(self, k).to(device) for k in ("input_ids", "position_ids", "cu_seqlens", "last_index")
        }
        return replace(self, **move)

    def kwargs(self) -> dict[str, torch.Tensor | int]:
        """Boundaries as the keywords transformers passes down to attention functions (saves a sync)."""
        return {"cu_seq_lens_q": self.cu_seqlens, "cu_seq_lens_k": self.cu_seqlens,
                "max_length_q": self.longest, "max_length_k": self.longest}  # fmt: skip

    def labels(self, ignore: int = -100) -> torch.Tensor:
        """Next-token labels: each passage's first token is not a target (transformers shifts labels, so
        it would be predicted from the previous passage's EOS)."""
        return self.input_ids.masked_fill(self.position_ids == 0, ignore)


def pool_last_tokens(hidden: torch.Tensor, last_index: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``(1, T, H)`` or ``(T, H)`` → ``(N, H)`` float32: the hidden state at each passage's last token,
    L2-normalised when ``normalize``."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = flat.index_select(0, last_index.to(flat.device)).float()
    return F.normalize(out, dim=-1) if normalize else out
