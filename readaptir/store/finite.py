"""Nothing non-finite is published: weights, embeddings and scores are checked before they are stored.

A NaN in a knowledge adapter spreads into every readapted weight, then into every embedding, and a
search over NaN scores returns nothing: metrics of 0 with ``status: done``. These checks run once at
publish time (one pass over the tensors or rows, no host sync per training step) and raise
:class:`~readaptir.errors.NonFiniteError` naming the file and the first bad tensor or row.

    check_finite_tensors(model.state_dict(), "readapted weights")
    check_finite_rows(matrix, ids, path / "embeddings.f16")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from readaptir.errors import NonFiniteError

ROWS_PER_CHECK = 65536


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse a state dict with a NaN or infinite entry, naming the tensors."""
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteError(f"{what}: tensor {bad[0]}{more} holds NaN or infinite values; nothing is stored")


def check_finite_safetensors(path: str | os.PathLike) -> None:
    """Refuse a safetensors file (a trained adapter) with a NaN or infinite weight."""
    from safetensors.torch import load_file

    check_finite_tensors(load_file(str(path)), str(path))


def check_finite_rows(matrix: np.ndarray, ids: Sequence[str], where: str | Path) -> None:
    """Refuse an embedding matrix with a NaN or infinite row, naming the first document and the count."""
    bad_rows = 0
    first = None
    for start in range(0, len(ids), ROWS_PER_CHECK):
        rows = np.asarray(matrix[start : start + ROWS_PER_CHECK])
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if len(bad) and first is None:
            first = start + int(bad[0])
        bad_rows += len(bad)
    if bad_rows:
        raise NonFiniteError(
            f"{where}: {bad_rows} of {len(ids)} embeddings hold NaN or infinite values (first: doc "
            f"{ids[first]!r}, row {first}); the model produced them, nothing is stored"
        )
