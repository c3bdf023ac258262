"""Figure 2 of the paper: corpus size (log x) against RA − Base from Table 1's cells, per model.

Two panels, ours and the paper's (its Table 1 numbers at BeIR's corpus sizes), each with the Pearson
and Spearman correlation of log10(corpus size) against the delta; written as ``figure2.png``,
``figure2.csv`` (points and correlations) and ``figure2.md``.

    python -m readaptir.report figure2 --results-dir cache/results --out experiments/figure2
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from readaptir.fs import atomic_write
from readaptir.report import paper
from readaptir.report.results import DatasetMeta, Results, Selection, load_dataset_meta, meta_for
from readaptir.report.table import DEMO_LINE

log = logging.getLogger(__name__)


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
            size = (r and r.corpus_size) or meta_for(meta, d).corpus_size
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
    sel, out = selection, Path(out_dir)
    points = figure2_points(results, models, datasets, sel, meta)
    corr = {}
    for source in ("ours", "paper"):
        for m in models:
            pts = [p for p in points if p.source == source and p.model == m]
            if pts:
                corr[source, m] = correlation([p.corpus_size for p in pts], [p.delta for p in pts])
    atomic_write(out / "figure2.png", _plot(points, corr, models, sel))
    atomic_write(out / "figure2.csv", _csv(points, corr))
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
            f"| {source} | {paper.display_name(m)} | {c.n} | {_fmt(c.pearson_r)} | {_fmt(c.pearson_p, '.3g')} | "
            f"{_fmt(c.spearman_rho)} | {_fmt(c.spearman_p, '.3g')} |"
        )
    lines += ["", "- Plot: figure2.png (filled: ours, hollow: paper); points and correlations: figure2.csv."]
    md = "\n".join(lines) + "\n"
    atomic_write(out / "figure2.md", md)
    return md


def _plot(points: list[Point], corr: Mapping, models: Sequence[str], sel: Selection) -> bytes:
    """Two panels (ours | paper), one colour per model, PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, source, title in zip(
        axes, ("ours", "paper"), ("This reproduction", "Paper (Table 1)"), strict=True
    ):
        for i, m in enumerate(models):
            pts = [p for p in points if p.source == source and p.model == m]
            if not pts:
                continue
            c, color = corr[source, m], f"C{i}"
            label = f"{paper.display_name(m)} (n={c.n}, Pearson r={_fmt(c.pearson_r)}, Spearman ρ={_fmt(c.spearman_rho)})"
            ax.scatter([p.corpus_size for p in pts], [p.delta for p in pts],
                       facecolors=color if source == "ours" else "none", edgecolors=color, label=label)  # fmt: skip
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
    return png.getvalue()


CSV_HEADER = ["kind", "source", "model", "dataset", "corpus_size", "log10_corpus_size", "ra_minus_base",
              "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"]  # fmt: skip


def _csv(points: list[Point], corr: Mapping) -> str:
    """Points, then one correlation row per (source, model)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for p in points:
        w.writerow(["point", p.source, p.model, p.dataset, p.corpus_size, f"{math.log10(p.corpus_size):.6f}",
                    f"{p.delta:.6f}", "", "", "", "", ""])  # fmt: skip
    for (source, m), c in corr.items():
        stats = (f"{v:.6f}" for v in (c.pearson_r, c.pearson_p, c.spearman_rho, c.spearman_p))
        w.writerow(["correlation", source, m, "", "", "", "", c.n, *stats])
    return buf.getvalue()
