"""TREC run files: the product of a retrieval, stored once and scored as often as needed.

``qid Q0 docid rank score tag`` per line, ranks by score. Scores are written with ``repr`` so a run read
back holds the identical floats (a rescored run gives bit-identical metrics). Written atomically: an
MS-MARCO run has 7M lines, and a killed job must never leave half of them behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from readaptir.data.beir import DataError
from readaptir.errors import NonFiniteError
from readaptir.fs import atomic_write_lines
from readaptir.retrieval.base import Run

RUN_FILE = "run.trec"


def write_run(
    path: str | os.PathLike, run: Mapping[str, Mapping[str, float]], tag: str = "readaptir"
) -> Path:
    """Write ``run`` as a TREC run file (atomically; a NaN or infinite score is refused); returns the path."""

    def lines() -> Iterator[str]:
        for qid, docs in run.items():
            for rank, (did, score) in enumerate(sorted(docs.items(), key=lambda kv: -kv[1]), 1):
                if not math.isfinite(score):
                    raise NonFiniteError(
                        f"{path}: score {score} for doc {did!r} of query {qid!r}; not stored"
                    )
                yield f"{qid} Q0 {did} {rank} {score!r} {tag}\n"  # repr: reloads to the identical float

    atomic_write_lines(path, lines())
    return Path(path)


def read_run(path: str | os.PathLike) -> Run:
    """Read a TREC run file back into ``{qid: {doc id: score}}``."""
    run: Run = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise DataError(
                    f"{path}:{lineno}: expected 'qid Q0 docid rank score tag', got {line.strip()!r}"
                )
            try:
                score = float(parts[4])
            except ValueError:
                score = math.nan
            if not math.isfinite(score):
                raise DataError(f"{path}:{lineno}: score {parts[4]!r} is not a finite number")
            run.setdefault(parts[0], {})[parts[2]] = score
    return run
