"""Content-addressed artifacts: every expensive product lives at a path derived from what determines it.

A key hashes exactly the config that determines a product plus its parents' keys (the idea of the
``datasets`` fingerprint), so a second run of a sweep finds every finished product and recomputes
nothing, and a changed recipe can never be served a stale adapter. Products are built in a temporary
folder beside their final place, renamed into place, then marked done (``.done`` holds the key's
inputs for humans). A file lock makes a second job that wants the same product wait for the first
instead of building it twice. Hydra sweep folders are not a cache; this store is.

    store = ArtifactStore("cache")
    key = make_key("adapter", {"corpus": "scifact", "r": 32}, parents=[tokens_key])
    path = store.build("adapter", key, lambda tmp: train_into(tmp))   # or reuses the finished copy
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from readaptir.fs import temp_sibling
from readaptir.runtime import dist_state, distributed, is_main

log = logging.getLogger(__name__)

DONE = ".done"


def canonical(obj: Any) -> Any:
    """JSON-ready form with sorted mapping keys, so equal configs hash equally (OmegaConf nodes too)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # 2e-4 vs 0.0002 hash alike already; 1.0 vs 1 should too
    return obj


def make_key(kind: str, config: Mapping[str, Any], parents: Sequence[str] = ()) -> str:
    """``<kind>-<16 hex>``: sha256 over the kind, the canonical config and the parents' keys."""
    payload = json.dumps(
        {"kind": kind, "config": canonical(config), "parents": list(parents)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


@dataclass
class ArtifactStore:
    """A folder of finished products, ``<root>/<kind>/<key>/``, each with a ``.done`` mark."""

    root: Path
    events: list[dict] = field(default_factory=list)  # what this process built or reused, in order

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()

    def path(self, key: str) -> Path:
        return self.root / key.split("-", 1)[0] / key

    def work_dir(self, key: str) -> Path:
        """A stable scratch folder for a product being built (checkpoints survive a killed job here)."""
        return self.root / "work" / key

    def is_done(self, key: str) -> bool:
        return (self.path(key) / DONE).is_file()

    def missing(self, key: str) -> bool:
        """Not finished yet, as the main process sees it: every rank of a launch takes the same branch."""
        if not distributed():
            return not self.is_done(key)
        import torch.distributed as dist

        dist_state()
        decision = [not self.is_done(key) if is_main() else None]
        dist.broadcast_object_list(decision, src=0)
        return bool(decision[0])

    def discard_work(self, key: str) -> None:
        """Remove a product's scratch folder (training checkpoints) once the product is published."""
        if is_main():
            shutil.rmtree(self.work_dir(key), ignore_errors=True)

    @contextmanager
    def lock(self, key: str):
        """Exclusive inter-process lock on one key (blocks while another job holds it)."""
        lock_path = self.root / "locks" / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("Waiting for another job building %s", key)
                t0 = time.time()
                fcntl.flock(fh, fcntl.LOCK_EX)
                log.info("Lock on %s acquired after %.0fs", key, time.time() - t0)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def build(
        self, kind: str, key: str, fn: Callable[[Path], Any], meta: Mapping[str, Any] | None = None
    ) -> Path:
        """Return the finished product for ``key``, running ``fn(tmp_dir)`` to make it if needed.

        ``fn`` writes everything into ``tmp_dir``; the folder is renamed into place only after ``fn``
        returns, so a crash leaves no half-written product (the temp folder is removed on error).
        """
        final = self.path(key)
        if self.is_done(key):
            self._record(kind, key, reused=True)
            return final
        with self.lock(key):
            if self.is_done(key):  # built by another job while we waited
                self._record(kind, key, reused=True)
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_sibling(final)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            t0 = time.time()
            try:
                fn(tmp)
                self._publish(kind, key, tmp, meta, t0)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return final

    def build_collective(
        self,
        kind: str,
        key: str,
        fn: Callable[[Path], Any],
        meta: Mapping[str, Any] | None = None,
        prepare: Callable[[Path], Any] | None = None,
        finish: Callable[[Path], Any] | None = None,
    ) -> Path:
        """:meth:`build` for a product that every rank of an ``accelerate launch`` must help make.

        DDP training and sharded encoding need all ranks inside ``fn`` at once, so the ranks cannot take
        turns on the lock. Rank 0 holds the key's lock for the whole build (another job wanting the same
        product waits, then reuses it), decides whether to build and broadcasts that decision (ranks never
        disagree about a product finishing meanwhile); ``prepare`` runs on rank 0 first, then ``fn`` on
        every rank in a shared temporary folder, then ``finish`` on rank 0, which publishes the folder.
        In a single process this is :meth:`build` of prepare → fn → finish.
        """

        def whole(tmp: Path) -> None:
            for step in (prepare, fn, finish):
                if step is not None:
                    step(tmp)

        if not distributed():
            return self.build(kind, key, whole, meta)
        import torch.distributed as dist

        state = dist_state()
        final = self.path(key)
        main = state.is_main_process
        with self.lock(key) if main else nullcontext():
            decision = [self.is_done(key) if main else None]
            dist.broadcast_object_list(decision, src=0)
            if decision[0]:
                self._record(kind, key, reused=True)
                return final
            tmp = final.parent / f".tmp-{key}-collective"  # one name all ranks agree on
            t0 = time.time()
            if main:
                shutil.rmtree(tmp, ignore_errors=True)  # a killed job's leftover; we hold the lock
                tmp.mkdir(parents=True)
                if prepare is not None:
                    prepare(tmp)
            state.wait_for_everyone()
            fn(tmp)
            state.wait_for_everyone()
            if main:
                if finish is not None:
                    finish(tmp)
                self._publish(kind, key, tmp, meta, t0)
            state.wait_for_everyone()
        return final

    def _publish(self, kind: str, key: str, tmp: Path, meta: Mapping[str, Any] | None, t0: float) -> None:
        final = self.path(key)
        with open(tmp / DONE, "w") as f:
            json.dump({"key": key, "kind": kind, "meta": canonical(meta or {}),
                       "seconds": round(time.time() - t0, 3), "finished": time.time()}, f, indent=1)  # fmt: skip
        if final.exists():  # an unfinished leftover without .done
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._record(kind, key, reused=False, seconds=time.time() - t0)

    def _record(self, kind: str, key: str, reused: bool, seconds: float = 0.0) -> None:
        log.info("%s %s artifact %s", "Reused" if reused else "Built", kind, key)
        self.events.append({"kind": kind, "key": key, "reused": reused, "seconds": round(seconds, 3)})
