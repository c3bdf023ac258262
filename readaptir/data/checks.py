"""Checks of a dataset before anything is built from it: a corpus with unique doc ids, qrels that point into it.

Duplicate doc ids put two rows under one id in every index, and a run keeps only one of them, so metrics
depend on row order: refused. Qrels whose document is not in the corpus count as never retrieved (BeIR's
rule) and are reported with counts; when more than 1% of the relevant judgements point outside the corpus,
the qrels are not this corpus's (a wrong folder or split) and are refused. An empty corpus and qrels whose
queries are all missing from ``queries.jsonl`` are refused with what to fix; so are judged queries whose
texts are all empty (some empty: counted in a warning). Loading refuses what would be read wrongly: qrels
grades that are not integers, ``null`` texts, duplicate query ids (:mod:`readaptir.data.beir`). Each check runs once per
content: its outcome is remembered in the cache under the files' content identities.

    warnings = check_dataset(root, "test", memo_dir)   # raises DataError; returns warning lines
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import xxhash

from readaptir.data.beir import DataError, iter_doc_ids, load_qrels, load_queries
from readaptir.fs import atomic_write
from readaptir.store.artifacts import make_key
from readaptir.store.identity import content_identity

log = logging.getLogger(__name__)

VERSION = 3  # bump when a check changes, so remembered outcomes are checked again
UNKNOWN_RELEVANT_MAX = 0.01  # more relevant judgements than this fraction outside the corpus: refused


def _hashes(ids: Iterable[str]) -> np.ndarray:
    """64-bit hashes of doc ids (8 bytes per passage instead of a Python set of 8.84M strings)."""
    return np.fromiter((xxhash.xxh3_64_intdigest(i.encode()) for i in ids), dtype=np.uint64)


def corpus_id_hashes(root: str | os.PathLike) -> np.ndarray:
    """Sorted hashes of the corpus's doc ids; refuses an empty corpus and duplicate ids (file and lines)."""
    path = Path(root) / "corpus.jsonl"
    hashes = np.sort(_hashes(doc_id for _, doc_id in iter_doc_ids(root)))
    if not len(hashes):
        raise DataError(f"{path}: no passages; the corpus is empty (an interrupted download or copy?)")
    twice = hashes[1:][hashes[1:] == hashes[:-1]]
    if len(twice):  # confirm by id (a hash collision is not a duplicate) and find the lines
        suspects, lines = {int(h) for h in twice}, {}
        for lineno, doc_id in iter_doc_ids(root):
            if xxhash.xxh3_64_intdigest(doc_id.encode()) in suspects:
                lines.setdefault(doc_id, []).append(lineno)
        dups = {d: ls for d, ls in lines.items() if len(ls) > 1}
        if dups:
            first, at = next(iter(dups.items()))
            extra = sum(len(ls) - 1 for ls in dups.values())
            raise DataError(
                f"{path}: {len(dups)} doc id(s) occur more than once ({extra} extra rows), e.g. {first!r} on "
                f"lines {at[0]} and {at[1]}; make the ids unique (a run keeps one row per id, so metrics "
                "would depend on row order)"
            )
    return hashes


def _qrels_warnings(root: Path, split: str, corpus: np.ndarray) -> list[str]:
    path = root / "qrels" / f"{split}.tsv"
    qrels = load_qrels(root, split)
    rows = [(d, s) for docs in qrels.values() for d, s in docs.items()]
    found = np.isin(_hashes(d for d, _ in rows), corpus)
    relevant = np.array([s > 0 for _, s in rows], dtype=bool)
    warnings = []
    if not found.all():
        example = rows[int(np.flatnonzero(~found)[0])][0]
        n_rel, unknown_rel = int(relevant.sum()), int((relevant & ~found).sum())
        what = (f"{path}: {int((~found).sum())} of {len(rows)} judgements ({unknown_rel} of {n_rel} relevant) "
                f"point at doc ids not in corpus.jsonl, e.g. {example!r}")  # fmt: skip
        if n_rel and unknown_rel / n_rel > UNKNOWN_RELEVANT_MAX:
            raise DataError(f"{what}; more than {UNKNOWN_RELEVANT_MAX:.0%} of the relevant ones: these qrels "
                            "do not belong to this corpus (wrong folder or split?)")  # fmt: skip
        warnings.append(f"{what}; they count as never retrieved (BeIR's rule)")
    queries = load_queries(root, set(qrels))
    missing = set(qrels) - set(queries)
    if missing and len(missing) == len(qrels):
        raise DataError(f"{path}: none of its {len(qrels)} judged queries is in {root / 'queries.jsonl'} "
                        f"(e.g. {next(iter(missing))!r}); wrong folder or split?")  # fmt: skip
    if missing:
        warnings.append(f"{path}: {len(missing)} of {len(qrels)} judged queries are not in queries.jsonl; "
                        "they are left out of the averages")  # fmt: skip
    empty = sorted(q for q, text in queries.items() if not text.strip())
    if empty and len(empty) == len(queries):
        raise DataError(f"{root / 'queries.jsonl'}: every one of the {len(queries)} queries judged in {path} has "
                        f"an empty text (e.g. {empty[0]!r}); the file is broken (wrong field?)")  # fmt: skip
    if empty:
        warnings.append(f"{root / 'queries.jsonl'}: {len(empty)} of {len(queries)} judged queries have an empty "
                        f"text (e.g. {empty[0]!r}); they are searched with an empty prompt")  # fmt: skip
    return warnings


def _remembered(memo_dir: Path | None, fields: dict, run) -> list[str]:
    """``run()``'s warnings, or those remembered for the same file contents."""
    memo = None if memo_dir is None else Path(memo_dir) / f"{make_key('check', fields)}.json"
    if memo is not None and memo.is_file():
        try:
            return list(json.loads(memo.read_text())["warnings"])
        except (OSError, ValueError, KeyError):
            pass
    warnings = run()
    if memo is not None and not any(str(v).startswith("unknown") for v in fields.values()):
        try:
            atomic_write(memo, json.dumps({"fields": fields, "warnings": warnings}))
        except OSError:
            pass  # a read-only cache: check again next time
    return warnings


def check_corpus(root: str | os.PathLike, memo_dir: Path | None = None) -> list[str]:
    """A knowledge corpus: not empty, unique doc ids (remembered per content)."""
    root = Path(root)
    fields = {"v": VERSION, "corpus": content_identity(root / "corpus.jsonl", memo_dir)}

    def run() -> list[str]:
        corpus_id_hashes(root)  # raises when the corpus is unusable; nothing to warn about otherwise
        return []

    return _remembered(memo_dir, fields, run)


def check_dataset(root: str | os.PathLike, split: str, memo_dir: Path | None = None) -> list[str]:
    """An evaluated dataset: its corpus, the split's qrels against it, their queries. Returns warning
    lines (also logged); raises :class:`DataError` where the data would make metrics wrong."""
    root = Path(root)
    fields = {"v": VERSION, "split": split,
              **{name: content_identity(root / name, memo_dir)
                 for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv")}}  # fmt: skip
    warnings = _remembered(memo_dir, fields, lambda: _qrels_warnings(root, split, corpus_id_hashes(root)))
    for w in warnings:
        log.warning("data: %s", w)
    return warnings
