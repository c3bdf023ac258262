"""One grid cell as data: its coordinates, knowledge subset, dataset folders and results files.

A cell is model × dataset × adapter × ablation (+ α, β, knowledge scaling). This module says what a
cell is and where its results go, without loading anything: the pipeline runs cells, the planner
describes them, the table renderers read what :func:`write_results` wrote
(``<paths.results_dir>/<model>/<dataset>/<adapter>-<ablation>-a<α>-b<β>-<scaling>.json``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from readaptir.artifacts import atomic_write_json
from readaptir.data import KnowledgeSubset, ensure_dataset, knowledge_subset
from readaptir.errors import UserError

log = logging.getLogger(__name__)


BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
DEMO_NOTICE = "DEMO: these numbers come from tiny random models on a toy dataset and mean nothing."


class ConfigError(UserError):
    """An incomplete or inconsistent config, refused before anything heavy runs."""


def check_config(cfg: DictConfig) -> None:
    """Refuse missing keys (``???``) and unknown choices before any model loads."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"config keys without a value: {', '.join(missing)}; set them on the command line "
            f"(e.g. {missing[0]}=...)"
        )
    if cfg.readapt.knowledge_scaling not in ("delta", "peft_scale"):
        raise ConfigError(
            f"readapt.knowledge_scaling={cfg.readapt.knowledge_scaling!r}: use delta or peft_scale"
        )
    if cfg.train.batching not in ("paper", "packed"):
        raise ConfigError(f"train.batching={cfg.train.batching!r}: use paper or packed")


def cell_coords(cfg: DictConfig) -> dict[str, Any]:
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "adapter": cfg.adapter.name,
        "ablation": cfg.ablation.name,
        "alpha": float(cfg.readapt.alpha),
        "beta": float(cfg.readapt.beta),
        "knowledge_scaling": cfg.readapt.knowledge_scaling,
    }


def cell_name(c: dict[str, Any]) -> str:
    return f"{c['adapter']}-{c['ablation']}-a{c['alpha']:g}-b{c['beta']:g}-{c['knowledge_scaling']}"


def results_path(cfg: DictConfig) -> Path:
    c = cell_coords(cfg)
    return (
        Path(cfg.paths.results_dir).expanduser().resolve()
        / c["model"]
        / c["dataset"]
        / f"{cell_name(c)}.json"
    )


def is_demo(cfg: DictConfig) -> bool:
    return bool(cfg.model.get("tiny"))


def cell_subset(cfg: DictConfig) -> KnowledgeSubset:
    return knowledge_subset(
        cfg.adapter.corpus,
        cfg.ablation.name,
        cfg.dataset.name,
        cfg.dataset.knowledge_corpus,
        cfg.dataset.split,
    )


def knowledge_corpus_root(cfg: DictConfig) -> Path:
    name = cfg.adapter.corpus
    if name == cfg.dataset.name:
        return ensure_dataset(
            cfg.dataset.beir_name,
            cfg.paths.data_dir,
            cfg.dataset.url,
            bool(cfg.dataset.get("builtin", False)),
        )
    return ensure_dataset(name, cfg.paths.data_dir, BEIR_URL.format(name=name))


def eval_root(cfg: DictConfig) -> Path:
    return ensure_dataset(
        cfg.dataset.beir_name, cfg.paths.data_dir, cfg.dataset.url, bool(cfg.dataset.get("builtin", False))
    )


def rank_world() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch` / torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def job_dir(cfg: DictConfig) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - run(cfg) called outside a Hydra app (tests, notebooks)
        return Path(cfg.run.get("out_dir") or ".").resolve()


def write_results(cfg: DictConfig, results: dict) -> Path:
    """results.json into the job folder and the results store (atomic writes; rank 0 only)."""
    if rank_world()[0] != 0:
        return results_path(cfg)
    atomic_write_json(job_dir(cfg) / "results.json", results)
    path = results_path(cfg)
    atomic_write_json(path, results)
    return path


def format_cell(results: dict, path: Path | None = None) -> str:
    """A short human summary of one cell's results."""
    c = results["cell"]
    if results.get("readapt", True):
        head = (
            f"{c['model']} × {c['dataset']} × adapter={c['adapter']} × ablation={c['ablation']} "
            f"(α={c['alpha']:g}, β={c['beta']:g}, {c['knowledge_scaling']})"
        )
    else:
        head = f"{c['model']} × {c['dataset']} (baseline: base model only, RE-Adapt does not apply)"
    lines = [head]
    if results.get("demo"):
        lines.append(DEMO_NOTICE)
    b = results.get("base", {}).get("NDCG@10")
    r = results.get("readapted", {}).get("NDCG@10")
    if b is not None:
        line = f"  nDCG@10 base {100 * b:.1f}"
        if r is not None:
            p = results.get("significance", {}).get("p_value")
            line += f"  readapted {100 * r:.1f}  Δ {100 * (r - b):+.1f}" + (
                f"  (p={p:.3g})" if p is not None else ""
            )
        lines.append(line)
    reused = [e for e in results.get("artifact_events", []) if e["reused"]]
    built = [e for e in results.get("artifact_events", []) if not e["reused"]]
    lines.append(f"  artifacts: {len(built)} built, {len(reused)} reused")
    if path:
        lines.append(f"  results: {path}")
    return "\n".join(lines)
