"""Every artifact key of a cell, computed first, from config and input identities alone.

A cell's products form a small graph; each product's key hashes exactly the settings that determine it
plus its parents' keys (:func:`readaptir.store.artifacts.make_key`):

    tokens ─→ adapter ─────────────┐
    [retriever] → base_weights ─┬→ base_index → base_run ──────────────┐
                                └→ readapted (α, β, scaling) → ra_index → ra_run ─→ result
    [untrained_weights → untrained_index → untrained_run] ────────────────────────────┘

``retriever`` and the ``untrained_*`` nodes exist when the model config trains its retriever
(``model.train_retriever``): the retriever is keyed by the pretrained model, its training data and recipe,
and the untrained run (the pretrained model with the same prompts and pooling) measures what training added.

With ``readapt.alpha=auto`` a ``selection`` product (α chosen on withheld queries over a candidate pool
drawn from ``base_index`` and a BM25 index) takes the place of the readapted chain; the readapted products
then exist per chosen α, keyed by the same graph at that α (:func:`at_alpha`).

:func:`cell_keys` derives the whole chain before anything loads; the cell then builds only what is
missing, and plan mode calls the same function, so plan and run can never disagree. A new product joins
by adding one :class:`Product` to :func:`cell_products`; nothing else needs plumbing. Inputs enter by
identity (:mod:`readaptir.store.identity`): a hub model by its id, a local folder or data file by its
contents, so moving the cache or the data changes no key, and editing a file changes every key below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from readaptir.config import CellConfig, ModelSpec
from readaptir.data.beir import dataset_dir, load_qrels
from readaptir.data.nano import subset_key
from readaptir.data.subsets import KnowledgeSubset, knowledge_subset, relevant_doc_ids
from readaptir.paths import root_dir
from readaptir.runtime import Runtime, dtype_name
from readaptir.store.artifacts import ArtifactStore, make_key
from readaptir.store.identity import (
    UNKNOWN,
    content_identity,
    ids_digest,
    model_identity,
    tokenizer_identity,
)
from readaptir.train.tokens import FORMAT_VERSION


@dataclass(frozen=True)
class Product:
    """One node of the graph: an artifact kind, what determines it, and the nodes it is made from."""

    kind: str
    fields: Mapping[str, Any]
    parents: tuple[str, ...] = ()
    stored: bool = True  # False: a key only (it identifies inputs or a record, no folder in the store)


def resolve(products: Mapping[str, Product]) -> dict[str, str]:
    """Node name → key, parents first (the graph is acyclic by construction)."""
    keys: dict[str, str] = {}

    def key(name: str) -> str:
        if name not in keys:
            p = products[name]
            keys[name] = make_key(p.kind, p.fields, [key(q) for q in p.parents])
        return keys[name]

    for name in products:
        key(name)
    return keys


@dataclass(frozen=True)
class CellInputs:
    """Where a cell's data lives (nothing is downloaded to find out) and its knowledge subset."""

    eval_root: Path
    knowledge_root: Path
    subset: KnowledgeSubset

    @classmethod
    def of(cls, cfg: CellConfig) -> CellInputs:
        d, data_dir = cfg.dataset, cfg.paths.data_dir
        eval_root = dataset_dir(d.beir_name, data_dir, d.builtin)
        if d.subset is not None:  # cut from a full dataset into the store (readaptir.data.nano)
            eval_root = ArtifactStore(cfg.paths.cache_dir).path(
                subset_key(
                    d.subset,
                    dataset_dir(d.subset.of, data_dir, key="dataset.subset.of"),
                    d.split,
                    identity_dir(cfg),
                )
            )
        corpus = cfg.adapter.corpus
        knowledge_root = (
            eval_root if corpus == d.name else dataset_dir(corpus, data_dir, key="adapter.corpus")
        )
        subset = knowledge_subset(corpus, cfg.ablation.name, d.name, d.knowledge_corpus, d.split)
        return cls(eval_root, knowledge_root, subset)

    def relevant(self) -> frozenset[str] | None:
        """Judged-relevant doc ids that define a with/without subset (None for ``both`` or absent qrels)."""
        sub = self.subset
        if sub.subset == "both" or sub.filter_split is None:
            return None
        if not (self.eval_root / "qrels" / f"{sub.filter_split}.tsv").is_file():
            return None
        return relevant_doc_ids(load_qrels(self.eval_root, sub.filter_split))


def identity_dir(cfg: CellConfig) -> Path:
    """Where data-file identities are remembered (the data folder itself may be read-only)."""
    return root_dir(cfg.paths.cache_dir, "paths.cache_dir") / "identity"


def tokens_fields(tokenizer: str | Path, corpus_root: Path, memo: Path | None = None) -> dict[str, Any]:
    """What determines a token cache: the tokenizer files, the corpus contents and the storage format."""
    return {"tokenizer": tokenizer_identity(tokenizer, memo),
            "corpus": content_identity(corpus_root / "corpus.jsonl", memo), "format": FORMAT_VERSION,
            "text": "title+' '+text,stripped"}  # fmt: skip


def tokens_key(tokenizer: str | Path, corpus_root: Path, memo: Path | None = None) -> str:
    """Key of a corpus's token cache (benchmarks and tests that tokenize outside a cell use it too)."""
    return make_key("tokens", tokens_fields(tokenizer, Path(corpus_root), memo))


def _retrieval_products(cfg: CellConfig, runtime: Runtime, inputs: CellInputs) -> dict[str, Product]:
    """``base_weights → base_index → base_run`` (and the readapted twins' shared fields)."""
    m, d, root, memo = cfg.model, cfg.dataset, inputs.eval_root, identity_dir(cfg)
    if m.kind == "lexical":
        weights = {"kind": m.kind, "name": m.name, "k1": m.k1, "b": m.b, "method": m.method,
                   "stemmer": m.stemmer, "stopwords": m.stopwords}  # fmt: skip
    elif m.kind == "sbert":
        weights = {"kind": m.kind, "name": m.name, "model": model_identity(m.pretrained, memo) or m.name}
    else:
        weights = {"pretrained": model_identity(m.pretrained, memo), "retriever": model_identity(m.retriever, memo),
                   "kind": m.retriever_kind}  # fmt: skip
    trained = m.kind == "dense" and m.train_retriever is not None
    if trained:
        weights["retriever"] = "trained"  # the retriever product, a parent of these weights
    index = {"dataset": d.beir_name, "corpus": content_identity(root / "corpus.jsonl", memo)}
    if m.kind != "lexical":
        dtype = dtype_name(runtime.encode_dtype) if m.kind == "dense" else "float32"
        index.update(passage_template=m.passage_template, passage_max_len=m.passage_max_len,
                     pooling=m.pooling, normalize=m.normalize, dtype=dtype)  # fmt: skip
    if m.kind == "dense":  # packed rows through the fused kernel vs padded SDPA batches: other rounding
        index["attention"] = runtime.encode_attention
    # search.backend and chunk_size are left out on purpose: both backends are exact, so they produce
    # the same run and a cell rerun with the other backend reuses it.
    run = {"top_k": cfg.search.top_k, "split": d.split, "dataset": d.beir_name,
           "queries": content_identity(root / "queries.jsonl", memo),
           "qrels": content_identity(root / "qrels" / f"{d.split}.tsv", memo)}  # fmt: skip
    if m.kind != "lexical":
        run.update(query_template=m.query_template, task=d.task, query_max_len=m.query_max_len)
    products = {
        "base_weights": Product("weights", weights, ("retriever",) if trained else (), stored=False),
        "base_index": Product("index", index, ("base_weights",)),
        "base_run": Product("run", run, ("base_index",)),
    }
    if trained:
        products["retriever"] = _retriever_product(cfg, runtime)
    if trained and m.train_retriever.evaluate_untrained:  # the pretrained model, same prompts, no LoRA
        untrained = {"pretrained": model_identity(m.pretrained, memo), "retriever": None, "kind": "untrained"}
        products["untrained_weights"] = Product("weights", untrained, stored=False)
        products["untrained_index"] = Product("index", index, ("untrained_weights",))
        products["untrained_run"] = Product("run", run, ("untrained_index",))
    return products


def _retriever_product(cfg: CellConfig, runtime: Runtime) -> Product:
    """A retriever trained from the pretrained model: its data (every qrels split: judged passages are never
    negatives), the recipe and the prompts it is trained with."""
    m, t = cfg.model, cfg.model.train_retriever
    assert t is not None
    root, memo = (
        dataset_dir(t.dataset, cfg.paths.data_dir, key="model.train_retriever.dataset"),
        identity_dir(cfg),
    )
    qrels = {p.stem: content_identity(p, memo) for p in sorted((root / "qrels").glob("*.tsv"))}
    fields = {"pretrained": model_identity(m.pretrained, memo), "dataset": t.dataset,
              "corpus": content_identity(root / "corpus.jsonl", memo),
              "queries": content_identity(root / "queries.jsonl", memo),
              "qrels": qrels or content_identity(root / "qrels" / f"{t.split}.tsv", memo), "recipe": t.determining(),
              "query_template": m.query_template, "passage_template": m.passage_template,
              "precision": runtime.train_precision}  # fmt: skip
    return Product("retriever", fields)


def _readapt_products(cfg: CellConfig, runtime: Runtime, inputs: CellInputs, base: Mapping[str, Product]):
    """``tokens → adapter``, ``readapted → ra_index → ra_run``: only for dense cells RE-Adapt applies to."""
    m, sub = cfg.model, inputs.subset
    tokens = tokens_fields(m.pretrained or UNKNOWN, inputs.knowledge_root, identity_dir(cfg))
    subset: dict[str, Any] = {"subset": sub.subset}
    if sub.subset != "both":  # the subset is the set of judged-relevant doc ids: hash it, not a name
        relevant = inputs.relevant()  # qrels not downloaded yet (plan mode): distinct per dataset and split
        subset["relevant"] = (
            ids_digest(relevant)
            if relevant is not None
            else f"{UNKNOWN}:{sub.filter_dataset}/{sub.filter_split}"
        )
    # bf16 on CUDA vs float32 on CPU, the attention kernel, and the DDP world size (it multiplies the
    # effective batch) change the trained adapter, so they are part of what determines it.
    adapter = {**{f"adapter.{k}": v for k, v in cfg.adapter.determining().items()},
               **{f"train.{k}": v for k, v in cfg.train.determining().items()}, **subset,
               "precision": runtime.train_precision, "world_size": runtime.world_size,
               "attention": runtime.train_attention(cfg.train.batching),
               "pretrained": model_identity(m.pretrained, identity_dir(cfg))}  # fmt: skip
    r = cfg.readapt
    if r.auto:  # α is chosen first; the readapted products then follow at the chosen α (alpha_keys)
        return {
            "tokens": Product("tokens", tokens),
            "adapter": Product("adapter", adapter, ("tokens",)),
            **_selection_products(cfg, runtime, inputs),
        }
    return {
        "tokens": Product("tokens", tokens),
        "adapter": Product("adapter", adapter, ("tokens",)),
        "readapted": Product(
            "readapted",
            {"alpha": r.alpha, "beta": r.beta, "knowledge_scaling": r.knowledge_scaling},
            ("base_weights", "adapter"),
        ),  # fmt: skip
        "ra_index": Product("index", base["base_index"].fields, ("readapted",)),
        "ra_run": Product("run", base["base_run"].fields, ("ra_index",)),
    }


BM25 = ModelSpec(name="bm25", kind="lexical", readapt=False, stemmer="english", stopwords="en")


def _selection_products(cfg: CellConfig, runtime: Runtime, inputs: CellInputs) -> dict[str, Product]:
    """``selection`` (α chosen on withheld queries over a pool), with the BM25 index the pool draws from."""
    bm25 = _retrieval_products(cfg.model_copy(update={"model": BM25}), runtime, inputs)
    memo = identity_dir(cfg)
    qrels = {p.stem: content_identity(p, memo) for p in sorted((inputs.eval_root / "qrels").glob("*.tsv"))}
    r = cfg.readapt
    fields = {**r.alpha_selection.model_dump(), "candidates": list(r.alpha_selection.candidates()),
              "beta": r.beta, "knowledge_scaling": r.knowledge_scaling, "split": cfg.dataset.split,
              "zero_shot": cfg.model.name not in cfg.dataset.seen_by, "qrels": qrels,
              "queries": content_identity(inputs.eval_root / "queries.jsonl", memo)}  # fmt: skip
    return {
        "bm25_weights": bm25["base_weights"],
        "bm25_index": Product("index", bm25["base_index"].fields, ("bm25_weights",)),
        "selection": Product("selection", fields, ("base_index", "adapter", "bm25_index")),
    }


def at_alpha(cfg: CellConfig, alpha: float) -> CellConfig:
    """The same cell with a fixed α (an auto cell's readapted products at a chosen α)."""
    return cfg.model_copy(update={"readapt": cfg.readapt.model_copy(update={"alpha": float(alpha)})})


def cell_products(cfg: CellConfig, runtime: Runtime, inputs: CellInputs | None = None) -> dict[str, Product]:
    """The cell's product graph (readapted products only when RE-Adapt applies to the cell)."""
    inputs = inputs or CellInputs.of(cfg)
    products = _retrieval_products(cfg, runtime, inputs)
    runs: tuple[str, ...] = ("base_run",) + (("untrained_run",) if "untrained_run" in products else ())
    if cfg.model.readapt and cfg.model.kind == "dense" and inputs.subset.applicable:
        products.update(_readapt_products(cfg, runtime, inputs, products))
        runs = (*runs, "selection" if cfg.readapt.auto else "ra_run")
    e = cfg.evaluate
    result = {"k_values": sorted(set(e.k_values)), "extra_metrics": list(cfg.dataset.extra_metrics)}
    products["result"] = Product("result", result, runs, stored=False)
    return products


def cell_keys(cfg: CellConfig, runtime: Runtime, inputs: CellInputs | None = None) -> dict[str, str]:
    """Node name → artifact key for every product of the cell (see the module docstring)."""
    return resolve(cell_products(cfg, runtime, inputs))


def stored_parents(products: Mapping[str, Product], keys: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Key → keys of the stored products it is made from, looking through key-only nodes (the store
    records their build ids, so rebuilding one invalidates what was made from it)."""

    def nearest(name: str) -> list[str]:
        out: list[str] = []
        for q in products[name].parents:
            out += [keys[q]] if products[q].stored else nearest(q)
        return out

    return {keys[n]: tuple(dict.fromkeys(nearest(n))) for n in products}
