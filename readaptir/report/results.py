"""The per-cell results store, read back: one ``results.json`` per grid cell, indexed for the tables.

Cells are written by :mod:`readaptir.grid.cell` to ``<results_dir>/<model>/<dataset>/<cell>/<result key>.json``
and indexed here by (model, dataset, adapter, ablation, α, β, knowledge_scaling). The store keeps every
variant of a cell (another ``train.lr``, ``search.top_k``, corpus ...); :class:`Results` picks the one whose
``variant`` (a hash of the settings) is what ``expect`` says the experiment's own config produces, the
newest when several match, and says so in a warning whenever a cell has more than one. Each record's digest
is verified: one whose contents no longer match it (edited by hand, damaged) is skipped with a warning line
naming the file. Dataset metadata
(corpus size, which models saw it in training) comes from ``conf/dataset/**/*.yaml``, the same files the
grid composes, so the zero-shot averages can never disagree with the configs.

    from readaptir.report.results import load_results, Selection
    r = load_results("cache/results").get("repllama", "scifact", "in-domain", "both", Selection())
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from readaptir.config import CONF_DIR
from readaptir.grid.record import CellRecord, digest_problem
from readaptir.paths import root_dir

log = logging.getLogger(__name__)

CONF_DATASET_DIR = CONF_DIR / "dataset"
SIGNIFICANCE_LEVEL = 0.05


@dataclass(frozen=True)
class Selection:
    """Which point of the (α, β, knowledge_scaling) grid to render, and on which metric."""

    alpha: float | str = 0.5  # a number, or "auto" (α chosen on withheld queries)
    beta: float = 1.0
    knowledge_scaling: str = "delta"
    metric: str = "NDCG@10"

    def describe(self) -> str:
        alpha = self.alpha if isinstance(self.alpha, str) else float(self.alpha)
        return f"α={alpha}, β={float(self.beta)}, knowledge_scaling={self.knowledge_scaling}"


@dataclass(frozen=True)
class CellResult:
    """One finished grid cell as the tables see it: its record, with scores × 100."""

    record: CellRecord
    path: str = ""

    def __getattr__(self, name: str) -> Any:  # coordinates: model, dataset, adapter, ablation, alpha, ...
        if name == "record":  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.record.cell, name)

    @property
    def demo(self) -> bool:
        return self.record.demo

    @property
    def corpus_size(self) -> int | None:
        return self.record.corpus_size

    @property
    def significance(self) -> Mapping[str, Any]:
        return self.record.significance

    @property
    def key(self) -> tuple[str, str, str, str, float, float, str]:
        c = self.record.cell
        return _key(c.model, c.dataset, c.adapter, c.ablation, c.alpha, c.beta, c.knowledge_scaling)

    def score(self, which: str, metric: str) -> float | None:
        """``which`` ∈ {base, readapted}; the metric × 100, or None when the cell lacks it."""
        value = (self.record.base if which == "base" else self.record.readapted).get(metric)
        return None if value is None else 100.0 * float(value)

    def delta(self, metric: str) -> float | None:
        base, ra = self.score("base", metric), self.score("readapted", metric)
        return None if base is None or ra is None else ra - base

    def significant(self, metric: str, level: float = SIGNIFICANCE_LEVEL) -> bool:
        """True when the recorded paired test on ``metric`` has p < level (a test on another metric says nothing)."""
        p = self.significance.get("p_value")
        return p is not None and self.significance.get("metric", metric) == metric and float(p) < level


def _key(model: str, dataset: str, adapter: str, ablation: str, alpha: float, beta: float, scaling: str):
    # Round α/β so 0.5 parsed from "0.5" and from 0.50000000001 meet in the index (None: a baseline).
    a = alpha if isinstance(alpha, str) or alpha is None else round(float(alpha), 6)
    return (model, dataset, adapter, ablation, a, None if beta is None else round(float(beta), 6), scaling)


# coordinates → the variant the experiment's config produces there (None: no preference)
Expect = Callable[[tuple[str, str, str, str, float, float, str]], str | None]


def _differences(a: CellResult, b: CellResult) -> str:
    keys = sorted(k for k in set(a.record.settings) | set(b.record.settings)
                  if a.record.settings.get(k) != b.record.settings.get(k))  # fmt: skip
    return ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "") if keys else "data or model contents"


class Results:
    """Finished cells indexed by (model, dataset, adapter, ablation, α, β, knowledge_scaling), every variant
    kept, and baselines (base model only) by (model, dataset); ``expect`` names the variant each cell should
    show (the experiment's config), see :meth:`get`."""

    def __init__(self, cells: Iterable[CellResult] = (), expect: Expect | None = None) -> None:
        self._cells: dict[tuple, list[CellResult]] = {}
        self._baselines: dict[tuple[str, str], list[CellResult]] = {}  # base model only: BM25, MiniLM
        self.expect = expect
        self._said: set[tuple] = set()
        for cell in cells:
            if cell.record.readapt:
                self._cells.setdefault(cell.key, []).append(cell)
            else:  # no adapter or α applies to a baseline: indexed by (model, dataset)
                self._baselines.setdefault((cell.model, cell.dataset), []).append(cell)

    def __len__(self) -> int:
        return len(self._cells) + len(self._baselines)

    def __iter__(self):
        """The shown variant of every cell; a cell whose variants all come from other settings is skipped
        (it is missing from the tables, as :meth:`get` says)."""
        picked = (
            self._pick(k, v)
            for k, v in [*self._cells.items(), *((v[0].key, v) for v in self._baselines.values())]
        )
        return (c for c in picked if c is not None)

    def baseline(self, model: str, dataset: str) -> CellResult | None:
        """A base-model-only result (``readapt: false``) of ``model`` on ``dataset``."""
        variants = self._baselines.get((model, dataset), [])
        return self._pick(variants[0].key, variants) if variants else None

    def get(self, model: str, dataset: str, adapter: str, ablation: str, sel: Selection) -> CellResult | None:
        """The cell's variant from the experiment's settings (the newest when several); None when the store
        has only other variants (a warning says which settings differ)."""
        key = _key(model, dataset, adapter, ablation, sel.alpha, sel.beta, sel.knowledge_scaling)
        return self._pick(key, self._cells.get(key, []))

    def _pick(self, key: tuple, variants: list[CellResult]) -> CellResult | None:
        if not variants:
            return None
        want = self.expect(key) if self.expect is not None else None
        # a record from before variants were recorded ("") has unknown settings: accepted, never preferred
        matching = [c for c in variants if c.record.variant in (want, "")] if want else variants
        if want and any(c.record.variant == want for c in matching):
            matching = [c for c in matching if c.record.variant == want]
        best = max(matching, key=lambda c: c.record.finished or 0.0) if matching else None
        if key not in self._said and (len(variants) > 1 or best is None):
            self._said.add(key)
            where = "/".join(str(k) for k in key[:4])
            if best is None:
                log.warning("%s: %d result(s) in the store, none from this experiment's settings; shown as "
                            "missing (--any-variant shows the newest)", where, len(variants))  # fmt: skip
            else:
                other = next(c for c in variants if c is not best)
                why = "the newest" if not want else "this experiment's settings" + (
                    f", newest of {len(matching)}" if len(matching) > 1 else "")  # fmt: skip
                log.warning("%s: %d results in the store (they differ in %s); using %s (%s)",
                            where, len(variants), _differences(best, other), best.path, why)  # fmt: skip
        return best

    def selections(self) -> set[tuple[float, float, str]]:
        return {(k[4], k[5], k[6]) for k in self._cells}


def parse_record(record: Mapping[str, Any] | CellRecord, path: str = "<memory>") -> CellResult | None:
    """A results.json record as a CellResult; None (logged) for not-done or malformed records."""
    try:
        rec = record if isinstance(record, CellRecord) else CellRecord.model_validate(record)
    except ValidationError as e:
        log.warning("skipping results file %s: %s", path, e.errors()[0]["msg"])
        return None
    if rec.status != "done":
        log.debug("skipping %s: status=%r %s", path, rec.status, rec.reason)
        return None
    if not rec.base or (rec.readapt and not rec.readapted):  # a baseline has base metrics only
        log.warning("skipping results file %s: missing base/readapted metrics", path)
        return None
    for part, values in (("base", rec.base), ("readapted", rec.readapted)):
        bad = {m: v for m, v in values.items() if not 0.0 <= float(v) <= 1.0}
        if bad:
            log.warning("results file %s: %s metrics %s are not fractions in [0, 1]", path, part, bad)
    return CellResult(rec, path)


def load_results(results_dir: str | os.PathLike, expect: Expect | None = None) -> Results:
    """Every finished cell under ``results_dir`` (recursively, ``*.json``); unreadable files are warned about.
    ``expect`` picks each cell's variant (:mod:`readaptir.report.variants`); None shows the newest."""
    root = root_dir(results_dir, "--results-dir")  # empty: refused (it read the working folder)
    if not root.is_dir():
        log.warning("results directory %s does not exist; every cell will show —", root)
        return Results(expect=expect)
    cells = []
    for path in sorted(root.rglob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning("skipping unreadable results file %s: %s", path, err)
            continue
        if not isinstance(record, Mapping):
            log.warning("skipping results file %s: not a JSON object", path)
            continue
        why = digest_problem(record)
        if why is not None and record.get("digest"):  # edited or damaged: its numbers are not the run's
            log.warning("skipping results file %s: %s", path, why)
            continue
        if why is not None:
            log.warning("results file %s: %s; shown unverified", path, why)
        cell = parse_record(record, str(path))
        if cell is not None:
            cells.append(cell)
    log.info("loaded %d finished cells from %s", len(cells), root)
    return Results(cells, expect)


# ------------------------------------------------------------------------------------ dataset metadata
@dataclass(frozen=True)
class DatasetMeta:
    name: str
    corpus_size: int | None = None
    seen_by: tuple[str, ...] = ()


def load_dataset_meta(conf_dir: str | os.PathLike = CONF_DATASET_DIR) -> dict[str, DatasetMeta]:
    """name -> corpus_size and seen_by, from ``conf/dataset/**/*.yaml`` (demo datasets included)."""
    from omegaconf import OmegaConf

    root = Path(conf_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset config directory {root} not found (pass --conf-dir)")
    meta = {}
    for path in sorted(root.rglob("*.yaml")):
        cfg = OmegaConf.load(path)
        name = str(cfg.get("name", path.stem))
        size = cfg.get("corpus_size")
        meta[name] = DatasetMeta(name, None if size is None else int(size), tuple(cfg.get("seen_by") or ()))
    return meta


def meta_for(meta: Mapping[str, DatasetMeta], dataset: str) -> DatasetMeta:
    if dataset not in meta:
        log.warning("no metadata for dataset %r: treated as zero-shot, corpus size unknown", dataset)
        return DatasetMeta(dataset)
    return meta[dataset]
