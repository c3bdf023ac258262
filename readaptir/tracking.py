"""Experiment tracking: a small Weights & Biases wrapper that can never break a run.

Training and the cell pipeline log through :class:`Tracker`. Tracking is a convenience, the artifacts
on disk are the results, so any exception raised by wandb (no network, a full disk, a server error,
an API change) is caught, logged once as a warning, and the tracker becomes a no-op for the rest of
the run.

Backends (``tracking.backend``): ``auto`` = W&B when the ``wandb`` package is installed (the ``wandb``
extra), else none; ``wandb`` requires it; ``none``. Modes (``tracking.mode`` in ``conf/config.yaml``): ``auto`` = online when ``WANDB_API_KEY`` is set,
else offline (runs are written under ``tracking.dir`` and can be uploaded later with
``wandb sync <dir>/wandb/offline-run-*``); ``online``; ``offline``. An online start that fails (no network) falls back to offline once.

    tracker = start_tracker(cfg.tracking, {"model": "repllama", "dataset": "scifact"}, name="...",
                            group="table1", job_type="train")
    tracker.log({"train/loss": 2.1}, step=10)
    tracker.finish()
"""

from __future__ import annotations

import importlib.util
import logging
import os
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


def resolve_mode(mode: str | None) -> str:
    """``auto`` → online when WANDB_API_KEY is set, else offline; online/offline/disabled pass through."""
    mode = (mode or "auto").lower()
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"tracking.mode={mode!r}: use auto, online, offline or disabled")
    return mode


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
    ) -> Tracker:
        """Open the run with a flat ``config`` dict (cell coordinates, recipe). Returns self."""
        if not self.enabled or self._failed:
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
                tags=list(tags) if tags else None,
                config=dict(config),
                dir=str(self.dir) if self.dir is not None else None,
                reinit="create_new",
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
                if mode != "online":
                    raise
                # No network / bad key: keep the run locally instead of losing it.
                log.warning("W&B online start failed (%s); logging offline instead", e)
                self.run = wandb.init(mode="offline", settings=wandb.Settings(**settings), **kwargs)
            log.info("W&B run %s (%s) in %s", getattr(self.run, "id", "?"), mode, self.dir or "./wandb")
        except Exception as e:  # noqa: BLE001
            self._fail("start", e)
        return self

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

    def finish(self) -> None:
        if not self.active:
            return
        run, self.run = self.run, None
        try:
            run.finish()
        except Exception as e:  # noqa: BLE001
            self._fail("finish", e)


def start_tracker(
    settings: TrackingSettings | Mapping[str, Any] | None,
    config: Mapping[str, Any],
    name: str,
    group: str | None,
    job_type: str,
    tags: Sequence[str] | None = None,
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
    return tracker.start(config, name=name, group=group, job_type=job_type, tags=tags)
