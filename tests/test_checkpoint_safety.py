"""Checkpoints in a shared cache: nothing in them runs as code, and only what was written is resumed.

A checkpoint is safetensors plus JSON with a manifest written last. A pickle planted over any of its files
is never executed (even with the manifest re-sealed to match it), a tensor changed after the fact is a
digest mismatch, a NaN checkpoint is never resumed and never called good; each skips to the checkpoint
before with one warning, or restarts from step 0 with one warning.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train import ADAPTER, _kill_at, one_thread, train_cfg  # noqa: F401 - one_thread: a fixture

from readaptir.grid.keys import tokens_key
from readaptir.store.artifacts import ArtifactStore
from readaptir.train.checkpoint import FORMAT, MANIFEST, _hashes, checkpoints
from readaptir.train.knowledge import train_knowledge_adapter
from readaptir.train.tokens import TokenCache, ensure_token_cache

CFG = train_cfg(batch_size=4, checkpoint_every=2)  # 40 passages: 10 steps, checkpoints at 2, 4, 6, 8


class Payload:
    """Unpickling this creates ``marker``: the proof that a reader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_bytes(marker: Path, torch_format: bool = True) -> bytes:
    """A planted file: ``torch.save`` format (what ``torch.load`` reads) or a plain pickle."""
    if not torch_format:
        return pickle.dumps(Payload(marker))
    import io

    buf = io.BytesIO()
    torch.save({"state": Payload(marker)}, buf)
    return buf.getvalue()


def test_the_payload_runs_when_unpickled(tmp_path):
    """The planted files below would create the marker if any reader unpickled them."""
    marker = tmp_path / "ran"
    import io

    torch.load(io.BytesIO(payload_bytes(marker)), weights_only=False)  # the call this module forbids
    assert marker.exists()


def reseal(ckpt: Path) -> None:
    """Rewrite a checkpoint's manifest to match its files: what someone who can write the cache can do."""
    manifest = {"format": FORMAT, "step": int(ckpt.name.split("-")[1]), "files": _hashes(ckpt)}
    (ckpt / MANIFEST).write_text(json.dumps(manifest))


def _train(tiny_llama, toy_cache, out: Path, work: Path, **kw) -> dict:
    return train_knowledge_adapter(tiny_llama.pretrained, toy_cache, ADAPTER, CFG, out, work, **kw)


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory, tiny_llama, toy_dir) -> TokenCache:
    store = ArtifactStore(tmp_path_factory.mktemp("store"))
    return ensure_token_cache(
        store, tokens_key(tiny_llama.pretrained, toy_dir), tiny_llama.pretrained, toy_dir
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama, toy_cache) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("ref")
    _train(tiny_llama, toy_cache, root / "out", root / "work")
    return load_file(root / "out" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_llama, toy_cache) -> Path:
    """A work folder of a run killed at step 5: checkpoints at steps 4 and 2."""
    work = tmp_path_factory.mktemp("killed") / "work"
    hook, exc = _kill_at(5)
    with pytest.raises(exc):
        _train(tiny_llama, toy_cache, work.parent / "out", work, on_step=hook)
    assert [c.name for c in checkpoints(work)] == ["ckpt-000000004", "ckpt-000000002"]
    return work


def _copy(work: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(work, to)
    return to


def _resume(tiny_llama, toy_cache, work: Path, caplog) -> tuple[dict, list[str], dict]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="readaptir.train.checkpoint"):
        stats = _train(tiny_llama, toy_cache, work.parent / "out", work)
    warnings = [r.getMessage() for r in caplog.records if r.name == "readaptir.train.checkpoint"]
    return stats, warnings, load_file(work.parent / "out" / "adapter_model.safetensors")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


@pytest.mark.slow
def test_a_planted_pickle_in_any_checkpoint_file_never_runs(tmp_path, tiny_llama, toy_cache, killed, caplog):
    files = sorted(p.name for p in (killed / "ckpt-000000004").iterdir())
    assert {"state.json", "state.safetensors", "adapter.safetensors", "rng-0.json", MANIFEST} <= set(files)
    for i, name in enumerate(files):
        for sealed in (False, True):  # manifest left as is, or rewritten to match the planted file
            work = _copy(killed, tmp_path / f"{i}-{sealed}" / "work")
            marker = tmp_path / f"ran-{i}-{sealed}"
            (work / "ckpt-000000004" / name).write_bytes(payload_bytes(marker, torch_format=i % 2 == 0))
            if sealed and name != MANIFEST:
                reseal(work / "ckpt-000000004")
            stats, warnings, _ = _resume(tiny_llama, toy_cache, work, caplog)
            assert not marker.exists(), f"a pickle planted in {name} was executed"
            assert stats["resumed_from_step"] == 2, name  # the checkpoint before
            assert len(warnings) == 1 and "ckpt-000000004" in warnings[0], (name, warnings)


@pytest.mark.slow
def test_pickles_in_every_checkpoint_file_restart_from_zero(
    tmp_path, tiny_llama, toy_cache, killed, reference, caplog
):
    work = _copy(killed, tmp_path / "work")
    marker = tmp_path / "ran"
    for ckpt in checkpoints(work):
        for f in ckpt.iterdir():
            f.write_bytes(payload_bytes(marker))
        (ckpt / "state.pt").write_bytes(payload_bytes(marker))  # the old format's files, too
        (ckpt / "rng-0.pt").write_bytes(payload_bytes(marker))
    stats, warnings, adapter = _resume(tiny_llama, toy_cache, work, caplog)
    assert not marker.exists()
    assert stats["resumed_from_step"] == 0 and _same(adapter, reference)
    assert len(warnings) == 1 and "starts from step 0" in warnings[0]


@pytest.mark.slow
def test_scaled_weights_with_the_manifest_left_as_is_are_detected(
    tmp_path, tiny_llama, toy_cache, killed, reference, caplog
):
    work = _copy(killed, tmp_path / "work")
    path = work / "ckpt-000000004" / "adapter.safetensors"
    save_file({k: v * 50 for k, v in load_file(path).items()}, str(path))
    stats, warnings, adapter = _resume(tiny_llama, toy_cache, work, caplog)
    assert stats["resumed_from_step"] == 2 and _same(adapter, reference)
    assert len(warnings) == 1 and "adapter.safetensors differs" in warnings[0] and "digest" in warnings[0]


@pytest.mark.slow
def test_a_nan_checkpoint_is_never_resumed_nor_called_good(
    tmp_path, tiny_llama, toy_cache, killed, reference, caplog
):
    work = _copy(killed, tmp_path / "work")
    for ckpt in checkpoints(work):  # NaN weights, manifest re-sealed: only the values give it away
        path = ckpt / "adapter.safetensors"
        save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(path).items()}, str(path))
        reseal(ckpt)
    stats, warnings, adapter = _resume(tiny_llama, toy_cache, work, caplog)
    assert stats["resumed_from_step"] == 0 and _same(adapter, reference)
    assert len(warnings) == 1, warnings
    assert "NaN" in warnings[0] and "starts from step 0" in warnings[0] and "good" not in warnings[0]


@pytest.mark.slow
def test_a_nan_newest_checkpoint_falls_back_to_the_one_before(
    tmp_path, tiny_llama, toy_cache, killed, reference, caplog
):
    work = _copy(killed, tmp_path / "work")
    ckpt = work / "ckpt-000000004"
    path = ckpt / "adapter.safetensors"
    tensors = load_file(path)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone()
    tensors[first].view(-1)[0] = float("inf")
    save_file(tensors, str(path))
    reseal(ckpt)
    stats, warnings, adapter = _resume(tiny_llama, toy_cache, work, caplog)
    assert stats["resumed_from_step"] == 2 and _same(adapter, reference)
    assert len(warnings) == 1 and first in warnings[0] and "good" not in warnings[0]


def test_adapter_bin_is_read_as_tensors_only_and_safetensors_win(tmp_path):
    from readaptir.readapt.weights import ADAPTER_CONFIG, ReadaptError, load_adapter, read_json

    folder, marker = tmp_path / "adapter", tmp_path / "ran"
    folder.mkdir()
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    for torch_format in (True, False):  # a planted .bin, torch.save format or a bare pickle
        (folder / "adapter_model.bin").write_bytes(payload_bytes(marker, torch_format))
        with pytest.raises(ReadaptError, match=r"adapter_model.bin cannot be read.*delete"):
            load_adapter(folder)
        assert not marker.exists()
    tensors = {"a.lora_A.weight": torch.ones(2, 3)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config, got = load_adapter(folder)  # the .bin beside it is not read at all
    assert config["r"] == 2 and torch.equal(got["a.lora_A.weight"], tensors["a.lora_A.weight"])
    torch.save(tensors, folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    assert torch.equal(load_adapter(folder)[1]["a.lora_A.weight"], tensors["a.lora_A.weight"])
    (folder / ADAPTER_CONFIG).write_bytes(payload_bytes(marker))
    with pytest.raises(ReadaptError, match=r"adapter_config.json cannot be read"):
        read_json(folder / ADAPTER_CONFIG)
    assert not marker.exists()


def test_state_codec_round_trips_rng_and_optimizer_states_exactly(tmp_path):
    import random

    import numpy as np

    from readaptir.train.state_codec import StateFormatError, load_state, save_state

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)  # a cached gaussian in numpy's state
    moments = torch.randn(3, 2)
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "optimizer": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": moments}},
                           "param_groups": [{"lr": 1 / 3, "betas": (0.9, 0.999), "params": [0]}]}}  # fmt: skip
    save_state(tmp_path, "s", state)
    back = load_state(tmp_path, "s")
    want = (random.random(), np.random.normal(), torch.rand(1))
    random.setstate(back["python"]), np.random.set_state(back["numpy"]), torch.set_rng_state(back["torch"])
    assert (random.random(), np.random.normal(), torch.rand(1)) == want
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]  # tuples, 1/3 exactly
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    (tmp_path / "s.json").write_text(json.dumps({"__tensor__": "nowhere"}))
    with pytest.raises(StateFormatError, match="nowhere"):
        load_state(tmp_path, "s")
