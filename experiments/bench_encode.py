"""Benchmark of corpus encoding: passages/s and padding, length-sorted token-budget batches vs arrival order.

Why: most encoders batch passages in arrival order, so every batch is padded to its longest passage;
on MS-MARCO-like lengths that is ~2/3 padding (docs/method.md §6). ``readaptir.retrieval.dense`` sorts by length and fills
batches up to a token budget. This script times the very code path the harness uses
(``readaptir.retrieval.dense.encode_ids``) both ways, on random-weight models:

- ``--shape tiny``: readaptir.models.tiny LLaMA shape (CPU, seconds); ``--shape small``: 8 layers × 512 wide;
- ``--shape 7b``: LLaMA-2-7B shapes, bf16, needs a GPU (random weights: speed only).

Lengths are realistic: ``--lengths scifact`` uses the real SciFact passages of READAPTIR_DATA (token
counts from all-MiniLM-L6-v2's WordPiece tokenizer as a stand-in for LLaMA's, plus RepLLaMA's prompt,
BOS and EOS, capped at 512); ``--lengths lognormal`` draws MS-MARCO-like lengths (median 70, mean ≈ 78).

    python experiments/bench_encode.py --shape tiny --lengths lognormal --n 4000
    python experiments/bench_encode.py --shape 7b --lengths lognormal --n 16000     # on a GPU
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from readaptir.models.tiny import LLAMA2_7B_SHAPES
from readaptir.retrieval.dense import encode_ids, make_batches, padding_fraction

log = logging.getLogger(__name__)

SHAPES = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "small": dict(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
    ),
    "7b": {
        k: v
        for k, v in LLAMA2_7B_SHAPES.items()
        if k.endswith(("_size", "_layers", "_heads")) and k != "vocab_size"
    },
}
BOS, EOS, VOCAB = 1, 2, 32000


def lengths_scifact(n: int, max_len: int) -> np.ndarray:
    """Token counts of real SciFact passages in RepLLaMA's prompt (WordPiece as a LLaMA stand-in)."""
    from transformers import AutoTokenizer

    from readaptir.data.beir import iter_corpus
    from readaptir.retrieval.sbert import minilm_path

    root = Path(os.environ.get("READAPTIR_DATA", Path(__file__).resolve().parents[2] / "shared" / "beir"))
    tok = AutoTokenizer.from_pretrained(minilm_path(), model_max_length=1 << 20)  # count, never truncate
    texts = [
        f"passage: {p.title} {p.text}".strip() for p in itertools.islice(iter_corpus(root / "scifact"), n)
    ]
    body = tok(texts, add_special_tokens=False)["input_ids"]
    return np.minimum(np.array([len(b) + 2 for b in body]), max_len)


def lengths_lognormal(n: int, max_len: int, seed: int = 0) -> np.ndarray:
    """MS-MARCO-like passage lengths: log-normal, median 70 tokens, sigma 0.45 (mean ≈ 78)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(70), 0.45, n).astype(int), 8, max_len)


def build_model(shape: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=4096, bos_token_id=BOS, eos_token_id=EOS, **SHAPES[shape]
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaModel(cfg).to(dtype)
    return model.eval()


def run(
    model: torch.nn.Module, rows: list[list[int]], sort: bool, budget: int, max_bs: int, device: torch.device
) -> dict[str, float]:
    lengths = [len(r) for r in rows]
    pad = padding_fraction(lengths, make_batches(lengths, budget, max_bs, sort=sort))
    encode_ids(model, rows[: min(len(rows), 64)], EOS, EOS, budget, max_bs, sort=sort)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    encode_ids(model, rows, EOS, EOS, budget, max_bs, sort=sort)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return {"passages_per_s": len(rows) / secs, "padding": pad, "seconds": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="tiny")
    ap.add_argument("--lengths", choices=["scifact", "lognormal", "both"], default="both")
    ap.add_argument("--n", type=int, default=4000, help="passages per measurement")
    ap.add_argument("--token-budget", type=int, default=65536)
    ap.add_argument("--max-batch-size", type=int, default=256)
    ap.add_argument("--max-len", type=int, default=512)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.shape == "7b" and device.type != "cuda":
        raise SystemExit("--shape 7b needs a CUDA GPU (random 7B weights in bf16 are 13.5 GB)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(args.shape, device, dtype)
    rng = np.random.default_rng(1)
    dists = ["scifact", "lognormal"] if args.lengths == "both" else [args.lengths]
    print(
        f"device={device} ({torch.get_num_threads()} CPU threads) shape={args.shape} dtype={dtype} "
        f"budget={args.token_budget} max_batch={args.max_batch_size}"
    )
    print(f"{'lengths':10} {'order':8} {'n':>6} {'mean len':>8} {'psg/s':>9} {'padding':>8} {'speed-up':>8}")
    for dist in dists:
        lengths = (
            lengths_scifact(args.n, args.max_len)
            if dist == "scifact"
            else lengths_lognormal(args.n, args.max_len)
        )
        rows = [[BOS, *rng.integers(3, VOCAB, n - 2).tolist(), EOS] for n in lengths]
        arrival = run(model, rows, False, args.token_budget, args.max_batch_size, device)
        ordered = run(model, rows, True, args.token_budget, args.max_batch_size, device)
        for name, r in (("arrival", arrival), ("sorted", ordered)):
            speedup = r["passages_per_s"] / arrival["passages_per_s"]
            print(
                f"{dist:10} {name:8} {len(rows):>6} {np.mean(lengths):>8.1f} {r['passages_per_s']:>9.1f} "
                f"{r['padding']:>8.1%} {speedup:>7.2f}x"
            )


if __name__ == "__main__":
    main()
