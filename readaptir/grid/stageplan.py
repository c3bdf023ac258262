"""A sweep's stages, from its product graph: the shared products first, as their own jobs, then the cells.

On a cluster a product several cells need (the MS-MARCO adapter under 13 BeIR cells, a base encoding
under an adapter=msmarco and an adapter=in-domain cell) would keep GPUs idle: every job but one waits
for it. So a sweep runs in stages, each a set of Hydra sweeps whose jobs build disjoint products:

1. ``run.stage=adapters``: one job per unique knowledge adapter (with its token cache);
2. ``run.stage=base``: one job per unique base index and run;
3. the cells (``run.on_busy=exit``): everything shared is in the store, each job builds only its own.

The jobs of a stage come from the same keys a run computes (:func:`readaptir.grid.keys.cell_keys`,
through the plans of :mod:`readaptir.grid.plan`): per unique product, the first cell that needs it. A
product that two jobs of one stage would both build first (a token cache shared by the with/without/both
adapters of Table 2, a retriever trained from the pretrained model) goes to an earlier *wave*: the jobs
of a later wave find it built. Each wave is one or more commands, each a cartesian Hydra sweep
(``model=a,b dataset=x,y``), so a stage submits exactly its jobs and nothing waits.

This module reads plans (objects with ``cfg``, ``keys``, ``missing``, ``applicable`` and ``label``) and
loads nothing; :mod:`readaptir.grid.plan` prints its stages.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from readaptir.config import CONF_DIR

GROUPS = ("model", "dataset", "adapter", "ablation")
# stage → (the products its jobs own, the shared products a job builds on its way there)
STAGE_NODES = {
    "adapters": (("adapter",), ("retriever", "tokens")),
    "base": (("base_index", "base_run"), ("retriever",)),
}
PROGRAM = "readaptir -m"


@functools.lru_cache(maxsize=1)
def _dataset_options() -> dict[str, str]:
    """``dataset.name`` → its config-group option (``toy`` → ``demo/toy``, ``scifact-mini`` → ``mini/scifact``)."""
    from omegaconf import OmegaConf

    root = CONF_DIR / "dataset"
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*.yaml"), key=lambda p: (len(p.parts), str(p))):
        name = str(OmegaConf.load(path).get("name", path.stem))
        out.setdefault(name, path.relative_to(root).with_suffix("").as_posix())
    return out


def choices(cfg: Any) -> tuple[str, str, str, str]:
    """The config-group options that compose ``cfg``: (model, dataset, adapter, ablation)."""
    d = cfg.dataset.name
    return cfg.model.name, _dataset_options().get(d, d), cfg.adapter.name, cfg.ablation.name


@dataclass
class Stage:
    """One stage: its waves of jobs (each job one cell), and what every product it builds is shared by."""

    name: str
    waves: list[list[tuple[str, ...]]] = field(default_factory=list)
    shared: dict[str, int] = field(default_factory=dict)  # product key → cells of the sweep that need it

    @property
    def jobs(self) -> int:
        return sum(len(w) for w in self.waves)


def _place(
    stage: Stage, cell: tuple[str, ...], todo: Sequence[str], built: dict[str, int], offset: int
) -> None:
    """Put a job in the first wave after every wave that builds one of its shared inputs ``todo``."""
    wave = max([built[k] + 1 for k in todo if k in built] + [offset])
    for k in todo:
        built.setdefault(k, wave)
    while len(stage.waves) <= wave - offset:
        stage.waves.append([])
    stage.waves[wave - offset].append(cell)


def stage_jobs(plans: Sequence[Any]) -> list[Stage]:
    """The ``adapters``, ``base`` and ``cells`` stages of a sweep's plans (the first two only with jobs)."""
    ok = [p for p in plans if p.applicable]
    built: dict[str, int] = {}  # key of a product built on the way → the (global) wave that builds it
    stages, offset = [], 0
    for name, (own, ancestors) in STAGE_NODES.items():
        stage, node = Stage(name), own[0]
        need = Counter(p.keys[node] for p in ok if node in p.keys)
        for p in ok:
            if node not in p.keys or p.keys[node] in stage.shared:
                continue
            stage.shared[p.keys[node]] = need[p.keys[node]]
            if any(n in p.missing for n in own):  # else already in the store
                _place(stage, choices(p.cfg), [p.keys[a] for a in ancestors if a in p.missing], built, offset)
        if stage.jobs:
            stages.append(stage)
            offset += len(stage.waves)
        for p in ok:  # what this stage builds, later stages find in the store
            built.update({p.keys[n]: offset - 1 for n in own if n in p.missing})
    early = {n for own, anc in STAGE_NODES.values() for n in (*own, *anc)}
    cells = Stage("cells")
    for p in ok:  # a product two cells share, the first builds; the other runs in a later wave
        _place(cells, choices(p.cfg), [p.keys[n] for n in sorted(p.missing - early)], built, offset)
    stages.append(cells)
    return stages


def sweeps(cells: Sequence[tuple[str, ...]]) -> list[str]:
    """The fewest-by-grouping cartesian overrides covering exactly ``cells`` (model, dataset, adapter, ablation)."""
    by_rest: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for model, dataset, adapter, ablation in cells:
        if model not in by_rest[adapter, ablation][dataset]:
            by_rest[adapter, ablation][dataset].append(model)
    out = []
    for (adapter, ablation), datasets in by_rest.items():
        by_models: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for dataset, models in datasets.items():
            by_models[tuple(models)].append(dataset)
        for models, ds in by_models.items():
            out.append(
                f"model={','.join(models)} dataset={','.join(ds)} adapter={adapter} ablation={ablation}"
            )
    return out


def stage_lines(plans: Sequence[Any], base_args: Sequence[str], indent: str = "  ") -> list[str]:
    """Per stage: its unique products (how many cells share each) and the exact commands that build it."""
    prefix = " ".join([PROGRAM, *(a for a in base_args if a)])
    # The waves name their cells: the sweep's own model=/dataset=/adapter=/ablation= overrides give way.
    narrow = " ".join([PROGRAM, *(a for a in base_args if a and a.lstrip("+~").split("=")[0] not in GROUPS)])
    lines = []
    for n, stage in enumerate(stage_jobs(plans), 1):
        if stage.name == "cells":
            waiting = (
                f"; {len(stage.waves) - 1} more wave(s): cells sharing a product"
                if len(stage.waves) > 1
                else ""
            )
            lines.append(f"{indent}stage {n}, cells: {stage.jobs} applicable of {len(plans)}, reusing the "
                         f"stages above{waiting}")  # fmt: skip
        else:
            what = {"adapters": "knowledge adapters", "base": "base encodings (index + run)"}[stage.name]
            shared = sorted((c for c in stage.shared.values() if c > 1), reverse=True)
            lines.append(f"{indent}stage {n}, {stage.name}: {stage.jobs} unique {what} to build"
                         + (f", {len(shared)} shared by several cells (up to {shared[0]})" if shared else ""))  # fmt: skip
        for w, cells in enumerate(stage.waves):
            if len(stage.waves) > 1:
                lines.append(
                    f"{indent}  wave {w + 1} of {len(stage.waves)}"
                    + (" (once the one before is done)" if w else "")
                    + ":"
                )
            if stage.name == "cells" and len(stage.waves) == 1:
                lines.append(f"{indent}    {prefix} run.on_busy=exit")
                continue
            arg = f"run.stage={stage.name}" if stage.name != "cells" else "run.on_busy=exit"
            lines += [f"{indent}    {narrow} {arg} {s}" for s in sweeps(cells)]
    return lines
