"""Training checkpoints: save, find, verify and load the state a killed adapter run resumes from.

A checkpoint (``<work_dir>/ckpt-<step>``, every ``train.checkpoint_every`` optimizer steps) holds the
adapter weights, optimizer, scheduler, every rank's RNG states, the global counters and the step, which is
also the position in the data since the batch plan is a pure function of the seed
(:mod:`readaptir.train.batching`). Everything is safetensors plus JSON (:mod:`readaptir.train.state_codec`):
nothing in a checkpoint is unpickled, so a file planted in a shared cache is unreadable, never code that
runs. The folder is written as ``.tmp-…``; its manifest (size and xxh3 digests of every file,
:func:`readaptir.store.manifest.hash_file`) is written last, then the folder is renamed into place.

A resume verifies a checkpoint before restoring anything: every file against the manifest (a tensor
scaled or a file truncated after the fact is a digest mismatch), the run-plan fingerprint (another run's
checkpoint is refused, :class:`PlanMismatch`), and every weight and optimizer tensor finite (a NaN
checkpoint is never resumed). A checkpoint that fails is skipped for the one before (the two newest are
kept), with one warning; when none is usable training starts from step 0, with one warning.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from readaptir.store.manifest import files_of, hash_file
from readaptir.train.state_codec import load_state, save_state

log = logging.getLogger(__name__)

CKPT_PREFIX = "ckpt-"
MANIFEST = "manifest.json"  # written last: a checkpoint folder without it is incomplete
FORMAT = 2  # 1: pickled state.pt (never read: its files could run code)
KEEP = 2  # checkpoints kept: the newest, and one to fall back on when the newest cannot be used


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


class CheckpointRejected(ValueError):
    """A checkpoint that must not be resumed: damaged, altered after it was written, or non-finite."""


def checkpoints(work_dir: Path) -> list[Path]:
    """Checkpoint folders, newest first (complete ones are renamed into place; temporaries start with '.')."""
    return sorted((p for p in Path(work_dir).glob(f"{CKPT_PREFIX}*") if p.is_dir()), reverse=True)


def latest_checkpoint(work_dir: Path) -> Path | None:
    """Newest checkpoint folder (not verified: :func:`resume_checkpoint` verifies)."""
    done = checkpoints(work_dir)
    return done[0] if done else None


def _hashes(folder: Path) -> dict[str, dict]:
    return {rel: hash_file(folder / rel) for rel in files_of(folder) if rel != MANIFEST}


def verify_checkpoint(path: Path) -> str | None:
    """None when every file of ``path`` matches its manifest; else one line saying what differs."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        want = manifest["files"] if manifest.get("format") == FORMAT else None
    except FileNotFoundError:
        return "no manifest (incomplete, or written by an older version)"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return "its manifest is unreadable"
    if not isinstance(want, dict):
        return "its manifest is of another format (written by an older version)"
    got = _hashes(path)
    for rel in sorted(set(want) | set(got)):
        if rel not in got:
            return f"{rel} is missing"
        if rel not in want:
            return f"{rel} was not part of it when it was written"
        if got[rel] != want[rel]:
            return f"{rel} differs from when it was written (digest mismatch)"
    return None


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
    from safetensors.torch import save_file

    final = work_dir / f"{CKPT_PREFIX}{step:09d}"
    tmp = work_dir / f".tmp-{CKPT_PREFIX}{step:09d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # Every rank saves its own RNG state: dropout masks differ per rank under DDP.
    save_state(tmp, f"rng-{accelerator.process_index}", _rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        adapter = get_peft_model_state_dict(accelerator.unwrap_model(model))
        save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in adapter.items()},
                  str(tmp / "adapter.safetensors"))  # fmt: skip
        save_state(tmp, "state", {"format": FORMAT, "step": step, "fingerprint": fingerprint,
                                  "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                  "counters": counters, "world_size": accelerator.num_processes})  # fmt: skip
        manifest = {"format": FORMAT, "step": step, "files": _hashes(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")  # last: complete
        if final.exists():  # the unusable copy a resumed run fell back from
            shutil.rmtree(final)
        os.replace(tmp, final)  # a checkpoint is visible only once complete
        for old in sorted(work_dir.glob(f"{CKPT_PREFIX}*"), reverse=True)[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _optimizer_tensors(optimizer_state: dict) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, per in optimizer_state.get("state", {}).items() for k, v in per.items()
            if isinstance(v, torch.Tensor)}  # fmt: skip


def read_checkpoint(path: Path, rank: int, fingerprint: str) -> tuple[dict, dict, dict]:
    """``(state, adapter tensors, RNG state)`` of a verified, finite checkpoint of this run plan.

    :class:`CheckpointRejected` (one line: why) when it must not be resumed, :class:`PlanMismatch` when it
    belongs to another run plan. Only JSON and safetensors are parsed, after the manifest check.
    """
    from safetensors.torch import load_file

    if problem := verify_checkpoint(path):
        raise CheckpointRejected(problem)
    state = load_state(path, "state")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointRejected("state.json is of another format")
    if state["fingerprint"] != fingerprint:
        raise PlanMismatch(
            f"{path}: checkpoint was made for a different run plan (config, data subset or "
            f"number of processes); delete {path.parent} to start over"
        )
    adapter = load_file(str(path / "adapter.safetensors"), device="cpu")
    for what, tensors in (("adapter", adapter), ("optimizer", _optimizer_tensors(state["optimizer"]))):
        if bad := _non_finite(tensors):
            raise CheckpointRejected(f"{what} tensor {bad} holds NaN or infinite values")
    return state, adapter, load_state(path, f"rng-{rank}")


def load_checkpoint(
    accelerator: Accelerator, path: Path, model, optimizer, scheduler, fingerprint: str
) -> dict:
    """Verify (:func:`read_checkpoint`), then restore the adapter, optimizer, scheduler and RNG states."""
    from peft import set_peft_model_state_dict

    # Every file is read and checked before anything is restored: a rejected one leaves the model untouched.
    state, adapter, rng = read_checkpoint(path, accelerator.process_index, fingerprint)
    set_peft_model_state_dict(accelerator.unwrap_model(model), adapter)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(rng)
    return state


def resume_checkpoint(
    accelerator: Accelerator, work_dir: Path, model, optimizer, scheduler, fingerprint: str
) -> tuple[Path | None, dict | None]:
    """``(path, state)`` of the newest checkpoint that verifies and restores, else ``(None, None)``.

    Checkpoints that fail are skipped for the one before, and named in one warning. A checkpoint of
    another run plan is refused (:class:`PlanMismatch`), never skipped.
    """
    skipped: list[str] = []
    for path in checkpoints(work_dir):
        try:
            state = load_checkpoint(accelerator, path, model, optimizer, scheduler, fingerprint)
        except PlanMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - damaged bytes make safetensors/JSON raise almost anything
            why = str(e) if isinstance(e, CheckpointRejected) else f"{type(e).__name__}: {e}"
            skipped.append(f"{path.name}: {why}")
            continue
        if skipped:
            log.warning("Skipped checkpoint %s; resuming from %s", "; ".join(skipped), path)
        return path, state
    if skipped:
        log.warning(
            "No usable checkpoint in %s (skipped %s); training starts from step 0", work_dir,
            "; ".join(skipped),
        )  # fmt: skip
    return None, None
