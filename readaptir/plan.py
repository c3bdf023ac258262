"""What a cell or a whole grid would compute, and roughly what it costs, without loading anything.

Per cell (``python run.py -m model=repllama 'dataset=glob(*)' run.plan=true``): the knowledge corpus and
subset, whether the cell applies, and the stages it would run, with GPU-hour estimates from corpus
sizes and the throughputs in ``estimates:`` (seeded with SPEC §6's H200 figures). For a grid
(``make plan`` = ``python -m readaptir.plan``): cells, unique knowledge adapters (one per pretrained
model × corpus × subset × recipe: the MS-MARCO adapter serves all 13 BeIR cells of a model, FEVER and
Climate-FEVER share one), unique corpus encodings (base once per model × dataset, plus one per
readapted cell), and the totals. Neither loads a model, reads a corpus or touches the network.

    python -m readaptir.plan                                      # the paper's full 168-cell grid
    python -m readaptir.plan --models repllama --datasets scifact,nfcorpus --adapters in-domain
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from readaptir.cell import cell_coords, cell_subset, results_path

CONF = Path(__file__).resolve().parents[1] / "conf"
PAPER_MODELS = ["repllama", "e5-mistral"]
ADAPTERS = ["in-domain", "msmarco"]
ABLATIONS = ["both", "without", "with"]


@dataclass(frozen=True)
class CellPlan:
    coords: dict
    applicable: bool
    reason: str
    adapter_id: tuple | None  # identifies the knowledge adapter by configuration
    base_encoding: tuple  # (model, dataset): the base retriever's corpus embeddings
    train_passages: int
    encode_passages: int
    done: bool


def plan_cell(cfg: DictConfig) -> CellPlan:
    sub = cell_subset(cfg)
    readapt = bool(cfg.model.get("readapt", True))
    size = int(cfg.dataset.corpus_size)
    applicable = sub.applicable or not readapt
    adapter_id = None
    train_n = 0
    if readapt and applicable:
        recipe = tuple(sorted((k, str(v)) for k, v in cfg.adapter.items() if k != "name"))
        train = tuple(
            sorted(
                (k, str(v))
                for k, v in cfg.train.items()
                if k not in ("checkpoint_every", "log_every", "gradient_checkpointing")
            )
        )
        adapter_id = (cfg.model.pretrained, sub.corpus, sub.subset, sub.filter_dataset, recipe, train)
        corpus_size = size
        if sub.corpus != cfg.dataset.name:
            from omegaconf import OmegaConf

            corpus_size = int(OmegaConf.load(CONF / "dataset" / f"{sub.corpus}.yaml").corpus_size)
        # `with` keeps only judged-relevant passages: ~ the number of qrels, small next to the corpus.
        train_n = {"both": corpus_size, "without": corpus_size, "with": 0}[sub.subset]
        if cfg.train.max_passages:
            train_n = min(train_n, int(cfg.train.max_passages))
        train_n *= int(cfg.train.epochs)
    return CellPlan(
        cell_coords(cfg),
        applicable,
        sub.reason,
        adapter_id,
        (cfg.model.name, cfg.dataset.name),
        train_n,
        size if (readapt and applicable) else 0,
        results_path(cfg).is_file(),
    )


def gpu_hours(cfg: DictConfig, train_passages: int, encode_passages: int) -> tuple[float, float]:
    est = cfg.estimates
    train_rate = float(est.train_passages_per_s[cfg.train.batching])
    return train_passages / train_rate / 3600, encode_passages / float(est.encode_passages_per_s) / 3600


def describe_cell(cfg: DictConfig) -> str:
    p = plan_cell(cfg)
    c = p.coords
    head = f"[plan] {c['model']} × {c['dataset']} × {c['adapter']} × {c['ablation']}"
    if not p.applicable:
        return f"{head}: not applicable ({p.reason})"
    if p.done:
        return f"{head}: done ({results_path(cfg)})"
    steps = [f"encode base corpus ({cfg.dataset.corpus_size:,} passages, cached per model × dataset)"]
    if p.adapter_id:
        th, eh = gpu_hours(cfg, p.train_passages, p.encode_passages)
        steps = [
            f"train {cfg.adapter.method} adapter on {p.adapter_id[1]} ({p.adapter_id[2]}, "
            f"≈{p.train_passages:,} passages, {cfg.train.batching} batching, ≈{th:.1f} GPU-h)"
        ] + steps
        steps += [
            f"readapt α={c['alpha']:g} β={c['beta']:g} ({c['knowledge_scaling']})",
            f"encode readapted corpus (≈{eh:.1f} GPU-h)",
        ]
    return head + ":\n    " + "\n    ".join(steps) + "\n    evaluate, write results.json"


def grid_configs(models, datasets, adapters, ablations, overrides=()):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for m, d, a, b in itertools.product(models, datasets, adapters, ablations):
            yield compose(
                config_name="config",
                overrides=[f"model={m}", f"dataset={d}", f"adapter={a}", f"ablation={b}", *overrides],
            )
    GlobalHydra.instance().clear()


def summarize(cfgs) -> str:

    plans, train_h, enc_h, cfg = [], 0.0, 0.0, None
    adapters: dict[tuple, int] = {}
    base: set[tuple] = set()
    readapted: set[tuple] = set()  # (adapter, model, dataset): cells sharing both share embeddings
    for cfg in cfgs:
        p = plan_cell(cfg)
        plans.append(p)
        if not p.applicable:
            continue
        if p.base_encoding not in base:
            base.add(p.base_encoding)
            enc_h += gpu_hours(cfg, 0, int(cfg.dataset.corpus_size))[1]
        if p.adapter_id and p.adapter_id not in adapters:
            adapters[p.adapter_id] = p.train_passages
            train_h += gpu_hours(cfg, p.train_passages, 0)[0]
        if p.adapter_id and (p.adapter_id, *p.base_encoding) not in readapted:
            readapted.add((p.adapter_id, *p.base_encoding))
            enc_h += gpu_hours(cfg, 0, p.encode_passages)[1]
    if cfg is None:
        return "no cells"
    applicable = [p for p in plans if p.applicable]
    done = sum(p.done for p in applicable)
    lines = [
        f"cells: {len(plans)} ({len(applicable)} applicable, {len(plans) - len(applicable)} not applicable, "
        f"{done} already done)",
        f"unique knowledge adapters: {len(adapters)} (≈{sum(adapters.values()):,} training passages, "
        f"≈{train_h:,.0f} GPU-hours)",
        f"unique corpus encodings: {len(base) + len(readapted)} ({len(base)} base, {len(readapted)} readapted; "
        f"≈{enc_h:,.0f} GPU-hours)",
        f"total ≈{train_h + enc_h:,.0f} GPU-hours at the throughputs in `estimates:` "
        f"(train {cfg.estimates.train_passages_per_s[cfg.train.batching]} passages/s, "
        f"encode {cfg.estimates.encode_passages_per_s} passages/s)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    paper_datasets = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--datasets", default=",".join(paper_datasets))
    ap.add_argument("--adapters", default=",".join(ADAPTERS))
    ap.add_argument("--ablations", default=",".join(ABLATIONS))
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. train.batching=packed")
    a = ap.parse_args(argv)
    cfgs = grid_configs(
        a.models.split(","), a.datasets.split(","), a.adapters.split(","), a.ablations.split(","), a.overrides
    )
    print(summarize(cfgs))


if __name__ == "__main__":
    main()
