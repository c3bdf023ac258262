"""One grid cell end to end: plan → knowledge adapter → base evaluation → RE-Adapt → evaluation → results.

``run.py`` composes the Hydra config and calls :func:`run`. Stages talk through content-addressed
artifacts (readaptir.artifacts), so a cell whose adapter, embeddings or runs already exist reuses them,
and a second run of a sweep trains and encodes nothing:

    tokens (corpus × tokenizer) ─→ adapter (recipe × subset × pretrained) ─┐
    base weights (pretrained × retriever) ─→ base embeddings → base run     ├→ readapted weights (α, β, scaling)
                                                                            └→ readapted embeddings → run

The cell's ``results.json`` (coordinates, status, base / readapted / delta metrics in BeIR's names as
fractions, a paired significance test, the delta report, stage timings, the artifact keys used) goes to
the Hydra job folder and to the results store ``<paths.results_dir>/<model>/<dataset>/<cell>.json``
that ``python -m readaptir.tables`` renders. Cells whose ablation is undefined (a knowledge corpus
other than the evaluated dataset's own, filtered by its qrels) end cleanly with status ``not_applicable``.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from readaptir.artifacts import ArtifactStore
from readaptir.cell import (  # noqa: F401 (re-exported: the cell API is also reached through the pipeline)
    ConfigError,
    cell_coords,
    cell_name,
    cell_subset,
    check_config,
    eval_root,
    format_cell,
    is_demo,
    job_dir,
    knowledge_corpus_root,
    rank_world,
    results_path,
    write_results,
)
from readaptir.data import KnowledgeSubset, load_qrels, relevant_doc_ids
from readaptir.errors import UserError
from readaptir.keys import adapter_key, base_weights_key, weights_identity  # noqa: F401

log = logging.getLogger(__name__)


def ensure_models(cfg: DictConfig) -> None:
    """Make ``model.pretrained`` / ``model.retriever`` local folders before anything loads them.

    Tiny stand-ins (tests, demo) are built; hub ids are fetched once (safetensors, configs, tokenizer)
    and replaced by their local snapshot, so a missing login or network fails here in one line.
    """
    if cfg.model.get("tiny"):
        from readaptir.tiny import ensure_tiny

        ensure_tiny(cfg.model.tiny, Path(cfg.model.pretrained).parents[1])
        return
    if not cfg.model.get("readapt", True):
        return
    from readaptir.weights import resolve_model_dir

    for field in ("pretrained", "retriever"):
        ref = str(cfg.model[field])
        try:
            cfg.model[field] = str(resolve_model_dir(ref))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - hub errors come in many classes; all mean the same here
            raise UserError(
                f"model.{field}={ref}: not a local folder and fetching it from the Hugging Face Hub failed "
                f"({e.__class__.__name__}); run `huggingface-cli login` (Llama-2 is gated) with network, or "
                f"set model.{field}=/path/to/a/local/copy"
            ) from e


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    t0 = time.time()
    try:
        yield
    finally:
        timings[stage] = round(time.time() - t0, 3)


def ensure_adapter(
    cfg: DictConfig, store: ArtifactStore, sub: KnowledgeSubset, tracker
) -> tuple[Path, str, dict]:
    """The cell's knowledge adapter, trained only if no finished copy exists."""
    from readaptir.tokens import ensure_token_cache
    from readaptir.train import train_knowledge_adapter

    corpus_root = knowledge_corpus_root(cfg)
    cache = ensure_token_cache(store, cfg.model.pretrained, corpus_root)
    relevant = None
    if sub.subset != "both":
        relevant = relevant_doc_ids(load_qrels(eval_root(cfg), sub.filter_split))
    key = adapter_key(cfg, store, cache.key, sub, relevant)
    stats: dict = {}
    include = relevant if sub.subset == "with" else None
    exclude = relevant if sub.subset == "without" else None
    meta = {"corpus": cfg.adapter.corpus, "subset": sub.subset, "filter": sub.filter_dataset}

    def train(out: Path) -> None:
        stats.update(
            train_knowledge_adapter(
                Path(cfg.model.pretrained),
                cache,
                cfg.adapter,
                cfg.train,
                out,
                store.work_dir(key),
                include=include,
                exclude=exclude,
                tracker=tracker,
            )
        )

    # Under `accelerate launch` every rank joins training (DDP) in one shared folder; rank 0 publishes.
    path = store.build_collective("adapter", key, train, meta=meta)
    if not stats and (path / "train_stats.json").is_file():
        stats = json.loads((path / "train_stats.json").read_text())
    return path, key, stats


def evaluate_readapted(
    cfg: DictConfig, store: ArtifactStore, adapter_path: Path, ra_key: str
) -> tuple[dict, dict]:
    """Evaluate W_pre + α·Ψ + β·Δ, building the 7B model in memory only when its run is not cached.

    The delta report is kept as the ``readapted`` artifact (and the model itself beside it with
    ``readapt.save_model=true``), so a rerun of a finished cell builds nothing.
    """
    from readaptir.encode import default_device, load_tokenizer, model_dtype
    from readaptir.evaluate import evaluate_retriever
    from readaptir.readapt import build_readapted_model

    device = default_device()
    dtype = model_dtype(cfg.model, cfg.encode, device)  # the base retriever's dtype too
    tokenizer = load_tokenizer(cfg.model)
    model_key = store.key("retriever", {}, parents=[ra_key])
    built: dict[str, Any] = {}

    def load() -> tuple[Any, Any]:
        if "model" not in built:
            built["model"], built["report"] = build_readapted_model(
                cfg.model.pretrained,
                cfg.model.retriever,
                adapter_path,
                alpha=cfg.readapt.alpha,
                beta=cfg.readapt.beta,
                knowledge_scaling=cfg.readapt.knowledge_scaling,
                dtype=dtype,
                device=device,
            )
            report = built["report"]
            store.build("readapted", ra_key, lambda tmp: (tmp / "report.json").write_text(json.dumps(report)))
            if cfg.readapt.save_model and rank_world()[0] == 0:
                store.build("retriever", model_key, lambda tmp: _save_model(built["model"], tokenizer, tmp))
        return built["model"], tokenizer

    if not store.is_done(ra_key) or (cfg.readapt.save_model and not store.is_done(model_key)):
        load()
    ra = evaluate_retriever(cfg, store, weights_key=ra_key, model_loader=load)
    built.pop("model", None)
    report = json.loads((store.path(ra_key) / "report.json").read_text())
    return ra, report


def _save_model(model: Any, tokenizer: Any, out: Path) -> None:
    """An ``AutoModel.from_pretrained``-loadable folder of the in-memory readapted retriever."""
    model.save_pretrained(out, max_shard_size="5GB")
    tokenizer.save_pretrained(out)


def _flat(d: dict, prefix: str) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in d.items() if isinstance(v, (int, float))}


def run(cfg: DictConfig) -> dict:
    """Run (or, with run.plan=true, describe) one cell and return its results dict."""
    check_config(cfg)
    for noisy in (
        "beir",
        "sentence_transformers",
        "httpx",
        "faiss",
    ):  # per-metric INFO lines drown the cell summary
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if cfg.run.plan:
        from readaptir.plan import describe_cell

        print(describe_cell(cfg))
        return {}
    coords = cell_coords(cfg)
    results: dict[str, Any] = {
        "cell": coords,
        "status": "done",
        "demo": is_demo(cfg),
        "zero_shot": cfg.model.name not in cfg.dataset.seen_by,
        "corpus_size": int(cfg.dataset.corpus_size),
    }
    sub = cell_subset(cfg)
    readapt = bool(cfg.model.get("readapt", True))
    results["readapt"] = readapt
    if readapt and not sub.applicable:
        results.update(status="not_applicable", reason=sub.reason)
        path = write_results(cfg, results)
        log.info("Cell %s not applicable: %s (%s)", coords, sub.reason, path)
        return results

    t0 = time.time()
    ensure_models(cfg)  # before any process group: save_pretrained skips config.json on ranks > 0
    if rank_world()[1] > 1:
        # Initialise the process group once, for every later PartialState()/Accelerator(): without
        # cpu=True a CPU-only `accelerate launch`/torchrun would silently run as N single processes.
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
    t_models = time.time() - t0

    from readaptir.evaluate import evaluate_retriever, paired_test
    from readaptir.tracking import start_tracker

    store = ArtifactStore(cfg.paths.cache_dir)
    timings: dict[str, float] = {}
    rank = rank_world()[0]
    tracker = start_tracker(
        cfg.tracking if rank == 0 else {"backend": "none"},  # one W&B run per cell, not per GPU
        {
            **coords,
            "demo": results["demo"],
            "adapter_corpus": cfg.adapter.corpus,
            "train": OmegaConf.to_container(cfg.train),
            "recipe": OmegaConf.to_container(cfg.adapter),
        },
        name=f"{coords['model']}/{coords['dataset']}/{cell_name(coords)}",
        group=f"{coords['model']}/{coords['adapter']}-{coords['ablation']}",
        job_type="cell",
    )
    try:
        with _timed(timings, "prepare"):
            eval_root(cfg)
        timings["prepare"] += round(t_models, 3)
        base_key = base_weights_key(cfg, store)
        with _timed(timings, "evaluate_base"):
            base = evaluate_retriever(cfg, store, weights_key=base_key)
        results["base"] = base["metrics"]
        artifacts = {"base_weights": base_key, "base": base.get("artifacts", [])}
        if readapt:
            with _timed(timings, "train_adapter"):
                adapter_path, akey, train_stats = ensure_adapter(cfg, store, sub, tracker)
            ra_key = store.key(
                "readapted",
                {
                    "alpha": cfg.readapt.alpha,
                    "beta": cfg.readapt.beta,
                    "knowledge_scaling": cfg.readapt.knowledge_scaling,
                },
                parents=[base_key, akey],
            )
            with _timed(timings, "readapt_and_evaluate"):
                ra, report = evaluate_readapted(cfg, store, adapter_path, ra_key)
            results["readapted"] = ra["metrics"]
            results["delta"] = {
                k: round(ra["metrics"][k] - base["metrics"][k], 6)
                for k in base["metrics"]
                if k in ra["metrics"]
            }
            results["significance"] = {"metric": "NDCG@10", **paired_test(base["per_query"], ra["per_query"])}
            results["delta_report"] = report
            results["train"] = train_stats
            artifacts.update(adapter=akey, readapted_weights=ra_key, readapted=ra.get("artifacts", []))
        results["timings"] = timings
        results["artifacts"] = artifacts
        results["artifact_events"] = store.events
        path = write_results(cfg, results)
        tracker.summary(
            {
                **_flat(results.get("base", {}), "base"),
                **_flat(results.get("readapted", {}), "readapted"),
                **_flat(results.get("delta", {}), "delta"),
                "p_value": results.get("significance", {}).get("p_value"),
            }
        )
        rows = [
            [k, results["base"].get(k), results.get("readapted", {}).get(k), results.get("delta", {}).get(k)]
            for k in results["base"]
        ]
        tracker.table("cell_metrics", ["metric", "base", "readapted", "delta"], rows)
    finally:
        tracker.finish()
    if rank == 0:
        print(format_cell(results, path))
    return results
