"""``readaptir adapt``: a corpus of files + a retriever → a readapted sentence-transformers folder.

The folder's embeddings equal the project's encoder on the readapted weights; a BeIR folder as corpus gives
the grid cell's own keys; bad corpora and mismatched model pairs are refused with one line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from readaptir.config import CONF_DIR, CellConfig, ConfigError
from readaptir.data.beir import RESOURCES, DataError, iter_corpus
from readaptir.grid.adapt import prepare, run_adapt
from readaptir.grid.keys import cell_keys
from readaptir.readapt.model import build_readapted_model
from readaptir.readapt.weights import ReadaptError
from readaptir.retrieval.dense import encode_ids, load_tokenizer, pad_id_for
from readaptir.retrieval.prompts import build_input_ids, format_passage, format_query
from readaptir.runtime import Runtime

st = pytest.importorskip("sentence_transformers")
TRAIN = ["train.max_passages=4", "train.batch_size=2"]


def compose_config(name: str, overrides: list[str]) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=True)


def adapt_config(tmp_path, *overrides: str) -> dict:
    return compose_config("adapt", [f"paths.cache_dir={tmp_path / 'cache'}", *TRAIN, *overrides])


@pytest.fixture
def txt_corpus(tmp_path):
    """The toy corpus as one .txt file per passage (title and text on one line), plus a repeat and an empty file."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, p in enumerate(list(iter_corpus(RESOURCES / "toy"))[:12]):
        (folder / f"{i:03d}.txt").write_text(f"{p.title} {p.text}".strip())
    (folder / "dup.txt").write_text((folder / "000.txt").read_text())
    (folder / "empty.md").write_text("  \n")
    return folder


def _project(model, tok, query_t, passage_t, task, queries, passages, max_len):
    pad, eos = pad_id_for(tok), tok.eos_token_id
    q = build_input_ids(tok, [format_query(query_t, task, x) for x in queries], max_len)
    p = build_input_ids(tok, [format_passage(passage_t, "", x) for x in passages], max_len)
    return encode_ids(model, q, pad, eos), encode_ids(model, p, pad, eos)


@pytest.mark.parametrize("family", ["llama", "mistral"])  # a LoRA retriever; a full-weight one (base given)
def test_adapt_txt_corpus_gives_a_sentence_transformers_folder(family, txt_corpus, tiny_llama, tiny_mistral,
                                                               tmp_path, capsys):  # fmt: skip
    tiny = {"llama": tiny_llama, "mistral": tiny_mistral}[family]
    extra = [f"pretrained={tiny.pretrained}"] if family == "mistral" else []
    task = "Given a question, retrieve passages"
    raw = adapt_config(tmp_path, f"model=tiny-{family}", f"retriever={tiny.retriever}", f"corpus={txt_corpus}",
                       f"out={tmp_path / 'out'}", f"task='{task}'", *extra)  # fmt: skip
    job = prepare(dict(raw))
    assert job.counts["kept"] == 12 and job.counts["duplicates"] == 1 and job.counts["empty"] == 1
    folder = run_adapt(dict(raw))
    assert folder == (tmp_path / "out").resolve()
    adapter = job.cfg.paths.cache_dir + f"/adapter/{job.keys['adapter']}"
    model, _ = build_readapted_model(tiny.pretrained, tiny.retriever, adapter, 0.5, 1.0)
    tok = load_tokenizer(tiny.retriever, tiny.pretrained)
    queries, passages = (
        ["what do cats eat", "how fast can a cheetah run"],
        ["Cats hunt small animals.", "x " * 200],
    )
    m = job.cfg.model
    q_ref, p_ref = _project(model, tok, m.query_template, m.passage_template, task, queries, passages,
                            max(m.query_max_len, m.passage_max_len))  # fmt: skip
    loaded = st.SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(loaded.encode_query(queries, convert_to_numpy=True), q_ref, atol=1e-5)
    np.testing.assert_allclose(loaded.encode_document(passages, convert_to_numpy=True), p_ref, atol=1e-5)
    card = (folder / "README.md").read_text()
    assert "readapted with docs" in card and "encode_document" in card
    capsys.readouterr()
    run_adapt({**raw, "run": {**raw["run"], "plan": True}})  # resumable: everything is now reused
    plan = capsys.readouterr().out
    assert plan.count(" reuse ") == 4 and " build " not in plan


def test_a_beir_folder_gets_the_grid_cells_keys(tiny_llama, tmp_path):
    cache = tmp_path / "cache"
    raw = adapt_config(
        tmp_path, "model=tiny-llama", f"retriever={tiny_llama.retriever}", f"corpus={RESOURCES / 'toy'}"
    )
    keys = prepare(raw).keys
    grid = CellConfig.from_hydra(
        compose_config("config", [f"paths.cache_dir={cache}", *TRAIN, "tracking.backend=none"])
    )
    grid = grid.model_copy(update={"model": grid.model.model_copy(update={"pretrained": str(tiny_llama.pretrained),
                                                                          "retriever": str(tiny_llama.retriever)})})  # fmt: skip
    expected = cell_keys(grid, Runtime.detect(grid.encode.dtype, grid.model.torch_dtype))
    for name in ("tokens", "adapter", "readapted"):
        assert keys[name] == expected[name], name


def test_bad_inputs_are_refused_with_one_line(tiny_llama, tiny_mistral, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import LlamaConfig, LlamaModel

    base = ["model=tiny-llama", f"retriever={tiny_llama.retriever}"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no \.txt/\.md files"):
        prepare(adapt_config(tmp_path, *base, f"corpus={empty}"))
    table = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": ["a passage"]}), table)
    with pytest.raises(DataError, match=r"docs\.parquet: no column 'text'.*corpus_fields\.text"):
        prepare(adapt_config(tmp_path, *base, f"corpus={table}"))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "train.jsonl").write_text(json.dumps({"body": "a passage"}) + "\n")
    with pytest.raises(DataError, match=r"no column 'content'.*columns: \['body'\]"):
        prepare(adapt_config(tmp_path, *base, f"corpus=hf:{hf}", "corpus_fields.text=content"))
    other = tmp_path / "other"  # a retriever of another shape: not fine-tuned from the base
    LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=384)).save_pretrained(other)  # fmt: skip
    with pytest.raises(ReadaptError, match="do not share architecture and shapes"):
        prepare(adapt_config(tmp_path, *base, f"retriever={other}", f"pretrained={tiny_llama.pretrained}",
                             f"corpus={RESOURCES / 'toy'}"))  # fmt: skip
    with pytest.raises(ConfigError, match="pass pretrained="):
        prepare(
            adapt_config(
                tmp_path, *base, f"retriever={tiny_mistral.retriever}", f"corpus={RESOURCES / 'toy'}"
            )
        )


def test_the_command_prints_one_line_for_bad_input(tiny_llama, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "readaptir", "adapt", "model=tiny-llama", f"retriever={tiny_llama.retriever}",
         f"corpus={empty}", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("readaptir: error:")]
    assert len(errors) == 1 and "no .txt/.md files" in errors[0] and "Traceback" not in proc.stderr


def test_adapt_then_evaluate_equals_the_grid_cell(tiny_llama, tmp_path):
    """The toy corpus as .txt files → adapt → evaluate on the toy judgments = the grid cell's numbers."""
    from readaptir.grid.cell import run_cell
    from readaptir.grid.compare import run_evaluate

    cache, docs = tmp_path / "cache", tmp_path / "docs"
    docs.mkdir()
    for i, p in enumerate(iter_corpus(RESOURCES / "toy")):  # title and text on one line, corpus order
        (docs / f"{i:04d}.txt").write_text(f"{p.title} {p.text}".strip())
    models = [f"model.pretrained={tiny_llama.pretrained}", f"model.retriever={tiny_llama.retriever}"]
    grid = CellConfig.from_hydra(
        compose_config("config", [f"paths.cache_dir={cache}", *TRAIN, *models, "tracking.backend=none"])
    )
    record = run_cell(grid, tmp_path / "cell")
    folder = run_adapt(
        adapt_config(tmp_path, "model=tiny-llama", f"retriever={tiny_llama.retriever}", f"corpus={docs}")
    )
    raw = compose_config("evaluate", [f"paths.cache_dir={cache}", "model=tiny-llama", f"retriever={tiny_llama.retriever}",
                                f"readapted={folder}", "dataset=demo/toy", f"+run.out_dir={tmp_path / 'eval'}"])  # fmt: skip
    out = run_evaluate(raw)
    assert out["base_run"] == record.artifacts["base_run"]  # the grid's own product, reused
    assert out["base"] == record.base
    assert out["readapted"] == record.readapted and out["readapted"] != out["base"]
    assert out["significance"]["p_value"] == pytest.approx(record.significance["p_value"])


def test_plan_mode_writes_nothing(txt_corpus, tiny_llama, tmp_path, capsys):
    raw = adapt_config(tmp_path, "model=tiny-llama", f"retriever={tiny_llama.retriever}", f"corpus={txt_corpus}",
                       "run.plan=true")  # fmt: skip
    assert run_adapt(raw) is None
    out = capsys.readouterr().out
    assert out.count(" build ") == 4 and "not read yet" in out
    assert not list((tmp_path / "cache").glob("corpus/corpus-*"))


def test_evaluate_runs_a_sentence_transformers_folder_with_its_prompts(tiny_llama, tmp_path):
    """A sentence-transformers folder (no pretrained=) runs as the sbert baseline, its shipped prompts applied:
    the exported retriever scores as the dense pipeline does on the same weights."""
    from readaptir.grid.compare import run_evaluate
    from readaptir.readapt.export import save_sentence_transformers, st_prompts
    from readaptir.readapt.model import load_base_retriever

    model = load_base_retriever(tiny_llama.pretrained, tiny_llama.retriever)
    tok = load_tokenizer(tiny_llama.retriever, tiny_llama.pretrained)
    folder = save_sentence_transformers(
        model, tok, tmp_path / "st", st_prompts("query: {query}", "passage: {title} {text}"), 128
    )
    common = [
        f"paths.cache_dir={tmp_path / 'cache'}",
        "model=tiny-llama",
        "dataset=demo/toy",
        "search.top_k=100",
    ]
    dense = run_evaluate(
        compose_config(
            "evaluate", [*common, f"retriever={tiny_llama.retriever}", f"+run.out_dir={tmp_path / 'a'}"]
        )
    )
    sbert = run_evaluate(
        compose_config("evaluate", [*common, f"retriever={folder}", f"+run.out_dir={tmp_path / 'b'}"])
    )
    assert sbert["base_run"] != dense["base_run"]  # another retriever, another product
    assert sbert["base"] == pytest.approx(dense["base"], abs=1e-4)  # every metric, NDCG@1 … P@1000
