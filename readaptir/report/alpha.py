"""α chosen on withheld queries beside the fixed α: a table and a selection-score plot.

For each model and dataset (adapter=in-domain, ablation=both): Base, RA at the fixed α (the paper's 0.5),
RA with ``readapt.alpha=auto``, the α it chose (one per fold when cross-fitted) and auto − fixed. The plot
shows each cell's selection score (nDCG@10 of the selection queries, estimated on each fold's pool and the
corpus sample, docs/method.md §8) against α, the curve the choice
was made on, like Figure 2 shows RA − Base against corpus size.

    python -m readaptir.report alpha --results-dir cache/results --out experiments/alpha
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from readaptir.fs import atomic_write
from readaptir.report import paper
from readaptir.report.results import CellResult, Results, Selection
from readaptir.report.table import Cell, Table

AUTO = "auto"


def _chosen(r: CellResult | None) -> str:
    sel = r.record.alpha_selection if r is not None else {}
    if not sel:
        return "—"
    return "/".join(f"{a:g}" for a in sel["chosen"]) + (" (cv)" if sel["protocol"] == "crossfit" else "")


def alpha_table(results: Results, models: Sequence[str], datasets: Sequence[str], fixed: Selection) -> Table:
    """Rows: datasets; per model: Base, RA (α fixed), RA (α auto), chosen α, auto − fixed."""
    auto = Selection(AUTO, fixed.beta, fixed.knowledge_scaling, fixed.metric)
    sub = ["Base", f"RA (α={fixed.alpha:g})", "RA (α auto)", "α auto", "auto − fixed"]
    t = Table(
        "alpha",
        f"**α chosen on withheld queries.** {fixed.metric} × 100, adapter=in-domain, ablation=both; "
        f"β={fixed.beta:g}, knowledge_scaling={fixed.knowledge_scaling}; models: {', '.join(models)}.",
        ["Dataset"],
        [(paper.display_name(m), sub) for m in models],
    )
    t.notes = [
        "α auto: chosen by nDCG@10 of selection queries (dev, else an unseen train split, else cross-fitted "
        "test folds: (cv), one α per fold), estimated on each fold's own pool plus a corpus sample "
        "(docs/method.md §8); never on the reported queries. RA covers exactly Base's queries.",
        "— no result for this cell (not run with that α).",
    ]
    for d in datasets:
        cells: list[Cell] = []
        for m in models:
            f, a = results.get(m, d, "in-domain", "both", fixed), results.get(m, d, "in-domain", "both", auto)
            base = (a or f).score("base", fixed.metric) if (a or f) else None
            rf = f.score("readapted", fixed.metric) if f else None
            ra = a.score("readapted", fixed.metric) if a else None
            cells += [Cell(base), Cell(rf), Cell(ra), Cell(None, label=_chosen(a)),
                      Cell(None if ra is None or rf is None else ra - rf, signed=True)]  # fmt: skip
            t.demo |= any(r is not None and r.demo for r in (f, a))
        t.rows.append(([d], cells))
    return t


def selection_plot(
    results: Results, models: Sequence[str], datasets: Sequence[str], fixed: Selection
) -> bytes:
    """One panel per model: selection score against α per dataset (folds averaged), chosen α marked; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    auto = Selection(AUTO, fixed.beta, fixed.knowledge_scaling, fixed.metric)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        for i, d in enumerate(datasets):
            r = results.get(m, d, "in-domain", "both", auto)
            if r is None or not r.record.alpha_selection:
                continue
            folds = r.record.alpha_selection["folds"]
            alphas = sorted(float(a) for a in folds[0]["scores"])
            ys = [100 * sum(f["scores"][f"{a:g}"] for f in folds) / len(folds) for a in alphas]
            ax.plot(alphas, ys, marker="o", color=f"C{i}", label=paper.display_name(d))
            for f in folds:
                ax.axvline(f["chosen"], color=f"C{i}", lw=0.6, ls=":")
        ax.set_xlabel("α (knowledge adapter scale)")
        ax.set_ylabel("selection nDCG@10 × 100 (estimated)")
        ax.set_title(paper.display_name(m))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no α-auto results", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=150)
    plt.close(fig)
    return png.getvalue()


def render_alpha(results: Results, out_dir: str | os.PathLike, models: Sequence[str], datasets: Sequence[str],
                 fixed: Selection) -> str:  # fmt: skip
    """``alpha.md/.tex/.csv`` and ``alpha.png`` into ``out_dir``; returns the Markdown."""
    out = Path(out_dir)
    t = alpha_table(results, models, datasets, fixed)
    md = t.markdown()
    atomic_write(out / "alpha.md", md)
    atomic_write(out / "alpha.tex", t.latex())
    atomic_write(out / "alpha.csv", t.csv())
    atomic_write(out / "alpha.png", selection_plot(results, models, datasets, fixed))
    return md
