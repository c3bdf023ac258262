"""Train a dense retriever from any causal LM the way RepLLaMA was trained (Tevatron's recipe).

No retriever derived from SmolLM2 exists, and the same is true of any new base LLM; this stage makes one, in
exactly ``castorini/repllama-v1-7b-lora-passage``'s layout: a PEFT LoRA (task FEATURE_EXTRACTION) over the
bare ``AutoModel`` on q/v/o/gate/up/down (r=32, alpha=64, dropout 0.1), saved as ``adapter_config.json`` +
adapter weights, whose ``base_model_name_or_path`` names the pretrained model's reference. RE-Adapt then
treats it like RepLLaMA: Δ is its merged LoRA.

Training (Tevatron ``examples/repllama``): ids ``[bos] + tokens(prompt)[: max_len-2] + [eos]`` with the model
config's query/passage prompts, mask-aware last-token (EOS) pooling, L2-normalised embeddings; InfoNCE with
temperature 0.01 over each query's group (1 positive + ``group_size - 1`` BM25 hard negatives) and every
other query's group in the micro-batch of ``queries_per_batch`` (8) queries; ``grad_accum_steps`` (16)
micro-batches per optimizer step, the step's gradient that of their mean loss: 128 queries a step, as
Tevatron's 8 per GPU × 4 accumulation × 4 GPUs without cross-device negatives; AdamW lr 1e-4 (HF Trainer
defaults otherwise), linear schedule with 100 warmup steps, gradient clipping at 1.0, one epoch; query/passage
max lengths 32/196. The data plan: :mod:`~readaptir.train.retriever_data`. bf16 autocast on CUDA, float32 on
CPU.

Under a multi-process launch (``accelerate launch``/torchrun) each micro-batch's queries are split across
the ranks in contiguous shards; each rank encodes its shard, the embeddings are all-gathered (only the local
block carries gradients, as Tevatron's ``negatives_cross_device``) and every rank computes the loss over the
whole micro-batch, scaled by the world size so that DDP's gradient mean is the single-process gradient: N GPUs
train the same retriever as one (same micro-batches, same negatives), N times faster. A micro-batch with fewer
queries than ranks is computed whole on every rank. LoRA dropout draws its masks per rank, so runs are equal
only without dropout.

Checkpoints every ``checkpoint_every`` optimizer steps, always between two steps (adapter, optimizer,
schedule, RNG states; the position is the step, since the plan is fixed) go to ``work_dir``: a killed run
resumes and ends with the same adapter.

    stats = train_retriever(pretrained_dir, "meta-llama/Llama-2-7b-hf", data_root, model_spec, recipe,
                            out_dir, work_dir)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from readaptir.config import ModelSpec, RetrieverTraining
from readaptir.fs import atomic_write_json
from readaptir.retrieval.prompts import EncodeError, build_input_ids, format_passage, format_query
from readaptir.tracking import Tracker
from readaptir.train.checkpoint import resume_checkpoint, save_checkpoint
from readaptir.train.retriever_data import Example, TrainData, TrainPlan, build_plan

STATS_FILE = "train_stats.json"


def lora_config(recipe: RetrieverTraining, base_ref: str):
    """RepLLaMA's adapter config: LoRA over the bare AutoModel, FEATURE_EXTRACTION."""
    from peft import LoraConfig, TaskType

    return LoraConfig(base_model_name_or_path=base_ref, task_type=TaskType.FEATURE_EXTRACTION, r=recipe.r,
                      lora_alpha=recipe.alpha, lora_dropout=recipe.dropout, target_modules=list(recipe.targets),
                      bias="none")  # fmt: skip


def retriever_model(pretrained: Path, recipe: RetrieverTraining, base_ref: str):
    """``get_peft_model(AutoModel(pretrained), lora_config)``, its LoRA initialisation seeded."""
    from peft import get_peft_model
    from transformers import AutoModel

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    base = AutoModel.from_pretrained(pretrained, dtype=dtype)
    torch.manual_seed(recipe.seed)  # LoRA A is drawn from torch's RNG
    return get_peft_model(base, lora_config(recipe, base_ref))


def pooled(model, rows: Sequence[Sequence[int]], pad_id: int, eos_id: int) -> torch.Tensor:
    """[n, hidden] float32 L2-normalised last-token (EOS) embeddings of right-padded rows, with gradients."""
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
        mask[i, : len(r)] = 1
    last = mask.sum(1) - 1  # right padding: the last attended position (never [:, -1])
    if not bool((ids[torch.arange(len(rows)), last] == eos_id).all()):
        raise EncodeError(f"a pooled position does not hold EOS {eos_id}")
    ids, mask = ids.to(device), mask.to(device)
    hidden = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    reps = hidden[torch.arange(len(rows), device=device), last.to(device)].float()
    return torch.nn.functional.normalize(reps, dim=-1)


def info_nce(q: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over all passages of the batch; ``p`` holds each query's group in order, positive first."""
    scores = q @ p.T / temperature
    target = torch.arange(q.shape[0], device=q.device) * (p.shape[0] // q.shape[0])
    return torch.nn.functional.cross_entropy(scores, target)


def shard_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each rank's contiguous share of ``n`` queries, as even as possible."""
    size, extra = divmod(n, world)
    bounds, start = [], 0
    for rank in range(world):
        end = start + size + (rank < extra)
        bounds.append((start, end))
        start = end
    return bounds


def gather_rows(x: torch.Tensor, sizes: Sequence[int], rank: int) -> torch.Tensor:
    """Every rank's ``[sizes[r], d]`` block, in rank order; only this rank's block keeps its gradient."""
    import torch.distributed as dist

    padded = x.new_zeros((max(sizes), x.shape[1]))  # all_gather needs one shape
    padded[: x.shape[0]] = x.detach()
    blocks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(blocks, padded)
    parts = [b[:n] for b, n in zip(blocks, sizes, strict=True)]
    parts[rank] = x
    return torch.cat(parts)


class _Texts:
    """Examples → token rows with the model's prompts (the same prompts evaluation uses)."""

    def __init__(self, data: TrainData, spec: ModelSpec, recipe: RetrieverTraining, tokenizer) -> None:
        self.data, self.spec, self.recipe, self.tok = data, spec, recipe, tokenizer

    def rows(self, batch: list[Example]) -> tuple[list[list[int]], list[list[int]]]:
        s, r, d = self.spec, self.recipe, self.data
        queries = [format_query(s.query_template, "", d.queries[e.query]) for e in batch]
        passages = [format_passage(s.passage_template, *d.passages[doc])
                    for e in batch for doc in (e.positive, *e.negatives)]  # fmt: skip
        return build_input_ids(self.tok, queries, r.query_max_len), build_input_ids(
            self.tok, passages, r.passage_max_len
        )


def _optimizer(model, recipe: RetrieverTraining, total: int):
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    warmup = recipe.warmup_steps or math.ceil(recipe.warmup_ratio * total)
    return params, optimizer, get_linear_schedule_with_warmup(optimizer, min(warmup, total), total)


def _step_loss(model, texts: _Texts, batch: list[Example], world: int, rank: int, pad_id: int, eos: int,
               temperature: float, accelerator: Accelerator) -> tuple[torch.Tensor, int]:  # fmt: skip
    """The batch's InfoNCE loss (this rank's shard encoded, the other shards' embeddings gathered) and how
    many of its queries this rank encoded."""
    shard = world > 1 and len(batch) >= world
    bounds = shard_bounds(len(batch), world) if shard else [(0, len(batch))]
    lo, hi = bounds[rank] if shard else bounds[0]
    q_rows, p_rows = texts.rows(batch[lo:hi])
    with accelerator.autocast():
        q, p = pooled(model, q_rows, pad_id, eos), pooled(model, p_rows, pad_id, eos)
    if shard:
        q = gather_rows(q, [b - a for a, b in bounds], rank)
        groups = [sum(1 + len(e.negatives) for e in batch[a:b]) for a, b in bounds]
        p = gather_rows(p, groups, rank)
    return info_nce(q, p, temperature), hi - lo


def accumulate(model, texts: _Texts, micro: list[list[Example]], world: int, rank: int, pad_id: int, eos: int,
               temperature: float, accelerator: Accelerator) -> tuple[float, int]:  # fmt: skip
    """Back-propagate one optimizer step's micro-batches: the gradient of the mean of their InfoNCE losses
    (each micro-batch's loss / ``len(micro)``, × the world size where sharded). DDP reduces the gradients
    once, on the last micro-batch. Returns the mean loss and how many queries this rank encoded."""
    total, encoded = 0.0, 0
    for i, batch in enumerate(micro):
        sync = accelerator.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext()
        with sync:
            loss, n = _step_loss(model, texts, batch, world, rank, pad_id, eos, temperature, accelerator)
            scale = (world if world > 1 and len(batch) >= world else 1) / len(micro)
            accelerator.backward(loss * scale)
        total, encoded = total + float(loss.detach()), encoded + n
    return total / len(micro), encoded


def train_retriever(
    pretrained: Path, base_ref: str, data_root: Path, spec: ModelSpec, recipe: RetrieverTraining,
    out_dir: Path, work_dir: Path, tracker: Tracker | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train on ``data_root``'s ``recipe.split``; write the adapter and ``train_stats.json`` into ``out_dir``."""
    from transformers import AutoTokenizer

    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    data = TrainData.load(Path(data_root), recipe.split)
    plan: TrainPlan = build_plan(data, recipe)
    texts, pad_id, eos = (
        _Texts(data, spec, recipe, tokenizer),
        int(tokenizer.eos_token_id),
        int(tokenizer.eos_token_id),
    )
    accelerator = Accelerator(
        mixed_precision="bf16" if torch.cuda.is_available() else "no", cpu=not torch.cuda.is_available()
    )
    model = retriever_model(pretrained, recipe, base_ref).to(accelerator.device)
    params, optimizer, scheduler = _optimizer(model, recipe, plan.total_steps)
    # Not the scheduler: accelerate's wrapper would step it once per rank per step.
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    world, rank = accelerator.num_processes, accelerator.process_index
    # per-rank RNG states are checkpointed: a resume needs the same number of ranks
    fingerprint, start, counters = f"{plan.fingerprint(recipe)}-world{world}", 0, {"queries": 0, "encoded": 0}
    last, state = resume_checkpoint(accelerator, work_dir, model, optimizer, scheduler, fingerprint)
    if state is not None:  # verified (manifest, plan, finite) before anything was restored
        start, counters = int(state["step"]), dict(state["counters"])
    bar = tqdm(total=plan.total_steps, initial=start, desc="train retriever", unit="step", dynamic_ncols=True)
    first = last_loss = float("nan")
    t_run = time.time()
    for step in range(start, plan.total_steps):
        micro = plan.steps[step]
        value, encoded = accumulate(
            model, texts, micro, world, rank, pad_id, eos, recipe.temperature, accelerator
        )
        norm = float(torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm))
        if not math.isfinite(value) or not math.isfinite(norm):
            raise FloatingPointError(
                f"retriever loss {value} / grad norm {norm} at step {step + 1}; last good checkpoint: {last}"
            )
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done, last_loss = step + 1, value
        first = last_loss if math.isnan(first) else first
        counters["queries"] += sum(len(b) for b in micro)
        counters["encoded"] = counters.get("encoded", 0) + encoded  # by the main process
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.1e}", refresh=False)
        if tracker is not None and (done % recipe.log_every == 0 or done == plan.total_steps):
            tracker.log({"retriever/loss": last_loss, "retriever/lr": lr, "retriever/grad_norm": norm,
                         "retriever/queries": counters["queries"]}, step=done)  # fmt: skip
        if recipe.checkpoint_every and done % recipe.checkpoint_every == 0 and done < plan.total_steps:
            last = save_checkpoint(
                accelerator, work_dir, done, model, optimizer, scheduler, counters, fingerprint
            )
    bar.close()
    seconds = time.time() - t_run
    stats = {"steps": plan.total_steps, "resumed_from_step": start, "train_queries": plan.queries,
             "queries": counters["queries"], "queries_encoded_by_main": counters["encoded"],
             "world_size": world, "first_loss": first, "final_loss": last_loss,
             "seconds_per_step": seconds / max(plan.total_steps - start, 1), "seconds": time.time() - t0,
             "trainable_params": sum(p.numel() for p in params)}  # fmt: skip
    if accelerator.is_main_process:  # the ranks hold the same weights: DDP keeps them in step
        model = accelerator.unwrap_model(model)
        model.peft_config["default"].base_model_name_or_path = base_ref  # PEFT put the local folder there
        model.save_pretrained(out_dir)
        atomic_write_json(Path(out_dir) / STATS_FILE, stats)
    if tracker is not None:
        tracker.summary({f"retriever/{k}": v for k, v in stats.items()})
    return stats
