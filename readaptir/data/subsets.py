"""Which passages of which corpus train a knowledge adapter: the paper's test-passage ablation.

The ablation filters the *knowledge* corpus by the evaluated dataset's eval-split qrels (relevance > 0):
``both`` = all passages, ``without`` = all minus the judged-relevant ones, ``with`` = only them. Doc ids of
different corpora collide (MS-MARCO and FiQA both use integers), so a subset is only defined when the
knowledge corpus shares the evaluated dataset's id space; otherwise :func:`knowledge_subset` says "not
applicable" instead of filtering one corpus by another's ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from readaptir.data.beir import DataError

Subset = Literal["both", "without", "with"]


def relevant_doc_ids(qrels: Mapping[str, Mapping[str, int]]) -> frozenset[str]:
    """Documents judged relevant (score > 0) for at least one query."""
    return frozenset(d for docs in qrels.values() for d, s in docs.items() if s > 0)


def count_unknown_qrels(qrels: Mapping[str, Mapping[str, int]], corpus_ids: set[str] | frozenset[str]) -> int:
    """Number of qrels rows whose document is not in the corpus (logged by callers as a data warning)."""
    return sum(1 for docs in qrels.values() for d in docs if d not in corpus_ids)


@dataclass(frozen=True)
class KnowledgeSubset:
    """Which passages of which corpus train a knowledge adapter (docs/method.md §4).

    ``applicable`` is False for ablations that would filter one corpus by another corpus's ids;
    ``reason`` then says why, and the cell is reported as not applicable.
    """

    corpus: str  # BeIR name of the knowledge corpus
    subset: Subset
    filter_dataset: str | None  # dataset whose eval-split qrels define the subset (None for "both")
    filter_split: str | None
    applicable: bool = True
    reason: str = ""


def knowledge_subset(
    knowledge_corpus: str, subset: Subset, eval_dataset: str, eval_corpus: str, eval_split: str
) -> KnowledgeSubset:
    """Decide the knowledge corpus subset of a cell.

    ``eval_corpus`` is the corpus the evaluated dataset's doc ids live in (its ``knowledge_corpus``
    config: Climate-FEVER's is FEVER's). ``without``/``with`` only make sense when the knowledge corpus
    is that same corpus; with any other corpus the qrels' ids mean different documents.
    """
    if subset == "both":
        return KnowledgeSubset(knowledge_corpus, "both", None, None)
    if subset not in ("without", "with"):
        raise DataError(f"ablation {subset!r} unknown: use both, without or with")
    if knowledge_corpus != eval_corpus:
        return KnowledgeSubset(
            knowledge_corpus,
            subset,
            None,
            None,
            applicable=False,
            reason=(
                f"ablation={subset} filters by {eval_dataset}'s qrels, which index the {eval_corpus} corpus, "
                f"not the {knowledge_corpus} knowledge corpus"
            ),
        )
    return KnowledgeSubset(knowledge_corpus, subset, eval_dataset, eval_split)


def subset_filter(sub: KnowledgeSubset, relevant: frozenset[str]) -> dict:
    """Keyword arguments for :func:`iter_corpus` selecting the subset's passages."""
    if sub.subset == "with":
        return {"doc_ids": relevant}
    if sub.subset == "without":
        return {"exclude": relevant}
    return {}
