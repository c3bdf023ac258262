"""The α-selection stage of an ``alpha=auto`` cell: score every candidate α on each fold's pool, keep the best.

The rules (which queries, which pool, the rank estimate, ties) are in :mod:`readaptir.grid.alpha`; this
stage runs them on the main process and stores the outcome as the ``selection`` artifact. The folds' pools
and the corpus sample are encoded together once per α (a passage's embedding does not depend on the others);
each fold is then scored on its own pool only. With ``knowledge_scaling=delta``
the candidates share one read of ``W_ret`` and ``Ψ`` (:class:`readaptir.readapt.line.KnowledgeLine`);
``peft_scale`` builds one readapted model per candidate.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from readaptir.config import CellConfig
from readaptir.data.beir import iter_corpus, load_qrels, load_queries
from readaptir.fs import atomic_write, atomic_write_json
from readaptir.grid.alpha import Selection, corpus_sample, fold_pools, fold_scores, plan_selection
from readaptir.grid.stages import EvalData
from readaptir.models.hub import ModelFolders
from readaptir.readapt.line import KnowledgeLine
from readaptir.readapt.model import build_readapted_model, load_base_retriever
from readaptir.retrieval.dense import DensePrompts, DenseRetriever, load_tokenizer
from readaptir.retrieval.lexical import BM25Retriever
from readaptir.runtime import Runtime
from readaptir.store.artifacts import ArtifactStore

log = logging.getLogger(__name__)
SELECTION_FILE = "selection.json"


def select_alpha(
    cfg: CellConfig, store: ArtifactStore, keys: dict[str, str], folders: ModelFolders, adapter: Path,
    runtime: Runtime, data: EvalData,
) -> Selection:  # fmt: skip
    """The stored selection of this cell, made on the main process when missing."""

    def build(tmp: Path) -> None:
        sel = _select(cfg, store, keys, folders, adapter, runtime, data, tmp)
        atomic_write_json(tmp / SELECTION_FILE, asdict(sel))

    path = store.build_collective("selection", keys["selection"], lambda tmp: None, finish=build)
    return Selection(**json.loads((path / SELECTION_FILE).read_text()))


def _retriever(cfg: CellConfig, model, folders: ModelFolders) -> DenseRetriever:
    tok = load_tokenizer(folders.retriever, folders.pretrained)
    return DenseRetriever(model, tok, DensePrompts.of(cfg.model, cfg.dataset), cfg.encode, cfg.search)


def _bm25(store: ArtifactStore, key: str, root: Path, queries: dict[str, str], depth: int):
    from readaptir.grid.keys import BM25

    bm25 = BM25Retriever(BM25)
    path = store.build("index", key, bm25.index_build(root).finish)
    return bm25.search(bm25.open_index(path), bm25.encode_queries(queries), depth)


def _write_pool(root: Path, pool: set[str], out: Path) -> Path:
    """A BeIR folder holding only the pool's passages (in corpus order)."""
    lines = (
        json.dumps({"_id": p.doc_id, "title": p.title, "text": p.text}) + "\n" for p in iter_corpus(root)
    )
    atomic_write(out / "corpus.jsonl", "".join(line for line in lines if json.loads(line)["_id"] in pool))
    return out


def _scores(retriever: DenseRetriever, index_dir: Path, queries: tuple[list[str], np.ndarray]) -> np.ndarray:
    """``[queries, passages]`` float32 scores of every query against every encoded passage (corpus order)."""
    index = retriever.open_index(index_dir)
    out = np.empty((len(queries[0]), len(index)), dtype=np.float32)
    for start, rows in index.chunks(8192):
        out[:, start : start + len(rows)] = queries[1] @ rows.astype(np.float32).T
    return out


def _select(cfg, store, keys, folders, adapter, runtime, data, tmp: Path) -> Selection:
    s, r = cfg.readapt.alpha_selection, cfg.readapt
    # Reported queries are Base's: every query of the evaluated qrels (Base averages them all).
    plan = plan_selection(data.root, cfg.dataset.split, cfg.model.name not in cfg.dataset.seen_by,
                          sorted(data.qrels), s)  # fmt: skip
    sel_ids = plan.selection_ids()
    queries = load_queries(data.root, sel_ids)
    qrels = {q: d for q, d in load_qrels(data.root, plan.split).items() if q in sel_ids}
    line = (
        KnowledgeLine.open(folders.pretrained, folders.retriever, adapter, r.beta)
        if r.knowledge_scaling == "delta"
        else None
    )
    # The pool is the base retriever's (its index holds W_ret's passages): the line's α = 0 is W_ret only
    # when β = 1 (W_pre + βΔ otherwise), so with another β the retriever itself encodes these queries.
    own = line is not None and r.beta == 1
    model = line.model(0.0, runtime.encode_dtype, runtime.device) if own else load_base_retriever(
        folders.pretrained, folders.retriever, runtime.encode_dtype, runtime.device)  # fmt: skip
    base = _retriever(cfg, model, folders)
    index = base.open_index(store.path(keys["base_index"]))
    runs = [base.search(index, base.encode_queries(queries), s.pool_depth),
            _bm25(store, keys["bm25_index"], data.root, queries, s.pool_depth)]  # fmt: skip
    if line is not None and not own:
        del base, model  # one model in memory at a time
        model = line.model(0.0, runtime.encode_dtype, runtime.device)
    pools = fold_pools(plan.folds, runs, s.pool_depth)
    sample = corpus_sample(index.ids, s.sample_size, s.seed)
    encoded = set(sample).union(*pools)
    pool_root = _write_pool(data.root, encoded, tmp / "pool")
    scores, doc_ids = {}, None
    for alpha in s.candidates():
        if line is not None:
            line.move(model, alpha)
        else:
            model = build_readapted_model(folders.pretrained, folders.retriever, adapter, alpha, r.beta,
                                          r.knowledge_scaling, runtime.encode_dtype, runtime.device)[0]  # fmt: skip
        retriever = _retriever(cfg, model, folders)
        b, out = retriever.index_build(pool_root), tmp / f"pool-index-{alpha:g}"
        out.mkdir()
        for step in (b.prepare, b.fill, b.finish):
            step(out)
        doc_ids = retriever.open_index(out).ids
        qids, qemb = retriever.encode_queries(queries)
        scores[alpha] = _scores(retriever, out, (qids, qemb))
        log.info("α=%g: %d selection queries × %d encoded passages scored", alpha, len(qids), len(doc_ids))
    folds = fold_scores(scores, qids, doc_ids, plan.folds, pools, sample, len(index.ids), qrels)
    for fold in folds:
        log.info("fold of %d selection queries, pool %d: %s → α=%g", len(fold["select"]), fold["pool_size"],
                 fold["scores"], fold["chosen"])  # fmt: skip
    for folder in tmp.iterdir():  # the pool and its encodings are scratch; the selection is the product
        if folder.is_dir():
            shutil.rmtree(folder)
    return Selection(plan.protocol, plan.split, list(s.candidates()), folds, len(encoded), len(index.ids),
                     s.sample_size)  # fmt: skip
