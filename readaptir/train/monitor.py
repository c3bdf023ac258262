"""Training statistics kept on the device between log lines, so no step waits for the GPU to finish.

Reading a loss (``loss.item()``) or all-reducing it every step makes the CPU wait for the GPU to finish
that step before it can queue the next. :class:`Monitor` instead adds each step's loss sum and gradient
norm into device tensors and records the first non-finite step there; every ``log_every`` steps, before
every checkpoint and at the end, :meth:`Monitor.check` reads them once (one all-reduce across ranks) and
raises :class:`TrainingDiverged` naming the first bad step, so a diverged run never writes a checkpoint or
an adapter. Token and passage counts need no device at all: the data plan knows them for every rank
(:meth:`readaptir.train.batching.DataPlan.counts`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

COUNTERS = ("targets", "passages", "tokens", "padding")  # the order of DataPlan.counts


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or gradient norm; the message names the step and the last good checkpoint."""


class Monitor:
    """Counters of the whole run (host, global), the current log window, and device-side losses."""

    def __init__(self, counters: dict[str, int], device: torch.device, world: int) -> None:
        self.counters, self.world = counters, world
        self.sums = dict.fromkeys(COUNTERS, 0)  # global counts since the last log line
        # [loss sum of this rank's window, loss sum of this run's first step]
        self.acc = torch.zeros(2, dtype=torch.float64, device=device)
        self.bad = torch.full(
            (3,), math.inf, dtype=torch.float64, device=device
        )  # first bad: step, loss, norm
        self.norm = torch.full((), math.nan, dtype=torch.float64, device=device)
        self.first_targets = 0  # global targets of this run's first step (0: none yet)
        self.read: list[float] = []  # [window loss sum, first loss sum, last norm] at the last check
        self.t0 = self.t_run = time.time()
        self.run_passages = self.run_tokens = 0

    def step(self, done: int, loss_sum: torch.Tensor, targets: int, norm: Any, counts: np.ndarray) -> None:
        """Add one optimizer step: ``loss_sum`` over this rank's ``targets``; ``counts`` global."""
        loss_sum = loss_sum.detach().double()
        self.norm = (
            norm.detach().double() if isinstance(norm, torch.Tensor) else self.norm.new_tensor(math.nan)
        )
        self.acc[0] += loss_sum
        if not self.first_targets:
            self.acc[1] = loss_sum
            self.first_targets = int(counts[0])
        record = torch.stack([loss_sum.new_tensor(float(done)), loss_sum / max(targets, 1), self.norm])
        fresh = ~(torch.isfinite(loss_sum) & torch.isfinite(self.norm)) & torch.isinf(self.bad[0])
        self.bad = torch.where(fresh, record, self.bad)
        for k, v in zip(COUNTERS, counts.tolist(), strict=True):
            self.counters[k] += v
            self.sums[k] += v
        self.run_passages += int(counts[1])
        self.run_tokens += int(counts[2])

    def check(self, total: int, last_good: Path | None) -> None:
        """Read the device statistics (the only sync); raise if any step so far was not finite."""
        acc, step = self.acc.clone(), self.bad[:1].clone()
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(acc)
            dist.all_reduce(step, op=dist.ReduceOp.MIN)
        host = torch.cat([acc, step, self.bad, self.norm.view(1)]).tolist()
        window, first, bad_step, own_step, loss, norm, last_norm = host
        if math.isfinite(bad_step):
            if own_step == bad_step:
                what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
            else:
                what = "loss or gradient norm of another process is not finite"
            raise TrainingDiverged(
                f"{what} at step {int(bad_step)}/{total}; stopped. Last good checkpoint: "
                f"{last_good or 'none (nothing saved yet)'}"
            )
        self.read = [window, first, last_norm]

    @property
    def first_loss(self) -> float:
        return self.read[1] / self.first_targets if self.read and self.first_targets else math.nan

    def flush(self, lr: float, done: int, total: int, epochs: int) -> dict[str, float]:
        """Metrics of the window since the last log line (after :meth:`check`), then a new window."""
        dt = max(time.time() - self.t0, 1e-9)
        s = self.sums
        metrics = {
            "train/loss": self.read[0] / max(s["targets"], 1),
            "train/lr": lr,
            "train/grad_norm": self.read[2],
            # This window's rates under their own names: W&B's summary keeps a key's last logged value, and
            # train/passages_per_s etc. in the summary are the whole run's (set once training ends).
            "train/window_tokens_per_s": s["tokens"] / dt,
            "train/window_passages_per_s": s["passages"] / dt,
            "train/window_padding_fraction": s["padding"] / max(s["tokens"] + s["padding"], 1),
            "train/passages": self.counters["passages"],
            "train/epoch": done / total * epochs,
        }
        self.acc[0] = 0.0
        self.sums, self.t0 = dict.fromkeys(COUNTERS, 0), time.time()
        return metrics

    def summary(self, plan, train, start_step: int, world: int, t_start: float, n_params: int) -> dict:
        """The run's stats (``STATS_KEYS`` of :mod:`readaptir.train.knowledge`, losses added by the caller)."""
        c, run_seconds = self.counters, max(time.time() - self.t_run, 1e-9)
        return {
            "steps": plan.total_steps, "resumed_from_step": start_step, "batching": train.batching,
            "world_size": world, "epochs": train.epochs, "passages": c["passages"], "tokens": c["tokens"],
            "target_tokens": c["targets"], "padding_tokens": c["padding"],
            "padding_fraction": c["padding"] / max(c["tokens"] + c["padding"], 1),
            "passages_per_s": self.run_passages / run_seconds, "tokens_per_s": self.run_tokens / run_seconds,
            "seconds": time.time() - t_start, "trainable_params": n_params,
        }  # fmt: skip
