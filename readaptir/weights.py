"""Safetensors shard I/O for weight arithmetic that never holds more than one shard of an input model.

RE-Adapt combines three 7B models' worth of tensors (pretrained LLM, retriever, knowledge adapter);
loading them as ``nn.Module`` s would need three models in memory. This module reads folders lazily
instead: :func:`shard_index` maps every tensor name to its shard file from the ``*.index.json`` (or the
single ``model.safetensors``), :func:`tensor_shapes` reads shapes from the headers without touching the
data, and callers open one shard at a time with ``safetensors.safe_open``. PEFT adapter folders are small
(a LoRA is ~1% of the model) and are read whole by :func:`load_adapter`.

    from readaptir.weights import shard_index, tensor_shapes
    index = shard_index("cache/tiny/llama/pretrained")   # {"model.embed_tokens.weight": "model-00001-of-00004.safetensors", ...}
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from readaptir.errors import UserError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# Hub cache snapshots live under .../models--<org>--<name>/snapshots/<hash>: the hub id is recoverable.
_HUB_CACHE_RE = re.compile(r"models--([^/\\]+?)--([^/\\]+?)(?:[/\\]|$)")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ReadaptError(UserError):
    """A model/adapter combination that weight arithmetic must refuse (one line, names the culprit)."""


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id fetched with ``huggingface_hub.snapshot_download``.

    Only weights in safetensors, configs and tokenizer files are fetched (no ``.bin`` duplicates).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    if not _HUB_ID_RE.match(str(name_or_path)):
        raise ReadaptError(f"model folder not found: {name_or_path}")
    from huggingface_hub import snapshot_download

    # adapter_model.bin: older PEFT adapters, RepLLaMA's among them, ship no safetensors.
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "adapter_model.bin"]
    return Path(snapshot_download(str(name_or_path), allow_patterns=patterns))


def hub_id(name_or_path: str | os.PathLike | None) -> str | None:
    """The hub id a model reference denotes, or None for a plain local path (cannot be compared)."""
    if name_or_path is None:
        return None
    text = str(name_or_path)
    m = _HUB_CACHE_RE.search(text)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if Path(text).expanduser().exists() or text.startswith(("/", ".", "~")):
        return None
    return text if _HUB_ID_RE.match(text) else None


def is_adapter_folder(folder: str | os.PathLike) -> bool:
    """PEFT adapter folders carry adapter_config.json; full model folders do not."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def shard_index(folder: str | os.PathLike) -> dict[str, str]:
    """Tensor name -> shard file name of a safetensors model folder (sharded or single file)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    single = folder / "model.safetensors"
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {name: single.name for name in f.keys()}
    raise ReadaptError(f"no safetensors weights in {folder} (expected model.safetensors[.index.json])")


def tensor_shapes(
    folder: str | os.PathLike, index: dict[str, str] | None = None
) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor, read from the shard headers only (no tensor data is loaded)."""
    folder = Path(folder)
    index = shard_index(folder) if index is None else index
    by_shard: dict[str, list[str]] = {}
    for name, shard in index.items():
        by_shard.setdefault(shard, []).append(name)
    shapes: dict[str, tuple[int, ...]] = {}
    for shard, names in by_shard.items():
        with safe_open(folder / shard, framework="pt") as f:
            for name in names:
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return {name: shapes[name] for name in index}  # keep the index's (= the model's) order


def shard_bytes(folder: str | os.PathLike) -> dict[str, int]:
    """Size on disk of each shard file, for logging and memory budgeting."""
    folder = Path(folder)
    return {shard: (folder / shard).stat().st_size for shard in sorted(set(shard_index(folder).values()))}


def load_adapter(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json as a dict, all adapter tensors) of a PEFT adapter folder."""
    folder = Path(folder)
    if not is_adapter_folder(folder):
        raise ReadaptError(f"not a PEFT adapter folder (no {ADAPTER_CONFIG}): {folder}")
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    st = folder / "adapter_model.safetensors"
    if st.is_file():
        with safe_open(st, framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    elif (folder / "adapter_model.bin").is_file():  # older adapters (RepLLaMA on the hub ships .bin)
        tensors = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ReadaptError(f"no adapter_model.safetensors or adapter_model.bin in {folder}")
    return config, tensors
