"""Variable-length attention: boundaries, packing, the transformers integration, and exactness of packed
rows against one-passage-at-a-time (CPU, float32, through the reference path the fused kernel replaces)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from readaptir.attention import interface, kernels
from readaptir.attention.interface import ATTN_NAME, PATHS, get_attention, set_attention, use_attention
from readaptir.attention.kernels import (
    VarlenAPI,
    cu_seqlens_from_lengths,
    cu_seqlens_from_position_ids,
    fused_usable,
    repeat_kv,
    varlen_fused,
    varlen_reference,
)
from readaptir.attention.packing import PackedRow, pack_rows, pool_last_tokens

BOS, EOS, PAD, VOCAB = 1, 2, 0, 384


def _model(kind: str, lm: bool = False, **over):
    from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig, MistralConfig

    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512, bos_token_id=BOS,
               eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False,
               initializer_range=0.1)  # sharper attention than 0.02: a leak between passages shows  # fmt: skip
    cfg.update(over)
    config = LlamaConfig(**cfg) if kind == "llama" else MistralConfig(**{"sliding_window": None, **cfg})
    torch.manual_seed(0)
    cls = AutoModelForCausalLM if lm else AutoModel
    return cls.from_config(config, attn_implementation="sdpa").float().eval()


def _passages(body_lengths, seed=1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[BOS, *torch.randint(3, VOCAB, (n,), generator=g).tolist(), EOS] for n in body_lengths]


def _alone(model, seqs) -> torch.Tensor:
    with torch.no_grad():
        hidden = [model(input_ids=torch.tensor([s]), use_cache=False).last_hidden_state[0, -1] for s in seqs]
    return F.normalize(torch.stack(hidden).float(), dim=-1)


def _packed(model, seqs, with_kwargs=True) -> torch.Tensor:
    row = PackedRow.of(seqs)
    extra = row.kwargs() if with_kwargs else {}
    with torch.no_grad():
        h = model(input_ids=row.input_ids, position_ids=row.position_ids, attention_mask=None, use_cache=False,
                  **extra).last_hidden_state  # fmt: skip
    return pool_last_tokens(h, row.last_index)


# ---------------------------------------------------------------------------------------- boundaries


def test_boundaries_from_position_ids():
    cu, m = cu_seqlens_from_position_ids(torch.arange(5)[None])
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 5] and m == 5
    assert cu_seqlens_from_position_ids(torch.arange(5))[0].tolist() == [0, 5]  # 1-D accepted
    assert cu_seqlens_from_position_ids(torch.zeros(1, 4, dtype=torch.long))[0].tolist() == [0, 1, 2, 3, 4]
    cu, m = cu_seqlens_from_position_ids(torch.tensor([[0, 1, 0, 0, 1, 2, 0]]))
    assert cu.tolist() == [0, 2, 3, 6, 7] and m == 3
    # a passage never spans two rows; a row not starting at 0 is still one passage
    cu, m = cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0, 1], [3, 4, 5, 6, 7]]))
    assert cu.tolist() == [0, 3, 5, 10] and m == 5
    assert cu_seqlens_from_position_ids(torch.zeros(1, 0, dtype=torch.long))[0].tolist() == [0]
    with pytest.raises(ValueError, match="positive"):
        cu_seqlens_from_lengths([3, 0])


def test_boundaries_agree_with_transformers_rules():
    from transformers.masking_utils import find_packed_sequence_indices
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    lengths = torch.randint(1, 9, (15,), generator=torch.Generator().manual_seed(0)).tolist()
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    cu, m = cu_seqlens_from_position_ids(pos)
    assert cu.tolist() == cu_seqlens_from_lengths(lengths)[0].tolist() and m == max(lengths)
    assert torch.bincount(find_packed_sequence_indices(pos)[0]).tolist() == lengths
    (cq, _), (mq, _) = prepare_fa_kwargs_from_position_ids(pos)
    assert cq.tolist() == cu.tolist() and int(mq) == m


def test_pack_rows_fills_rows_under_the_budget():
    lengths = torch.randint(1, 60, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    rows = pack_rows(lengths, 128)
    assert sorted(i for r in rows for i in r) == list(range(200))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    assert all([lengths[i] for i in r] == sorted((lengths[i] for i in r), reverse=True) for r in rows)
    assert len(rows) <= math.ceil(sum(lengths) / 128) + 1  # best-fit decreasing: near the lower bound
    assert pack_rows([5], 5) == [[0]]
    assert all(len(r) <= 3 for r in pack_rows([1] * 10, 100, max_per_row=3))
    with pytest.raises(ValueError, match="129 tokens"):
        pack_rows([129], 128)


def test_packed_row_layout_and_labels():
    row = PackedRow.of([[BOS, 5, 6, EOS], [BOS, EOS], [BOS, 7, EOS]])
    assert row.input_ids.tolist() == [[BOS, 5, 6, EOS, BOS, EOS, BOS, 7, EOS]]
    assert row.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2]]
    assert row.cu_seqlens.tolist() == [0, 4, 6, 9] and row.longest == 4
    assert row.last_index.tolist() == [3, 5, 8]
    assert row.labels().tolist() == [[-100, 5, 6, EOS, -100, EOS, -100, 7, EOS]]
    assert row.kwargs()["max_length_q"] == 4 and row.kwargs()["cu_seq_lens_k"] is row.cu_seqlens


# ---------------------------------------------------------------------------------------- integration


def test_api_detection_and_no_fused_kernel_on_cpu():
    api = kernels.varlen_api()
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        assert not api.available and api.reason
    else:
        params = inspect.signature(varlen_attn).parameters
        assert api.available and api.has_window_size == ("window_size" in params)
        assert api.has_enable_gqa == ("enable_gqa" in params)
    ok, why = fused_usable(torch.zeros(4, 8, 16))
    assert not ok and "not CUDA" in why


def test_switch_and_restore():
    m = _model("llama")
    assert get_attention(m) == "sdpa"
    with use_attention(m, "varlen"):
        assert get_attention(m) == ATTN_NAME
        assert m.layers[0].self_attn.config._attn_implementation == ATTN_NAME
    assert get_attention(m) == "sdpa"
    assert set_attention(m, "varlen") == "sdpa" and get_attention(m) == ATTN_NAME


@pytest.mark.parametrize("kind", ["llama", "mistral"])
@pytest.mark.parametrize("with_kwargs", [True, False])
def test_packed_encoding_equals_one_at_a_time(kind, with_kwargs):
    m = _model(kind)
    seqs = _passages([0, 1, 17, 5, 3, 19, 0, 11, 8])  # includes 2-token passages (BOS, EOS)
    ref = _alone(m, seqs)
    PATHS.reset()
    with use_attention(m, "varlen"):
        emb = _packed(m, seqs, with_kwargs)
    source = "kwargs" if with_kwargs else "position-ids"
    assert dict(PATHS) == {f"reference:{source}": m.config.num_hidden_layers}  # no dense mask was built
    assert (emb - ref).abs().max().item() <= 1e-5


def test_dense_mask_sdpa_isolates_the_same_passages():
    """The test's own yardstick: transformers' packed SDPA path (block-diagonal mask) agrees too."""
    m = _model("llama")
    seqs = _passages([4, 9, 0, 14, 6, 2], seed=7)
    assert (_packed(m, seqs, with_kwargs=False) - _alone(m, seqs)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_through_varlen(side):
    m = _model("mistral")
    seqs = _passages([3, 12, 0, 7, 18], seed=11)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl], mask[i, sl] = torch.tensor(s), 1
    PATHS.reset()
    with use_attention(m, "varlen"), torch.no_grad():
        h = m(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
              use_cache=False).last_hidden_state  # fmt: skip
    last = (mask * torch.arange(width)).argmax(1)
    emb = F.normalize(h[torch.arange(len(seqs)), last].float(), dim=-1)
    assert list(PATHS) == ["reference:padding-mask"]
    assert (emb - _alone(m, seqs)).abs().max().item() <= 1e-5


def test_packed_rows_with_end_padding_stay_isolated():
    m = _model("llama")
    seqs = _passages([7, 2, 11, 4, 9, 0], seed=23)
    rows, width = [[0, 1, 2], [3, 4, 5]], 40
    ids, pos = torch.full((2, width), PAD), torch.zeros(2, width, dtype=torch.long)
    mask, last = torch.zeros(2, width, dtype=torch.long), []
    for r, row in enumerate(rows):
        t = 0
        for i in row:
            n = len(seqs[i])
            ids[r, t : t + n], pos[r, t : t + n], mask[r, t : t + n] = (
                torch.tensor(seqs[i]),
                torch.arange(n),
                1,
            )
            last.append(r * width + t + n - 1)
            t += n
    with use_attention(m, "varlen"), torch.no_grad():
        h = m(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).last_hidden_state
    assert (pool_last_tokens(h, torch.tensor(last)) - _alone(m, seqs)).abs().max().item() <= 1e-5


def test_sliding_window_mistral():
    m = _model("mistral", sliding_window=5)
    seqs = _passages([12, 3, 9, 1, 15], seed=13)
    with use_attention(m, "varlen"):
        emb = _packed(m, seqs)
    assert (emb - _alone(m, seqs)).abs().max().item() <= 1e-5  # transformers' own sliding-window mask


def test_mask_function_never_builds_a_dense_mask():
    full, padded = torch.ones(2, 6, dtype=torch.long), torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    new = dict(batch_size=2, q_length=6, kv_length=6, q_offset=0, kv_offset=0, mask_function=None,
               allow_is_causal_skip=True, dtype=torch.float32, config=None, use_vmap=False, device="cpu")  # fmt: skip
    old = dict(batch_size=2, cache_position=torch.arange(6), kv_length=6, kv_offset=0, mask_function=None,
               allow_is_causal_skip=True, dtype=torch.float32, config=None)  # fmt: skip
    for kw in (new, old):  # transformers 5.x changed the keywords it passes
        assert interface.varlen_mask(attention_mask=None, **kw) is None
        assert interface.varlen_mask(attention_mask=full, **kw) is None
        out = interface.varlen_mask(attention_mask=padded, **kw)
        assert out.dtype == torch.bool and out.shape == (2, 6)


# ---------------------------------------------------------------------------------------- loss and grads


def _losses_alone(model, seqs) -> torch.Tensor:
    dev = next(model.parameters()).device
    return torch.stack([model(input_ids=torch.tensor([s], device=dev), labels=torch.tensor([s], device=dev)).loss
                        for s in seqs])  # fmt: skip


def _losses_packed(model, seqs) -> tuple[torch.Tensor, torch.Tensor]:
    row = PackedRow.of(seqs).to(next(model.parameters()).device)
    labels = row.labels()
    out = model(input_ids=row.input_ids, position_ids=row.position_ids, attention_mask=None, use_cache=False,
                labels=labels, **row.kwargs())  # fmt: skip
    tok = F.cross_entropy(out.logits[0, :-1].float(), labels[0, 1:], reduction="none")  # t predicts t+1
    cu = row.cu_seqlens.tolist()
    return torch.stack([tok[s : e - 1].mean() for s, e in zip(cu[:-1], cu[1:], strict=True)]), out.loss


def _check_loss_and_grads(model, seqs):
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    alone = _losses_alone(model, seqs)
    alone.sum().backward()
    g_alone = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    PATHS.reset()
    with use_attention(model, "varlen"):
        packed, mean = _losses_packed(model, seqs)
        packed.sum().backward()
    assert PATHS and all(k.startswith("reference:") for k in PATHS)
    assert ((packed - alone).abs() / alone.abs()).max().item() <= 1e-5
    weights = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.float32)  # targets: all but BOS
    assert torch.allclose(mean, (alone.detach() * weights).sum() / weights.sum(), rtol=1e-5)
    for a, b in zip((p.grad for p in params), g_alone, strict=True):
        assert (a - b).abs().max().item() <= 1e-4 * (b.abs().max().item() + 1e-12)
    assert any(p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_packed_loss_and_grads_equal_alone(kind):
    _check_loss_and_grads(_model(kind, lm=True), _passages([14, 0, 6, 19, 2, 9], seed=17))


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_dora_adapter_packed(kind):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")  # fmt: skip
    torch.manual_seed(1)
    pm = get_peft_model(_model(kind, lm=True), cfg).eval()
    seqs = _passages([10, 3, 17, 0, 7], seed=19)
    _check_loss_and_grads(pm, seqs)
    # the paper recipe's dropout 0.05: training-mode backward through the reference works
    for mod in pm.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.05
    pm.train()
    pm.zero_grad(set_to_none=True)
    with use_attention(pm, "varlen"):
        row = PackedRow.of(seqs)
        pm(input_ids=row.input_ids, position_ids=row.position_ids, attention_mask=None, use_cache=False,
           labels=row.labels(), **row.kwargs()).loss.backward()  # fmt: skip
    trained = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trained)
    assert any("lora_magnitude_vector" in n and p.grad.abs().sum() > 0 for n, p in trained)


# ---------------------------------------------------------------------------------------- signatures


def _reference_kernel(q, k, v, cu, causal, scale=None):
    assert q.shape[1] == k.shape[1], "this signature takes as many KV heads as query heads"
    assert cu.dtype == torch.int32
    return varlen_reference(q, k, v, cu, scale=scale, causal=causal)


def fake_210(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    return _reference_kernel(query, key, value, cu_seq_q, is_causal)


def fake_211(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
             window_size=(-1, -1)):  # fmt: skip
    assert window_size in ((-1, 0), (-1, -1)), window_size
    return _reference_kernel(query, key, value, cu_seq_q, window_size == (-1, 0), scale)  # as torch does


def fake_213(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
             window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):  # fmt: skip
    n_rep = query.shape[1] // key.shape[1]
    assert enable_gqa or n_rep == 1
    k, v = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    return _reference_kernel(query, k, v, cu_seq_q, window_size == (-1, 0), scale)


@pytest.mark.parametrize("fake", [fake_210, fake_211, fake_213])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_fused_call_adapts_to_each_signature(monkeypatch, fake, scale):
    params = inspect.signature(fake).parameters
    api = VarlenAPI(available=True, fn=fake, has_is_causal="is_causal" in params,
                    has_window_size="window_size" in params, has_scale="scale" in params,
                    has_enable_gqa="enable_gqa" in params)  # fmt: skip
    monkeypatch.setattr(kernels, "varlen_api", lambda: api)
    g = torch.Generator().manual_seed(0)
    cu, longest = cu_seqlens_from_lengths([5, 1, 9, 3])
    q, k, v = (
        torch.randn(18, 4, 16, generator=g),
        torch.randn(18, 2, 16, generator=g),
        torch.randn(18, 2, 16, generator=g),
    )
    got = varlen_fused(q, k, v, cu, longest, scale=scale)
    assert (got - varlen_reference(q, k, v, cu, scale=scale)).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_fused_kernel_agrees_with_one_at_a_time_in_bf16(kind):
    """On CUDA in bf16 the fused kernel runs (no reference), embeddings match alone (cosine ≥ 0.999) and
    per-passage losses match the unpacked path within 1e-3, compiled layers included."""
    from readaptir.train.causal_lm import compile_layers

    m = _model(kind, lm=True).to("cuda", torch.bfloat16)
    seqs = _passages([40, 3, 77, 12, 0, 120], seed=29)
    with torch.no_grad():
        alone_h = [m.model(input_ids=torch.tensor([s], device="cuda")).last_hidden_state[0, -1] for s in seqs]
        alone = F.normalize(torch.stack(alone_h).float(), dim=-1)
        alone_loss = _losses_alone(m, seqs)
    for compiled in (False, True):
        if compiled:
            compile_layers(m)
        PATHS.reset()
        with torch.no_grad(), use_attention(m, "varlen"):
            row = PackedRow.of(seqs).to("cuda")
            h = m.model(input_ids=row.input_ids, position_ids=row.position_ids, attention_mask=None,
                        use_cache=False, **row.kwargs()).last_hidden_state  # fmt: skip
            packed, _ = _losses_packed(m, seqs)
        if not compiled:  # compiled code need not replay the counters' Python side effects
            assert PATHS and all(k.startswith("fused:") for k in PATHS), dict(PATHS)
        assert (pool_last_tokens(h, row.last_index) * alone).sum(-1).min().item() >= 0.999
        assert ((packed.float() - alone_loss.float()).abs() / alone_loss.float().abs()).max().item() <= 1e-3
