"""Benchmark knowledge-adapter training: ``paper`` (batch 4, padded) vs ``packed`` (4 × 1024 tokens, isolated).

Prints passages/s, real (non-padding) tokens/s and the padding fraction of each batching mode, running
the real training loop (:func:`readaptir.train.knowledge.train_knowledge_adapter`) on a synthetic token cache whose
passage lengths follow an MS-MARCO-like log-normal (mean ≈ 78 tokens, docs/method.md §6), or on a real corpus.

    python experiments/bench_train.py                          # tiny LLaMA, CPU, 400 synthetic passages
    python experiments/bench_train.py --corpus ../shared/beir/scifact --passages 200
    python experiments/bench_train.py --shape small --passages 64   # hidden 512, 4 layers: CPU, minutes
    python experiments/bench_train.py --shape 7b               # LLaMA-2-7B shapes, random bf16 weights, CUDA

Figures depend on the machine; with ``--shape tiny`` the model is so small (hidden 64) that per-step
overhead and attention over the packed row dominate, so CPU figures say little about GPU speed-ups.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from readaptir.grid.keys import tokens_key  # noqa: E402
from readaptir.models.tiny import LLAMA2_7B_SHAPES, ensure_tiny  # noqa: E402
from readaptir.store.artifacts import ArtifactStore  # noqa: E402
from readaptir.train.knowledge import train_knowledge_adapter  # noqa: E402
from readaptir.train.tokens import TokenCache, ensure_token_cache, write_token_cache  # noqa: E402

# The paper's recipe, read from the configs the grid uses (so the benchmark never drifts from them);
# no checkpoints while timing.
_CONF = Path(__file__).resolve().parents[1] / "conf"
ADAPTER = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(_CONF / "adapter" / "in-domain.yaml")).items()
           if k not in ("name", "corpus")}  # fmt: skip
TRAIN = {**OmegaConf.to_container(OmegaConf.load(_CONF / "config.yaml").train), "checkpoint_every": 0}
LLAMA2_7B = dict(LLAMA2_7B_SHAPES, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
# In between, for CPU: wide enough that matmuls (not per-step overhead) dominate, like at 7B.
SMALL = {
    **LLAMA2_7B,
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
}
SHAPES = {"7b": LLAMA2_7B, "small": SMALL}


def synthetic_cache(path: Path, n: int, vocab_size: int, mean_tokens: float, seed: int = 0) -> TokenCache:
    """Token cache of ``n`` random passages with log-normal lengths (σ = 0.5, mean ``mean_tokens``)."""
    rng = np.random.default_rng(seed)
    sigma = 0.5  # MS-MARCO passages: median ≈ 70 tokens, a right tail to a few hundred
    mu = math.log(mean_tokens) - sigma**2 / 2  # mean of a log-normal = exp(mu + sigma²/2)
    lengths = np.clip(rng.lognormal(mu, sigma, size=n).round().astype(int), 4, 1022)
    items = ((f"d{i}", rng.integers(3, vocab_size, size=length)) for i, length in enumerate(lengths))
    write_token_cache(path, items, vocab_size=vocab_size)
    return TokenCache(path, key=f"synthetic-{n}-{mean_tokens}")


def random_llama(shape: str, layers: int | None = None):
    """A randomly initialised LlamaForCausalLM of the given shape (bf16 on CUDA, float32 on CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = SHAPES[shape]
    config = LlamaConfig(**{**dims, "num_hidden_layers": layers or dims["num_hidden_layers"]})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=["tiny", "small", "7b"], default="tiny")
    ap.add_argument(
        "--passages", type=int, default=None, help="passages per mode (default: 400 tiny, 256 7b)"
    )
    ap.add_argument("--paper-passages", type=int, default=None, help="fewer passages for the slow paper mode")
    ap.add_argument("--mean-tokens", type=float, default=78.0)
    ap.add_argument("--corpus", type=Path, default=None, help="BeIR folder to tokenize instead (tiny shape)")
    ap.add_argument(
        "--layers", type=int, default=None, help="small/7b: number of layers (fewer for a smoke test)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--cache-dir", type=Path, default=Path("cache"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    tiny = ensure_tiny("llama", args.cache_dir / "tiny")
    n = args.passages or (400 if args.shape == "tiny" else 256)
    model = None
    if args.shape != "tiny":
        t0 = time.time()
        model = random_llama(args.shape, args.layers)
        print(
            f"random LLaMA {args.shape} shapes ({model.config.num_hidden_layers} layers, hidden "
            f"{model.config.hidden_size}) built in {time.time() - t0:.0f}s"
        )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.corpus is not None:
            key = tokens_key(tiny.pretrained, Path(args.corpus))
            cache = ensure_token_cache(ArtifactStore(args.cache_dir), key, tiny.pretrained, args.corpus)
            source = f"{args.corpus.name} ({len(cache)} passages, tiny tokenizer)"
        else:
            vocab = LLAMA2_7B["vocab_size"] if args.shape != "tiny" else 384
            cache = synthetic_cache(tmp / "tokens", n, vocab, args.mean_tokens)
            source = f"synthetic log-normal, mean {args.mean_tokens:.0f} tokens"
        lengths = np.minimum(cache.lengths, 1022) + 2
        print(
            f"corpus: {source}; passage length incl. BOS/EOS: mean {lengths.mean():.1f}, "
            f"median {np.median(lengths):.0f}, max {lengths.max()}"
        )
        device = (
            torch.cuda.get_device_name()
            if torch.cuda.is_available()
            else f"CPU ({torch.get_num_threads()} threads)"
        )
        print(f"device: {device}; recipe: DoRA r=32 alpha=64 dropout 0.05 on q,k,v,up,down")
        results = {}
        for batching in ("paper", "packed"):
            count = args.paper_passages if (batching == "paper" and args.paper_passages) else n
            cfg = {**TRAIN, "batching": batching, "max_passages": count}
            stats = train_knowledge_adapter(
                tiny.pretrained,
                cache,
                ADAPTER,
                cfg,
                tmp / f"out-{batching}",
                tmp / f"work-{batching}",
                model=model,
            )
            results[batching] = stats
            print(
                f"{batching:>6}: {stats['passages_per_s']:8.2f} passages/s  {stats['tokens_per_s']:10.0f} "
                f"real tokens/s  padding {stats['padding_fraction']:6.1%}  {stats['steps']} steps, "
                f"{stats['passages']} passages, {stats['passages'] / stats['steps']:.1f} passages/step"
            )
        speedup = results["packed"]["passages_per_s"] / results["paper"]["passages_per_s"]
        print(f"packed / paper: {speedup:.2f}× passages/s")
        print(
            json.dumps(
                {
                    k: {m: round(v, 4) if isinstance(v, float) else v for m, v in s.items()}
                    for k, s in results.items()
                }
            )
        )


if __name__ == "__main__":
    main()
