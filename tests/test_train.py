"""Knowledge-adapter training: packed isolation identities, learning, resume, subsets, keys, divergence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from readaptir.config import AdapterRecipe, TrainSettings
from readaptir.data.beir import load_qrels
from readaptir.data.subsets import relevant_doc_ids
from readaptir.grid.keys import tokens_key
from readaptir.store.artifacts import ArtifactStore
from readaptir.train.batching import collate_packed, passage_ids, plan_batches
from readaptir.train.checkpoint import checkpoints, latest_checkpoint
from readaptir.train.knowledge import STATS_KEYS, train_knowledge_adapter
from readaptir.train.monitor import TrainingDiverged
from readaptir.train.tokens import TokenCache, ensure_token_cache

ADAPTER = {
    "name": "in-domain",
    "method": "dora",
    "r": 4,
    "alpha": 8,
    "dropout": 0.05,
    "targets": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
}


def train_cfg(**over) -> dict:
    cfg = {
        "batching": "paper",
        "batch_size": 4,
        "max_tokens": 64,
        "lr": 2e-3,
        "weight_decay": 0.0,
        "warmup_ratio": 0.0,
        "epochs": 1,
        "seed": 0,
        "max_grad_norm": 1.0,
        "gradient_checkpointing": False,
        "max_passages": 40,
        "checkpoint_every": 0,
        "log_every": 2,
    }
    cfg.update(over)
    return cfg


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matmuls: 2 threads on a shared 2-core box spend most of their time contending (13× slower).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory, tiny_llama, toy_dir) -> TokenCache:
    store = ArtifactStore(tmp_path_factory.mktemp("store"))
    return ensure_token_cache(
        store, tokens_key(tiny_llama.pretrained, toy_dir), tiny_llama.pretrained, toy_dir
    )


def _model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()


def _seqs(cache: TokenCache, n: int, max_tokens: int = 48) -> list[list[int]]:
    # Mixed lengths, some truncated by max_tokens (the EOS must survive the cut).
    return [passage_ids(cache.get(i), 1, 2, max_tokens) for i in range(0, 7 * n, 7)]


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_mistral"])
def test_packed_loss_is_token_weighted_mean_of_alone_losses(family, request, toy_cache):
    model = _model(request.getfixturevalue(family).pretrained)
    seqs = _seqs(toy_cache, 6)
    assert all(s[0] == 1 and s[-1] == 2 and len(s) <= 48 for s in seqs)
    assert len({len(s) for s in seqs}) > 2
    with torch.no_grad():
        packed = model(**collate_packed(seqs), use_cache=False).loss.item()
        alone = [model(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss.item() for s in seqs]
    weights = [len(s) - 1 for s in seqs]  # every token but BOS is a target
    expected = sum(w * x for w, x in zip(weights, alone, strict=True)) / sum(weights)
    assert abs(packed - expected) <= 1e-5


def test_packed_logits_equal_separate_logits(tiny_llama, toy_cache):
    model = _model(tiny_llama.pretrained)
    seqs = _seqs(toy_cache, 5)
    batch = collate_packed(seqs)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        leaky = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True
        ).logits[0]
        start = 0
        for s in seqs:
            alone = model(input_ids=torch.tensor([s]), use_cache=False).logits[0]
            assert torch.allclose(packed[start : start + len(s)], alone, atol=1e-5, rtol=0)
            start += len(s)
    # With a KV cache transformers does not isolate packed passages; the check above is sensitive.
    assert (leaky - packed).abs().max() > 1e-3


def test_packed_labels_never_cross_passages():
    batch = collate_packed([[1, 5, 6, 2], [1, 7, 2]])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 5, 6, 2, -100, 7, 2]]
    assert passage_ids(np.arange(10, 20), 1, 2, max_tokens=5) == [1, 10, 11, 12, 2]


def test_plan_batches_covers_each_passage_once_and_respects_budget():
    lengths = np.random.default_rng(0).integers(2, 300, size=500)
    for batching in ("paper", "packed"):
        order, bounds = plan_batches(lengths, batching, 4, 256, seed=3, epochs=2)
        assert sorted(order[:500].tolist()) == list(range(500)) == sorted(order[500:].tolist())
        assert not np.array_equal(order[:500], order[500:])  # reshuffled per epoch
        again = plan_batches(lengths, batching, 4, 256, seed=3, epochs=2)
        assert np.array_equal(order, again[0]) and np.array_equal(bounds, again[1])
        sizes = [lengths[order[a:b]].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if batching == "packed":
            assert max(sizes) <= 4 * 256 and np.mean(sizes) > 0.8 * 4 * 256
        else:
            assert set(np.diff(bounds).tolist()) == {4}


def test_what_determines_an_adapter():
    base = TrainSettings(**train_cfg()).determining()
    same = TrainSettings(
        **train_cfg(checkpoint_every=7, log_every=1, gradient_checkpointing=True)
    ).determining()
    assert base == same
    for over in ({"lr": 1e-4}, {"batching": "packed"}, {"seed": 1}, {"max_passages": None}):
        assert TrainSettings(**train_cfg(**over)).determining() != base
    recipe = AdapterRecipe(**ADAPTER).determining()
    assert AdapterRecipe(**{**ADAPTER, "method": "lora"}).determining() != recipe
    assert AdapterRecipe(**{**ADAPTER, "name": "other", "corpus": "x"}).determining() == recipe


def _mean_loss(model, cache: TokenCache, n: int = 40) -> float:
    seqs = [passage_ids(cache.get(i), 1, 2, 64) for i in range(n)]
    with torch.no_grad():
        return model(**collate_packed(seqs), use_cache=False).loss.item()


def test_training_lowers_loss_and_adapter_loads(tmp_path, tiny_llama, toy_cache):
    from peft import PeftModel

    out = tmp_path / "adapter"
    stats = train_knowledge_adapter(
        tiny_llama.pretrained,
        toy_cache,
        ADAPTER,
        train_cfg(batching="packed", lr=1e-2, max_passages=None, epochs=2, batch_size=2),
        out,
        tmp_path / "work",
    )
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert set(stats) == set(STATS_KEYS)
    assert stats["padding_fraction"] == 0 and stats["padding_tokens"] == 0
    assert stats["passages"] == 2 * 240 and stats["steps"] > 0 and math.isfinite(stats["final_loss"])
    assert not (tmp_path / "work").exists()  # checkpoint_every=0: nothing written there
    before = _mean_loss(_model(tiny_llama.pretrained), toy_cache)
    trained = PeftModel.from_pretrained(_model(tiny_llama.pretrained), out).eval()
    assert trained.peft_config["default"].use_dora
    after = _mean_loss(trained, toy_cache)
    assert after < before - 0.3, (before, after)

    paper = train_knowledge_adapter(
        tiny_llama.pretrained, toy_cache, ADAPTER, train_cfg(), tmp_path / "p", tmp_path / "work-p"
    )
    assert 0 < paper["padding_fraction"] < 1 and paper["steps"] == 10 and paper["passages"] == 40


def _kill_at(step: int):
    class Killed(RuntimeError):
        pass

    def hook(done: int, metrics: dict) -> None:
        if done == step:
            raise Killed(f"simulated kill at step {done}")

    return hook, Killed


@pytest.mark.parametrize("batching", ["paper", "packed"])
def test_resume_after_kill_gives_same_adapter(tmp_path, tiny_llama, toy_cache, batching):
    # 40 passages: paper = 10 steps; packed (2 × 64-token budget) ≈ 10 steps too. Dropout 0.05 makes the
    # result depend on the restored RNG state, AdamW on the restored optimizer state.
    cfg = train_cfg(batching=batching, batch_size=2, checkpoint_every=2)
    ref = train_knowledge_adapter(
        tiny_llama.pretrained, toy_cache, ADAPTER, cfg, tmp_path / "ref", tmp_path / "work-ref"
    )
    hook, killed = _kill_at(5)
    with pytest.raises(killed):
        train_knowledge_adapter(
            tiny_llama.pretrained, toy_cache, ADAPTER, cfg, tmp_path / "res", tmp_path / "work", on_step=hook
        )
    assert latest_checkpoint(tmp_path / "work").name.endswith("000000004")  # step 5's work is lost
    res = train_knowledge_adapter(
        tiny_llama.pretrained, toy_cache, ADAPTER, cfg, tmp_path / "res", tmp_path / "work"
    )
    assert res["resumed_from_step"] == 4 and res["steps"] == ref["steps"] > 5
    assert res["passages"] == ref["passages"]
    a = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    b = load_file(tmp_path / "res" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("magnitude" in k for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


@pytest.mark.slow
def test_unreadable_last_checkpoint_falls_back_to_the_one_before(tmp_path, tiny_llama, toy_cache):
    """A kill (or a disk error) that damages the newest checkpoint costs its steps, not the whole run."""
    cfg = train_cfg(batch_size=2, checkpoint_every=2)
    ref = train_knowledge_adapter(
        tiny_llama.pretrained, toy_cache, ADAPTER, cfg, tmp_path / "ref", tmp_path / "work-ref"
    )
    hook, killed = _kill_at(7)
    with pytest.raises(killed):
        train_knowledge_adapter(
            tiny_llama.pretrained, toy_cache, ADAPTER, cfg, tmp_path / "res", tmp_path / "work", on_step=hook
        )
    assert [c.name[-1] for c in checkpoints(tmp_path / "work")] == ["6", "4"]  # the newest two are kept
    state = tmp_path / "work" / "ckpt-000000006" / "state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated
    res = train_knowledge_adapter(
        tiny_llama.pretrained, toy_cache, ADAPTER, cfg, tmp_path / "res", tmp_path / "work"
    )
    assert res["resumed_from_step"] == 4 and res["passages"] == ref["passages"]
    a = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    b = load_file(tmp_path / "res" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


class RecordingCache(TokenCache):
    """A token cache that records which rows training reads."""

    def __init__(self, path, key=""):
        super().__init__(path, key)
        self.read: set[int] = set()

    def get(self, i):
        self.read.add(int(i))
        return super().get(i)


def test_ablation_subsets_train_on_the_right_passages(tmp_path, tiny_llama, toy_cache, toy_dir):
    relevant = relevant_doc_ids(load_qrels(toy_dir, "test"))
    assert 0 < len(relevant) < len(toy_cache)
    seen = {}
    for subset, kw in (("without", {"exclude": relevant}), ("with", {"include": relevant})):
        cache = RecordingCache(toy_cache.path, toy_cache.key)
        train_knowledge_adapter(
            tiny_llama.pretrained,
            cache,
            ADAPTER,
            train_cfg(max_passages=None, lr=1e-4),
            tmp_path / subset,
            tmp_path / f"work-{subset}",
            **kw,
        )
        seen[subset] = {cache.doc_ids[i] for i in cache.read}
    assert not seen["without"] & relevant
    assert seen["without"] == set(toy_cache.doc_ids) - relevant
    assert seen["with"] == relevant & set(toy_cache.doc_ids)


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, tiny_llama, toy_cache):
    model = _model(tiny_llama.pretrained)
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    model.model.norm.register_forward_hook(poison)  # the final hidden states, once per step
    with pytest.raises(TrainingDiverged, match=r"at step 3/10.*ckpt-000000002"):
        train_knowledge_adapter(
            tiny_llama.pretrained,
            toy_cache,
            ADAPTER,
            train_cfg(checkpoint_every=2),
            tmp_path / "out",
            tmp_path / "work",
            model=model,
        )
    assert latest_checkpoint(tmp_path / "work").name == "ckpt-000000002"
    assert not (tmp_path / "out").exists()


def test_gradient_checkpointing_does_not_change_the_adapter(tmp_path, tiny_llama, toy_cache):
    # Why gradient_checkpointing is not part of adapter_key_config: same numbers (dropout RNG preserved).
    for gc in (False, True):
        train_knowledge_adapter(
            tiny_llama.pretrained,
            toy_cache,
            ADAPTER,
            train_cfg(gradient_checkpointing=gc, max_passages=16),
            tmp_path / f"gc-{gc}",
            tmp_path / f"work-{gc}",
        )
    a = load_file(tmp_path / "gc-False" / "adapter_model.safetensors")
    b = load_file(tmp_path / "gc-True" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


DDP_TRAIN = """
import json, sys
from pathlib import Path
from accelerate import PartialState
PartialState(cpu=True)
from readaptir.grid.keys import tokens_key
from readaptir.store.artifacts import ArtifactStore
from readaptir.train.knowledge import train_knowledge_adapter
from readaptir.train.tokens import ensure_token_cache
pretrained, toy, store, out, adapter, cfg = sys.argv[1:7]
cache = ensure_token_cache(ArtifactStore(store), tokens_key(pretrained, Path(toy)), pretrained, toy)
train_knowledge_adapter(pretrained, cache, json.loads(adapter), json.loads(cfg), Path(out), Path(out + "-work"))
"""


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_on_the_same_passages(tmp_path, tiny_llama, toy_dir):
    """2 ranks × batch 4 = 1 process × batch 8 (the same passages per step): same adapter.

    Needs each rank's loss rescaled to the global token-weighted mean: DDP alone would average the
    two ranks' token means, which differ in target counts. Dropout 0 so no RNG stream differs.
    """
    import json
    import os
    import subprocess
    import sys

    adapter = {**ADAPTER, "dropout": 0.0}
    # Paper batching: step s of rank r takes batch 2s + r, i.e. the two halves of the one-process batch.
    one, two = train_cfg(max_passages=32, batch_size=8), train_cfg(max_passages=32, batch_size=4)
    store = tmp_path / "store"
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_TRAIN)
    args = [str(tiny_llama.pretrained), str(toy_dir), str(store)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name, cfg, procs in (("one", one, 1), ("two", two, 2)):
        out = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
             str(script), *args, str(tmp_path / name), json.dumps(adapter), json.dumps(cfg)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
    a = load_file(tmp_path / "one" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
