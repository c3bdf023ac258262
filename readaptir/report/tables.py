"""The paper's Tables 1–3 from the results store, beside the paper's own numbers.

Every grid cell writes one ``results.json``; this module turns them into tables, so what a reader sees is
always recomputed from the store, never typed in. A missing cell shows "—", never a number from elsewhere;
an average is shown only when every cell it covers has a result. One selection (default α=0.5, β=1.0,
scaling=delta) is rendered. RA − Base is computed from unrounded scores; "†" marks RA (or a delta against
Base) when the cell's paired test on the same metric gives p < 0.05 after a Holm–Bonferroni correction over
the datasets of its column (one family per model and column; ``correction="none"``: uncorrected p).

    python -m readaptir.report table1 --results-dir cache/results --out experiments/table1
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from readaptir.report import paper
from readaptir.report.results import (
    SIGNIFICANCE_LEVEL,
    CellResult,
    DatasetMeta,
    Results,
    Selection,
    load_dataset_meta,
    meta_for,
)
from readaptir.report.significance import _common_notes, _ours_cell, correct
from readaptir.report.table import DAGGER, Cell, Table

log = logging.getLogger(__name__)


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean only when every value is present (and there is at least one): a partial average is no average."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _header(number: int, what: str, sel: Selection, models: Sequence[str]) -> str:
    return (
        f"**Table {number}.** {what}; {sel.metric} × 100; {sel.describe()}; "
        f"models: {', '.join(models)}; paper: Fleshman & Van Durme (2024)."
    )


def _caption(
    what: str, sel: Selection, correction: str = "holm", over: str = "each column's datasets"
) -> str:
    """A plain-language LaTeX caption: what is shown, the metric, α and β, what † means (no config keys)."""
    metric = "nDCG@10" if sel.metric == "NDCG@10" else sel.metric
    scaling = "" if sel.knowledge_scaling == "delta" else f", knowledge scaled as {sel.knowledge_scaling}"
    dagger = (f"Holm–Bonferroni-adjusted p < {SIGNIFICANCE_LEVEL:g} over {over}" if correction == "holm"
              else f"p < {SIGNIFICANCE_LEVEL:g}, not corrected for multiple comparisons")  # fmt: skip
    return (f"{what} {metric} × 100; RE-AdaptIR with α = {sel.alpha:g}, β = {sel.beta:g}{scaling}. "
            f"{DAGGER}: paired test against Base, {dagger}. "
            "Paper: the numbers reported by Fleshman & Van Durme (2024).")  # fmt: skip


def _names(datasets: Sequence[str]) -> dict[str, str]:
    return {d: paper.dataset_name(d) for d in datasets}


def _warn_missing(name: str, results: Results, wanted: int, found: int, sel: Selection) -> None:
    if found < wanted:
        log.info("%s: %d of %d cells have no result at %s", name, wanted - found, wanted, sel.describe())
    have = results.selections()
    if have and (round(sel.alpha, 6), round(sel.beta, 6), sel.knowledge_scaling) not in have:
        log.warning("%s: no results at all at %s; the store has %s", name, sel.describe(), sorted(have))


def table1(  # size: one table, row by row
    results: Results,
    models: Sequence[str] = paper.MODELS,
    datasets: Sequence[str] = paper.DATASETS,
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
    baselines: Sequence[str] = paper.BASELINES,
    correction: str = "holm",
) -> Table:
    """Table 1: Base, RA, RA − Base per model (adapter=in-domain, ablation=both), beside the paper's; the
    ``baselines`` that have results (base model only) in columns before the retrievers. † per column of
    ``models`` over its datasets (:func:`correct`)."""
    sel, meta = selection, load_dataset_meta() if meta is None else meta
    sub = ["Base", "RA", "RA−Base", "paper Base", "paper RA", "paper RA−Base"]
    in_paper = {m: m in paper.TABLE1 for m in models}  # the tiny demo models get no paper columns
    shown = [b for b in baselines if any(results.baseline(b, d) for d in datasets)]
    t = Table(
        "table1",
        _header(1, "RE-AdaptIR (RA) vs the base retriever, adapter=in-domain, ablation=both", sel, models),
        ["Dataset"],
        ([("Baselines", [paper.display_name(b) for b in shown])] if shown else [])
        + [(paper.display_name(m), sub if in_paper[m] else sub[:3]) for m in models],
        names=_names(datasets),
        caption=_caption(
            "Base retrievers and RE-AdaptIR (RA, knowledge adapter trained on each dataset's own corpus)"
            + (", with base-model baselines," if shown else "") + ":", sel, correction,
        ),
    )  # fmt: skip
    # model -> dataset -> its cell (or None), kept to average over after the per-dataset rows.
    ours: dict[str, dict[str, CellResult | None]] = {
        m: {d: results.get(m, d, "in-domain", "both", sel) for d in datasets} for m in models
    }
    base_only = {b: {d: results.baseline(b, d) for d in datasets} for b in shown}
    for d in datasets:
        cells: list[Cell] = [_ours_cell(base_only[b][d], "base", sel) for b in shown]
        for m in models:
            r, p = ours[m][d], paper.TABLE1.get(m, {}).get(d)
            cells += [
                _ours_cell(r, "base", sel),
                _ours_cell(r, "readapted", sel, dagger=True),
                _ours_cell(r, "delta", sel),
            ]
            if in_paper[m]:
                cells += [Cell(p and p[0]), Cell(p and p[1]), Cell(p and p[1] - p[0], signed=True)]
        t.rows.append(([d], cells))
    zero_shot = {m: [d for d in datasets if m not in meta_for(meta, d).seen_by] for m in models}
    t.rules_before.add(len(t.rows))
    zero_shot |= {b: [d for d in datasets if b not in meta_for(meta, d).seen_by] for b in shown}
    every = {m: list(datasets) for m in [*shown, *models]}
    for label, covers in (("Average", every), ("Average zero-shot", zero_shot)):
        cells = [Cell(_mean([r and _ours_cell(r, "base", sel).value for r in (base_only[b][d] for d in covers[b])]))
                 for b in shown]  # fmt: skip
        for m in models:
            rs = [ours[m][d] for d in covers[m]]
            ps = [paper.TABLE1.get(m, {}).get(d) for d in covers[m]]
            for which in ("base", "readapted", "delta"):
                cells.append(
                    Cell(_mean([r and _ours_cell(r, which, sel).value for r in rs]), signed=which == "delta")
                )
            if in_paper[m]:
                pb = _mean([p and p[0] for p in ps])
                pr = _mean([p and p[1] for p in ps])
                cells += [Cell(pb), Cell(pr), Cell(None if pb is None else pr - pb, signed=True)]  # type: ignore[operator]
        t.rows.append(([label], cells))
    seen = "; ".join(
        f"{paper.display_name(m)}: {', '.join(paper.dataset_name(d) for d in datasets if d not in zero_shot[m]) or 'none'}"
        for m in [*shown, *models]
    )
    correct(t, correction)
    t.notes = _common_notes(sel, "RA differs significantly from Base", correction) + [
        f"Average zero-shot leaves out the datasets each model saw in training (seen_by): {seen}.",
        "An average is shown only when every dataset it covers has a result.",
    ] + ([f"Baselines ({', '.join(paper.display_name(b) for b in shown)}): the base model only; RE-Adapt does "
          "not apply to them."] if shown else [])  # fmt: skip
    t.demo = any(r is not None and r.demo for m in models for r in ours[m].values())
    _warn_missing(
        "table1",
        results,
        len(models) * len(datasets),
        sum(r is not None for m in models for r in ours[m].values()),
        sel,
    )
    return t


def table2(
    results: Results,
    models: Sequence[str] = paper.MODELS,
    datasets: Sequence[str] = paper.TABLE2_DATASETS,
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
    correction: str = "holm",
) -> Table:
    """Table 2: RA − Base with the in-domain knowledge corpus filtered by the eval qrels (without/with/both).
    † per model and column over its datasets (:func:`correct`).

    ``meta`` is unused (no averages); it keeps the builders' signatures uniform for :func:`render`.
    """
    sel = selection
    t = Table(
        "table2",
        _header(
            2,
            "RA − Base, adapter=in-domain, knowledge corpus without / with / both the judged-relevant passages",
            sel,
            models,
        ),
        ["Model", "Dataset"],
        [(a, ["ours", "paper"]) for a in paper.ABLATIONS],
        names=_names(datasets),
        caption=_caption(
            "RA − Base with the knowledge adapter trained on the dataset's corpus without, with only, or with "
            "all (both) of the passages judged relevant in the evaluated split:", sel, correction,
            "each model's datasets in a column",
        ),
    )  # fmt: skip
    found = 0
    for m in models:
        for d in datasets:
            cells = []
            for a in paper.ABLATIONS:
                r = results.get(m, d, "in-domain", a, sel)
                found += r is not None
                t.demo |= r is not None and r.demo
                cells += [
                    _ours_cell(r, "delta", sel, dagger=True),
                    Cell(paper.TABLE2.get(m, {}).get(d, {}).get(a), signed=True),
                ]
            t.rows.append(([paper.display_name(m), d], cells))
    correct(t, correction, family=lambda labels: labels[0])  # rows are (model, dataset)
    t.notes = _common_notes(sel, "RA differs significantly from Base", correction,
                            "each model's datasets in its column")  # fmt: skip
    _warn_missing("table2", results, len(models) * len(datasets) * len(paper.ABLATIONS), found, sel)
    return t


def table3(
    results: Results,
    models: Sequence[str] = paper.MODELS,
    datasets: Sequence[str] = paper.BEIR_DATASETS,
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
    correction: str = "holm",
) -> Table:
    """Table 3: knowledge adapter trained on MS-MARCO: RA_ms − Base and RA_ms − RA_in-domain (ablation=both).

    ``meta`` is unused (the Average covers every listed dataset); it keeps the signatures uniform.
    """
    sel = selection
    sub = ["RA_ms−Base", "paper", "RA_ms−RA_in", "paper"]
    t = Table(
        "table3",
        _header(
            3,
            "knowledge adapter trained on MS-MARCO (RA_ms) vs Base and vs the in-domain adapter (RA_in), ablation=both",
            sel,
            models,
        ),
        ["Dataset"],
        [(paper.display_name(m), sub) for m in models],
        names=_names(datasets),
        caption=_caption(
            "Knowledge adapter trained on MS MARCO (RA_ms) against the base retriever and against the in-domain "
            "adapter (RA_in):", sel, correction,
        ),
    )  # fmt: skip
    cols: dict[str, list[tuple[float | None, float | None]]] = {m: [] for m in models}
    found = 0
    for d in datasets:
        cells = []
        for m in models:
            ms, ind = results.get(m, d, "msmarco", "both", sel), results.get(m, d, "in-domain", "both", sel)
            found += (ms is not None) + (ind is not None)
            t.demo |= any(r is not None and r.demo for r in (ms, ind))
            vs_in = None
            if ms is not None and ind is not None:
                vs_in = _sub(ms.score("readapted", sel.metric), ind.score("readapted", sel.metric))
                b_ms, b_in = ms.score("base", sel.metric), ind.score("base", sel.metric)
                if b_ms is not None and b_in is not None and abs(b_ms - b_in) > 1e-6:
                    log.warning(
                        "table3: %s/%s base differs between msmarco (%.4f) and in-domain (%.4f) cells",
                        m,
                        d,
                        b_ms,
                        b_in,
                    )
            p = paper.TABLE3.get(m, {}).get(d)
            vs_base = _ours_cell(ms, "delta", sel, dagger=True)
            cells += [
                vs_base,
                Cell(p and p[0], signed=True),
                Cell(vs_in, signed=True),
                Cell(p and p[1], signed=True),
            ]
            cols[m].append((vs_base.value, vs_in))
        t.rows.append(([d], cells))
    t.rules_before.add(len(t.rows))
    avg: list[Cell] = []
    for m in models:
        ps = [paper.TABLE3.get(m, {}).get(d) for d in datasets]
        avg += [
            Cell(_mean([v[0] for v in cols[m]]), signed=True),
            Cell(_mean([p and p[0] for p in ps]), signed=True),
        ]
        avg += [
            Cell(_mean([v[1] for v in cols[m]]), signed=True),
            Cell(_mean([p and p[1] for p in ps]), signed=True),
        ]
    t.rows.append((["Average"], avg))
    correct(t, correction)
    t.notes = _common_notes(sel, "RA_ms differs significantly from Base", correction) + [
        "No significance is recorded for RA_ms − RA_in (two readapted runs are not paired-tested per cell).",
        "An average is shown only when every dataset it covers has a result.",
    ]
    _warn_missing("table3", results, 2 * len(models) * len(datasets), found, sel)
    return t


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


TABLE_BUILDERS = {"table1": table1, "table2": table2, "table3": table3}
