"""Figure 2 of the paper: corpus size (log x) against RA − Base from Table 1's cells, per model.

Two panels, ours and the paper's (its Table 1 numbers at BeIR's corpus sizes), each with the Pearson
and Spearman correlation of log10(corpus size) against the delta; written as ``figure2.png`` and
``figure2.pdf`` (every point labelled, no label over another or over a marker: :mod:`.labels`),
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
    corr = correlations(points, models)
    import matplotlib.pyplot as plt

    fig = draw_figure2(points, corr, models, sel.metric)
    for fmt in ("png", "pdf"):
        atomic_write(out / f"figure2.{fmt}", _render(fig, fmt))
    plt.close(fig)
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
    lines += [
        "",
        "- Plot: figure2.png and figure2.pdf (left: ours, right: the paper's); points closer than a marker are "
        "spread sideways; exact points and correlations: figure2.csv.",
    ]
    md = "\n".join(lines) + "\n"
    atomic_write(out / "figure2.md", md)
    return md


MARKERS = ("o", "s", "^", "D")


def draw_figure2(points: list[Point], corr: Mapping, models: Sequence[str], metric: str = "NDCG@10"):
    """Two panels (this reproduction | the paper), one colour and marker per model, every point labelled
    with its dataset; legends (with the correlations) sit below the panels, never over a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from readaptir.report.labels import place_labels, spread_coincident

    name = "nDCG@10" if metric == "NDCG@10" else metric
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5), sharey=True)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.9, bottom=0.25, wspace=0.06)
    for ax, source, title in zip(
        axes, ("ours", "paper"), ("This reproduction", "Paper (Fleshman & Van Durme, 2024)"), strict=True
    ):
        for i, m in enumerate(models):
            pts = [p for p in points if p.source == source and p.model == m]
            if pts:
                c = corr[source, m]
                label = f"{paper.display_name(m)}: n={c.n}, Pearson r={_fmt(c.pearson_r)}, Spearman ρ={_fmt(c.spearman_rho)}"
                ax.scatter([p.corpus_size for p in pts], [p.delta for p in pts], s=36, marker=MARKERS[i % 4],
                           color=f"C{i}", alpha=0.85 if source == "ours" else 0.45, edgecolors=f"C{i}", label=label)  # fmt: skip
        ax.set_xscale("log")
        ax.axhline(0.0, color="grey", lw=0.8, ls="--", zorder=0)
        ax.set_xlabel("Corpus size (passages, log scale)")
        ax.set_title(title)
        if not ax.collections:
            ax.text(0.5, 0.5, "no points", transform=ax.transAxes, ha="center")
    axes[0].set_ylabel(f"Change in {name} from RE-Adapt (RA − Base, × 100)")
    fig.suptitle(f"Corpus size against the change in {name} from RE-AdaptIR")
    for ax in axes:
        ax.margins(x=0.12, y=0.15)
    fig.canvas.draw()  # fixes the axes limits: positions below are in display space
    for ax, source in zip(axes, ("ours", "paper"), strict=True):
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
        spread_coincident(ax)
        legend = (
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
            if ax.collections
            else None
        )
        xy, texts, colors = [], [], []
        drawn = [
            (i, m) for i, m in enumerate(models) if any(p.source == source and p.model == m for p in points)
        ]
        for coll, (i, m) in zip(ax.collections, drawn, strict=True):
            pts = [p for p in points if p.source == source and p.model == m]
            xy += [tuple(v) for v in coll.get_offsets()]
            texts += [paper.dataset_name(p.dataset) for p in pts]
            colors += [_darker(f"C{i}")] * len(pts)
        fig.canvas.draw()
        avoid = [legend.get_window_extent(fig.canvas.get_renderer())] if legend else []
        place_labels(ax, xy, texts, colors, avoid)
    return fig


def _darker(color: str) -> tuple[float, float, float]:
    """A model's colour, darkened for text on white (labels say whose point they name)."""
    from matplotlib.colors import to_rgb

    return tuple(0.7 * c for c in to_rgb(color))


def correlations(points: list[Point], models: Sequence[str]) -> dict[tuple[str, str], Correlation]:
    """(source, model) → the correlation of its points, for every pair that has points."""
    corr = {}
    for source in ("ours", "paper"):
        for m in models:
            pts = [p for p in points if p.source == source and p.model == m]
            if pts:
                corr[source, m] = correlation([p.corpus_size for p in pts], [p.delta for p in pts])
    return corr


def _render(fig, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=150)
    return buf.getvalue()


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
