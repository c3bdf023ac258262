"""The mini reproduction's table: Table 1 and Table 2 in one, with an α column and the untrained model.

One row per (model, dataset, α) found in the results store; columns: the pretrained model used as a
retriever without training (same prompts and pooling, no LoRA), the trained retriever (Base), RE-AdaptIR
with the whole in-domain corpus (RA, RA − Base) and RA − Base with the knowledge corpus without / with the
judged-relevant passages. "†" marks RA (or a delta) whose paired test against Base gives p < 0.05 after a
Holm–Bonferroni correction over each model's rows of a column. A dataset whose config cuts a ``subset``
(``conf/dataset/mini/``) is named as such in the caption and the notes: its numbers are not BeIR numbers.

    python -m readaptir.report mini --results-dir cache/results --out experiments/mini \\
        --models smollm2 --datasets scifact,nfcorpus
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from readaptir.report.results import CONF_DATASET_DIR, DatasetMeta, Results, Selection
from readaptir.report.significance import _common_notes, _ours_cell, correct
from readaptir.report.table import Cell, Table

ABLATION_COLUMNS = ("both", "without", "with")


def _alphas(results: Results, model: str, dataset: str, sel: Selection) -> list[float]:
    found = {r.alpha for r in results if (r.model, r.dataset, r.adapter) == (model, dataset, "in-domain")
             and r.beta == sel.beta and r.knowledge_scaling == sel.knowledge_scaling}  # fmt: skip
    return sorted(found)


def subsets(datasets: Sequence[str], conf_dir: Path = CONF_DATASET_DIR) -> dict[str, dict]:
    """The ``datasets`` whose config cuts a subset of a full dataset: name -> its ``subset`` settings."""
    from omegaconf import OmegaConf

    found = {}
    for path in sorted(Path(conf_dir).rglob("*.yaml")):
        cfg = OmegaConf.load(path)
        if cfg.get("name") in datasets and cfg.get("subset") is not None:
            found[str(cfg.name)] = dict(OmegaConf.to_container(cfg.subset))  # type: ignore[arg-type]
    return found


def subset_note(cut: Mapping[str, Mapping]) -> str:
    """One sentence saying what the subsets are and that their numbers compare with no BeIR number."""
    what = "; ".join(f"{name}: {s['queries']} {s['of']} queries, {s['passages']} passages"
                     for name, s in cut.items())  # fmt: skip
    return (
        f"Subsets, not BeIR datasets ({what}; each query's relevant passages, at most "
        f"{max(s['relevant_per_query'] for s in cut.values())}, plus BM25's top passages over the full "
        "corpus): a dense retriever meets none of the full corpus's other false positives and BM25 scores "
        "high by construction, so these numbers compare with no BeIR number "
        "(experiments/mini_subset_stats.py: relevant passages kept, BM25 on each subset)."
    )


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
    cut = subsets(datasets)
    title = (f"**Mini reproduction.** Untrained model, trained retriever (Base) and RE-AdaptIR (RA), "
             f"adapter=in-domain; {sel.metric} × 100; β={float(sel.beta)}, knowledge_scaling={sel.knowledge_scaling}.")  # fmt: skip
    t = Table(
        "mini",
        title + (" " + subset_note(cut) if cut else ""),
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
    t.notes = (
        _common_notes(
            sel, "RA differs significantly from Base", correction, "each model's rows in its column"
        )
        + [  # fmt: skip
            "Untrained: the pretrained model with the retriever's prompts and EOS pooling, no LoRA.",
        ]
        + ([subset_note(cut)] if cut else [])
    )
    return t
