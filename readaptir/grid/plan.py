"""What a cell, a sweep or the paper's grid would compute, and roughly what it costs, loading nothing.

Per cell (``readaptir model=repllama dataset=scifact run.plan=true``): the products it needs, by the keys a
run computes (:func:`readaptir.grid.keys.cell_keys`), which the store has, and GPU-hour estimates. A sweep
marks products an earlier cell already plans and ends with the total over unique products, then its
stages (:mod:`readaptir.grid.stageplan`). ``make plan`` prices the cells of Tables 1–3 as
``conf/experiment/table{1,2,3}.yaml`` sweep them, the full product of the config groups, then each
table's stages. Estimates need no data: ``conf/dataset/*.yaml`` ship ``corpus_tokens`` and
``judged_passages``; tokens per passage are capped at the truncation lengths, over ``estimates:``.

    python -m readaptir.grid.plan                       # Tables 1–3, the 168-cell product, the stages
    python -m readaptir.grid.plan --models repllama --datasets scifact,nfcorpus --adapters in-domain
    python -m readaptir.grid.plan --experiment table3 hydra/launcher=slurm  # its stages: the commands
"""

# size: one cell, a sweep and the paper grid priced by one set of helpers, and their CLI (stages: stageplan.py).
from __future__ import annotations

import argparse
import fnmatch
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from readaptir.config import CONF_DIR, CellConfig
from readaptir.grid.keys import CellInputs, cell_products, resolve
from readaptir.grid.record import CellCoords
from readaptir.grid.stageplan import stage_lines
from readaptir.grid.workload import Work, alpha_work, encode_work, estimates, gpu_hours, train_work
from readaptir.runtime import Runtime
from readaptir.store.artifacts import ArtifactStore

PAPER_MODELS = ["repllama", "e5-mistral"]
ADAPTERS = ["in-domain", "msmarco"]
ABLATIONS = ["both", "without", "with"]
PAPER_EXPERIMENTS = ("table1", "table2", "table3")
GROUPS = ("model", "dataset", "adapter", "ablation")
# Every cell planned in this process, in order: a sweep's plan marks what an earlier cell already needs
# and ends with the total over them (readaptir.cli prints it).
PLANNED: list[CellPlan] = []


@dataclass(frozen=True)
class CellPlan:
    cfg: CellConfig
    applicable: bool
    reason: str
    keys: dict[str, str]
    stored: frozenset[str]  # node names that are folders in the store (the others are keys only)
    missing: frozenset[str]  # node names whose product the store lacks
    train: Work  # the knowledge adapter's training (× epochs)
    encode: Work  # one corpus encoding of the evaluated dataset
    done: bool
    results_path: Path | None  # where the results store keeps this cell's variant
    alpha: tuple[str, Work] | None = None  # alpha=auto: (selection protocol, pool + chosen-α encodings)

    @property
    def label(self) -> str:
        c = CellCoords.of(self.cfg)
        return f"{c.model} × {c.dataset} × {c.adapter} × {c.ablation}"

    def hours(self, node: str) -> float:
        """Estimated GPU-hours of one product of the cell (0 for keys and CPU-only baselines)."""
        if node == "adapter":
            return gpu_hours(self.cfg, self.train.tokens, 0)[0]
        if node in ("base_index", "ra_index") and self.cfg.model.kind == "dense":
            return gpu_hours(self.cfg, 0, self.encode.tokens)[1]
        if node == "selection" and self.alpha is not None:
            return gpu_hours(self.cfg, 0, self.alpha[1].tokens)[1]
        return 0.0


def plan_cell(cfg: CellConfig, store: ArtifactStore | None = None) -> CellPlan:
    """The cell's keys (as a run computes them), which products are missing, and its workloads."""
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
    train = train_work(cfg, inputs) if "adapter" in keys else Work()
    path = CellCoords.of(cfg).store_path(cfg.paths.results_dir, keys["result"]) if "result" in keys else None
    done = path is not None and path.is_file()
    auto = alpha_work(cfg, inputs) if "selection" in keys else None
    return CellPlan(
        cfg,
        applicable,
        inputs.subset.reason,
        keys,
        stored,
        missing,
        train,
        encode_work(cfg),
        done,
        path,
        auto,
    )


def fmt_hours(h: float) -> str:
    if h >= 9.95:
        return f"≈{h:,.0f} GPU-h"
    return f"≈{h:.1f} GPU-h" if h >= 0.095 else f"≈{h * 60:.0f} GPU-min" if h >= 1 / 120 else "<1 GPU-min"


def _step(p: CellPlan, node: str, what: str, work: Work, earlier: dict[str, str]) -> str:
    text = f"{what}: {work.passages:,} passages, ≈{work.tokens / 1e6:,.1f}M tokens"
    owner = earlier.get(p.keys[node])
    if owner:
        return f"{text}; planned above for {owner} (counted once)"
    kind = p.cfg.model.kind
    return f"{text}, " + (
        fmt_hours(p.hours(node)) if kind == "dense" else f"no GPU estimate for a {kind} model"
    )


def describe_cell(cfg: CellConfig, earlier: Sequence[CellPlan] = ()) -> str:
    """What the cell would build; products an ``earlier`` cell plans are marked, not priced again."""
    p = plan_cell(cfg)
    owner: dict[str, str] = {}
    for q in earlier:
        for node in q.missing:
            owner.setdefault(q.keys[node], q.label)
    head = f"[plan] {p.label}"
    if not p.applicable:
        return f"{head}: not applicable ({p.reason})"
    if p.done:
        return f"{head}: done ({p.results_path})"
    c, steps = CellCoords.of(cfg), []
    t = cfg.model.train_retriever
    if "retriever" in p.missing and t is not None:
        steps.append(
            f"train the retriever on {t.dataset} {t.split} (LoRA "
            f"r={t.r}, {t.epochs} epoch(s), steps of {t.queries_per_batch}×{t.grad_accum_steps} queries × group {t.group_size})"
        )
    if "adapter" in p.missing:
        what = f"train {cfg.adapter.method} adapter on {cfg.adapter.corpus} ({cfg.ablation.name}, {cfg.train.batching} batching)"
        steps.append(_step(p, "adapter", what, p.train, owner))
    for node, what in (("base_index", "base"), ("ra_index", f"readapted (α={c.alpha_text} β={c.beta:g})")):
        if node in p.missing:
            steps.append(_step(p, node, f"encode {what} corpus", p.encode, owner))
    if "selection" in p.missing and p.alpha is not None:
        what = f"select α on {p.alpha[0]} queries, then encode the corpus at each chosen α"
        steps.append(_step(p, "selection", what, p.alpha[1], owner))
    reused = sorted(p.stored - p.missing)
    steps.append("evaluate, write results.json" + (f" (reusing {', '.join(reused)})" if reused else ""))
    return head + ":\n    " + "\n    ".join(steps)


def describe_in_sweep(cfg: CellConfig) -> str:
    """:func:`describe_cell` against the cells planned before in this process, then remember this one."""
    text = describe_cell(cfg, PLANNED)
    PLANNED.append(plan_cell(cfg))
    return text


@dataclass(frozen=True)
class Totals:
    """A set of cells, each product counted once by its key."""

    plans: tuple[CellPlan, ...]

    def unique(self, *nodes: str) -> dict[str, tuple[CellPlan, str]]:
        return {p.keys[n]: (p, n) for p in self.plans if p.applicable for n in nodes if n in p.keys}

    def hours(self, *nodes: str) -> float:
        return sum(p.hours(n) for p, n in self.unique(*nodes).values() if n in p.missing)

    @property
    def total_hours(self) -> float:
        return self.hours("adapter", "base_index", "ra_index", "selection")

    def lines(self) -> list[str]:
        plans = self.plans
        ok = [p for p in plans if p.applicable]
        adapters, base, ra = self.unique("adapter"), self.unique("base_index"), self.unique("ra_index")
        todo = [p.train for p, n in adapters.values() if n in p.missing]
        todo_enc = sum(n in p.missing for p, n in [*base.values(), *ra.values()])
        cfg = plans[-1].cfg
        batching, est = cfg.train.batching, estimates(cfg)
        where = f"measured in {Path(est['source']).name}" if "source" in est else "in `estimates:`"
        return [
            f"cells: {len(plans)} ({len(ok)} applicable, {len(plans) - len(ok)} not applicable, "
            f"{sum(p.done for p in ok)} already done)",
            f"unique knowledge adapters: {len(adapters)} ({len(todo)} to train: ≈{sum(w.passages for w in todo):,} "
            f"passages, ≈{sum(w.tokens for w in todo) / 1e9:,.2f}B tokens; {fmt_hours(self.hours('adapter'))})",
            f"unique corpus encodings: {len(base) + len(ra)} ({len(base)} base, {len(ra)} readapted; "
            f"{todo_enc} to build; {fmt_hours(self.hours('base_index', 'ra_index'))})",
            f"total {fmt_hours(self.total_hours)} (≈{self.total_hours / 24:,.0f} GPU-days) at the throughputs "
            f"{where} (train {est['train_passages_per_s'][batching]} passages/s with {batching} "
            f"batching, encode {est['encode_passages_per_s']} passages/s, at "
            f"{est.get('tokens_per_passage', 78)} tokens per passage)",
        ]  # fmt: skip


def summarize(cells: Iterable[CellConfig | CellPlan], indent: str = "") -> str:
    plans = tuple(c if isinstance(c, CellPlan) else plan_cell(c) for c in cells)
    return "no cells" if not plans else "\n".join(indent + line for line in Totals(plans).lines())


def experiment_cells(name: str) -> list[tuple[str, str, str, str]]:
    """(model, dataset, adapter, ablation) of every cell an experiment in ``conf/experiment/`` sweeps."""
    from omegaconf import OmegaConf

    exp = OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml")
    chosen: dict[str, str] = {}
    for entry in exp.get("defaults", []):
        if isinstance(entry, str):  # another experiment (figure2 is table1)
            return experiment_cells(entry)
        for k, v in entry.items():
            chosen[k.removeprefix("override ").strip("/")] = str(v)
    params = OmegaConf.select(exp, "hydra.sweeper.params") or {}
    paper_datasets = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
    values = []
    for g in GROUPS:
        raw = str(params[g]) if g in params else chosen[g]
        vals = []
        for v in raw.split(","):
            v = v.strip()
            vals += fnmatch.filter(paper_datasets, v[5:-1]) if v.startswith("glob(") else [v]
        values.append(vals)
    return list(itertools.product(*values))


def grid_configs(cells: Iterable[Sequence[str]], overrides: Sequence[str] = ()) -> Iterable[CellConfig]:
    """One validated config per (model, dataset, adapter, ablation), composed like a run composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for cell in cells:
            coords = [f"{g}={v}" for g, v in zip(GROUPS, cell, strict=True)]
            yield CellConfig.from_hydra(compose(config_name="config", overrides=[*coords, *overrides]))
    GlobalHydra.instance().clear()


def paper_report(product: Sequence[Sequence[str]], overrides: Sequence[str] = ()) -> str:
    """The cells of Tables 1–3 (the headline), then the full product of ``product``'s groups on one line."""
    cells = list(itertools.product(*product))
    every = {c: plan_cell(cfg) for c, cfg in zip(cells, grid_configs(cells, overrides), strict=True)}
    paper = sorted(set().union(*(experiment_cells(e) for e in PAPER_EXPERIMENTS)))
    full = Totals(tuple(every.values()))
    return "\n".join([
        "The paper's Tables 1–3 and Figure 2 (conf/experiment/table1.yaml, table2.yaml, table3.yaml):",
        summarize([every.get(c) or next(iter(grid_configs([c], overrides))) for c in paper], indent="  "),
        f"\nFull product of the config groups ({' × '.join(str(len(g)) for g in product)} = {len(cells)} cells, "
        f"{sum(p.applicable for p in full.plans)} applicable): {fmt_hours(full.total_hours)} "
        f"(≈{full.total_hours / 24:,.0f} GPU-days)",
    ])  # fmt: skip


def unique_adapters(cfgs: Iterable[CellConfig]) -> list[str]:
    """One line of overrides per unique knowledge adapter: the first cell that needs it."""
    seen: dict[str, str] = {}
    for cfg in cfgs:
        p, c = plan_cell(cfg), CellCoords.of(cfg)
        if "adapter" in p.keys:
            seen.setdefault(
                p.keys["adapter"],
                f"model={c.model} dataset={c.dataset} adapter={c.adapter} ablation={c.ablation}",
            )
    return list(seen.values())


def experiment_stages(name: str, overrides: Sequence[str] = (), args: Sequence[str] = ()) -> str:
    """An experiment's unique shared products and the commands of its stages (:mod:`readaptir.grid.stageplan`)."""
    plans = [plan_cell(c) for c in grid_configs(experiment_cells(name), overrides)]
    head = f'{name} (conf/experiment/{name}.yaml), in stages (README "Running the grid on SLURM"):'
    return "\n".join([head, *stage_lines(plans, [f"experiment={name}", *overrides, *args])])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for group, default in (("models", PAPER_MODELS), ("datasets", ["the 14 in conf/dataset/"]),
                           ("adapters", ADAPTERS), ("ablations", ABLATIONS)):  # fmt: skip
        ap.add_argument(f"--{group}", help=f"comma-separated (default: {','.join(default)})")
    ap.add_argument(
        "--experiment", action="append", help="only the stages of this conf/experiment/ (repeatable)"
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.batching=packed; hydra/launcher=slurm "
                    "and other hydra/… hydra.… ones go into the stage commands only")  # fmt: skip
    a = ap.parse_args(argv)
    args = [o for o in a.overrides if o.lstrip("+~").startswith(("hydra/", "hydra."))]
    overrides = [o for o in a.overrides if o not in args]
    groups = [a.models, a.datasets, a.adapters, a.ablations]
    datasets = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
    full = [PAPER_MODELS, datasets, ADAPTERS, ABLATIONS]
    product = [g.split(",") if g else d for g, d in zip(groups, full, strict=True)]
    if a.experiment:
        print("\n\n".join(experiment_stages(e, overrides, args) for e in a.experiment))
    elif any(groups):  # an explicit grid
        print(summarize(grid_configs(itertools.product(*product), overrides)))
    else:  # make plan: the paper's totals, then the stages of each of its experiments
        print(paper_report(product, overrides))
        print("".join(f"\n\n{experiment_stages(e, overrides, args)}" for e in PAPER_EXPERIMENTS))


if __name__ == "__main__":
    main()
