"""The score-level simulation of ``alpha_pool_check.py simulate`` (model in that script's docstring).

Per simulated query, non-relevant passages get a base score z0, a BM25 score ρ_b·z0 + √(1−ρ_b²)·f and, per
candidate α, ρ_α·z0 + √(1−ρ_α²)·e (one shared e: the candidates lie on one line, as W(α) does); relevant
passages the same with the calibrated shift μ added. Non-relevant scores are drawn once per query and shared by
both scenarios; only the relevant passages differ.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

from readaptir.config import AlphaSelection
from readaptir.fs import atomic_write, atomic_write_json
from readaptir.grid.alpha import choose, estimated_ndcg, idcg

RESULTS = Path(__file__).resolve().parent / "results"


def scenarios(cal: dict) -> dict[str, dict[str, float]]:
    """``calibrated``: the measured shifts; ``hurts``: each α's gap to α = 0 mirrored (worse by as much)."""
    mu = cal["mu"]
    alphas = [k for k in mu if k != "bm25"]
    hurts = {k: 2 * mu["0"] - mu[k] for k in alphas}
    return {"calibrated": dict(mu), "hurts": {**hurts, "bm25": mu["bm25"]}}


def _top(x: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(x))
    idx = np.argpartition(-x, k - 1)[:k]
    return idx[np.argsort(-x[idx])]


def simulate_query(
    rng, n: int, cal: dict, mus: dict, s: AlphaSelection, others: int
) -> dict:  # size: one query, all scenarios
    """Per scenario, per α: (full, new pool, old pool) nDCG@10 of one simulated query on ``n`` passages."""
    alphas = [k for k in cal["rho"] if k != "bm25"]
    n_rel = max(1, int(rng.choice(cal["n_rel"])))
    m = n - n_rel
    z0, e, f = (rng.standard_normal(m, dtype=np.float32) for _ in range(3))
    rb = cal["rho"]["bm25"]
    bm = rb * z0 + np.float32(np.sqrt(1 - rb * rb)) * f
    del f
    non = {}
    for a in alphas:  # non-relevant: the top 10 (the whole corpus's ranking) per α
        r = cal["rho"][a]
        za = z0 if a == "0" else r * z0 + np.float32(np.sqrt(max(1 - r * r, 0.0))) * e
        non[a] = np.sort(za[_top(za, 10)])[::-1]
    base_top, bm_top = _top(z0, s.pool_depth), _top(bm, s.pool_depth)
    own = np.union1d(base_top, bm_top)
    rest = np.setdiff1d(rng.choice(m, size=min(m, others + s.sample_size + len(own)), replace=False), own)
    other, sample = rest[:others], rest[others : others + s.sample_size]
    pool = np.concatenate([own, other])
    scale = (n - n_rel - len(pool)) / max(len(sample), 1)  # relevant passages never fall outside unseen
    u0, u1, u2 = (rng.standard_normal(n_rel) for _ in range(3))
    ideal = idcg({str(i): 1 for i in range(n_rel)})
    delta = norm.isf(1 / n) - norm.isf(1 / cal["n_real"])
    out = {}
    for name, mu in mus.items():
        rel0 = mu["0"] + delta + u0
        relb = mu["bm25"] + delta + rb * u0 + np.sqrt(1 - rb * rb) * u2
        # A relevant passage is in the new pool when it reaches the base's or BM25's top pool_depth.
        in_pool = (rel0 > z0[base_top[-1]]) | (relb > bm[bm_top[-1]])
        res = {}
        for a in alphas:
            r = cal["rho"][a]
            c = np.sqrt(max(1 - r * r, 0.0))
            rel = mu[a] + delta + r * u0 + c * u1
            ranks = 1 + np.array([np.sum(non[a] > x) + np.sum(rel > x) for x in rel])
            full = float(np.sum(1 / np.log2(ranks[ranks <= 10] + 1)) / ideal)
            ps, ss = (z0[i] if a == "0" else r * z0[i] + c * e[i] for i in (pool, sample))
            ps, ss = ps.astype(np.float64), ss.astype(np.float64)
            g = np.zeros(len(pool))
            new = estimated_ndcg(np.concatenate([ps, rel[in_pool]]), np.concatenate([g, np.ones(in_pool.sum())]),
                                 ss, scale, ideal)  # fmt: skip
            old = estimated_ndcg(np.concatenate([ps, rel]), np.concatenate([g, np.ones(n_rel)]),
                                 np.array([]), 0.0, ideal)  # fmt: skip
            res[a] = (full, new, old)
        out[name] = res
    return out


def run_size(n: int, cal: dict, s: AlphaSelection, folds: int, queries: int, seed: int) -> list[dict]:
    """Per scenario and fold: the three choices and the whole-corpus nDCG@10 the pool and old choices lose."""
    from tqdm import tqdm

    mus = scenarios(cal)
    rng = np.random.default_rng([seed, n])
    per_q = []
    for _ in tqdm(range(folds * queries), desc=f"simulate N={n:,}", unit="q"):
        own_guess = 2 * s.pool_depth  # other queries' pools: about two top-k lists each
        per_q.append(simulate_query(rng, n, cal, mus, s, min(n // 2, (queries - 1) * own_guess)))
    rows = []
    for name in mus:
        for f in range(folds):
            qs = per_q[f * queries : (f + 1) * queries]
            mean = [
                {float(a): float(np.mean([q[name][a][i] for q in qs])) for a in qs[0][name]} for i in range(3)
            ]
            fc, nc, oc = (choose(x) for x in mean)
            rows.append({"scenario": name, "corpus": n, "fold": f, "full_choice": fc, "pool_choice": nc,
                         "old_choice": oc, "lost": mean[0][fc] - mean[0][nc], "old_lost": mean[0][fc] - mean[0][oc],
                         "full": _g(mean[0]), "pool_scores": _g(mean[1]), "old_scores": _g(mean[2])})  # fmt: skip
    return rows


def _g(d: dict) -> dict:
    return {f"{a:g}": round(v, 5) for a, v in d.items()}


def main_simulate(a, machine: dict) -> None:
    cal = json.loads(Path(a.calibration).read_text())["calibration"]
    s = AlphaSelection()
    t0, rows = time.time(), []
    for n in a.sizes:
        rows += run_size(n, cal, s, a.folds, a.queries, s.seed)
    report = {"source": "simulated", "calibration_from": Path(a.calibration).name, "calibration": cal,
              "settings": s.model_dump(), "folds": a.folds, "queries_per_fold": a.queries,
              "seconds": round(time.time() - t0, 1), "machine": machine, "rows": rows}  # fmt: skip
    atomic_write_json(RESULTS / "alpha_pool_check-sim.json", report)
    lines = ["| scenario | corpus | fold | full α | pool α | old α | pool loses | old loses |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {r['scenario']} | {r['corpus']:,} | {r['fold']} | {r['full_choice']:g} | {r['pool_choice']:g} | "
              f"{r['old_choice']:g} | {r['lost']:.4f} | {r['old_lost']:.4f} |" for r in rows]  # fmt: skip
    atomic_write(RESULTS / "alpha_pool_check-sim.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
