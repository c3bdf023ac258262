"""Dense encoding for RepLLaMA / e5-Mistral (SPEC §2): exact prompts, EOS pooling, batching, model loading.

What: turns queries and passages into L2-normalised vectors the way the published retrievers were
trained to. Storing a corpus's embeddings (float16 memmap, one per weights × dataset) lives in
:mod:`readaptir.embeddings`; its public names stay importable from here.

Why each convention is done by hand:
- Token ids are built as ``[bos] + tokens(text)[: max_len-2] + [eos]`` by this code, never by the
  tokenizer: LLaMA's tokenizer never appends EOS and transformers >= 5 stopped doing it for e5-Mistral's,
  and plain truncation would cut the EOS the model pools on.
- Pooling takes the last *attended* position of each row (mask-aware), so left and right padding give
  the same vectors; we assert that every pooled position holds EOS. ``[:, -1]`` would pool a pad token
  on right-padded rows (SPEC §7).
- Position ids are derived from the mask, so a left-padded row sees positions 0..n-1 like an
  unpadded one.

Speed: passages are tokenized in chunks of ``CHUNK_PASSAGES`` (MS-MARCO's 8.84M never sit in memory
as tokens), sorted by length inside a chunk and packed into batches of at most ``token_budget`` padded
tokens (:func:`make_batches`, :func:`encode_ids`). With Accelerate launched on several GPUs, each process
encodes every ``num_processes``-th batch (``shard``).

    python -m experiments.bench_encode           # speed of sorted vs arrival order
    from readaptir.encode import load_base_retriever, encode_corpus_cached, encode_queries
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from readaptir.errors import UserError

log = logging.getLogger(__name__)

# Passages tokenized, sorted and encoded together: 100k × ≤512 ids ≈ 200 MB of Python ints at worst,
# and sorting inside 100k passages already brings padding to ~2-5% (SPEC §6).
CHUNK_PASSAGES = 100_000


class EncodeError(UserError):
    """A convention of SPEC §2 is violated (no EOS under the pooled position, bad config, ...)."""


# ---------------------------------------------------------------------------------------------- texts


def format_query(model_cfg: Mapping[str, Any], dataset_cfg: Mapping[str, Any], query: str) -> str:
    """Query prompt: RepLLaMA ``"query: " + q``; e5 ``"Instruct: " + task + "\\nQuery: " + q``."""
    return str(model_cfg["query_template"]).format(query=query, task=dataset_cfg.get("task", ""))


def format_passage(model_cfg: Mapping[str, Any], title: str, text: str) -> str:
    """Passage prompt: RepLLaMA ``"passage: " + title + " " + text``, e5 ``title + " " + text``, stripped.

    With an empty title the ``"{title} "`` slot is dropped, so RepLLaMA gives ``"passage: text"`` with one
    space (tevatron's ``format_passage`` strips the same way).
    """
    template = str(model_cfg["passage_template"])
    title, text = title.strip(), text.strip()
    if not title:
        template = template.replace("{title} ", "").replace(" {title}", "").replace("{title}", "")
    return template.format(title=title, text=text).strip()


def build_input_ids(tokenizer: Any, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """``[bos] + tokens(text)[: max_len-2] + [eos]`` per text; never relies on the tokenizer's specials."""
    if max_len < 3:
        raise EncodeError(f"max_len={max_len}: need room for BOS, one token and EOS")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise EncodeError(f"tokenizer {type(tokenizer).__name__} lacks bos/eos ids (bos={bos}, eos={eos})")
    if not texts:
        return []
    body = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_len - 2)[
        "input_ids"
    ]
    return [[bos, *ids[: max_len - 2], eos] for ids in body]


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


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def pad_id_for(tokenizer: Any, model_cfg: Mapping[str, Any] | None) -> int:
    """Pad id: the tokenizer has none; pooling is mask based, so eos (or unk) is safe (SPEC §2)."""
    which = str((model_cfg or {}).get("pad_token", "eos"))
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
    device = _device(net)
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
) -> np.ndarray | None:
    """Encode id rows in (length-sorted) batches; returns [n, hidden] float32 or streams to ``write``.

    ``write(indices, vectors)`` receives each batch at its original row indices (used to fill a memmap);
    ``shard=(rank, world)`` keeps every ``world``-th batch, for multi-GPU runs.
    """
    batches = make_batches([len(r) for r in rows], token_budget, max_batch_size, sort=sort)
    out = None
    rank, world = shard
    for bi, batch in enumerate(batches):
        if bi % world != rank:
            continue
        vecs = embed_batch(model, [rows[i] for i in batch], pad_id, eos_id, normalize=normalize).cpu().numpy()
        if write is not None:
            write(batch, vecs)
        else:
            if out is None:
                out = np.zeros((len(rows), vecs.shape[1]), dtype=np.float32)
            out[batch] = vecs
        if progress is not None:
            progress.update(len(batch))
    return out


def resolve_dtype(name: str | None, device: str | torch.device | None = None) -> torch.dtype:
    """``auto`` → bf16 on CUDA, float32 on CPU; else a torch dtype name (``bfloat16``, ``float32`` ...)."""
    if name in (None, "auto"):
        dev = torch.device(device) if device is not None else None
        cuda = torch.cuda.is_available() if dev is None else dev.type == "cuda"
        return torch.bfloat16 if cuda else torch.float32
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise EncodeError(f"dtype {name!r} is not a torch dtype (use auto, bfloat16, float16 or float32)")
    return dtype


def load_base_retriever(
    model_cfg: Mapping[str, Any],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[torch.nn.Module, Any]:
    """Base retriever as an ``AutoModel`` (no LM head) + tokenizer, in eval mode on ``device``.

    RepLLaMA-style (``retriever_kind: lora``): the LoRA merged into ``AutoModel(pretrained)``; e5-style
    (``full``): the retriever's weights; both through readaptir.readapt (float32 arithmetic, one cast).
    Tiny configs build their stand-ins first. ``dtype`` None: :func:`model_dtype`.
    """
    device = torch.device(default_device() if device is None else device)
    if dtype is None:
        dtype = model_dtype(model_cfg, {}, device)
    elif not isinstance(dtype, torch.dtype):
        dtype = resolve_dtype(dtype, device)
    if model_cfg.get("tiny"):
        from readaptir.tiny import ensure_tiny

        ensure_tiny(model_cfg["tiny"], Path(str(model_cfg["retriever"])).parents[1])
    kind = model_cfg.get("retriever_kind", "full")
    retriever = str(model_cfg["retriever"])
    log.info("Loading %s retriever %s (%s, %s) on %s", model_cfg.get("name"), retriever, kind, dtype, device)
    if kind not in ("lora", "full"):
        raise EncodeError(f"model.retriever_kind={kind!r}: use lora or full")
    from readaptir.readapt import load_base_retriever as merged_retriever

    # The same float32-then-one-cast arithmetic that builds the readapted retriever (α=0, β=1), not PEFT's
    # merge in the load dtype: in bf16 that rounds twice, and RA − Base would then carry a rounding
    # difference on every LoRA-touched matrix instead of the method's effect alone.
    model = merged_retriever(str(model_cfg["pretrained"]), retriever, dtype=dtype, device=device)
    return model.eval(), load_tokenizer(model_cfg)


def _dist() -> tuple[int, int, Callable[[], None], torch.device | None]:
    """(rank, world size, barrier, rank's device) under ``accelerate launch``, else one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # set by accelerate launch / torchrun
        from accelerate import PartialState

        state = PartialState()
        return state.process_index, state.num_processes, state.wait_for_everyone, state.device
    return 0, 1, lambda: None, None


def default_device() -> torch.device:
    """This process's device: its own GPU under ``accelerate launch``, else cuda when present, else cpu."""
    rank_device = _dist()[3]
    return rank_device or torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(model_cfg: Mapping[str, Any]) -> Any:
    """The retriever's tokenizer (the base model's when a LoRA repo ships none); base and readapted share it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_cfg["retriever"]))
    except (OSError, ValueError):
        return AutoTokenizer.from_pretrained(str(model_cfg["pretrained"]))


def model_dtype(
    model_cfg: Mapping[str, Any], encode_cfg: Mapping[str, Any], device: str | torch.device
) -> torch.dtype:
    """One dtype for the base and the readapted retriever of a cell, so RA − Base never mixes precisions.

    ``encode.dtype`` when set; ``auto``: the model's ``torch_dtype`` on CUDA (bf16 for the 7B models),
    float32 on CPU (where bf16 matmuls are slow).
    """
    name = encode_cfg.get("dtype", "auto")
    if name not in (None, "auto"):
        return resolve_dtype(name)
    if torch.device(device).type == "cuda":
        return resolve_dtype(model_cfg.get("torch_dtype") or "auto", device)
    return torch.float32


# ---------------------------------------------------------------------------------------------- queries


def encode_queries(
    model: torch.nn.Module,
    tokenizer: Any,
    model_cfg: Mapping[str, Any],
    dataset_cfg: Mapping[str, Any],
    queries: Mapping[str, str],
    encode_cfg: Mapping[str, Any],
) -> tuple[list[str], np.ndarray]:
    """``(query ids, [n, hidden] float32)`` with the model's query prompt (e5: the dataset's task)."""
    qids = list(queries)
    texts = [format_query(model_cfg, dataset_cfg, queries[q]) for q in qids]
    rows = build_input_ids(tokenizer, texts, int(model_cfg.get("query_max_len", 512)))
    with tqdm(total=len(rows), desc="encode queries", unit="q", leave=False) as bar:
        emb = encode_ids(
            model.eval(),
            rows,
            pad_id_for(tokenizer, model_cfg),
            tokenizer.eos_token_id,
            int(encode_cfg.get("token_budget", 65536)),
            int(encode_cfg.get("max_batch_size", 256)),
            normalize=bool(model_cfg.get("normalize", True)),
            progress=bar,
        )
    if emb is None:
        emb = np.zeros((0, backbone(model).config.hidden_size), dtype=np.float32)
    return qids, emb


# ---------------------------------------------------------------------------------------------- corpus

# The stored corpus embeddings live in readaptir.embeddings, which imports this module; re-exporting them
# lazily (PEP 562) keeps `from readaptir.encode import CorpusEmbeddings` working in any import order.
_EMBEDDINGS_NAMES = frozenset(
    "EMB_FILE IDS_FILE META_FILE CorpusEmbeddings check_ids corpus_fields embedding_key "
    "encode_corpus_cached write_corpus_files write_ids_meta".split()
)


def __getattr__(name: str) -> Any:
    if name in _EMBEDDINGS_NAMES:
        from readaptir import embeddings

        return getattr(embeddings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
