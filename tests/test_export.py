"""The sentence-transformers export: ``SentenceTransformer(folder)`` embeds exactly as the project does."""

from __future__ import annotations

import numpy as np
import pytest

from readaptir.readapt.export import ExportError, save_sentence_transformers, st_prompts
from readaptir.readapt.model import load_base_retriever
from readaptir.retrieval.dense import encode_ids, load_tokenizer, pad_id_for
from readaptir.retrieval.prompts import build_input_ids, format_passage, format_query

st = pytest.importorskip("sentence_transformers")

QUERIES = ["what is a cat", "the dog barked at the moon " * 12]  # the second is cut at max_len
PASSAGES = [("A title", "the body of the passage here"), ("", "only text " * 20)]


def project_embeddings(model, tok, query_t, passage_t, task, max_len):
    q = build_input_ids(tok, [format_query(query_t, task, x) for x in QUERIES], max_len)
    p = build_input_ids(tok, [format_passage(passage_t, a, b) for a, b in PASSAGES], max_len)
    pad, eos = pad_id_for(tok), tok.eos_token_id
    return encode_ids(model, q, pad, eos), encode_ids(model, p, pad, eos)


@pytest.mark.parametrize(
    "family,query_t,passage_t,task",
    [
        ("llama", "query: {query}", "passage: {title} {text}", ""),  # RepLLaMA-style LoRA retriever
        (
            "mistral",
            "Instruct: {task}\nQuery: {query}",
            "{title} {text}",
            "Given a question, retrieve passages",
        ),
    ],
)
def test_sentence_transformers_folder_gives_the_projects_embeddings(
    family, query_t, passage_t, task, tiny_llama, tiny_mistral, tmp_path
):
    tiny = {"llama": tiny_llama, "mistral": tiny_mistral}[family]
    model = load_base_retriever(tiny.pretrained, tiny.retriever)
    tok = load_tokenizer(tiny.retriever, tiny.pretrained)
    max_len = 24
    folder = save_sentence_transformers(
        model, tok, tmp_path / "st", st_prompts(query_t, passage_t, task), max_len
    )
    loaded = st.SentenceTransformer(str(folder), device="cpu")
    q = loaded.encode_query(QUERIES, convert_to_numpy=True)
    p = loaded.encode_document([f"{a} {b}".strip() for a, b in PASSAGES], convert_to_numpy=True)
    q_ref, p_ref = project_embeddings(model, tok, query_t, passage_t, task, max_len)
    assert q.shape == q_ref.shape and p.shape == p_ref.shape
    np.testing.assert_allclose(q, q_ref, atol=1e-5)
    np.testing.assert_allclose(p, p_ref, atol=1e-5)
    ids = loaded.tokenize(["x " * 100])["input_ids"][0].tolist()  # truncation keeps BOS and EOS
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == max_len
    assert (folder / "README.md").read_text().count("encode_query") == 1


def test_prompts_must_be_prefixes():
    assert st_prompts("query: {query}", "passage: {title} {text}")["document"] == "passage: "
    assert st_prompts("Instruct: {task}\nQuery: {query}", "{text}", "T")["query"] == "Instruct: T\nQuery: "
    with pytest.raises(ExportError, match="must end with"):
        st_prompts("{query} (question)", "{title} {text}")
