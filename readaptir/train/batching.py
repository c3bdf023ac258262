"""Training data plan: passages → seeded batches → model inputs, for the two ``train.batching`` modes.

Pure functions of the seed and the cache, so the optimizer step number is the position in the data (what
makes checkpoints resumable, :mod:`readaptir.train.checkpoint`). Used by :mod:`readaptir.train.knowledge`.
Each passage is ``[BOS] + tokens(title + " " + text)[: max_tokens - 2] + [EOS]``: the text is truncated,
never the EOS.

Two batching modes (``train.batching``):

* ``paper`` — the recipe as published: ``batch_size`` (4) passages per step, right-padded to the longest,
  padding masked out of attention and loss. One epoch of N passages takes ``ceil(N / 4)`` optimizer steps:
  MS-MARCO's 8.84M passages = 2.21M steps, ≈ 13 GPU-days on an H200 (docs/method.md §6), and with a mean passage of
  ≈ 80 tokens padded to the batch's longest, a large share of every step is padding.
* ``packed`` — the fast path: whole passages are concatenated, in the same seeded order, until a step holds
  ``batch_size × max_tokens`` (4 × 1024 = 4096) tokens, laid out as one padding-free row (transformers'
  "flattened" layout, what flash-attention varlen consumes). ``position_ids`` restart at 0 at every
  passage and the model is called with ``attention_mask=None, use_cache=False``: on CUDA the passage
  boundaries go to PyTorch's fused varlen kernel (:mod:`readaptir.attention`), elsewhere transformers
  builds a block-diagonal causal mask for SDPA; either way no passage sees another;
  docs/method.md §7: without ``use_cache=False`` a cache is built and passages silently attend to each other. The
  first token of each passage is not a label, so no passage's EOS predicts the next passage's BOS. Every
  passage's loss is therefore exactly what it would be alone; the step loss is the token-weighted mean.
  Padding fraction is 0 (a step's row just ends early when the next passage does not fit).
  Cost of the single row: the varlen kernel only computes the diagonal blocks, but SDPA with a mask
  evaluates the block-diagonal mask densely over the whole 4096-token row (and loses its flash kernel):
  at 7B shapes ≈ 4·4096·4096 = 67 MFLOP per token per layer against ≈ 404 MFLOP of matmuls (+17%, vs
  +4%); at the tiny test shapes (hidden 64) attention dominates, so packed is slower there.
  Steps per epoch ≈ total tokens / 4096 — MS-MARCO: 8.84M × ≈ 80 tokens ≈ 0.7B tokens ≈ 170k steps,
  about 13× fewer steps than ``paper`` at ≈ 13× the tokens per step (≈ 51 passages per step instead of 4).

Learning-rate schedule: linear decay from ``lr`` to 0 over the run's own number of optimizer steps (after
``warmup_ratio`` of them warming up), so both modes traverse the full schedule in one epoch; ``packed``
takes fewer, larger steps with the same peak lr 2e-4 (not re-tuned: the published recipe only covers
``paper``). Loss is the mean over target tokens of a step in both modes (a long passage weighs more than a
short one, as in HF's causal-LM loss with padding masked).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from readaptir.attention.packing import PackedRow
from readaptir.train.objective import IGNORE

if TYPE_CHECKING:  # annotations only: the GPU benchmark imports this module without pydantic
    from readaptir.config import AdapterRecipe, TrainSettings
    from readaptir.train.tokens import TokenCache


def passage_ids(ids: np.ndarray, bos: int, eos: int, max_tokens: int) -> list[int]:
    """``[bos] + ids[: max_tokens - 2] + [eos]``: the text is truncated, never the EOS."""
    return [bos, *ids[: max_tokens - 2].tolist(), eos]


def select_rows(
    cache: TokenCache,
    include: frozenset[str] | None,
    exclude: frozenset[str] | None,
    max_passages: int | None,
    seed: int,
) -> np.ndarray:
    """Cache rows of the cell's knowledge corpus subset, optionally capped to a seeded random sample."""
    rows = cache.select(include, exclude)
    if max_passages is not None and len(rows) > max_passages:
        rows = np.sort(np.random.default_rng([seed, 1]).permutation(rows)[:max_passages])
    return rows


def plan_batches(
    lengths: np.ndarray, batching: str, batch_size: int, max_tokens: int, seed: int, epochs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded batch plan over passages of the given lengths (BOS/EOS included, already truncated).

    Returns ``(order, bounds)``: batch b holds passage positions ``order[bounds[b]:bounds[b + 1]]``
    (positions index ``lengths``). Epoch e shuffles with ``default_rng([seed, 0, e])``.
    """
    n = len(lengths)
    orders, bounds, start = [], [np.zeros(1, dtype=np.int64)], 0
    budget = batch_size * max_tokens  # packed: 4 × 1024 = 4096 tokens per step
    for epoch in range(epochs):
        order = np.random.default_rng([seed, 0, epoch]).permutation(n)
        if batching == "paper":
            cuts = np.arange(batch_size, n, batch_size)
        elif batching == "packed":
            cuts, used = [], 0
            for pos, length in enumerate(lengths[order].tolist()):
                if used + length > budget and used:
                    cuts.append(pos)
                    used = 0
                used += length
            cuts = np.asarray(cuts, dtype=np.int64)
        else:
            raise ValueError(f"train.batching={batching!r}: use paper or packed")
        orders.append(order)
        bounds.append(start + np.append(cuts, n).astype(np.int64))
        start += n
    return np.concatenate(orders), np.concatenate(bounds)


def collate_paper(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with attention mask; padding is not a label."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention_mask[i, : len(s)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_packed(seqs: Sequence[Sequence[int]], varlen: bool = False) -> dict[str, Any]:
    """One padding-free row of whole passages; position ids restart per passage; no cross-passage label.

    Call the model with these and ``use_cache=False`` (no attention mask): transformers 5 derives the
    block-diagonal causal mask from the restarting position ids. ``varlen`` adds the passage boundaries as
    the keywords the ``readaptir_varlen`` attention takes (built here on the host: no device sync).
    """
    row = PackedRow.of(seqs)
    # HF shifts labels inside the loss: label[t] is predicted from position t-1. A passage's first token
    # would be predicted from the previous passage's EOS, so it is not a label.
    batch = {"input_ids": row.input_ids, "position_ids": row.position_ids, "labels": row.labels(IGNORE)}
    return {**batch, **row.kwargs()} if varlen else batch


def make_batch(
    seqs: Sequence[Sequence[int]], batching: str, pad_id: int, varlen: bool = False
) -> dict[str, Any]:
    return collate_packed(seqs, varlen) if batching == "packed" else collate_paper(seqs, pad_id)


def batch_counts(lengths: np.ndarray, batching: str) -> np.ndarray:
    """``[targets, passages, real tokens, padding tokens]`` of one batch of passages of these lengths."""
    n, real = len(lengths), int(lengths.sum())
    pad = n * int(lengths.max()) - real if batching == "paper" and n else 0
    return np.array(
        [real - n, n, real, pad], dtype=np.int64
    )  # every token but each passage's BOS is a target


@dataclass
class DataPlan:
    """The data plan: a pure function of (cache rows, seed, config), so step number = position in data."""

    rows: np.ndarray
    order: np.ndarray
    bounds: np.ndarray
    total_steps: int
    fingerprint: str  # refuses to resume a checkpoint of a different plan
    lengths: np.ndarray  # tokens of each passage of `rows` as trained (BOS/EOS included, truncated)
    batching: str = "paper"

    @property
    def n_batches(self) -> int:
        return len(self.bounds) - 1

    def _positions(self, step: int, world: int, rank: int) -> np.ndarray:
        b = (step * world + rank) % self.n_batches
        return self.order[self.bounds[b] : self.bounds[b + 1]]

    def rows_of(self, step: int, world: int, rank: int) -> np.ndarray:
        """Cache rows of ``rank``'s batch at ``step``: batch ``step × world + rank``, wrapping at the end."""
        return self.rows[self._positions(step, world, rank)]

    def counts(self, step: int, world: int) -> np.ndarray:
        """:func:`batch_counts` of ``step`` summed over all ranks: every process knows them without asking."""
        return sum(
            batch_counts(self.lengths[self._positions(step, world, r)], self.batching) for r in range(world)
        )


def plan_data(
    cache: TokenCache, recipe: AdapterRecipe, train: TrainSettings, include, exclude, world: int
) -> DataPlan:
    rows = select_rows(cache, include, exclude, train.max_passages, train.seed)
    if len(rows) == 0:
        raise ValueError(f"no passages to train on: the subset of {cache.path} is empty (include/exclude)")
    lengths = np.minimum(cache.lengths[rows], train.max_tokens - 2) + 2
    order, bounds = plan_batches(
        lengths, train.batching, train.batch_size, train.max_tokens, train.seed, train.epochs
    )
    what = [
        recipe.determining(),
        train.determining(),
        cache.key,
        hashlib.sha256(rows.tobytes()).hexdigest(),
        world,
    ]
    fingerprint = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
    steps = math.ceil((len(bounds) - 1) / world)
    return DataPlan(rows, order, bounds, steps, fingerprint, lengths, train.batching)
