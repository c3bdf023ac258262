"""The training step's costs removed without changing the objective: loss on target tokens only (chunked),
DoRA's norm once per step, statistics read only at log lines. Each against the plain computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from readaptir.attention.interface import PATHS, use_attention
from readaptir.train.batching import collate_packed, collate_paper, passage_ids
from readaptir.train.dora_norm import cache_dora_norms
from readaptir.train.monitor import Monitor, TrainingDiverged
from readaptir.train.objective import Targets, target_loss_sum

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def seqs():
    rng = np.random.default_rng(0)
    return [passage_ids(rng.integers(3, 300, size=n), 1, 2, 48) for n in (30, 5, 61, 0, 17, 44)]


def _lm(path, dora: bool = False, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    if not dora:
        return model
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, use_dora=True, init_lora_weights=False,
                     target_modules=TARGETS, task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, cfg)


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.requires_grad and p.grad is not None]


@pytest.mark.parametrize("batching", ["paper", "packed"])
@pytest.mark.parametrize("chunk", [7, 4096])
def test_target_loss_equals_transformers_loss_and_gradients(tiny_llama, seqs, batching, chunk):
    model = _lm(tiny_llama.pretrained, dora=True)
    batch = collate_packed(seqs) if batching == "packed" else collate_paper(seqs, pad_id=2)
    hf = model(**batch, use_cache=False).loss
    hf.backward()
    g_hf = _grads(model)
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets = Targets.of(batch["labels"])
    assert len(targets) == sum(len(s) - 1 for s in seqs)  # every token but each passage's BOS
    loss = target_loss_sum(model, inputs, targets, chunk=chunk) / len(targets)
    loss.backward()
    assert abs(loss.item() - hf.item()) <= 1e-6 * hf.item()
    g = _grads(model)
    assert len(g) == len(g_hf) > 0
    for a, b in zip(g, g_hf, strict=True):
        assert (a - b).abs().max().item() <= 1e-5 * (b.abs().max().item() + 1e-12)
    assert type(model.get_base_model().lm_head).__name__ == "Linear"  # the head is back in place


def test_packed_varlen_loss_is_the_mean_of_alone_losses(tiny_mistral, seqs):
    """The objective through the varlen backend (CPU: the per-passage reference) vs each passage alone."""
    model = _lm(tiny_mistral.pretrained)
    batch = collate_packed(seqs, varlen=True)
    targets = Targets.of(batch.pop("labels"))
    PATHS.reset()
    with torch.no_grad(), use_attention(model, "varlen"):
        packed = target_loss_sum(model, batch, targets).item() / len(targets)
    assert PATHS and all(k == "reference:kwargs" for k in PATHS)
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss.item() for s in seqs]
    weights = [len(s) - 1 for s in seqs]
    assert abs(packed - np.average(alone, weights=weights)) <= 1e-5


@pytest.mark.parametrize("checkpointing", [False, True])
def test_dora_norm_once_per_step_same_loss_and_gradients(tiny_llama, seqs, checkpointing):
    from peft.tuners.lora.dora import DoraLinearLayer

    batch = collate_packed(seqs)
    results, calls = [], {"n": 0}
    real = DoraLinearLayer.get_weight_norm

    def counting(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k)

    DoraLinearLayer.get_weight_norm = counting  # before the patch, which binds PEFT's method
    try:
        for cached in (False, True):
            model = _lm(tiny_llama.pretrained, dora=True, dropout=0.1)  # dropout: PEFT's second base matmul
            if checkpointing:
                model.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
            n_dora = cache_dora_norms(model) if cached else 0
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
            model.train()
            torch.manual_seed(3)  # same dropout masks
            calls["n"] = 0
            for _ in range(2):  # the second step must see the first step's update
                loss = model(**batch, use_cache=False).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
            results.append((loss.item(), [p.detach().clone() for p in model.parameters() if p.requires_grad]))
            layers = 5 * model.config.num_hidden_layers
            if cached:
                assert n_dora == layers and calls["n"] == 2 * layers  # once per layer per step
            else:
                assert calls["n"] == 2 * layers * (2 if checkpointing else 1)  # again in the recompute
    finally:
        DoraLinearLayer.get_weight_norm = real
    (loss_a, params_a), (loss_b, params_b) = results
    assert abs(loss_a - loss_b) <= 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(params_a, params_b, strict=True)) <= 1e-6


def test_monitor_reads_the_device_only_when_asked_and_names_the_first_bad_step():
    counters = dict.fromkeys(("targets", "passages", "tokens", "padding"), 0)
    mon = Monitor(counters, torch.device("cpu"), world=1)
    counts = np.array([10, 2, 12, 0])
    mon.step(1, torch.tensor(23.0), 10, torch.tensor(1.5), counts)
    mon.step(2, torch.tensor(21.0), 10, torch.tensor(1.2), counts)
    assert mon.read == []  # nothing read yet
    mon.check(total=5, last_good=None)
    metrics = mon.flush(lr=1e-3, done=2, total=5, epochs=1)
    assert metrics["train/loss"] == pytest.approx(44.0 / 20) and metrics["train/grad_norm"] == pytest.approx(
        1.2
    )
    assert mon.first_loss == pytest.approx(2.3) and counters["passages"] == 4
    mon.step(3, torch.tensor(float("nan")), 10, torch.tensor(float("nan")), counts)
    mon.step(4, torch.tensor(20.0), 10, torch.tensor(float("inf")), counts)  # a later bad step
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3/5; .*ckpt-2"):
        mon.check(total=5, last_good="ckpt-2")
    grad = Monitor(dict(counters), torch.device("cpu"), world=1)
    grad.step(1, torch.tensor(1.0), 10, torch.tensor(math.inf), counts)
    with pytest.raises(TrainingDiverged, match=r"gradient norm is inf at step 1/5; .*none"):
        grad.check(total=5, last_good=None)


def test_training_loop_syncs_only_at_log_lines_and_checkpoints(tmp_path, tiny_llama, toy_dir, monkeypatch):
    from readaptir.grid.keys import tokens_key
    from readaptir.store.artifacts import ArtifactStore
    from readaptir.train import monitor
    from readaptir.train.knowledge import train_knowledge_adapter
    from readaptir.train.tokens import ensure_token_cache

    key = tokens_key(tiny_llama.pretrained, toy_dir)
    cache = ensure_token_cache(ArtifactStore(tmp_path / "s"), key, tiny_llama.pretrained, toy_dir)
    checks = []
    real = monitor.Monitor.check
    monkeypatch.setattr(monitor.Monitor, "check", lambda self, *a: checks.append(1) or real(self, *a))
    adapter = {"method": "dora", "r": 4, "alpha": 8, "dropout": 0.05, "targets": TARGETS}
    train = {"batch_size": 4, "max_tokens": 64, "max_passages": 40, "log_every": 4, "checkpoint_every": 3}
    stats = train_knowledge_adapter(
        tiny_llama.pretrained, cache, adapter, train, tmp_path / "o", tmp_path / "w"
    )
    assert stats["steps"] == 10 and math.isfinite(stats["final_loss"]) and math.isfinite(stats["first_loss"])
    assert len(checks) == len({3, 4, 6, 8, 9, 10})  # log lines at 4, 8, 10; checkpoints at 3, 6, 9
    assert stats["attention"] == "sdpa"  # CPU


def test_packed_training_through_varlen_gives_the_sdpa_adapter(tmp_path, tiny_llama, toy_dir):
    """The whole loop with the varlen backend (CPU: the per-passage reference) and with SDPA's block mask."""
    from safetensors.torch import load_file

    from readaptir.grid.keys import tokens_key
    from readaptir.store.artifacts import ArtifactStore
    from readaptir.train.knowledge import train_knowledge_adapter
    from readaptir.train.tokens import ensure_token_cache

    key = tokens_key(tiny_llama.pretrained, toy_dir)
    cache = ensure_token_cache(ArtifactStore(tmp_path / "s"), key, tiny_llama.pretrained, toy_dir)
    adapter = {"method": "dora", "r": 4, "alpha": 8, "dropout": 0.05, "targets": TARGETS}
    train = {
        "batching": "packed",
        "batch_size": 2,
        "max_tokens": 64,
        "max_passages": 40,
        "checkpoint_every": 0,
    }
    out = {}
    for attention in ("sdpa", "varlen"):
        PATHS.reset()
        stats = train_knowledge_adapter(tiny_llama.pretrained, cache, adapter, train, tmp_path / attention,
                                        tmp_path / f"w-{attention}", attention=attention)  # fmt: skip
        assert stats["attention"] == attention and bool(PATHS) == (attention == "varlen")
        out[attention] = load_file(tmp_path / attention / "adapter_model.safetensors")
    assert max((out["sdpa"][k] - out["varlen"][k]).abs().max().item() for k in out["sdpa"]) <= 1e-5
