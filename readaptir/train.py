"""Knowledge-adapter training (SPEC §1 step 2): next-token prediction on corpus passages, PEFT DoRA.

The pretrained causal LM (with its LM head) is fine-tuned on the knowledge corpus of a cell, read from
the token cache (:mod:`readaptir.tokens`) and filtered by the ablation subset. Each passage is
``[BOS] + tokens(title + " " + text)[: max_tokens - 2] + [EOS]``: the text is truncated, never the EOS.
The recipe (DoRA r=32, alpha=64, dropout 0.05 on q/k/v/up/down; AdamW 2e-4, linear schedule, 1 epoch)
lives in ``conf/adapter/`` and the ``train:`` node of ``conf/config.yaml``.

Batching (``train.batching``: ``paper`` or ``packed``), steps per epoch and the learning-rate schedule of
each mode are explained in :mod:`readaptir.batching`; the model and PEFT config in
:mod:`readaptir.causal_lm`; checkpoint files in :mod:`readaptir.checkpoint`.

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
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from readaptir.artifacts import canonical
from readaptir.batching import (  # noqa: F401
    IGNORE,
    collate_packed,
    collate_paper,
    make_batch,
    passage_ids,
    plan_batches,
    select_rows,
)
from readaptir.causal_lm import _get, attn_implementation, load_causal_lm, peft_config  # noqa: F401
from readaptir.checkpoint import (  # noqa: F401
    CKPT_PREFIX,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from readaptir.tokens import TokenCache
from readaptir.tracking import Tracker

log = get_logger(__name__)  # Accelerate's logger: main process only, needs the Accelerator created first

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


def adapter_key_config(adapter_cfg: Any, train_cfg: Any) -> dict:
    """Exactly what determines the adapter weights, for the artifact key (the corpus/subset are parents)."""
    out = {f"adapter.{k}": canonical(_get(adapter_cfg, k)) for k in ADAPTER_FIELDS}
    out.update({f"train.{k}": canonical(_get(train_cfg, k)) for k in TRAIN_FIELDS})
    return out


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
        state = load_checkpoint(accelerator, ckpt, peft_model, optimizer, scheduler, fingerprint)
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
            last_good = save_checkpoint(
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
