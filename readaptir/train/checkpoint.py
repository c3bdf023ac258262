"""Training checkpoints: save, find and load the state a killed knowledge-adapter run resumes from.

A checkpoint (``<work_dir>/ckpt-<step>``, every ``train.checkpoint_every`` optimizer steps) holds the
adapter weights, optimizer, scheduler, every rank's RNG states, the global counters and the step, which is
also the position in the data since the batch plan is a pure function of the seed
(:mod:`readaptir.train.batching`). It is written into a ``.tmp-`` folder and renamed into place, so only complete
checkpoints are ever found; the two newest are kept, so a last checkpoint that cannot be read (a disk
error, a truncated file) is skipped in favour of the one before. A fingerprint of the run plan (config,
data subset, number of processes) refuses to resume a different run.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

log = logging.getLogger(__name__)

CKPT_PREFIX = "ckpt-"
KEEP = 2  # checkpoints kept: the newest, and one to fall back on when the newest cannot be read


class PlanMismatch(RuntimeError):
    """A checkpoint of another run (config, data subset, number of processes): refused, never skipped."""


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


def checkpoints(work_dir: Path) -> list[Path]:
    """Complete checkpoints, newest first (complete ones are renamed into place; temporaries start with '.')."""
    return sorted(
        (p for p in Path(work_dir).glob(f"{CKPT_PREFIX}*") if (p / "state.pt").is_file()), reverse=True
    )


def latest_checkpoint(work_dir: Path) -> Path | None:
    """Newest complete checkpoint."""
    done = checkpoints(work_dir)
    return done[0] if done else None


def save_checkpoint(
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
        if final.exists():  # the unreadable copy a resumed run fell back from
            shutil.rmtree(final)
        os.replace(tmp, final)  # a checkpoint is visible only once complete
        for old in sorted(work_dir.glob(f"{CKPT_PREFIX}*"), reverse=True)[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator, path: Path, model, optimizer, scheduler, fingerprint: str
) -> dict:
    from peft import set_peft_model_state_dict

    # Both files are read before anything is restored: an unreadable one leaves the model untouched.
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    rng = torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=False)
    if state["fingerprint"] != fingerprint:
        raise PlanMismatch(
            f"{path}: checkpoint was made for a different run plan (config, data subset or "
            f"number of processes); delete {path.parent} to start over"
        )
    set_peft_model_state_dict(accelerator.unwrap_model(model), state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(rng)
    return state


def resume_checkpoint(
    accelerator: Accelerator, work_dir: Path, model, optimizer, scheduler, fingerprint: str
) -> tuple[Path | None, dict | None]:
    """``(path, state)`` of the newest checkpoint that can be read and restored, else ``(None, None)``.

    A checkpoint of another run plan is refused (:class:`PlanMismatch`), never skipped.
    """
    for path in checkpoints(work_dir):
        try:
            return path, load_checkpoint(accelerator, path, model, optimizer, scheduler, fingerprint)
        except PlanMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - unpickling damaged bytes raises almost anything
            log.warning(
                "Checkpoint %s cannot be read (%s: %s); trying the one before", path, type(e).__name__, e
            )
    return None, None
