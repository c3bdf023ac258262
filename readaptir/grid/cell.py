"""One grid cell end to end: keys → [retriever] → knowledge adapter → base retrieval → RE-Adapt → results.

``run.py`` composes the Hydra config and calls :func:`run`, which validates it into a
:class:`~readaptir.config.CellConfig` and runs the cell (or, with ``run.plan=true``, describes it). The
whole chain of artifact keys is computed before anything loads (:mod:`readaptir.grid.keys`); the stages
(:mod:`readaptir.grid.stages`) then build only what the store lacks, so a second run of a sweep trains and
encodes nothing. The cell's ``results.json`` (:class:`~readaptir.grid.record.CellRecord`) goes to the Hydra
job folder and to the results store that ``python -m readaptir.report.tables`` renders. Cells whose
ablation is undefined (a knowledge corpus other than the evaluated dataset's own, filtered by its qrels)
end cleanly with status ``not_applicable``.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from readaptir.config import CellConfig
from readaptir.data.beir import ensure_dataset
from readaptir.evaluate import evaluate_run, paired_test
from readaptir.grid import stages
from readaptir.grid.alpha import crossfit
from readaptir.grid.keys import CellInputs, at_alpha, cell_keys
from readaptir.grid.record import CellRecord
from readaptir.grid.select import select_alpha
from readaptir.logs import ProgressLog, quiet_libraries
from readaptir.models.hub import resolve_models
from readaptir.retrieval.runs import RUN_FILE, read_run
from readaptir.runtime import Runtime, dist_state, distributed
from readaptir.store.artifacts import ArtifactStore
from readaptir.tracking import Tracker, start_tracker

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


def run(cfg: Any) -> CellRecord | None:
    """Run (or, with ``run.plan=true``, describe) the cell of a composed Hydra config."""
    spec = CellConfig.from_hydra(cfg)
    quiet_libraries()
    if spec.run.plan:
        from readaptir.grid.plan import describe_in_sweep

        print(describe_in_sweep(spec))
        return None
    with ProgressLog(spec.run.progress_every_s):  # run.log shows progress during long stages
        return run_cell(spec, job_dir(spec))


def job_dir(cfg: CellConfig) -> Path:
    """The Hydra job folder (or ``run.out_dir`` / the working directory outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - run() called outside a Hydra app (tests, notebooks)
        return Path(cfg.run.out_dir or ".").resolve()


def ensure_data(cfg: CellConfig, inputs: CellInputs) -> None:
    """Download what is missing (the evaluated dataset, the knowledge corpus) before keys read it."""
    d = cfg.dataset
    if d.subset is not None:  # a NanoBEIR-style subset: its source first, then the cut (once, cached)
        from readaptir.data.nano import subset_key, write_subset

        source = ensure_dataset(d.subset.of, cfg.paths.data_dir, BEIR_URL.format(name=d.subset.of))
        key = subset_key(d.subset, source, d.split)
        ArtifactStore(cfg.paths.cache_dir).build(
            "dataset", key, lambda tmp: write_subset(source, tmp, d.subset, d.split)
        )
    else:
        ensure_dataset(d.beir_name, cfg.paths.data_dir, d.url, d.builtin)
    if cfg.model.readapt and inputs.knowledge_root != inputs.eval_root:
        name = cfg.adapter.corpus
        ensure_dataset(name, cfg.paths.data_dir, BEIR_URL.format(name=name))
    if cfg.model.kind == "dense" and cfg.model.train_retriever is not None:  # the retriever's training data
        name = cfg.model.train_retriever.dataset
        ensure_dataset(name, cfg.paths.data_dir, BEIR_URL.format(name=name))


@contextmanager
def timed(timings: dict[str, float], stage: str):
    t0 = time.time()
    try:
        yield
    finally:
        timings[stage] = round(time.time() - t0, 3)


def run_cell(cfg: CellConfig, out_dir: Path) -> CellRecord:
    """The cell's stages in order; returns (and writes, on the main process) its record."""
    record = CellRecord.start(cfg)
    inputs = CellInputs.of(cfg)
    results_path = record.cell.store_path(cfg.paths.results_dir)
    if cfg.model.readapt and not inputs.subset.applicable:
        record.status, record.reason = "not_applicable", inputs.subset.reason
        record.write(out_dir / "results.json", results_path)
        log.info("Cell %s not applicable: %s (%s)", record.cell.name, record.reason, results_path)
        return record
    timings = record.timings
    with timed(timings, "prepare"):
        ensure_data(cfg, inputs)
        inputs = CellInputs.of(cfg)  # again: a download or a subset cut may have changed what it points at
        # before any process group: ranks > 0 must not save configs
        folders = resolve_models(cfg.model, cfg.paths.cache_dir)
        if distributed():
            dist_state()  # one process group for every later Accelerator (CPU launches use gloo)
        runtime = Runtime.detect(cfg.encode.dtype, cfg.model.torch_dtype)
        keys = cell_keys(cfg, runtime, inputs)  # the whole chain, before anything loads
        data = stages.EvalData.load(inputs.eval_root, cfg.dataset.split)
    store = ArtifactStore(cfg.paths.cache_dir)
    tracker = _tracker(cfg, record, runtime)
    try:
        if "retriever" in keys:
            with timed(timings, "train_retriever"):
                folders, record.retriever = stages.train_retriever(
                    cfg, store, keys["retriever"], folders, runtime
                )
        if "untrained_run" in keys:
            with timed(timings, "evaluate_untrained"):
                record.untrained = _evaluate(cfg, store, keys, "untrained", folders, runtime, data)
        with timed(timings, "evaluate_base"):
            if store.missing(keys["base_run"]):
                retriever = stages.base_retriever(cfg, folders, runtime)
                stages.retrieve(
                    store, keys["base_index"], keys["base_run"], retriever, data, cfg.search.top_k
                )
                del retriever
            base, base_q = stages.score(store, keys["base_run"], cfg, data) if runtime.main else ({}, {})
        record.set_metrics(base)
        if "adapter" in keys:  # RE-Adapt applies to this cell
            _readapt_and_evaluate(cfg, store, keys, inputs, folders, runtime, data, tracker, record, base_q)
        record.artifacts = {**keys, **record.artifacts}  # auto cells add the products at each chosen α
        record.artifact_events = store.events
        if runtime.main:
            record.write(out_dir / "results.json", results_path)
            _track_results(tracker, record)
    finally:
        tracker.finish()
    if runtime.main:
        log.info("Cell finished:\n%s", record.summary(results_path))  # the terminal and run.log
        if cfg.readapt.push_to_hub and "readapted" in keys:  # opt-in, after the results are safe
            stages.push_readapted(cfg, store, keys, folders, record.model_dump(), runtime)
    return record


def _evaluate(cfg, store, keys, which: str, folders, runtime, data) -> dict[str, float]:
    """Metrics of the ``<which>_run`` product, retrieving with ``stages.<which>_retriever`` if missing."""
    if store.missing(keys[f"{which}_run"]):
        retriever = getattr(stages, f"{which}_retriever")(cfg, folders, runtime)
        stages.retrieve(
            store, keys[f"{which}_index"], keys[f"{which}_run"], retriever, data, cfg.search.top_k
        )
        del retriever
    return stages.score(store, keys[f"{which}_run"], cfg, data)[0] if runtime.main else {}


def _readapt_and_evaluate(cfg, store, keys, inputs, folders, runtime, data, tracker, record, base_q) -> None:
    """Knowledge adapter → (α selection →) readapted retriever → its retrieval → scores and the paired test."""
    timings = record.timings
    with timed(timings, "train_adapter"):
        adapter, record.train = stages.train_adapter(cfg, store, keys, inputs, folders.pretrained, tracker)
    with timed(timings, "readapt_and_evaluate"):
        if cfg.readapt.auto:
            sel = select_alpha(cfg, store, keys, folders, adapter, runtime, data)
            runs = {}
            for alpha in sorted(set(sel.chosen)):  # one full encoding per distinct chosen α
                ra_keys = cell_keys(at_alpha(cfg, alpha), runtime, inputs)
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
    record.delta_report = json.loads(reports[0].read_text()) if reports[0].is_file() else {}


def _ra_run(cfg, store, keys, folders, adapter, runtime, data) -> dict:
    """The readapted retriever's run at ``cfg``'s α, built only when the store lacks it (main: read back)."""
    if store.missing(keys["ra_run"]):
        model = stages.readapt(cfg, store, keys["readapted"], folders, adapter, runtime)
        retriever = stages.dense_retriever(cfg, model, folders, runtime)
        stages.retrieve(store, keys["ra_index"], keys["ra_run"], retriever, data, cfg.search.top_k)
        del retriever, model
    return read_run(store.path(keys["ra_run"]) / RUN_FILE) if runtime.main else {}


def _tracker(cfg: CellConfig, record: CellRecord, runtime: Runtime) -> Tracker:
    """One W&B run per cell (main process only), its config flat so dashboards can group by any coordinate.

    A baseline (RE-Adapt does not apply) carries no adapter/ablation/α coordinates, so ablation filters
    never pick it up; groups hold every coordinate of the cell, α and β included.
    """
    c = record.cell
    coords = c.model_dump() if record.readapt else {"model": c.model, "dataset": c.dataset}
    config = {
        **coords, "demo": record.demo, "corpus_size": record.corpus_size, "zero_shot": record.zero_shot,
        "readapt": record.readapt, "seed": record.seed, "run_seed": cfg.run.seed,
        "git_commit": record.git_commit, "versions": record.versions,
        "model_spec": cfg.model.model_dump(exclude_none=True),
    }  # fmt: skip
    if record.readapt:
        config.update(adapter_corpus=cfg.adapter.corpus, recipe=cfg.adapter.model_dump(),
                      train=cfg.train.model_dump(), readapt_settings=cfg.readapt.model_dump())  # fmt: skip
    return start_tracker(
        cfg.tracking if runtime.main else None,
        config,
        name=f"{c.model}/{c.dataset}/{c.name if record.readapt else 'baseline'}",
        group=f"{c.model}/{c.name if record.readapt else 'baseline'}",
        job_type="cell" if record.readapt else "baseline",
    )


def _track_results(tracker: Tracker, record: CellRecord) -> None:
    def flat(d: dict, prefix: str) -> dict[str, Any]:
        return {f"{prefix}/{k}": v for k, v in d.items() if isinstance(v, (int, float))}

    summary = {**flat(record.base, "base"), **flat(record.readapted, "readapted"), **flat(record.delta, "delta"),
               "status": record.status, "corpus_size": record.corpus_size, "zero_shot": record.zero_shot}  # fmt: skip
    if record.significance:
        summary["p_value"] = record.significance.get("p_value")
    if record.train:  # the run's training stats, also set by training itself: the same numbers
        summary.update({f"train/{k}": v for k, v in record.train.items()})
    tracker.summary(summary)
    rows = [[k, record.base.get(k), record.readapted.get(k), record.delta.get(k)] for k in record.base]
    tracker.table("cell_metrics", ["metric", "base", "readapted", "delta"], rows)
