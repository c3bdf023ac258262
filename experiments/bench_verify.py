"""Benchmark of what verifying a cached product costs: publish-time hashing, full and sampled checks on reuse.

Why: every reuse of a cached product checks it against its manifest (readaptir/store/manifest.py). A full
check reads every byte, so its cost is the disk's read speed (xxh3 itself runs at ≈ 7.5 GB/s per core);
``store.verify=auto`` does it for artifacts up to ``store.full_check_max_gb`` and a sampled check (sizes,
first/last and 8 random 4 MiB blocks per large file) above. This script writes one artifact of ``--gb``
GiB of random bytes into ``--dir`` (default: a temporary folder there), then times:

- publishing it (the manifest hashes every byte, files still in the page cache);
- a full check with the file dropped from the page cache (``posix_fadvise(DONTNEED)``: what a later job
  on another node pays, bounded by the disk), and again with the file cached;
- a sampled check, cold.

    python experiments/bench_verify.py --gb 2 --dir cache        # on the disk that holds the cache
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from readaptir.store.artifacts import ArtifactStore

CHUNK = 64 << 20


def _drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0, help="size of the artifact (GiB)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="folder on the disk to measure")
    a = ap.parse_args()
    size = int(a.gb * 2**30)
    root = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=a.dir))
    try:
        block = os.urandom(CHUNK)

        def write(tmp: Path) -> None:
            with open(tmp / "embeddings.f16", "wb") as f:
                for start in range(0, size, CHUNK):
                    f.write(block[: min(CHUNK, size - start)])

        store = ArtifactStore(root)
        t_build = _timed(lambda: store.build("index", "index-bench", write))
        path = store.path("index-bench") / "embeddings.f16"
        full = ArtifactStore(root, verify="full")
        _drop_from_page_cache(path)
        t_cold = _timed(lambda: full.problem("index-bench"))
        t_hot = _timed(lambda: ArtifactStore(root, verify="full").problem("index-bench"))
        _drop_from_page_cache(path)
        t_sampled = _timed(lambda: ArtifactStore(root, verify="sampled").problem("index-bench"))
        assert full.valid("index-bench")
        gib = size / 2**30
        print(f"machine: {platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}); "
              f"disk of {root.parent}")  # fmt: skip
        print(f"artifact: {gib:.2f} GiB, one file")
        print(f"write + publish (manifest hashes every byte): {t_build:6.2f} s")
        print(f"full check, not in page cache:  {t_cold:6.2f} s  = {gib / t_cold:5.2f} GiB/s")
        print(f"full check, in page cache:      {t_hot:6.2f} s  = {gib / t_hot:5.2f} GiB/s")
        print(f"sampled check, not in page cache: {t_sampled * 1000:6.1f} ms")
        per_gb = t_cold / gib
        print(f"at {gib / t_cold:.2f} GiB/s: MS-MARCO's 72 GB of 4096-dim fp16 embeddings ≈ {72 * per_gb:.0f} s "
              f"per full check; store.full_check_max_gb=4 caps a check at ≈ {4 * per_gb:.0f} s")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
