"""A cell's ``results.json``: one schema, written by the cell and read back by the tables.

Every cell writes one :class:`CellRecord` into its Hydra job folder and, when done, into the results store
``<paths.results_dir>/<model>/<dataset>/<adapter>-<ablation>-a<α>-b<β>-<scaling>/<result key>.json``,
which :mod:`readaptir.report` renders. The result key (grid/keys.py) hashes everything that determines the
numbers (every setting, the data's contents, the model weights' identity, precision), so a run with another
``train.lr`` or ``search.top_k`` adds a variant beside the others instead of replacing one; ``variant`` hashes
the settings alone, so the tables can pick the variant an experiment's own config produces. Metrics are
BeIR's names as fractions (``NDCG@10`` = 0.745); ``delta`` is readapted − base; ``significance`` is the
paired test on per-query nDCG@10; ``artifacts`` holds the keys of every product the cell used, so a number
can always be traced to the files that made it. ``git_commit``/``versions`` record the code.

The store keeps one record per result key, written once: a later run of the same key (another setting
that determines no number, such as ``dataset.corpus_size``, which the record takes from the data instead)
leaves it as it is. Each record carries ``digest``, the sha256 of its own canonical JSON, which the tables
verify (:func:`digest_problem`): a record edited by hand or damaged on disk is skipped, named.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from readaptir.config import CellConfig
from readaptir.data.beir import DataError
from readaptir.errors import UserError
from readaptir.fs import atomic_write, create_once, storage_problem
from readaptir.paths import confined, root_dir
from readaptir.provenance import provenance
from readaptir.store.artifacts import make_key

log = logging.getLogger(__name__)

DEMO_NOTICE = "DEMO: these numbers come from tiny random models on a toy dataset and mean nothing."
Status = Literal["running", "done", "not_applicable", "failed", "waiting"]
# Settings that do not change a cell's numbers: where files go, logging, how often checkpoints are saved,
# which exact-search backend runs, how encoding batches are cut (the same vectors either way).
NOT_DETERMINING = {
    "tracking", "paths", "run", "store", "estimates", "train.checkpoint_every", "train.log_every",
    "train.gradient_checkpointing", "readapt.save_model", "dataset.corpus_size", "dataset.seen_by",
    "dataset.url", "dataset.source", "search.backend", "search.faiss_max_gb", "search.chunk_size",
    "encode.token_budget", "encode.max_batch_size",
}  # fmt: skip


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if name in NOT_DETERMINING:
            continue
        out.update(_flat(v, f"{name}.") if isinstance(v, Mapping) else {name: v})
    return out


def variant_settings(cfg: CellConfig) -> dict[str, Any]:
    """The settings that determine a cell's numbers, flat (``train.lr``: 0.0002 ...). A tiny stand-in model
    is named by its family, not by the cache folder it is built in."""
    settings = _flat(cfg.model_dump(mode="json"))
    if cfg.model.tiny:
        for name in ("model.pretrained", "model.retriever"):
            settings.pop(name, None)
    return settings


def failure_reason(err: BaseException) -> str:
    """One line for a failed cell's ``reason``: the message of a bad input, the folder of a full disk or a
    permission error, else the exception's type and message (its traceback goes to the job log)."""
    if isinstance(err, UserError):
        return str(err)
    problem = storage_problem(err)
    if problem is not None:
        return f"{problem}; free space, fix the permissions, or set paths.cache_dir / paths.results_dir elsewhere"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:500]}" if text else type(err).__name__


def record_digest(raw: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of a record's canonical JSON (sorted keys, no spaces), its ``digest`` left out."""
    body = {k: v for k, v in raw.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def digest_problem(raw: Mapping[str, Any]) -> str | None:
    """None when a stored record matches its digest; else what is wrong (no digest: an older record)."""
    if not raw.get("digest"):
        return "it carries no digest (written before records did)"
    if raw["digest"] != record_digest(raw):
        return "its contents do not match its digest (edited by hand or damaged on disk)"
    return None


def _result_key(raw: Mapping[str, Any]) -> object:
    artifacts = raw.get("artifacts")
    return artifacts.get("result") if isinstance(artifacts, Mapping) else None


def _write_once(path: Path, text: str) -> None:
    """One record per result key: an intact one stays; a damaged or digest-less one, or one of another
    result key (a file copied), is replaced."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        why = digest_problem(old) if isinstance(old, dict) else "not a JSON object"
        if why is None and _result_key(old) != _result_key(json.loads(text)):  # a file copied under a key
            why = f"it holds the record of {_result_key(old)} (copied under another result key)"
    except FileNotFoundError:
        if create_once(path, text):
            return
        log.info("results store: %s was written meanwhile by another job; kept", path)
        return
    except (OSError, ValueError) as e:
        why = f"unreadable ({e})"
    if why is None:
        log.info("results store already holds %s (one record per result key); kept as it is", path)
        return
    log.warning("results store: replacing %s: %s", path, why)
    atomic_write(path, text)


class CellCoords(BaseModel):
    """Where a cell sits in the grid. A baseline (RE-Adapt does not apply: BM25, MiniLM) has a model and a
    dataset only: no adapter, ablation, α, β or scaling (None), and its store folder is ``baseline``."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model: str
    dataset: str
    adapter: str | None = None
    ablation: str | None = None
    alpha: float | Literal["auto"] | None = None
    beta: float | None = None
    knowledge_scaling: str | None = "delta"  # older records omit it: they all used delta

    @classmethod
    def of(cls, cfg: CellConfig) -> CellCoords:
        if not cfg.model.readapt:
            return cls(model=cfg.model.name, dataset=cfg.dataset.name, knowledge_scaling=None)
        return cls(
            model=cfg.model.name,
            dataset=cfg.dataset.name,
            adapter=cfg.adapter.name,
            ablation=cfg.ablation.name,
            alpha=cfg.readapt.alpha,
            beta=cfg.readapt.beta,
            knowledge_scaling=cfg.readapt.knowledge_scaling,
        )

    @property
    def alpha_text(self) -> str:
        return self.alpha if isinstance(self.alpha, str) else "" if self.alpha is None else f"{self.alpha:g}"

    @property
    def name(self) -> str:
        if self.adapter is None:
            return "baseline"
        return f"{self.adapter}-{self.ablation}-a{self.alpha_text}-b{self.beta:g}-{self.knowledge_scaling}"

    def store_path(self, results_dir: str | os.PathLike, result_key: str) -> Path:
        """Where the results store keeps this cell's variant with ``result_key`` (one file per variant)."""
        root = root_dir(results_dir, "paths.results_dir").resolve()
        return confined(root, self.model, self.dataset, self.name, f"{result_key}.json",
                        key="model.name/dataset.name/adapter.name")  # fmt: skip


def _trained_on(cfg: CellConfig) -> bool:
    """Whether the retriever the pipeline trains saw this dataset (its own split of it, or a subset's source)."""
    t, d = cfg.model.train_retriever, cfg.dataset
    sources = {d.name, d.beir_name} | ({d.subset.of} if d.subset is not None else set())
    return t is not None and t.dataset in sources


class CellRecord(BaseModel):
    """Everything a finished (or skipped, or failed) cell reports."""

    model_config = ConfigDict(protected_namespaces=())

    cell: CellCoords
    status: Status = "done"
    reason: str = ""
    stage: str = "all"  # run.stage: a record of a partial stage never enters the results store
    variant: str = ""  # hash of the determining settings (variant_settings)
    settings: dict[str, Any] = {}
    finished: float | None = None  # when the record was written (the newest variant wins a tie)
    demo: bool = False
    zero_shot: bool = True
    corpus_size: int | None = None
    readapt: bool = True
    seed: int = 0  # train.seed: the knowledge adapter's data order, dropout and initialisation
    git_commit: str | None = None  # the readaptir checkout that ran (None from an installed wheel)
    versions: dict[str, str] = {}  # packages that can change a number (readaptir.provenance)
    base: dict[str, float] = {}
    readapted: dict[str, float] = {}
    delta: dict[str, float] = {}
    significance: dict[str, Any] = {}
    delta_report: dict[str, Any] = {}
    alpha_selection: dict[str, Any] = {}  # alpha=auto: protocol, per-α selection scores, chosen α per fold
    train: dict[str, Any] = {}
    retriever: dict[
        str, Any
    ] = {}  # training stats of a retriever the pipeline trained (model.train_retriever)
    untrained: dict[str, float] = {}  # the pretrained model's metrics with the same prompts, no LoRA
    timings: dict[str, float] = {}
    artifacts: dict[str, str] = {}
    artifact_events: list[dict[str, Any]] = []
    digest: str = ""  # sha256 of the record's canonical JSON without this field (record_digest)

    @classmethod
    def start(cls, cfg: CellConfig) -> CellRecord:
        settings = variant_settings(cfg)
        return cls(
            cell=CellCoords.of(cfg),
            stage=cfg.run.stage,
            variant=make_key("variant", settings),
            settings=settings,
            demo=cfg.model.tiny is not None,
            zero_shot=cfg.model.name not in cfg.dataset.seen_by and not _trained_on(cfg),
            corpus_size=cfg.dataset.corpus_size,
            readapt=cfg.model.readapt,
            seed=cfg.train.seed,
            **provenance(),
        )

    def set_metrics(self, base: dict[str, float], readapted: dict[str, float] | None = None) -> None:
        self.base = base
        if readapted is not None:
            self.readapted = readapted
            self.delta = {k: round(readapted[k] - base[k], 6) for k in base if k in readapted}

    def write(self, *paths: str | os.PathLike, once: str | os.PathLike | None = None) -> None:
        """The same JSON, digest included, into every path (job folder), each written atomically, and into
        ``once`` (the results store) only when it holds no intact record for that result key yet."""
        self.finished = time.time()
        raw = json.loads(self.model_dump_json(exclude={"digest"}))
        self.digest = raw["digest"] = record_digest(raw)
        text = json.dumps(raw, indent=2, ensure_ascii=False) + "\n"
        for path in paths:
            atomic_write(path, text)
        if once is not None:
            _write_once(Path(once), text)

    @classmethod
    def read(cls, path: str | os.PathLike) -> CellRecord:
        """A results.json back; a file that is not one is refused naming the file."""
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except (OSError, ValidationError, json.JSONDecodeError) as e:
            first = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
            raise DataError(f"{path}: not a readable results.json ({first})") from None

    def summary(self, path: Path | None = None) -> str:
        """A short human summary of the cell."""
        c = self.cell
        if self.readapt:
            head = (
                f"{c.model} × {c.dataset} × adapter={c.adapter} × ablation={c.ablation} "
                f"(α={c.alpha_text}, β={c.beta:g}, {c.knowledge_scaling})"
            )
        else:
            head = f"{c.model} × {c.dataset} (baseline: base model only, RE-Adapt does not apply)"
        lines = [head] + ([DEMO_NOTICE] if self.demo else [])
        b, r = self.base.get("NDCG@10"), self.readapted.get("NDCG@10")
        if self.untrained.get("NDCG@10") is not None:
            lines.append(
                f"  nDCG@10 untrained {100 * self.untrained['NDCG@10']:.1f} (pretrained model, no LoRA)"
            )
        if b is not None:
            line = f"  nDCG@10 base {100 * b:.1f}"
            if r is not None:
                p = self.significance.get("p_value")
                line += f"  readapted {100 * r:.1f}  Δ {100 * (r - b):+.1f}" + (
                    f"  (p={p:.3g})" if p is not None else ""
                )
            lines.append(line)
        if self.alpha_selection:
            s = self.alpha_selection
            lines.append(f"  α chosen on {s['protocol']} queries: {', '.join(f'{a:g}' for a in s['chosen'])}")
        built = sum(not e["reused"] for e in self.artifact_events)
        lines.append(f"  artifacts: {built} built, {len(self.artifact_events) - built} reused")
        if path:
            lines.append(f"  results: {path}")
        return "\n".join(lines)
