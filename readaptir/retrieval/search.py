"""Exact inner-product search over stored corpus embeddings, with self-hits removed.

Two exact backends give the same ranking:
- ``faiss``: ``IndexFlatIP`` (moved to the GPU when faiss-gpu and CUDA are present), built from the
  float16 file chunk by chunk. Holds the whole corpus as float32, and while it grows up to twice that
  (SmolLM2 on MS-MARCO: 20 GB as float32, ≈ 42 GB at the peak). FAISS is an extra (``readaptir[cpu]`` or
  ``readaptir[gpu]``, never both); without it ``auto`` streams.
- ``stream``: reads the float16 file ``chunk_size`` rows at a time (file reads: what was read leaves the
  resident set) and keeps a running top-k per query with ``torch.topk``. On a GPU a chunk is converted to
  float32 there; on the host it is converted and scored ``CONVERT_BYTES`` of float32 at a time (262144 ×
  4096 would be a 4 GB float32 copy). Memory: one float16 chunk plus one float32 sub-block plus scores,
  at any corpus size; each score is the same dot product, so the run is bitwise the same.

``auto`` (:func:`auto_backend`) picks FAISS only where it is both faster and fits: on a GPU whose free
memory (and ``search.faiss_max_gb``) holds twice the float32 corpus. On the host the streaming path was
measured faster than FAISS's flat index at every size (experiments/bench_scale.py: 10k to 8.8M
passages; 1.16× at 1M × 576) with a fraction of its memory, so host searches stream.

Self-hits (query id == doc id: ArguAna, Quora) are removed for every dataset: we retrieve ``top_k + 1``
and drop the query's own id, so every query still gets ``top_k`` documents.

    run = search(qids, q_emb, CorpusEmbeddings.open(path), top_k=1000, backend="stream")
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from readaptir.errors import UserError
from readaptir.retrieval.base import Run, without_self_hits
from readaptir.retrieval.embeddings import CorpusEmbeddings
from readaptir.store.rows import LineIds

log = logging.getLogger(__name__)

# Queries scored together in the streaming path: 256 × 262144 float32 scores = 268 MB per step.
QUERY_BLOCK = 256
# Host streaming: float32 rows converted and scored at once (256 MB: 16384 rows at 4096 dims).
CONVERT_BYTES = 1 << 28


def drop_self_hits(
    query_ids: Sequence[str],
    doc_ids: Sequence[str] | Mapping[int, str],
    scores: np.ndarray,
    indices: np.ndarray,
    top_k: int,
) -> Run:
    """Turn ``[nq, k]`` score/index arrays into a run, skipping each query's own id and padding (-1).

    ``doc_ids`` maps a row to its doc id: the corpus's id list, or only the rows in ``indices``."""
    return {
        qid: without_self_hits(
            qid,
            (
                (doc_ids[j], s)
                for s, j in zip(scores[qi].tolist(), indices[qi].tolist(), strict=True)
                if j >= 0
            ),
            top_k,
        )
        for qi, qid in enumerate(query_ids)
    }


def _chunks(corpus: CorpusEmbeddings, chunk_size: int, desc: str):
    """(first row, rows) of the corpus embeddings, ``chunk_size`` rows at a time, with a progress bar."""
    n = -(-len(corpus) // chunk_size)
    return tqdm(corpus.chunks(chunk_size), desc=desc, unit="chunk", leave=False, total=n)


def faiss_topk(
    query_emb: np.ndarray, corpus: CorpusEmbeddings, k: int, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with FAISS; GPU index when faiss-gpu and a CUDA device are present."""
    faiss = _import_faiss()
    index = faiss.IndexFlatIP(corpus.matrix.shape[1])
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
        log.info("FAISS: GPU flat index")
    for _, rows in _chunks(corpus, chunk_size, "faiss add"):
        index.add(np.ascontiguousarray(rows, dtype=np.float32))
    return index.search(np.ascontiguousarray(query_emb, dtype=np.float32), k)


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise UserError(
            "search.backend=faiss needs FAISS: pip install 'readaptir[cpu]' (or 'readaptir[gpu]' on CUDA "
            "machines; never both), or set search.backend=stream"
        ) from None
    from importlib.metadata import packages_distributions

    owners = sorted(set(packages_distributions().get("faiss", [])))
    if len(owners) > 1:  # both wheels own faiss/: one's files overwrite the other's (faiss issue 2892)
        log.warning("several distributions provide faiss (%s); keep one: `make install` repairs it", owners)
    return faiss


def stream_topk(
    query_emb: np.ndarray,
    corpus: CorpusEmbeddings,
    k: int,
    chunk_size: int,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over float16 chunks with a running ``torch.topk``; never holds the whole corpus."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    q = torch.from_numpy(np.ascontiguousarray(query_emb, dtype=np.float32)).to(device)
    nq, dim = q.shape
    # On the host, read (and convert) sub-blocks: a float32 copy of a whole chunk is twice its size.
    step = chunk_size if device.type == "cuda" else max(1, min(chunk_size, CONVERT_BYTES // (4 * dim)))
    best_s = torch.full((nq, 0), float("-inf"), device=device)
    best_i = torch.zeros((nq, 0), dtype=torch.long, device=device)
    for start, rows in _chunks(corpus, step, "stream search"):
        c = torch.from_numpy(rows).to(device).float()  # float16 → float32 on the device
        del rows
        new_s, new_i = [], []
        for qs in range(0, nq, QUERY_BLOCK):
            scores = q[qs : qs + QUERY_BLOCK] @ c.T
            s, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            new_s.append(s)
            new_i.append(i + start)
        del c, scores
        # Merge this block's candidates with the running best: top-k of the union is exact.
        merged_s = torch.cat([best_s, torch.cat(new_s)], dim=1)
        merged_i = torch.cat([best_i, torch.cat(new_i)], dim=1)
        best_s, pos = torch.topk(merged_s, min(k, merged_s.shape[1]), dim=1)
        best_i = torch.gather(merged_i, 1, pos)
    return best_s.cpu().numpy(), best_i.cpu().numpy()


def _faiss_gpu_free_bytes() -> int:
    """Free memory of GPU 0 when faiss-gpu can use it, else 0 (a host FAISS index is never preferred)."""
    faiss = _import_faiss()
    if not (
        hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 and torch.cuda.is_available()
    ):
        return 0
    return int(torch.cuda.mem_get_info(0)[0])


def auto_backend(shape: tuple[int, int], faiss_max_gb: float, gpu_free_bytes: int | None = None) -> str:
    """``faiss`` where it is faster and fits, else ``stream``.

    FAISS's flat index holds the corpus as float32 and up to twice that while it grows: it is chosen only
    on a GPU (faiss-gpu) whose free memory and ``faiss_max_gb`` both hold twice the float32 corpus. On the
    host the streaming path is faster (module docstring) at bounded memory. ``gpu_free_bytes``: measured
    when None.
    """
    if importlib.util.find_spec("faiss") is None:
        return "stream"
    need = 2 * shape[0] * shape[1] * 4
    free = _faiss_gpu_free_bytes() if gpu_free_bytes is None else gpu_free_bytes
    return "faiss" if need <= min(faiss_max_gb * 2**30, free) else "stream"


def search(
    query_ids: Sequence[str],
    query_emb: np.ndarray,
    corpus: CorpusEmbeddings,
    top_k: int = 1000,
    backend: str = "auto",
    chunk_size: int = 262144,
    faiss_max_gb: float = 32.0,
) -> Run:
    """``{query id: {doc id: score}}`` with the ``top_k`` best documents per query, self-hits removed."""
    if len(query_ids) != len(query_emb):
        raise ValueError(f"{len(query_ids)} query ids but {len(query_emb)} query embeddings")
    if len(query_ids) and query_emb.shape[1] != corpus.matrix.shape[1]:
        raise ValueError(
            f"query dim {query_emb.shape[1]} != corpus dim {corpus.matrix.shape[1]} ({corpus.path})"
        )
    if not len(query_ids) or not len(corpus):
        return {q: {} for q in query_ids}
    k = min(top_k + 1, len(corpus))  # one spare slot for a self-hit
    if backend == "auto":
        backend = auto_backend(corpus.matrix.shape, faiss_max_gb)
    if backend == "faiss":
        scores, indices = faiss_topk(query_emb, corpus, k, chunk_size)
    elif backend == "stream":
        scores, indices = stream_topk(query_emb, corpus, k, chunk_size)
    else:
        raise ValueError(f"search.backend={backend!r}: use auto, faiss or stream")
    ids = corpus.ids
    doc_ids = ids.lookup(indices) if isinstance(ids, LineIds) else ids  # only the rows retrieved
    return drop_self_hits(query_ids, doc_ids, scores, indices, top_k)
