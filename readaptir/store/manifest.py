"""What a finished artifact holds, file by file, and a check that it still holds it.

When a product is published, every file in its folder is hashed in 4 MiB blocks with xxh3 (streamed; ≈ 7.5
GB/s in memory, so disk-bound) and the manifest records each file's size and block digests, and one
content digest over all of them. Reuse checks the folder against it:

- ``full``: every byte is read and every block compared (catches any flipped bit);
- ``sampled``: the file list and every size (catches truncation and missing files), files up to 64 MiB
  whole, and of larger files the first and last blocks plus 8 random ones (a flipped bit in a 72 GB
  embedding file is caught only if its block is drawn: 10 of 18k blocks per check);
- ``auto``: ``full`` for artifacts up to ``full_check_max_bytes``, ``sampled`` above.

    m = make_manifest(folder)
    problem = verify_manifest(folder, m, mode="auto", full_check_max_bytes=4 << 30)  # None: intact
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import xxhash

VERSION = 1
BLOCK = 4 << 20
WHOLE_FILE_MAX = 64 << 20  # sampled mode still reads files up to this size completely
SAMPLED_BLOCKS = 8  # random blocks per large file in sampled mode, besides the first and the last
SKIP = frozenset({".done"})  # the manifest's own file
LINEAGE = "made from "  # how a lineage problem starts (a consequence, logged below the warning level)
Mode = Literal["auto", "full", "sampled"]


def _block_digests(path: Path, blocks: Iterable[int] | None = None) -> dict[int, str]:
    """xxh3-64 of 4 MiB blocks of ``path`` (all of them, or only those listed)."""
    out: dict[int, str] = {}
    with open(path, "rb", buffering=0) as f:
        if blocks is None:
            i = 0
            while chunk := f.read(BLOCK):
                out[i] = xxhash.xxh3_64_hexdigest(chunk)
                i += 1
            return out
        for i in sorted(set(blocks)):
            f.seek(i * BLOCK)
            out[i] = xxhash.xxh3_64_hexdigest(f.read(BLOCK))
    return out


def hash_file(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size", "blocks", "digest"}`` of one file; the digest is xxh3-128 over its block digests."""
    path = Path(path)
    blocks = list(_block_digests(path).values())
    return {"size": path.stat().st_size, "blocks": blocks, "digest": _digest(blocks)}


def _digest(parts: Iterable[str]) -> str:
    return xxhash.xxh3_128_hexdigest("\n".join(parts).encode())


def files_of(root: str | os.PathLike) -> list[str]:
    """Relative paths of the regular files under ``root`` (sorted, the manifest's own file left out)."""
    root = Path(root)
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if rel not in SKIP:
                found.append(rel)
    return sorted(found)


def make_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Sizes and block digests of every file under ``root``, and the content digest of the whole."""
    root = Path(root)
    files = {rel: hash_file(root / rel) for rel in files_of(root)}
    content = _digest(f"{rel}\t{f['size']}\t{f['digest']}" for rel, f in files.items())
    return {"version": VERSION, "content": content, "bytes": sum(f["size"] for f in files.values()),
            "files": files}  # fmt: skip


def _blocks_to_check(n: int, size: int, mode: Literal["full", "sampled"], rng: random.Random) -> list[int]:
    if mode == "full" or size <= WHOLE_FILE_MAX or n <= SAMPLED_BLOCKS + 2:
        return list(range(n))
    return sorted({0, n - 1, *rng.sample(range(1, n - 1), SAMPLED_BLOCKS)})


def verify_manifest(
    root: str | os.PathLike,
    manifest: Mapping[str, Any],
    mode: Mode = "auto",
    full_check_max_bytes: int = 4 << 30,
    rng: random.Random | None = None,
) -> str | None:
    """None when ``root`` still matches ``manifest``; else one line saying what differs."""
    root = Path(root)
    if manifest.get("version") != VERSION or "files" not in manifest:
        return "no manifest (made by an older version)"
    if mode == "auto":
        mode = "full" if manifest.get("bytes", 0) <= full_check_max_bytes else "sampled"
    expected: Mapping[str, Any] = manifest["files"]
    present = set(files_of(root))
    if missing := sorted(set(expected) - present):
        return f"{missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    if extra := sorted(present - set(expected)):
        return f"{extra[0]} was not part of it when it was published"
    rng = rng or random.Random()
    for rel, want in expected.items():
        size = (root / rel).stat().st_size
        if size != want["size"]:
            return f"{rel} has {size:,} bytes, {want['size']:,} when published (truncated or overwritten)"
    for rel, want in expected.items():
        blocks = _blocks_to_check(len(want["blocks"]), want["size"], mode, rng)
        got = _block_digests(root / rel, blocks)
        for i in blocks:
            if got[i] != want["blocks"][i]:
                end = min((i + 1) * BLOCK, want["size"]) - 1
                return f"{rel}: bytes {i * BLOCK:,}-{end:,} differ from when it was published"
    return None


def lineage_problem(
    done: Mapping[str, Any], record_of: Callable[[str], Mapping[str, Any] | None]
) -> str | None:
    """A parent recorded in ``done`` (or one of theirs) that was rebuilt since: what was made from the old
    one must be made again. ``record_of(key)`` is a product's ``.done`` record, None when it is not in the
    store (pruned from the cache: the recorded lineage stands)."""
    for parent, made_from in (done.get("parents") or {}).items():
        pdone = record_of(parent)
        if pdone is None:
            continue
        if (pdone.get("manifest") or {}).get("build") != made_from.get("build"):
            return f"{LINEAGE}{parent}, which has been rebuilt since"
        if why := lineage_problem(pdone, record_of):
            return why
    return None
