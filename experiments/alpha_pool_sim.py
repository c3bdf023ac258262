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


def scenarios(cal: dict, lift: float) -> dict[str, dict[str, float]]:
    """``calibrated``: the measured shifts; ``hurts``: each α's gap to α = 0 mirrored (worse by as much);
    ``+lift``: every α's shift raised by ``lift`` (a stronger base retriever, the α-to-α gaps kept)."""
    mu = cal["mu"]
    alphas = [k for k in mu if k != "bm25"]
    hurts = {**{k: 2 * mu["0"] - mu[k] for k in alphas}, "bm25": mu["bm25"]}
    out = {"calibrated": dict(mu), "hurts": hurts}
    if lift:
        out |= {
            f"{k}+lift": {a: v + (lift if a != "bm25" else 0.0) for a, v in m.items()} for k, m in out.items()
        }
    return out


def lift_for(cal: dict, target: float, seed: int = 0, queries: int = 400) -> float:
    """The shift that brings the base retriever's simulated nDCG@10 on ``n_real`` passages to ``target``."""
    rng = np.random.default_rng([seed, 17])
    n = cal["n_real"]
    draws = [
        (max(1, int(rng.choice(cal["n_rel"]))), rng.standard_normal(n), rng.standard_normal(8))
        for _ in range(queries)
    ]

    def ndcg(lift: float) -> float:
        vals = []
        for k, non, u in draws:
            rel = cal["mu"]["0"] + lift + u[:k]
            ranks = 1 + np.array([np.sum(non[k:] > x) + np.sum(rel > x) for x in rel])
            ideal = idcg({str(i): 1 for i in range(k)})
            vals.append(np.sum(1 / np.log2(ranks[ranks <= 10] + 1)) / ideal)
        return float(np.mean(vals))

    lo, hi = -3.0, 8.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ndcg(mid) < target else (lo, mid)
    return (lo + hi) / 2


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


def run_size(
    n: int, cal: dict, s: AlphaSelection, folds: int, queries: int, seed: int, lift: float
) -> list[dict]:
    """Per scenario and fold: the three choices and the whole-corpus nDCG@10 the pool and old choices lose."""
    try:
        from tqdm import tqdm
    except ImportError:  # the simulation needs only numpy and scipy

        def tqdm(it, **_):
            return it

    mus = scenarios(cal, lift)
    if lift:  # the calibrated retriever's own level is near 0 at every size: only the lifted ones inform
        mus = {k: v for k, v in mus.items() if k.endswith("+lift")}
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


def complete(cal: dict, extrapolate: list[float]) -> list[str]:
    """Fill in what the calibration lacks, saying so: BM25 (ρ = 0.3, μ as α = 0's) and candidates past the
    measured ones, extrapolated along the line (the score rotation angle and the shift linear in α)."""
    notes = []
    if "bm25" not in cal["rho"]:
        cal["rho"]["bm25"], cal["mu"]["bm25"] = 0.3, cal["mu"]["0"]
        notes.append("bm25: rho 0.3 and mu = mu(0) assumed (no BM25 scores in the calibration)")
    measured = sorted(float(k) for k in cal["rho"] if k != "bm25")
    a1 = measured[-1]
    theta = np.arccos(np.clip(cal["rho"][f"{a1:g}"], -1, 1)) / a1
    slope = (cal["mu"][f"{a1:g}"] - cal["mu"]["0"]) / a1
    for x in extrapolate:
        cal["rho"][f"{x:g}"] = float(np.cos(theta * x))
        cal["mu"][f"{x:g}"] = float(cal["mu"]["0"] + slope * x)
        notes.append(
            f"alpha {x:g}: extrapolated from alpha {a1:g} (rotation angle and shift linear in alpha)"
        )
    return notes


def main_simulate(a, machine: dict) -> None:
    cal = json.loads(Path(a.calibration).read_text())["calibration"]
    assumed = complete(cal, a.extrapolate)
    s = AlphaSelection(sample_size=a.sample_size) if a.sample_size is not None else AlphaSelection()
    t0, rows = time.time(), []
    lift = lift_for(cal, a.base_ndcg) if a.base_ndcg else 0.0
    for n in a.sizes:
        rows += run_size(n, cal, s, a.folds, a.queries, s.seed, lift)
    report = {"source": "simulated", "calibration_from": Path(a.calibration).name, "calibration": cal, "assumed": assumed,
              "lift": {"base_ndcg_at_n_real": a.base_ndcg, "shift": lift},
              "settings": s.model_dump(), "folds": a.folds, "queries_per_fold": a.queries,
              "seconds": round(time.time() - t0, 1), "machine": machine, "rows": rows}  # fmt: skip
    atomic_write_json(RESULTS / f"alpha_pool_check-sim-{a.name}.json", report)
    lines = ["| scenario | corpus | fold | full α | pool α | old α | pool loses | old loses |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {r['scenario']} | {r['corpus']:,} | {r['fold']} | {r['full_choice']:g} | {r['pool_choice']:g} | "
              f"{r['old_choice']:g} | {r['lost']:.4f} | {r['old_lost']:.4f} |" for r in rows]  # fmt: skip
    lines += ["", "| scenario | corpus | pool = full (folds) | mean / max lost | old = full | old mean / max lost |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for key in dict.fromkeys((r["scenario"], r["corpus"]) for r in rows):
        g = [r for r in rows if (r["scenario"], r["corpus"]) == key]
        agree = sum(r["pool_choice"] == r["full_choice"] for r in g)
        old = sum(r["old_choice"] == r["full_choice"] for r in g)
        lost, olost = [r["lost"] for r in g], [r["old_lost"] for r in g]
        lines.append(f"| {key[0]} | {key[1]:,} | {agree}/{len(g)} | {np.mean(lost):.4f} / {max(lost):.4f} | "
                     f"{old}/{len(g)} | {np.mean(olost):.4f} / {max(olost):.4f} |")  # fmt: skip
    atomic_write(RESULTS / f"alpha_pool_check-sim-{a.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
