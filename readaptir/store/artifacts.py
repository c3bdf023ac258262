"""Content-addressed artifacts: every expensive product lives at a path derived from what determines it.

A key hashes exactly the config that determines a product plus its parents' keys (the idea of the
``datasets`` fingerprint), so a second run of a sweep finds every finished product and recomputes
nothing, and a changed recipe can never be served a stale adapter. Hydra sweep folders are not a cache;
this store is.

A product is built in a temporary folder beside its final place (named with host, PID namespace and pid,
so a later run in the same namespace removes a killed job's leftovers); its ``.done`` record goes in last
and the folder is renamed into place. ``.done`` holds its own key and kind, the manifest
(:mod:`readaptir.store.manifest`: each file's size and block digests, a build id) and the build ids of the
parents it was made from. A product whose record names another key (a folder copied under a key not its
own), whose files changed, or whose parent was rebuilt since, is rebuilt with one warning line, and so is
everything made from it. The files the keys were computed from are checked again before anything is
published (:func:`readaptir.store.identity.changed_input`): one that changed meanwhile fails the build
with one line naming it. Build locks (:mod:`readaptir.store.locks`, NFS-safe) make a second job wait.

    store = ArtifactStore("cache")
    key = make_key("adapter", {"corpus": "scifact", "r": 32}, parents=[tokens_key])
    path = store.build("adapter", key, lambda tmp: train_into(tmp))   # or reuses the finished copy
"""

# size: one class holds the whole publish protocol (reuse checks, locks, temp folders, .done); split, it would scatter.
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from readaptir.fs import HOST, cleaned_on_error, remove_dead_temps, remove_path, temp_sibling
from readaptir.runtime import dist_state, distributed, is_main
from readaptir.store.identity import InputChanged, changed_input
from readaptir.store.locks import BuildLock, OnBusy, ProductBusy
from readaptir.store.manifest import LINEAGE, Mode, lineage_problem, make_manifest, verify_manifest

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
    """A folder of finished products, ``<root>/<kind>/<key>/``, each with a ``.done`` manifest."""

    root: Path
    verify: Mode = "auto"  # what reuse checks: see readaptir.store.manifest
    full_check_max_gb: float = 4.0  # auto: full content check up to this size per artifact, sampled above
    lock_stale_s: float = 600.0  # a build lock nobody refreshed for this long belongs to a dead node
    on_busy: OnBusy = "wait"  # a product being built by another live job: wait for it, or ProductBusy
    events: list[dict] = field(default_factory=list)  # what this process built or reused, in order
    # key -> keys of the stored products it is made from (a cell's graph, grid/keys.py); their build ids
    # go into its manifest, so that rebuilding a parent invalidates everything made from the old one.
    parents: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # every file the keys were computed from (identity.watched_inputs), checked again before each publish
    inputs: dict[str, tuple[tuple, str]] = field(default_factory=dict)
    _checked: dict[tuple[str, str], str | None] = field(default_factory=dict, repr=False)
    _warned: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()

    def path(self, key: str) -> Path:
        return self.root / key.split("-", 1)[0] / key

    def work_dir(self, key: str) -> Path:  # stable scratch for a product being built (checkpoints)
        return self.root / "work" / key

    def is_done(self, key: str) -> bool:  # published; whether intact is valid()'s question
        return (self.path(key) / DONE).is_file()

    def record(self, key: str) -> dict[str, Any] | None:
        """The product's ``.done`` record (manifest, parents, meta), or None."""
        try:
            done = json.loads((self.path(key) / DONE).read_text())
        except (OSError, ValueError):
            return None
        return done if isinstance(done, dict) else None

    def problem(self, key: str) -> str | None:
        """Why the published product at ``key`` cannot be reused, or None when it can."""
        done = self.record(key)
        if done is None:
            return "its .done record is unreadable"
        if done.get("key") != key:
            return f"its .done record belongs to {done.get('key')} (a folder copied under another key)"
        manifest = done.get("manifest") or {}  # none: made by an older version (verify_manifest says so)
        if not isinstance(manifest, dict) or not isinstance(done.get("parents") or {}, dict):
            return "its .done record is malformed (manifest or parents of the wrong shape)"
        seen = (key, str(manifest.get("build")))
        try:  # a damaged record of the right JSON shape, or a file that cannot be read (a dangling link)
            if seen not in self._checked:  # the content check reads the files: once per process and build
                limit = int(self.full_check_max_gb * 2**30)
                self._checked[seen] = verify_manifest(self.path(key), manifest, self.verify, limit)
            return self._checked[seen] or lineage_problem(done, self.record)
        except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
            return f"its files or .done record cannot be checked ({type(e).__name__}: {e})"

    def valid(self, key: str) -> bool:
        """Published, intact and made from the current versions of its parents (else warned about once)."""
        if not self.is_done(key):
            return False
        why = self.problem(key)
        if why is not None and key not in self._warned:  # the cause warns; what was made from it follows
            self._warned.add(key)
            level = logging.INFO if why.startswith(LINEAGE) else logging.WARNING
            log.log(
                level, "cache: %s cannot be reused (%s); rebuilding it and everything made from it", key, why
            )
        return why is None

    def missing(self, key: str) -> bool:
        """Not reusable, as the main process sees it: every rank of a launch takes the same branch."""
        if not distributed():
            return not self.valid(key)
        import torch.distributed as dist

        dist_state()
        decision = [not self.valid(key) if is_main() else None]
        dist.broadcast_object_list(decision, src=0)
        return bool(decision[0])

    def discard_work(self, key: str) -> None:  # training checkpoints, once the product is published
        if is_main():
            shutil.rmtree(self.work_dir(key), ignore_errors=True)

    def remove_leftovers(self) -> list[Path]:
        """Remove what killed processes of this host left behind (temporary product folders, files)."""
        removed: list[Path] = []
        if self.root.is_dir():
            for folder in [self.root, *(p for p in self.root.iterdir() if p.is_dir())]:
                removed += remove_dead_temps(folder)
        for path in removed:
            log.info("Removed %s, left by a killed job", path)
        return removed

    def lock(self, key: str) -> BuildLock:
        """Exclusive lock on one key across jobs and hosts, used as ``with store.lock(key):`` (waits, or
        raises ProductBusy with on_busy="exit")."""
        return BuildLock(self.root / "locks" / f"{key}.lock", self.lock_stale_s, self.on_busy)

    def _start(self, key: str) -> Path:
        """Under the key's lock: remove an unusable product, temporary folders of any earlier attempt
        (nobody else can be building it) and half-written checkpoints; return a fresh temporary folder."""
        final = self.path(key)
        if os.path.lexists(final):  # a dangling link or a file in its place too
            aside = temp_sibling(final, "bad")
            os.replace(final, aside)
            remove_path(aside)
        if final.parent.is_dir():  # moved away first: a job resuming meanwhile finds nothing to publish
            trash = temp_sibling(final, "trash")
            if leftovers := [p for p in final.parent.glob(f".{key}.*") if p != trash]:
                trash.mkdir(exist_ok=True)
                for leftover in leftovers:
                    try:
                        os.rename(leftover, trash / leftover.name)
                    except FileNotFoundError:
                        pass
            remove_path(trash)
        for leftover in self.work_dir(key).glob(".tmp-*"):
            remove_path(leftover)
        tmp = temp_sibling(final)
        tmp.mkdir(parents=True)
        return tmp

    def _reuse(self, kind: str, key: str) -> bool:
        if ok := self.valid(key):
            self._record(kind, key, reused=True)
        return ok

    def build(
        self, kind: str, key: str, fn: Callable[[Path], Any], meta: Mapping[str, Any] | None = None
    ) -> Path:
        """Return the finished product for ``key``, running ``fn(tmp_dir)`` to make it if needed.

        ``fn`` writes everything into ``tmp_dir``; the folder is renamed into place only after ``fn``
        returns, so a crash leaves no half-written product (the temp folder is removed on error).
        """
        final = self.path(key)
        if self._reuse(kind, key):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with self.lock(key) as lock:
            if self._reuse(kind, key):  # built by another job while we waited
                return final
            tmp, t0 = self._start(key), time.time()
            try:
                with cleaned_on_error(tmp, f"{kind} {key}"):
                    fn(tmp)
                    self._publish(kind, key, tmp, meta, t0, lock)
            except Exception as e:
                if (lost := lock.taken_over(key)) is None:
                    raise
                if self._reuse(kind, key):  # the job that took the lock over has finished the product
                    return final
                raise lost from e  # e.g. its _start removed our temporary folder under fn
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

        DDP training and sharded encoding need all ranks inside ``fn`` at once. Rank 0 holds the lock for
        the whole build, decides (reuse, busy, build) and broadcasts that with the shared temporary folder;
        ``prepare`` runs on rank 0, then ``fn`` on every rank, then ``finish`` on rank 0, which publishes.
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
        final, main = self.path(key), state.is_main_process
        lock = self.lock(key) if main else None
        decision: list[Any] = [None, None]  # ("reuse" | "busy" | "build", holder or shared temp folder)
        if lock is not None:
            if self._reuse(kind, key):
                decision = ["reuse", None]
            elif not lock.acquire():
                decision = ["busy", lock.holder]
            elif self._reuse(kind, key):
                lock.release()
                decision = ["reuse", None]
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                decision = ["build", str(self._start(key))]  # one folder all ranks write into
        dist.broadcast_object_list(decision, src=0)
        if decision[0] == "reuse":
            return final
        if decision[0] == "busy":
            raise ProductBusy(key, decision[1])
        tmp, t0 = Path(decision[1]), time.time()
        try:
            with cleaned_on_error(tmp, f"{kind} {key}") if main else nullcontext():
                if main and prepare is not None:
                    prepare(tmp)
                state.wait_for_everyone()
                fn(tmp)
                state.wait_for_everyone()
                if main:
                    if finish is not None:
                        finish(tmp)
                    self._publish(kind, key, tmp, meta, t0, lock)
            state.wait_for_everyone()
        finally:
            if lock is not None:
                lock.release()
        return final

    def _publish(self, kind: str, key: str, tmp: Path, meta: Mapping[str, Any] | None, t0: float,
                 lock: BuildLock) -> None:  # fmt: skip
        """Check the lock is still ours and the inputs unchanged, write the manifest (files, parents'
        build ids), rename into place. A job stopped past ``lock_stale_s`` (even right after this check)
        has lost its lock to one that moved its temporary folder away and may have published the key:
        it publishes nothing, and never replaces or removes that product."""
        if (lost := lock.taken_over(key)) is not None:
            raise lost
        if why := changed_input(self.inputs):
            raise InputChanged(why)
        final = self.path(key)
        manifest = {**make_manifest(tmp), "build": uuid.uuid4().hex}
        parents = {}
        for parent in self.parents.get(key, ()):
            pm = (self.record(parent) or {}).get("manifest") or {}
            if self.is_done(parent) and pm:
                parents[parent] = {"build": pm.get("build"), "content": pm.get("content")}
        done = {"key": key, "kind": kind, "meta": canonical(meta or {}), "seconds": round(time.time() - t0, 3),
                "finished": time.time(), "host": HOST, "pid": os.getpid(), "parents": parents,
                "manifest": manifest}  # fmt: skip
        # Never made again, never replacing: a folder moved away by the job that took the lock over, or the
        # product it published meanwhile (_start removed any earlier one), fails this job's publish.
        (tmp / DONE).write_text(json.dumps(done))
        os.rename(tmp, final)  # fails on a product in place (a non-empty folder): it is never replaced
        self._checked[(key, manifest["build"])] = None  # what we just hashed is what is there
        self._record(kind, key, reused=False, seconds=time.time() - t0)

    def _record(self, kind: str, key: str, reused: bool, seconds: float = 0.0) -> None:
        log.info("%s %s artifact %s", "Reused" if reused else "Built", kind, key)
        self.events.append({"kind": kind, "key": key, "reused": reused, "seconds": round(seconds, 3)})
