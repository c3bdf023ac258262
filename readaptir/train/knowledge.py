"""Knowledge-adapter training: next-token prediction on corpus passages, PEFT DoRA (the paper's recipe).

The pretrained causal LM (with its LM head) is fine-tuned on a cell's knowledge corpus, read from the token
cache (:mod:`~readaptir.train.tokens`) and filtered by the ablation subset. Each passage is
``[BOS] + tokens(title + " " + text)[: max_tokens - 2] + [EOS]``: the text is truncated, never the EOS.
The recipe (DoRA r=32, alpha=64, dropout 0.05 on q/k/v/up/down; AdamW 2e-4, linear schedule, 1 epoch)
lives in ``conf/adapter/`` and the ``train:`` node of ``conf/config.yaml``. Batching modes, steps per epoch
and the schedule: :mod:`~readaptir.train.batching`; model and PEFT config: :mod:`~readaptir.train.causal_lm`;
the loss on target tokens only: :mod:`~readaptir.train.objective`; checkpoints:
:mod:`~readaptir.train.checkpoint`.

Distributed: under ``accelerate launch`` step s of rank r takes batch ``s × world + r`` (wrapping around
at the end so all ranks take the same number of steps): the effective batch is ``world × batch_size``
passages (paper) or ``world × 4096`` tokens (packed). bf16 autocast on CUDA, float32 on CPU.

A killed run started again with the same ``work_dir`` resumes from its last checkpoint and ends with the
same adapter as an uninterrupted one. Statistics stay on the device between log lines
(:mod:`~readaptir.train.monitor`): the loop never waits for the GPU except every ``log_every`` steps and
at checkpoints, where a NaN/inf loss or gradient norm since the last check stops the run, naming the step
(no checkpoint or adapter is written after it).

    stats = train_knowledge_adapter(pretrained, cache, recipe, settings, out_dir, work_dir)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from readaptir.config import AdapterRecipe, TrainSettings, typed
from readaptir.fs import atomic_write_json
from readaptir.logs import main_logger
from readaptir.runtime import Runtime
from readaptir.tracking import Tracker
from readaptir.train.batching import make_batch, passage_ids, plan_data
from readaptir.train.causal_lm import setup_training, special_ids
from readaptir.train.checkpoint import resume_checkpoint, save_checkpoint
from readaptir.train.monitor import COUNTERS, Monitor
from readaptir.train.objective import Targets, target_loss_sum
from readaptir.train.tokens import TokenCache

log = main_logger(__name__)  # main process only

# What train_knowledge_adapter returns (also written to <out_dir>/train_stats.json). Counts are global (all
# processes) and cover the whole run, including steps done before a resume; rates and seconds cover this
# process's run only; first_loss is the first step *of this run*; final_loss the mean over the last log window.
STATS_KEYS = (
    "steps",  # optimizer steps of the whole run (per process)
    "resumed_from_step",  # 0, or the checkpoint step this run continued from
    "batching",  # paper | packed
    "attention",  # sdpa | varlen (packed rows through the fused kernel)
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


def _batch(
    cache: TokenCache, rows, special: tuple[int, int, int], train: TrainSettings, varlen: bool, device
):
    """Model inputs and targets of these cache rows on ``device``; pinned and copied asynchronously on
    CUDA, so building the next batch never waits for the GPU."""
    bos, eos, pad_id = special
    seqs = [passage_ids(cache.get(int(r)), bos, eos, train.max_tokens) for r in rows]
    batch = make_batch(seqs, train.batching, pad_id, varlen)
    targets = Targets.of(batch.pop("labels"))
    cuda = device.type == "cuda"

    def move(t: torch.Tensor) -> torch.Tensor:
        return (t.pin_memory() if cuda else t).to(device, non_blocking=cuda)

    inputs = {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return inputs, Targets(move(targets.index), move(targets.ids))


def _update(accelerator, loss: torch.Tensor, trainable, train: TrainSettings, optimizer, scheduler):
    """Backward, clip, optimizer and schedule step; returns the gradient norm before clipping (on device)."""
    accelerator.backward(loss)
    norm = accelerator.clip_grad_norm_(trainable, train.max_grad_norm or float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def _progress(
    recipe, train: TrainSettings, plan, world: int, n_params: int, counters: dict, show: bool
) -> tqdm:
    """Say what is trained, then a progress bar in passages (resumed runs start where they stopped)."""
    log.info(
        f"Training {recipe.method} adapter ({n_params:,} params) on {len(plan.rows):,} passages, "
        f"{train.epochs} epoch(s), batching={train.batching}: {plan.total_steps:,} steps on {world} process(es)"
    )
    total = int(plan.bounds[-1])
    return tqdm(total=total, initial=min(counters["passages"], total), unit="psg", desc=f"train {train.batching}",
                disable=not show, dynamic_ncols=True, mininterval=1.0)  # fmt: skip


def _resume(
    accelerator, work_dir: Path, peft_model, optimizer, scheduler, plan
) -> tuple[Path | None, int, dict]:
    """``(checkpoint, start step, counters)``: from the last readable checkpoint of this plan, or from scratch."""
    ckpt, state = resume_checkpoint(accelerator, work_dir, peft_model, optimizer, scheduler, plan.fingerprint)
    if ckpt is None or state is None:
        return None, 0, dict.fromkeys(COUNTERS, 0)
    log.info(f"Resuming from {ckpt} (step {state['step']}/{plan.total_steps})")
    return ckpt, int(state["step"]), dict(state["counters"])


def train_knowledge_adapter(
    pretrained: Path,
    cache: TokenCache,
    adapter_cfg: AdapterRecipe | Mapping[str, Any],
    train_cfg: TrainSettings | Mapping[str, Any],
    out_dir: Path,
    work_dir: Path,
    include: frozenset[str] | None = None,
    exclude: frozenset[str] | None = None,
    tracker: Tracker | None = None,
    *,
    model: Any = None,
    on_step: Callable[[int, dict], None] | None = None,
    attention: str | None = None,
) -> dict:
    """Train a knowledge adapter on the cache rows selected by ``include``/``exclude``; save it in ``out_dir``.

    ``out_dir`` receives the PEFT adapter (``adapter_model.safetensors`` + ``adapter_config.json``) and
    ``train_stats.json``; ``work_dir`` holds checkpoints and must be stable across restarts of the same
    run (``ArtifactStore.work_dir(key)``); an existing checkpoint there is resumed; the caller removes it
    once the adapter is published. ``model``: an already-built causal LM instead of ``pretrained``
    (benchmarks). ``attention``: sdpa | varlen, default :meth:`readaptir.runtime.Runtime.train_attention`
    (what the adapter's key names). ``on_step(step, metrics)`` runs after every step (and its checkpoint)
    with ``loss`` and ``grad_norm`` as device tensors. Returns the stats dict (see ``STATS_KEYS``).
    """
    t_start = time.time()
    recipe, train = typed(AdapterRecipe, adapter_cfg), typed(TrainSettings, train_cfg)
    attention = attention or Runtime.detect().train_attention(train.batching)
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    world, rank = accelerator.num_processes, accelerator.process_index
    plan = plan_data(cache, recipe, train, include, exclude, world)
    special = special_ids(pretrained)  # bos, eos, pad
    peft_model, optimizer, scheduler, trainable = setup_training(
        pretrained, recipe, train, model, accelerator, plan.total_steps, attention
    )

    last_good, start_step, counters = _resume(accelerator, work_dir, peft_model, optimizer, scheduler, plan)
    n_params = sum(p.numel() for p in trainable)
    bar = _progress(recipe, train, plan, world, n_params, counters, accelerator.is_local_main_process)
    monitor, total, final_loss = Monitor(counters, accelerator.device, world), plan.total_steps, float("nan")
    for step in range(start_step, total):
        rows = plan.rows_of(step, world, rank)
        inputs, targets = _batch(cache, rows, special, train, attention == "varlen", accelerator.device)
        counts = plan.counts(step, world)  # global [targets, passages, tokens, padding], from the plan
        with accelerator.autocast():
            loss_sum = target_loss_sum(peft_model, inputs, targets)
        # DDP averages the ranks' gradients; scaling each rank's loss sum by world / global targets makes
        # that the gradient of the global token-weighted mean, as in one process.
        norm = _update(accelerator, loss_sum * (world / max(int(counts[0]), 1)), trainable, train,
                       optimizer, scheduler)  # fmt: skip
        done = step + 1
        monitor.step(done, loss_sum, len(targets), norm, counts)
        bar.update(int(counts[1]))
        log_now = done % train.log_every == 0 or done == total
        save = bool(train.checkpoint_every) and done % train.checkpoint_every == 0 and done < total
        if log_now or save:  # the only host sync: also refuses to checkpoint a diverged run
            monitor.check(total, last_good)
        if log_now:
            metrics = monitor.flush(scheduler.get_last_lr()[0], done, total, train.epochs)
            final_loss = metrics["train/loss"]
            bar.set_postfix(loss=f"{final_loss:.3f}", lr=f"{metrics['train/lr']:.2e}", refresh=False)
            if tracker is not None and accelerator.is_main_process:
                tracker.log(metrics, step=done)
        if save:
            last_good = save_checkpoint(accelerator, work_dir, done, peft_model, optimizer, scheduler,
                                        monitor.counters, plan.fingerprint)  # fmt: skip
        if on_step is not None:
            on_step(done, {"loss": loss_sum.detach() / max(len(targets), 1), "grad_norm": norm})
    bar.close()
    stats_out = monitor.summary(plan, train, start_step, world, t_start, n_params)
    grad_norm = monitor.read[2] if monitor.read else float("nan")
    stats_out.update(
        attention=attention, first_loss=monitor.first_loss, final_loss=final_loss, grad_norm=grad_norm
    )
    _save(accelerator, peft_model, out_dir, stats_out, tracker, restore_model=model is not None)
    return stats_out


def _save(
    accelerator, peft_model, out_dir: Path, stats: dict, tracker: Tracker | None, restore_model: bool
) -> None:
    """The adapter and its stats into ``out_dir`` (main process)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(peft_model).save_pretrained(out_dir, safe_serialization=True)
        atomic_write_json(out_dir / "train_stats.json", stats)
        if tracker is not None:
            tracker.summary({f"train/{k}": v for k, v in stats.items()})
    accelerator.wait_for_everyone()
    if restore_model:  # give the caller back its model without adapter layers (benchmarks reuse it)
        accelerator.unwrap_model(peft_model).unload()
    log.info(
        f"Adapter trained: {stats['passages']:,} passages, {stats['passages_per_s']:.1f} psg/s, "
        f"padding {stats['padding_fraction']:.1%}, final loss {stats['final_loss']:.4f}"
    )
