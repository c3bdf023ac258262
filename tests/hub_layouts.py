"""Tiny offline replicas of the four Hub repositories the grid uses, with their real file layouts.

File names, shard split, index JSON, dtypes, tensor names, config and tokenizer fields follow the real
repositories; the weights are tiny and random. Every fact-dependent choice points at a section of
``tests/fixtures/hub_layouts/FACTS.md`` ("FACTS §x"), which gives each fact's source and marks what is
assumed. The folders sit in Hugging Face cache layout (``models--org--name/snapshots/<revision>``), so the
hub id of each is recoverable from its path as for a real download.

    build_llama2(root)                 ~ meta-llama/Llama-2-7b-hf (inv_freq buffers in the shards)
    build_repllama(root, llama_dir)    ~ castorini/repllama-v1-7b-lora-passage (adapter_model.bin only)
    build_mistral(root)                ~ mistralai/Mistral-7B-v0.1 (bfloat16)
    build_e5_mistral(root, mistral)    ~ intfloat/e5-mistral-7b-instruct (float16 MistralModel, no prefix)

The tokenizer is a 512-piece byte-fallback BPE trained with ``tokenizers`` on a few sentences and saved as a
LLaMA-style ``tokenizer.json``, plus a protobuf-serialised sentencepiece ``ModelProto`` as
``tokenizer.model`` (``sentencepiece`` itself is not installed; transformers loads ``tokenizer.json``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

# Revisions pinned by mteb's RepLLaMA loader (FACTS §1, §2) and the e5 listing quoted in FACTS §4.1; no
# source quotes a Mistral-7B-v0.1 revision, so its snapshot folder is named by zeros.
REVISIONS = {
    "meta-llama/Llama-2-7b-hf": "01c7f73d771dfac7d292323805ebc428287df4f9",
    "castorini/repllama-v1-7b-lora-passage": "6097554dfe6e7d93e92f55010b678bcca1e233a8",
    "mistralai/Mistral-7B-v0.1": "0" * 40,
    "intfloat/e5-mistral-7b-instruct": "094fd72199f990fd48514c2dc7cffcdb8290157f",
}


def snapshot_dir(root: Path, repo: str) -> Path:
    """``<root>/models--org--name/snapshots/<revision>``: where ``snapshot_download`` would put ``repo``."""
    return Path(root) / f"models--{repo.replace('/', '--')}" / "snapshots" / REVISIONS[repo]


# ----------------------------------------------------------------------------------------------
# tiny shapes (real shapes in comments)
# ----------------------------------------------------------------------------------------------
HIDDEN = 64  # real 4096
N_LAYERS = 4  # real 32
N_HEADS = 4  # real 32            -> head_dim 16 (real 128)
LLAMA_KV_HEADS = 4  # real 32 (Llama-2-7B has no GQA)             FACTS §1.3
MISTRAL_KV_HEADS = 1  # real 8 (ratio 4:1 kept: 4 heads / 1 kv head) FACTS §3.3
LLAMA_INTER = 172  # real 11008 (= 2.6875 * hidden)
MISTRAL_INTER = 224  # real 14336 (= 3.5 * hidden)
VOCAB_TARGET = 512  # real 32000

TRAIN_TEXT = [
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose.",
    "The mitochondria is the powerhouse of the cell and produces most of the chemical energy.",
    "Dense retrieval encodes queries and passages into vectors and ranks passages by their dot product.",
    "A large language model can be fine-tuned as a retriever with a low-rank adapter on its projections.",
    "The quick brown fox jumps over the lazy dog while the scientists measure the temperature of the river.",
    "Vaccines train the immune system to recognise a virus without causing the disease itself.",
    "Climate change raises the average temperature of the oceans and melts the polar ice sheets.",
    "Query: what is the capital of France? Passage: Paris is the capital and largest city of France.",
    "Proteins fold into three dimensional structures that determine their biological function.",
    "Given a scientific claim, retrieve documents that support or refute the claim.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query",
    "The stock market fell sharply after the central bank raised interest rates again this year.",
    "Neural networks learn representations of words, sentences and documents from large corpora.",
    "In 1969 the first humans landed on the Moon and returned safely to Earth a few days later.",
    "Antibiotics kill bacteria but do not work against viral infections such as the common cold.",
    "The knowledge adapter is trained with next token prediction on the unlabeled corpus passages.",
]


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _json_dump(path: Path, obj, *, trailing_newline=True, sort_keys=False, indent=2):
    s = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    path.write_text(s + ("\n" if trailing_newline else ""), encoding="utf-8")


class _Fresh:
    """A new, empty folder at ``out`` (replaced if it exists); yields it for writing."""

    def __init__(self, out):
        self.out = Path(out)

    def __enter__(self) -> Path:
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True)
        return self.out

    def __exit__(self, et, ev, tb):
        return False


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _write_sharded(
    folder: Path, shards: list[dict[str, torch.Tensor]], *, prefix="model", index_indent=2, index_newline=True
):
    """Write `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` exactly like
    transformers' save_pretrained of that era: metadata {"format": "pt"} in every shard, index =
    {"metadata": {"total_size": sum of tensor bytes}, "weight_map": {...}} dumped with indent=2,
    sort_keys=True and a trailing newline (FACTS §1.2). The Mistral / e5 indexes were written by the
    safetensors conversion bot: indent=4, no trailing newline (their byte sizes 25,125 / 23,3xx match
    exactly that layout; FACTS §3.2, §4.2) -> index_indent / index_newline. The legacy
    pytorch_model-*.bin twins of the real repositories are not written (FACTS §5)."""
    n = len(shards)
    weight_map, total = {}, 0
    for i, sd in enumerate(shards, 1):
        name = f"{prefix}-{i:05d}-of-{n:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / name), metadata={"format": "pt"})
        for k, v in sd.items():
            weight_map[k] = name
            total += _nbytes(v)
    _json_dump(
        folder / f"{prefix}.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
        sort_keys=True,
        indent=index_indent,
        trailing_newline=index_newline,
    )
    return total


def _perturb_norms_(model: torch.nn.Module, seed: int):
    """RMSNorm weights init to exactly 1.0; perturb them so that tensor mix-ups are detectable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


# ----------------------------------------------------------------------------------------------
# tokenizer (FACTS §5)
# ----------------------------------------------------------------------------------------------
_BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
_SPECIALS = ["<unk>", "<s>", "</s>"]


def _train_llama_style_tokenizer(vocab_size=VOCAB_TARGET):
    """Returns (tokenizer_json_dict, vocab list in id order, merges list)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # train with a Metaspace split so that no merge crosses a word boundary (as sentencepiece)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=_SPECIALS + _BYTE_TOKENS, show_progress=False, min_frequency=1
    )
    tok.train_from_iterator(TRAIN_TEXT * 3, trainer=trainer)
    # Llama-2 hub tokenizer.json layout (ASSUMED, FACTS §5): normalizer Prepend("▁")+Replace(" ","▁"),
    # no pre_tokenizer, BPE(byte_fallback, fuse_unk), decoder Replace/ByteFallback/Fuse/Strip,
    # post_processor TemplateProcessing "<s> $A" (BOS only, never EOS).
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    d = json.loads(tok.to_str())
    # only <unk>, <s>, </s> are "added tokens" in the real file; byte pieces live in the BPE vocab only
    d["added_tokens"] = [a for a in d["added_tokens"] if a["content"] in _SPECIALS]
    for a in d["added_tokens"]:
        a.update(single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
    vocab = sorted(d["model"]["vocab"].items(), key=lambda kv: kv[1])
    assert [t for t, _ in vocab[:3]] == _SPECIALS and vocab[3][0] == "<0x00>" and vocab[258][0] == "<0xFF>"
    merges = d["model"]["merges"]
    return d, [t for t, _ in vocab], merges


def _sentencepiece_model_bytes(vocab: list[str]) -> bytes:
    """A real sentencepiece ModelProto (BPE, byte_fallback) for `vocab`, serialised with protobuf."""
    from transformers.convert_slow_tokenizer import import_protobuf

    pb = import_protobuf()
    m = pb.ModelProto()
    for i, piece in enumerate(vocab):
        p = m.pieces.add()
        p.piece = piece
        if i == 0:
            p.type, p.score = pb.ModelProto.SentencePiece.UNKNOWN, 0.0
        elif i < 3:
            p.type, p.score = pb.ModelProto.SentencePiece.CONTROL, 0.0
        elif i < 259:
            p.type, p.score = pb.ModelProto.SentencePiece.BYTE, 0.0
        else:
            p.type, p.score = pb.ModelProto.SentencePiece.NORMAL, -float(i - 259)
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(vocab)
    ts.byte_fallback = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    return m.SerializeToString()


_TOK_CACHE: dict = {}


def _tokenizer_assets():
    if not _TOK_CACHE:
        d, vocab, merges = _train_llama_style_tokenizer()
        _TOK_CACHE.update(json=d, vocab=vocab, spm=_sentencepiece_model_bytes(vocab))
    return _TOK_CACHE


def _write_tokenizer_files(folder: Path, flavour: str) -> int:
    """flavour in {"llama2", "mistral", "e5"}; returns vocab size."""
    a = _tokenizer_assets()
    d = json.loads(json.dumps(a["json"]))
    _json_dump(folder / "tokenizer.json", d)
    (folder / "tokenizer.model").write_bytes(a["spm"])
    if flavour == "llama2":
        # FACTS §1.5: 776-byte tokenizer_config.json and 414-byte special_tokens_map.json (exact sizes
        # reproduced by these dicts). No pad token; BOS added, EOS not added; legacy false; padding right.
        def at(c):
            return {
                "__type": "AddedToken",
                "content": c,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            }

        tc = {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": at("<s>"),
            "clean_up_tokenization_spaces": False,
            "eos_token": at("</s>"),
            "legacy": False,
            "model_max_length": 1000000000000000019884624838656,
            "pad_token": None,
            "padding_side": "right",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": at("<unk>"),
        }

        def st(c):
            return {
                "content": c,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            }

        stm = {"bos_token": st("<s>"), "eos_token": st("</s>"), "unk_token": st("<unk>")}
    else:

        def ad(c):
            return {
                "content": c,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }

        tc = {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {"0": ad("<unk>"), "1": ad("<s>"), "2": ad("</s>")},
            "additional_special_tokens": [],
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": True,
            "model_max_length": 1000000000000000019884624838656,
            "pad_token": None,
            "sp_model_kwargs": {},
            "spaces_between_special_tokens": False,
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        }
        stm = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}  # FACTS §3.5 (72 bytes)
        if flavour == "e5":
            # FACTS §4.5: add_eos_token TRUE in tokenizer_config.json while tokenizer.json's
            # post-processor adds only <s> (mteb PR #5237); pad = </s>; special_tokens_map 168 bytes.
            # The remaining fields are ASSUMED to be Mistral's.
            tc["add_eos_token"] = True
            tc["additional_special_tokens"] = ["<unk>", "<s>", "</s>"]
            tc["pad_token"] = "</s>"
            stm = {
                "additional_special_tokens": ["<unk>", "<s>", "</s>"],
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "</s>",
                "unk_token": "<unk>",
            }
            _json_dump(
                folder / "added_tokens.json", {"</s>": 2, "<s>": 1, "<unk>": 0}
            )  # 42 bytes, FACTS §4.1
    _json_dump(folder / "tokenizer_config.json", tc)
    _json_dump(folder / "special_tokens_map.json", stm)
    return len(a["vocab"])


# ----------------------------------------------------------------------------------------------
# meta-llama/Llama-2-7b-hf  (FACTS §1)
# ----------------------------------------------------------------------------------------------
def _llama2_config(vocab_size: int) -> dict:
    # Same key set / values as the real 609-byte config.json (FACTS §1.3), tiny shapes.
    return {
        "_name_or_path": "meta-llama/Llama-2-7b-hf",
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": LLAMA_INTER,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": N_HEADS,
        "num_hidden_layers": N_LAYERS,
        "num_key_value_heads": LLAMA_KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.31.0.dev0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def _layer_keys(i: int, prefix: str, with_inv_freq: bool) -> list[str]:
    # state_dict order of transformers 4.31-4.34 decoder layers: self_attn (q,k,v,o[,rotary inv_freq]),
    # mlp (gate,up,down), input_layernorm, post_attention_layernorm.  FACTS §1.2
    p = f"{prefix}layers.{i}."
    keys = [p + f"self_attn.{m}_proj.weight" for m in "qkvo"]
    if with_inv_freq:
        keys.append(p + "self_attn.rotary_emb.inv_freq")
    keys += [p + f"mlp.{m}_proj.weight" for m in ("gate", "up", "down")]
    keys += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    return keys


def build_llama2(out, *, seed=0) -> Path:
    """Tiny replica of meta-llama/Llama-2-7b-hf: float16, 2 safetensors shards + index, and the
    non-persistent `model.layers.N.self_attn.rotary_emb.inv_freq` buffers STORED in the shards (float32,
    shape [head_dim/2]) and LISTED in the index (FACTS §1.2) - the thing a strict load trips on."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with _Fresh(out) as tmp:
        V = _write_tokenizer_files(tmp, "llama2")
        cfg_d = _llama2_config(V)
        _json_dump(tmp / "config.json", cfg_d)
        # generation_config.json: exact 188-byte content (FACTS §1.4)
        _json_dump(
            tmp / "generation_config.json",
            {
                "bos_token_id": 1,
                "do_sample": True,
                "eos_token_id": 2,
                "pad_token_id": 0,
                "temperature": 0.6,
                "max_length": 4096,
                "top_p": 0.9,
                "transformers_version": "4.31.0.dev0",
            },
        )
        torch.manual_seed(seed)
        cfg = LlamaConfig(
            **{
                k: v
                for k, v in cfg_d.items()
                if not k.startswith("_") and k not in ("architectures", "torch_dtype", "transformers_version")
            }
        )
        model = LlamaForCausalLM(cfg)
        _perturb_norms_(model, seed + 1)
        sd = {k: v.to(torch.float16) for k, v in model.state_dict().items()}
        head_dim = HIDDEN // N_HEADS
        # float32 like the real checkpoint: total_size 13476839424 = 2*6738415616 + 32*64*4 (FACTS §1.2)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        # shard split like the real one (10GB max shard): embed + layers 0..23 | layers 24..31 + norm + lm_head
        # i.e. a clean layer boundary at 3/4 of the depth (FACTS §1.2)
        cut = (N_LAYERS * 3) // 4
        s1 = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"]}
        s2 = {}
        for i in range(N_LAYERS):
            tgt = s1 if i < cut else s2
            for k in _layer_keys(i, "model.", with_inv_freq=True):
                tgt[k] = inv_freq.clone() if k.endswith("inv_freq") else sd[k]
        s2["model.norm.weight"] = sd["model.norm.weight"]
        s2["lm_head.weight"] = sd["lm_head.weight"]
        _write_sharded(tmp, [s1, s2])
        (tmp / "README.md").write_text(
            "Tiny replica of meta-llama/Llama-2-7b-hf (random weights). See FACTS.md.\n"
        )
    return Path(out)


# ----------------------------------------------------------------------------------------------
# castorini/repllama-v1-7b-lora-passage  (FACTS §2)
# ----------------------------------------------------------------------------------------------
REPLLAMA_TARGETS_CODE = ["q_proj", "v_proj", "o_proj", "down_proj", "up_proj", "gate_proj"]  # tevatron code
REPLLAMA_TARGETS_7 = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "up_proj", "gate_proj"]


def _peft05_adapter_config(
    base: str, r: int, alpha: int, dropout: float, targets: list[str], task_type: str
) -> dict:
    # peft 0.5.x LoraConfig.to_dict() field set; written with indent=2, sort_keys=True and NO trailing
    # newline (peft's save_pretrained). With 7 targets this reproduces the real 532-byte (RepLLaMA) and
    # 533-byte (e5 lora/) files exactly (FACTS §2.2, §4.6).
    return {
        "auto_mapping": None,
        "base_model_name_or_path": base,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "revision": None,
        "target_modules": targets,
        "task_type": task_type,
    }


def _random_lora_state(
    base_model: torch.nn.Module,
    targets,
    r: int,
    alpha: int,
    seed: int,
    task_type="FEATURE_EXTRACTION",
    b_std=0.02,
):
    """Wrap `base_model` (a bare LlamaModel / MistralModel) with PEFT LoRA, give A and B random values
    (B is zero at init; a trained adapter is not), return PEFT's saved state dict (adapter name
    stripped: `base_model.model.layers.0.self_attn.q_proj.lora_A.weight`) as float32."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    cfg = LoraConfig(
        task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=0.1, target_modules=list(targets)
    )
    pm = get_peft_model(base_model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n:
                p.copy_(torch.randn(p.shape, generator=g) / (p.shape[1] ** 0.5))
            elif "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * b_std)
    sd = {k: v.detach().to(torch.float32).clone() for k, v in get_peft_model_state_dict(pm).items()}
    return sd


def build_repllama(out, llama_dir, *, seed=1, include_k_proj=False, r=32, alpha=64) -> Path:
    """Tiny replica of castorini/repllama-v1-7b-lora-passage: `adapter_config.json` + `adapter_model.bin`
    ONLY (no safetensors, no tokenizer), a PEFT LoRA over the bare LlamaModel (task FEATURE_EXTRACTION),
    keys `base_model.model.layers.N.<mod>.lora_{A,B}.weight`, float32 tensors, and
    base_model_name_or_path = "meta-llama/Llama-2-7b-hf" (a Hub id, not a path). FACTS §2.

    include_k_proj: the tevatron training code lists q,v,o,down,up,gate (the default here, as the
    project SPEC says), but the real files' byte sizes (532-byte config, 320 MB bin) match 7 targets
    including k_proj (FACTS §2.3). Pass include_k_proj=True to build that variant."""
    from transformers import AutoModel

    targets = REPLLAMA_TARGETS_7 if include_k_proj else REPLLAMA_TARGETS_CODE
    base = AutoModel.from_pretrained(llama_dir, dtype=torch.float32)  # bare LlamaModel
    sd = _random_lora_state(base, targets, r, alpha, seed)
    with _Fresh(out) as tmp:
        torch.save(sd, tmp / "adapter_model.bin")
        _json_dump(
            tmp / "adapter_config.json",
            _peft05_adapter_config("meta-llama/Llama-2-7b-hf", r, alpha, 0.1, targets, "FEATURE_EXTRACTION"),
            trailing_newline=False,
            sort_keys=True,
        )
        (tmp / "README.md").write_text(
            "Tiny replica of castorini/repllama-v1-7b-lora-passage. See FACTS.md.\n"
        )
    return Path(out)


# ----------------------------------------------------------------------------------------------
# mistralai/Mistral-7B-v0.1  (FACTS §3)
# ----------------------------------------------------------------------------------------------
def _mistral_config(vocab_size: int) -> dict:
    # real 571-byte config.json key set (FACTS §3.3): no _name_or_path, torch_dtype bfloat16
    return {
        "architectures": ["MistralForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": MISTRAL_INTER,
        "max_position_embeddings": 32768,
        "model_type": "mistral",
        "num_attention_heads": N_HEADS,
        "num_hidden_layers": N_LAYERS,
        "num_key_value_heads": MISTRAL_KV_HEADS,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0.dev0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def _mistral_shards(sd: dict, prefix: str, with_lm_head: bool):
    """Real split (FACTS §3.2/§4.2): shard 1 = embed + layers 0..21 + the ATTENTION of layer 22;
    shard 2 = layer 22's mlp + norms, layers 23..31, norm (+ lm_head). The split falls INSIDE a layer.
    Tiny: embed + layers[0 : cut] + attention of layer `cut` | rest."""
    cut = (N_LAYERS * 22) // 32 if N_LAYERS >= 4 else 1  # 4 layers -> cut 2
    s1 = {f"{prefix}embed_tokens.weight": sd[f"{prefix}embed_tokens.weight"]}
    s2 = {}
    for i in range(N_LAYERS):
        for k in _layer_keys(i, prefix, with_inv_freq=False):
            in_first = i < cut or (i == cut and ".self_attn." in k)
            (s1 if in_first else s2)[k] = sd[k]
    s2[f"{prefix}norm.weight"] = sd[f"{prefix}norm.weight"]
    if with_lm_head:
        s2["lm_head.weight"] = sd["lm_head.weight"]
    assert len(s1) + len(s2) == len(sd), "shard split lost tensors"
    return [s1, s2]


def build_mistral(out, *, seed=2) -> Path:
    """Tiny replica of mistralai/Mistral-7B-v0.1: MistralForCausalLM, **bfloat16** (the real
    torch_dtype, FACTS §3.3; not float16), 2 safetensors shards + index, no inv_freq in the files."""
    from transformers import MistralConfig, MistralForCausalLM

    with _Fresh(out) as tmp:
        V = _write_tokenizer_files(tmp, "mistral")
        cfg_d = _mistral_config(V)
        _json_dump(tmp / "config.json", cfg_d)
        _json_dump(
            tmp / "generation_config.json",  # exact 116-byte content (FACTS §3.4)
            {
                "_from_model_config": True,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "transformers_version": "4.34.0.dev0",
            },
        )
        torch.manual_seed(seed)
        cfg = MistralConfig(
            **{
                k: v
                for k, v in cfg_d.items()
                if k not in ("architectures", "torch_dtype", "transformers_version")
            }
        )
        model = MistralForCausalLM(cfg)
        _perturb_norms_(model, seed + 1)
        sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
        _write_sharded(
            tmp, _mistral_shards(sd, "model.", with_lm_head=True), index_indent=4, index_newline=False
        )
        (tmp / "README.md").write_text(
            "Tiny replica of mistralai/Mistral-7B-v0.1 (random weights). See FACTS.md.\n"
        )
    return Path(out)


# ----------------------------------------------------------------------------------------------
# intfloat/e5-mistral-7b-instruct  (FACTS §4)
# ----------------------------------------------------------------------------------------------
E5_TARGETS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "down_proj",
    "up_proj",
    "gate_proj",
]  # lora/adapter_config.json


def build_e5_mistral(out, mistral_dir, *, seed=3, with_lora_dir=True) -> Path:
    """Tiny replica of intfloat/e5-mistral-7b-instruct: a bare **MistralModel** (no lm_head), float16,
    tensor names WITHOUT the "model." prefix (`embed_tokens.weight`, `layers.0...`, `norm.weight`;
    FACTS §4.2), 2 shards + index, plus the sentence-transformers files and the `lora/` sub-folder
    (adapter_config.json r=16/alpha=32 on all 7 projections + adapter_model.bin; FACTS §4.6).

    Weights = Mistral replica (bf16) + merged random LoRA (r=16, alpha=32) on the 7 projections, computed
    in float32 and cast ONCE to float16 - so, as for the real pair, the retriever delta sits on the LoRA
    targets, and the non-target tensors differ from the base only by the bf16->fp16 cast (exactly zero
    unless a value falls in fp16's subnormal range)."""
    from transformers import AutoModel

    base = AutoModel.from_pretrained(mistral_dir, dtype=torch.float32)  # MistralModel (drops lm_head)
    base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    r, alpha = 16, 32
    lora_sd = _random_lora_state(base, E5_TARGETS, r, alpha, seed)
    scale = alpha / r
    merged = dict(base_sd)
    for k in list(lora_sd):
        if ".lora_A." not in k:
            continue
        mod = k[len("base_model.model.") :].replace(".lora_A.weight", "")
        A, B = lora_sd[k], lora_sd[k.replace("lora_A", "lora_B")]
        merged[mod + ".weight"] = base_sd[mod + ".weight"] + scale * (B @ A)
    sd16 = {k: v.to(torch.float16) for k, v in merged.items()}

    with _Fresh(out) as tmp:
        V = _write_tokenizer_files(tmp, "e5")
        cfg_d = {
            "_name_or_path": "mistralai/Mistral-7B-v0.1",
            "architectures": ["MistralModel"],
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": HIDDEN,
            "initializer_range": 0.02,
            "intermediate_size": MISTRAL_INTER,
            "max_position_embeddings": 32768,
            "model_type": "mistral",
            "num_attention_heads": N_HEADS,
            "num_hidden_layers": N_LAYERS,
            "num_key_value_heads": MISTRAL_KV_HEADS,
            "pad_token_id": 2,
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "sliding_window": 4096,
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "transformers_version": "4.34.0",
            "use_cache": False,
            "vocab_size": V,
        }  # real 629-byte config (FACTS §4.3)
        _json_dump(tmp / "config.json", cfg_d)
        _write_sharded(
            tmp, _mistral_shards(sd16, "", with_lm_head=False), index_indent=4, index_newline=False
        )
        # sentence-transformers files (FACTS §4.1; contents ASSUMED except the line counts)
        _json_dump(
            tmp / "modules.json",
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ],
        )
        _json_dump(tmp / "sentence_bert_config.json", {"max_seq_length": 4096, "do_lower_case": False})
        (tmp / "1_Pooling").mkdir()
        _json_dump(
            tmp / "1_Pooling" / "config.json",
            {
                "word_embedding_dimension": HIDDEN,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": True,
                "include_prompt": True,
            },
        )
        if with_lora_dir:
            (tmp / "lora").mkdir()
            torch.save(lora_sd, tmp / "lora" / "adapter_model.bin")
            _json_dump(
                tmp / "lora" / "adapter_config.json",
                _peft05_adapter_config(
                    "mistralai/Mistral-7B-v0.1", r, alpha, 0.1, E5_TARGETS, "FEATURE_EXTRACTION"
                ),
                trailing_newline=False,
                sort_keys=True,
            )
        (tmp / "README.md").write_text(
            "Tiny replica of intfloat/e5-mistral-7b-instruct (random weights). See FACTS.md.\n"
        )
    return Path(out)


def build_all(root: Path, include_k_proj: bool = False) -> dict[str, Path]:
    """All four replicas under ``root`` in Hub cache layout; ``repllama_k`` is RepLLaMA with k_proj (FACTS §2.3)."""
    paths = {"llama2": build_llama2(snapshot_dir(root, "meta-llama/Llama-2-7b-hf"))}
    paths["repllama"] = build_repllama(
        snapshot_dir(root, "castorini/repllama-v1-7b-lora-passage"), paths["llama2"]
    )
    if include_k_proj:
        paths["repllama_k"] = build_repllama(
            root / "repllama-with-k_proj", paths["llama2"], include_k_proj=True
        )
    paths["mistral"] = build_mistral(snapshot_dir(root, "mistralai/Mistral-7B-v0.1"))
    paths["e5"] = build_e5_mistral(snapshot_dir(root, "intfloat/e5-mistral-7b-instruct"), paths["mistral"])
    return paths
