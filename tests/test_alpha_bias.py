"""The direction of the pool estimate's bias (docs/method.md §8), on hand-built score matrices.

α = 0 (the base retriever, whose top ``pool_depth`` the pool holds) is scored exactly. For α > 0 two effects
pull opposite ways: outside intruders too rare for the sample make it look better (towards α > 0, once the
outside is many times the sample), relevant passages outside the pool make it look worse (towards α = 0).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from readaptir.grid.alpha import Fold, corpus_sample, fold_pools, fold_scores

N, DEPTH = 20000, 20
DOCS = [f"d{j:05d}" for j in range(N)]
FOLDS = [Fold(("q",), ("other",))]


def _base_scores(rng: np.random.Generator) -> np.ndarray:
    """α = 0: a descending ramp, so the pool (its top ``DEPTH``) is d00000 … d00019."""
    return np.linspace(10.0, 0.0, N) + 0.001 * rng.random(N)


def _score(scores: dict[float, np.ndarray], qrels: dict, sample_size: int, seed: int) -> dict[float, float]:
    run = {"q": {DOCS[j]: float(scores[0.0][j]) for j in np.argsort(-scores[0.0])[:DEPTH]}}
    pools = fold_pools(FOLDS, [run], DEPTH)
    sample = corpus_sample(DOCS, sample_size, seed)
    matrices = {a: s[None, :] for a, s in scores.items()}
    fold = fold_scores(matrices, ["q"], DOCS, FOLDS, pools, sample, N, qrels)[0]
    return {float(a): s for a, s in fold["scores"].items()} | {"chosen": fold["chosen"]}


def test_rare_outside_intruders_bias_the_choice_towards_alpha_above_zero():
    """Full corpus: α = 0 ranks the relevant passage 2nd (nDCG 0.63), α = 1 ranks it 4th behind three
    passages outside the pool (0.43), so the full corpus picks α = 0. With 200 sampled passages standing for
    ≈ 100 outside ones each, the sample usually holds none of the three: α = 1's estimate is ≈ 1 and the
    pool picks α = 1. α = 0's estimate is exact on every draw."""
    rng = np.random.default_rng(0)
    base = _base_scores(rng)
    rel = 1  # α = 0: rank 2 (d00000 above it)
    alpha1 = rng.normal(0.0, 1.0, N)
    alpha1[rel] = 8.0  # α = 1: first within the pool …
    alpha1[[5000, 9000, 15000]] = 9.0  # … behind three passages outside it
    qrels = {"q": {DOCS[rel]: 1}}
    truth = {0.0: 1 / np.log2(3), 1.0: 1 / np.log2(5)}
    draws = [_score({0.0: base, 1.0: alpha1}, qrels, 200, seed) for seed in range(40)]
    assert all(abs(d[0.0] - truth[0.0]) < 1e-9 for d in draws)  # α = 0: exact
    assert np.mean([d[1.0] for d in draws]) > truth[1.0] + 0.3  # α = 1: over-estimated on average
    assert sum(d["chosen"] == 1.0 for d in draws) > 30  # the full corpus's choice is 0


def test_relevant_passages_outside_the_pool_bias_the_choice_towards_zero():
    """α = 1 ranks a relevant passage first that neither the base retriever's nor any pool's top holds:
    the full corpus picks α = 1 (nDCG 1 against 0), the pool cannot see it and picks α = 0."""
    rng = np.random.default_rng(1)
    base = _base_scores(rng)
    rel = 12000  # far below α = 0's top DEPTH
    alpha1 = rng.normal(0.0, 1.0, N)
    alpha1[rel] = 20.0
    got = _score({0.0: base, 1.0: alpha1}, {"q": {DOCS[rel]: 1}}, 200, seed=0)
    assert got[0.0] == 0.0 and got[1.0] == 0.0  # the truth is 0 and 1
    assert got["chosen"] == 0.0


@pytest.mark.slow
def test_the_pool_is_searched_by_the_base_retriever_whatever_beta(tmp_path, toy_dir, monkeypatch):
    """The base index holds W_ret's passages; with β = 0.5 the line's α = 0 is W_pre + 0.5Δ, not W_ret, so
    the pool's queries must come from the retriever itself (they came from the line's α = 0)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from readaptir.config import CellConfig
    from readaptir.grid import select
    from readaptir.grid.cell import run_cell
    from readaptir.readapt.model import load_base_retriever

    pool_models = []
    real = select._retriever
    monkeypatch.setattr(select, "_retriever", lambda cfg, model, folders: (
        pool_models.append((model, folders)) if not pool_models else None) or real(cfg, model, folders))  # fmt: skip
    shutil.copytree(toy_dir, tmp_path / "data" / "toy")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(__file__).parents[1] / "conf"), version_base="1.3"):
        raw = compose("config", overrides=["readapt.alpha=auto", "readapt.beta=0.5", "dataset.builtin=false",
                                           "tracking.backend=none", f"paths.data_dir={tmp_path / 'data'}",
                                           f"paths.cache_dir={tmp_path / 'cache'}", "train.max_passages=24",
                                           "readapt.alpha_selection.grid=[0,1]"])  # fmt: skip
    GlobalHydra.instance().clear()
    assert run_cell(CellConfig.from_hydra(raw), tmp_path / "job").status == "done"
    model, folders = pool_models[0]
    expected = load_base_retriever(folders.pretrained, folders.retriever).state_dict()
    got = model.state_dict()
    assert all(torch.allclose(got[k].float(), v.float(), atol=1e-6) for k, v in expected.items())
