"""Dense LLM retrievers (RepLLaMA, e5-Mistral and their readapted versions): batching, EOS pooling, search.

- Pooling takes the last *attended* position of each row (mask-aware), so left and right padding give the
  same vectors; every pooled position is asserted to hold EOS. ``[:, -1]`` would pool a pad token on
  right-padded rows.
- Position ids are derived from the mask, so a left-padded row sees positions 0..n-1 like an unpadded one.
- Speed: texts are sorted by length and packed into batches of at most ``token_budget`` padded tokens
  (:func:`make_batches`): padding ≈ 2–5% instead of ≈ 66% in arrival order. ``attention="varlen"`` (the
  Runtime's pick on CUDA in half precision): no padding at all, passages packed into rows of up to
  ``token_budget`` tokens, isolated by the fused kernel (:mod:`readaptir.attention`), each pooled at its
  own EOS. Under a multi-GPU launch each process encodes every ``world``-th batch (``shard``).

    retriever = DenseRetriever(model, tokenizer, DensePrompts.of(model_spec, dataset_spec), encode, search)
    run = retriever.search(retriever.open_index(path), retriever.encode_queries(queries), top_k=1000)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from readaptir.attention.interface import set_attention
from readaptir.attention.packing import PackedRow, pack_rows, pool_last_tokens
from readaptir.retrieval.base import IndexBuild, Run
from readaptir.retrieval.embeddings import CorpusEmbeddings, corpus_index_build
from readaptir.retrieval.prompts import EncodeError, build_input_ids, format_query
from readaptir.retrieval.search import search
from readaptir.store.rows import Ragged

if TYPE_CHECKING:  # annotations only: the GPU benchmark imports this module without pydantic
    from readaptir.config import DatasetSpec, EncodeSettings, ModelSpec, SearchSettings


# ---------------------------------------------------------------------------------------------- batching


def make_batches(
    lengths: Sequence[int], token_budget: int, max_batch_size: int, sort: bool = True
) -> list[np.ndarray]:
    """Index batches whose padded size (rows × longest row) stays within ``token_budget``.

    Sorted (longest first, so an out-of-memory shows up on the first batch) the rows of a batch have
    nearly equal lengths and padding is small; ``sort=False`` keeps arrival order with fixed-size batches
    of ``max_batch_size`` (what most encoders do; kept for the benchmark).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if not sort:
        return [
            np.arange(i, min(i + max_batch_size, len(lengths)))
            for i in range(0, len(lengths), max_batch_size)
        ]
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, min(max_batch_size, token_budget // max(longest, 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


def padding_fraction(lengths: Sequence[int], batches: Sequence[np.ndarray]) -> float:
    """Share of pad tokens among all tokens fed to the model."""
    lengths = np.asarray(lengths)
    real = sum(int(lengths[b].sum()) for b in batches)
    fed = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1.0 - real / max(fed, 1)


# ---------------------------------------------------------------------------------------------- model


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer without its LM head: a ``*ForCausalLM`` is unwrapped, an ``AutoModel`` kept."""
    inner = getattr(model, "model", None)
    if hasattr(model, "lm_head") and isinstance(inner, torch.nn.Module):
        return inner
    return model


def pad_id_for(tokenizer: Any, which: str = "eos") -> int:
    """Pad id: the tokenizer has none; pooling is mask based, so eos (or unk) is safe."""
    pid = tokenizer.unk_token_id if which == "unk" else tokenizer.eos_token_id
    return int(pid if pid is not None else tokenizer.eos_token_id)


@torch.inference_mode()
def embed_batch(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    eos_id: int,
    padding_side: str = "right",
    normalize: bool = True,
) -> torch.Tensor:
    """Float32 [n, hidden] embeddings of id rows: mask-aware last-token (EOS) pooling, then L2 norm."""
    net = backbone(model)
    device = next(net.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
        ids[i, sl] = torch.as_tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    # Positions count real tokens only: a left-padded row then sees 0..n-1 exactly like an unpadded one.
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    hidden = net(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
    ).last_hidden_state
    # Last attended index of every row, right for left and right padding alike (never [:, -1]).
    last = (mask * torch.arange(width, device=device)).argmax(dim=1)
    rows_idx = torch.arange(len(rows), device=device)
    pooled_ids = ids[rows_idx, last]
    if not bool((pooled_ids == eos_id).all()):
        bad = int((pooled_ids != eos_id).nonzero()[0, 0])
        raise EncodeError(f"pooled position of row {bad} holds id {int(pooled_ids[bad])}, not EOS {eos_id}")
    out = hidden[rows_idx, last].float()
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


@torch.inference_mode()
def embed_packed(
    model: torch.nn.Module, rows: Sequence[Sequence[int]], eos_id: int, normalize: bool = True
) -> torch.Tensor:
    """Float32 [n, hidden] embeddings of id rows laid out as one padding-free row (position ids restart
    per passage, no attention mask), each pooled at its own last token. Under ``readaptir_varlen`` the
    boundaries go to the fused kernel; under SDPA transformers builds a block-diagonal mask instead."""
    bad = next((i for i, r in enumerate(rows) if r[-1] != eos_id), None)
    if bad is not None:
        raise EncodeError(f"row {bad} ends with id {rows[bad][-1]}, not EOS {eos_id}: nothing to pool")
    net = backbone(model)
    row = PackedRow.of(rows).to(next(net.parameters()).device)
    hidden = net(input_ids=row.input_ids, position_ids=row.position_ids, attention_mask=None, use_cache=False,
                 **row.kwargs()).last_hidden_state  # fmt: skip
    return pool_last_tokens(hidden, row.last_index, normalize)


def encode_ids(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    eos_id: int,
    token_budget: int = 65536,
    max_batch_size: int = 256,
    sort: bool = True,
    normalize: bool = True,
    write: Callable[[np.ndarray, np.ndarray], None] | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: tqdm | None = None,
    attention: str = "sdpa",
) -> np.ndarray | None:
    """Encode id rows in (length-sorted) batches; returns [n, hidden] float32 or streams to ``write``.

    ``write(indices, vectors)`` receives each batch at its original row indices (used to fill a memmap);
    ``shard=(rank, world)`` keeps every ``world``-th batch, for multi-GPU runs. ``attention="varlen"``:
    padding-free packed rows of at most ``token_budget`` tokens and ``max_batch_size`` passages (the model
    must use the ``readaptir_varlen`` implementation, :func:`readaptir.attention.interface.set_attention`).
    """
    lengths = rows.lengths.tolist() if isinstance(rows, Ragged) else [len(r) for r in rows]
    if attention == "varlen":
        budget = max(token_budget, max(lengths, default=0))  # a passage longer than the budget: its own row
        batches = [np.asarray(b) for b in pack_rows(lengths, budget, max_batch_size)]
    else:
        batches = make_batches(lengths, token_budget, max_batch_size, sort=sort)
    out = None
    rank, world = shard
    for bi, batch in enumerate(batches):
        if bi % world != rank:
            continue
        ids = [rows[i] for i in batch]
        if attention == "varlen":
            vecs = embed_packed(model, ids, eos_id, normalize).cpu().numpy()
        else:
            vecs = embed_batch(model, ids, pad_id, eos_id, normalize=normalize).cpu().numpy()
        if write is not None:
            write(batch, vecs)
        else:
            if out is None:
                out = np.zeros((len(rows), vecs.shape[1]), dtype=np.float32)
            out[batch] = vecs
        if progress is not None:
            progress.update(len(batch))
    return out


@dataclass(frozen=True)
class DensePrompts:
    """How texts become token ids for one model on one dataset."""

    query_template: str
    passage_template: str
    task: str
    query_max_len: int
    passage_max_len: int
    pad_token: str = "eos"
    normalize: bool = True

    @classmethod
    def of(cls, model: ModelSpec, dataset: DatasetSpec) -> DensePrompts:
        return cls(model.query_template, model.passage_template, dataset.task, model.query_max_len,
                   model.passage_max_len, model.pad_token, model.normalize)  # fmt: skip


class DenseRetriever:
    """A dense retriever held in memory: corpus → float16 embedding index, queries → vectors, exact search."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        prompts: DensePrompts,
        encode: EncodeSettings,
        search: SearchSettings,
        shard: tuple[int, int] = (0, 1),
        attention: str = "sdpa",
    ) -> None:
        self.model, self.tokenizer, self.prompts = model.eval(), tokenizer, prompts
        self.encode, self.search_settings, self.shard = encode, search, shard
        self.attention = attention  # "varlen": padding-free packed rows (Runtime.encode_attention)
        if attention == "varlen":
            set_attention(backbone(model), "varlen")

    def encoder(self) -> Callable[[Sequence[Sequence[int]], Callable, tqdm | None], None]:
        """``encode(rows, write, progress)``: this process's share of ``rows`` into ``write(idx, vecs)``."""
        pad_id = pad_id_for(self.tokenizer, self.prompts.pad_token)

        def encode(rows, write, progress=None) -> None:
            encode_ids(
                self.model,
                rows,
                pad_id,
                self.tokenizer.eos_token_id,
                self.encode.token_budget,
                self.encode.max_batch_size,
                normalize=self.prompts.normalize,
                write=write,
                shard=self.shard,
                progress=progress,
                attention=self.attention,
            )

        return encode

    def index_build(self, corpus_root: Path) -> IndexBuild:
        p = self.prompts
        dim = int(backbone(self.model).config.hidden_size)

        def to_rows(texts: list[str]) -> Ragged:  # one flat array per chunk, not a list per passage
            return Ragged.of(build_input_ids(self.tokenizer, texts, p.passage_max_len))

        return corpus_index_build(
            corpus_root, p.passage_template, dim, to_rows, self.encoder(), self.shard[0]
        )

    def open_index(self, path: Path) -> CorpusEmbeddings:
        return CorpusEmbeddings.open(path)

    def encode_queries(self, queries: Mapping[str, str]) -> tuple[list[str], np.ndarray]:
        """``(query ids, [n, hidden] float32)`` with the model's query prompt (e5: the dataset's task)."""
        qids = list(queries)
        p = self.prompts
        texts = [format_query(p.query_template, p.task, queries[q]) for q in qids]
        rows = build_input_ids(self.tokenizer, texts, p.query_max_len)
        emb = np.zeros((len(rows), backbone(self.model).config.hidden_size), dtype=np.float32)

        def write(idx: np.ndarray, vecs: np.ndarray) -> None:
            emb[idx] = vecs

        with tqdm(total=len(rows), desc="encode queries", unit="q", leave=False) as bar:
            pad_id = pad_id_for(self.tokenizer, p.pad_token)
            encode_ids(self.model, rows, pad_id, self.tokenizer.eos_token_id, self.encode.token_budget,
                       self.encode.max_batch_size, normalize=p.normalize, write=write, progress=bar,
                       attention=self.attention)  # fmt: skip
        return qids, emb

    def search(self, index: CorpusEmbeddings, queries: tuple[list[str], np.ndarray], top_k: int) -> Run:
        s = self.search_settings
        return search(queries[0], queries[1], index, top_k, s.backend, s.chunk_size, s.faiss_max_gb)


def load_tokenizer(*folders: str | Path) -> Any:
    """The first folder's tokenizer that loads (a LoRA repo may ship none: then the base model's)."""
    from transformers import AutoTokenizer

    for folder in folders[:-1]:
        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError):
            continue
    return AutoTokenizer.from_pretrained(str(folders[-1]))
