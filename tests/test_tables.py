"""Tables 1–3 and Figure 2 rendering (readaptir.report) and the paper's own numbers (readaptir.report.paper).

Fixture results under tests/fixtures/results/ (one JSON per cell, as the pipeline writes them):
repllama msmarco/fever/scifact and e5-mistral msmarco/scifact at the default selection; e5-mistral
fever only at α=1.0 (so it is missing at the default); Table 2 and Table 3 cells for repllama scifact
(and fever for Table 3); one not_applicable cell; one unreadable file (repllama/broken.json); BM25 and
MiniLM baselines (base model only) on scifact.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from readaptir.report import paper
from readaptir.report.render import main, render, render_table1_markdown
from readaptir.report.results import (
    DatasetMeta,
    Results,
    Selection,
    load_dataset_meta,
    load_results,
    parse_record,
)
from readaptir.report.table import DASH, DEMO_LINE, Cell, Table, holm
from readaptir.report.tables import table1, table2, table3

FIXTURES = Path(__file__).parent / "fixtures" / "results"


@pytest.fixture(scope="module")
def meta() -> dict[str, DatasetMeta]:
    return load_dataset_meta()


@pytest.fixture(scope="module")
def results() -> Results:
    return load_results(FIXTURES)


def _row(table: Table, label: str) -> dict[str, str]:
    for labels, cells in table.rows:
        if labels[-1] == label:
            return dict(zip(table.columns, (c.text() for c in cells), strict=True))
    raise KeyError(label)


# ----------------------------------------------------------------------------------- the paper's numbers
def test_dataset_meta_matches_paper(meta):
    assert set(paper.DATASETS) | {"toy", "scifact-mini", "nfcorpus-mini"} == set(meta)
    zero_shot_e5 = [d for d in paper.DATASETS if "e5-mistral" not in meta[d].seen_by]
    assert len(zero_shot_e5) == 9 and "msmarco" not in zero_shot_e5
    assert [d for d in paper.DATASETS if "repllama" in meta[d].seen_by] == ["msmarco"]


@pytest.mark.parametrize("model", paper.MODELS)
def test_paper_table1_averages_follow_from_its_rows(model, meta):
    rows = paper.TABLE1[model]
    assert list(rows) == list(paper.DATASETS)
    zero_shot = [d for d in paper.DATASETS if model not in meta[d].seen_by]
    for datasets, stated in (
        (paper.DATASETS, paper.TABLE1_AVERAGE),
        (zero_shot, paper.TABLE1_AVERAGE_ZERO_SHOT),
    ):
        for i in (0, 1):  # Base, RA
            computed = sum(rows[d][i] for d in datasets) / len(datasets)
            assert abs(computed - stated[model][i]) <= 0.1 + 1e-9, (model, len(datasets), i, computed)
            # Stronger than ±0.1: rounding the computed mean gives the printed number.
            assert Cell(computed).text() == f"{stated[model][i]:.1f}"


@pytest.mark.parametrize("model", paper.MODELS)
def test_paper_tables_2_and_3_agree_with_table1(model):
    for d in paper.TABLE2_DATASETS:  # Table 2's "both" column is Table 1's RA − Base
        base, ra = paper.TABLE1[model][d]
        assert abs(paper.TABLE2[model][d]["both"] - (ra - base)) <= 0.1 + 1e-9
    for d, (vs_base, vs_in) in paper.TABLE3[model].items():
        base, ra = paper.TABLE1[model][d]  # (RA_ms − Base) − (RA_ms − RA_in) = RA_in − Base
        assert abs((vs_base - vs_in) - (ra - base)) <= 0.2 + 1e-9, d
    assert list(paper.TABLE3[model]) == list(paper.BEIR_DATASETS)
    for i in (0, 1):
        computed = sum(v[i] for v in paper.TABLE3[model].values()) / 13
        assert abs(computed - paper.TABLE3_AVERAGE[model][i]) <= 0.1 + 1e-9


def test_rendered_paper_columns_show_the_stated_averages(results, meta):
    t = table1(results, meta=meta)
    avg, zs = _row(t, "Average"), _row(t, "Average zero-shot")
    for m in paper.MODELS:
        name = paper.DISPLAY_NAMES[m]
        assert (avg[f"{name} paper Base"], avg[f"{name} paper RA"]) == tuple(
            f"{v:.1f}" for v in paper.TABLE1_AVERAGE[m]
        )
        assert (zs[f"{name} paper Base"], zs[f"{name} paper RA"]) == tuple(
            f"{v:.1f}" for v in paper.TABLE1_AVERAGE_ZERO_SHOT[m]
        )
        assert avg[f"{name} Base"] == DASH  # ours: most of the 14 cells are missing


# ---------------------------------------------------------------------------------------- the results
def test_load_skips_not_applicable_and_names_unreadable_files(caplog):
    with caplog.at_level(logging.WARNING, logger="readaptir.report.results"):
        res = load_results(FIXTURES)
    assert len(res) == 12  # 14 files: one not_applicable, one broken
    assert res.baseline("bm25", "scifact").score("base", "NDCG@10") == pytest.approx(68.63)
    assert res.baseline("bm25", "fever") is None
    assert res.get("repllama", "scifact", "msmarco", "with", Selection()) is None
    assert "broken.json" in caplog.text and "unreadable" in caplog.text
    na = json.loads((FIXTURES / "repllama/scifact/msmarco-with-a0.5-b1.0-delta.json").read_text())
    assert na["status"] == "not_applicable" and parse_record(na) is None


def test_cell_text_rounds_like_a_printed_table():
    assert [Cell(v).text() for v in (79.25, 80.05, 46.1)] == ["79.3", "80.1", "46.1"]
    assert [Cell(v, signed=True).text() for v in (0.3, -0.04, 0.0, -2.75)] == ["+0.3", "0.0", "0.0", "-2.8"]
    assert Cell(None).text() == "—" and Cell(76.4, dagger=True).text() == "76.4†"


TABLE1_GOLDEN = """\
**Table 1.** RE-AdaptIR (RA) vs the base retriever, adapter=in-domain, ablation=both; NDCG@10 × 100; α=0.5, β=1.0, knowledge_scaling=delta; models: repllama, e5-mistral; paper: Fleshman & Van Durme (2024).

| Dataset | Baselines BM25 | Baselines MiniLM | RepLLaMA Base | RepLLaMA RA | RepLLaMA RA−Base | RepLLaMA paper Base | RepLLaMA paper RA | RepLLaMA paper RA−Base | e5-Mistral Base | e5-Mistral RA | e5-Mistral RA−Base | e5-Mistral paper Base | e5-Mistral paper RA | e5-Mistral paper RA−Base |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| MS MARCO | — | — | 46.5 | 46.1 | -0.4 | 46.5 | 46.1 | -0.4 | 36.5 | 40.1† | +3.6 | 36.5 | 40.1 | +3.6 |
| FEVER | — | — | 84.1 | 83.8 | -0.3 | 84.0 | 83.8 | -0.2 | — | — | — | 85.1 | 87.7 | +2.6 |
| SciFact | 68.6 | 64.5 | 74.5 | 76.4 | +1.9 | 74.5 | 76.3 | +1.8 | 71.4 | 73.3 | +1.9 | 71.4 | 73.3 | +1.9 |
| Average | — | — | 68.4 | 68.8 | +0.4 | 68.3 | 68.7 | +0.4 | — | — | — | 64.3 | 67.0 | +2.7 |
| Average zero-shot | — | — | 79.3 | 80.1 | +0.8 | 79.3 | 80.1 | +0.8 | 71.4 | 73.3 | +1.9 | 71.4 | 73.3 | +1.9 |

- † RA differs significantly from Base (paired test on per-query NDCG@10, p < 0.05 after a Holm–Bonferroni correction over the datasets of its column; the CSV keeps the uncorrected (p) and adjusted (p Holm) p-values).
- — no result for this cell at this selection (not run, not applicable, or failed).
- Deltas are computed from unrounded scores, so they can differ by 0.1 from the rounded columns.
- Average zero-shot leaves out the datasets each model saw in training (seen_by): BM25: none; MiniLM: MS MARCO; RepLLaMA: MS MARCO; e5-Mistral: MS MARCO, FEVER.
- An average is shown only when every dataset it covers has a result.
- Baselines (BM25, MiniLM): the base model only; RE-Adapt does not apply to them.
"""


def test_table1_markdown_golden(results, meta):
    # By hand: RepLLaMA Average = mean(46.5, 84.1, 74.5) = 68.37; zero-shot (fever, scifact) = 79.3 / 80.1;
    # e5-Mistral fever exists only at α=1.0, so its Average is "—" while its zero-shot (scifact only) is shown;
    # daggers, Holm over each column's datasets: e5 msmarco p=0.001 (adjusted 0.002) gets one, e5 scifact
    # p=0.08 none, repllama scifact p=0.03 none (3 datasets: adjusted 0.09). The baselines (scifact only)
    # come first; their averages need every dataset.
    md = render_table1_markdown(results, datasets=["msmarco", "fever", "scifact"], meta=meta)
    assert md == TABLE1_GOLDEN


def test_holm_marks_on_fixed_p_values():
    """Holm at 0.05 over [0.01, 0.04, 0.03, 0.005]: 0.005×4 = 0.02 and 0.01×3 = 0.03 pass, then 0.03×2 = 0.06
    stops; uncorrected, all four would be marked."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.01]) == pytest.approx([0.5, 0.02]) and holm([]) == []
    t = Table("t", "t", ["Model", "Dataset"], [("", ["RA"])])
    for i, p in enumerate([0.01, 0.04, 0.03, 0.005]):
        t.rows.append((["a", f"d{i}"], [Cell(50.0, dagger=p < 0.05, p_value=p)]))
    t.rows.append((["b", "d0"], [Cell(50.0, dagger=True, p_value=0.04)]))  # another model: its own family
    t.rows.append((["a", "avg"], [Cell(50.0)]))  # untested cells are left alone
    t.correct(0.05, family=lambda labels: labels[0])
    assert [c.text() for _, (c,) in t.rows] == ["50.0†", "50.0", "50.0", "50.0†", "50.0†", "50.0"]
    rows = list(csv.reader(t.csv().splitlines()))
    assert rows[0] == ["Model", "Dataset", "RA", "RA p", "RA p Holm"]
    assert [r[3:] for r in rows[1:]] == [["0.01", "0.03"], ["0.04", "0.06"], ["0.03", "0.06"], ["0.005", "0.02"],
                                         ["0.04", "0.04"], ["", ""]]  # fmt: skip


def test_table1_correction_none_keeps_uncorrected_marks(results, meta, tmp_path):
    holm_t = table1(results, datasets=["msmarco", "fever", "scifact"], meta=meta)
    plain = table1(results, datasets=["msmarco", "fever", "scifact"], meta=meta, correction="none")
    assert (
        _row(holm_t, "scifact")["RepLLaMA RA"] == "76.4" and _row(plain, "scifact")["RepLLaMA RA"] == "76.4†"
    )
    assert "Holm–Bonferroni-adjusted p $<$ 0.05" in holm_t.latex() and "not corrected" in plain.latex()
    rows = {r["Dataset"]: r for r in csv.DictReader(holm_t.csv().splitlines())}
    assert (rows["scifact"]["RepLLaMA RA p"], rows["scifact"]["RepLLaMA RA p Holm"]) == ("0.03", "0.09")
    assert "RepLLaMA RA p Holm" not in next(csv.reader(plain.csv().splitlines()))
    with pytest.raises(ValueError, match="unknown correction"):
        table1(results, datasets=["scifact"], meta=meta, correction="bonferoni")


def test_selection_override_picks_other_alpha(results, meta):
    t = table1(results, datasets=["fever"], selection=Selection(alpha=1.0), meta=meta)
    row = _row(t, "fever")
    assert (row["e5-Mistral Base"], row["e5-Mistral RA"], row["e5-Mistral RA−Base"]) == (
        "85.1",
        "89.9†",
        "+4.8",
    )
    assert row["RepLLaMA Base"] == "—"
    assert "α=1.0" in t.markdown().splitlines()[0]


def test_table2_and_table3_cells(results):
    t2 = table2(results)
    scifact = next(cells for labels, cells in t2.rows if labels == ["RepLLaMA", "scifact"])
    assert [c.text() for c in scifact] == ["+0.1", "+0.1", "+0.7†", "+0.5", "+1.9†", "+1.8"]
    assert all(
        c.text() == "—" for c in next(cells for labels, cells in t2.rows if labels[1] == "arguana")[0::2]
    )

    t3 = table3(results, models=["repllama"], datasets=["fever", "scifact"])
    # fever: RA_ms − Base = 84.2 − 84.1; RA_ms − RA_in = 84.2 − 83.8. scifact: 73.6 − 74.5 (p=0.02), 73.6 − 76.4.
    assert [c.text() for c in t3.rows[0][1]] == ["+0.1", "+0.1", "+0.4", "+0.3"]
    assert [c.text() for c in t3.rows[1][1]] == ["-0.9†", "-0.9", "-2.8", "-2.7"]
    assert [c.text() for c in t3.rows[2][1]] == ["-0.4", "-0.4", "-1.2", "-1.2"]  # Average of the two
    assert _row(table3(results), "Average")["RepLLaMA RA_ms−Base"] == "—"  # 11 of 13 missing


def _write(root: Path, model: str, dataset: str, base: float, ra: float | None, name: str = "in-domain-both",
           adapter: str = "in-domain", ablation: str = "both", **extra) -> None:  # fmt: skip
    cell = {"model": model, "dataset": dataset, "adapter": adapter, "ablation": ablation, "alpha": 0.5,
            "beta": 1.0, "knowledge_scaling": "delta"}  # fmt: skip
    record = {
        "cell": cell,
        "status": "done",
        "base": {"NDCG@10": base},
        "readapted": {} if ra is None else {"NDCG@10": ra},
        **extra,
    }
    path = root / model / dataset / f"{name}-a0.5-b1.0-delta.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_demo_table_warns_and_has_no_paper_numbers(tmp_path, meta):
    _write(
        tmp_path,
        "tiny-llama",
        "toy",
        0.30,
        0.32,
        demo=True,
        significance={"metric": "NDCG@10", "p_value": 0.5},
    )
    md = render_table1_markdown(tmp_path, ["tiny-llama", "tiny-mistral"], ["toy"], meta=meta)
    lines = md.splitlines()
    assert lines[1] == DEMO_LINE
    # Models outside the paper get no paper columns (they would only ever hold "—").
    assert "paper" not in lines[3]
    assert lines[5] == "| toy | 30.0 | 32.0 | +2.0 | — | — | — |"
    assert lines[6].startswith("| Average | 30.0 | 32.0 | +2.0 | — |")
    # Real results: no demo line.
    assert DEMO_LINE not in render_table1_markdown(FIXTURES, datasets=["scifact"], meta=meta)


def test_figure2_png_and_hand_computed_correlation(tmp_path):
    res_dir, out = tmp_path / "results", tmp_path / "out"
    # log10 sizes 1, 2, 3 against deltas 1, 2, 4 (× 100):
    # Pearson = Σdxdy / sqrt(Σdx² Σdy²) = 3 / sqrt(2 · 14/3) = 0.981981; Spearman = 1 (monotone).
    for name, size, ra in (("d1", 10, 0.51), ("d2", 100, 0.52), ("d3", 1000, 0.54)):
        _write(res_dir, "m", name, 0.50, ra, corpus_size=size)
    meta = {d: DatasetMeta(d) for d in ("d1", "d2", "d3")}
    md = render("figure2", res_dir, out, models=["m"], datasets=["d1", "d2", "d3"], meta=meta)
    assert (out / "figure2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "figure2.csv").open()))
    points = [r for r in rows if r["kind"] == "point"]
    assert [(r["dataset"], float(r["log10_corpus_size"]), float(r["ra_minus_base"])) for r in points] == [
        ("d1", 1.0, pytest.approx(1.0)),
        ("d2", 2.0, pytest.approx(2.0)),
        ("d3", 3.0, pytest.approx(4.0)),
    ]
    (corr,) = [r for r in rows if r["kind"] == "correlation"]
    assert corr["n"] == "3"
    assert float(corr["pearson_r"]) == pytest.approx(3 / math.sqrt(2 * 14 / 3), abs=1e-6)
    assert float(corr["spearman_rho"]) == pytest.approx(1.0)
    assert "| ours | m | 3 | +0.98 |" in md


def test_cli_writes_all_formats_atomically(tmp_path, capsys):
    out = tmp_path / "table1"
    rc = main(
        ["table1", "--results-dir", str(FIXTURES), "--out", str(out), "--datasets", "msmarco,fever,scifact"]
    )
    assert rc == 0
    assert capsys.readouterr().out == TABLE1_GOLDEN
    assert sorted(p.name for p in out.iterdir()) == ["table1.csv", "table1.md", "table1.tex"]  # no temp files
    assert (out / "table1.md").read_text() == TABLE1_GOLDEN
    tex = (out / "table1.tex").read_text()
    assert r"\toprule" in tex and r"\multicolumn{6}{c}{RepLLaMA}" in tex and r"40.1$^\dagger$" in tex
    assert r"$-$0.4" in tex and "Average zero-shot & -- & -- & 79.3 & 80.1" in tex
    rows = list(csv.reader((out / "table1.csv").open()))
    assert rows[0][:6] == ["Dataset", "Baselines BM25", "Baselines MiniLM", "RepLLaMA Base", "RepLLaMA RA",
                           "RepLLaMA RA p"]  # fmt: skip
    assert rows[0][6:8] == ["RepLLaMA RA p Holm", "RepLLaMA RA-Base"] and all(h.isascii() for h in rows[0])
    assert rows[3][:8] == ["scifact", "68.6300", "64.5080", "74.5000", "76.4000", "0.03", "0.09", "1.9000"]
    assert rows[2][11:15] == ["", "", "", ""]  # e5-Mistral fever missing: empty, not a number


def test_cli_rejects_unknown_table(tmp_path):
    with pytest.raises(SystemExit):
        main(["table9", "--results-dir", str(FIXTURES), "--out", str(tmp_path)])


# ------------------------------------------------------------------------------------- paper-ready LaTeX
def _full_results(root: Path) -> Path:
    """Every cell of Tables 1–3 plus both baselines, with significant (widest: "†") numbers."""
    import random

    rng = random.Random(0)
    for m in paper.MODELS:
        for d in paper.DATASETS:
            b = rng.uniform(0.1, 0.9)  # one base retriever per model × dataset
            for adapter, ablation in [("in-domain", a) for a in paper.ABLATIONS] + [("msmarco", "both")]:
                _write(root, m, d, b, b + rng.uniform(-0.05, 0.05), significance={"metric": "NDCG@10", "p_value": 0.01},
                       name=f"{adapter}-{ablation}", adapter=adapter, ablation=ablation)  # fmt: skip
    for b in paper.BASELINES:
        for d in paper.DATASETS:
            _write(root, b, d, rng.uniform(0.1, 0.9), None, readapt=False, name="baseline")
    return root


def test_latex_is_a_paper_float(tmp_path, meta):
    res = load_results(_full_results(tmp_path / "res"))
    t1 = table1(res, meta=meta)
    tex = t1.latex()
    assert tex.count(r"\begin{table*}") == 1 and r"\resizebox{" in tex  # 15 columns: full width
    assert r"\label{tab:table1}" in tex and r"\end{table*}" in tex
    caption = next(line for line in tex.splitlines() if line.startswith(r"\caption{"))
    assert "Table 1" not in caption and "**" not in caption and "adapter=" not in caption  # LaTeX numbers it
    rows = [line.split(" & ")[0] for line in tex.splitlines() if " & " in line]
    assert {"MS MARCO", "Touch\\'e-2020", "SciFact", "DBPedia"} <= set(rows) and "msmarco" not in rows
    assert "Baselines" in tex and "BM25" in tex and "MiniLM" in tex
    assert "Touché-2020" in t1.markdown() and "webis-touche2020" in t1.csv()  # the CSV keeps the ids


def test_latex_compiles_in_a_two_column_paper(tmp_path, meta):
    """All three tables typeset in a two-column article without errors or overfull lines."""
    import shutil
    import subprocess

    engine = shutil.which("pdflatex") or shutil.which("lualatex") or shutil.which("xelatex")
    if engine is None:
        pytest.skip("no LaTeX engine installed (pdflatex, lualatex or xelatex)")
    res = load_results(_full_results(tmp_path / "res"))
    for name in ("table1", "table2", "table3"):
        render(name, res, tmp_path, meta=meta)
    (tmp_path / "paper.tex").write_text(
        "\\documentclass[twocolumn]{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs,graphicx}\n"
        "\\begin{document}\nSee Tables~\\ref{tab:table1}, \\ref{tab:table2} and~\\ref{tab:table3}.\n"
        "\\input{table1.tex}\n\\input{table2.tex}\n\\input{table3.tex}\n\\end{document}\n"
    )
    out = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert out.returncode == 0, out.stdout[-3000:]
    assert (tmp_path / "paper.pdf").is_file() and "Overfull \\hbox" not in log, log[-3000:]


# ----------------------------------------------------------------------------------------------- Figure 2
def _figure_boxes(fig):
    """Per panel: label text boxes (without leader lines), marker boxes, the legend's and the panel's."""
    from matplotlib.text import Text

    from readaptir.report.labels import marker_boxes

    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        yield (
            ax,
            [Text.get_window_extent(t, r) for t in ax.texts],
            marker_boxes(ax),
            legend and legend.get_window_extent(r),
            ax.get_window_extent(r),
        )


@pytest.mark.parametrize("dense", [False, True])
def test_figure2_labels_never_overlap_labels_markers_or_legends(tmp_path, meta, dense):
    """Checked on the figure's own bounding boxes: fixture results (sparse) and every Table 1 cell (dense)."""
    from readaptir.report.figure import correlations, draw_figure2, figure2_points

    res = load_results(_full_results(tmp_path / "res")) if dense else load_results(FIXTURES)
    points = figure2_points(res, meta=meta)
    fig = draw_figure2(points, correlations(points, paper.MODELS), paper.MODELS)
    assert (
        "RE-AdaptIR" in fig._suptitle.get_text() and "=" not in fig._suptitle.get_text()
    )  # no config jargon
    for ax, labels, markers, legend, frame in _figure_boxes(fig):
        assert (
            len(labels)
            == len(markers)
            == sum(1 for p in points if p.source == ("paper" if "Paper" in ax.get_title() else "ours"))
        )
        for i, a in enumerate(labels):
            assert frame.contains(a.x0, a.y0) and frame.contains(a.x1, a.y1), ax.texts[i].get_text()
            assert not any(a.overlaps(b) for b in labels[i + 1 :]), ax.texts[i].get_text()
            assert not any(a.overlaps(m) for m in markers), ax.texts[i].get_text()
        assert legend is not None and not legend.overlaps(frame)  # below the panel: it can cover no point
        centres = np.array([((m.x0 + m.x1) / 2, (m.y0 + m.y1) / 2) for m in markers])
        radius = (markers[0].x1 - markers[0].x0) / 2
        gaps = [np.hypot(*(centres[i] - centres[j])) for i in range(len(centres)) for j in range(i)]
        assert min(gaps) >= radius  # coincident points are spread: every marker shows at least half
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_figure2_writes_png_and_pdf(tmp_path):
    render("figure2", FIXTURES, tmp_path)
    assert (tmp_path / "figure2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "figure2.pdf").read_bytes()[:5] == b"%PDF-"
