"""Knowledge-adapter training (SPEC §1 step 2): next-token prediction on corpus passages, PEFT DoRA.

The pretrained causal LM (with its LM head) is fine-tuned on the knowledge corpus of a cell, read from
the token cache (:mod:`readaptir.tokens`) and filtered by the ablation subset. Each passage is
``[BOS] + tokens(title + " " + text)[: max_tokens - 2] + [EOS]``: the text is truncated, never the EOS.
The recipe (DoRA r=32, alpha=64, dropout 0.05 on q/k/v/up/down; AdamW 2e-4, linear schedule, 1 epoch)
lives in ``conf/adapter/`` and the ``train:`` node of ``conf/config.yaml``.

Two batching modes (``train.batching``):

* ``paper`` — the recipe as published: ``batch_size`` (4) passages per step, right-padded to the longest,
  padding masked out of attention and loss. One epoch of N passages takes ``ceil(N / 4)`` optimizer steps:
  MS-MARCO's 8.84M passages = 2.21M steps, ≈ 13 GPU-days on an H200 (SPEC §6), and with a mean passage of
  ≈ 80 tokens padded to the batch's longest, a large share of every step is padding.
* ``packed`` — the fast path: whole passages are concatenated, in the same seeded order, until a step holds
  ``batch_size × max_tokens`` (4 × 1024 = 4096) tokens, laid out as one padding-free row (transformers'
  "flattened" layout, what flash-attention varlen consumes). ``position_ids`` restart at 0 at every
  passage and the model is called with ``attention_mask=None, use_cache=False``, so transformers 5 builds
  a block-diagonal causal mask (or uses flash-attention varlen when installed) and no passage sees another;
  SPEC §7: without ``use_cache=False`` a cache is built and passages silently attend to each other. The
  first token of each passage is not a label, so no passage's EOS predicts the next passage's BOS. Every
  passage's loss is therefore exactly what it would be alone; the step loss is the token-weighted mean.
  Padding fraction is 0 (a step's row just ends early when the next passage does not fit).
  Cost of the single row: flash-attention varlen only computes the diagonal blocks, but PyTorch SDPA
  evaluates the block-diagonal mask densely over the whole 4096-token row, 4× the attention FLOPs of four
  1024-token rows: at 7B shapes ≈ 4·4096·4096 = 67 MFLOP per token per layer against ≈ 404 MFLOP of
  matmuls (+17%, vs +4%); at the tiny test shapes (hidden 64) attention dominates, so packed is slower there.
  Steps per epoch ≈ total tokens / 4096 — MS-MARCO: 8.84M × ≈ 80 tokens ≈ 0.7B tokens ≈ 170k steps,
  about 13× fewer steps than ``paper`` at ≈ 13× the tokens per step (≈ 51 passages per step instead of 4).

Learning-rate schedule: linear decay from ``lr`` to 0 over the run's own number of optimizer steps (after
``warmup_ratio`` of them warming up), so both modes traverse the full schedule in one epoch; ``packed``
takes fewer, larger steps with the same peak lr 2e-4 (not re-tuned: the published recipe only covers
``paper``). Loss is the mean over target tokens of a step in both modes (a long passage weighs more than a
short one, as in HF's causal-LM loss with padding masked).

Distributed: under ``accelerate launch`` each process trains on its own batches (step s of rank r takes
batch ``s × world + r``, wrapping around at the end so all ranks take the same number of steps), so the
effective batch is ``world × batch_size`` passages (paper) or ``world × 4096`` tokens (packed), and an
epoch takes ``ceil(batches / world)`` steps. bf16 autocast on CUDA (base weights loaded in bf16, adapter
weights float32), float32 on CPU.

Checkpoints (every ``checkpoint_every`` optimizer steps, in the work dir): adapter weights, optimizer,
scheduler, every rank's RNG states and the step (= position in the data, since the batch plan is a pure
function of the seed). A killed run started again resumes from the last checkpoint and ends with the same
adapter as an uninterrupted one. A NaN/inf loss or gradient norm stops the run, naming the step, and the
last good checkpoint is kept.

    accelerate launch --num_processes 8 run.py model=repllama dataset=msmarco train.batching=packed
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from readaptir.artifacts import canonical
from readaptir.tokens import TokenCache
from readaptir.tracking import Tracker

log = get_logger(__name__)  # Accelerate's logger: main process only, needs the Accelerator created first

IGNORE = -100  # label value excluded from the loss (HF convention)
CKPT_PREFIX = "ckpt-"
ADAPTER_FIELDS = ("method", "r", "alpha", "dropout", "targets")
# Train fields that change the resulting adapter. Not: checkpoint_every, log_every, gradient_checkpointing
# (same numbers, less memory), tracking, paths.
TRAIN_FIELDS = (
    "batching",
    "batch_size",
    "max_tokens",
    "lr",
    "weight_decay",
    "warmup_ratio",
    "epochs",
    "seed",
    "max_grad_norm",
    "max_passages",
)


# What train_knowledge_adapter returns (also written to <out_dir>/train_stats.json). Counts are global (all
# processes) and cover the whole run, including steps done before a resume; rates and seconds cover this
# process's run only; first_loss is the first step *of this run*; final_loss the mean over the last log window.
STATS_KEYS = (
    "steps",  # optimizer steps of the whole run (per process)
    "resumed_from_step",  # 0, or the checkpoint step this run continued from
    "batching",  # paper | packed
    "world_size",  # number of processes (effective batch = world × batch)
    "epochs",
    "passages",  # passages trained on (× epochs)
    "tokens",  # real tokens incl. BOS/EOS, after truncation
    "target_tokens",  # tokens that were prediction targets (all but each passage's BOS)
    "padding_tokens",
    "padding_fraction",  # padding / (real + padding); 0 for packed
    "first_loss",
    "final_loss",
    "grad_norm",  # of the last step, before clipping
    "passages_per_s",
    "tokens_per_s",  # real tokens per second
    "seconds",  # wall time of this call, model loading included
    "trainable_params",
)


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or gradient norm; the message names the step and the last good checkpoint."""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def adapter_key_config(adapter_cfg: Any, train_cfg: Any) -> dict:
    """Exactly what determines the adapter weights, for the artifact key (the corpus/subset are parents)."""
    out = {f"adapter.{k}": canonical(_get(adapter_cfg, k)) for k in ADAPTER_FIELDS}
    out.update({f"train.{k}": canonical(_get(train_cfg, k)) for k in TRAIN_FIELDS})
    return out


# ----------------------------------------------------------------------------------------------------------
# Data: passages → batches (pure functions of the seed, so the step number is the position in the data)


def passage_ids(ids: np.ndarray, bos: int, eos: int, max_tokens: int) -> list[int]:
    """``[bos] + ids[: max_tokens - 2] + [eos]``: the text is truncated, never the EOS."""
    return [bos, *ids[: max_tokens - 2].tolist(), eos]


def select_rows(
    cache: TokenCache,
    include: frozenset[str] | None,
    exclude: frozenset[str] | None,
    max_passages: int | None,
    seed: int,
) -> np.ndarray:
    """Cache rows of the cell's knowledge corpus subset, optionally capped to a seeded random sample."""
    rows = cache.select(include, exclude)
    if max_passages is not None and len(rows) > max_passages:
        rows = np.sort(np.random.default_rng([seed, 1]).permutation(rows)[:max_passages])
    return rows


def plan_batches(
    lengths: np.ndarray, batching: str, batch_size: int, max_tokens: int, seed: int, epochs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded batch plan over passages of the given lengths (BOS/EOS included, already truncated).

    Returns ``(order, bounds)``: batch b holds passage positions ``order[bounds[b]:bounds[b + 1]]``
    (positions index ``lengths``). Epoch e shuffles with ``default_rng([seed, 0, e])``.
    """
    n = len(lengths)
    orders, bounds, start = [], [np.zeros(1, dtype=np.int64)], 0
    budget = batch_size * max_tokens  # packed: 4 × 1024 = 4096 tokens per step
    for epoch in range(epochs):
        order = np.random.default_rng([seed, 0, epoch]).permutation(n)
        if batching == "paper":
            cuts = np.arange(batch_size, n, batch_size)
        elif batching == "packed":
            cuts, used = [], 0
            for pos, length in enumerate(lengths[order].tolist()):
                if used + length > budget and used:
                    cuts.append(pos)
                    used = 0
                used += length
            cuts = np.asarray(cuts, dtype=np.int64)
        else:
            raise ValueError(f"train.batching={batching!r}: use paper or packed")
        orders.append(order)
        bounds.append(start + np.append(cuts, n).astype(np.int64))
        start += n
    return np.concatenate(orders), np.concatenate(bounds)


def collate_paper(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with attention mask; padding is not a label."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention_mask[i, : len(s)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_packed(seqs: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """One padding-free row of whole passages; position ids restart per passage; no cross-passage label.

    Call the model with these and ``use_cache=False`` (no attention mask): transformers 5 derives the
    block-diagonal causal mask (or flash-attention varlen boundaries) from the restarting position ids.
    """
    input_ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)[None]
    position_ids = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    # HF shifts labels inside the loss: label[t] is predicted from position t-1. A passage's first token
    # would be predicted from the previous passage's EOS, so it is not a label.
    labels = input_ids.masked_fill(position_ids == 0, IGNORE)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def make_batch(seqs: Sequence[Sequence[int]], batching: str, pad_id: int) -> dict[str, torch.Tensor]:
    return collate_packed(seqs) if batching == "packed" else collate_paper(seqs, pad_id)


# ----------------------------------------------------------------------------------------------------------
# Model


def attn_implementation() -> str:
    """flash-attention 2 (varlen on packed rows) when installed on CUDA, else PyTorch SDPA."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_causal_lm(pretrained: str | os.PathLike, device: torch.device | str | None = None):
    """The pretrained causal LM for training: bf16 on CUDA, float32 on CPU."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        pretrained, dtype=dtype, attn_implementation=attn_implementation()
    )
    return model.to(device) if device is not None else model


def peft_config(adapter_cfg: Any):
    from peft import LoraConfig

    method = str(_get(adapter_cfg, "method", "dora")).lower()
    if method not in ("dora", "lora"):
        raise ValueError(f"adapter.method={method!r}: use dora or lora")
    return LoraConfig(
        r=int(_get(adapter_cfg, "r")),
        lora_alpha=float(_get(adapter_cfg, "alpha")),
        lora_dropout=float(_get(adapter_cfg, "dropout")),
        target_modules=list(_get(adapter_cfg, "targets")),
        use_dora=method == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def latest_checkpoint(work_dir: Path) -> Path | None:
    """Newest complete checkpoint (complete ones are renamed into place; temporaries start with '.')."""
    done = sorted(p for p in Path(work_dir).glob(f"{CKPT_PREFIX}*") if (p / "state.pt").is_file())
    return done[-1] if done else None


def _save_checkpoint(
    accelerator: Accelerator,
    work_dir: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    counters: dict,
    fingerprint: str,
) -> Path:
    from peft import get_peft_model_state_dict

    final = work_dir / f"{CKPT_PREFIX}{step:09d}"
    tmp = work_dir / f".tmp-{CKPT_PREFIX}{step:09d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # Every rank saves its own RNG state: dropout masks differ per rank under DDP.
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        adapter = {
            k: v.detach().cpu() for k, v in get_peft_model_state_dict(accelerator.unwrap_model(model)).items()
        }
        torch.save(
            {
                "step": step,
                "fingerprint": fingerprint,
                "adapter": adapter,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "counters": counters,
                "world_size": accelerator.num_processes,
            },
            tmp / "state.pt",
        )
        os.replace(tmp, final)  # a checkpoint is visible only once complete
        for old in work_dir.glob(f"{CKPT_PREFIX}*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _load_checkpoint(
    accelerator: Accelerator, path: Path, model, optimizer, scheduler, fingerprint: str
) -> dict:
    from peft import set_peft_model_state_dict

    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if state["fingerprint"] != fingerprint:
        raise RuntimeError(
            f"{path}: checkpoint was made for a different run plan (config, data subset or "
            f"number of processes); delete {path.parent} to start over"
        )
    set_peft_model_state_dict(accelerator.unwrap_model(model), state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=False))
    return state


# ----------------------------------------------------------------------------------------------------------
# Training


def train_knowledge_adapter(
    pretrained: Path,
    cache: TokenCache,
    adapter_cfg: Any,
    train_cfg: Any,
    out_dir: Path,
    work_dir: Path,
    include: frozenset[str] | None = None,
    exclude: frozenset[str] | None = None,
    tracker: Tracker | None = None,
    *,
    model: Any = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train a knowledge adapter on the cache rows selected by ``include``/``exclude``; save it in ``out_dir``.

    ``out_dir`` receives the PEFT adapter (``adapter_model.safetensors`` + ``adapter_config.json``) and
    ``train_stats.json``; ``work_dir`` holds checkpoints and must be stable across restarts of the same
    run (``ArtifactStore.work_dir(key)``); an existing checkpoint there is resumed. ``model`` (optional)
    is an already-built causal LM used instead of loading ``pretrained`` (benchmarks with random
    weights). ``on_step(step, metrics)`` is called after every optimizer step (and its checkpoint).
    Returns the stats dict (see ``STATS_KEYS``).
    """
    from peft import get_peft_model
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    t_start = time.time()
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    world, rank = accelerator.num_processes, accelerator.process_index
    out_dir, work_dir = Path(out_dir), Path(work_dir)

    batching = str(_get(train_cfg, "batching", "paper"))
    batch_size, max_tokens = int(_get(train_cfg, "batch_size")), int(_get(train_cfg, "max_tokens"))
    seed, epochs = int(_get(train_cfg, "seed", 0)), int(_get(train_cfg, "epochs", 1))
    max_passages = _get(train_cfg, "max_passages")
    max_grad_norm = _get(train_cfg, "max_grad_norm")
    checkpoint_every = int(_get(train_cfg, "checkpoint_every") or 0)
    log_every = max(1, int(_get(train_cfg, "log_every") or 10))
    if max_tokens < 2:
        raise ValueError(f"train.max_tokens={max_tokens}: needs room for BOS and EOS")

    # --- data plan: a pure function of (cache rows, seed, config), so step number = position in data
    rows = select_rows(cache, include, exclude, None if max_passages is None else int(max_passages), seed)
    if len(rows) == 0:
        raise ValueError(f"no passages to train on: the subset of {cache.path} is empty (include/exclude)")
    lengths = np.minimum(cache.lengths[rows], max_tokens - 2) + 2
    order, bounds = plan_batches(lengths, batching, batch_size, max_tokens, seed, epochs)
    n_batches = len(bounds) - 1
    total_steps = math.ceil(n_batches / world)
    fingerprint = hashlib.sha256(
        json.dumps(
            [
                adapter_key_config(adapter_cfg, train_cfg),
                cache.key,
                hashlib.sha256(rows.tobytes()).hexdigest(),
                world,
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]

    tok = AutoTokenizer.from_pretrained(pretrained)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    if bos is None or eos is None:
        raise ValueError(f"{pretrained}: tokenizer needs BOS and EOS tokens (got {bos}, {eos})")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos  # padding is masked; any id works

    # --- model + optimizer
    torch.manual_seed(seed)  # adapter init (LoRA A) is drawn from torch's RNG
    random.seed(seed)
    np.random.seed(seed)
    base = model if model is not None else load_causal_lm(pretrained)
    base.config.use_cache = False
    if _get(train_cfg, "gradient_checkpointing", False):
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = get_peft_model(base, peft_config(adapter_cfg)).to(accelerator.device)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=float(_get(train_cfg, "lr")), weight_decay=float(_get(train_cfg, "weight_decay", 0.0))
    )
    warmup = int(float(_get(train_cfg, "warmup_ratio", 0.0) or 0.0) * total_steps)
    # Not passed through accelerator.prepare: its wrapper would step the schedule `world` times per step.
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    peft_model, optimizer = accelerator.prepare(peft_model, optimizer)
    peft_model.train()

    counters = {"passages": 0, "tokens": 0, "padding": 0, "targets": 0}
    start_step = 0
    ckpt = latest_checkpoint(work_dir)
    if ckpt is not None:
        state = _load_checkpoint(accelerator, ckpt, peft_model, optimizer, scheduler, fingerprint)
        start_step, counters = int(state["step"]), dict(state["counters"])
        log.info(f"Resuming from {ckpt} (step {start_step}/{total_steps})")
    n_params = sum(p.numel() for p in trainable)
    log.info(
        f"Training {_get(adapter_cfg, 'method')} adapter ({n_params:,} params) on {len(rows):,} passages, "
        f"{epochs} epoch(s), batching={batching}: {total_steps:,} steps on {world} process(es)"
    )

    total_passages = int(bounds[-1])
    bar = tqdm(
        total=total_passages,
        initial=min(counters["passages"], total_passages),
        unit="psg",
        desc=f"train {batching}",
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    window = {"loss_sum": 0.0, "targets": 0, "passages": 0, "tokens": 0, "padding": 0, "steps": 0}
    t_window = t_run = time.time()
    run_passages = run_tokens = 0
    first_loss = last_loss = float("nan")
    last_good = ckpt
    grad_norm = float("nan")

    for step in range(start_step, total_steps):
        b = (step * world + rank) % n_batches
        positions = order[bounds[b] : bounds[b + 1]]
        seqs = [passage_ids(cache.get(int(rows[p])), bos, eos, max_tokens) for p in positions]
        batch = {k: v.to(accelerator.device) for k, v in make_batch(seqs, batching, pad_id).items()}
        n_real = sum(len(s) for s in seqs)
        n_targets = n_real - len(seqs)  # every token but each passage's BOS is predicted
        n_pad = batch["input_ids"].numel() - n_real

        with accelerator.autocast():
            loss = peft_model(**batch, use_cache=False).loss
        # One all-reduce per step: global loss (token-weighted) and counts for the bar and the logs.
        stats = torch.tensor(
            [loss.detach().float().item() * n_targets, n_targets, len(seqs), n_real, n_pad],
            dtype=torch.float64,
            device=accelerator.device,
        )
        stats = accelerator.reduce(stats, reduction="sum").tolist()
        step_loss = stats[0] / max(stats[1], 1)
        if not math.isfinite(step_loss):
            raise TrainingDiverged(
                f"loss is {step_loss} at step {step + 1}/{total_steps}; stopped. Last good "
                f"checkpoint: {last_good or 'none (nothing saved yet)'}"
            )
        if world > 1:
            # DDP averages the ranks' gradients, a mean of per-rank token means; rescaling each rank's
            # loss by world · n_targets / global targets makes it the gradient of the global
            # token-weighted mean, as in one process (ranks' batches differ in target count).
            loss = loss * (world * n_targets / max(stats[1], 1))
        accelerator.backward(loss)
        norm = accelerator.clip_grad_norm_(trainable, float(max_grad_norm) if max_grad_norm else float("inf"))
        grad_norm = float(norm) if norm is not None else float("nan")
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(
                f"gradient norm is {grad_norm} at step {step + 1}/{total_steps}; stopped. "
                f"Last good checkpoint: {last_good or 'none (nothing saved yet)'}"
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        if math.isnan(first_loss):
            first_loss = step_loss
        for k, v in zip(("targets", "passages", "tokens", "padding"), stats[1:], strict=True):
            counters[k] += int(v)
            window[k] += int(v)
        window["loss_sum"] += stats[0]
        window["steps"] += 1
        run_passages += int(stats[2])
        run_tokens += int(stats[3])
        bar.update(int(stats[2]))
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)

        if done % log_every == 0 or done == total_steps:
            dt = max(time.time() - t_window, 1e-9)
            last_loss = window["loss_sum"] / max(window["targets"], 1)
            metrics = {
                "train/loss": last_loss,
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": grad_norm,
                "train/tokens_per_s": window["tokens"] / dt,
                "train/passages_per_s": window["passages"] / dt,
                "train/padding_fraction": window["padding"] / max(window["tokens"] + window["padding"], 1),
                "train/passages": counters["passages"],
                "train/epoch": done / total_steps * epochs,
            }
            if tracker is not None and accelerator.is_main_process:
                tracker.log(metrics, step=done)
            window = dict.fromkeys(window, 0)
            window["loss_sum"] = 0.0
            t_window = time.time()
        if checkpoint_every and done % checkpoint_every == 0 and done < total_steps:
            last_good = _save_checkpoint(
                accelerator, work_dir, done, peft_model, optimizer, scheduler, counters, fingerprint
            )
        if on_step is not None:
            on_step(done, {"loss": step_loss, "grad_norm": grad_norm})
    bar.close()

    # --- write the adapter (main process), then drop the checkpoints
    seconds = time.time() - t_start
    run_seconds = max(time.time() - t_run, 1e-9)
    stats_out = {
        "steps": total_steps,
        "resumed_from_step": start_step,
        "batching": batching,
        "world_size": world,
        "epochs": epochs,
        "passages": counters["passages"],
        "tokens": counters["tokens"],
        "target_tokens": counters["targets"],
        "padding_tokens": counters["padding"],
        "padding_fraction": counters["padding"] / max(counters["tokens"] + counters["padding"], 1),
        "first_loss": first_loss,
        "final_loss": last_loss,
        "grad_norm": grad_norm,
        "passages_per_s": run_passages / run_seconds,
        "tokens_per_s": run_tokens / run_seconds,
        "seconds": seconds,
        "trainable_params": n_params,
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(peft_model).save_pretrained(out_dir, safe_serialization=True)
        (out_dir / "train_stats.json").write_text(json.dumps(stats_out, indent=1))
        shutil.rmtree(work_dir, ignore_errors=True)
        if tracker is not None:
            tracker.summary({f"train/{k}": v for k, v in stats_out.items()})
    accelerator.wait_for_everyone()
    if model is not None:  # give the caller back its model without adapter layers (benchmarks reuse it)
        accelerator.unwrap_model(peft_model).unload()
    log.info(
        f"Adapter written to {out_dir}: {stats_out['passages']:,} passages, "
        f"{stats_out['passages_per_s']:.1f} psg/s, padding {stats_out['padding_fraction']:.1%}, "
        f"final loss {last_loss:.4f}"
    )
    return stats_out
