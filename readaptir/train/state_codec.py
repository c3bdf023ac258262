"""Training state (optimizer, scheduler, RNG states) as safetensors plus JSON: no pickle is ever read back.

A state dict of nested dicts, lists, tuples, numbers, strings, tensors and numpy arrays is split into a
JSON document and a flat ``{name: tensor}`` map saved as safetensors. Reading them back parses JSON and
safetensors headers only, so a file replaced by a crafted pickle is an unreadable file, never code that
runs. Tuples, non-string dict keys (the optimizer's parameter indices) and numpy arrays (numpy's RNG state)
are tagged, so the decoded state equals the saved one exactly (floats are written with ``repr``
precision, tensors bit for bit).

    doc, tensors = encode(optimizer.state_dict(), "optimizer")
    optimizer.load_state_dict(decode(doc, tensors))
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

TENSOR, TUPLE, ITEMS, ARRAY = "__tensor__", "__tuple__", "__items__", "__ndarray__"
_TAGS = (TENSOR, TUPLE, ITEMS, ARRAY)


class StateFormatError(ValueError):
    """A state document that does not decode (damaged, or not written by :func:`encode`)."""


def encode(obj: Any, name: str, tensors: dict[str, torch.Tensor] | None = None) -> tuple[Any, dict]:
    """``(JSON-able document, tensors)`` of ``obj``; tensors are named by their path below ``name``."""
    tensors = {} if tensors is None else tensors
    return _enc(obj, name, tensors), tensors


def _enc(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        # a copy: safetensors refuses tensors that share storage (views of one flat buffer)
        tensors[path] = obj.detach().to("cpu", copy=True).contiguous()
        return {TENSOR: path}
    if isinstance(obj, np.ndarray):
        return {ARRAY: obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {TUPLE: [_enc(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_enc(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _enc(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        return {ITEMS: [[_enc(k, f"{path}.k{i}", tensors), _enc(v, f"{path}.{k}", tensors)]
                        for i, (k, v) in enumerate(obj.items())]}  # fmt: skip
    raise TypeError(f"{path}: a {type(obj).__name__} cannot be checkpointed (tensors, numbers, strings only)")


def decode(doc: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The object :func:`encode` was given; :class:`StateFormatError` when ``doc`` does not decode."""
    if isinstance(doc, list):
        return [decode(v, tensors) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if TENSOR in doc:
        if doc[TENSOR] not in tensors:
            raise StateFormatError(f"tensor {doc[TENSOR]!r} is missing")
        return tensors[doc[TENSOR]]
    if ARRAY in doc:
        return np.asarray(doc[ARRAY], dtype=np.dtype(str(doc["dtype"])))
    if TUPLE in doc:
        return tuple(decode(v, tensors) for v in doc[TUPLE])
    if ITEMS in doc:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in doc[ITEMS]}
    return {k: decode(v, tensors) for k, v in doc.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, (dict, list, torch.Tensor, np.ndarray)):
        raise StateFormatError(f"a {type(key).__name__} cannot be a dict key")
    return key


def save_state(folder: Path, stem: str, obj: Any) -> None:
    """``<stem>.json`` and ``<stem>.safetensors`` of ``obj`` in ``folder`` (a temporary folder renamed
    into place by the caller, so plain writes)."""
    from safetensors.torch import save_file

    doc, tensors = encode(obj, stem)
    save_file(tensors, str(folder / f"{stem}.safetensors"))
    (folder / f"{stem}.json").write_text(json.dumps(doc), encoding="utf-8")


def load_state(folder: str | os.PathLike, stem: str) -> Any:
    """What :func:`save_state` wrote; parses JSON and safetensors only (never unpickles anything)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    tensors = load_file(str(folder / f"{stem}.safetensors"), device="cpu")
    try:
        doc = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateFormatError(f"{stem}.json is not JSON ({e})") from None
    return decode(doc, tensors)
