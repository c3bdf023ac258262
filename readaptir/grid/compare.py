"""``readaptir evaluate``: any dense retriever (and its readapted version) on a judged dataset, the grid's way.

    readaptir evaluate retriever=castorini/repllama-v1-7b-lora-passage readapted=my-readapted dataset=nfcorpus
    readaptir evaluate retriever=my-st-model dataset=/data/my-beir-copy            # one retriever alone

The retrievers go through the grid's own stages (data download and checks, EOS-pooled encoding into the
cached index, exact search, BeIR's metrics with self-hits removed; :mod:`readaptir.grid.stages`), so a
base retriever's index and run are the very products of the grid cell with the same model and dataset.
``readapted=`` is a folder from ``readaptir adapt`` (or any full-weight retriever of the same model): its
weights are loaded as saved, so its run equals the grid's readapted run with the same settings. The two are
shown side by side with the paired test on per-query nDCG@10, and written to ``<job folder>/results.json``.
``dataset=`` is a BeIR name (conf/dataset/, fetched when missing) or a folder in BeIR layout. A
sentence-transformers model that is not a PEFT/LLM retriever (``modules.json``, no ``pretrained=``) runs
as the grid's ``kind: sbert`` baseline with the prompts it ships.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from readaptir.config import CellConfig, ConfigError, DatasetSpec, ModelSpec, _Spec
from readaptir.errors import config_line
from readaptir.evaluate import evaluate_run, paired_test
from readaptir.fs import atomic_write_json
from readaptir.grid import stages
from readaptir.grid.cell import ensure_data, job_dir, open_store
from readaptir.grid.keys import CellInputs, cell_products, resolve
from readaptir.models.hub import ModelFolders, resolve_model_dir
from readaptir.paths import name_problem
from readaptir.readapt.pair import base_of, check_pair
from readaptir.readapt.weights import is_adapter_folder
from readaptir.retrieval.runs import RUN_FILE, read_run
from readaptir.runtime import Runtime

log = logging.getLogger(__name__)

EVALUATE_KEYS = ("retriever", "pretrained", "readapted", "data_path", "task")
SHOWN = ("NDCG@10", "Recall@100", "MRR@10")


class EvaluateSettings(_Spec):
    retriever: str
    pretrained: str | None = None
    readapted: str | None = None
    data_path: str | None = None  # dataset=<folder> on the command line
    task: str | None = None  # e5 query instruction for a dataset given as a folder


def split_config(container: dict[str, Any]) -> tuple[EvaluateSettings, CellConfig]:
    own = {k: container.pop(k) for k in EVALUATE_KEYS if k in container}
    try:
        settings = EvaluateSettings.model_validate(own)
    except ValidationError as e:
        raise ConfigError(config_line(e, own)) from None
    if settings.data_path:  # a BeIR folder: data_dir is its parent, the dataset its name
        root = Path(settings.data_path).expanduser().resolve()
        if not (root / "corpus.jsonl").is_file():
            raise ConfigError(f"dataset={settings.data_path}: no corpus.jsonl there; give a BeIR name "
                              "(conf/dataset/) or a folder with corpus.jsonl, queries.jsonl and qrels/")  # fmt: skip
        if (problem := name_problem(root.name)) is not None:  # the folder's name is the dataset's name
            raise ConfigError(f"dataset={settings.data_path}: the folder name {root.name!r} cannot name a dataset "
                              f"({problem}); rename the folder or link it under such a name")  # fmt: skip
        container["paths"]["data_dir"] = str(root.parent)
        container["dataset"] = DatasetSpec(name=root.name, beir_name=root.name, split=container["dataset"]["split"],
                                           corpus_size=0, knowledge_corpus=root.name,
                                           task=settings.task or "").model_dump()  # fmt: skip
    elif settings.task is not None:
        container["dataset"]["task"] = settings.task
    return settings, CellConfig.from_hydra(container)


def sbert_model(folder: Path, name: str) -> ModelSpec:
    """A sentence-transformers folder as the grid's ``kind: sbert`` model, its shipped prompts as templates."""
    cfg_file = folder / "config_sentence_transformers.json"
    prompts = json.loads(cfg_file.read_text()).get("prompts", {}) if cfg_file.is_file() else {}
    passage = prompts.get("document", prompts.get("passage", ""))
    return ModelSpec(name=name, kind="sbert", pretrained=str(folder), readapt=False,
                     query_template=prompts.get("query", "") + "{query}",
                     passage_template=passage + "{title} {text}")  # fmt: skip


def base_model(cfg: CellConfig, s: EvaluateSettings) -> tuple[ModelSpec, ModelFolders | None]:
    """The retriever as the grid's model: a PEFT/full LLM retriever (with its base), or an sbert baseline."""
    ret_dir = resolve_model_dir(s.retriever, cfg.paths.cache_dir)
    name = Path(s.retriever.rstrip("/")).name
    if s.pretrained is None and not is_adapter_folder(ret_dir) and (ret_dir / "modules.json").is_file():
        return sbert_model(ret_dir, name), None
    pretrained = base_of(ret_dir, s.pretrained)
    pre_dir = resolve_model_dir(pretrained, cfg.paths.cache_dir)
    check_pair(pre_dir, ret_dir)
    kind = "lora" if is_adapter_folder(ret_dir) else "full"
    model = cfg.model.model_copy(update=dict(name=name, pretrained=pretrained, retriever=s.retriever, tiny=None,
                                             retriever_kind=kind, train_retriever=None, readapt=False))  # fmt: skip
    return model, ModelFolders(pre_dir, ret_dir)


def _retrieve(cfg: CellConfig, build, runtime: Runtime, data: stages.EvalData) -> tuple[dict, dict, str]:
    """The grid's base-retrieval stages for ``cfg``'s model; ``build()`` makes the retriever when needed."""
    inputs = CellInputs.of(cfg)
    products = cell_products(cfg, runtime, inputs)
    keys = resolve(products)
    store = open_store(cfg, products, keys)
    if store.missing(keys["base_run"]):
        stages.retrieve(store, keys["base_index"], keys["base_run"], build(), data, cfg.search.top_k)
    run = read_run(store.path(keys["base_run"]) / RUN_FILE)
    metrics, per_query = evaluate_run(data.qrels, run, cfg.evaluate.k_values, cfg.dataset.extra_metrics)
    return metrics, per_query, keys["base_run"]


def run_evaluate(container: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the retriever (and ``readapted=``) on the dataset; returns and writes the results."""
    settings, cfg = split_config(container)
    model, folders = base_model(cfg, settings)
    cfg = cfg.model_copy(update={"model": model})
    ensure_data(cfg, CellInputs.of(cfg))
    runtime = Runtime.detect(cfg.encode.dtype, cfg.model.torch_dtype)
    data = stages.EvalData.load(CellInputs.of(cfg).eval_root, cfg.dataset.split)
    out: dict[str, Any] = {
        "dataset": cfg.dataset.name,
        "split": cfg.dataset.split,
        "retriever": settings.retriever,
    }
    base, base_q, out["base_run"] = _retrieve(
        cfg, lambda: stages.base_retriever(cfg, folders, runtime), runtime, data
    )
    out["base"] = base
    if settings.readapted:
        ra_cfg, build = readapted_cell(cfg, settings.readapted, runtime)
        ra, ra_q, out["readapted_run"] = _retrieve(ra_cfg, build, runtime, data)
        out.update(readapted=ra, readapted_model=settings.readapted,
                   delta={k: ra[k] - base[k] for k in base if k in ra},
                   significance={"metric": "NDCG@10", **paired_test(base_q, ra_q)})  # fmt: skip
    atomic_write_json(job_dir(cfg) / "results.json", out)
    print(summary(out))
    return out


def readapted_cell(cfg: CellConfig, folder_ref: str, runtime: Runtime):
    """The readapted folder as a full-weight model of the same cell, loaded as saved (no arithmetic)."""
    folder = resolve_model_dir(folder_ref, cfg.paths.cache_dir)
    if cfg.model.kind == "dense":
        check_pair(resolve_model_dir(str(cfg.model.pretrained), cfg.paths.cache_dir), folder)
    model = cfg.model.model_copy(update=dict(name=f"{cfg.model.name}-readapted", retriever=str(folder),
                                             retriever_kind="full", pretrained=None))  # fmt: skip
    ra_cfg = cfg.model_copy(update={"model": model})

    def build():
        from transformers import AutoModel

        weights = AutoModel.from_pretrained(folder, dtype=runtime.encode_dtype).to(runtime.device)
        return stages.dense_retriever(ra_cfg, weights, ModelFolders(folder, folder), runtime)

    return ra_cfg, build


def summary(out: dict[str, Any]) -> str:
    base, ra = out["base"], out.get("readapted")
    head = f"{out['dataset']} ({out['split']}): {out['retriever']}"
    lines = [head, f"  {'metric':<12}{'base':>8}" + (f"{'readapted':>11}{'Δ':>8}" if ra else "")]
    for k in SHOWN:
        if k in base:
            row = f"  {k:<12}{100 * base[k]:>8.2f}"
            if ra and k in ra:
                row += f"{100 * ra[k]:>11.2f}{100 * (ra[k] - base[k]):>+8.2f}"
            lines.append(row)
    if ra:
        lines.append(
            f"  paired t-test on per-query nDCG@10: p = {out['significance'].get('p_value', float('nan')):.3g}"
        )
    return "\n".join(lines)
