"""What a cell or a whole grid would compute, and roughly what it costs, without loading anything.

Per cell (``python run.py -m model=repllama 'dataset=glob(*)' run.plan=true``): the products the cell
needs, by the same keys a run computes (:func:`readaptir.grid.keys.cell_keys`), which of them are already
in the store, and GPU-hour estimates from corpus sizes and the throughputs in ``estimates:``. For a grid
(``make plan`` = ``python -m readaptir.grid.plan``): cells, unique knowledge adapters and corpus
encodings (counted by key, so the MS-MARCO adapter shared by 13 BeIR cells, and FEVER's shared with
Climate-FEVER, count once), and the totals. Neither loads a model or touches the network.

    python -m readaptir.grid.plan                                 # the paper's full 168-cell grid
    python -m readaptir.grid.plan --models repllama --datasets scifact,nfcorpus --adapters in-domain
    python -m readaptir.grid.plan --list-adapters                 # one cell per unique adapter (overrides)
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from readaptir.config import CellConfig
from readaptir.grid.keys import CellInputs, cell_products, resolve
from readaptir.grid.record import CellCoords
from readaptir.runtime import Runtime
from readaptir.store.artifacts import ArtifactStore

CONF = Path(__file__).resolve().parents[2] / "conf"
PAPER_MODELS = ["repllama", "e5-mistral"]
ADAPTERS = ["in-domain", "msmarco"]
ABLATIONS = ["both", "without", "with"]


@dataclass(frozen=True)
class CellPlan:
    cfg: CellConfig
    applicable: bool
    reason: str
    keys: dict[str, str]
    stored: frozenset[str]  # node names that are folders in the store (the others are keys only)
    missing: frozenset[str]  # node names whose product the store lacks
    train_passages: int
    done: bool
    results_path: Path | None  # where the results store keeps this cell's variant


def _corpus_size(name: str, cfg: CellConfig) -> int:
    if name == cfg.dataset.name:
        return cfg.dataset.corpus_size
    from omegaconf import OmegaConf

    return int(OmegaConf.load(CONF / "dataset" / f"{name}.yaml").corpus_size)


def plan_cell(cfg: CellConfig, store: ArtifactStore | None = None) -> CellPlan:
    """The cell's keys (as a run computes them) and which products are missing."""
    store = store or ArtifactStore(cfg.paths.cache_dir)
    inputs = CellInputs.of(cfg)
    applicable = inputs.subset.applicable or not cfg.model.readapt
    products = (
        cell_products(cfg, Runtime.detect(cfg.encode.dtype, cfg.model.torch_dtype), inputs)
        if applicable
        else {}
    )
    keys = resolve(products)
    stored = frozenset(n for n, p in products.items() if p.stored)
    missing = frozenset(n for n in stored if not store.is_done(keys[n]))
    train_n = 0
    if "adapter" in keys:
        # `with` keeps only judged-relevant passages: ~ the number of qrels, small next to the corpus.
        size = _corpus_size(inputs.subset.corpus, cfg)
        train_n = {"both": size, "without": size, "with": 0}[inputs.subset.subset]
        if cfg.train.max_passages:
            train_n = min(train_n, cfg.train.max_passages)
        train_n *= cfg.train.epochs
    path = CellCoords.of(cfg).store_path(cfg.paths.results_dir, keys["result"]) if "result" in keys else None
    done = path is not None and path.is_file()
    return CellPlan(cfg, applicable, inputs.subset.reason, keys, stored, missing, train_n, done, path)


def gpu_hours(cfg: CellConfig, train_passages: int, encode_passages: int) -> tuple[float, float]:
    est = cfg.estimates
    train_rate = float(est["train_passages_per_s"][cfg.train.batching])
    return train_passages / train_rate / 3600, encode_passages / float(est["encode_passages_per_s"]) / 3600


def describe_cell(cfg: CellConfig) -> str:
    p = plan_cell(cfg)
    c = CellCoords.of(cfg)
    head = f"[plan] {c.model} × {c.dataset} × {c.adapter} × {c.ablation}"
    if not p.applicable:
        return f"{head}: not applicable ({p.reason})"
    if p.done:
        return f"{head}: done ({p.results_path})"
    size = cfg.dataset.corpus_size
    steps = []
    if "adapter" in p.missing:
        th = gpu_hours(cfg, p.train_passages, 0)[0]
        steps.append(f"train {cfg.adapter.method} adapter on {cfg.adapter.corpus} ({cfg.ablation.name}, "
                     f"≈{p.train_passages:,} passages, {cfg.train.batching} batching, ≈{th:.1f} GPU-h)")  # fmt: skip
    eh = gpu_hours(cfg, 0, size)[1]
    for name, what in (("base_index", "base"), ("ra_index", f"readapted (α={c.alpha:g} β={c.beta:g})")):
        if name in p.missing:
            steps.append(f"encode {what} corpus ({size:,} passages, ≈{eh:.1f} GPU-h)")
    reused = sorted(p.stored - p.missing)
    steps.append("evaluate, write results.json" + (f" (reusing {', '.join(reused)})" if reused else ""))
    return head + ":\n    " + "\n    ".join(steps)


def grid_configs(models, datasets, adapters, ablations, overrides=()) -> Iterable[CellConfig]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for m, d, a, b in itertools.product(models, datasets, adapters, ablations):
            yield CellConfig.from_hydra(
                compose(
                    config_name="config",
                    overrides=[f"model={m}", f"dataset={d}", f"adapter={a}", f"ablation={b}", *overrides],
                )
            )
    GlobalHydra.instance().clear()


def summarize(cfgs: Iterable[CellConfig]) -> str:
    plans = [plan_cell(cfg) for cfg in cfgs]
    if not plans:
        return "no cells"
    applicable = [p for p in plans if p.applicable]
    adapters = {p.keys["adapter"]: p for p in applicable if "adapter" in p.keys}
    base = {p.keys["base_index"]: p for p in applicable}
    readapted = {p.keys["ra_index"]: p for p in applicable if "ra_index" in p.keys}
    train_h = sum(gpu_hours(p.cfg, p.train_passages, 0)[0] for p in adapters.values())
    enc_h = sum(
        gpu_hours(p.cfg, 0, p.cfg.dataset.corpus_size)[1] for p in [*base.values(), *readapted.values()]
    )
    cfg = plans[-1].cfg
    return "\n".join([
        f"cells: {len(plans)} ({len(applicable)} applicable, {len(plans) - len(applicable)} not applicable, "
        f"{sum(p.done for p in applicable)} already done)",
        f"unique knowledge adapters: {len(adapters)} (≈{sum(p.train_passages for p in adapters.values()):,} "
        f"training passages, ≈{train_h:,.0f} GPU-hours)",
        f"unique corpus encodings: {len(base) + len(readapted)} ({len(base)} base, {len(readapted)} readapted; "
        f"≈{enc_h:,.0f} GPU-hours)",
        f"total ≈{train_h + enc_h:,.0f} GPU-hours at the throughputs in `estimates:` "
        f"(train {cfg.estimates['train_passages_per_s'][cfg.train.batching]} passages/s, "
        f"encode {cfg.estimates['encode_passages_per_s']} passages/s)",
    ])  # fmt: skip


def unique_adapters(cfgs: Iterable[CellConfig]) -> list[str]:
    """One line of Hydra overrides per unique knowledge adapter: the first cell that needs it (the list a
    cluster builds first with ``run.stage=adapters``, one job per line)."""
    seen: dict[str, str] = {}
    for cfg in cfgs:
        p = plan_cell(cfg)
        if "adapter" in p.keys and p.keys["adapter"] not in seen:
            c = CellCoords.of(cfg)
            seen[p.keys["adapter"]] = (
                f"model={c.model} dataset={c.dataset} adapter={c.adapter} ablation={c.ablation}"
            )
    return list(seen.values())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    paper_datasets = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--datasets", default=",".join(paper_datasets))
    ap.add_argument("--adapters", default=",".join(ADAPTERS))
    ap.add_argument("--ablations", default=",".join(ABLATIONS))
    ap.add_argument("--list-adapters", action="store_true", help="one line of overrides per unique adapter")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. train.batching=packed")
    a = ap.parse_args(argv)
    split = str.split
    cfgs = grid_configs(split(a.models, ","), split(a.datasets, ","), split(a.adapters, ","),
                        split(a.ablations, ","), a.overrides)  # fmt: skip
    print("\n".join(unique_adapters(cfgs)) if a.list_adapters else summarize(cfgs))


if __name__ == "__main__":
    main()
