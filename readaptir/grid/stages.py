"""The stages of a cell, each a short function over typed settings and artifact keys.

:mod:`readaptir.grid.cell` calls them in order: train the retriever (when the model config asks for one)
→ train the knowledge adapter → build the (readapted) retriever → index the corpus → encode queries and
search → score. Each stage reads its inputs from the
store and publishes its product under the key :func:`readaptir.grid.keys.cell_keys` computed for it;
stages never compute keys and never read the Hydra config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from readaptir.config import CellConfig
from readaptir.data.beir import dataset_dir, load_qrels, load_queries
from readaptir.errors import UserError
from readaptir.evaluate import evaluate_run
from readaptir.fs import atomic_write
from readaptir.grid.keys import CellInputs
from readaptir.models.hub import LOGIN_HINT, ModelFolders, hub_id
from readaptir.readapt.card import adapter_card
from readaptir.retrieval.base import Retriever
from readaptir.retrieval.runs import RUN_FILE, read_run, write_run
from readaptir.runtime import Runtime, is_main
from readaptir.store.artifacts import ArtifactStore
from readaptir.store.finite import check_finite_safetensors, check_finite_tensors
from readaptir.tracking import Tracker, run_id, start_tracker

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
        if is_main():  # our card instead of PEFT's blank one (whose base_model is a local path)
            card = adapter_card(
                hub_id(cfg.model.pretrained), cfg.adapter, cfg.train, cfg.adapter.corpus, sub.subset, stats
            )
            atomic_write(out / "README.md", card)

    meta = {"corpus": cfg.adapter.corpus, "subset": sub.subset, "filter": sub.filter_dataset}
    # Under `accelerate launch` every rank joins training (DDP) in one shared folder; the main one publishes.
    path = store.build_collective("adapter", key, train, meta=meta)
    store.discard_work(key)  # checkpoints go only once the adapter is in place
    log.info("Knowledge adapter: %s", path)
    if not stats and (path / "train_stats.json").is_file():
        stats = json.loads((path / "train_stats.json").read_text())
    return path, stats


def train_retriever(
    cfg: CellConfig, store: ArtifactStore, key: str, folders: ModelFolders, runtime: Runtime
) -> tuple[ModelFolders, dict[str, Any]]:
    """The retriever the model config trains (built only if no finished copy exists) and its stats.

    Under a multi-process launch every rank trains on its share of each step's queries (data parallel, the
    embeddings gathered across ranks) in the shared folder; the main process publishes it.
    """
    from readaptir.train.retriever import STATS_FILE
    from readaptir.train.retriever import train_retriever as train

    m, t = cfg.model, cfg.model.train_retriever
    assert t is not None

    def build(tmp: Path) -> None:
        tracker = start_tracker(cfg.tracking if runtime.main else None,
                                {"model": m.name, "dataset": t.dataset, "recipe": t.model_dump()},
                                name=f"{m.name}/retriever", group=f"{m.name}/retriever", job_type="retriever",
                                tags=["stage:retriever"], run_id=run_id(key))  # fmt: skip
        base_ref = hub_id(m.pretrained) or str(m.pretrained)  # PEFT's base_model_name_or_path: no @revision
        try:
            train(folders.pretrained, base_ref, dataset_dir(t.dataset, cfg.paths.data_dir), m, t, tmp,
                  store.work_dir(key), tracker)  # fmt: skip
        finally:
            tracker.finish()

    path = store.build_collective("retriever", key, build, meta={"dataset": t.dataset, "split": t.split})
    store.discard_work(key)
    stats = path / STATS_FILE
    return replace(folders, retriever=path), json.loads(stats.read_text()) if stats.is_file() else {}


def untrained_retriever(cfg: CellConfig, folders: ModelFolders, runtime: Runtime) -> Retriever:
    """The pretrained model as a retriever (same prompts and pooling, no LoRA): ``W_pre`` by the same
    float32-then-one-cast arithmetic as the others (α=0, β=0)."""
    from readaptir.readapt.model import build_readapted_model

    model, _ = build_readapted_model(folders.pretrained, folders.retriever, None, 0.0, 0.0, "delta",
                                     runtime.encode_dtype, runtime.device)  # fmt: skip
    return dense_retriever(cfg, model, folders, runtime)


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
        model, tokenizer, prompts, cfg.encode, cfg.search, (runtime.rank, runtime.world_size),
        attention=runtime.encode_attention,
    )  # fmt: skip


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
            save_model_folder(cfg, model, folders, adapter, tmp / "model")

    if runtime.main:
        store.build("readapted", key, write)
    return model


def _card(cfg: CellConfig, adapter: Path, results: dict[str, Any] | None = None) -> str:
    from readaptir.readapt.card import retriever_card

    stats_file = adapter / "train_stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    subset = CellInputs.of(cfg).subset.subset
    return retriever_card(cfg.model, cfg.readapt, cfg.adapter, cfg.train, cfg.adapter.corpus, subset, stats,
                          results, hub_id(cfg.model.pretrained))  # fmt: skip


def save_model_folder(cfg: CellConfig, model: Any, folders: ModelFolders, adapter: Path, out: Path) -> Path:
    """The readapted retriever as a ``from_pretrained`` folder: weights, config, tokenizer, model card."""
    from readaptir.retrieval.dense import load_tokenizer

    model.save_pretrained(out, max_shard_size="5GB")
    load_tokenizer(folders.retriever, folders.pretrained).save_pretrained(out)
    atomic_write(out / "README.md", _card(cfg, adapter))
    return out


def push_readapted(cfg: CellConfig, store: ArtifactStore, keys: dict[str, str], folders: ModelFolders,
                   results: dict[str, Any], runtime: Runtime) -> str:  # fmt: skip
    """Upload the readapted retriever (weights, tokenizer, a card with this cell's metrics) to the Hub repo
    ``readapt.push_to_hub``, created private when new; returns its URL. Opt-in, never done by default."""
    import tempfile

    from huggingface_hub import HfApi

    repo, adapter = str(cfg.readapt.push_to_hub), store.path(keys["adapter"])
    saved = store.path(keys["readapted"]) / "model"
    with tempfile.TemporaryDirectory(prefix="readaptir-push-") as tmp:
        folder = saved if saved.is_dir() else None
        if folder is None:  # not kept (readapt.save_model=false): rebuild it, as the cell did
            from readaptir.readapt.model import build_readapted_model

            r = cfg.readapt
            model, _ = build_readapted_model(folders.pretrained, folders.retriever, adapter, r.alpha, r.beta,
                                             r.knowledge_scaling, runtime.encode_dtype)  # fmt: skip
            folder = save_model_folder(cfg, model, folders, adapter, Path(tmp) / "model")
            del model
        card = Path(tmp) / "README.md"
        card.write_text(_card(cfg, adapter, results))
        try:
            api = HfApi()
            api.create_repo(repo, private=True, exist_ok=True)
            api.upload_folder(folder_path=str(folder), repo_id=repo, ignore_patterns=["README.md"],
                              commit_message="readaptir: readapted retriever")  # fmt: skip
            api.upload_file(path_or_fileobj=str(card), path_in_repo="README.md", repo_id=repo,
                            commit_message="readaptir: model card")  # fmt: skip
        except Exception as e:  # noqa: BLE001 - hub errors come in many classes; all mean the same here
            raise UserError(
                f"readapt.push_to_hub={repo}: upload failed ({e.__class__.__name__}: {e}); {LOGIN_HINT} and "
                "check that you may write to that repo (results.json is saved either way)"
            ) from e
    url = f"https://huggingface.co/{repo}"
    log.info("Pushed the readapted retriever to %s", url)
    return url


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
