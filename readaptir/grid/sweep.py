"""A sweep that runs every cell: a failing cell is recorded, not raised; a summary and an exit code at the end.

``run.py`` calls :func:`run_job` for every Hydra job. A failing cell writes ``status: failed`` and the reason
into its job folder's ``results.json`` (:mod:`readaptir.grid.cell`); in a sweep (``-m``) the next cell then
runs, while a single run exits at once. Bad input (a config value, the data, a full disk, a read-only folder)
is one line naming what to fix; a bug also logs its traceback. Under ``accelerate launch``/torchrun a
failing rank exits at once, so the launcher stops the other ranks instead of leaving them at a collective.

At the end of a sweep :class:`SweepSummary` (a Hydra callback, ``conf/config.yaml``) reads the
``results.json`` files this sweep wrote, prints how many cells finished, failed, wait for another job's
build or were killed (still ``running``), and exits with 1 when a cell failed or was killed, 75
(EX_TEMPFAIL: run the sweep again later) when cells only wait, 0 otherwise.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from readaptir.config import ConfigError
from readaptir.errors import UserError
from readaptir.fs import atomic_write_json, storage_problem
from readaptir.grid.record import failure_reason
from readaptir.runtime import distributed
from readaptir.store.locks import ProductBusy

log = logging.getLogger(__name__)

EXIT_FAILED, EXIT_WAITING = 1, 75
SHOWN = 20  # failed/waiting cells listed by name in the summary


def _hydra_job() -> tuple[bool, Path | None, list[str]]:
    """(inside a multirun?, the job folder, the job's overrides), or (False, None, []) outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return hc.mode == RunMode.MULTIRUN, Path(hc.runtime.output_dir), list(hc.overrides.task)
    except Exception:  # noqa: BLE001 - not inside a Hydra app
        return False, None, []


def run_job(cfg: Any) -> str:
    """Run one Hydra job's cell; returns its status (a sweep goes on), or exits for a single run."""
    from readaptir.grid.cell import run

    multirun, job_dir, overrides = _hydra_job()
    try:
        record = run(cfg)
        return record.status if record is not None else "planned"
    except ProductBusy as e:
        status, code, line = "waiting", EXIT_WAITING, f"readaptir: waiting: {e}"
    except Exception as e:
        if not isinstance(e, UserError) and storage_problem(e) is None:
            log.exception("cell failed")  # a bug, not bad input: its traceback belongs in the job log
        status, code, line = "failed", EXIT_FAILED, f"readaptir: error: {failure_reason(e)}"
        if isinstance(e, ConfigError) and job_dir is not None:  # refused before a record existed
            atomic_write_json(job_dir / "results.json", {"status": "failed", "reason": str(e),
                                                         "overrides": overrides, "finished": time.time()})  # fmt: skip
    print(line, file=sys.stderr, flush=True)
    if distributed() or not multirun:
        sys.exit(code)
    return status


def end_line(job_dir: Path) -> str:
    """A cell's end line from its job folder's ``results.json``: status, nDCG@10 (base → readapted), or why."""
    try:
        rec = json.loads((job_dir / "results.json").read_text())
    except (OSError, ValueError):
        return f"no readable results.json in {job_dir}"
    status, metric = str(rec.get("status", "unknown")), "NDCG@10"
    base, ra = (rec.get(k) or {} for k in ("base", "readapted"))
    if status == "done" and metric in base:
        scores = f"{metric} {base[metric]:.4f}" + (f" → {ra[metric]:.4f}" if metric in ra else "")
        return f"done, {scores} ({job_dir})"
    reason = rec.get("reason") or ""
    return f"{status}{', ' + reason if reason else ''} ({job_dir})"


def summarize(sweep_dir: Path, since: float = 0.0) -> tuple[str, int]:
    """The summary of the ``results.json`` files written under ``sweep_dir`` since ``since``, and the exit code."""
    cells: list[tuple[str, str, str]] = []
    for path in sorted(sweep_dir.rglob("results.json")):
        if path.stat().st_mtime < since:
            continue  # an earlier sweep's job in the same folder
        try:
            rec = json.loads(path.read_text())
            status, reason = str(rec.get("status", "unknown")), str(rec.get("reason", ""))
        except (OSError, ValueError, AttributeError):
            status, reason = "unreadable", "results.json is not readable JSON"
        if status == "running":
            status, reason = "killed", "still 'running': the job was killed or crashed; run it again"
        cells.append((status, str(path.parent.relative_to(sweep_dir)), reason))
    if not cells:
        return "", 0  # a plan-mode sweep writes no results.json
    counts = Counter(s for s, _, _ in cells)
    lines = [f"readaptir: sweep {sweep_dir}: {len(cells)} cells: "
             + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))]  # fmt: skip
    bad = [c for c in cells if c[0] not in ("done", "not_applicable")]
    lines += [f"  {s:<8} {where}: {reason}" for s, where, reason in bad[:SHOWN]]
    if len(bad) > SHOWN:
        lines.append(f"  … and {len(bad) - SHOWN} more (see their results.json)")
    if any(s in ("failed", "killed", "unreadable", "unknown") for s, _, _ in bad):
        return "\n".join(lines), EXIT_FAILED
    return "\n".join(lines), EXIT_WAITING if bad else 0


class SweepSummary(Callback):
    """Hydra callback: after the last job of a sweep, the summary and a non-zero exit if a cell failed."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # mtimes have 1 s resolution on some filesystems

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        text, code = summarize(Path(config.hydra.sweep.dir), self.started)
        if text:
            print(text, file=sys.stderr, flush=True)
        if code:
            sys.exit(code)


@contextmanager
def command_errors() -> Iterator[None]:
    """A subcommand's bad input as one ``readaptir: error:`` line and exit 1 (a bug keeps its traceback)."""
    try:
        yield
    except Exception as e:
        if not isinstance(e, UserError) and storage_problem(e) is None:
            raise
        print(f"readaptir: error: {failure_reason(e)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_FAILED)
