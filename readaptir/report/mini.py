"""The mini reproduction's table: Table 1 and Table 2 in one, with an α column and the untrained model.

One row per (model, dataset, α) found in the results store; columns: the pretrained model used as a
retriever without training (same prompts and pooling, no LoRA), the trained retriever (Base), RE-AdaptIR
with the whole in-domain corpus (RA, RA − Base) and RA − Base with the knowledge corpus without / with the
judged-relevant passages. "†" marks RA (or a delta) whose paired test against Base gives p < 0.05.

    python -m readaptir.report mini --results-dir cache/results --out experiments/mini \\
        --models smollm2 --datasets scifact,nfcorpus
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from readaptir.report.results import DatasetMeta, Results, Selection
from readaptir.report.table import Cell, Table
from readaptir.report.tables import _common_notes, _ours_cell, correct

ABLATION_COLUMNS = ("both", "without", "with")


def _alphas(results: Results, model: str, dataset: str, sel: Selection) -> list[float]:
    found = {r.alpha for r in results if (r.model, r.dataset, r.adapter) == (model, dataset, "in-domain")
             and r.beta == sel.beta and r.knowledge_scaling == sel.knowledge_scaling}  # fmt: skip
    return sorted(found)


def _untrained(results: Results, model: str, dataset: str, alphas: Sequence[float], sel: Selection) -> Cell:
    """The untrained model's score: the same in every cell of a dataset; taken from the first that has it."""
    for a in alphas:
        for ablation in ABLATION_COLUMNS:
            r = results.get(
                model, dataset, "in-domain", ablation, Selection(a, sel.beta, sel.knowledge_scaling)
            )
            value = r.record.untrained.get(sel.metric) if r is not None else None
            if value is not None:
                return Cell(100.0 * value)
    return Cell(None)


def mini_table(
    results: Results,
    models: Sequence[str],
    datasets: Sequence[str],
    selection: Selection = Selection(),
    meta: Mapping[str, DatasetMeta] | None = None,
    correction: str = "holm",
) -> Table:
    """The table of the module docstring (``selection`` gives β, scaling and metric; α comes from the store)."""
    sel = selection
    t = Table(
        "mini",
        f"**Mini reproduction.** Untrained model, trained retriever (Base) and RE-AdaptIR (RA), adapter=in-domain; "
        f"{sel.metric} × 100; β={float(sel.beta)}, knowledge_scaling={sel.knowledge_scaling}.",
        ["Model", "Dataset", "α"],
        [("", ["Untrained", "Base", "RA", "RA−Base"]), ("RA−Base", ["without", "with"])],
    )
    for m in models:
        for d in datasets:
            alphas = _alphas(results, m, d, sel)
            for a in alphas or [sel.alpha]:
                at = Selection(a, sel.beta, sel.knowledge_scaling, sel.metric)
                both, without, with_ = (results.get(m, d, "in-domain", x, at) for x in ABLATION_COLUMNS)
                t.demo |= any(r is not None and r.demo for r in (both, without, with_))
                cells = [_untrained(results, m, d, alphas, at), _ours_cell(both, "base", at),
                         _ours_cell(both, "readapted", at, dagger=True), _ours_cell(both, "delta", at),
                         _ours_cell(without, "delta", at, dagger=True), _ours_cell(with_, "delta", at, dagger=True)]  # fmt: skip
                t.rows.append(([m, d, f"{a:g}"], cells))
    correct(t, correction, family=lambda labels: labels[0])  # rows are (model, dataset, α)
    t.notes = _common_notes(
        sel, "RA differs significantly from Base", correction, "each model's rows in its column"
    ) + [  # fmt: skip
        "Untrained: the pretrained model with the retriever's prompts and EOS pooling, no LoRA.",
    ]
    return t
