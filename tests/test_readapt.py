"""RE-Adapt weight arithmetic against PEFT's own merges on the tiny LLaMA (LoRA retriever) and Mistral (full).

Identities checked: α=0, β=1 gives back the retriever; α=1, β=0 gives PEFT's ``merge_and_unload`` of the
knowledge adapter; ``peft_scale`` equals ``set_scale`` + merge and differs from ``delta`` for DoRA; the
``delta`` mode is linear in α and β; mismatched pairs raise :class:`ReadaptError` naming the culprit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from readaptir.readapt.arithmetic import readapt, readapt_weights
from readaptir.readapt.merge import dora_merge, lora_delta, low_rank_factors
from readaptir.readapt.model import build_readapted_model, load_base_retriever, save_readapted
from readaptir.readapt.weights import ReadaptError

REPO = Path(__file__).resolve().parents[1]
KNOWLEDGE_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # the paper's DoRA targets


def make_adapter(
    pretrained: Path, out: Path, use_dora: bool, targets=KNOWLEDGE_TARGETS, seed: int = 3
) -> Path:
    """A knowledge adapter over the causal LM with random A, B and (DoRA) a perturbed magnitude vector."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32)
    cfg = LoraConfig(use_dora=use_dora, r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for module in peft_model.modules():
            if not isinstance(module, LoraLayer):
                continue
            b = module.lora_B["default"].weight
            b.mul_(0.01)  # s·B·A small next to W, as after a short fine-tune
            if use_dora:  # as after training: magnitudes ±10% away from ‖W + s·B·A‖_row
                w = module.get_base_layer().weight
                a, s = module.lora_A["default"].weight, module.scaling["default"]
                m = torch.linalg.norm(w + s * b @ a, dim=1)
                module.lora_magnitude_vector["default"].weight.copy_(m * (1 + 0.1 * torch.randn_like(m)))
    peft_model.save_pretrained(out)
    return out


def _peft_merged(pretrained: Path, adapter: Path, scale: float | None = None) -> dict[str, torch.Tensor]:
    """PEFT's merge of a causal-LM adapter, LM head dropped, keys in AutoModel naming."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32), adapter
    )
    if scale is not None:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.set_scale("default", scale)
    sd = model.merge_and_unload().state_dict()
    return {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}


def _pretrained_sd(pretrained: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    return AutoModel.from_pretrained(pretrained, dtype=torch.float32).state_dict()


def _retriever_sd(tiny) -> dict[str, torch.Tensor]:
    """The retriever as PEFT/transformers load it: LoRA merged over the base AutoModel, or full weights."""
    from transformers import AutoModel

    if (tiny.retriever / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModel.from_pretrained(tiny.pretrained, dtype=torch.float32)
        return PeftModel.from_pretrained(base, tiny.retriever).merge_and_unload().state_dict()
    return AutoModel.from_pretrained(tiny.retriever, dtype=torch.float32).state_dict()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b) or set(a) == set(b), set(a) ^ set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module", params=["llama", "mistral"])
def tiny(request):
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "dora": make_adapter(tiny.pretrained, root / "dora", True),
        "lora": make_adapter(tiny.pretrained, root / "lora", False),
    }


def test_dora_key_name_and_merge_formula(adapters):
    """PEFT 0.21 stores the magnitude as ``...lora_magnitude_vector`` (no ``.weight``): parse that name."""
    keys = load_file(adapters["dora"] / "adapter_model.safetensors")
    assert any(k.endswith(".q_proj.lora_magnitude_vector") for k in keys)
    assert not any("lm_head" in k for k in keys)


def test_alpha0_beta1_is_retriever(tiny, adapters):
    ref = _retriever_sd(tiny)
    for knowledge in (None, adapters["dora"]):
        out = readapt_weights(tiny.pretrained, tiny.retriever, knowledge, alpha=0.0, beta=1.0)
        assert list(out) == list(ref)  # AutoModel naming and order, no lm_head
        assert all(v.dtype == torch.float32 for v in out.values())
        assert _max_diff(out, ref) <= 1e-6
    assert _max_diff(ref, _pretrained_sd(tiny.pretrained)) > 1e-3  # the retriever really moved


@pytest.mark.parametrize("kind", ["dora", "lora"])
def test_alpha1_beta0_is_peft_merge(tiny, adapters, kind):
    out = readapt_weights(tiny.pretrained, tiny.retriever, adapters[kind], alpha=1.0, beta=0.0)
    ref = _peft_merged(tiny.pretrained, adapters[kind])
    assert _max_diff(out, ref) <= 1e-5
    assert _max_diff(ref, _pretrained_sd(tiny.pretrained)) > 1e-3


def test_peft_scale_is_set_scale_and_differs_from_delta_for_dora(tiny, adapters):
    alpha = 0.5
    for kind in ("dora", "lora"):
        scaled = readapt_weights(tiny.pretrained, tiny.retriever, adapters[kind], alpha, 0.0, "peft_scale")
        assert _max_diff(scaled, _peft_merged(tiny.pretrained, adapters[kind], scale=alpha)) <= 1e-5
        task = readapt_weights(tiny.pretrained, tiny.retriever, adapters[kind], alpha, 0.0, "delta")
        if kind == "dora":  # scaling the direction but not the magnitude is not half the delta
            assert _max_diff(scaled, task) > 1e-4
        else:  # LoRA is linear in its scaling: both readings coincide
            assert _max_diff(scaled, task) <= 1e-6


def test_delta_mode_is_linear_and_leaves_embeddings_and_norms(tiny, adapters):
    pre = _pretrained_sd(tiny.pretrained)
    a = adapters["dora"]
    psi = {k: v - pre[k] for k, v in readapt_weights(tiny.pretrained, tiny.retriever, a, 1.0, 0.0).items()}
    delta = {k: v - pre[k] for k, v in readapt_weights(tiny.pretrained, tiny.retriever, a, 0.0, 1.0).items()}
    for alpha, beta in [(0.5, 1.0), (-0.3, 2.0), (0.0, 0.0)]:
        out = readapt_weights(tiny.pretrained, tiny.retriever, a, alpha, beta)
        expected = {k: pre[k] + alpha * psi[k] + beta * delta[k] for k in pre}
        assert _max_diff(out, expected) <= 1e-5
        for k in out:
            if "embed" in k or "norm" in k:
                assert torch.equal(out[k], pre[k]), k


def test_report_counts_and_norms(tiny, adapters):
    _, report = readapt(tiny.pretrained, tiny.retriever, adapters["dora"])
    json.dumps(report)  # goes into the results file
    layers = 2
    assert report["n_psi_nonzero"] == len(KNOWLEDGE_TARGETS) * layers
    assert set(report["psi_rel_norm"]) == {"q", "k", "v", "up", "down"}
    if report["retriever_kind"] == "lora":  # RepLLaMA's targets: no k
        assert set(report["delta_rel_norm"]) == {"q", "v", "o", "gate", "up", "down"}
    else:  # e5-style: every projection
        assert set(report["delta_rel_norm"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert report["n_delta_nonzero"] == len(report["delta_rel_norm"]) * layers
    assert all(0 < v < 1 for v in [*report["delta_rel_norm"].values(), *report["psi_rel_norm"].values()])


def test_bfloat16_output_is_one_cast_of_float32(tiny_mistral):
    f32 = readapt_weights(tiny_mistral.pretrained, tiny_mistral.retriever, None, 0.5, 1.0)
    bf16 = readapt_weights(
        tiny_mistral.pretrained, tiny_mistral.retriever, None, 0.5, 1.0, dtype=torch.bfloat16
    )
    assert all(torch.equal(bf16[k], f32[k].to(torch.bfloat16)) for k in f32)


def test_build_save_and_load_base(tiny, adapters, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    model, report = build_readapted_model(tiny.pretrained, tiny.retriever, adapters["dora"], 0.5, 1.0)
    assert type(model).__name__ in ("LlamaModel", "MistralModel") and not model.training
    expected = readapt_weights(tiny.pretrained, tiny.retriever, adapters["dora"], 0.5, 1.0)
    assert _max_diff(model.state_dict(), expected) == 0.0
    with torch.no_grad():  # rotary buffers are real (not meta) and the model runs
        hidden = model(input_ids=torch.tensor([[1, 5, 6, 2]])).last_hidden_state
    assert torch.isfinite(hidden).all()

    out, saved_report = save_readapted(
        tmp_path / "ra", tiny.pretrained, tiny.retriever, adapters["dora"], 0.5, 1.0
    )
    assert saved_report == report
    assert json.loads((out / "readapt_report.json").read_text()) == report
    assert [p.name for p in tmp_path.iterdir()] == ["ra"]  # no temporary folder left behind
    loaded = AutoModel.from_pretrained(out, dtype=torch.float32)
    assert type(loaded).__name__ == type(model).__name__
    assert _max_diff(loaded.state_dict(), expected) == 0.0
    assert AutoTokenizer.from_pretrained(out).eos_token_id == 2
    with pytest.raises(ReadaptError, match="exists"):
        save_readapted(tmp_path / "ra", tiny.pretrained, tiny.retriever)

    base = load_base_retriever(tiny.pretrained, tiny.retriever)
    assert _max_diff(base.state_dict(), _retriever_sd(tiny)) <= 1e-6


def test_lm_head_parts_of_adapter_are_ignored(tiny_llama, tmp_path):
    adapter = make_adapter(tiny_llama.pretrained, tmp_path / "head", False, targets=["q_proj", "lm_head"])
    assert any("lm_head" in k for k in load_file(adapter / "adapter_model.safetensors"))
    out, report = readapt(tiny_llama.pretrained, tiny_llama.retriever, adapter, 1.0, 0.0)
    assert "lm_head.weight" not in out and report["ignored_adapter_tensors"] > 0
    assert _max_diff(out, _peft_merged(tiny_llama.pretrained, adapter)) <= 1e-5


def _tied_llama(tiny_llama, out: Path) -> Path:
    """The tiny LLaMA with tied input/output embeddings, saved as SmolLM2 is: no ``lm_head.weight`` stored."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_llama.pretrained)
    cfg.tie_word_embeddings = True
    torch.manual_seed(11)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama.pretrained).save_pretrained(out)
    return out


def test_tied_embeddings_key_mapping(tiny_llama, tmp_path):
    """A tied model stores no LM head; an adapter on it (the tied head) is set aside, not refused."""
    from safetensors import safe_open

    tied = _tied_llama(tiny_llama, tmp_path / "tied")
    with safe_open(tied / "model.safetensors", framework="pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    retriever = tmp_path / "ret"
    shutil.copytree(tiny_llama.retriever, retriever)
    (retriever / "adapter_config.json").write_text(
        json.dumps(
            {
                **json.loads((retriever / "adapter_config.json").read_text()),
                "base_model_name_or_path": str(tied),
            }
        )
    )
    adapter = make_adapter(tied, tmp_path / "know", True, targets=[*KNOWLEDGE_TARGETS, "lm_head"])
    out, report = readapt(tied, retriever, adapter, 1.0, 0.0)
    assert "embed_tokens.weight" in out and "lm_head.weight" not in out
    assert report["ignored_adapter_tensors"] > 0
    # The head's LoRA is discarded (docs/method.md §1): the tied embedding stays W_pre's, whereas PEFT's merge
    # writes it into the shared matrix; every other tensor is PEFT's merge.
    peft = _peft_merged(tied, adapter)
    assert torch.equal(out["embed_tokens.weight"], _pretrained_sd(tied)["embed_tokens.weight"])
    assert (
        _max_diff(
            {k: v for k, v in out.items() if "embed" not in k}, {k: peft[k] for k in out if "embed" not in k}
        )
        <= 1e-5
    )
    base = load_base_retriever(tied, retriever)  # α=0, β=1: PEFT's merge of the retriever LoRA
    ref = _retriever_sd(type(tiny_llama)(tied, retriever))
    assert _max_diff(base.state_dict(), ref) <= 1e-6


# ---------------------------------------------------------------- mismatches


def _mismatched_full_retriever(pretrained: Path, out: Path, **overrides) -> Path:
    """A MistralModel with the tiny config changed: not fine-tuned from ``pretrained``."""
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(pretrained)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(7)
    AutoModel.from_config(cfg).save_pretrained(out)
    return out


def test_full_retriever_with_other_shapes_is_refused(tiny_mistral, tmp_path):
    other = _mismatched_full_retriever(tiny_mistral.pretrained, tmp_path / "wide", intermediate_size=96)
    with pytest.raises(ReadaptError, match=r"layers\.0\.mlp\.(gate|up|down)_proj\.weight.*shape"):
        readapt_weights(tiny_mistral.pretrained, other)
    deeper = _mismatched_full_retriever(tiny_mistral.pretrained, tmp_path / "deep", num_hidden_layers=3)
    with pytest.raises(ReadaptError, match=r"has tensor 'layers\.2\..*' that pretrained .* lacks"):
        readapt_weights(tiny_mistral.pretrained, deeper)


def test_lora_retriever_over_other_base_is_refused(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(tiny_llama.pretrained)
    cfg.hidden_size, cfg.intermediate_size = 48, 96
    lora = get_peft_model(AutoModel.from_config(cfg), LoraConfig(r=4, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "lora48")
    with pytest.raises(ReadaptError, match=r"q_proj.*adapter trained on another base model"):
        readapt_weights(tiny_llama.pretrained, tmp_path / "lora48")


def test_lora_retriever_with_other_hub_base_is_refused(tiny_llama, tmp_path):
    retriever = Path(shutil.copytree(tiny_llama.retriever, tmp_path / "repllama"))
    cfg = json.loads((retriever / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "meta-llama/Llama-2-7b-hf"
    (retriever / "adapter_config.json").write_text(json.dumps(cfg))
    # A hub-cache snapshot path names its hub id; point one at the tiny pretrained model.
    snap = tmp_path / "hub" / "models--mistralai--Mistral-7B-v0.1" / "snapshots" / "abc"
    snap.parent.mkdir(parents=True)
    os.symlink(tiny_llama.pretrained, snap)
    with pytest.raises(
        ReadaptError, match="trained on meta-llama/Llama-2-7b-hf, not on .* mistralai/Mistral-7B-v0.1"
    ):
        readapt_weights(snap, retriever)
    cfg["base_model_name_or_path"] = "meta-llama/Llama-2-7b-hf".upper()  # hub ids compare case-insensitively
    good = tmp_path / "hub" / "models--meta-llama--Llama-2-7b-hf" / "snapshots" / "abc"
    good.parent.mkdir(parents=True)
    os.symlink(tiny_llama.pretrained, good)
    assert readapt_weights(good, retriever)


def test_adapter_targeting_missing_module_is_refused(tiny_mistral, tmp_path):
    adapter = Path(
        shutil.copytree(make_adapter(tiny_mistral.pretrained, tmp_path / "a", True), tmp_path / "bad")
    )
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors = {
        k.replace("layers.1.self_attn.q_proj", "layers.1.self_attn.qkv_proj"): v for k, v in tensors.items()
    }
    save_file(tensors, adapter / "adapter_model.safetensors")
    with pytest.raises(ReadaptError, match=r"targets module 'model\.layers\.1\.self_attn\.qkv_proj'"):
        readapt_weights(tiny_mistral.pretrained, tiny_mistral.retriever, adapter)


def test_unknown_scaling_is_refused(tiny_mistral):
    with pytest.raises(ReadaptError, match="knowledge_scaling"):
        readapt_weights(tiny_mistral.pretrained, tiny_mistral.retriever, None, knowledge_scaling="half")


# ---------------------------------------------------------------- pure formulas


def test_fan_in_fan_out_transposes_consistently():
    g = torch.Generator().manual_seed(0)
    w, a, b = torch.randn(6, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    m = torch.rand(6, generator=g) + 0.5
    assert torch.allclose(dora_merge(w.T, a, b, m, 2.0, fan_in_fan_out=True), dora_merge(w, a, b, m, 2.0).T)
    assert torch.allclose(lora_delta(a, b, 2.0, fan_in_fan_out=True), (2.0 * b @ a).T)
    merged = dora_merge(w, a, b, m, 2.0)
    assert torch.allclose(torch.linalg.norm(merged, dim=1), m, atol=1e-6)  # rows carry the magnitudes


def test_low_rank_delta_reconstructs_e5_style_delta(tiny_mistral):
    # tiny.py moved each e5-style projection by a rank-4 product: rank 4 reconstructs it exactly
    _, exact = readapt(tiny_mistral.pretrained, tiny_mistral.retriever, delta_rank=4)
    assert max(exact["delta_svd_rel_error_max"].values()) < 1e-4
    _, rough = readapt(tiny_mistral.pretrained, tiny_mistral.retriever, delta_rank=1)
    assert min(rough["delta_svd_rel_error_max"].values()) > 0.05
    u, v, err = low_rank_factors(torch.eye(4), 2)
    assert u.shape == (4, 2) and v.shape == (2, 4) and abs(err - 2**-0.5) < 1e-6


# ---------------------------------------------------------------- memory


@pytest.mark.slow
def test_peak_memory_stays_near_one_model_plus_one_shard(tmp_path):
    """Benchmark script on a small several-shard model: peak RSS growth ≤ output + 2 shards + slack."""
    bench = REPO / "experiments" / "bench_readapt_memory.py"
    args = "--hidden 256 --layers 4 --vocab 8000 --shard-mb 8 --json".split()
    cmd = [sys.executable, str(bench), *args, "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["n_shards"] >= 3
    assert res["peak_growth_mb"] <= res["output_mb"] + 2 * res["max_shard_mb"] + 64
