"""BM25 rankings over an in-memory corpus: hard negatives for retriever training, distractors for subsets.

bm25s with Lucene scoring (k1=1.5, b=0.75), English stopwords and the Snowball stemmer: the settings that give
SciFact's reference nDCG@10 of 68.7 (:mod:`readaptir.retrieval.lexical` evaluates the same BM25 as a model).

    ranked = bm25_rankings({"d1": "text ...", ...}, {"q1": "query ..."}, depth=200)   # {"q1": ["d7", ...]}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)


def bm25_rankings(docs: Mapping[str, str], queries: Mapping[str, str], depth: int) -> dict[str, list[str]]:
    """The ``depth`` best doc ids per query (best first), documents without a matching term left out."""
    import bm25s

    try:
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
    except ImportError:  # PyStemmer is a dependency; without it BM25 still runs, a little weaker
        log.warning("PyStemmer missing: BM25 without stemming")
        stemmer = None
    ids = list(docs)
    if not ids or not queries:
        return {q: [] for q in queries}
    index = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    tokens = bm25s.tokenize([docs[d] for d in ids], stopwords="en", stemmer=stemmer, show_progress=False)
    index.index(tokens, show_progress=False)
    qids = list(queries)
    q_tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, return_ids=False,
                              show_progress=False)  # fmt: skip
    found, scores = index.retrieve(q_tokens, k=min(depth, len(ids)), show_progress=False)
    return {
        q: [ids[j] for j, s in zip(found[i], scores[i], strict=True) if s > 0] for i, q in enumerate(qids)
    }
