"""readapt.alpha=auto: selection queries never reported, reported queries = Base's, α=0 always a candidate,
cross-fitting, one pool per fold built without the answers, the rank estimate, the linear fast path, and an
auto cell end to end on the tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from readaptir.config import AlphaSelection, CellConfig
from readaptir.data.beir import load_qrels
from readaptir.grid.alpha import (
    Fold,
    choose,
    corpus_sample,
    crossfit,
    estimated_ndcg,
    fold_pools,
    fold_scores,
    idcg,
    judged,
    plan_selection,
)
from readaptir.readapt.arithmetic import readapt
from readaptir.readapt.line import KnowledgeLine
from readaptir.readapt.model import load_base_retriever

SETTINGS = AlphaSelection(max_queries=20, folds=4, pool_depth=10)


def test_zero_is_always_a_candidate():
    assert AlphaSelection(grid=(0.5, 1.0)).candidates() == (0.0, 0.5, 1.0)
    assert AlphaSelection().candidates() == (0.0, 0.25, 0.5, 0.75, 1.0)


def test_ties_go_to_the_candidate_nearest_half():
    assert choose({0.0: 0.3, 0.25: 0.5, 0.75: 0.5}) == 0.25  # equally far from 0.5: the smaller α
    assert choose({0.0: 0.3, 0.5: 0.5, 1.0: 0.5}) == 0.5
    assert choose({0.0: 0.6, 0.5: 0.5}) == 0.0  # the retriever alone wins when the knowledge hurts


def test_train_protocol_never_selects_on_reported_queries(toy_dir):
    reported = judged(load_qrels(toy_dir, "test"))
    plan = plan_selection(toy_dir, "test", True, reported, SETTINGS)
    assert plan.protocol == "train" and len(plan.folds) == 1
    assert len(plan.folds[0].select) == 20 and set(plan.folds[0].report) == set(reported)
    assert not plan.selection_ids() & set(reported)
    # A retriever trained on this dataset must not select on its training queries: cross-fit instead.
    assert plan_selection(toy_dir, "test", False, reported, SETTINGS).protocol == "crossfit"


def _only_test_qrels(tmp_path: Path, toy_dir: Path) -> Path:
    root = tmp_path / "testonly"
    shutil.copytree(toy_dir, root)
    (root / "qrels" / "train.tsv").unlink()
    return root


def test_crossfit_scores_each_query_at_an_alpha_chosen_without_it(tmp_path, toy_dir):
    root = _only_test_qrels(tmp_path, toy_dir)
    reported = judged(load_qrels(root, "test"))
    plan = plan_selection(root, "test", True, reported, SETTINGS)
    assert plan.protocol == "crossfit" and len(plan.folds) == 4
    seen = [q for f in plan.folds for q in f.report]
    assert sorted(seen) == sorted(reported)  # every reported query in exactly one fold
    for fold in plan.folds:
        assert not set(fold.select) & set(fold.report)  # its α is chosen without it
    # Runs at two α: each fold's queries must come from the run at that fold's α.
    runs = {a: {q: {"d": a} for q in reported} for a in (0.25, 0.75)}
    chosen = [0.25, 0.75, 0.25, 0.75]
    run = crossfit(runs, plan.folds, chosen)
    for fold, a in zip(plan.folds, chosen, strict=True):
        assert all(run[q] == {"d": a} for q in fold.report)


def _zero_judged(tmp_path: Path, toy_dir: Path, n: int = 6) -> Path:
    """The toy set, test qrels only, plus ``n`` test queries judged only 0 (Base scores them: nDCG 0)."""
    root = _only_test_qrels(tmp_path, toy_dir)
    train = load_qrels(toy_dir, "train")
    extra = sorted(q for q in train if q not in load_qrels(root, "test"))[:n]
    with (root / "qrels" / "test.tsv").open("a") as f:
        f.writelines(f"{q}\t{next(iter(train[q]))}\t0\n" for q in extra)
    return root


def test_reported_queries_are_all_of_base_queries_and_selection_only_rankable(tmp_path, toy_dir):
    root = _zero_judged(tmp_path, toy_dir)
    qrels = load_qrels(root, "test")
    assert len(qrels) == 54 and len(judged(qrels)) == 48
    plan = plan_selection(root, "test", True, sorted(qrels), SETTINGS)
    assert sorted(q for f in plan.folds for q in f.report) == sorted(qrels)  # every Base query, once
    assert plan.selection_ids() <= set(judged(qrels))  # an all-0 query cannot rank any α above another


def test_each_fold_pool_is_built_from_its_own_selection_queries():
    folds = [Fold(("q1",), ("q2",)), Fold(("q2",), ("q1",))]
    qrels = {"q1": {"j1": 1}, "q2": {"j2": 1}}  # judged passages deep in no run: never added to a pool
    base = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"x": 3.0, "y": 2.0, "z": 1.0}}
    bm25 = {"q1": {"b": 5.0, "d": 4.0, "j1": 0.1}, "q2": {"w": 5.0, "x": 1.0, "j2": 0.1}}
    pools = fold_pools(folds, [base, bm25], depth=2)
    assert pools == [["a", "b", "d"], ["w", "x", "y"]]
    assert not {"j1", "j2"} & set(pools[0] + pools[1]) and qrels


def test_rank_estimate_is_exact_when_the_sample_is_the_whole_outside():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=500)
    gains = np.zeros(500)
    gains[[3, 17, 40]] = [1, 2, 1]
    order = np.argsort(-scores)
    rank = {int(d): r + 1 for r, d in enumerate(order)}
    want = sum(g / np.log2(rank[d] + 1) for d, g in ((3, 1), (17, 2), (40, 1)) if rank[d] <= 10)
    ideal = idcg({"a": 2, "b": 1, "c": 1})
    pool = order[:30][::-1]  # any 30 passages, in any order
    outside = np.setdiff1d(np.arange(500), pool)
    got = estimated_ndcg(scores[pool], gains[pool], scores[outside], 1.0, ideal)
    assert got == pytest.approx(want / ideal)


def _synthetic(n_docs: int, n_queries: int, seed: int):
    """Score matrices of a synthetic corpus: α > 0 rotates the scores away from the base retriever's and
    lowers the relevant passage, so its many outside-pool intruders make it worse on the full corpus."""
    rng = np.random.default_rng(seed)
    z0, eps, bm = (rng.normal(size=(n_queries, n_docs)) for _ in range(3))
    rel = rng.integers(0, n_docs, size=n_queries)
    rows = np.arange(n_queries)
    z0[rows, rel] = 3.5 + 0.3 * rng.normal(size=n_queries)
    scores = {0.0: z0}
    for alpha, theta in ((0.5, np.pi / 4), (1.0, np.pi / 3)):
        s = np.cos(theta) * z0 + np.sin(theta) * eps
        s[rows, rel] = 3.2 + 0.3 * rng.normal(size=n_queries)
        scores[alpha] = s
    bm25 = 0.5 * z0 + np.sqrt(0.75) * bm
    qids, docs = [f"q{i}" for i in rows], [f"d{j}" for j in range(n_docs)]
    qrels = {q: {docs[r]: 1} for q, r in zip(qids, rel, strict=True)}
    return scores, bm25, qids, docs, qrels


def _run(matrix: np.ndarray, qids, docs, depth: int) -> dict:
    top = np.argsort(-matrix, axis=1)[:, :depth]
    return {q: {docs[j]: float(matrix[i, j]) for j in top[i]} for i, q in enumerate(qids)}


def test_pool_choice_is_zero_where_the_full_corpus_best_is_zero():
    """At the default depth and sample, on a corpus 20 × larger than a query's pool: the full corpus picks
    α = 0, and so must the pool, although ranking within a pool that holds the judged passages picks α > 0."""
    from readaptir.evaluate import evaluate_run

    s = AlphaSelection()
    scores, bm25, qids, docs, qrels = _synthetic(20000, 24, seed=1)
    full = {a: evaluate_run(qrels, _run(m, qids, docs, 10), [10])[0]["NDCG@10"] for a, m in scores.items()}
    assert choose(full) == 0.0 and full[0.0] > max(full[0.5], full[1.0]) + 0.1
    folds = [Fold(tuple(qids[:12]), tuple(qids[12:])), Fold(tuple(qids[12:]), tuple(qids[:12]))]
    runs = [_run(scores[0.0], qids, docs, s.pool_depth), _run(bm25, qids, docs, s.pool_depth)]
    pools = fold_pools(folds, runs, s.pool_depth)
    assert all(len(p) * 10 <= len(docs) * 2 for p in pools)  # ≤ 20 % of the corpus (12 queries' pools)
    sample = corpus_sample(docs, 5000, s.seed)  # 1/4 of the corpus, as 10,000 is of a 40,000 one
    picked = fold_scores(scores, qids, docs, folds, pools, sample, len(docs), qrels)
    assert [f["chosen"] for f in picked] == [0.0, 0.0]
    # The old pool (∪ judged passages, ranked within itself) is fooled by the missing intruders.
    col = {d: j for j, d in enumerate(docs)}
    old = {}
    for a, m in scores.items():
        vals = []
        for q in qids:
            p = [col[d] for d in sorted(set(pools[0]) | set(pools[1]) | set(qrels[q]))]
            g = np.array([qrels[q].get(docs[j], 0) for j in p], dtype=float)
            vals.append(estimated_ndcg(m[qids.index(q), p], g, np.array([]), 0.0, 1.0))
        old[a] = float(np.mean(vals))
    assert choose(old) > 0.0


def test_linear_path_matches_readapt(tmp_path, tiny_llama):
    from test_readapt import make_adapter

    adapter = make_adapter(tiny_llama.pretrained, tmp_path / "dora", use_dora=True)
    line = KnowledgeLine.open(tiny_llama.pretrained, tiny_llama.retriever, adapter)
    for alpha in (0.0, 0.5, 1.0):
        want, _ = readapt(tiny_llama.pretrained, tiny_llama.retriever, adapter, alpha=alpha)
        got = line.weights(alpha)
        assert max(float((got[k] - want[k]).abs().max()) for k in want) <= 1e-6
    # α = 0 is the base retriever to the bit, and moving a model along the line sets exactly W(α).
    model = line.model(0.0)
    base = load_base_retriever(tiny_llama.pretrained, tiny_llama.retriever)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), base.state_dict().values(), strict=True)
    )
    line.move(model, 0.5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in line.weights(0.5).items())


@pytest.mark.slow
@pytest.mark.parametrize("crossfitted", [False, True])
def test_auto_cell_end_to_end(tmp_path, toy_dir, crossfitted, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from readaptir.grid.cell import run_cell

    data = tmp_path / "data"
    # Cross-fitted on a test split with 6 queries judged only 0: Base scores all 54, and so must auto.
    root = _zero_judged(data, toy_dir) if crossfitted else shutil.copytree(toy_dir, data / "toy")
    if crossfitted:
        root.rename(data / "toy")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(__file__).parents[1] / "conf"), version_base="1.3"):
        raw = compose("config", overrides=["readapt.alpha=auto", "dataset.builtin=false", "tracking.backend=none",
                                           f"paths.data_dir={data}", f"paths.cache_dir={tmp_path / 'cache'}",
                                           "train.max_passages=24", "readapt.alpha_selection.folds=3"])  # fmt: skip
    GlobalHydra.instance().clear()
    record = run_cell(CellConfig.from_hydra(raw), tmp_path / "job")
    sel = record.alpha_selection
    assert record.status == "done" and record.cell.alpha == "auto"
    assert sel["protocol"] == ("crossfit" if crossfitted else "train")
    assert len(sel["chosen"]) == (3 if crossfitted else 1) and all(
        a in sel["candidates"] for a in sel["chosen"]
    )
    assert all(set(f["scores"]) == {"0", "0.25", "0.5", "0.75", "1"} for f in sel["folds"])
    assert sel["pool_size"] <= 240 and sel["pool_encodings"] == 5
    base_queries = load_qrels(data / "toy", "test")
    assert sum(f["n_report"] for f in sel["folds"]) == len(base_queries) == (54 if crossfitted else 48)
    assert record.significance["n"] == len(base_queries)  # RA − Base and its test over Base's queries
    for alpha in set(sel["chosen"]):
        assert f"ra_run@{alpha:g}" in record.artifacts
    stored = json.loads((tmp_path / "job" / "results.json").read_text())
    assert stored["alpha_selection"] == sel and 0 <= stored["readapted"]["NDCG@10"] <= 1


def test_plan_prices_auto_cells(tmp_path, monkeypatch):
    from readaptir.grid.plan import Totals, describe_cell, grid_configs, plan_cell

    monkeypatch.setenv("READAPTIR_CACHE", str(tmp_path))
    monkeypatch.setenv("READAPTIR_DATA", str(tmp_path / "nodata"))
    cell = [("repllama", "scifact", "in-domain", "both")]
    fixed = plan_cell(next(iter(grid_configs(cell))))
    auto = plan_cell(next(iter(grid_configs(cell, ["readapt.alpha=auto"]))))
    text = describe_cell(auto.cfg)
    assert "select α on crossfit" in text and "encode the corpus at each chosen α" in text
    # SciFact (5,183 passages) with 5 candidates: the pool covers the corpus, so selection costs five
    # encodings, plus up to min(folds, candidates) = 5 full ones when cross-fitted.
    assert auto.hours("selection") == pytest.approx(10 * fixed.hours("ra_index"), rel=1e-6)
    assert Totals((auto,)).total_hours == pytest.approx(
        fixed.hours("adapter") + fixed.hours("base_index") + 10 * fixed.hours("ra_index"), rel=1e-6
    )


def _record(root: Path, alpha, ra: float, selection: dict | None = None) -> None:
    from readaptir.grid.record import CellCoords, CellRecord

    coords = CellCoords(
        model="repllama", dataset="scifact", adapter="in-domain", ablation="both", alpha=alpha, beta=1.0
    )
    rec = CellRecord(
        cell=coords, base={"NDCG@10": 0.70}, readapted={"NDCG@10": ra}, alpha_selection=selection or {}
    )
    rec.write(coords.store_path(root, f"result-{coords.alpha_text}"))


def test_alpha_table_and_selection_plot(tmp_path):
    from readaptir.report.render import render

    sel = {"protocol": "crossfit", "split": "test", "candidates": [0.0, 0.5, 1.0], "chosen": [0.0, 1.0],
           "folds": [{"n_select": 5, "n_report": 3, "scores": {"0": 0.5, "0.5": 0.4, "1": 0.3}, "chosen": 0.0},
                     {"n_select": 5, "n_report": 3, "scores": {"0": 0.3, "0.5": 0.4, "1": 0.6}, "chosen": 1.0}],
           "pool_size": 50, "pool_encodings": 3, "cost_vs_full_encodings": 0.03}  # fmt: skip
    _record(tmp_path / "res", 0.5, 0.72)
    _record(tmp_path / "res", "auto", 0.74, sel)
    md = render("alpha", tmp_path / "res", tmp_path / "out", models=["repllama"], datasets=["scifact"])
    row = next(line for line in md.splitlines() if line.startswith("| scifact"))
    assert row == "| scifact | 70.0 | 72.0 | 74.0 | 0/1 (cv) | +2.0 |"
    assert (tmp_path / "out" / "alpha.png").read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "alpha.md",
        "alpha.tex",
        "alpha.csv",
        "alpha.png",
    }


def test_alpha_report_command_picks_variants_from_the_plain_config(tmp_path, caplog):
    """``python -m readaptir.report alpha`` (no experiment of its own) composes the plain config per cell."""
    from readaptir.report.render import main

    _record(tmp_path / "res", 0.5, 0.72)
    args = ["alpha", "--results-dir", str(tmp_path / "res"), "--out", str(tmp_path / "out"),
            "--models", "repllama", "--datasets", "scifact"]  # fmt: skip
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    assert "cannot compose" not in caplog.text
    assert "| scifact | 70.0 | 72.0 |" in (tmp_path / "out" / "alpha.md").read_text()
