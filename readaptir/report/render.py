"""Render a paper table or Figure 2 from the results store into a folder (the ``make table1`` … targets).

    python -m readaptir.report table1 --results-dir cache/results --out experiments/table1
    python -m readaptir.report table1 --results-dir cache/results --out /tmp/demo \\
        --models tiny-llama,tiny-mistral --datasets toy
    python -m readaptir.report {table1,table2,table3,figure2,alpha} ... [--alpha 0.5 --beta 1.0 --scaling delta]
    python -m readaptir.report mini --results-dir cache/results --out experiments/mini --models smollm2
    python -m readaptir.report wandb --results-dir cache/results   # records + Tables 1-3 as one W&B run
    python -m readaptir.report table1 ... --override train.batching=packed   # the sweep's own overrides

Each cell shows the stored variant that the experiment's config (``--experiment``, default: the table's
own, plus ``--override``s) produces; ``--any-variant`` shows the newest instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from readaptir.config import CONF_DIR
from readaptir.fs import atomic_write
from readaptir.paths import PathError
from readaptir.report import paper
from readaptir.report.alpha import render_alpha
from readaptir.report.figure import figure2
from readaptir.report.mini import mini_table
from readaptir.report.results import (
    CONF_DATASET_DIR,
    DatasetMeta,
    Results,
    Selection,
    load_dataset_meta,
    load_results,
)
from readaptir.report.significance import CORRECTIONS
from readaptir.report.table import Table
from readaptir.report.tables import TABLE_BUILDERS, table1
from readaptir.report.variants import expected_variants

log = logging.getLogger(__name__)

TABLES = ("table1", "table2", "table3", "figure2", "alpha", "mini")
DEFAULT_DATASETS = {
    "table1": paper.DATASETS,
    "table2": paper.TABLE2_DATASETS,
    "table3": paper.BEIR_DATASETS,
    "figure2": paper.DATASETS,
    "alpha": paper.DATASETS,
    "mini": ("scifact", "nfcorpus"),
}
BUILDERS = {**TABLE_BUILDERS, "mini": mini_table}


def _as_results(results: Results | str | os.PathLike) -> Results:
    return results if isinstance(results, Results) else load_results(results)


def render_table1_markdown(
    results: Results | str | os.PathLike,
    models: Sequence[str] = paper.MODELS,
    datasets: Sequence[str] = paper.DATASETS,
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
) -> str:
    """Table 1 as Markdown, from a Results index or a results directory (the demo prints this)."""
    return table1(_as_results(results), models, datasets, selection, meta).markdown()


# ------------------------------------------------------------------------------------------- writing
def write_table(table: Table, out_dir: str | os.PathLike) -> str:
    """Write ``<name>.md``, ``.tex`` and ``.csv`` into ``out_dir``; return the Markdown."""
    out, md = Path(out_dir), table.markdown()
    atomic_write(out / f"{table.name}.md", md)
    atomic_write(out / f"{table.name}.tex", table.latex())
    atomic_write(out / f"{table.name}.csv", table.csv())
    return md


def render(
    name: str,
    results: Results | str | os.PathLike,
    out_dir: str | os.PathLike,
    models: Sequence[str] = paper.MODELS,
    datasets: Sequence[str] | None = None,
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
    baselines: Sequence[str] = paper.BASELINES,
    correction: str = "holm",
) -> str:
    """Build table ``name`` (table1/table2/table3/figure2), write its files into ``out_dir``, return its Markdown.

    ``baselines`` with results (base model only) get Table 1 columns before the retrievers; ``correction``
    (holm or none) decides the † marks."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose from {', '.join(TABLES)}")
    res = _as_results(results)
    meta = load_dataset_meta() if meta is None else meta
    ds = DEFAULT_DATASETS[name] if datasets is None else datasets
    if name == "figure2":
        return figure2(res, out_dir, models, ds, selection, meta)
    if name == "alpha":
        return render_alpha(res, out_dir, models, ds, selection)
    if name == "table1":
        return write_table(table1(res, models, ds, selection, meta, baselines, correction), out_dir)
    return write_table(BUILDERS[name](res, models, ds, selection, meta, correction=correction), out_dir)


def _csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m readaptir.report", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=(*TABLES, "wandb"))
    parser.add_argument("--results-dir", required=True, help="results store (e.g. cache/results)")
    parser.add_argument("--out", help="output folder (e.g. experiments/table1); not for wandb")
    parser.add_argument("--wandb-dir", default=None, help="wandb: where offline runs are written")
    parser.add_argument("--models", type=_csv_list, default=list(paper.MODELS), help="comma-separated")
    parser.add_argument(
        "--datasets", type=_csv_list, default=None, help="comma-separated (default: the paper's)"
    )
    parser.add_argument("--baselines", type=_csv_list, default=list(paper.BASELINES),
                        help="base-model baselines shown in Table 1 when they have results (comma-separated)")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--scaling", default="delta", help="knowledge_scaling: delta or peft_scale")
    parser.add_argument("--metric", default="NDCG@10")
    parser.add_argument("--correction", choices=CORRECTIONS, default="holm",
                        help="multiple-comparison correction of the † marks over a column's datasets")  # fmt: skip
    parser.add_argument(
        "--conf-dir", default=str(CONF_DATASET_DIR), help="dataset configs (corpus_size, seen_by)"
    )
    parser.add_argument("--experiment", default=None, help="whose settings pick each cell's variant "
                        "(default: the table's own experiment, else 'none': the plain config)")  # fmt: skip
    parser.add_argument("--override", action="append", default=[], help="a Hydra override the sweep ran with")
    parser.add_argument("--any-variant", action="store_true", help="show each cell's newest variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        meta = load_dataset_meta(args.conf_dir)
    except FileNotFoundError as err:
        parser.error(str(err))
    sel = Selection(args.alpha, args.beta, args.scaling, args.metric)
    # a table with an experiment of its own (table1, mini, ...) defaults to it; alpha has none: plain config
    own = (CONF_DIR / "experiment" / f"{args.table}.yaml").is_file()
    experiment = args.experiment or (args.table if own else "none")
    expect = (
        None
        if args.any_variant or (args.table == "wandb" and args.experiment is None)
        else expected_variants(None if experiment == "none" else experiment, args.override)
    )
    try:
        results = load_results(args.results_dir, expect)
    except PathError as err:  # an empty --results-dir (e.g. from an empty READAPTIR_CACHE)
        parser.error(str(err))
    if args.table == "wandb":
        from readaptir.report.wandb_report import publish

        rid = publish(results, {"dir": args.wandb_dir}, args.models, meta, sel)
        print(
            f"W&B run {rid}" if rid else "W&B: nothing logged (wandb disabled, or these records are logged)"
        )
        return 0
    if args.out is None:
        parser.error("--out is required for tables and figures")
    md = render(
        args.table, results, args.out, args.models, args.datasets, sel, meta, args.baselines, args.correction
    )
    sys.stdout.write(md)
    log.info("wrote %s outputs to %s", args.table, args.out)
    return 0
