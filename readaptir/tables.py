"""Render the paper's Tables 1–3 and Figure 2 from the per-cell results store, beside the paper's numbers.

Why: every grid cell writes one ``results.json`` (``<results_dir>/<model>/<dataset>/<adapter>-<ablation>-
a<alpha>-b<beta>-<scaling>.json``); this module is the only place that turns them into tables, so what
a reader sees is always recomputed from the store, never typed in. A missing cell shows "—", never a
number from elsewhere; an average is shown only when every cell it covers has a result.

How: results are indexed by (model, dataset, adapter, ablation, α, β, knowledge_scaling); one selection
(default α=0.5, β=1.0, scaling=delta) is rendered. Values are nDCG@10 × 100 with one decimal, like the
paper; RA − Base is computed from unrounded scores. "†" marks RA (or a delta against Base) when the
cell's paired significance test on the same metric gives p < 0.05. Each table is written atomically as
``<name>.md`` (also printed), ``<name>.tex`` (booktabs) and ``<name>.csv``; Figure 2 as ``figure2.png``,
``figure2.csv`` (points and correlations) and ``figure2.md``.

    python -m readaptir.tables table1 --results-dir cache/results --out experiments/table1
    python -m readaptir.tables table1 --results-dir cache/results --out /tmp/demo \\
        --models tiny-llama,tiny-mistral --datasets toy
    python -m readaptir.tables {table1,table2,table3,figure2} ... [--alpha 0.5 --beta 1.0 --scaling delta]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from readaptir import paper

log = logging.getLogger(__name__)

CONF_DATASET_DIR = Path(__file__).resolve().parents[1] / "conf" / "dataset"
DASH = "—"
DAGGER = "†"
SIGNIFICANCE_LEVEL = 0.05
DEMO_LINE = "**Demo: these numbers come from random tiny models and mean nothing.**"
TABLES = ("table1", "table2", "table3", "figure2")


# --------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Selection:
    """Which point of the (α, β, knowledge_scaling) grid to render, and on which metric."""

    alpha: float = 0.5
    beta: float = 1.0
    knowledge_scaling: str = "delta"
    metric: str = "NDCG@10"

    def describe(self) -> str:
        return f"α={float(self.alpha)}, β={float(self.beta)}, knowledge_scaling={self.knowledge_scaling}"


@dataclass(frozen=True)
class CellResult:
    """One finished grid cell: base and readapted scores (fractions) and the paired test."""

    model: str
    dataset: str
    adapter: str
    ablation: str
    alpha: float
    beta: float
    knowledge_scaling: str
    base: Mapping[str, float]
    readapted: Mapping[str, float]
    significance: Mapping[str, Any] = field(default_factory=dict)
    demo: bool = False
    corpus_size: int | None = None
    path: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, float, float, str]:
        return _key(
            self.model,
            self.dataset,
            self.adapter,
            self.ablation,
            self.alpha,
            self.beta,
            self.knowledge_scaling,
        )

    def score(self, which: str, metric: str) -> float | None:
        """``which`` ∈ {base, readapted}; the metric × 100, or None when the cell lacks it."""
        value = (self.base if which == "base" else self.readapted).get(metric)
        return None if value is None else 100.0 * float(value)

    def delta(self, metric: str) -> float | None:
        base, ra = self.score("base", metric), self.score("readapted", metric)
        return None if base is None or ra is None else ra - base

    def significant(self, metric: str, level: float = SIGNIFICANCE_LEVEL) -> bool:
        """True when the recorded paired test on ``metric`` has p < level (a test on another metric says nothing)."""
        p = self.significance.get("p_value")
        return p is not None and self.significance.get("metric", metric) == metric and float(p) < level


def _key(model: str, dataset: str, adapter: str, ablation: str, alpha: float, beta: float, scaling: str):
    # Round α/β so 0.5 parsed from "0.5" and from 0.50000000001 meet in the index.
    return (model, dataset, adapter, ablation, round(float(alpha), 6), round(float(beta), 6), scaling)


class Results:
    """Finished cells indexed by (model, dataset, adapter, ablation, α, β, knowledge_scaling)."""

    def __init__(self, cells: Iterable[CellResult] = ()) -> None:
        self._cells: dict[tuple, CellResult] = {}
        for cell in cells:
            old = self._cells.get(cell.key)
            if old is not None:
                log.warning(
                    "duplicate result for %s in %s and %s; using the latter", cell.key, old.path, cell.path
                )
            self._cells[cell.key] = cell

    def __len__(self) -> int:
        return len(self._cells)

    def __iter__(self):
        return iter(self._cells.values())

    def get(self, model: str, dataset: str, adapter: str, ablation: str, sel: Selection) -> CellResult | None:
        return self._cells.get(
            _key(model, dataset, adapter, ablation, sel.alpha, sel.beta, sel.knowledge_scaling)
        )

    def selections(self) -> set[tuple[float, float, str]]:
        return {(k[4], k[5], k[6]) for k in self._cells}


def parse_record(record: Mapping[str, Any], path: str = "<memory>") -> CellResult | None:
    """A results.json record as a CellResult; None (logged) for not-done or malformed records."""
    if record.get("status") != "done":
        log.debug("skipping %s: status=%r %s", path, record.get("status"), record.get("reason", ""))
        return None
    cell = record.get("cell")
    if not isinstance(cell, Mapping):
        log.warning("skipping results file %s: no 'cell' object", path)
        return None
    missing = [k for k in ("model", "dataset", "adapter", "ablation", "alpha", "beta") if k not in cell]
    if (
        missing
        or not isinstance(record.get("base"), Mapping)
        or not isinstance(record.get("readapted"), Mapping)
    ):
        log.warning(
            "skipping results file %s: missing %s", path, ", ".join(missing) or "base/readapted metrics"
        )
        return None
    for part in ("base", "readapted"):
        bad = {m: v for m, v in record[part].items() if not 0.0 <= float(v) <= 1.0}
        if bad:
            log.warning("results file %s: %s metrics %s are not fractions in [0, 1]", path, part, bad)
    return CellResult(
        model=str(cell["model"]),
        dataset=str(cell["dataset"]),
        adapter=str(cell["adapter"]),
        ablation=str(cell["ablation"]),
        alpha=float(cell["alpha"]),
        beta=float(cell["beta"]),
        knowledge_scaling=str(cell.get("knowledge_scaling", "delta")),
        base={k: float(v) for k, v in record["base"].items()},
        readapted={k: float(v) for k, v in record["readapted"].items()},
        significance=dict(record.get("significance") or {}),
        demo=bool(record.get("demo", False)),
        corpus_size=record.get("corpus_size"),
        path=path,
    )


def load_results(results_dir: str | os.PathLike) -> Results:
    """Every finished cell under ``results_dir`` (recursively, ``*.json``); unreadable files are warned about."""
    root = Path(results_dir)
    if not root.is_dir():
        log.warning("results directory %s does not exist; every cell will show %s", root, DASH)
        return Results()
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
        try:
            cell = parse_record(record, str(path))
        except (TypeError, ValueError) as err:
            log.warning("skipping results file %s: %s", path, err)
            continue
        if cell is not None:
            cells.append(cell)
    log.info("loaded %d finished cells from %s", len(cells), root)
    return Results(cells)


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


def _meta_for(meta: Mapping[str, DatasetMeta], dataset: str) -> DatasetMeta:
    if dataset not in meta:
        log.warning("no metadata for dataset %r: treated as zero-shot, corpus size unknown", dataset)
        return DatasetMeta(dataset)
    return meta[dataset]


# ----------------------------------------------------------------------------------------- the tables
@dataclass(frozen=True)
class Cell:
    """One rendered number (× 100), or None for "—"."""

    value: float | None
    signed: bool = False
    dagger: bool = False
    p_value: float | None = None

    def text(self) -> str:
        if self.value is None:
            return DASH
        # Round half away from zero like a printed table (79.25 -> 79.3, not Python's half-even 79.2);
        # the 1e-9 absorbs float noise such as 80.05 stored as 80.04999999999.
        tenths = math.floor(abs(self.value) * 10 + 0.5 + 1e-9)
        sign = "" if tenths == 0 else ("-" if self.value < 0 else ("+" if self.signed else ""))
        s = f"{sign}{tenths // 10}.{tenths % 10}"
        return s + (DAGGER if self.dagger else "")


@dataclass
class Table:
    name: str
    title: str
    stub: list[str]
    groups: list[tuple[str, list[str]]]
    rows: list[tuple[list[str], list[Cell]]] = field(default_factory=list)
    rules_before: set[int] = field(default_factory=set)  # row indices preceded by a \midrule
    notes: list[str] = field(default_factory=list)
    demo: bool = False

    @property
    def columns(self) -> list[str]:
        return [f"{g} {c}" if g else c for g, cols in self.groups for c in cols]

    def markdown(self) -> str:
        lines = [self.title] + ([DEMO_LINE] if self.demo else []) + [""]
        lines.append("| " + " | ".join(self.stub + self.columns) + " |")
        lines.append("|" + "---|" * len(self.stub) + "---:|" * len(self.columns))
        for labels, cells in self.rows:
            lines.append("| " + " | ".join(labels + [c.text() for c in cells]) + " |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        n_stub = len(self.stub)
        spec = "l" * n_stub + "".join(" " + "r" * len(cols) for _, cols in self.groups)
        out = [
            f"% {self.name}: generated by readaptir.tables from the results store; do not edit.",
            r"\begin{table}[t]",
            r"\centering\small",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
        ]
        if any(g for g, _ in self.groups):
            heads, rules, col = [""] * n_stub, [], n_stub + 1
            for g, cols in self.groups:
                heads.append(rf"\multicolumn{{{len(cols)}}}{{c}}{{{_tex(g)}}}")
                rules.append(rf"\cmidrule(lr){{{col}-{col + len(cols) - 1}}}")
                col += len(cols)
            out += [" & ".join(heads) + r" \\", " ".join(rules)]
        out.append(
            " & ".join(_tex(h) for h in self.stub + [c for _, cols in self.groups for c in cols]) + r" \\"
        )
        out.append(r"\midrule")
        for i, (labels, cells) in enumerate(self.rows):
            if i in self.rules_before:
                out.append(r"\midrule")
            out.append(" & ".join([_tex(x) for x in labels] + [_tex(c.text()) for c in cells]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        caption = _tex(self.title.replace("**", "")) + (
            r" \textbf{" + _tex(DEMO_LINE.strip("*")) + "}" if self.demo else ""
        )
        out.append(rf"\caption{{{caption}}}")
        out += [r"\par\footnotesize " + _tex(n) for n in self.notes]
        out.append(r"\end{table}")
        return "\n".join(out) + "\n"

    def csv(self) -> str:
        """Unrounded values (× 100, 4 decimals), empty when missing; a p-value column after each marked column."""
        marked = [
            any(cells[j].p_value is not None for _, cells in self.rows) for j in range(len(self.columns))
        ]
        header = list(self.stub)
        for name, has_p in zip(self.columns, marked, strict=True):
            header += [name] + ([f"{name} p"] if has_p else [])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for labels, cells in self.rows:
            row = list(labels)
            for cell, has_p in zip(cells, marked, strict=True):
                row.append("" if cell.value is None else f"{cell.value:.4f}")
                if has_p:
                    row.append("" if cell.p_value is None else f"{cell.p_value:.4g}")
            writer.writerow(row)
        return buf.getvalue()


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_TEX_UNICODE = {
    "—": "--",
    "−": "$-$",
    "†": r"$^\dagger$",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    "×": r"$\times$",
    "ρ": r"$\rho$",
    "Δ": r"$\Delta$",
    "Ψ": r"$\Psi$",
    "·": r"$\cdot$",
    "<": r"$<$",
    ">": r"$>$",
}


def _tex(text: str) -> str:
    text = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    if len(text) > 1 and text[0] == "-" and text[1].isdigit():
        text = "$-$" + text[1:]
    return "".join(_TEX_UNICODE.get(ch, ch) for ch in text)


def _display(model: str) -> str:
    return paper.DISPLAY_NAMES.get(model, model)


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean only when every value is present (and there is at least one): a partial average is no average."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _ours_cell(result: CellResult | None, which: str, sel: Selection, dagger: bool = False) -> Cell:
    if result is None:
        return Cell(None, signed=which == "delta")
    value = result.delta(sel.metric) if which == "delta" else result.score(which, sel.metric)
    p = result.significance.get("p_value") if dagger else None
    mark = dagger and result.significant(sel.metric)
    return Cell(value, signed=which == "delta", dagger=mark, p_value=None if p is None else float(p))


def _header(number: int, what: str, sel: Selection, models: Sequence[str]) -> str:
    return (
        f"**Table {number}.** {what}; {sel.metric} × 100; {sel.describe()}; "
        f"models: {', '.join(models)}; paper: Fleshman & Van Durme (2024)."
    )


def _common_notes(sel: Selection, what_dagger: str) -> list[str]:
    return [
        f"{DAGGER} {what_dagger} (paired test on per-query {sel.metric}, p < {SIGNIFICANCE_LEVEL:g}).",
        f"{DASH} no result for this cell at this selection (not run, not applicable, or failed).",
        "Deltas are computed from unrounded scores, so they can differ by 0.1 from the rounded columns.",
    ]


def _warn_missing(name: str, results: Results, wanted: int, found: int, sel: Selection) -> None:
    if found < wanted:
        log.info("%s: %d of %d cells have no result at %s", name, wanted - found, wanted, sel.describe())
    have = results.selections()
    if have and (round(sel.alpha, 6), round(sel.beta, 6), sel.knowledge_scaling) not in have:
        log.warning("%s: no results at all at %s; the store has %s", name, sel.describe(), sorted(have))


def table1(
    results: Results,
    models: Sequence[str] = paper.MODELS,
    datasets: Sequence[str] = paper.DATASETS,
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
) -> Table:
    """Table 1: Base, RA, RA − Base per model (adapter=in-domain, ablation=both), beside the paper's."""
    sel, meta = selection, load_dataset_meta() if meta is None else meta
    sub = ["Base", "RA", "RA−Base", "paper Base", "paper RA", "paper RA−Base"]
    t = Table(
        "table1",
        _header(1, "RE-AdaptIR (RA) vs the base retriever, adapter=in-domain, ablation=both", sel, models),
        ["Dataset"],
        [(_display(m), sub) for m in models],
    )
    # model -> dataset -> its cell (or None), kept to average over after the per-dataset rows.
    ours: dict[str, dict[str, CellResult | None]] = {
        m: {d: results.get(m, d, "in-domain", "both", sel) for d in datasets} for m in models
    }
    for d in datasets:
        cells: list[Cell] = []
        for m in models:
            r, p = ours[m][d], paper.TABLE1.get(m, {}).get(d)
            cells += [
                _ours_cell(r, "base", sel),
                _ours_cell(r, "readapted", sel, dagger=True),
                _ours_cell(r, "delta", sel),
            ]
            cells += [Cell(p and p[0]), Cell(p and p[1]), Cell(p and p[1] - p[0], signed=True)]
        t.rows.append(([d], cells))
    zero_shot = {m: [d for d in datasets if m not in _meta_for(meta, d).seen_by] for m in models}
    t.rules_before.add(len(t.rows))
    for label, covers in (("Average", {m: list(datasets) for m in models}), ("Average zero-shot", zero_shot)):
        cells = []
        for m in models:
            rs = [ours[m][d] for d in covers[m]]
            ps = [paper.TABLE1.get(m, {}).get(d) for d in covers[m]]
            for which in ("base", "readapted", "delta"):
                cells.append(
                    Cell(_mean([r and _ours_cell(r, which, sel).value for r in rs]), signed=which == "delta")
                )
            pb = _mean([p and p[0] for p in ps])
            pr = _mean([p and p[1] for p in ps])
            cells += [Cell(pb), Cell(pr), Cell(None if pb is None else pr - pb, signed=True)]  # type: ignore[operator]
        t.rows.append(([label], cells))
    seen = "; ".join(
        f"{_display(m)}: {', '.join(d for d in datasets if d not in zero_shot[m]) or 'none'}" for m in models
    )
    t.notes = _common_notes(sel, "RA differs significantly from Base") + [
        f"Average zero-shot leaves out the datasets each model saw in training (seen_by): {seen}.",
        "An average is shown only when every dataset it covers has a result.",
    ]
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
) -> Table:
    """Table 2: RA − Base with the in-domain knowledge corpus filtered by the eval qrels (without/with/both).

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
    )
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
            t.rows.append(([_display(m), d], cells))
    t.notes = _common_notes(sel, "RA differs significantly from Base")
    _warn_missing("table2", results, len(models) * len(datasets) * len(paper.ABLATIONS), found, sel)
    return t


def table3(
    results: Results,
    models: Sequence[str] = paper.MODELS,
    datasets: Sequence[str] = paper.BEIR_DATASETS,
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
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
        [(_display(m), sub) for m in models],
    )
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
    t.notes = _common_notes(sel, "RA_ms differs significantly from Base") + [
        "No significance is recorded for RA_ms − RA_in (two readapted runs are not paired-tested per cell).",
        "An average is shown only when every dataset it covers has a result.",
    ]
    _warn_missing("table3", results, 2 * len(models) * len(datasets), found, sel)
    return t


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


TABLE_BUILDERS = {"table1": table1, "table2": table2, "table3": table3}
DEFAULT_DATASETS = {
    "table1": paper.DATASETS,
    "table2": paper.TABLE2_DATASETS,
    "table3": paper.BEIR_DATASETS,
    "figure2": paper.DATASETS,
}


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


# -------------------------------------------------------------------------------------------- figure 2
@dataclass(frozen=True)
class Correlation:
    n: int
    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float


def correlation(corpus_sizes: Sequence[float], deltas: Sequence[float]) -> Correlation:
    """Pearson and Spearman of log10(corpus size) against RA − Base; NaN below 3 points or for constant data."""
    import numpy as np
    from scipy import stats

    x, y = np.log10(np.asarray(corpus_sizes, dtype=float)), np.asarray(deltas, dtype=float)
    nan = float("nan")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(len(x), nan, nan, nan, nan)
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return Correlation(len(x), float(pr[0]), float(pr[1]), float(sr[0]), float(sr[1]))


@dataclass(frozen=True)
class Point:
    source: str  # "ours" or "paper"
    model: str
    dataset: str
    corpus_size: int
    delta: float  # RA − Base, × 100


def figure2_points(
    results: Results,
    models: Sequence[str] = paper.MODELS,
    datasets: Sequence[str] = paper.DATASETS,
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
) -> list[Point]:
    """Table 1 cells (ours, then the paper's) as (corpus size, RA − Base) points; cells without either are left out."""
    meta = load_dataset_meta() if meta is None else meta
    points = []
    for m in models:
        for d in datasets:
            r = results.get(m, d, "in-domain", "both", selection)
            size = (r and r.corpus_size) or _meta_for(meta, d).corpus_size
            if r is not None and size and (delta := r.delta(selection.metric)) is not None:
                points.append(Point("ours", m, d, int(size), delta))
    for m in models:
        for d in datasets:
            p, size = paper.TABLE1.get(m, {}).get(d), meta[d].corpus_size if d in meta else None
            if p is not None and size:
                points.append(Point("paper", m, d, size, p[1] - p[0]))
    return points


def _fmt(x: float, spec: str = "+.2f") -> str:
    return "n/a" if math.isnan(x) else format(x, spec)


def figure2(
    results: Results,
    out_dir: str | os.PathLike,
    models: Sequence[str] = paper.MODELS,
    datasets: Sequence[str] = paper.DATASETS,
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
) -> str:
    """Write figure2.png (ours | paper panels) and figure2.csv; return a Markdown summary of the correlations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel, out = selection, Path(out_dir)
    points = figure2_points(results, models, datasets, sel, meta)
    corr = {}
    for source in ("ours", "paper"):
        for m in models:
            pts = [p for p in points if p.source == source and p.model == m]
            if pts:
                corr[source, m] = correlation([p.corpus_size for p in pts], [p.delta for p in pts])

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, source, title in zip(
        axes, ("ours", "paper"), ("This reproduction", "Paper (Table 1)"), strict=True
    ):
        for i, m in enumerate(models):
            pts = [p for p in points if p.source == source and p.model == m]
            if not pts:
                continue
            c = corr[source, m]
            color = f"C{i}"
            label = (
                f"{_display(m)} (n={c.n}, Pearson r={_fmt(c.pearson_r)}, Spearman ρ={_fmt(c.spearman_rho)})"
            )
            face = color if source == "ours" else "none"
            ax.scatter(
                [p.corpus_size for p in pts],
                [p.delta for p in pts],
                facecolors=face,
                edgecolors=color,
                label=label,
            )
            for p in pts:
                ax.annotate(
                    p.dataset, (p.corpus_size, p.delta), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        ax.set_xscale("log")
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("corpus size (passages, log scale)")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no points", transform=ax.transAxes, ha="center")
    axes[0].set_ylabel(f"RA − Base ({sel.metric} × 100)")
    fig.suptitle(f"Figure 2: corpus size vs RA − Base (adapter=in-domain, ablation=both; {sel.describe()})")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=150)
    plt.close(fig)
    _write_atomic(out / "figure2.png", png.getvalue())

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "kind",
            "source",
            "model",
            "dataset",
            "corpus_size",
            "log10_corpus_size",
            "ra_minus_base",
            "n",
            "pearson_r",
            "pearson_p",
            "spearman_rho",
            "spearman_p",
        ]
    )
    for p in points:
        w.writerow(
            [
                "point",
                p.source,
                p.model,
                p.dataset,
                p.corpus_size,
                f"{math.log10(p.corpus_size):.6f}",
                f"{p.delta:.6f}",
                "",
                "",
                "",
                "",
                "",
            ]
        )
    for (source, m), c in corr.items():
        w.writerow(
            [
                "correlation",
                source,
                m,
                "",
                "",
                "",
                "",
                c.n,
                *(f"{v:.6f}" for v in (c.pearson_r, c.pearson_p, c.spearman_rho, c.spearman_p)),
            ]
        )
    _write_atomic(out / "figure2.csv", buf.getvalue())

    demo = any(r.demo for m in models for d in datasets if (r := results.get(m, d, "in-domain", "both", sel)))
    lines = [
        f"**Figure 2.** Corpus size vs RA − Base ({sel.metric} × 100), adapter=in-domain, ablation=both; "
        f"{sel.describe()}; correlations of log10(corpus size) with RA − Base.",
        *([DEMO_LINE] if demo else []),
        "",
        "| Source | Model | n | Pearson r | p | Spearman ρ | p |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (source, m), c in corr.items():
        lines.append(
            f"| {source} | {_display(m)} | {c.n} | {_fmt(c.pearson_r)} | {_fmt(c.pearson_p, '.3g')} | "
            f"{_fmt(c.spearman_rho)} | {_fmt(c.spearman_p, '.3g')} |"
        )
    lines += ["", "- Plot: figure2.png (filled: ours, hollow: paper); points and correlations: figure2.csv."]
    md = "\n".join(lines) + "\n"
    _write_atomic(out / "figure2.md", md)
    return md


# ------------------------------------------------------------------------------------------- writing
def _write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(table: Table, out_dir: str | os.PathLike) -> str:
    """Write ``<name>.md``, ``.tex`` and ``.csv`` into ``out_dir``; return the Markdown."""
    out, md = Path(out_dir), table.markdown()
    _write_atomic(out / f"{table.name}.md", md)
    _write_atomic(out / f"{table.name}.tex", table.latex())
    _write_atomic(out / f"{table.name}.csv", table.csv())
    return md


def render(
    name: str,
    results: Results | str | os.PathLike,
    out_dir: str | os.PathLike,
    models: Sequence[str] = paper.MODELS,
    datasets: Sequence[str] | None = None,
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
) -> str:
    """Build table ``name`` (table1/table2/table3/figure2), write its files into ``out_dir``, return its Markdown."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose from {', '.join(TABLES)}")
    res = _as_results(results)
    meta = load_dataset_meta() if meta is None else meta
    ds = DEFAULT_DATASETS[name] if datasets is None else datasets
    if name == "figure2":
        return figure2(res, out_dir, models, ds, selection, meta)
    return write_table(TABLE_BUILDERS[name](res, models, ds, selection, meta), out_dir)


def _csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m readaptir.tables", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=TABLES)
    parser.add_argument("--results-dir", required=True, help="results store (e.g. cache/results)")
    parser.add_argument("--out", required=True, help="output folder (e.g. experiments/table1)")
    parser.add_argument("--models", type=_csv_list, default=list(paper.MODELS), help="comma-separated")
    parser.add_argument(
        "--datasets", type=_csv_list, default=None, help="comma-separated (default: the paper's)"
    )
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--scaling", default="delta", help="knowledge_scaling: delta or peft_scale")
    parser.add_argument("--metric", default="NDCG@10")
    parser.add_argument(
        "--conf-dir", default=str(CONF_DATASET_DIR), help="dataset configs (corpus_size, seen_by)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        meta = load_dataset_meta(args.conf_dir)
    except FileNotFoundError as err:
        parser.error(str(err))
    sel = Selection(args.alpha, args.beta, args.scaling, args.metric)
    md = render(args.table, args.results_dir, args.out, args.models, args.datasets, sel, meta)
    sys.stdout.write(md)
    log.info("wrote %s outputs to %s", args.table, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
