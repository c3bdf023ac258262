"""The stages of a cell, each a short function over typed settings and artifact keys.

:mod:`readaptir.grid.cell` calls them in order: train the knowledge adapter → build the (readapted)
retriever → index the corpus → encode queries and search → score. Each stage reads its inputs from the
store and publishes its product under the key :func:`readaptir.grid.keys.cell_keys` computed for it;
stages never compute keys and never read the Hydra config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from readaptir.config import CellConfig
from readaptir.data.beir import load_qrels, load_queries
from readaptir.evaluate import evaluate_run
from readaptir.grid.keys import CellInputs
from readaptir.models.hub import ModelFolders
from readaptir.retrieval.base import Retriever
from readaptir.retrieval.runs import RUN_FILE, read_run, write_run
from readaptir.runtime import Runtime
from readaptir.store.artifacts import ArtifactStore
from readaptir.store.finite import check_finite_safetensors, check_finite_tensors
from readaptir.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalData:
    """The evaluated split: qrels and the queries that have them."""

    root: Path
    qrels: dict[str, dict[str, int]]
    queries: dict[str, str]

    @classmethod
    def load(cls, root: Path, split: str) -> EvalData:
        qrels = load_qrels(root, split)
        return cls(root, qrels, load_queries(root, set(qrels)))


def train_adapter(
    cfg: CellConfig, store: ArtifactStore, keys: dict[str, str], inputs: CellInputs, pretrained: Path,
    tracker: Tracker,
) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """The cell's knowledge adapter (trained only if no finished copy exists) and its training stats."""
    from readaptir.train.knowledge import train_knowledge_adapter
    from readaptir.train.tokens import ensure_token_cache

    cache = ensure_token_cache(store, keys["tokens"], pretrained, inputs.knowledge_root)
    sub, relevant = inputs.subset, inputs.relevant()
    key, stats = keys["adapter"], {}

    def train(out: Path) -> None:
        stats.update(
            train_knowledge_adapter(
                pretrained, cache, cfg.adapter, cfg.train, out, store.work_dir(key),
                include=relevant if sub.subset == "with" else None,
                exclude=relevant if sub.subset == "without" else None, tracker=tracker,
            )
        )  # fmt: skip
        check_finite_safetensors(out / "adapter_model.safetensors")  # never publish a NaN adapter

    meta = {"corpus": cfg.adapter.corpus, "subset": sub.subset, "filter": sub.filter_dataset}
    # Under `accelerate launch` every rank joins training (DDP) in one shared folder; the main one publishes.
    path = store.build_collective("adapter", key, train, meta=meta)
    store.discard_work(key)  # checkpoints go only once the adapter is in place
    if not stats and (path / "train_stats.json").is_file():
        stats = json.loads((path / "train_stats.json").read_text())
    return path, stats


def base_retriever(cfg: CellConfig, folders: ModelFolders | None, runtime: Runtime) -> Retriever:
    """The cell's base retriever: ``W_ret`` for a dense model (its LoRA merged), or a baseline."""
    m = cfg.model
    if m.kind == "lexical":
        from readaptir.retrieval.lexical import BM25Retriever

        return BM25Retriever(m)
    if m.kind == "sbert":
        from readaptir.retrieval.sbert import SentenceTransformerRetriever

        return SentenceTransformerRetriever(m, cfg.dataset, cfg.search)
    from readaptir.readapt.model import load_base_retriever

    assert folders is not None
    log.info(
        "Loading %s retriever (%s, %s) on %s", m.name, m.retriever_kind, runtime.encode_dtype, runtime.device
    )
    # The same float32-then-one-cast arithmetic that builds the readapted retriever (α=0, β=1), not PEFT's
    # merge in the load dtype: in bf16 that rounds twice, and RA − Base would carry a rounding difference.
    model = load_base_retriever(folders.pretrained, folders.retriever, runtime.encode_dtype, runtime.device)
    return dense_retriever(cfg, model, folders, runtime)


def dense_retriever(cfg: CellConfig, model: Any, folders: ModelFolders, runtime: Runtime) -> Retriever:
    from readaptir.retrieval.dense import DensePrompts, DenseRetriever, load_tokenizer

    tokenizer = load_tokenizer(folders.retriever, folders.pretrained)  # a LoRA repo may ship none
    prompts = DensePrompts.of(cfg.model, cfg.dataset)
    return DenseRetriever(
        model, tokenizer, prompts, cfg.encode, cfg.search, (runtime.rank, runtime.world_size)
    )


def readapt(
    cfg: CellConfig, store: ArtifactStore, key: str, folders: ModelFolders, adapter: Path, runtime: Runtime
) -> Any:
    """Build ``W_pre + α·Ψ + β·Δ`` in memory and store its delta report (the model too with save_model)."""
    from readaptir.readapt.model import build_readapted_model

    r = cfg.readapt
    model, report = build_readapted_model(
        folders.pretrained, folders.retriever, adapter, r.alpha, r.beta, r.knowledge_scaling,
        runtime.encode_dtype, runtime.device,
    )  # fmt: skip
    check_finite_tensors(model.state_dict(), f"readapted weights ({key})")

    def write(tmp: Path) -> None:
        (tmp / "report.json").write_text(json.dumps(report))
        if r.save_model:
            from readaptir.retrieval.dense import load_tokenizer

            model.save_pretrained(tmp / "model", max_shard_size="5GB")
            load_tokenizer(folders.retriever, folders.pretrained).save_pretrained(tmp / "model")

    if runtime.main:
        store.build("readapted", key, write)
    return model


def retrieve(
    store: ArtifactStore, index_key: str, run_key: str, retriever: Retriever, data: EvalData, top_k: int
) -> Path:
    """Index the corpus (every rank shares the encoding), then encode queries and search (main rank)."""
    made: dict[str, Path] = {}

    def index(tmp: Path) -> None:
        b = retriever.index_build(data.root)
        made["index"] = store.build_collective("index", index_key, b.fill, prepare=b.prepare, finish=b.finish)

    def search(tmp: Path) -> None:
        queries = retriever.encode_queries(data.queries)
        run = retriever.search(retriever.open_index(made["index"]), queries, top_k)
        if data.queries and not any(run.values()):
            raise RuntimeError(f"search returned no document for any of {len(run)} queries; nothing stored")
        write_run(tmp / RUN_FILE, run)

    return store.build_collective("run", run_key, index, finish=search) / RUN_FILE


def score(store: ArtifactStore, run_key: str, cfg: CellConfig, data: EvalData) -> tuple[dict, dict]:
    """``(metrics, per-query NDCG@10)`` of a stored run."""
    run = read_run(store.path(run_key) / RUN_FILE)
    return evaluate_run(data.qrels, run, cfg.evaluate.k_values, cfg.dataset.extra_metrics)
