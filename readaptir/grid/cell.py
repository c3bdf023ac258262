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
from pathlib import Path
from typing import Any

from readaptir.config import CellConfig
from readaptir.data.beir import ensure_dataset
from readaptir.data.checks import check_corpus, check_dataset
from readaptir.grid import stages
from readaptir.grid.keys import CellInputs, cell_products, identity_dir, resolve, stored_parents
from readaptir.grid.readapted import readapt_and_evaluate
from readaptir.grid.record import CellRecord, failure_reason
from readaptir.logs import ProgressLog, quiet_libraries, timed
from readaptir.models.hub import resolve_models
from readaptir.runtime import Runtime, dist_state, distributed, is_main
from readaptir.store.artifacts import ArtifactStore, make_key
from readaptir.store.identity import count_lines, watched_inputs
from readaptir.store.locks import ProductBusy
from readaptir.tracking import Tracker, run_id, start_tracker

log = logging.getLogger(__name__)


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
    """Download what is missing (the evaluated dataset, the knowledge corpus) before keys read it, then
    check it (unique doc ids, qrels pointing into the corpus): bad data is refused before anything loads."""
    d, memo = cfg.dataset, identity_dir(cfg)
    if d.subset is not None:  # a NanoBEIR-style subset: its source first, then the cut (once, cached)
        from readaptir.data.nano import subset_key, write_subset

        of = d.subset.of
        source = ensure_dataset(of, cfg.paths.data_dir, None, source=d.source)
        key = subset_key(d.subset, source, d.split, memo)
        ArtifactStore(cfg.paths.cache_dir).build(
            "dataset", key, lambda tmp: write_subset(source, tmp, d.subset, d.split)
        )
    else:
        ensure_dataset(d.beir_name, cfg.paths.data_dir, d.url, d.builtin, d.source)
    check_dataset(CellInputs.of(cfg).eval_root, d.split, memo)
    if cfg.model.readapt and inputs.knowledge_root != inputs.eval_root:
        name = cfg.adapter.corpus
        ensure_dataset(name, cfg.paths.data_dir, None, source=d.source)
        check_corpus(inputs.knowledge_root, memo)
    if cfg.model.kind == "dense" and cfg.model.train_retriever is not None:  # the retriever's training data
        name = cfg.model.train_retriever.dataset
        ensure_dataset(name, cfg.paths.data_dir, None, source=d.source)


def open_store(cfg: CellConfig, products: dict, keys: dict[str, str]) -> ArtifactStore:
    """The cache, told the cell's graph (so manifests record parents) and its verification settings."""
    s = cfg.store
    on_busy = "exit" if cfg.run.stage != "all" else cfg.run.on_busy  # a stage job never idles on a build
    store = ArtifactStore(cfg.paths.cache_dir, s.verify, s.full_check_max_gb, s.lock_stale_s, on_busy)
    store.parents.update(stored_parents(products, keys))
    if is_main():
        store.remove_leftovers()
    return store


def run_cell(cfg: CellConfig, out_dir: Path) -> CellRecord:
    """The cell's stages in order; returns (and writes, on the main process) its record.

    A cell that fails writes ``status: failed`` and the reason into its job folder's ``results.json``
    (``waiting`` when a product it needs is being built by another job with ``run.on_busy=exit``) and
    re-raises; the results store only ever receives finished cells.
    """
    record = CellRecord.start(cfg)
    job_results = out_dir / "results.json"
    try:
        return _run_cell(cfg, record, job_results)
    except ProductBusy as e:
        record.status, record.reason = "waiting", str(e)
        record.write(job_results)
        raise
    except Exception as e:
        record.status, record.reason = "failed", failure_reason(e)
        if not (distributed() and _already_failed(job_results)):  # the first failing rank has the cause
            record.write(job_results)
        raise


def experiment_name() -> str | None:
    """The Hydra ``experiment`` choice of this run (``table2``, ``mini-cpu`` ...), None outside an experiment."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get("experiment")
    except Exception:  # noqa: BLE001 - run() called outside a Hydra app (tests, notebooks)
        return None
    return None if choice in (None, "null", "none") else str(choice)


def _already_failed(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("status") == "failed"
    except (OSError, ValueError, AttributeError):
        return False


def _run_cell(cfg: CellConfig, record: CellRecord, job_results: Path) -> CellRecord:
    record.cell.store_path(cfg.paths.results_dir, "result")  # before any work: valid names may join too long
    inputs = CellInputs.of(cfg)
    if cfg.model.readapt and not inputs.subset.applicable:
        record.status, record.reason = "not_applicable", inputs.subset.reason
        record.write(job_results)
        log.info("Cell %s not applicable: %s", record.cell.name, record.reason)
        if is_main():  # its own run (no result key: one id per cell and settings), so sweeps show the hole
            key = make_key("cell", {"cell": record.cell.model_dump(), "variant": record.variant})
            tracker = _tracker(cfg, record, None, key, once=True)
            tracker.summary({"status": record.status, "reason": record.reason})
            tracker.finish()
        return record
    timings = record.timings
    with timed(timings, "prepare"):
        record.status = "running"  # what a killed job leaves behind (the sweep summary counts it)
        if is_main():
            record.write(job_results)
        ensure_data(cfg, inputs)
        inputs = CellInputs.of(cfg)  # again: a download or a subset cut may have changed what it points at
        # counted from the data (Figure 2's x), never taken from dataset.corpus_size, a setting outside the key
        record.corpus_size = count_lines(inputs.eval_root / "corpus.jsonl", identity_dir(cfg))
        # before any process group: ranks > 0 must not save configs
        folders = resolve_models(cfg.model, cfg.paths.cache_dir)
        if distributed():
            dist_state()  # one process group for every later Accelerator (CPU launches use gloo)
        runtime = Runtime.detect(cfg.encode.dtype, cfg.model.torch_dtype)
        with watched_inputs() as files:  # re-checked before each publish: a change meanwhile fails the cell
            products = cell_products(cfg, runtime, inputs)  # the whole chain, before anything loads
        keys = record.artifacts = resolve(products)
        data = stages.EvalData.load(inputs.eval_root, cfg.dataset.split)
    store = open_store(cfg, products, keys)
    store.inputs = files
    results_path = record.cell.store_path(cfg.paths.results_dir, keys["result"])
    tracker = _tracker(cfg, record, runtime, keys["result"], once=results_path.is_file())
    failed = True
    try:
        if "retriever" in keys:
            with timed(timings, "train_retriever"):
                folders, record.retriever = stages.train_retriever(
                    cfg, store, keys["retriever"], folders, runtime
                )
        if cfg.run.stage != "all":
            return _shared_stage(
                cfg, store, keys, inputs, folders, runtime, data, tracker, record, job_results
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
            readapt_and_evaluate(cfg, store, keys, inputs, folders, runtime, data, tracker, record, base_q)
        record.artifact_events = store.events
        record.status = "done"
        if runtime.main:
            record.write(job_results, once=results_path)
            _track_results(tracker, record)
        failed = False
    except Exception as e:  # the run says how the cell ended: waiting for another job's build, or failed
        waiting = isinstance(e, ProductBusy)
        tracker.summary({"status": "waiting" if waiting else "failed",
                         "reason": str(e) if waiting else failure_reason(e)})  # fmt: skip
        raise
    finally:
        tracker.finish(exit_code=1 if failed else 0)
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


def _shared_stage(
    cfg, store, keys, inputs, folders, runtime, data, tracker, record, job_results
) -> CellRecord:
    """``run.stage=adapters`` (token cache + knowledge adapter) or ``base`` (base index + run) only: the
    products several cells share, built first as their own stage. The record stays in the job folder."""
    with timed(record.timings, cfg.run.stage):
        if cfg.run.stage == "adapters" and "adapter" in keys:
            _, record.train = stages.train_adapter(cfg, store, keys, inputs, folders.pretrained, tracker)
        elif cfg.run.stage == "base" and store.missing(keys["base_run"]):
            retriever = stages.base_retriever(cfg, folders, runtime)
            stages.retrieve(store, keys["base_index"], keys["base_run"], retriever, data, cfg.search.top_k)
    record.artifact_events, record.status = store.events, "done"
    if runtime.main:
        record.write(job_results)
        built = sum(not e["reused"] for e in store.events)
        print(f"{record.cell.model} × {record.cell.dataset} stage={cfg.run.stage}: {built} built, "
              f"{len(store.events) - built} reused")  # fmt: skip
    return record


def _tracker(
    cfg: CellConfig, record: CellRecord, runtime: Runtime | None, key: str, once: bool = False
) -> Tracker:
    """One W&B run per result (main process only), its config flat so dashboards can group by any coordinate.

    The run id is the result key, so a rerun resumes that run instead of adding one. Tags say the
    experiment (``experiment:table2``), the variant and the stage, so a dashboard filters Table 2's runs or
    one ``train.lr`` variant. A baseline (RE-Adapt does not apply) carries no adapter/ablation/α
    coordinates, so ablation filters never pick it up; groups hold every coordinate of the cell.
    """
    c = record.cell
    coords = c.model_dump() if record.readapt else {"model": c.model, "dataset": c.dataset}
    config = {
        **coords, "demo": record.demo, "corpus_size": record.corpus_size, "zero_shot": record.zero_shot,
        "readapt": record.readapt, "seed": record.seed, "run_seed": cfg.run.seed,
        "git_commit": record.git_commit, "versions": record.versions,
        "model_spec": cfg.model.model_dump(exclude_none=True), "result_key": key, "variant": record.variant,
        "experiment": experiment_name(), "stage": cfg.run.stage,
    }  # fmt: skip
    if record.readapt:
        config.update(adapter_corpus=cfg.adapter.corpus, recipe=cfg.adapter.model_dump(),
                      train=cfg.train.model_dump(), readapt_settings=cfg.readapt.model_dump())  # fmt: skip
    tags = [
        f"experiment:{experiment_name() or 'none'}",
        f"variant:{record.variant}",
        f"stage:{cfg.run.stage}",
    ]
    return start_tracker(
        cfg.tracking if runtime is None or runtime.main else None,
        config,
        name=f"{c.model}/{c.dataset}/{c.name if record.readapt else 'baseline'}",
        group=f"{c.model}/{c.name if record.readapt else 'baseline'}",
        job_type="cell" if record.readapt else "baseline",
        tags=tags + (["demo"] if record.demo else []),
        run_id=run_id(key if cfg.run.stage == "all" else f"{key}-{cfg.run.stage}"),
        once=once,
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
