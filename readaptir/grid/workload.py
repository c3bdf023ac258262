"""How much work a cell's products are, in passages and tokens, from the shipped dataset statistics.

Plans price products without any data on disk: ``conf/dataset/*.yaml`` ship each corpus's size, its
token count (``corpus_tokens``, title + " " + text) and the passages judged relevant in the evaluated
split (``judged_passages``, the size of ablation=with), with their sources. Tokens per passage are capped
at the truncation lengths (``train.max_tokens`` for training, ``model.passage_max_len`` for encoding).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from readaptir.config import CONF_DIR, CellConfig, DatasetSpec
from readaptir.grid.keys import CellInputs

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"  # make bench-gpu's reports


@dataclass(frozen=True)
class Work:
    passages: int = 0
    tokens: int = 0


def dataset_spec(name: str, cfg: CellConfig) -> DatasetSpec | None:
    """A dataset's config (its shipped statistics) by name: the cell's own, or ``conf/dataset/<name>.yaml``."""
    if name == cfg.dataset.name:
        return cfg.dataset
    path = CONF_DIR / "dataset" / f"{name}.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return DatasetSpec.model_validate(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def tokens_per_passage(spec: DatasetSpec | None, cfg: CellConfig) -> float:
    """Mean tokens per passage from the shipped statistics, else ``estimates.tokens_per_passage``."""
    if spec is not None and spec.corpus_tokens and spec.corpus_size:
        return spec.corpus_tokens / spec.corpus_size
    return float(cfg.estimates.get("tokens_per_passage", 78))


def train_work(cfg: CellConfig, inputs: CellInputs) -> Work:
    """Passages and tokens the knowledge adapter trains on: the corpus, minus or only the judged passages."""
    sub, corpus = inputs.subset, dataset_spec(inputs.subset.corpus, cfg)
    size = corpus.corpus_size if corpus is not None else 0
    judged = min(cfg.dataset.judged_passages or 0, size)  # the evaluated split's qrels filter the corpus
    n = {"both": size, "without": size - judged, "with": judged}[sub.subset]
    if cfg.train.max_passages:
        n = min(n, cfg.train.max_passages)
    per = min(tokens_per_passage(corpus, cfg), cfg.train.max_tokens)
    return Work(n * cfg.train.epochs, round(n * per) * cfg.train.epochs)


def encode_work(cfg: CellConfig) -> Work:
    n = cfg.dataset.corpus_size
    return Work(n, round(n * min(tokens_per_passage(cfg.dataset, cfg), cfg.model.passage_max_len)))


def alpha_work(cfg: CellConfig, inputs: CellInputs) -> tuple[str, Work]:
    """``(protocol, work)`` of an ``alpha=auto`` cell's choice of α: pool encodings over every candidate,
    then at most one full readapted encoding per distinct chosen α (one fold, or up to the folds).

    Without the data the protocol is unknown and the bound is cross-fitting's; the encoded set holds at most
    each selection query's two top-``pool_depth`` lists and the corpus sample, capped by the corpus.
    """
    from readaptir.grid.alpha import selection_split

    s = cfg.readapt.alpha_selection
    protocol = selection_split(
        inputs.eval_root, cfg.dataset.split, cfg.model.name not in cfg.dataset.seen_by
    )[0]
    if not (inputs.eval_root / "qrels").is_dir():
        protocol = "crossfit (assumed: no qrels here yet)"
    n = len(s.candidates())
    pool = min(cfg.dataset.corpus_size, s.max_queries * 2 * s.pool_depth + s.sample_size) * n
    full = min(s.folds, n) if protocol.startswith("crossfit") else 1
    one = encode_work(cfg)
    per = one.tokens / max(one.passages, 1)
    return protocol, Work(pool + full * one.passages, round((pool + full * one.passages) * per))


@functools.lru_cache(maxsize=8)
def measured_rates(gpu: str | None, results_dir: Path) -> dict | None:
    """The newest ``make bench-gpu`` rates measured at LLaMA-2-7B shapes on a GPU whose name contains
    ``gpu`` (e.g. ``H200``), with the report they come from; None when no report matches."""
    if not gpu or not results_dir.is_dir():
        return None
    found = []
    for path in results_dir.glob("bench_gpu-*.json"):
        try:
            meta = json.loads(path.read_text())["meta"]
        except (OSError, ValueError, KeyError):
            continue
        if meta.get("shape") == "llama2-7b" and gpu.lower() in str(meta.get("gpu") or "").lower():
            found.append((str(meta.get("date", "")), path.name, path, meta.get("rates") or {}))
    if not found:
        return None
    *_, path, rates_ = max(found)
    return {**rates_, "source": str(path)}


def estimates(cfg: CellConfig) -> dict:
    """``estimates:`` of the config, its rates replaced by those measured on ``estimates.gpu`` if any."""
    est = dict(cfg.estimates)
    measured = measured_rates(est.get("gpu"), RESULTS)
    if measured:
        train = measured.get("train_passages_per_s") or {}
        est["train_passages_per_s"] = {**est["train_passages_per_s"], **{k: v for k, v in train.items() if v}}
        est["encode_passages_per_s"] = measured.get("encode_passages_per_s") or est["encode_passages_per_s"]
        est["source"] = measured["source"]
    return est


def rates(cfg: CellConfig) -> tuple[float, float]:
    """``(training, encoding)`` tokens/s: passages/s (measured, else ``estimates:``) × tokens per passage."""
    est = estimates(cfg)
    per = float(est.get("tokens_per_passage", 78))
    return float(est["train_passages_per_s"][cfg.train.batching]) * per, float(
        est["encode_passages_per_s"]
    ) * per


def gpu_hours(cfg: CellConfig, train_tokens: int, encode_tokens: int) -> tuple[float, float]:
    """``(training, encoding)`` GPU-hours of that many tokens at the throughputs in ``estimates:``."""
    train_rate, encode_rate = rates(cfg)
    return train_tokens / train_rate / 3600, encode_tokens / encode_rate / 3600
