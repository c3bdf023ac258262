"""Experiment tracking: a small Weights & Biases wrapper that can never break a run.

Training and the cell pipeline log through :class:`Tracker`. Tracking is a convenience, the artifacts
on disk are the results, so any exception raised by wandb (no network, a full disk, a server error,
an API change) is caught, logged once as a warning, and the tracker becomes a no-op for the rest of
the run.

Backends (``tracking.backend``): ``auto`` = W&B when the ``wandb`` package is installed (the ``wandb``
extra), else none; ``wandb`` requires it; ``none``. Modes (``tracking.mode`` in ``conf/config.yaml``): ``auto``
leaves the choice to wandb as it documents it (``WANDB_MODE``, then the credentials of ``wandb login`` or
``WANDB_API_KEY``: online); ``online``, ``offline`` and ``disabled`` force one. Where wandb finds no
credentials (or no network) the run is kept offline instead (``wandb sync <dir>/wandb/offline-run-*``
uploads it later); a disabled mode writes nothing at all.

One run per result: the caller passes a ``run_id`` derived from the product's key (the cell's result key), so
a rerun resumes the same run instead of adding one, and an offline run already written for that id is not
written twice.

    tracker = start_tracker(cfg.tracking, {"model": "repllama", "dataset": "scifact"}, name="...",
                            group="table1", job_type="train")
    tracker.log({"train/loss": 2.1}, step=10)
    tracker.finish()
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from readaptir.config import TrackingSettings, typed
from readaptir.errors import UserError

log = logging.getLogger(__name__)

# Keep wandb's console chatter (banners, sync hints, system-metrics threads) out of logs and tests.
_QUIET_ENV = {
    "WANDB_SILENT": "true",
    "WANDB_CONSOLE": "off",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_DISABLE_CODE": "true",
}


def resolve_mode(mode: str | None) -> str | None:
    """The mode to hand to ``wandb.init``: ``None`` for ``auto`` (wandb reads ``WANDB_MODE`` and its login),
    else the forced one."""
    mode = (mode or "auto").lower()
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"tracking.mode={mode!r}: use auto, online, offline or disabled")
    return None if mode == "auto" else mode


def disabled(mode: str | None) -> bool:
    """Whether this run must write nothing: ``tracking.mode=disabled``, or, under ``auto``, wandb's own
    ``WANDB_MODE=disabled`` (and its older spelling ``WANDB_DISABLED=true``)."""
    forced = resolve_mode(mode)
    if forced is not None:
        return forced == "disabled"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    return env == "disabled" or os.environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes")


def run_id(key: str) -> str:
    """A W&B run id from a product key (``result-<16 hex>`` → ``result-<16 hex>``): ids allow letters,
    digits, ``-`` and ``_`` only, so anything else becomes ``-``."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", key)[:64]


class Tracker:
    """W&B run wrapper: start / log / summary / table / finish, every call exception-safe.

    ``Tracker(enabled=False)`` (what ``tracking.backend=none`` gives) accepts every call and does nothing.
    """

    def __init__(
        self,
        enabled: bool = True,
        project: str = "readaptir",
        entity: str | None = None,
        mode: str = "auto",
        dir: str | os.PathLike | None = None,
    ) -> None:
        self.enabled = enabled
        self.project = project
        self.entity = entity
        self.mode = mode
        self.dir = Path(dir) if dir is not None else None
        self.run: Any = None
        self._failed = False

    @property
    def active(self) -> bool:
        return self.enabled and not self._failed and self.run is not None

    def _fail(self, what: str, exc: BaseException) -> None:
        if not self._failed:
            log.warning(
                "W&B %s failed (%s: %s); tracking is off for the rest of this run",
                what,
                exc.__class__.__name__,
                exc,
            )
        self._failed = True
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001 - already failing; never let tracking raise
                pass

    def start(
        self,
        config: Mapping[str, Any],
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: Sequence[str] | None = None,
        run_id: str | None = None,
        once: bool = False,
    ) -> Tracker:
        """Open the run with a flat ``config`` dict (cell coordinates, recipe). Returns self.

        ``run_id`` (see :func:`run_id`) makes the run one per product: W&B resumes it on a rerun. With
        ``once`` (the product is finished already), an offline run of that id already in ``dir`` is not
        written again: the tracker stays off."""
        if not self.enabled or self._failed:
            return self
        if disabled(self.mode):  # nothing at all: no folder, no run files
            self.enabled = False
            return self
        if once and run_id is not None and self._offline_copy(run_id) is not None:
            log.info("W&B run %s is already written offline in %s; not logging it again",
                     run_id, self._offline_copy(run_id))  # fmt: skip
            self.enabled = False
            return self
        for k, v in _QUIET_ENV.items():
            os.environ.setdefault(k, v)
        try:
            import wandb

            mode = resolve_mode(self.mode)
            if self.dir is not None:
                self.dir.mkdir(parents=True, exist_ok=True)
            kwargs = dict(
                project=self.project,
                entity=self.entity,
                name=name,
                group=group,
                job_type=job_type,
                tags=[t[:64] for t in tags] if tags else None,
                config=dict(config),
                dir=str(self.dir) if self.dir is not None else None,
                reinit="create_new",
                id=run_id,
                resume="allow" if run_id is not None else None,
            )
            settings = dict(
                silent=True,
                console="off",
                disable_git=True,
                save_code=False,
                x_disable_stats=True,
                init_timeout=60,
            )
            try:
                self.run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **kwargs)
            except Exception as e:  # noqa: BLE001
                if mode == "offline":
                    raise
                # No credentials, no network, a bad key: keep the run locally instead of losing it.
                log.warning("W&B online start failed (%s); logging offline instead", " ".join(str(e).split()))
                kwargs["resume"] = None  # offline runs are merged by id when synced
                self.run = wandb.init(mode="offline", settings=wandb.Settings(**settings), **kwargs)
            where = self.dir or "./wandb"
            log.info("W&B run %s (%s) in %s", getattr(self.run, "id", "?"), _run_mode(self.run), where)
        except Exception as e:  # noqa: BLE001
            self._fail("start", e)
        return self

    def _offline_copy(self, run_id: str) -> Path | None:
        """An offline run folder of ``run_id`` already under ``dir`` (W&B names them ``offline-run-<time>-<id>``)."""
        root = (self.dir if self.dir is not None else Path.cwd()) / "wandb"
        return next(iter(sorted(root.glob(f"offline-run-*-{run_id}"))), None)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self.active:
            return
        try:
            self.run.log(dict(metrics), step=step)
        except Exception as e:  # noqa: BLE001
            self._fail("log", e)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run-level results (final loss, nDCG@10, ...) shown in the W&B runs table."""
        if not self.active:
            return
        try:
            for k, v in values.items():
                self.run.summary[k] = v
        except Exception as e:  # noqa: BLE001
            self._fail("summary", e)

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not self.active:
            return
        try:
            import wandb

            self.run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})
        except Exception as e:  # noqa: BLE001
            self._fail("table", e)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; a non-zero ``exit_code`` marks it failed in W&B."""
        if not self.active:
            return
        run, self.run = self.run, None
        try:
            run.finish(exit_code=exit_code)
        except Exception as e:  # noqa: BLE001
            self._fail("finish", e)


def _run_mode(run: Any) -> str:
    try:
        return "offline" if run.settings._offline else "online"
    except Exception:  # noqa: BLE001 - only for the log line
        return "?"


def start_tracker(
    settings: TrackingSettings | Mapping[str, Any] | None,
    config: Mapping[str, Any],
    name: str,
    group: str | None,
    job_type: str,
    tags: Sequence[str] | None = None,
    run_id: str | None = None,
    once: bool = False,
) -> Tracker:
    """Build and start a :class:`Tracker` from the ``tracking:`` settings (backend auto | wandb | none)."""
    s = typed(TrackingSettings, settings if settings is not None else {"backend": "none"})
    installed = importlib.util.find_spec("wandb") is not None
    if s.backend == "wandb" and not installed:
        raise UserError(
            "tracking.backend=wandb needs the wandb package: pip install 'readaptir[wandb]' "
            "(or tracking.backend=auto, which tracks only when it is installed)"
        )
    enabled = s.backend == "wandb" or (s.backend == "auto" and installed)
    tracker = Tracker(enabled=enabled, project=s.project, entity=s.entity, mode=s.mode, dir=s.dir)
    return tracker.start(
        config, name=name, group=group, job_type=job_type, tags=tags, run_id=run_id, once=once
    )
