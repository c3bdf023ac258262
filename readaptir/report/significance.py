"""The † of a table: which cells carry a paired test, and the multiple-comparison correction that marks them.

A cell built with ``dagger=True`` keeps its recorded paired test's p-value (a test on the table's metric
only) and its uncorrected mark; :func:`correct` then decides the marks with a Holm–Bonferroni correction
over each column family (:meth:`readaptir.report.table.Table.correct`), or keeps the uncorrected ones.
"""

from __future__ import annotations

from readaptir.report.results import SIGNIFICANCE_LEVEL, CellResult, Selection
from readaptir.report.table import DAGGER, DASH, Cell, Table

CORRECTIONS = ("holm", "none")


def _ours_cell(result: CellResult | None, which: str, sel: Selection, dagger: bool = False) -> Cell:
    """A cell; with ``dagger`` its p-value (a test on the table's metric only) and its uncorrected †."""
    if result is None:
        return Cell(None, signed=which == "delta")
    value = result.delta(sel.metric) if which == "delta" else result.score(which, sel.metric)
    test = result.significance
    p = test.get("p_value") if dagger and test.get("metric", sel.metric) == sel.metric else None
    mark = dagger and result.significant(sel.metric)
    return Cell(value, signed=which == "delta", dagger=mark, p_value=None if p is None else float(p))


def correct(t: Table, correction: str, family=lambda labels: ()) -> None:
    """Decide the † of ``t``: Holm–Bonferroni within each column family (rows sharing ``family(labels)``),
    or the uncorrected p-values (``"none"``)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose from {', '.join(CORRECTIONS)}")
    if correction == "holm":
        t.correct(SIGNIFICANCE_LEVEL, family)


def dagger_rule(sel: Selection, correction: str, over: str = "the datasets of its column") -> str:
    """What a † means, in one phrase (the notes and the LaTeX caption say the same)."""
    if correction == "holm":
        return (f"paired test on per-query {sel.metric}, p < {SIGNIFICANCE_LEVEL:g} after a Holm–Bonferroni "
                f"correction over {over}; the CSV keeps the uncorrected (p) and adjusted (p Holm) p-values")  # fmt: skip
    return f"paired test on per-query {sel.metric}, uncorrected p < {SIGNIFICANCE_LEVEL:g}"


def _common_notes(sel: Selection, what_dagger: str, correction: str = "holm", over: str = "") -> list[str]:
    rule = dagger_rule(sel, correction, *([over] if over else []))
    return [
        f"{DAGGER} {what_dagger} ({rule}).",
        f"{DASH} no result for this cell at this selection (not run, not applicable, or failed).",
        "Deltas are computed from unrounded scores, so they can differ by 0.1 from the rounded columns.",
    ]
