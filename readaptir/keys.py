"""Artifact keys of a cell's products: exactly what determines each, never where it lives.

Models are identified by content (a hub id as is, a local folder by its configs and weight-file
fingerprints), so moving the cache or rebuilding the tiny models elsewhere invalidates nothing, while
a changed weight file, recipe or subset gets a new key. Unit-tested in tests/test_pipeline.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from readaptir.artifacts import ArtifactStore
from readaptir.data import KnowledgeSubset, file_fingerprint


def weights_identity(name_or_path: str | os.PathLike) -> str:
    """What a model is, independent of where it sits: a hub id as is, a local folder by its contents.

    Artifact keys use this, so moving the cache (or building the tiny models in another folder) does
    not invalidate anything, while a changed weight file does.
    """
    p = Path(str(name_or_path)).expanduser()
    if not p.is_dir():
        return str(name_or_path)
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.suffix in (".json", ".safetensors", ".bin", ".model") and not f.name.startswith("."):
            h.update(f.name.encode())
            if f.suffix in (".safetensors", ".bin"):
                h.update(file_fingerprint(f).encode())
            else:
                h.update(_stable_json(f))
    return f"local:{h.hexdigest()[:16]}"


def _stable_json(f: Path) -> bytes:
    """JSON file content without fields that only record where the file came from."""
    try:
        obj = json.loads(f.read_text())
    except ValueError:
        return f.read_bytes()
    if isinstance(obj, dict):
        for k in ("base_model_name_or_path", "_name_or_path", "transformers_version"):
            obj.pop(k, None)
    return json.dumps(obj, sort_keys=True).encode()


def base_weights_key(cfg: DictConfig, store: ArtifactStore) -> str:
    m = cfg.model
    if not m.get("readapt", True):  # baselines: the model name + its scoring settings identify it
        return store.key("weights", {k: v for k, v in OmegaConf.to_container(m).items() if k != "tiny"})
    return store.key(
        "weights",
        {
            "pretrained": weights_identity(m.pretrained),
            "retriever": weights_identity(m.retriever),
            "kind": m.retriever_kind,
        },
    )


def adapter_key(
    cfg: DictConfig,
    store: ArtifactStore,
    tokens_key: str,
    sub: KnowledgeSubset,
    relevant: frozenset[str] | None,
) -> str:
    """Exactly what determines a knowledge adapter: recipe, subset, pretrained weights, token cache."""
    from readaptir.train import adapter_key_config

    subset = {"subset": sub.subset}
    if sub.subset != "both":
        # The subset is the set of judged-relevant doc ids: hash it, not the dataset's name.
        subset["relevant"] = hashlib.sha256("\n".join(sorted(relevant or ())).encode()).hexdigest()[:16]
    # bf16 on CUDA vs float32 on CPU, and the DDP world size (it multiplies the effective batch), change
    # the trained adapter, so they are part of what determines it.
    run_env = {
        "precision": "bf16" if torch.cuda.is_available() else "fp32",
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }
    return store.key(
        "adapter",
        {
            **adapter_key_config(cfg.adapter, cfg.train),
            **subset,
            **run_env,
            "pretrained": weights_identity(cfg.model.pretrained),
        },
        parents=[tokens_key],
    )
