"""readaptir: RE-AdaptIR (Fleshman & Van Durme, 2024) as a Hydra-configured experiment framework.

A retriever fine-tuned from a pretrained LLM is rebuilt as ``W_pre + alpha·Ψ + beta·Δ``: Δ is the
retriever's own delta (the RE-adapter), Ψ a DoRA knowledge adapter trained by next-token prediction on
unlabeled passages of a target corpus. The command line is ``python run.py`` (see README.md); the
Python API:

    readapt_weights(pretrained, retriever, knowledge_adapter, alpha=0.5)   # state dict of W
    build_readapted_model(...), save_readapted(out_dir, ...)               # as an AutoModel / a folder
    train_knowledge_adapter(pretrained, token_cache, recipe, settings, out_dir, work_dir)
    evaluate_hf_retriever(model, tokenizer, "data/scifact")                # BeIR metrics of any retriever
    evaluate_run(qrels, run), paired_test(per_query_a, per_query_b)

Layers, lowest first (a module imports only from its own layer or lower ones; tests/test_layers.py):
errors, runtime, fs, attention → config, data, store, tracking → models → readapt, retrieval, evaluate →
train, harness → grid → report.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public API, imported on first use: `import readaptir.attention...` (the GPU benchmark on a bare CUDA
# image) must not pull in pydantic, Hydra or W&B through this file.
_API = {
    "build_readapted_model": "readaptir.readapt.model",
    "evaluate_hf_retriever": "readaptir.harness",
    "evaluate_run": "readaptir.evaluate",
    "load_base_retriever": "readaptir.readapt.model",
    "paired_test": "readaptir.evaluate",
    "readapt": "readaptir.readapt.arithmetic",
    "readapt_weights": "readaptir.readapt.arithmetic",
    "save_readapted": "readaptir.readapt.model",
    "train_knowledge_adapter": "readaptir.train.knowledge",
}

if TYPE_CHECKING:
    from readaptir.evaluate import evaluate_run, paired_test
    from readaptir.harness import evaluate_hf_retriever
    from readaptir.readapt.arithmetic import readapt, readapt_weights
    from readaptir.readapt.model import build_readapted_model, load_base_retriever, save_readapted
    from readaptir.train.knowledge import train_knowledge_adapter


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'readaptir' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"
__all__ = [
    "build_readapted_model",
    "evaluate_hf_retriever",
    "evaluate_run",
    "load_base_retriever",
    "paired_test",
    "readapt",
    "readapt_weights",
    "save_readapted",
    "train_knowledge_adapter",
]
