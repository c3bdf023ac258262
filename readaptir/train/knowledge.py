"""Knowledge-adapter training: next-token prediction on corpus passages, PEFT DoRA (the paper's recipe).

The pretrained causal LM (with its LM head) is fine-tuned on a cell's knowledge corpus, read from the token
cache (:mod:`~readaptir.train.tokens`) and filtered by the ablation subset. Each passage is
``[BOS] + tokens(title + " " + text)[: max_tokens - 2] + [EOS]``: the text is truncated, never the EOS.
The recipe (DoRA r=32, alpha=64, dropout 0.05 on q/k/v/up/down; AdamW 2e-4, linear schedule, 1 epoch)
lives in ``conf/adapter/`` and the ``train:`` node of ``conf/config.yaml``. Batching modes, steps per epoch
and the schedule: :mod:`~readaptir.train.batching`; model and PEFT config: :mod:`~readaptir.train.causal_lm`;
checkpoints: :mod:`~readaptir.train.checkpoint`.

Distributed: under ``accelerate launch`` step s of rank r takes batch ``s × world + r`` (wrapping around
at the end so all ranks take the same number of steps): the effective batch is ``world × batch_size``
passages (paper) or ``world × 4096`` tokens (packed). bf16 autocast on CUDA, float32 on CPU.

A killed run started again with the same ``work_dir`` resumes from its last checkpoint and ends with the
same adapter as an uninterrupted one. A NaN/inf loss or gradient norm stops the run, naming the step.

    stats = train_knowledge_adapter(pretrained, cache, recipe, settings, out_dir, work_dir)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from readaptir.config import AdapterRecipe, TrainSettings, typed
from readaptir.fs import atomic_write_json
from readaptir.tracking import Tracker
from readaptir.train.batching import make_batch, passage_ids, plan_data
from readaptir.train.causal_lm import setup_training, special_ids
from readaptir.train.checkpoint import resume_checkpoint, save_checkpoint
from readaptir.train.tokens import TokenCache

log = get_logger(__name__)  # Accelerate's logger: main process only, needs the Accelerator created first

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
COUNTERS = ("targets", "passages", "tokens", "padding")


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or gradient norm; the message names the step and the last good checkpoint."""


@dataclass
class _Window:
    """Sums since the last log line (and the counters of the whole run)."""

    counters: dict[str, int]
    loss_sum: float = 0.0
    sums: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    t0: float = field(default_factory=time.time)
    run_passages: int = 0
    run_tokens: int = 0

    def add(self, stats: list[float]) -> None:
        for k, v in zip(COUNTERS, stats[1:], strict=True):
            self.counters[k] += int(v)
            self.sums[k] += int(v)
        self.loss_sum += stats[0]
        self.run_passages += int(stats[2])
        self.run_tokens += int(stats[3])

    def summary(self, plan, train: TrainSettings, start_step: int, world: int, t_start: float, t_run: float,
                n_params: int) -> dict[str, Any]:  # fmt: skip
        """The run's stats (``STATS_KEYS``; losses and the last gradient norm are added by the caller)."""
        c, run_seconds = self.counters, max(time.time() - t_run, 1e-9)
        return {
            "steps": plan.total_steps, "resumed_from_step": start_step, "batching": train.batching,
            "world_size": world, "epochs": train.epochs, "passages": c["passages"], "tokens": c["tokens"],
            "target_tokens": c["targets"], "padding_tokens": c["padding"],
            "padding_fraction": c["padding"] / max(c["tokens"] + c["padding"], 1),
            "passages_per_s": self.run_passages / run_seconds, "tokens_per_s": self.run_tokens / run_seconds,
            "seconds": time.time() - t_start, "trainable_params": n_params,
        }  # fmt: skip

    def flush(self, lr: float, grad_norm: float, done: int, total: int, epochs: int) -> dict[str, float]:
        dt = max(time.time() - self.t0, 1e-9)
        s = self.sums
        metrics = {
            "train/loss": self.loss_sum / max(s["targets"], 1),
            "train/lr": lr,
            "train/grad_norm": grad_norm,
            "train/tokens_per_s": s["tokens"] / dt,
            "train/passages_per_s": s["passages"] / dt,
            "train/padding_fraction": s["padding"] / max(s["tokens"] + s["padding"], 1),
            "train/passages": self.counters["passages"],
            "train/epoch": done / total * epochs,
        }
        self.loss_sum, self.sums, self.t0 = 0.0, dict.fromkeys(COUNTERS, 0), time.time()
        return metrics


def _forward(batch: dict, seqs: list[list[int]], peft_model, accelerator, world: int):
    """Loss of one batch (scaled for DDP) and the globally summed ``[loss·targets, targets, seqs, real, pad]``."""
    with accelerator.autocast():
        loss = peft_model(**batch, use_cache=False).loss
    n_seqs, n_real = len(seqs), sum(len(s) for s in seqs)
    n_pad = batch["input_ids"].numel() - n_real
    n_targets = n_real - n_seqs  # every token but each passage's BOS is predicted
    # One all-reduce per step: global loss (token-weighted) and counts for the bar and the logs.
    stats = torch.tensor(
        [loss.detach().float().item() * n_targets, n_targets, n_seqs, n_real, n_pad],
        dtype=torch.float64,
        device=accelerator.device,
    )
    stats = accelerator.reduce(stats, reduction="sum").tolist()
    if world > 1:
        # DDP averages the ranks' gradients, a mean of per-rank token means; rescaling each rank's loss by
        # world · n_targets / global targets makes it the gradient of the global token-weighted mean, as in
        # one process (ranks' batches differ in target count).
        loss = loss * (world * n_targets / max(stats[1], 1))
    return loss, stats


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


def _check_finite(what: str, value: float, step: int, total: int, last_good: Path | None) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"{what} is {value} at step {step}/{total}; stopped. Last good checkpoint: "
            f"{last_good or 'none (nothing saved yet)'}"
        )


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
) -> dict:
    """Train a knowledge adapter on the cache rows selected by ``include``/``exclude``; save it in ``out_dir``.

    ``out_dir`` receives the PEFT adapter (``adapter_model.safetensors`` + ``adapter_config.json``) and
    ``train_stats.json``; ``work_dir`` holds checkpoints and must be stable across restarts of the same
    run (``ArtifactStore.work_dir(key)``); an existing checkpoint there is resumed; the caller removes it
    once the adapter is published. ``model`` (optional) is an already-built causal LM used instead of
    loading ``pretrained`` (benchmarks with random weights). ``on_step(step, metrics)`` is called after
    every optimizer step (and its checkpoint). Returns the stats dict (see ``STATS_KEYS``).
    """
    t_start = time.time()
    recipe, train = typed(AdapterRecipe, adapter_cfg), typed(TrainSettings, train_cfg)
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    world, rank = accelerator.num_processes, accelerator.process_index
    plan = plan_data(cache, recipe, train, include, exclude, world)
    bos, eos, pad_id = special_ids(pretrained)
    peft_model, optimizer, scheduler, trainable = setup_training(
        pretrained, recipe, train, model, accelerator, plan.total_steps
    )

    last_good, start_step, counters = _resume(accelerator, work_dir, peft_model, optimizer, scheduler, plan)
    n_params = sum(p.numel() for p in trainable)
    bar = _progress(recipe, train, plan, world, n_params, counters, accelerator.is_local_main_process)
    window = _Window(counters)
    t_run = time.time()
    first_loss = last_loss = grad_norm = float("nan")
    for step in range(start_step, plan.total_steps):
        seqs = [
            passage_ids(cache.get(int(r)), bos, eos, train.max_tokens)
            for r in plan.rows_of(step, world, rank)
        ]
        batch = {k: v.to(accelerator.device) for k, v in make_batch(seqs, train.batching, pad_id).items()}
        loss, stats = _forward(batch, seqs, peft_model, accelerator, world)
        done = step + 1
        step_loss = stats[0] / max(stats[1], 1)
        _check_finite("loss", step_loss, done, plan.total_steps, last_good)
        accelerator.backward(loss)
        norm = accelerator.clip_grad_norm_(trainable, train.max_grad_norm or float("inf"))
        grad_norm = float(norm) if norm is not None else float("nan")
        _check_finite("gradient norm", grad_norm, done, plan.total_steps, last_good)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        first_loss = step_loss if math.isnan(first_loss) else first_loss
        window.add(stats)
        bar.update(int(stats[2]))
        bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
        if done % train.log_every == 0 or done == plan.total_steps:
            metrics = window.flush(
                scheduler.get_last_lr()[0], grad_norm, done, plan.total_steps, train.epochs
            )
            last_loss = metrics["train/loss"]
            if tracker is not None and accelerator.is_main_process:
                tracker.log(metrics, step=done)
        if train.checkpoint_every and done % train.checkpoint_every == 0 and done < plan.total_steps:
            last_good = save_checkpoint(accelerator, work_dir, done, peft_model, optimizer, scheduler,
                                        window.counters, plan.fingerprint)  # fmt: skip
        if on_step is not None:
            on_step(done, {"loss": step_loss, "grad_norm": grad_norm})
    bar.close()
    stats_out = window.summary(plan, train, start_step, world, t_start, t_run, n_params)
    stats_out.update(first_loss=first_loss, final_loss=last_loss, grad_norm=grad_norm)
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
        f"Adapter written to {out_dir}: {stats['passages']:,} passages, {stats['passages_per_s']:.1f} psg/s, "
        f"padding {stats['padding_fraction']:.1%}, final loss {stats['final_loss']:.4f}"
    )
