"""Which code made a result: the git commit of the readaptir checkout and the versions of the packages
that change numbers. Written into every ``results.json`` and every W&B run's config.

    provenance()  # {"git_commit": "6da3a00…" (+ "-dirty"), "versions": {"readaptir": "0.1.0", "torch": …}}
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent
# The distributions whose version can change a number (the faiss flavours: whichever is installed).
DISTRIBUTIONS = ("readaptir", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors",
                 "pytrec-eval-terrier", "bm25s", "numpy", "scipy", "sentence-transformers", "faiss-cpu",
                 "faiss-gpu", "wandb", "hydra-core")  # fmt: skip


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this package runs from (``-dirty`` with uncommitted changes to tracked
    files); None for an installed wheel, or a package that merely sits inside some other repository."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or (Path(top) / "readaptir" / "__init__.py").resolve() != PACKAGE / "__init__.py":
        return None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    return commit + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Installed versions of :data:`DISTRIBUTIONS` (absent ones left out), plus Python and CUDA."""
    versions = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        versions["cuda"] = str(torch.version.cuda or "none")
    except ImportError:
        pass
    return versions


def provenance() -> dict[str, Any]:
    return {"git_commit": git_commit(), "versions": package_versions()}
