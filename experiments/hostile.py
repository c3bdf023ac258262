"""A hostile-input campaign against the pipeline: bad configs, bad data, damaged caches, kills, concurrency,
full disks, read-only folders, colliding results. Each case runs ``run.py`` as a user would and is judged:

- ``ok``: the right numbers (those of an undisturbed run), or one clear ``readaptir: error:`` line naming
  what to fix for input the user can fix;
- ``silently wrong``: ``status: done`` with numbers that are not the undisturbed run's, or for input that
  should have been refused;
- ``lost result``: a result stored earlier is gone or replaced;
- ``reused poisoned``: a damaged product was served instead of rebuilt;
- ``insecure``: something was written outside the data, cache/results and job folders (the ``input-*`` cases
  run in a sandbox and compare its tree before and after);
- ``traceback`` / ``unclear error`` / ``hang``: a failure the user cannot act on.

Tiny models on small BeIR-format sets cut from the toy data; CPU; about 15 minutes on 2 cores.
Cases that need root (a tmpfs for a full disk, read-only mounts) are skipped without it.

    python experiments/hostile.py              # all cases;  --only kill  runs one class
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_cases_inputs  # noqa: E402, F401
import hostile_cases_store  # noqa: E402, F401
from hostile_cases import CASES, Ctx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VERDICTS = ("ok", "silently wrong", "lost result", "reused poisoned", "insecure", "traceback", "unclear error", "hang")  # fmt: skip


def make_data(root: Path) -> Path:
    """scifact / nfcorpus / msmarco-shaped sets cut from the toy dataset shipped in the package."""
    toy = REPO / "readaptir" / "resources" / "toy"
    lines = (toy / "corpus.jsonl").read_text().splitlines()
    qrels = (toy / "qrels" / "test.tsv").read_text().splitlines()[1:]
    for name, part in {"scifact": lines[:120], "nfcorpus": lines[120:], "msmarco": lines[::2]}.items():
        d = root / name
        (d / "qrels").mkdir(parents=True)
        (d / "corpus.jsonl").write_text("\n".join(part) + "\n")
        shutil.copy(toy / "queries.jsonl", d / "queries.jsonl")
        ids = {json.loads(x)["_id"] for x in part}
        rows = [r for r in qrels if r.split("\t")[1] in ids]
        split = "dev" if name == "msmarco" else "test"
        (d / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run only the cases whose class or name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    ctx = Ctx(root=root, data=make_data(root / "data"), repo=REPO)
    cases = [c for c in CASES if a.only in c.cls or a.only in c.name]
    print(f"{len(cases)} cases in {root}; preparing the reference runs ...", flush=True)
    t_all = time.time()
    ctx.prepare()
    tally: Counter = Counter()
    by_class: dict[str, Counter] = {}
    for i, case in enumerate(cases, 1):
        t0 = time.time()
        try:
            verdict, detail = case.fn(ctx)
        except subprocess.TimeoutExpired:
            verdict, detail = "hang", "timed out"
        except Exception as e:  # noqa: BLE001 - the campaign reports, it does not stop
            verdict, detail = "unclear error", f"campaign error: {type(e).__name__}: {e}"
        tally[verdict] += 1
        by_class.setdefault(case.cls, Counter())[verdict] += 1
        print(f"[{i:2d}/{len(cases)}] {case.cls:<11} {case.name:<48} {verdict:<15} {time.time() - t0:5.1f}s  {detail}",
              flush=True)  # fmt: skip
    print(f"\n{len(cases)} cases in {time.time() - t_all:.0f} s")
    for cls, counts in by_class.items():
        print(f"  {cls:<11} " + ", ".join(f"{n} {v}" for v, n in counts.most_common()))
    print(
        "totals: "
        + ", ".join(f"{tally.get(v, 0)} {v}" for v in VERDICTS)
        + f", {tally.get('skipped', 0)} skipped"
    )
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if set(tally) <= {"ok", "skipped"} else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
