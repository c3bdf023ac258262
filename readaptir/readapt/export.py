"""A retriever as a sentence-transformers folder: ``SentenceTransformer(path)`` gives the project's embeddings.

The project encodes ``[bos] + tokens(prompt + text)[: max_len-2] + [eos]``, pools the EOS position's hidden
state and L2-normalises it (:mod:`readaptir.retrieval.dense`). A sentence-transformers folder reproduces
that with standard modules only, so retrieval people use the readapted model where they already work
(``SentenceTransformer``, MTEB):

- ``0_Transformer`` is the root folder: the ``AutoModel`` (no LM head) and a tokenizer whose
  ``tokenizer.json`` post-processor puts BOS first and EOS last (a ``TemplateProcessing``): the ids the
  project builds itself, truncation included (the fast tokenizer keeps room for both specials);
- ``1_Pooling``: ``lasttoken`` pooling, the last attended position, which holds that EOS;
- ``2_Normalize``: L2 normalisation, so the dot product is the cosine;
- the query and passage prompts as named prompts (``query``, ``document``, ``passage``) in
  ``config_sentence_transformers.json``; ``encode_query`` / ``encode_document`` apply them.

    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer("path/to/folder")
    q = st.encode_query(["what is dna?"]); d = st.encode_document(["title text"])
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from readaptir.errors import UserError
from readaptir.fs import atomic_write, temp_sibling

PROMPT_NAMES = ("query", "document", "passage")  # sentence-transformers' and MTEB's names
TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # loads tokenizer.json verbatim (no class re-adds specials)


class ExportError(UserError):
    """A retriever whose prompts or tokenizer cannot be expressed as a sentence-transformers folder."""


def st_prompts(query_template: str, passage_template: str, task: str = "") -> dict[str, str]:
    """Named prompts: the text before ``{query}`` (e5: the task filled in) and before ``{title} {text}``.

    sentence-transformers prepends a prompt to the input, so a template must end with its input slot;
    ``encode_document`` then takes ``title + " " + text`` (or the text alone) as the project does.
    """
    if not query_template.endswith("{query}"):
        raise ExportError(f"query template {query_template!r} must end with {{query}} to become a prompt")
    for slot in ("{title} {text}", "{text}"):
        if passage_template.endswith(slot):
            passage = passage_template[: -len(slot)]
            break
    else:
        raise ExportError(
            f"passage template {passage_template!r} must end with {{title}} {{text}} or {{text}}"
        )
    query = query_template[: -len("{query}")].format(task=task)
    return {"query": query, "document": passage, "passage": passage}


def eos_tokenizer(tokenizer: Any) -> Any:
    """A fast tokenizer (a copy) whose post-processor builds ``[bos] + ids + [eos]``, padding on the right."""
    import copy

    from tokenizers import processors

    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{type(tokenizer).__name__}: a fast (tokenizers) tokenizer is needed to export")
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    if bos is None or eos is None:
        raise ExportError(
            f"tokenizer {type(tokenizer).__name__} lacks a BOS or EOS token (bos={bos}, eos={eos})"
        )
    tok = copy.deepcopy(tokenizer)
    specials = sorted({(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)})
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B {eos}", special_tokens=specials
    )
    if tok.pad_token is None:  # pooling is mask based: EOS as padding is safe (the project does the same)
        tok.pad_token = eos
    return tok


def save_sentence_transformers(
    model: Any,
    tokenizer: Any,
    out: str | os.PathLike,
    prompts: dict[str, str],
    max_seq_length: int,
    card: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``model`` (an ``AutoModel``, no LM head) as a sentence-transformers folder, atomically.

    ``max_seq_length`` counts BOS and EOS, like the project's ``query_max_len`` / ``passage_max_len``.
    ``card`` (markdown) becomes README.md, with a sentence-transformers usage section appended.
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; remove it or choose another folder")
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp, max_shard_size="5GB")
        eos_tokenizer(tokenizer).save_pretrained(tmp)
        _write_st_config(tmp, int(model.config.hidden_size), prompts, max_seq_length)
        atomic_write(tmp / "README.md", (card or "") + usage_section(prompts))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_st_config(folder: Path, dim: int, prompts: dict[str, str], max_seq_length: int) -> None:
    """modules.json and each module's config, in the layout ``SentenceTransformer(folder)`` reads."""
    cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg.update(tokenizer_class=TOKENIZER_CLASS, padding_side="right")
    for key in ("add_bos_token", "add_eos_token", "is_local", "local_files_only"):  # the post-processor
        tok_cfg.pop(key, None)  # decides the specials; where this folder was made must not travel with it
    cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    files = {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "1_Pooling/config.json": {"embedding_dimension": dim, "pooling_mode": "lasttoken", "include_prompt": True},
        "2_Normalize/config.json": {},
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "prompts": {k: prompts[k] for k in PROMPT_NAMES if prompts.get(k)},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }  # fmt: skip
    for name, obj in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(obj, indent=2) + "\n")


def usage_section(prompts: dict[str, str]) -> str:
    """README lines: how to load the folder with sentence-transformers and run it under MTEB."""
    return "\n".join([
        "",
        "## Use with sentence-transformers",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        'model = SentenceTransformer("<this folder or repo>")',
        'queries = model.encode_query(["how do vaccines work?"])       # prompt: ' + repr(prompts.get("query", "")),
        'passages = model.encode_document(["Title Passage text ..."])  # prompt: ' + repr(prompts.get("document", "")),
        "scores = queries @ passages.T  # L2-normalised: dot product = cosine",
        "```",
        "",
        "Ids are [BOS] + tokens + [EOS] (the tokenizer's post-processor appends EOS); the embedding is the",
        "EOS position's hidden state (last-token pooling), L2-normalised. Under MTEB (its `query` and "
        '`document` prompts are the ones above): `mteb.evaluate(model, mteb.get_tasks(tasks=["NFCorpus"]))`.',
        "",
    ])  # fmt: skip
