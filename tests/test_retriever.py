"""Retriever training (RepLLaMA's recipe): data conventions, loss, layout, resume, and the stage in a cell."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import load_file

from readaptir.config import CellConfig, ModelSpec, RetrieverTraining
from readaptir.data.beir import RESOURCES
from readaptir.grid.cell import run_cell
from readaptir.grid.plan import plan_cell
from readaptir.models.hub import resolve_models
from readaptir.readapt.model import load_base_retriever
from readaptir.train.retriever import info_nce, shard_bounds, train_retriever
from readaptir.train.retriever_data import TrainData, build_plan

REPO = Path(__file__).resolve().parents[1]


def recipe(**over) -> RetrieverTraining:
    base = dict(dataset="toy", r=4, alpha=8, group_size=3, queries_per_batch=4, grad_accum_steps=1,
                lr=1e-3, warmup_steps=0,
                query_max_len=24, passage_max_len=48, bm25_depth=20, checkpoint_every=0, log_every=1)  # fmt: skip
    return RetrieverTraining(**{**base, **over})


@pytest.fixture(scope="module")
def toy() -> TrainData:
    return TrainData.load(RESOURCES / "toy", "train")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: two threads on a shared 2-core box mostly contend
    yield
    torch.set_num_threads(n)


def test_plan_follows_tevatron(toy):
    r = recipe(epochs=2)
    plan = build_plan(toy, r)
    assert plan == build_plan(toy, r)  # a pure function of the inputs
    train_q = sorted(q for q, d in toy.qrels.items() if any(s > 0 for s in d.values()))
    per_epoch = -(-len(train_q) // r.queries_per_batch)
    assert plan.total_steps == 2 * per_epoch and plan.queries == len(train_q)
    for epoch in range(2):
        seen = [
            e.query for s in plan.steps[epoch * per_epoch : (epoch + 1) * per_epoch] for m in s for e in m
        ]
        assert sorted(seen) == train_q  # each training query once per epoch
    for e in (e for s in plan.steps for m in s for e in m):
        assert toy.qrels[e.query][e.positive] > 0 and len(e.negatives) == r.group_size - 1
        assert not set(e.negatives) & toy.judged[e.query]  # judged passages are never negatives
    assert all(not e.negatives for s in build_plan(toy, recipe(group_size=1)).steps for m in s for e in m)
    assert build_plan(toy, recipe(max_steps=2)).total_steps == 2


def test_info_nce_targets_each_querys_own_positive():
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    noise = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    right = torch.stack([q[0], noise[0], q[1], noise[1], q[2], noise[2]])  # groups of 2, positive first
    wrong = torch.stack([noise[0], q[0], noise[1], q[1], noise[2], q[2]])
    assert info_nce(q, right, 0.01) < 1e-3 < info_nce(q, wrong, 0.01)


def test_trained_retriever_has_repllamas_layout_and_learns(tmp_path, tiny_llama, toy):
    from transformers import AutoTokenizer

    from readaptir.train.retriever import _Texts, pooled, retriever_model

    spec = ModelSpec.model_validate(
        {"name": "t", "query_template": "query: {query}", "passage_template": "passage: {title} {text}"}
    )
    r = recipe(max_steps=8)
    stats = train_retriever(tiny_llama.pretrained, "org/base-model", RESOURCES / "toy", spec, r, tmp_path / "out",
                            tmp_path / "work")  # fmt: skip
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["task_type"] == "FEATURE_EXTRACTION" and cfg["base_model_name_or_path"] == "org/base-model"
    assert sorted(cfg["target_modules"]) == sorted(r.targets) and (cfg["r"], cfg["lora_alpha"]) == (4, 8)
    keys = list(load_file(tmp_path / "out" / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.layers.") for k in keys)  # bare AutoModel, like RepLLaMA
    assert stats["steps"] == 8 and stats["queries"] == 32
    # The learned LoRA, merged by RE-Adapt's arithmetic, separates a batch better than no LoRA (α=0 of Δ).
    tok = AutoTokenizer.from_pretrained(tiny_llama.pretrained)
    q_rows, p_rows = _Texts(toy, spec, r, tok).rows(build_plan(toy, r).steps[0][0])
    untrained = retriever_model(tiny_llama.pretrained, r, "x").eval()
    trained = load_base_retriever(tiny_llama.pretrained, tmp_path / "out")
    with torch.no_grad():
        losses = [
            float(info_nce(pooled(m, q_rows, 2, 2), pooled(m, p_rows, 2, 2), 0.01))
            for m in (untrained, trained)
        ]
    assert losses[1] < losses[0], losses


@pytest.mark.parametrize("batch, accum", [(4, 1), (2, 2)])
def test_resume_after_kill_gives_the_same_retriever(tmp_path, tiny_llama, batch, accum):
    """Killed in optimizer step 3 (of micro-batches when accumulating), resumed from step 2's checkpoint."""
    spec = ModelSpec.model_validate({"name": "t"})
    r = recipe(max_steps=6, checkpoint_every=2, queries_per_batch=batch, grad_accum_steps=accum)
    train_retriever(
        tiny_llama.pretrained, "b", RESOURCES / "toy", spec, r, tmp_path / "full", tmp_path / "w1"
    )

    class Killer:
        def log(self, metrics, step):
            if step == 3:
                raise KeyboardInterrupt

        def summary(self, values):
            pass

    with pytest.raises(KeyboardInterrupt):
        train_retriever(
            tiny_llama.pretrained, "b", RESOURCES / "toy", spec, r, tmp_path / "x", tmp_path / "w2", Killer()
        )
    stats = train_retriever(
        tiny_llama.pretrained, "b", RESOURCES / "toy", spec, r, tmp_path / "resumed", tmp_path / "w2"
    )
    assert stats["resumed_from_step"] == 2
    full, resumed = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("full", "resumed"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_plan_groups_micro_batches_into_optimizer_steps(toy):
    r = recipe(queries_per_batch=3, grad_accum_steps=4)
    one, acc = build_plan(toy, recipe(queries_per_batch=3)), build_plan(toy, r)
    micro = [m for s in acc.steps for m in s]
    assert micro == [m for s in one.steps for m in s]  # the same micro-batches, the same order
    n = len(micro)
    assert [len(s) for s in acc.steps] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert (
        build_plan(toy, recipe(queries_per_batch=3, grad_accum_steps=4, max_steps=2)).steps == acc.steps[:2]
    )
    two = build_plan(toy, recipe(queries_per_batch=3, grad_accum_steps=4, epochs=2))
    assert len(two.steps) == 2 * len(acc.steps)  # an optimizer step never spans two epochs


def test_accumulated_gradient_is_the_mean_of_micro_batch_gradients(tiny_llama, toy):
    """Two micro-batches (of 3 and 3 queries) back-propagated as one step give the gradient of the mean of
    their losses: the gradient each would give alone, averaged (not summed, not the last one's)."""
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from readaptir.train.retriever import _step_loss, _Texts, accumulate, retriever_model

    r = recipe(queries_per_batch=3, grad_accum_steps=2, dropout=0.0)
    micro = build_plan(toy, r).steps[0]
    assert [len(m) for m in micro] == [3, 3]
    texts = _Texts(
        toy, ModelSpec.model_validate({"name": "t"}), r, AutoTokenizer.from_pretrained(tiny_llama.pretrained)
    )
    acc = Accelerator(cpu=True)

    def grads(model) -> list[torch.Tensor]:
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    model = retriever_model(tiny_llama.pretrained, r, "b")
    loss, encoded = accumulate(model, texts, micro, 1, 0, 2, 2, r.temperature, acc)
    together = grads(model)
    separate, losses = [], []
    for batch in micro:
        model.zero_grad(set_to_none=True)
        one, _ = _step_loss(model, texts, batch, 1, 0, 2, 2, r.temperature, acc)
        one.backward()
        separate.append(grads(model))
        losses.append(float(one.detach()))
    assert encoded == 6 and loss == pytest.approx(sum(losses) / 2, rel=1e-6)
    assert max(float((a - b).abs().max()) for a, b in zip(*separate, strict=True)) > 1e-4  # they differ
    for got, a, b in zip(together, *separate, strict=True):
        torch.testing.assert_close(got, (a + b) / 2, rtol=1e-5, atol=1e-7)


def test_steps_schedule_and_checkpoints_count_optimizer_steps(tmp_path, tiny_llama):
    """3 optimizer steps of 2 micro-batches: 3 scheduler steps (warmup 1, then linear decay over 3), 3 logs,
    a checkpoint after step 2, 24 queries."""
    from ddp_retriever import Recorder

    r = recipe(queries_per_batch=4, grad_accum_steps=2, max_steps=3, checkpoint_every=2)
    rec = Recorder()
    stats = train_retriever(tiny_llama.pretrained, "b", RESOURCES / "toy", ModelSpec.model_validate({"name": "t"}),
                            r, tmp_path / "out", tmp_path / "work", rec)  # fmt: skip
    assert (stats["steps"], stats["queries"], stats["queries_encoded_by_main"]) == (3, 24, 24)
    assert sorted(rec.steps) == [1, 2, 3]
    assert [rec.steps[s]["retriever/lr"] for s in (1, 2, 3)] == pytest.approx([0.0, 1e-3, 5e-4])
    assert [p.name for p in (tmp_path / "work").glob("ckpt-*")] == ["ckpt-000000002"]


def test_shards_cover_the_batch_in_order():
    assert shard_bounds(5, 2) == [(0, 3), (3, 5)] and shard_bounds(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]


@pytest.mark.slow
def test_two_processes_train_the_retriever_one_process_trains(tmp_path, tiny_llama):
    """torchrun, 2 CPU processes (gloo): each encodes its share of a micro-batch's queries, the embeddings
    are gathered, and the adapter equals a single process's on the whole batch (a step of two micro-batches
    of 5 queries: shards of 3 and 2, gradients accumulated; a last step of 1 query is computed whole on both
    ranks). Without the gather, or without scaling the loss by the world size, the two adapters differ."""
    r = recipe(queries_per_batch=5, grad_accum_steps=2, max_queries=11, dropout=0.0)  # masks differ per rank
    plan = build_plan(TrainData.load(RESOURCES / "toy", "train"), r)
    assert [[len(m) for m in s] for s in plan.steps] == [[5, 5], [1]]
    from ddp_retriever import Recorder

    rec = Recorder()
    stats = train_retriever(tiny_llama.pretrained, "b", RESOURCES / "toy", ModelSpec.model_validate({"name": "t"}),
                            r, tmp_path / "one", tmp_path / "w1", rec)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "tests" / "ddp_retriever.py"), str(tiny_llama.pretrained), str(tmp_path / "two"),
         str(tmp_path / "w2"), r.model_dump_json()],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("one", "two"))
    assert one.keys() == two.keys() and stats["steps"] == 2
    split = json.loads((tmp_path / "two" / "train_stats.json").read_text())
    assert (split["world_size"], split["queries"], split["queries_encoded_by_main"]) == (2, 11, 3 + 3 + 1)
    assert stats["queries_encoded_by_main"] == 11
    # the same loss and the same gradient (before clipping) at every step, not only the same Adam updates
    logged = {int(k): v for k, v in json.loads((tmp_path / "two" / "logged.json").read_text()).items()}
    assert sorted(logged) == sorted(rec.steps) == [1, 2]
    for step, want in rec.steps.items():
        for key in ("retriever/loss", "retriever/grad_norm"):
            assert logged[step][key] == pytest.approx(want[key], rel=1e-5), (step, key)
    assert max(float((one[k] - two[k]).abs().max()) for k in one) <= 1e-5
    assert any(float(one[k].abs().max()) > 1e-3 for k in one if "lora_B" in k)  # it did learn something


def _cell(tmp_path: Path, *overrides: str) -> CellConfig:
    data = tmp_path / "data"
    if not (data / "toy").is_dir():
        shutil.copytree(RESOURCES / "toy", data / "toy")  # the retriever's training data, in paths.data_dir
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny-llama", "model.retriever=null", "+model.train_retriever.dataset=toy",
            "+model.train_retriever.r=4", "+model.train_retriever.max_steps=4", "+model.train_retriever.group_size=2",
            "+model.train_retriever.grad_accum_steps=1",
            "+model.train_retriever.passage_max_len=48", "+model.train_retriever.warmup_steps=0",
            "dataset=demo/toy", "train.max_passages=8", "tracking.backend=none", "search.top_k=50",
            f"paths.data_dir={data}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides])  # fmt: skip
    GlobalHydra.instance().clear()
    return CellConfig.from_hydra(cfg)


def test_cell_trains_its_retriever_once(tmp_path):
    cfg = _cell(tmp_path)
    resolve_models(cfg.model, cfg.paths.cache_dir)
    planned = plan_cell(cfg).keys
    assert {"retriever", "untrained_run"} <= set(planned)
    record = run_cell(cfg, tmp_path / "job")
    assert record.status == "done" and record.artifacts == planned and not record.zero_shot
    assert record.retriever["steps"] == 4 and "NDCG@10" in record.untrained and "NDCG@10" in record.readapted
    again = run_cell(_cell(tmp_path, "readapt.alpha=1.0"), tmp_path / "job2")  # another α: same retriever
    built = {e["key"] for e in again.artifact_events if not e["reused"]}
    assert (
        again.artifacts["retriever"] == planned["retriever"]
        and again.artifacts["adapter"] == planned["adapter"]
    )
    assert not built & {planned[k] for k in ("retriever", "adapter", "base_run", "untrained_run")}
    assert again.untrained == record.untrained and again.base == record.base
    other = plan_cell(_cell(tmp_path, "+model.train_retriever.lr=5e-4")).keys
    assert other["retriever"] != planned["retriever"] and other["untrained_run"] == planned["untrained_run"]
