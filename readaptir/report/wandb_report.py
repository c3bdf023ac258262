"""The results store and the paper tables as one W&B run: ``python -m readaptir.report wandb``.

A dashboard reads the same records the tables do: a ``records`` table with one row per shown cell (model ×
dataset × adapter × ablation × α × β, variant, result key, base / RA / RA − Base nDCG@10 and p-value), and
Tables 1–3 as rendered (their CSV columns). The run's id hashes the records it shows, so publishing an
unchanged store twice adds no run; a changed store publishes a new one.

    python -m readaptir.report wandb --results-dir cache/results            # W&B mode as wandb decides
    WANDB_MODE=offline python -m readaptir.report wandb --results-dir cache/results
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from readaptir.report.results import DatasetMeta, Results, Selection
from readaptir.report.table import Table
from readaptir.report.tables import TABLE_BUILDERS
from readaptir.store.artifacts import make_key
from readaptir.tracking import run_id, start_tracker

log = logging.getLogger(__name__)

RECORD_COLUMNS = ["model", "dataset", "adapter", "ablation", "alpha", "beta", "knowledge_scaling", "variant",
                  "result_key", "corpus_size", "zero_shot", "demo", "base", "readapted", "delta", "p_value"]  # fmt: skip


def record_rows(results: Results, metric: str = "NDCG@10") -> list[list[Any]]:
    """One row per cell the tables show (its shown variant), scores × 100; baselines have no adapter or α."""
    rows = []
    for cell in results:
        rec, c = cell.record, cell.record.cell
        ra = rec.readapt
        rows.append([c.model, c.dataset, c.adapter if ra else None, c.ablation if ra else None,
                     (c.alpha if isinstance(c.alpha, str) else float(c.alpha)) if ra else None,
                     float(c.beta) if ra else None, c.knowledge_scaling if ra else None, rec.variant,
                     rec.artifacts.get("result"), rec.corpus_size, rec.zero_shot, rec.demo,
                     cell.score("base", metric), cell.score("readapted", metric), cell.delta(metric),
                     rec.significance.get("p_value")])  # fmt: skip
    return rows


def table_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """A rendered table's CSV (unrounded values and p-values) as header + rows."""
    rows = list(csv.reader(io.StringIO(table.csv())))
    return rows[0], rows[1:]


def publish(
    results: Results,
    tracking: Mapping[str, Any],
    models: Sequence[str],
    meta: Mapping[str, DatasetMeta],
    selection: Selection = Selection(),
    datasets: Mapping[str, Sequence[str]] | None = None,
) -> str | None:
    """Log the records and Tables 1–3 into one W&B run; returns its id (None when tracking is off)."""
    rows = record_rows(results, selection.metric)
    key = make_key("report", {"rows": rows, "selection": selection.describe(), "models": list(models)})
    tracker = start_tracker({"backend": "wandb", **tracking}, {"cells": len(rows), "models": list(models),
                                                                 "selection": selection.describe()},
                            name="tables", group="report", job_type="report", tags=["report"],
                            run_id=run_id(key), once=True)  # fmt: skip
    if not tracker.active:
        return None
    tracker.table("records", RECORD_COLUMNS, rows)
    for name, build in TABLE_BUILDERS.items():
        extra = {"datasets": datasets[name]} if datasets and name in datasets else {}
        header, body = table_rows(build(results, models, selection=selection, meta=meta, **extra))
        tracker.table(name, header, body)
    rid = tracker.run.id
    tracker.finish()
    log.info("W&B run %s: %d records and Tables 1-3", rid, len(rows))
    return rid
