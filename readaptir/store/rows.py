"""Per-passage data of a whole corpus without a Python object per passage.

MS-MARCO has 8.84M passages: a ``list[str]`` of its ids costs ≈ 540 MB, a list of token-id lists several
GB, and reading an index through ``np.memmap`` leaves every page it touched in the process's resident set.
These containers keep memory bounded by one block or chunk at any corpus size:

- :class:`LineIds`: the ids of a one-id-per-line file, streamed (``for``), looked up in one pass
  (:meth:`LineIds.lookup`), or indexed at random (line offsets, 8 bytes per line, built on first use);
- :class:`RowFile`: a row-major matrix file read and written with plain file I/O (no mapping);
- :class:`Ragged`: variable-length integer rows as one flat array plus offsets.

    ids = LineIds(path / "ids.txt", n)
    names = ids.lookup(top_rows)            # {row: doc id}, one sequential pass
    RowFile(path / "embeddings.f16", n, dim).read(0, 65536)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

BLOCK_BYTES = 1 << 24  # bytes read at a time when scanning a file


class LineIds(Sequence[str]):
    """The first ``n`` lines of a UTF-8 file (no line terminators), without holding them in memory."""

    def __init__(self, path: str | os.PathLike, n: int) -> None:
        self.path, self.n = Path(path), int(n)

    def __len__(self) -> int:
        return self.n

    def _blocks(self) -> Iterator[tuple[int, bytes, np.ndarray]]:
        """``(first line number, bytes, end of each complete line)``; the last line may lack its newline."""
        first, buf = 0, b""
        with open(self.path, "rb") as f:
            while first < self.n:
                block = f.read(BLOCK_BYTES)
                buf += block
                ends = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10)
                if not block:  # end of file: what is left is the last line
                    ends = np.append(ends, len(buf))
                ends = ends[: self.n - first]
                yield first, buf, ends
                if not block:
                    break
                cut = int(ends[-1]) + 1 if len(ends) else 0
                first, buf = first + len(ends), buf[cut:]

    def __iter__(self) -> Iterator[str]:
        for _, buf, ends in self._blocks():
            start = 0
            for end in ends.tolist():
                yield buf[start:end].decode("utf-8")
                start = end + 1

    def lookup(self, rows: np.ndarray) -> dict[int, str]:
        """``{row: id}`` for the given row numbers (negative ones ignored), in one pass over the file."""
        want = np.unique(np.asarray(rows, dtype=np.int64).ravel())
        want = want[(want >= 0) & (want < self.n)]
        out: dict[int, str] = {}
        for first, buf, ends in self._blocks():
            lo, hi = np.searchsorted(want, [first, first + len(ends)])
            for r in want[lo:hi].tolist():
                k = r - first
                start = int(ends[k - 1]) + 1 if k else 0
                out[r] = buf[start : int(ends[k])].decode("utf-8")
            if hi == len(want):
                break
        return out

    @cached_property
    def _starts(self) -> np.ndarray:
        """Byte offset of every line (and one past the last): built once, for random access."""
        parts, base = [np.zeros(1, dtype=np.int64)], 0
        for _, _, ends in self._blocks():
            parts.append(base + ends.astype(np.int64) + 1)
            base += int(ends[-1]) + 1 if len(ends) else 0
        starts = np.concatenate(parts)[: self.n + 1]
        if len(starts) != self.n + 1:
            raise ValueError(f"{self.path}: {len(starts) - 1} lines, expected {self.n}")
        return starts

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"line {i} of {self.n}")
        a, b = int(self._starts[i]), int(self._starts[i + 1]) - 1
        with open(self.path, "rb") as f:
            f.seek(a)
            return f.read(b - a).rstrip(b"\n").decode("utf-8")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (LineIds, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LineIds({str(self.path)!r}, n={self.n})"


class RowFile:
    """A ``[n, dim]`` matrix stored row-major in a file, read and written by rows with plain file I/O.

    Unlike a memory map, what was read or written does not stay in the process's resident set: reading a
    72 GB index needs the memory of one block, not of the file."""

    def __init__(self, path: str | os.PathLike, n: int, dim: int, dtype=np.float16) -> None:
        self.path, self.n, self.dim, self.dtype = Path(path), int(n), int(dim), np.dtype(dtype)
        self.row_bytes = self.dim * self.dtype.itemsize

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.dim

    def __len__(self) -> int:
        return self.n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (clipped to the matrix), a fresh array."""
        stop = min(stop, self.n)
        count = max(stop - start, 0) * self.dim
        if not count:
            return np.zeros((0, self.dim), dtype=self.dtype)
        rows = np.fromfile(self.path, dtype=self.dtype, count=count, offset=start * self.row_bytes)
        return rows.reshape(-1, self.dim)

    def __getitem__(self, i: slice) -> np.ndarray:
        start, stop, step = i.indices(self.n)
        if step != 1:
            raise ValueError("RowFile reads contiguous rows only")
        return self.read(start, stop)

    def write(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Write ``vectors[j]`` at row ``rows[j]`` (converted to the file's dtype), contiguous runs at once."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        rows, vectors = rows[order], np.ascontiguousarray(vectors[order], dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for a, b in itertools.pairwise([0, *breaks.tolist(), len(rows)]):
                os.pwrite(fd, vectors[a:b].tobytes(), int(rows[a]) * self.row_bytes)
        finally:
            os.close(fd)


class Ragged(Sequence[list[int]]):
    """Variable-length integer rows as one flat int32 array and int64 offsets; ``rows[i]`` is a list."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat, self.offsets = flat, offsets

    @classmethod
    def of(cls, rows: Sequence[Sequence[int]]) -> Ragged:
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)

    @classmethod
    def concat(cls, parts: Sequence[Ragged]) -> Ragged:
        if not parts:
            return cls(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
        bases = np.cumsum([0] + [int(p.offsets[-1]) for p in parts[:-1]])
        offsets = np.concatenate(
            [parts[0].offsets[:1]] + [p.offsets[1:] + b for p, b in zip(parts, bases, strict=True)]
        )
        return cls(np.concatenate([p.flat for p in parts]), offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.flat[self.offsets[i] : self.offsets[i + 1]].tolist()
