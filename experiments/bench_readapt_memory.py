"""Peak-memory benchmark of RE-Adapt weight arithmetic (``readaptir.readapt.arithmetic``) on a several-shard model.

Why: the arithmetic must stay near "one model (the output) plus one input shard" even though it reads
three models' worth of tensors (pretrained causal LM, e5-style full-weight retriever, DoRA knowledge
adapter); at 7B in float32 anything that loads all three needs ~85 GB. This script builds a random
LLaMA-shaped causal LM of a few hundred MB in a temporary folder, saves it in shards with an e5-style
retriever and a DoRA adapter, then measures each method in a *fresh* subprocess (torch allocations are
invisible to tracemalloc, so peak RSS is read from ``/proc/self/status`` VmHWM, which also counts the
pages of memory-mapped shards):

- ``readapt``: ``readapt_weights`` (shard by shard);
- ``naive``: what the arithmetic would cost through ``from_pretrained`` (pretrained + retriever +
  PEFT-merged knowledge model in memory at once), for comparison.

    python experiments/bench_readapt_memory.py                       # ≈ 540 MB model, 100 MB shards
    python experiments/bench_readapt_memory.py --hidden 256 --layers 4 --vocab 8000 --shard-mb 8 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def rss_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak) of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def build(root: Path, hidden: int, layers: int, vocab: int, shard_mb: int) -> dict[str, Path]:
    """Pretrained causal LM, e5-style full retriever (low-rank moved projections), DoRA adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 128),
        num_key_value_heads=max(1, hidden // 128),
        vocab_size=vocab,
        tie_word_embeddings=False,
    )
    paths = {"pretrained": root / "pretrained", "retriever": root / "retriever", "adapter": root / "adapter"}
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(paths["pretrained"], max_shard_size=f"{shard_mb}MB")
    with torch.no_grad():  # e5-Mistral's delta is a merged LoRA: rank-8 moves of every projection
        for name, p in model.model.named_parameters():
            if name.endswith("proj.weight"):
                p.add_(0.02 * torch.randn(p.shape[0], 8) @ torch.randn(8, p.shape[1]) / 8)
    model.model.save_pretrained(paths["retriever"], max_shard_size=f"{shard_mb}MB")
    del model
    base = AutoModelForCausalLM.from_pretrained(paths["pretrained"], dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # the paper's DoRA targets
    peft_model = get_peft_model(
        base, LoraConfig(use_dora=True, r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False)
    )
    peft_model.save_pretrained(paths["adapter"])
    return paths


def measure(method: str, pretrained: str, retriever: str, adapter: str) -> dict[str, float]:
    """Run one method in this (fresh) process and report its memory figures in MiB."""
    # Import what both methods use before the baseline, so library code is not counted as working memory.
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    from readaptir.readapt.arithmetic import readapt_weights

    base_rss = rss_mb("VmRSS")
    t0 = time.perf_counter()
    if method == "readapt":
        out = readapt_weights(pretrained, retriever, adapter, alpha=0.5, beta=1.0)
    else:
        from peft import PeftModel
        from transformers import AutoModel, AutoModelForCausalLM

        pre = AutoModel.from_pretrained(pretrained, dtype=torch.float32).state_dict()
        ret = AutoModel.from_pretrained(retriever, dtype=torch.float32).state_dict()
        causal = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32)
        know = PeftModel.from_pretrained(causal, adapter).merge_and_unload().model.state_dict()
        out = {k: pre[k] + 0.5 * (know[k] - pre[k]) + (ret[k] - pre[k]) for k in pre}
    seconds = time.perf_counter() - t0
    output_mb = sum(t.numel() * t.element_size() for t in out.values()) / 2**20
    peak = rss_mb("VmHWM")
    return {
        "method": method,
        "baseline_mb": base_rss,
        "peak_mb": peak,
        "peak_growth_mb": peak - base_rss,
        "output_mb": output_mb,
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--shard-mb", type=int, default=100)
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where to build the models (default: a temp dir)"
    )
    ap.add_argument("--naive", action="store_true", help="also measure the load-everything baseline")
    ap.add_argument(
        "--json", action="store_true", help="print the readapt result as one JSON line at the end"
    )
    ap.add_argument("--measure", nargs=4, metavar=("METHOD", "PRE", "RET", "ADAPTER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        paths = build(Path(tmp), args.hidden, args.layers, args.vocab, args.shard_mb)
        shards = sorted(paths["pretrained"].glob("*.safetensors"))
        model_mb = sum(p.stat().st_size for p in shards) / 2**20
        max_shard_mb = max(p.stat().st_size for p in shards) / 2**20
        ret_max_shard_mb = max(p.stat().st_size for p in paths["retriever"].glob("*.safetensors")) / 2**20
        # The repo root on PYTHONPATH so the script runs from a checkout without `pip install -e .`.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        results = []
        for method in ["readapt"] + (["naive"] if args.naive else []):
            cmd = [sys.executable, __file__, "--measure", method, *(str(paths[k]) for k in paths)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"{method} measurement failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res.update(
                n_shards=len(shards), model_mb=model_mb, max_shard_mb=max(max_shard_mb, ret_max_shard_mb)
            )
            results.append(res)
    print(
        f"pretrained causal LM: {model_mb:.0f} MiB in {len(shards)} shards (largest {max_shard_mb:.0f} MiB)"
    )
    for r in results:
        extra = r["peak_growth_mb"] - r["output_mb"]
        print(
            f"{r['method']:>8}: peak RSS {r['peak_mb']:.0f} MiB = baseline {r['baseline_mb']:.0f} + "
            f"{r['peak_growth_mb']:.0f} (output {r['output_mb']:.0f} + {extra:.0f} beyond it, "
            f"= {extra / r['max_shard_mb']:.2f} shards) in {r['seconds']:.1f} s"
        )
    if args.json:
        print(json.dumps(results[0]))


if __name__ == "__main__":
    main()
