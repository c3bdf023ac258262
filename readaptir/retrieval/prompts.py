"""Texts and token ids exactly as the published retrievers were trained on them.

RepLLaMA: query ``"query: " + q``, passage ``"passage: " + title + " " + text``. e5-Mistral: query
``"Instruct: " + task + "\\nQuery: " + q`` (the dataset's task description), passage ``title + " " + text``.
The templates live in ``conf/model/``, the task in ``conf/dataset/``.

Token ids are built as ``[bos] + tokens(text)[: max_len-2] + [eos]`` by this code, never by the tokenizer:
LLaMA's tokenizer never appends EOS and transformers >= 5 stopped doing it for e5-Mistral's, and plain
truncation would cut the EOS the model pools on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from readaptir.errors import UserError


class EncodeError(UserError):
    """An encoding convention is violated (no EOS under the pooled position, no BOS/EOS ids, ...)."""


def format_query(query_template: str, task: str, query: str) -> str:
    """Query prompt: RepLLaMA ``"query: " + q``; e5 ``"Instruct: " + task + "\\nQuery: " + q``."""
    return query_template.format(query=query, task=task)


def format_passage(passage_template: str, title: str, text: str) -> str:
    """Passage prompt: RepLLaMA ``"passage: " + title + " " + text``, e5 ``title + " " + text``, stripped.

    With an empty title the ``"{title} "`` slot is dropped, so RepLLaMA gives ``"passage: text"`` with one
    space (tevatron's ``format_passage`` strips the same way).
    """
    template = passage_template
    title, text = title.strip(), text.strip()
    if not title:
        template = template.replace("{title} ", "").replace(" {title}", "").replace("{title}", "")
    return template.format(title=title, text=text).strip()


def build_input_ids(tokenizer: Any, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """``[bos] + tokens(text)[: max_len-2] + [eos]`` per text; never relies on the tokenizer's specials."""
    if max_len < 3:
        raise EncodeError(f"max_len={max_len}: need room for BOS, one token and EOS")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise EncodeError(f"tokenizer {type(tokenizer).__name__} lacks bos/eos ids (bos={bos}, eos={eos})")
    if not texts:
        return []
    body = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_len - 2)[
        "input_ids"
    ]
    return [[bos, *ids[: max_len - 2], eos] for ids in body]
