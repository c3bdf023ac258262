"""Does choosing α on a candidate pool pick the α that the whole corpus would pick?

For each seed, an ``alpha=auto`` cell selects α on its pool (the stored selection); this script then scores
every candidate α on the *whole* corpus for the same selection queries (one full readapted encoding per α,
the cost the pool avoids) and reports, per fold, the two choices, whether they agree, and the whole-corpus
nDCG@10 lost by taking the pool's choice. The pool comes from the base retriever's and BM25's top-k, so it
can favour α values close to 0: the per-α columns show which way it leans.

    python experiments/alpha_pool_check.py --seeds 0 1 2 -- model=smollm2 dataset=scifact
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from readaptir.config import CellConfig  # noqa: E402
from readaptir.data.beir import load_qrels, load_queries  # noqa: E402
from readaptir.evaluate import evaluate_run  # noqa: E402
from readaptir.grid import stages  # noqa: E402
from readaptir.grid.alpha import (
    Selection,  # noqa: E402
    choose,  # noqa: E402
)
from readaptir.grid.cell import job_dir, run_cell  # noqa: E402
from readaptir.grid.keys import CellInputs, at_alpha, cell_keys  # noqa: E402
from readaptir.grid.select import SELECTION_FILE  # noqa: E402
from readaptir.models.hub import resolve_models  # noqa: E402
from readaptir.runtime import Runtime  # noqa: E402
from readaptir.store.artifacts import ArtifactStore  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str]) -> CellConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return CellConfig.from_hydra(hydra_compose("config", overrides=overrides))


def full_corpus_scores(cfg: CellConfig, sel: Selection) -> dict[float, dict[str, float]]:
    """Per α, per selection query: nDCG@10 on the whole corpus (the readapted index at that α)."""
    runtime = Runtime.detect(cfg.encode.dtype, cfg.model.torch_dtype)
    inputs, store = CellInputs.of(cfg), ArtifactStore(cfg.paths.cache_dir)
    folders = resolve_models(cfg.model, cfg.paths.cache_dir)
    cell = cell_keys(cfg, runtime, inputs)
    if "retriever" in cell:  # a trained retriever: the cell just built it, this reuses it
        folders, _ = stages.train_retriever(cfg, store, cell["retriever"], folders, runtime)
    sel_ids = {q for f in sel.folds for q in f["select"]}
    queries = load_queries(inputs.eval_root, sel_ids)
    qrels = {q: d for q, d in load_qrels(inputs.eval_root, sel.split).items() if q in sel_ids}
    adapter = store.path(cell["adapter"])
    data = stages.EvalData(inputs.eval_root, {}, {})
    out = {}
    for alpha in sel.candidates:
        c = at_alpha(cfg, alpha)
        keys = cell_keys(c, runtime, inputs)
        model = stages.readapt(c, store, keys["readapted"], folders, adapter, runtime)
        r = stages.dense_retriever(c, model, folders, runtime)
        b = r.index_build(data.root)
        index = store.build_collective("index", keys["ra_index"], b.fill, prepare=b.prepare, finish=b.finish)
        run = r.search(r.open_index(index), r.encode_queries(queries), cfg.search.top_k)
        out[alpha] = evaluate_run(qrels, run, [10])[1]
    return out


def check(overrides: list[str], seed: int) -> list[dict]:
    cfg = compose(
        [*overrides, "readapt.alpha=auto", f"readapt.alpha_selection.seed={seed}", "tracking.backend=none"]
    )
    record = run_cell(cfg, job_dir(cfg))
    keys = record.artifacts
    sel = Selection(
        **json.loads(
            (ArtifactStore(cfg.paths.cache_dir).path(keys["selection"]) / SELECTION_FILE).read_text()
        )
    )
    full = full_corpus_scores(cfg, sel)
    rows = []
    for i, fold in enumerate(sel.folds):
        means = {
            a: sum(full[a][q] for q in fold["select"] if q in full[a]) / max(len(fold["select"]), 1)
            for a in full
        }
        pick_full = choose(means)
        rows.append({"dataset": cfg.dataset.name, "seed": seed, "fold": i, "protocol": sel.protocol,
                     "pool_size": sel.pool_size, "pool_choice": fold["chosen"], "full_choice": pick_full,
                     "agree": fold["chosen"] == pick_full,
                     "full_ndcg_lost": means[pick_full] - means[fold["chosen"]],
                     "pool_scores": fold["scores"], "full_scores": {f"{a:g}": s for a, s in means.items()}})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="experiments/results/alpha_pool_check.json")
    ap.add_argument(
        "overrides", nargs="*", help="Hydra overrides of the cell, e.g. model=smollm2 dataset=scifact"
    )
    a = ap.parse_args()
    rows = [row for seed in a.seeds for row in check(a.overrides, seed)]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    print("| dataset | seed | fold | protocol | pool | pool α | full α | agree | full nDCG@10 lost |")
    print("|---|---:|---:|---|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['dataset']} | {r['seed']} | {r['fold']} | {r['protocol']} | {r['pool_size']} | "
              f"{r['pool_choice']:g} | {r['full_choice']:g} | {'yes' if r['agree'] else 'NO'} | {r['full_ndcg_lost']:.4f} |")  # fmt: skip
    agree = sum(r["agree"] for r in rows)
    print(f"\npool and whole-corpus selection agree on {agree} of {len(rows)} folds")


if __name__ == "__main__":
    main()
