#!/usr/bin/env python
"""GPU benchmark at 7B shapes (random weights): training and encoding throughput of every path, what each
removed cost was worth, peak memory, RE-Adapt arithmetic; writes JSON + Markdown to experiments/results/.

Every row runs the project's own code: the batch plan and collation (:mod:`readaptir.train.batching`),
the loss on target tokens (:mod:`readaptir.train.objective`), DoRA's once-per-step norm
(:mod:`readaptir.train.dora_norm`), the attention backends (:mod:`readaptir.attention`) and the encoder
(:func:`readaptir.retrieval.dense.encode_ids`). The training step is the loop of
:func:`readaptir.train.knowledge.train_knowledge_adapter` without Accelerate and checkpoints. Needs only
torch, transformers and peft plus the project's pure-Python modules (no pydantic, Hydra, W&B, FAISS);
the RE-Adapt row also needs pydantic and is skipped without it.

    make bench-gpu                                            # LLaMA-2-7B shapes, bf16, ≤ 8 min on one GPU
    python experiments/bench_gpu.py --shape mistral-7b        # grouped-query attention (8 KV heads)
    python experiments/bench_gpu.py --shape tiny --device cpu --out /tmp/bench   # CPU smoke test, seconds
    python experiments/bench_gpu.py --shape small --device cpu --threads 1 --interleave --train-steps 3
                                                              # CPU figures on a shared machine (minutes)

Rows (each in its own try: an error or out-of-memory is recorded and the next row runs; the report is
rewritten after every row, so a killed run keeps what it measured; ``--time-budget-s`` skips the rest):

- ``check``: numerics of the fused kernel on this GPU: packed embeddings vs one at a time (cosine), per-
  passage loss packed vs alone (relative), backward fused vs the per-passage reference.
- ``encode_arrival`` / ``encode_sorted`` / ``encode_packed_varlen``: passages/s of corpus encoding.
- ``train_paper`` / ``train_packed_sdpa`` / ``train_packed_varlen``: knowledge-adapter training at the
  paper's DoRA recipe (dropout included), passages/s and tokens/s.
- one cost each, added back to ``train_packed_varlen``: ``+hf_loss`` (logits and loss at every position),
  ``+sync`` (read loss and grad norm every step), ``+ckpt`` / ``+ckpt_norm_every_forward`` (gradient
  checkpointing with and without the once-per-step DoRA norm), ``compile`` (torch.compile per layer),
  ``dropout0`` (DoRA without dropout: not the recipe, the ceiling PEFT's second base matmul costs).
- ``readapt``: RE-Adapt weight arithmetic (CPU, safetensors shards) on a few 7B-shaped layers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from readaptir.attention import interface  # noqa: E402
from readaptir.attention.interface import PATHS, set_attention, versions  # noqa: E402
from readaptir.fs import atomic_write  # noqa: E402
from readaptir.retrieval.dense import (  # noqa: E402
    embed_batch,
    embed_packed,
    encode_ids,
    make_batches,
    padding_fraction,
)
from readaptir.train.batching import make_batch, plan_batches  # noqa: E402
from readaptir.train.causal_lm import compile_layers, peft_config  # noqa: E402
from readaptir.train.dora_norm import cache_dora_norms  # noqa: E402
from readaptir.train.objective import Targets, target_loss_sum  # noqa: E402

SHAPES = {  # config.json of meta-llama/Llama-2-7b-hf and mistralai/Mistral-7B-v0.1 (e5-mistral's base)
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, sliding_window=4096),
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=384, max_position_embeddings=4096),
}  # fmt: skip
BOS, EOS, PAD = 1, 2, 2  # pad = eos, as the retrievers' configs (pooling and loss are mask based)
DEFAULTS = {  # per device; flags override
    "cuda": dict(
        encode_passages=2048, train_steps=8, warmup=2, check_passages=32, max_row_seconds=30.0, repeats=1
    ),
    "cpu": dict(
        encode_passages=96, train_steps=2, warmup=1, check_passages=8, max_row_seconds=20.0, repeats=1
    ),
}
TARGET_COSINE, TARGET_LOSS_REL = 0.999, 1e-3  # the acceptance thresholds for bf16 on GPU


@dataclass(frozen=True)
class Variant:
    """One training configuration; the project's packed path is ``Variant("packed", "varlen")``."""

    batching: str
    attention: str
    hf_loss: bool = False  # transformers' labels path: logits and loss at every position
    sync: bool = False  # read loss and gradient norm every step (what the loop did before)
    checkpointing: bool = False
    norm_cache: bool = True
    dropout: bool = True
    compile: bool = False


PACKED = Variant("packed", "varlen")
TRAIN_ROWS = {
    "train_paper": Variant("paper", "sdpa"),
    "train_packed_sdpa": Variant("packed", "sdpa"),
    "train_packed_varlen": PACKED,
    "train_packed_varlen+hf_loss": replace(PACKED, hf_loss=True),
    "train_packed_varlen+sync": replace(PACKED, sync=True),
    "train_packed_varlen+ckpt": replace(PACKED, checkpointing=True),
    "train_packed_varlen+ckpt_norm_every_forward": replace(PACKED, checkpointing=True, norm_cache=False),
    "train_packed_varlen_dropout0": replace(PACKED, dropout=False),
    "train_packed_varlen_compile": replace(PACKED, compile=True),
}
ENCODE_ROWS = {"encode_arrival": "arrival", "encode_sorted": "sorted", "encode_packed_varlen": "packed"}


# ---------------------------------------------------------------------------------------------- setup


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    p.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mean-len", type=float, default=78.0, help="mean passage tokens incl. BOS/EOS (MS-MARCO)"
    )
    p.add_argument("--max-encode-len", type=int, default=512)
    for k, v in DEFAULTS["cuda"].items():
        p.add_argument(
            "--" + k.replace("_", "-"), type=type(v), default=None, help=f"cuda {v}, cpu {DEFAULTS['cpu'][k]}"
        )
    p.add_argument("--readapt-layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA only"
    )
    p.add_argument("--time-budget-s", type=float, default=420.0, help="rows starting after this are skipped")
    p.add_argument("--interleave", action="store_true", help="training rows one step each in turn (A B C A B C…), "
                   "each keeping its fastest step: load that comes and goes hits every row alike (CPU)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=1, help="run the throughput rows this many times in turn and "
                   "keep each row's best (steadier on a shared machine)")  # fmt: skip
    p.add_argument("--only", default="", help="comma-separated rows to run")
    p.add_argument("--skip", default="", help="comma-separated rows to skip")
    p.add_argument("--commit", default=os.environ.get("READAPTIR_COMMIT"), help="default: git rev-parse HEAD")
    p.add_argument("--dry-run", action="store_true", help="write the report header and exit")
    a = p.parse_args(argv)
    for k, v in DEFAULTS[a.device].items():
        setattr(a, k, v if getattr(a, k) is None else getattr(a, k))
    a.compile = a.device == "cuda" if a.compile is None else a.compile
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available (use --device cpu for the smoke test)")
    return a


def recipe_and_train() -> tuple[SimpleNamespace, dict]:
    """The paper's recipe from conf/ (the files the grid reads), so the benchmark never drifts from it."""
    import yaml  # a transformers dependency

    adapter = yaml.safe_load((REPO / "conf" / "adapter" / "in-domain.yaml").read_text())
    train = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())["train"]
    keys = ("method", "r", "alpha", "dropout", "targets")
    return SimpleNamespace(**{k: adapter[k] for k in keys}), train


def lognormal_lengths(n: int, mean: float, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """MS-MARCO-like passage lengths incl. BOS/EOS: log-normal (σ 0.5, median ≈ 70), clipped to [4, max]."""
    sigma = 0.5
    return np.clip(rng.lognormal(math.log(mean) - sigma**2 / 2, sigma, n).round(), 4, max_len).astype(int)


def passages(lengths: np.ndarray, vocab: int, rng: np.random.Generator) -> list[list[int]]:
    return [[BOS, *rng.integers(3, vocab, size=n - 2).tolist(), EOS] for n in lengths]


def build_model(shape: str, device: str, dtype: torch.dtype, layers: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    dims = {**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})}
    mistral = "sliding_window" in dims
    config = (MistralConfig if mistral else LlamaConfig)(
        **dims, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False
    )
    with torch.device(device):
        cls = MistralForCausalLM if mistral else LlamaForCausalLM
        return cls._from_config(config, dtype=dtype, attn_implementation="sdpa").eval()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


# ---------------------------------------------------------------------------------------------- rows


@dataclass
class Bench:
    args: argparse.Namespace
    dtype: torch.dtype
    model: Any
    recipe: SimpleNamespace
    train: dict
    encode_seqs: list[list[int]]
    train_seqs: list[list[int]]
    batches: dict[str, list[np.ndarray]]
    peft: Any = None
    dropouts: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        return self.args.device

    def autocast(self):
        cuda = self.device == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)


def run_check(b: Bench) -> dict:
    """Packed (fused on CUDA) vs one at a time, the reference vs the kernel, forward and backward."""
    base, seqs = b.model.model, b.encode_seqs[: b.args.check_passages]
    set_attention(base, "sdpa")
    alone = torch.cat([embed_batch(base, [s], PAD, EOS) for s in seqs])
    set_attention(b.model, "varlen")
    PATHS.reset()
    packed = embed_packed(base, seqs, EOS)
    paths = dict(PATHS)
    interface.FORCE_REFERENCE = True
    try:
        reference = embed_packed(base, seqs, EOS)
    finally:
        interface.FORCE_REFERENCE = False
    losses = per_passage_losses(b, seqs)
    grad = backward_check(b, seqs)
    set_attention(b.model, "sdpa")
    cosine = float((packed * alone).sum(-1).min())
    return dict(
        passages=len(seqs), attention_paths=paths, min_cosine_packed_vs_alone=round(cosine, 6),
        max_abs_diff_fused_vs_reference=float(f"{(packed - reference).abs().max().item():.3e}"),
        max_loss_rel_diff_packed_vs_alone=float(f"{losses:.3e}"), grad_rel_diff_fused_vs_reference=grad,
        meets_targets=bool(cosine >= TARGET_COSINE and losses <= TARGET_LOSS_REL),
    )  # fmt: skip


@torch.inference_mode()
def per_passage_losses(b: Bench, seqs: list[list[int]]) -> float:
    """Largest relative difference of a passage's mean loss, packed (varlen) vs alone (SDPA)."""
    batch = make_batch(seqs, "packed", PAD, varlen=True)
    labels, cu = batch.pop("labels"), batch["cu_seq_lens_q"].tolist()
    batch = {k: v.to(b.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with b.autocast():
        logits = b.model(**batch, use_cache=False).logits[0].float()
    tok = torch.nn.functional.cross_entropy(logits[:-1], labels[0, 1:].to(b.device), reduction="none")
    set_attention(b.model, "sdpa")
    worst = 0.0
    for (s, e), seq in zip(zip(cu[:-1], cu[1:], strict=True), seqs, strict=True):
        ids = torch.tensor([seq], device=b.device)
        with b.autocast():
            alone = b.model(input_ids=ids, labels=ids, use_cache=False).loss.float()
        worst = max(worst, abs(tok[s : e - 1].mean().item() - alone.item()) / abs(alone.item()))
    set_attention(b.model, "varlen")
    return worst


def backward_check(b: Bench, seqs: list[list[int]]) -> float:
    """Relative difference of d(mean hidden²)/d(input embeddings), fused kernel vs reference."""
    base = b.model.model
    batch = make_batch(seqs, "packed", PAD, varlen=True)
    batch.pop("labels")
    ids = batch.pop("input_ids").to(b.device)
    kw = {k: v.to(b.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    grads = []
    for forced in (False, True):
        interface.FORCE_REFERENCE = forced
        try:
            x = base.embed_tokens(ids).detach().requires_grad_(True)
            base(inputs_embeds=x, attention_mask=None, use_cache=False, **kw).last_hidden_state.float().pow(
                2
            ).mean().backward()
            grads.append(x.grad.float())
        finally:
            interface.FORCE_REFERENCE = False
    return float(f"{((grads[0] - grads[1]).norm() / grads[1].norm().clamp_min(1e-30)).item():.3e}")


class _Enough(Exception):
    pass


def run_encode(b: Bench, mode: str) -> dict:
    """Corpus encoding through the project's encoder: arrival order, length-sorted, or packed varlen."""
    base, seqs, dev = b.model.model, b.encode_seqs, b.device
    attention = "varlen" if mode == "packed" else "sdpa"
    set_attention(base, attention)
    budget, max_batch = 65536, 256  # conf/config.yaml `encode:`
    kw = dict(token_budget=budget, max_batch_size=max_batch, sort=mode != "arrival", attention=attention)
    lengths = [len(s) for s in seqs]
    encode_ids(base, seqs[:64], PAD, EOS, **kw)  # warm-up
    pad = (
        0.0
        if mode == "packed"
        else padding_fraction(lengths, make_batches(lengths, budget, max_batch, mode != "arrival"))
    )
    windows = []
    for _ in range(b.args.repeats):
        sync(dev)
        done, t0 = [0, 0], time.perf_counter()

        def write(idx: np.ndarray, vecs: np.ndarray, done=done, t0=t0) -> None:
            done[0] += len(idx)
            done[1] += sum(lengths[i] for i in idx)
            if time.perf_counter() - t0 > b.args.max_row_seconds:
                raise _Enough

        PATHS.reset()
        try:
            encode_ids(base, seqs, PAD, EOS, **kw, write=write)
        except _Enough:
            pass
        sync(dev)
        dt = time.perf_counter() - t0
        windows.append(dict(passages=done[0], seconds=round(dt, 3), passages_per_s=round(done[0] / dt, 2),
                            tokens_per_s=round(done[1] / dt, 1), padding_fraction=round(pad, 4)))  # fmt: skip
    return max(windows, key=lambda w: w["passages_per_s"])


def prepare_peft(b: Bench, v: Variant) -> list[torch.nn.Parameter]:
    """The PEFT model in the variant's configuration; returns the trainable parameters."""
    from peft import get_peft_model

    if b.peft is None:
        b.peft = get_peft_model(b.model, peft_config(b.recipe))
        cache_dora_norms(b.peft)
        b.dropouts = {(m, k): d for m in b.peft.modules() for k, d in getattr(m, "lora_dropout", {}).items()}
    for (m, k), d in b.dropouts.items():
        m.lora_dropout[k] = d if v.dropout else torch.nn.Identity()  # Identity: PEFT reuses the base result
    for m in b.peft.modules():
        if type(m).__name__ == "DoraLinearLayer" and not v.norm_cache:
            vars(m).pop("get_weight_norm", None), vars(m).pop("get_lora_weight", None)
    base = b.peft.get_base_model()
    if v.checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if v.compile:
        compile_layers(b.peft)
    set_attention(b.peft, v.attention)
    b.peft.train()
    return [p for p in b.peft.parameters() if p.requires_grad]


def restore_peft(b: Bench, v: Variant) -> None:
    base = b.peft.get_base_model()
    if v.checkpointing:
        base.gradient_checkpointing_disable()
    if not v.norm_cache:
        cache_dora_norms(b.peft)
    if v.compile:  # back to eager, so later rows (and rounds) measure what they name
        for m in b.peft.modules():
            if type(m).__name__.endswith("DecoderLayer"):
                m._compiled_call_impl = None
    set_attention(b.peft, "sdpa")


def train_step(b: Bench, v: Variant, seqs, params, opt) -> torch.Tensor:
    """One optimizer step as the training loop takes it; returns the mean loss (on the device)."""
    dev, cuda = b.device, b.device == "cuda"
    batch = make_batch(seqs, v.batching, PAD, varlen=v.attention == "varlen")

    def move(t):
        return (t.pin_memory() if cuda else t).to(dev, non_blocking=cuda) if torch.is_tensor(t) else t

    with b.autocast():
        if v.hf_loss:
            loss = b.peft(**{k: move(t) for k, t in batch.items()}, use_cache=False).loss
        else:
            targets = Targets.of(batch.pop("labels"))
            inputs = {k: move(t) for k, t in batch.items()}
            loss = target_loss_sum(b.peft, inputs, Targets(move(targets.index), move(targets.ids))) / len(
                targets
            )
    if v.sync:
        loss.item()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, b.train["max_grad_norm"] or float("inf"))
    if v.sync:
        norm.item()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def _timed_steps(b: Bench, v: Variant, params, opt, batches) -> dict:
    sync(b.device)
    PATHS.reset()
    t0, n_p, n_t, slots, steps = time.perf_counter(), 0, 0, 0, 0
    loss = torch.tensor(math.nan)
    for idx in batches:
        seqs = [b.train_seqs[i] for i in idx]
        loss = train_step(b, v, seqs, params, opt)
        lengths = [len(s) for s in seqs]
        n_p, n_t, steps = n_p + len(seqs), n_t + sum(lengths), steps + 1
        slots += len(lengths) * max(lengths) if v.batching == "paper" else sum(lengths)
        if time.perf_counter() - t0 > b.args.max_row_seconds:
            break
    sync(b.device)
    dt = time.perf_counter() - t0
    return dict(passages=n_p, steps=steps, seconds=round(dt, 3), passages_per_s=round(n_p / dt, 2),
                tokens_per_s=round(n_t / dt, 1), padding_fraction=round(1 - n_t / max(slots, 1), 4),
                last_loss=round(float(loss), 4))  # fmt: skip


def run_train(b: Bench, v: Variant) -> dict:
    """Training steps of one variant after a warm-up; the fastest of ``--repeats`` timed windows."""
    params = prepare_peft(b, v)
    opt = torch.optim.AdamW(params, lr=float(b.train["lr"]), weight_decay=float(b.train["weight_decay"]))
    batches = b.batches[v.batching]
    warmup = b.args.warmup + (2 if v.compile else 0)  # compilation happens in the first steps
    try:
        for idx in batches[:warmup]:
            train_step(b, v, [b.train_seqs[i] for i in idx], params, opt)
        timed = batches[warmup : warmup + b.args.train_steps]
        windows = [_timed_steps(b, v, params, opt, timed) for _ in range(b.args.repeats)]
    finally:
        restore_peft(b, v)
    return max(windows, key=lambda w: w["passages_per_s"])


def run_interleaved(b: Bench, names: list[str]) -> dict[str, dict]:
    """The training rows ``names`` one step each in turn on the same batch, each row's rate its fastest
    timed step."""
    opts: dict[str, torch.optim.Optimizer] = {}
    out: dict[str, dict] = {
        n: {"status": "ok", "steps": 0, "passages_per_s": 0.0, "tokens_per_s": 0.0} for n in names
    }
    for k in range(b.args.warmup + b.args.train_steps):
        for name in names:
            v = TRAIN_ROWS[name]
            params = prepare_peft(b, v)
            opt = opts.setdefault(name, torch.optim.AdamW(params, lr=float(b.train["lr"])))
            seqs = [b.train_seqs[i] for i in b.batches[v.batching][0]]  # the same work every step
            PATHS.reset()
            try:
                sync(b.device)
                t0 = time.perf_counter()
                train_step(b, v, seqs, params, opt)
                sync(b.device)
                dt = time.perf_counter() - t0
            finally:
                restore_peft(b, v)
            if k >= b.args.warmup:
                r, n_t = out[name], sum(len(s) for s in seqs)
                r["steps"] += 1
                slots = len(seqs) * max(len(s) for s in seqs) if v.batching == "paper" else n_t
                if len(seqs) / dt > r["passages_per_s"]:
                    r.update(passages_per_s=round(len(seqs) / dt, 2), tokens_per_s=round(n_t / dt, 1),
                             seconds=round(dt, 3), padding_fraction=round(1 - n_t / slots, 4))  # fmt: skip
                r["attention_paths"] = dict(PATHS)
    return out


def run_readapt(b: Bench) -> dict:
    """RE-Adapt arithmetic (the project's readapt_weights, on the CPU) on a few 7B-shaped layers."""
    import tempfile

    try:
        from readaptir.readapt.arithmetic import readapt_weights
    except ImportError as exc:
        return dict(status="skipped", error=f"needs {exc.name} (the full project install)")
    from peft import get_peft_model

    layers = min(b.args.readapt_layers, SHAPES[b.args.shape]["num_hidden_layers"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(1)
        pre = build_model(b.args.shape, "cpu", torch.bfloat16, layers)
        pre.save_pretrained(tmp / "pre")
        torch.manual_seed(2)
        build_model(b.args.shape, "cpu", torch.bfloat16, layers).model.save_pretrained(
            tmp / "ret"
        )  # e5-style
        cfg = peft_config(b.recipe)
        cfg.init_lora_weights = False  # a trained-looking Ψ: B ≠ 0
        get_peft_model(pre, cfg).save_pretrained(tmp / "psi")
        del pre
        t0 = time.perf_counter()
        out = readapt_weights(tmp / "pre", tmp / "ret", tmp / "psi", alpha=0.5)
        dt = time.perf_counter() - t0
    n = sum(t.numel() for t in out.values())
    per_layer = sum(t.numel() for k, t in out.items() if ".layers." in k) / layers
    full = n - per_layer * layers + per_layer * SHAPES[b.args.shape]["num_hidden_layers"]
    return dict(layers=layers, seconds=round(dt, 3), params_per_s=round(n / dt), tensors=len(out),
                full_model_seconds_estimate=round(full / (n / dt), 1))  # fmt: skip


# ---------------------------------------------------------------------------------------------- report


def commit(given: str | None) -> str:
    if given:
        return given
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
        ).stdout
        return head.stdout.strip() + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git checkout: pass --commit or READAPTIR_COMMIT)"


def device_meta(device: str) -> dict:
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return dict(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"sm{p.major}{p.minor}", cuda=torch.version.cuda)  # fmt: skip
    return dict(
        gpu=None, cpu=f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    )


def rates(rows: list[dict]) -> dict:
    """The throughputs the project's default paths reached (what `make plan` prices a grid with)."""
    ok = {r["name"]: r for r in rows if r.get("status") == "ok"}

    def first(*names: str) -> float | None:
        return next((ok[n]["passages_per_s"] for n in names if n in ok and not ok[n].get("not_fused")), None)

    return {
        "train_passages_per_s": {"paper": first("train_paper"),
                                 "packed": first("train_packed_varlen", "train_packed_sdpa")},
        "encode_passages_per_s": first("encode_packed_varlen", "encode_sorted"),
    }  # fmt: skip


def markdown(meta: dict, rows: list[dict]) -> str:
    v = meta["versions"]
    head = [
        f"# GPU benchmark: {meta['shape']} shapes, {meta['dtype']}, random weights",
        "",
        f"- device: {meta['gpu']} ({meta['capability']}, {meta['gpu_memory_gib']} GiB, CUDA {meta['cuda']})"
        if meta.get("gpu")
        else f"- device: CPU, {meta['cpu']}",
        f"- torch {v['torch']}, transformers {v['transformers']}, peft {v.get('peft')}; commit {meta['commit']}",
        f"- varlen_attn: `{v['varlen_attn']}`",
        f"- recipe: {meta['recipe']}; passages: log-normal, mean {meta['data']['train_mean_len']} tokens",
        f"- {meta['date']}, {meta.get('total_s', '…')} s in all",
        "",
        "| row | status | passages/s | tokens/s | × first | padding | peak GiB | steps | s | attention | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {}
    for r in rows:
        kind = r["name"].split("_")[0]
        x = ""
        if r.get("passages_per_s"):
            base.setdefault(kind, r["passages_per_s"])
            x = f"{r['passages_per_s'] / base[kind]:.1f}×"
        paths = ", ".join(f"{k}×{n}" for k, n in (r.get("attention_paths") or {}).items())
        notes = r.get("error", "")
        if r["name"] == "check" and r.get("status") == "ok":
            notes = (f"min cosine {r['min_cosine_packed_vs_alone']} (≥ {TARGET_COSINE}), loss rel Δ "
                     f"{r['max_loss_rel_diff_packed_vs_alone']} (≤ {TARGET_LOSS_REL}), fused vs reference "
                     f"{r['max_abs_diff_fused_vs_reference']}, grad rel Δ {r['grad_rel_diff_fused_vs_reference']}")  # fmt: skip
        if r["name"] == "readapt" and r.get("status") == "ok":
            notes = f"{r['layers']} layers; full model ≈ {r['full_model_seconds_estimate']} s (CPU)"
        if r.get("not_fused"):
            notes = f"NOT FUSED: {r['not_fused']} {notes}"
        cells = [r["name"], r.get("status", ""), r.get("passages_per_s", ""), r.get("tokens_per_s", ""), x,
                 r.get("padding_fraction", ""), r.get("peak_gib", ""), r.get("steps", r.get("passages", "")),
                 r.get("seconds", ""), paths, notes]  # fmt: skip
        head.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return "\n".join(head) + "\n"


def write_report(stem: Path, meta: dict, rows: list[dict]) -> None:
    meta = {**meta, "rates": rates(rows)}
    atomic_write(stem.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    atomic_write(stem.with_suffix(".md"), markdown(meta, rows))


# ---------------------------------------------------------------------------------------------- main


def setup(a: argparse.Namespace) -> tuple[Bench, dict]:
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    rng = np.random.default_rng(a.seed)
    recipe, train = recipe_and_train()
    vocab = SHAPES[a.shape]["vocab_size"]
    enc = passages(lognormal_lengths(a.encode_passages, a.mean_len, a.max_encode_len, rng), vocab, rng)
    budget = int(train["batch_size"]) * int(train["max_tokens"])  # packed: 4 × 1024 tokens per step
    need = (a.warmup + 2 + a.train_steps) * max(int(train["batch_size"]), budget // int(a.mean_len) + 8)
    lengths = lognormal_lengths(need, a.mean_len, int(train["max_tokens"]), rng)
    batches = {}
    for batching in ("paper", "packed"):
        order, bounds = plan_batches(
            lengths, batching, int(train["batch_size"]), int(train["max_tokens"]), a.seed, 1
        )
        batches[batching] = [order[s:e] for s, e in zip(bounds[:-1], bounds[1:], strict=True)][:-1]
    meta = dict(
        shape=a.shape, dtype=str(dtype).removeprefix("torch."), device=a.device, **device_meta(a.device),
        versions=versions(), commit=commit(a.commit), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        recipe=f"{recipe.method} r={recipe.r} alpha={recipe.alpha} dropout={recipe.dropout} on {','.join(recipe.targets)}",
        args={k: str(v) for k, v in vars(a).items()},
        data=dict(encode_passages=len(enc), encode_mean_len=round(float(np.mean([len(s) for s in enc])), 1),
                  train_mean_len=round(float(lengths.mean()), 1)),
    )  # fmt: skip
    b = Bench(a, dtype, None, recipe, train, enc, passages(lengths, vocab, rng), batches)
    return b, meta


def _no_compile(b: Bench) -> dict:
    return dict(status="skipped", error="torch.compile off (the default on CPU; --compile runs it)")


def plan_rows(a: argparse.Namespace) -> list[tuple[str, Callable[[Bench], dict]]]:
    """In order; compilation last, since it stays on the layers it compiled."""
    rows: list[tuple[str, Callable[[Bench], dict]]] = [("check", run_check)]
    rows += [(n, lambda b, m=m: run_encode(b, m)) for n, m in ENCODE_ROWS.items()]
    train = [n for n, v in TRAIN_ROWS.items() if not v.compile and (not a.only or n in a.only.split(","))]
    if a.interleave:  # all at the first training row, each row then reads its result
        done: dict[str, dict] = {}

        def interleaved(b: Bench, name: str) -> dict:
            if not done:
                done.update(run_interleaved(b, train))
            return done[name]

        rows += [(n, lambda b, n=n: interleaved(b, n)) for n in train]
    else:
        rows += [(n, lambda b, v=v: run_train(b, v)) for n, v in TRAIN_ROWS.items() if not v.compile]
    rows.append(("readapt", run_readapt))
    rows += [(n, (lambda b, v=v: run_train(b, v)) if a.compile else _no_compile)
             for n, v in TRAIN_ROWS.items() if v.compile]  # fmt: skip
    only, skip = set(filter(None, a.only.split(","))), set(filter(None, a.skip.split(",")))
    return [(n, f) for n, f in rows if (not only or n in only) and n not in skip]


def run_row(b: Bench, name: str, fn: Callable[[Bench], dict]) -> dict:
    row: dict[str, Any] = {"name": name}
    if b.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    PATHS.reset()
    try:
        row.update(status="ok")
        row.update(fn(b))
        row.setdefault("attention_paths", dict(PATHS))
        if b.device == "cuda" and any(k.startswith("reference") for k in row["attention_paths"]):
            row["not_fused"] = PATHS.reason or "the reference path ran"
    except Exception as exc:  # noqa: BLE001 - record and go on to the next row
        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
        row.update(
            status="oom" if oom else "error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        )
        traceback.print_exc()
    finally:
        if b.peft is not None:
            b.peft.zero_grad(set_to_none=True)
    row["peak_gib"] = peak_gib(b.device)
    return row


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(a.seed)
    b, meta = setup(a)
    slug = (meta.get("gpu") or "cpu").lower().replace(" ", "-").replace("/", "-")
    stem = a.out / f"bench_gpu-{slug}-{a.shape}-{time.strftime('%Y%m%d-%H%M%S')}"
    write_report(stem, meta, [])
    print(json.dumps({k: meta[k] for k in ("device", "versions", "commit", "data")}, indent=1), flush=True)
    if a.dry_run:
        return 0
    b.model = build_model(a.shape, a.device, b.dtype).requires_grad_(False)
    meta["model_build_s"] = round(time.perf_counter() - t_start, 1)
    planned, best = plan_rows(a), {}
    for round_ in range(a.rounds):
        for name, fn in planned:
            if round_ and name in ("check", "readapt"):  # once is enough: no throughput to steady
                continue
            if time.perf_counter() - t_start > a.time_budget_s:
                row = {
                    "name": name,
                    "status": "skipped",
                    "error": f"time budget {a.time_budget_s:.0f} s spent",
                }
            else:
                print(f"[{time.perf_counter() - t_start:6.1f} s] {name}", flush=True)
                row = run_row(b, name, fn)
                shown = {
                    k: row.get(k) for k in ("status", "passages_per_s", "tokens_per_s", "peak_gib", "error")
                }
                print("   ", json.dumps({k: v for k, v in shown.items() if v is not None}), flush=True)
            old = best.get(name)
            if old is None or (row.get("passages_per_s") or 0) > (old.get("passages_per_s") or 0):
                best[name] = {**row, "round": round_ + 1}
            meta["total_s"] = round(time.perf_counter() - t_start, 1)
            write_report(stem, meta, [best[n] for n, _ in planned if n in best])
    print(stem.with_suffix(".md").read_text())
    print(f"written: {stem}.json, {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
