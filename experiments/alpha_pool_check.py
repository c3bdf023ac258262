"""Does choosing α on each fold's pool pick the α that the whole corpus would pick, and what does it cost?

Selection only ever needs each passage's score, and a passage's embedding does not depend on which other
passages are encoded, so one full score matrix per candidate α answers everything: the whole-corpus choice
(exact nDCG@10), the choice of ``readaptir.grid.alpha`` (each fold's own pool plus the corpus sample, at the
default ``pool_depth`` and ``sample_size``) and the choice of the old design (one pool for every fold, its
judged passages added, ranked within itself). Two sources of matrices:

- ``real``: SmolLM2's trained retriever and knowledge adapter at mini-cpu length caps; every candidate α
  encodes the whole (sub)corpus. CPU-sized, so the corpus is small (the pool may be all of it).
- ``simulate``: score-level, calibrated on the real matrices (per α: correlation with α = 0's scores of the
  non-relevant passages, the relevant passages' shift in non-relevant standard deviations; BM25 likewise),
  at corpus sizes no CPU can encode, up to MS-MARCO's 8.8M. Each query draws its own corpus; its fold pool
  is its own base/BM25 top-``pool_depth`` plus as many random passages as the other selection queries'
  pools add. Relevant shifts move with corpus size by ``isf(1/N) − isf(1/N_real)`` (the relevant passages
  keep their place against the top of the non-relevant tail); the α-to-α gaps stay as calibrated.
  Scenario ``hurts`` mirrors the calibrated gaps (α > 0 worse than α = 0 by as much as it was better).

    python experiments/alpha_pool_check.py real -- experiment=mini-cpu dataset=mini/scifact
    python experiments/alpha_pool_check.py simulate --sizes 50000 500000 8841823
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from readaptir.config import AlphaSelection  # noqa: E402
from readaptir.grid.alpha import Fold, choose, corpus_sample, estimated_ndcg, fold_pools, idcg  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
RESULTS = Path(__file__).resolve().parent / "results"


def real_matrices(
    overrides: list[str], alphas: list[float] | None
) -> dict:  # size: one linear build of every α's matrix
    """Score matrices ``[queries, passages]`` of every candidate α and of BM25 on the evaluated corpus."""
    from hydra import compose, initialize_config_dir

    from readaptir.config import CellConfig
    from readaptir.grid import stages
    from readaptir.grid.cell import run_cell
    from readaptir.grid.keys import BM25, CellInputs, at_alpha, cell_keys
    from readaptir.models.hub import resolve_models
    from readaptir.retrieval.lexical import BM25Retriever
    from readaptir.runtime import Runtime
    from readaptir.store.artifacts import ArtifactStore

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = CellConfig.from_hydra(compose("config", overrides=[*overrides, "tracking.backend=none"]))
    # The fixed-α cell trains (or reuses) the retriever and the adapter; its job folder is scratch.
    run_cell(cfg, Path(cfg.paths.cache_dir) / "tmp-alpha-pool-job")
    runtime = Runtime.detect(cfg.encode.dtype, cfg.model.torch_dtype)
    inputs, store = CellInputs.of(cfg), ArtifactStore(cfg.paths.cache_dir)
    folders, cell = resolve_models(cfg.model, cfg.paths.cache_dir), cell_keys(cfg, runtime, inputs)
    if "retriever" in cell:
        folders, _ = stages.train_retriever(cfg, store, cell["retriever"], folders, runtime)
    data = stages.EvalData.load(inputs.eval_root, cfg.dataset.split)
    queries = {q: t for q, t in data.queries.items() if any(s > 0 for s in data.qrels[q].values())}
    adapter, out = store.path(cell["adapter"]), {}
    for alpha in alphas or cfg.readapt.alpha_selection.candidates():
        c = at_alpha(cfg, alpha)
        keys = cell_keys(c, runtime, inputs)
        r = stages.dense_retriever(c, stages.readapt(c, store, keys["readapted"], folders, adapter, runtime),
                                   folders, runtime)  # fmt: skip
        if alpha == 0 and cfg.readapt.beta == 1 and cfg.readapt.knowledge_scaling == "delta":
            index = r.open_index(
                store.path(cell["base_index"])
            )  # W(0) = W_ret: the base encodings, bit for bit
        else:
            b = r.index_build(data.root)
            index = r.open_index(store.build_collective("index", keys["ra_index"], b.fill, prepare=b.prepare,
                                                        finish=b.finish))  # fmt: skip
        qids, qemb = r.encode_queries(queries)
        order = np.argsort(np.array(index.ids))  # every α's columns in one (sorted id) order
        out[alpha] = (qemb @ np.asarray(index.matrix, dtype=np.float32).T)[:, order]
        docs = [index.ids[j] for j in order]
    bm25 = BM25Retriever(BM25)
    tmp = Path(cfg.paths.cache_dir) / "tmp-alpha-pool-bm25"
    tmp.mkdir(parents=True, exist_ok=True)
    bm25.index_build(data.root).finish(tmp)
    run = bm25.search(bm25.open_index(tmp), bm25.encode_queries(queries), len(docs))
    lex = np.array([[run[q].get(d, 0.0) for d in docs] for q in qids], dtype=np.float32)
    return {"alphas": sorted(out), "scores": out, "bm25": lex, "qids": qids, "docs": docs,
            "qrels": {q: data.qrels[q] for q in qids}, "dataset": cfg.dataset.name}  # fmt: skip


def _plan(qids: list[str], folds: int, seed: int) -> list[Fold]:
    order = np.random.default_rng([seed, 5]).permutation(len(qids))
    parts = [[qids[i] for i in order[f::folds]] for f in range(folds)]
    return [
        Fold(tuple(q for g, p in enumerate(parts) if g != f for q in p), tuple(parts[f]))
        for f in range(folds)
    ]


def compare_real(m: dict, s: AlphaSelection) -> list[dict]:
    """Per cross-fitted fold: whole-corpus, new and old choices and the whole-corpus nDCG@10 lost."""
    qids, docs, qrels = m["qids"], m["docs"], m["qrels"]
    col, row = {d: j for j, d in enumerate(docs)}, {q: i for i, q in enumerate(qids)}
    folds = _plan(qids, min(s.folds, len(qids)), s.seed)

    def top(mat: np.ndarray) -> dict:
        return {
            q: {docs[j]: float(mat[row[q], j]) for j in np.argsort(-mat[row[q]])[: s.pool_depth]}
            for q in qids
        }

    pools = fold_pools(folds, [top(m["scores"][0.0]), top(m["bm25"])], s.pool_depth)
    sample = corpus_sample(docs, s.sample_size, s.seed)
    old_pool = sorted(set().union(*pools) | {d for q in qids for d in qrels[q] if d in col})

    def ndcg(alpha, q, pool, outside, scale):
        p, o = [col[d] for d in pool if d != q], [col[d] for d in outside if d != q]
        g = np.array([max(qrels[q].get(docs[j], 0), 0) for j in p], dtype=np.float64)
        sc = m["scores"][alpha][row[q]]
        return estimated_ndcg(sc[p], g, sc[o], scale, idcg(qrels[q]))

    def mean(fold: Fold, pool, outside, scale) -> dict:
        return {
            a: float(np.mean([ndcg(a, q, pool, outside, scale) for q in fold.select])) for a in m["alphas"]
        }

    rows = []
    for f, (fold, pool) in enumerate(zip(folds, pools, strict=True)):
        outside = [d for d in sample if d not in set(pool)]
        scale = (len(docs) - len(pool)) / len(outside) if outside else 0.0
        full, new, old = (
            mean(fold, docs, [], 0.0),
            mean(fold, pool, outside, scale),
            mean(fold, old_pool, [], 0.0),
        )
        rows.append(_row(f, len(docs), len(pool), full, new, old))
    return rows


def _row(fold: int, n: int, pool: int, full: dict, new: dict, old: dict) -> dict:
    fc, nc, oc = choose(full), choose(new), choose(old)
    return {"fold": fold, "corpus": n, "pool": pool, "full_choice": fc, "pool_choice": nc, "old_choice": oc,
            "lost": full[fc] - full[nc], "old_lost": full[fc] - full[oc],
            "full": _g(full), "pool_scores": _g(new), "old_scores": _g(old)}  # fmt: skip


def _g(d: dict) -> dict:
    return {f"{a:g}": round(v, 5) for a, v in d.items()}


def calibrate(m: dict) -> dict:
    """Per α (and BM25): correlation with α = 0 on non-relevant passages and the relevant shift, in
    non-relevant standard deviations of each query, averaged over queries; relevant counts per query."""
    out = {"n_real": len(m["docs"]), "n_rel": [], "rho": {}, "mu": {}}
    col = {d: j for j, d in enumerate(m["docs"])}
    cols = {**{f"{a:g}": m["scores"][a] for a in m["alphas"]}, "bm25": m["bm25"]}
    stats = {k: ([], []) for k in cols}
    for i, q in enumerate(m["qids"]):
        rel = [col[d] for d, g in m["qrels"][q].items() if g > 0 and d in col and d != q]
        mask = np.ones(len(m["docs"]), bool)
        mask[rel] = False
        out["n_rel"].append(len(rel))
        z = {k: (v[i] - v[i][mask].mean()) / v[i][mask].std() for k, v in cols.items()}
        for k in cols:
            stats[k][0].append(np.corrcoef(z["0"][mask], z[k][mask])[0, 1])
            stats[k][1].append(float(z[k][rel].mean()))
    out["rho"] = {k: float(np.mean(v[0])) for k, v in stats.items()}
    out["mu"] = {k: float(np.mean(v[1])) for k, v in stats.items()}
    return out


def read_trec(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        q, _, d, _, score, *_ = line.split()
        run.setdefault(q, {})[d] = float(score)
    return run


def calibrate_runs(runs: dict[str, Path], qrels_tsv: Path, n_real: int) -> dict:
    """``calibrate``'s statistics from stored runs (each query's top passages only, not every passage):
    per query, on the passages every run scored; relevant passages missing from a run are skipped."""
    qrels: dict[str, dict[str, int]] = {}
    for line in qrels_tsv.read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        qrels.setdefault(q, {})[d] = int(g)
    read = {k: read_trec(p) for k, p in runs.items()}
    stats: dict[str, tuple[list, list]] = {k: ([], []) for k in read}
    n_rel = []
    for q, rels in qrels.items():
        common = sorted(set.intersection(*(set(r.get(q, {})) for r in read.values())))
        rel = [d for d in common if rels.get(d, 0) > 0]
        non = [d for d in common if rels.get(d, 0) <= 0]
        n_rel.append(sum(g > 0 for g in rels.values()))
        if not rel or len(non) < 3:
            continue
        z = {}
        for k, r in read.items():
            x = np.array([r[q][d] for d in non])
            z[k] = ((x - x.mean()) / x.std(), (np.array([r[q][d] for d in rel]) - x.mean()) / x.std())
        for k in read:
            stats[k][0].append(np.corrcoef(z["0"][0], z[k][0])[0, 1])
            stats[k][1].append(float(z[k][1].mean()))
    return {"n_real": n_real, "n_rel": n_rel, "queries_used": len(stats["0"][0]),
            "rho": {k: float(np.mean(v[0])) for k, v in stats.items()},
            "mu": {k: float(np.mean(v[1])) for k, v in stats.items()}}  # fmt: skip


def _main_real(a) -> None:
    from readaptir.fs import atomic_write_json

    t0 = time.time()
    m = real_matrices(a.overrides, a.alphas)
    s = AlphaSelection()
    report = {"source": "real", "dataset": m["dataset"], "overrides": a.overrides, "settings": s.model_dump(),
              "seconds": round(time.time() - t0, 1), "machine": _machine(),
              "folds": compare_real(m, s), "calibration": calibrate(m)}  # fmt: skip
    atomic_write_json(RESULTS / f"alpha_pool_check-real-{m['dataset']}.json", report)
    print(json.dumps({k: report[k] for k in ("dataset", "seconds", "folds", "calibration")}, indent=1))


def _machine() -> dict:
    import os

    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "omp_threads": os.environ.get("OMP_NUM_THREADS"), "load": os.getloadavg(),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("real")
    r.add_argument("--alphas", type=float, nargs="+", help="candidates to encode (default: the grid)")
    r.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. experiment=mini-cpu dataset=mini/scifact"
    )
    c = sub.add_parser("runs", help="calibrate from stored TREC runs (top passages only)")
    c.add_argument("--run", nargs=2, action="append", metavar=("ALPHA", "RUN_TREC"), required=True)
    c.add_argument("--qrels", required=True)
    c.add_argument("--corpus-size", type=int, required=True)
    c.add_argument("--note", default="")
    sim = sub.add_parser("simulate")
    sim.add_argument("--calibration", default=str(RESULTS / "alpha_pool_check-real-scifact-mini.json"))
    sim.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000, 8_841_823])
    sim.add_argument("--queries", type=int, default=40, help="selection queries per fold")
    sim.add_argument("--folds", type=int, default=5)
    sim.add_argument(
        "--base-ndcg",
        type=float,
        default=0.0,
        help="also run every scenario with the dense shifts lifted so Base's nDCG@10 on the real corpus size is this",
    )
    sim.add_argument(
        "--extrapolate", type=float, nargs="*", default=[], help="candidates past the measured ones"
    )
    sim.add_argument(
        "--sample-size", type=int, default=None, help="alpha_selection.sample_size (default: the config's)"
    )
    sim.add_argument("--name", default="all", help="output: results/alpha_pool_check-sim-<name>.{json,md}")
    a = ap.parse_args()
    if a.mode == "real":
        _main_real(a)
    elif a.mode == "runs":
        cal = calibrate_runs({f"{float(k):g}": Path(p) for k, p in a.run}, Path(a.qrels), a.corpus_size)
        out = RESULTS / "alpha_pool_check-calibration.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"source": "real runs", "note": a.note, "runs": a.run, "machine": _machine(),
                                   "calibration": cal}, indent=1))  # fmt: skip
        print(json.dumps(cal, indent=1))
    else:
        from alpha_pool_sim import main_simulate

        main_simulate(a, _machine())


if __name__ == "__main__":
    main()
