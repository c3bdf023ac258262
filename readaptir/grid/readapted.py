"""The RE-Adapt half of a cell: knowledge adapter → (α selection →) readapted retriever → scores.

:mod:`readaptir.grid.cell` calls :func:`readapt_and_evaluate` after the base retrieval. With a fixed α the
readapted products are the cell's own (``readapted → ra_index → ra_run``); with ``readapt.alpha=auto`` α is
chosen first (:mod:`readaptir.grid.select`), then each distinct chosen α gets exactly the products a fixed-α
cell at that α would (same keys, :func:`readaptir.grid.keys.at_alpha`), and cross-fitted folds are
assembled into one run.
"""

from __future__ import annotations

from readaptir.evaluate import evaluate_run, paired_test
from readaptir.grid import stages
from readaptir.grid.alpha import crossfit
from readaptir.grid.keys import at_alpha, cell_products, resolve, stored_parents
from readaptir.grid.select import select_alpha
from readaptir.logs import timed
from readaptir.readapt.weights import read_json
from readaptir.retrieval.runs import RUN_FILE, read_run


def readapt_and_evaluate(cfg, store, keys, inputs, folders, runtime, data, tracker, record, base_q) -> None:
    """Knowledge adapter → (α selection →) readapted retriever → its retrieval → scores and the paired test."""
    timings = record.timings
    with timed(timings, "train_adapter"):
        adapter, record.train = stages.train_adapter(cfg, store, keys, inputs, folders.pretrained, tracker)
    with timed(timings, "readapt_and_evaluate"):
        if cfg.readapt.auto:
            sel = select_alpha(cfg, store, keys, folders, adapter, runtime, data)
            runs = {}
            for alpha in sorted(set(sel.chosen)):  # one full encoding per distinct chosen α
                products = cell_products(at_alpha(cfg, alpha), runtime, inputs)
                ra_keys = resolve(products)
                store.parents.update(stored_parents(products, ra_keys))  # manifests record their lineage
                runs[alpha] = _ra_run(at_alpha(cfg, alpha), store, ra_keys, folders, adapter, runtime, data)
                record.artifacts.update(
                    {f"{k}@{alpha:g}": ra_keys[k] for k in ("readapted", "ra_index", "ra_run")}
                )
            run = crossfit(runs, sel.fold_plan(), sel.chosen) if runtime.main else {}
            record.alpha_selection = sel.record()
            reports = [store.path(record.artifacts[f"readapted@{a:g}"]) / "report.json" for a in sorted(runs)]
        else:
            run = _ra_run(cfg, store, keys, folders, adapter, runtime, data)
            reports = [store.path(keys["readapted"]) / "report.json"]
        if not runtime.main:
            return
        ra, ra_q = evaluate_run(data.qrels, run, cfg.evaluate.k_values, cfg.dataset.extra_metrics)
    record.set_metrics(record.base, ra)
    record.significance = {"metric": "NDCG@10", **paired_test(base_q, ra_q)}
    record.delta_report = read_json(reports[0]) if reports[0].is_file() else {}  # damaged: one line


def _ra_run(cfg, store, keys, folders, adapter, runtime, data) -> dict:
    """The readapted retriever's run at ``cfg``'s α, built only when the store lacks it (main: read back)."""
    if store.missing(keys["ra_run"]):
        model = stages.readapt(cfg, store, keys["readapted"], folders, adapter, runtime)
        retriever = stages.dense_retriever(cfg, model, folders, runtime)
        stages.retrieve(store, keys["ra_index"], keys["ra_run"], retriever, data, cfg.search.top_k)
        del retriever, model
    return read_run(store.path(keys["ra_run"]) / RUN_FILE) if runtime.main else {}
