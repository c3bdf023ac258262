"""Evaluation through BeIR's pytrec_eval wrapper, run files, per-query scores and paired tests (SPEC §3).

What: ``evaluate_run`` turns a run into BeIR's metrics (fractions in [0, 1] named "NDCG@10",
"Recall@100", ..., plus "MRR@10" for MS-MARCO) and per-query NDCG@10; ``evaluate_retriever`` is the
one-stop path of a cell: dataset → (base or in-memory) retriever → cached corpus embeddings → search →
metrics. Runs are content-addressed artifacts too, so a rerun of a cell reuses its run file and never
loads the model.

Why self-hits are removed here as well as in search: BeIR's evaluator only drops identical ids when
``ignore_identical_ids`` is left on; we remove them explicitly for every dataset, base and readapted
alike (SPEC §7), and call BeIR with it off so what is scored is exactly what is saved.

    from readaptir.evaluate import evaluate_retriever
    result = evaluate_retriever(cfg, ArtifactStore(cfg.paths.cache_dir))   # base retriever of cfg.model
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from readaptir.artifacts import ArtifactStore, atomic_write_json
from readaptir.data import ensure_dataset, file_fingerprint, load_qrels, load_queries

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
RUN_FILE, METRICS_FILE, PER_QUERY_FILE = "run.trec", "metrics.json", "per_query.json"


def remove_self_hits(run: Mapping[str, Mapping[str, float]]) -> Run:
    """A copy of ``run`` without documents whose id equals their query's id."""
    return {q: {d: float(s) for d, s in docs.items() if d != q} for q, docs in run.items()}


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    k_values: Sequence[int] = (1, 3, 5, 10, 100, 1000),
    dataset_name: str = "",
) -> tuple[dict[str, float], dict[str, float]]:
    """``(metrics, per-query NDCG@10)`` via ``beir.retrieval.evaluation.EvaluateRetrieval``.

    Queries are scored when they have qrels; like BeIR, averages are over queries present in the run.
    """
    import pytrec_eval
    from beir.retrieval.evaluation import EvaluateRetrieval

    k_values = sorted({int(k) for k in k_values} | {10})
    scored = {q: docs for q, docs in remove_self_hits(run).items() if q in qrels}
    missing = len(set(qrels) - set(scored))
    if missing:
        log.warning(
            "%d of %d judged queries have no run entry; they are left out of the averages (BeIR's rule)",
            missing,
            len(qrels),
        )
    if not scored:
        raise ValueError("no query of the run has qrels: wrong dataset or split?")
    qrels = {q: dict(v) for q, v in qrels.items()}
    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(
        qrels, scored, k_values, ignore_identical_ids=False
    )
    metrics = {**ndcg, **_map, **recall, **precision}
    if dataset_name == "msmarco":
        metrics.update(EvaluateRetrieval.evaluate_custom({q: qrels[q] for q in scored}, scored, [10], "mrr"))
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(scored)
    return (
        {k: float(v) for k, v in metrics.items()},
        {q: float(s["ndcg_cut_10"]) for q, s in sorted(per_query.items())},
    )


def _write_atomic_lines(path: Path, lines) -> None:
    """Stream lines into a temporary sibling and rename it (run files reach 7M lines for MS-MARCO)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line)
    os.replace(tmp, path)


def save_run(
    out_dir: str | os.PathLike,
    run: Mapping[str, Mapping[str, float]],
    metrics: Mapping[str, float],
    per_query: Mapping[str, float],
    tag: str = "readaptir",
) -> Path:
    """Write ``run.trec`` (TREC format, ranks by score), ``metrics.json`` and ``per_query.json`` atomically."""
    out_dir = Path(out_dir)

    def lines():
        for qid, docs in run.items():
            for rank, (did, score) in enumerate(sorted(docs.items(), key=lambda kv: -kv[1]), 1):
                yield f"{qid} Q0 {did} {rank} {score!r} {tag}\n"  # repr: reloads to the identical float

    _write_atomic_lines(out_dir / RUN_FILE, lines())
    atomic_write_json(out_dir / METRICS_FILE, dict(metrics))
    atomic_write_json(out_dir / PER_QUERY_FILE, dict(per_query))
    return out_dir / RUN_FILE


def load_run(path: str | os.PathLike) -> Run:
    """Read a TREC run file back into ``{qid: {doc id: score}}``."""
    run: Run = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise ValueError(
                    f"{path}:{lineno}: expected 'qid Q0 docid rank score tag', got {line.strip()!r}"
                )
            run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
    return run


def paired_test(
    per_query_a: Mapping[str, float],
    per_query_b: Mapping[str, float],
    permutations: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Two-sided paired t-test (scipy) of per-query NDCG@10 on the queries both runs scored.

    Also reports a paired randomisation test (random sign flips of the differences), which makes no
    normality assumption. ``mean_diff`` is b − a.
    """
    from scipy import stats

    common = sorted(set(per_query_a) & set(per_query_b))
    a = np.array([per_query_a[q] for q in common], dtype=np.float64)
    b = np.array([per_query_b[q] for q in common], dtype=np.float64)
    diff = b - a
    n = len(common)
    if n < 2 or not np.any(diff != 0):
        p = 1.0  # identical runs (or too few queries): no evidence of a difference
        p_perm = 1.0
    else:
        p = float(stats.ttest_rel(b, a).pvalue)
        if math.isnan(p):
            p = 1.0
        rng = np.random.default_rng(seed)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(permutations, n))
        null = np.abs((signs * diff).mean(axis=1))
        p_perm = float((np.sum(null >= abs(diff.mean()) - 1e-12) + 1) / (permutations + 1))
    return {
        "test": "paired t-test",
        "p_value": p,
        "n": n,
        "mean_diff": float(diff.mean()) if n else 0.0,
        "permutation_p_value": p_perm,
        "permutations": permutations,
    }


# ---------------------------------------------------------------------------------------------- one-stop


def _plain(node: Any) -> Any:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return node


def evaluate_retriever(
    cfg: Any,
    store: ArtifactStore,
    model: Any = None,
    tokenizer: Any = None,
    weights_key: str | None = None,
    out_dir: str | os.PathLike | None = None,
    model_loader: Callable[[], tuple[Any, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate one retriever on ``cfg.dataset``: the base of ``cfg.model`` (or a baseline) or ``model``.

    ``model``/``tokenizer`` are an in-memory readapted retriever, identified by ``weights_key`` (needed
    to address its embeddings); ``model_loader`` builds one only when needed (same ``weights_key`` rule,
    dtype :func:`readaptir.encode.model_dtype`). The run is an artifact keyed by the embeddings, queries,
    qrels and ``top_k``; when it exists, no model is loaded or built at all.
    """
    from readaptir import baselines
    from readaptir.encode import (
        CorpusEmbeddings,
        default_device,
        embedding_key,
        encode_corpus_cached,
        encode_queries,
        load_base_retriever,
        model_dtype,
    )
    from readaptir.search import search

    model_cfg, dataset_cfg = _plain(cfg.model), _plain(cfg.dataset)
    encode_cfg, search_cfg = _plain(cfg.encode), _plain(cfg.search)
    k_values = list(_plain(cfg.evaluate)["k_values"])
    seconds: dict[str, float] = {}
    t0 = time.time()
    root = ensure_dataset(
        dataset_cfg["beir_name"],
        cfg.paths.data_dir,
        dataset_cfg.get("url"),
        dataset_cfg.get("builtin", False),
    )
    split = dataset_cfg["split"]
    qrels = load_qrels(root, split)
    queries = load_queries(root, set(qrels))
    family = model_cfg.get("family")
    top_k = int(search_cfg["top_k"])
    run_fields = {
        "top_k": top_k,
        "split": split,
        "dataset": dataset_cfg["beir_name"],
        "queries": file_fingerprint(root / "queries.jsonl"),
        "qrels": file_fingerprint(root / "qrels" / f"{split}.tsv"),
        "query_template": model_cfg.get("query_template"),
        "task": dataset_cfg.get("task"),
        "query_max_len": model_cfg.get("query_max_len"),
    }
    seconds["load_data"] = time.time() - t0
    artifacts: list[dict[str, str]] = []

    if family == "lexical":
        fields = {k: model_cfg.get(k) for k in ("k1", "b", "method", "stemmer", "stopwords")}
        fields["corpus"] = file_fingerprint(root / "corpus.jsonl")
        run_key = store.key("run", {**run_fields, **fields}, parents=[f"base:{model_cfg['name']}"])

        def produce(tmp: Path) -> None:
            t = time.time()
            run = baselines.bm25_search(root, queries, model_cfg, top_k)
            seconds["search"] = time.time() - t
            save_run(tmp, run, *evaluate_run(qrels, run, k_values, dataset_cfg["name"]))
    else:
        if family == "bert":
            parent = f"base:{model_cfg['name']}:{Path(baselines.minilm_path()).name}"
            dtype = "float32"
        elif model is None:
            if model_loader is not None and not weights_key:
                raise ValueError(
                    "evaluate_retriever: a model_loader needs weights_key (e.g. the readapted key)"
                )
            parent = weights_key or f"base:{model_cfg['name']}:{model_cfg.get('retriever')}"
            base_dtype = model_dtype(model_cfg, encode_cfg, default_device())
            dtype = str(base_dtype).removeprefix("torch.")

            def load() -> tuple[Any, Any]:
                if model_loader is not None:
                    return model_loader()
                return load_base_retriever(model_cfg, dtype=base_dtype)
        else:
            if not weights_key:
                raise ValueError(
                    "evaluate_retriever: an in-memory model needs weights_key (e.g. the readapted key)"
                )
            parent = weights_key
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        emb_key = embedding_key(store, parent, model_cfg, dataset_cfg, root, dtype)
        # search.backend and chunk_size are left out on purpose: both backends are exact, so they
        # produce the same run and a cell rerun with the other backend reuses it.
        run_key = store.key("run", run_fields, parents=[emb_key])

        def produce(tmp: Path) -> None:
            nonlocal model, tokenizer
            t = time.time()
            if family == "bert":
                st = baselines.load_minilm(model_cfg)
                seconds["load_model"] = time.time() - t
                t = time.time()
                corpus = baselines.minilm_corpus_cached(store, st, model_cfg, dataset_cfg, root)
                seconds["encode_corpus"] = time.time() - t
                t = time.time()
                qids, q_emb = baselines.minilm_encode_queries(st, model_cfg, dataset_cfg, queries)
            else:
                if model is None:
                    model, tokenizer = load()
                seconds["load_model"] = time.time() - t
                t = time.time()
                if store.is_done(emb_key):  # under accelerate launch: encoded by all ranks just before
                    corpus = CorpusEmbeddings.open(store.path(emb_key), emb_key)
                else:
                    corpus = encode_corpus_cached(
                        store, parent, model, tokenizer, model_cfg, dataset_cfg, root, encode_cfg
                    )
                seconds["encode_corpus"] = time.time() - t
                t = time.time()
                qids, q_emb = encode_queries(model, tokenizer, model_cfg, dataset_cfg, queries, encode_cfg)
            seconds["encode_queries"] = time.time() - t
            t = time.time()
            run = search(
                qids,
                q_emb,
                corpus,
                top_k,
                search_cfg.get("backend", "auto"),
                int(search_cfg.get("chunk_size", 262144)),
                float(search_cfg.get("faiss_max_gb", 32)),
            )
            seconds["search"] = time.time() - t
            save_run(tmp, run, *evaluate_run(qrels, run, k_values, dataset_cfg["name"]))

        artifacts.append({"kind": "embeddings", "key": emb_key, "path": str(store.path(emb_key))})

    meta = {"model": model_cfg.get("name"), "dataset": dataset_cfg["name"]}
    if family in ("lexical", "bert"):
        run_path = store.build("run", run_key, produce, meta=meta) / RUN_FILE
    else:

        def encode_all_ranks(tmp: Path) -> None:
            # Under `accelerate launch` every rank joins the sharded corpus encoding (a collective
            # product of its own); rank 0 alone then searches, reusing those embeddings.
            nonlocal model, tokenizer
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                if model is None:
                    model, tokenizer = load()
                encode_corpus_cached(
                    store, parent, model, tokenizer, model_cfg, dataset_cfg, root, encode_cfg
                )

        def search_rank0(tmp: Path) -> None:
            from accelerate import PartialState

            if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or PartialState().is_main_process:
                produce(tmp)

        run_path = (
            store.build_collective("run", run_key, encode_all_ranks, meta, finish=search_rank0) / RUN_FILE
        )
    artifacts.append({"kind": "run", "key": run_key, "path": str(run_path.parent)})
    t = time.time()
    run = load_run(run_path)
    metrics, per_query = evaluate_run(qrels, run, k_values, dataset_cfg["name"])
    seconds["evaluate"] = time.time() - t
    if out_dir is not None:
        save_run(out_dir, run, metrics, per_query)
        atomic_write_json(Path(out_dir) / "artifacts.json", artifacts)
    seconds["total"] = time.time() - t0
    log.info(
        "%s on %s: NDCG@10 = %.4f (%d queries, %.1fs)",
        model_cfg.get("name"),
        dataset_cfg["name"],
        metrics["NDCG@10"],
        len(per_query),
        seconds["total"],
    )
    return {
        "metrics": metrics,
        "per_query": per_query,
        "run_path": str(run_path),
        "artifacts": artifacts,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
