"""Shared fixtures: tiny models built once per test session (offline), the toy dataset, real BeIR data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from readaptir.data.beir import RESOURCES
from readaptir.models.tiny import TinyModels, ensure_tiny

# Real BeIR copies for `real_data` tests: READAPTIR_DATA, set explicitly (.ci/run points it at
# ../shared/beir); without it those tests are skipped. Everything else makes its own data.
SHARED_BEIR = Path(os.environ["READAPTIR_DATA"]).resolve() if os.environ.get("READAPTIR_DATA") else None


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_llama(tiny_root) -> TinyModels:
    """Tiny LLaMA causal LM (4 shards) + RepLLaMA-style LoRA retriever over its LlamaModel."""
    return ensure_tiny("llama", tiny_root)


@pytest.fixture(scope="session")
def tiny_mistral(tiny_root) -> TinyModels:
    """Tiny Mistral causal LM (4 shards) + e5-style full-weight MistralModel retriever."""
    return ensure_tiny("mistral", tiny_root)


@pytest.fixture(scope="session")
def toy_dir() -> Path:
    return RESOURCES / "toy"


@pytest.fixture(scope="session")
def beir_dir() -> Path:
    """Real BeIR copies (SciFact, NFCorpus); tests using it carry the real_data mark."""
    if SHARED_BEIR is None or not (SHARED_BEIR / "scifact" / "corpus.jsonl").is_file():
        pytest.skip(
            f"real BeIR data not found (READAPTIR_DATA={SHARED_BEIR}): set READAPTIR_DATA=../shared/beir"
        )
    return SHARED_BEIR
