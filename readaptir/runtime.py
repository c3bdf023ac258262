"""Where this process runs: rank and world size, device, dtypes. The one place that asks.

Under ``accelerate launch`` / ``torchrun`` the launcher sets ``RANK`` and ``WORLD_SIZE``; every stage asks
this module (never the environment) whether it is the main process, which device it owns and which dtype
a model runs in, and which attention backend packed rows use. :class:`Runtime` freezes those answers for
one cell, so that the artifact keys (:mod:`readaptir.grid.keys`) and the stages that build the artifacts
see the same values.

    rt = Runtime.detect(encode_dtype="auto", model_dtype="bfloat16")
    rt.device, rt.encode_dtype, rt.train_precision, rt.world_size, rt.encode_attention
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from readaptir.attention.kernels import HALF, fused_available
from readaptir.errors import UserError


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` under ``accelerate launch`` / torchrun, else ``(0, 1)``."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank_world()[0] == 0


def distributed() -> bool:
    return rank_world()[1] > 1


def dist_state():
    """Accelerate's ``PartialState`` (process group initialised once; CPU-only runs use gloo)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def barrier() -> Callable[[], None]:
    """A callable that waits for every rank (a no-op in one process)."""
    return dist_state().wait_for_everyone if distributed() else (lambda: None)


def default_device() -> torch.device:
    """This process's device: its own GPU under a launcher, else cuda when present, else cpu."""
    if distributed():
        return dist_state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(name: str | None, device: str | torch.device | None = None) -> torch.dtype:
    """``auto`` → bf16 on CUDA, float32 on CPU; else a torch dtype name (``bfloat16``, ``float32`` ...)."""
    if name in (None, "auto"):
        cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        return torch.bfloat16 if cuda else torch.float32
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"dtype {name!r} is not a torch dtype (use auto, bfloat16, float16 or float32)")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Runtime:
    """The facts about this process that change what a cell computes (and so enter artifact keys)."""

    rank: int
    world_size: int
    device: torch.device
    encode_dtype: torch.dtype  # base and readapted retrievers of a cell share it: RA − Base never mixes
    train_precision: str  # "bf16" (autocast on CUDA) | "fp32"
    varlen: bool = False  # the fused variable-length attention kernel runs here (CUDA sm80+, torch ≥ 2.10)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def encode_attention(self) -> str:
        """``varlen``: padding-free packed rows through the fused kernel; ``sdpa``: length-sorted padded
        batches (CPU, float32, or no kernel). Base and readapted indices of a cell share it."""
        return "varlen" if self.varlen and self.encode_dtype in HALF else "sdpa"

    def train_attention(self, batching: str) -> str:
        """``varlen`` for packed rows where the fused kernel runs (bf16 autocast), else ``sdpa``."""
        return "varlen" if self.varlen and batching == "packed" and self.train_precision == "bf16" else "sdpa"

    @classmethod
    def detect(cls, encode_dtype: str | None = "auto", model_dtype: str | None = None) -> Runtime:
        """``encode_dtype`` when set; ``auto``: the model's own dtype on CUDA, float32 on CPU."""
        rank, world = rank_world()
        device = default_device()
        if encode_dtype not in (None, "auto"):
            dtype = resolve_dtype(encode_dtype)
        elif device.type == "cuda":
            dtype = resolve_dtype(model_dtype or "auto", device)
        else:
            dtype = torch.float32  # bf16 matmuls are slow on CPU
        precision = "bf16" if torch.cuda.is_available() else "fp32"
        return cls(rank, world, device, dtype, precision, fused_available(device)[0])
