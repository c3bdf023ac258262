"""Safetensors shard I/O for weight arithmetic that never holds more than one shard of an input model.

RE-Adapt combines three 7B models' worth of tensors (pretrained LLM, retriever, knowledge adapter);
loading them as ``nn.Module`` s would need three models in memory. This module reads folders lazily
instead: :func:`shard_index` maps every tensor name to its shard file from the ``*.index.json`` (or the
single ``model.safetensors``), :func:`tensor_shapes` reads shapes from the headers without touching the
data, and callers open one shard at a time with ``safetensors.safe_open``. PEFT adapter folders are small
(a LoRA is ~1% of the model) and are read whole by :func:`load_adapter`.
:func:`layout` keys a folder's tensors by their ``AutoModel`` name (the causal-LM ``model.`` prefix
stripped, the LM head set aside) and :func:`read_tensor` reads one tensor, its shard mapped only meanwhile.

Real checkpoints store more than a model's state dict: ``meta-llama/Llama-2-7b-hf`` keeps the rotary
``model.layers.N.self_attn.rotary_emb.inv_freq`` (a non-persistent buffer, recomputed from the config) in its
shards, and a strict ``load_state_dict`` of the readapted weights fails on them. :func:`layout` sets such
stored buffers aside, and records the LM head of a tied model (SmolLM2 stores none) as outside.

    from readaptir.readapt.weights import shard_index, tensor_shapes
    index = shard_index("cache/tiny/llama/pretrained")   # {"model.embed_tokens.weight": "model-00001-of-00004.safetensors", ...}
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open as _safe_open

from readaptir.errors import UserError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


class ReadaptError(UserError):
    """A model/adapter combination that weight arithmetic must refuse (one line, names the culprit)."""


def _unreadable(path: Path, e: Exception) -> ReadaptError:
    return ReadaptError(
        f"{path} cannot be read ({type(e).__name__}: {str(e)[:120]}); delete {path.parent} so it is built or "
        "fetched again"
    )


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file of a model or adapter folder; damaged bytes are one :class:`ReadaptError` line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _unreadable(path, e) from None


def safe_open(path: str | os.PathLike, framework: str = "pt"):
    """``safetensors.safe_open``; a file that is not safetensors is one :class:`ReadaptError` line."""
    try:
        return _safe_open(path, framework=framework)
    except Exception as e:  # noqa: BLE001 - SafetensorError and header errors have no common base
        if isinstance(e, FileNotFoundError):
            raise
        raise _unreadable(Path(path), e) from None


def is_adapter_folder(folder: str | os.PathLike) -> bool:
    """PEFT adapter folders carry adapter_config.json; full model folders do not."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def shard_index(folder: str | os.PathLike) -> dict[str, str]:
    """Tensor name -> shard file name of a safetensors model folder (sharded or single file)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return dict(read_json(index)["weight_map"])
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


def load_adapter(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json as a dict, all adapter tensors) of a PEFT adapter folder."""
    folder = Path(folder)
    if not is_adapter_folder(folder):
        raise ReadaptError(f"not a PEFT adapter folder (no {ADAPTER_CONFIG}): {folder}")
    config = read_json(folder / ADAPTER_CONFIG)
    st = folder / "adapter_model.safetensors"
    if st.is_file():
        with safe_open(st, framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    elif (folder / "adapter_model.bin").is_file():  # older adapters (RepLLaMA on the hub ships .bin)
        tensors = _load_bin(folder / "adapter_model.bin")
    else:
        raise ReadaptError(f"no adapter_model.safetensors or adapter_model.bin in {folder}")
    return config, tensors


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, tensors only: ``weights_only=True`` refuses anything that would run code."""
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError for a planted object, zip errors for damage
        raise _unreadable(path, e) from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ReadaptError(f"{path} holds no state dict of tensors; delete {path.parent} to fetch it again")
    return tensors


@dataclass
class Layout:
    """Where the transformer's tensors live in a folder and what they are called in AutoModel naming."""

    folder: Path
    files: dict[str, tuple[str, str]]  # AutoModel key -> (shard file, stored tensor name)
    shapes: dict[str, tuple[int, ...]]  # AutoModel key -> shape
    outside: set[str]  # names outside the transformer (lm_head, stored or tied), AutoModel naming impossible
    buffers: list[str] = field(default_factory=list)  # stored non-persistent buffers, set aside


@dataclass(frozen=True)
class Architecture:
    """What a folder's config says about its tensors, read on the meta device (no weights loaded)."""

    prefix: str  # ``base_model_prefix``: causal-LM folders store ``model.layers...``
    buffer_leaves: frozenset[str]  # leaf names of non-persistent buffers (``inv_freq`` ...)
    head: frozenset[str]  # causal-LM tensors outside the transformer (``lm_head.weight``), tied or not


def architecture(folder: Path) -> Architecture:
    """The folder's :class:`Architecture`; an unreadable config falls back to the LLaMA family's."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
        with init_empty_weights(include_buffers=True):
            model = AutoModel.from_config(config)
            causal = set(AutoModelForCausalLM.from_config(config).state_dict())
    except Exception:  # unknown/remote architecture: LLaMA-family default
        return Architecture("model", frozenset({"inv_freq"}), frozenset({"lm_head.weight"}))
    prefix = model.base_model_prefix
    persistent = set(model.state_dict())
    leaves = frozenset(n.rsplit(".", 1)[-1] for n, _ in model.named_buffers() if n not in persistent)
    return Architecture(prefix, leaves, frozenset(k for k in causal if not k.startswith(prefix + ".")))


def base_prefix(folder: Path) -> str:
    """``base_model_prefix`` of the architecture (``model`` for LLaMA/Mistral): causal-LM keys carry it."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(folder)
        return AutoModel._model_mapping[type(config)].base_model_prefix
    except Exception:  # unknown/remote architecture: LLaMA-family default
        return "model"


def layout(folder: Path, prefix: str | None = None) -> Layout:
    """Map a folder's stored names to AutoModel names: strip ``<prefix>.`` if the folder uses it.

    A causal-LM folder stores ``model.layers...`` + ``lm_head.weight``; an AutoModel folder (e5-Mistral)
    stores ``layers...``. Names outside the prefix in a prefixed folder (the LM head) are not transformer;
    a tied LM head is not stored at all but still counts as outside. Stored non-persistent buffers
    (Llama-2's per-layer ``rotary_emb.inv_freq``) are no parameters: set aside in ``buffers``.
    """
    arch = architecture(folder)
    prefix = arch.prefix if prefix is None else prefix
    index = shard_index(folder)
    shapes = tensor_shapes(folder, index)
    dot = prefix + "."
    prefixed = any(name.startswith(dot) for name in index)
    files, out_shapes, outside, buffers = {}, {}, set(arch.head) if prefixed else set(), []
    for name, shard in index.items():
        if name.rsplit(".", 1)[-1] in arch.buffer_leaves:
            buffers.append(name)
            continue
        if prefixed and not name.startswith(dot):
            outside.add(name)
            continue
        key = name[len(dot) :] if prefixed else name
        files[key] = (shard, name)
        out_shapes[key] = shapes[name]
    if buffers:
        log.info("%s: %d stored non-persistent buffers set aside (e.g. %s)", folder, len(buffers), buffers[0])
    return Layout(folder, files, out_shapes, outside, buffers)


def check_same_tensors(pre: Layout, ret: Layout) -> None:
    """Refuse a retriever whose tensor names or shapes differ from the pretrained model's (first mismatch)."""
    for key in pre.files:
        if key not in ret.files:
            raise ReadaptError(
                f"retriever {ret.folder} lacks tensor {key!r} of pretrained {pre.folder}: "
                "not fine-tuned from this model"
            )
        if ret.shapes[key] != pre.shapes[key]:
            raise ReadaptError(
                f"tensor {key!r} has shape {list(ret.shapes[key])} in retriever {ret.folder} but "
                f"{list(pre.shapes[key])} in pretrained {pre.folder}: not fine-tuned from this model"
            )
    for key in ret.files:
        if key not in pre.files:
            raise ReadaptError(
                f"retriever {ret.folder} has tensor {key!r} that pretrained {pre.folder} lacks: "
                "not fine-tuned from this model"
            )


def read_tensor(path: Path, name: str) -> torch.Tensor:
    """One tensor as a float32 copy, its shard mapped only for the read.

    Reopening per tensor costs a header parse (milliseconds) but unmaps the file right away: pages of a
    shard kept mapped count towards RSS, so holding a pretrained and a retriever shard open would add two
    shards (2 × ~5–10 GB at 7B) to the peak instead of one tensor.
    """
    with safe_open(path, framework="pt") as f:
        return f.get_tensor(name).float()


def automodel_keys(config) -> list[str]:
    """State-dict keys of ``AutoModel.from_config(config)`` in module order, built on the meta device (free)."""
    from accelerate import init_empty_weights
    from transformers import AutoModel

    with init_empty_weights(include_buffers=True):
        return list(AutoModel.from_config(config).state_dict())


def retriever_config(pretrained: Path, retriever: Path):
    """The AutoModel config: the retriever's own for a full folder, the pretrained one under a LoRA."""
    from transformers import AutoConfig

    folder = pretrained if is_adapter_folder(retriever) else retriever
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:  # transformers: "not a valid JSON file", unknown model_type
        raise _unreadable(Path(folder) / "config.json", e) from None
