"""The α-selection stage of an ``alpha=auto`` cell: score every candidate α on a pool, keep the best.

The rules (which queries, which pool, ties) are in :mod:`readaptir.grid.alpha`; this stage runs them on
the main process and stores the outcome as the ``selection`` artifact. With ``knowledge_scaling=delta``
the candidates share one read of ``W_ret`` and ``Ψ`` (:class:`readaptir.readapt.line.KnowledgeLine`);
``peft_scale`` builds one readapted model per candidate.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from readaptir.config import CellConfig
from readaptir.data.beir import iter_corpus, load_qrels, load_queries
from readaptir.evaluate import evaluate_run
from readaptir.fs import atomic_write, atomic_write_json
from readaptir.grid.alpha import Selection, candidate_pool, fold_scores, judged, plan_selection
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


def _select(cfg, store, keys, folders, adapter, runtime, data, tmp: Path) -> Selection:
    s, r = cfg.readapt.alpha_selection, cfg.readapt
    plan = plan_selection(data.root, cfg.dataset.split, cfg.model.name not in cfg.dataset.seen_by,
                          judged(data.qrels), s)  # fmt: skip
    sel_ids = plan.selection_ids()
    queries = load_queries(data.root, sel_ids)
    qrels = {q: d for q, d in load_qrels(data.root, plan.split).items() if q in sel_ids}
    line = (
        KnowledgeLine.open(folders.pretrained, folders.retriever, adapter, r.beta)
        if r.knowledge_scaling == "delta"
        else None
    )
    model = line.model(0.0, runtime.encode_dtype, runtime.device) if line else load_base_retriever(
        folders.pretrained, folders.retriever, runtime.encode_dtype, runtime.device)  # fmt: skip
    base = _retriever(cfg, model, folders)
    index = base.open_index(store.path(keys["base_index"]))
    runs = [base.search(index, base.encode_queries(queries), s.pool_depth),
            _bm25(store, keys["bm25_index"], data.root, queries, s.pool_depth)]  # fmt: skip
    pool = candidate_pool(sorted(sel_ids), runs, qrels, s.pool_depth, set(index.ids))
    pool_root = _write_pool(data.root, set(pool), tmp / "pool")
    per_query = {}
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
        run = retriever.search(retriever.open_index(out), retriever.encode_queries(queries), len(pool))
        per_query[alpha] = evaluate_run(qrels, run, [10])[1]
        log.info("α=%g: pool nDCG@10 %.4f on %d selection queries", alpha,
                 sum(per_query[alpha].values()) / max(len(per_query[alpha]), 1), len(per_query[alpha]))  # fmt: skip
    for folder in tmp.iterdir():  # the pool and its encodings are scratch; the selection is the product
        if folder.is_dir():
            shutil.rmtree(folder)
    return Selection(plan.protocol, plan.split, list(s.candidates()), fold_scores(per_query, plan.folds),
                     len(pool), cfg.dataset.corpus_size)  # fmt: skip
