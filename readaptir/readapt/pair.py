"""A retriever and the pretrained model it was fine-tuned from: found, and checked to be a pair.

A PEFT retriever records its base (``base_model_name_or_path``); a full-weight one does not, so the user
names it. A pair whose tensors differ in name or shape is refused before anything is trained (the
arithmetic would refuse it too, but only after the knowledge adapter). Used by ``readaptir adapt`` and
``readaptir evaluate`` (:mod:`readaptir.grid.adapt`, :mod:`readaptir.grid.compare`).
"""

from __future__ import annotations

import json
from pathlib import Path

from readaptir.config import ConfigError
from readaptir.readapt.weights import (
    ReadaptError,
    check_same_tensors,
    is_adapter_folder,
    layout,
    load_adapter,
)
from readaptir.store.identity import split_revision


def base_of(retriever: Path, given: str | None) -> str:
    """The pretrained model the retriever was fine-tuned from: ``given``, else what its PEFT config records."""
    if given:
        return given
    if is_adapter_folder(retriever):
        recorded = json.loads((retriever / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if recorded:
            return str(recorded)
    raise ConfigError(f"retriever {retriever} does not record its pretrained base (full weights, no PEFT "
                      "base_model_name_or_path); pass pretrained=<hub id or folder> it was fine-tuned from")  # fmt: skip


def plan_models(retriever: str, pretrained: str | None) -> tuple[str, str]:
    """``(pretrained, retriever kind)`` without fetching weights: a local folder is read, a Hub retriever's
    ``adapter_config.json`` alone is fetched (a full-weight one needs ``pretrained=`` anyway)."""
    local = Path(retriever).expanduser()
    if local.is_dir():
        return base_of(local, pretrained), "lora" if is_adapter_folder(local) else "full"
    from huggingface_hub import hf_hub_download

    repo, revision = split_revision(retriever)
    try:
        config = Path(hf_hub_download(repo, "adapter_config.json", revision=revision))
    except Exception:  # noqa: BLE001 - no adapter config (full weights) or no network: pretrained= decides
        if pretrained:
            return pretrained, "full"
        raise ConfigError(f"retriever={retriever}: its PEFT adapter_config.json could not be fetched; "
                          "pass pretrained=<the model it was fine-tuned from>") from None  # fmt: skip
    base = pretrained or json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"retriever={retriever} records no base; pass pretrained=<hub id or folder>")
    return str(base), "lora"


def check_pair(pretrained: Path, retriever: Path) -> None:
    """Refuse, before any training, a retriever whose tensors do not match the pretrained model's."""
    pre = layout(pretrained)
    try:
        if not is_adapter_folder(retriever):
            check_same_tensors(pre, layout(retriever))
            return
        _, tensors = load_adapter(retriever)
        for name, t in tensors.items():
            if ".lora_A." not in name and ".lora_B." not in name:
                continue
            target = name.split(".lora_")[0].split("layers.", 1)[-1]
            key = next((k for k in pre.shapes if k.endswith(f"layers.{target}.weight")), None)
            shape = pre.shapes.get(key) if key else None
            want = shape[1] if ".lora_A." in name else shape[0] if shape else None
            got = t.shape[1] if ".lora_A." in name else t.shape[0]
            if shape is None or got != want:
                raise ReadaptError(f"adapter tensor {name!r} {list(t.shape)} fits no tensor of {pretrained} "
                                   f"({key or 'none'} {list(shape) if shape else ''})")  # fmt: skip
    except ReadaptError as e:
        raise ReadaptError(f"retriever={retriever} and pretrained={pretrained} do not share architecture and "
                           f"shapes ({e}); pass the pretrained= model it was fine-tuned from") from None  # fmt: skip
