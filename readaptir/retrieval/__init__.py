"""Retrievers behind one interface (:mod:`~readaptir.retrieval.base`): dense LLMs, sentence-transformers,
BM25; corpus embeddings on disk, exact search and TREC run files."""
