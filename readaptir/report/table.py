r"""A rendered table: numbers × 100 with one decimal, written as Markdown, LaTeX (booktabs) and CSV.

Rounding is half away from zero like a printed table; "—" marks a missing cell; "†" a significant one, after
a Holm–Bonferroni correction across the cells of a column family (:meth:`Table.correct`). The CSV keeps
unrounded values, the uncorrected and the Holm-adjusted p-values and the dataset ids (ASCII headers), for
anyone who wants to recompute a column; Markdown and LaTeX show BeIR's dataset names. The LaTeX is a float for a paper:
``table*`` (both columns of a two-column layout) when wide, shrunk to the text width if it must be, a ``\label`` of
``tab:<name>``, the caption without the "Table N." that LaTeX numbers itself. Preamble:
``\usepackage{booktabs,graphicx}``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from readaptir.grid.record import DEMO_NOTICE

DASH = "—"
DAGGER = "†"
DEMO_LINE = f"**{DEMO_NOTICE}**"


@dataclass(frozen=True)
class Cell:
    """One rendered number (× 100), or None for "—"."""

    value: float | None
    signed: bool = False
    dagger: bool = False
    p_value: float | None = None  # the paired test's p-value, uncorrected
    p_adjusted: float | None = None  # Holm-adjusted within its column family (None: not corrected)
    label: str = ""  # a text cell (e.g. the α an auto cell chose) instead of a number

    def text(self) -> str:
        if self.label:
            return self.label
        if self.value is None:
            return DASH
        # Round half away from zero like a printed table (79.25 -> 79.3, not Python's half-even 79.2);
        # the 1e-9 absorbs float noise such as 80.05 stored as 80.04999999999.
        tenths = math.floor(abs(self.value) * 10 + 0.5 + 1e-9)
        sign = "" if tenths == 0 else ("-" if self.value < 0 else ("+" if self.signed else ""))
        s = f"{sign}{tenths // 10}.{tenths % 10}"
        return s + (DAGGER if self.dagger else "")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in input order: the k-th smallest of m becomes
    ``max over j <= k of min(1, (m - j + 1) p_(j))``; "adjusted p < level" rejects exactly Holm's step-down
    set at family-wise error ``level``."""
    m, adjusted, running = len(p_values), [1.0] * len(p_values), 0.0
    for k, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
    return adjusted


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
    names: Mapping[str, str] = field(default_factory=dict)  # row label → display name (Markdown, LaTeX)
    caption: str = ""  # the LaTeX caption (default: the title without its "Table N." prefix)

    # More numeric columns than this take both columns of a two-column page (shrunk to fit if need be).
    WIDE = 4

    @property
    def columns(self) -> list[str]:
        return [f"{g} {c}" if g else c for g, cols in self.groups for c in cols]

    def _labels(self, labels: list[str]) -> list[str]:
        return [self.names.get(x, x) for x in labels]

    def correct(self, level: float, family: Callable[[list[str]], object] = lambda labels: ()) -> None:
        """Holm–Bonferroni per column: the tested cells (with a p-value) of each column whose rows share
        ``family(labels)`` are one family; each gets its adjusted p-value and † when it is below ``level``."""
        for j in range(len(self.columns)):
            groups: dict[object, list[int]] = {}
            for i, (labels, cells) in enumerate(self.rows):
                if cells[j].p_value is not None:
                    groups.setdefault(family(labels), []).append(i)
            for rows in groups.values():
                adjusted = holm([self.rows[i][1][j].p_value for i in rows])  # type: ignore[misc]
                for i, adj in zip(rows, adjusted, strict=True):
                    cells = self.rows[i][1]
                    cells[j] = dataclasses.replace(cells[j], p_adjusted=adj, dagger=adj < level)

    def markdown(self) -> str:
        lines = [self.title] + ([DEMO_LINE] if self.demo else []) + [""]
        lines.append("| " + " | ".join(self.stub + self.columns) + " |")
        lines.append("|" + "---|" * len(self.stub) + "---:|" * len(self.columns))
        for labels, cells in self.rows:
            lines.append("| " + " | ".join(self._labels(labels) + [c.text() for c in cells]) + " |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:  # size: one float, top to bottom
        n_stub = len(self.stub)
        spec = "l" * n_stub + "".join(" " + "r" * len(cols) for _, cols in self.groups)
        wide = len(self.columns) > self.WIDE
        env = "table*" if wide else "table"
        out = [
            f"% {self.name}: generated by readaptir.report from the results store; do not edit.",
            r"% Needs \usepackage{booktabs,graphicx}.",
            rf"\begin{{{env}}}[t]",
            r"\centering\small",
            *([r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%"] if wide else []),
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
            out.append(
                " & ".join([_tex(x) for x in self._labels(labels)] + [_tex(c.text()) for c in cells]) + r" \\"
            )
        out += [r"\bottomrule", r"\end{tabular}" + ("}" if wide else "")]
        caption = self.caption or re.sub(r"^\*\*Table \d+\.\*\*\s*", "", self.title).replace("**", "")
        demo = r" \textbf{" + _tex(DEMO_LINE.strip("*")) + "}" if self.demo else ""
        out.append(rf"\caption{{{_tex(caption)}{demo}}}")
        out.append(rf"\label{{tab:{self.name}}}")
        out += [r"\par\footnotesize " + _tex(n) for n in self.notes]
        out.append(rf"\end{{{env}}}")
        return "\n".join(out) + "\n"

    def csv(self) -> str:
        """Unrounded values (× 100, 4 decimals), empty when missing; after each tested column its uncorrected
        p-values ("<column> p") and, when corrected, the Holm-adjusted ones ("<column> p Holm")."""
        marked = [
            any(cells[j].p_value is not None for _, cells in self.rows) for j in range(len(self.columns))
        ]
        holm_cols = [
            any(cells[j].p_adjusted is not None for _, cells in self.rows) for j in range(len(self.columns))
        ]
        header = list(self.stub)
        for name, has_p, has_holm in zip(self.columns, marked, holm_cols, strict=True):
            header += [name] + ([f"{name} p"] if has_p else []) + ([f"{name} p Holm"] if has_holm else [])
        header = [h.replace("−", "-") for h in header]  # ASCII headers: tools match "RA-Base" as typed
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for labels, cells in self.rows:
            row = list(labels)
            for cell, has_p, has_holm in zip(cells, marked, holm_cols, strict=True):
                row.append(cell.label or ("" if cell.value is None else f"{cell.value:.4f}"))
                if has_p:
                    row.append("" if cell.p_value is None else f"{cell.p_value:.4g}")
                if has_holm:
                    row.append("" if cell.p_adjusted is None else f"{cell.p_adjusted:.4g}")
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
    "é": r"\'e",
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
