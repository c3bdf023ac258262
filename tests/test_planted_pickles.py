"""A planted pickle in any file under cache/ is never executed by a documented command (issue #19).

A tiny cell fills a cache (tokens, embeddings, runs, adapters, identity and ``.done`` records, results);
then every file there is replaced by a pickle whose unpickling creates a marker file, one at a time and
all at once, with a killed run's checkpoints planted too, and the cell runs again. The run may rebuild or
stop with one line; the marker is never created.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_checkpoint_safety import payload_bytes
from test_pipeline import cell_factory, make_data_dir

from readaptir.errors import UserError
from readaptir.grid.cell import run_cell
from readaptir.store.artifacts import ArtifactStore

CKPT_FILES = ("state.pt", "rng-0.pt", "state.json", "state.safetensors", "adapter.safetensors",
              "rng-0.json", "rng-0.safetensors", "manifest.json")  # fmt: skip


def _rerun(make, cache: Path, job: Path) -> str:
    """The cell's status, ``error: <line>`` (a UserError, one line) or ``crash: <type>`` (a traceback)."""
    try:
        return run_cell(make(cache), job).status
    except UserError as e:
        assert "\n" not in str(e)
        return f"error: {e}"
    except Exception as e:  # noqa: BLE001 - reported by the caller: only model input folders may crash
        return f"crash: {type(e).__name__}: {e}"


def _plant_checkpoints(cache: Path, key: str, marker: Path) -> None:
    """A killed training run's work folder for ``key``, every file of it a pickle."""
    for step in (2, 4):
        ckpt = ArtifactStore(cache).work_dir(key) / f"ckpt-{step:09d}"
        ckpt.mkdir(parents=True, exist_ok=True)
        for name in CKPT_FILES:
            (ckpt / name).write_bytes(payload_bytes(marker, torch_format=step == 2))


@pytest.fixture(scope="module")
def filled(tmp_path_factory, cell):
    root = tmp_path_factory.mktemp("filled")
    first = run_cell(cell(root / "cache", "train.checkpoint_every=2"), root / "job")
    assert first.status == "done"
    return root / "cache", first.artifacts


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """``cell(cache, *overrides)``: a validated CellConfig (tiny-llama x scifact), one per module."""
    with cell_factory(make_data_dir(tmp_path_factory.mktemp("beir"))) as make:
        yield make


@pytest.mark.slow
def test_pickles_over_every_cache_file_at_once_never_run(tmp_path, filled, cell):
    src, keys = filled
    cache = tmp_path / "cache"
    shutil.copytree(src, cache)
    marker = tmp_path / "ran"
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert len(files) > 20 and any(p.name == ".done" for p in files)
    for p in files:
        p.write_bytes(payload_bytes(marker, torch_format=len(p.name) % 2 == 0))
    _plant_checkpoints(cache, keys["adapter"], marker)
    status = _rerun(cell, cache, tmp_path / "job")
    print(f"planted everywhere: {status}")
    assert not marker.exists()
    assert status == "done" or status.startswith("error: "), status


@pytest.mark.slow
def test_a_pickle_over_any_one_cache_file_never_runs(tmp_path, filled, cell):
    src, keys = filled
    names = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    kinds: dict[str, str] = {}  # one file of each name per product kind: every reader, not every copy
    for rel in names:
        kinds.setdefault(f"{rel.split('/')[0]}/{Path(rel).name}", rel)
    for i, rel in enumerate([*kinds.values(), None]):
        cache = tmp_path / f"c{i}"
        shutil.copytree(src, cache)
        marker = tmp_path / f"ran-{i}"
        if rel is None:  # the adapter deleted, its work folder full of planted checkpoints
            shutil.rmtree(ArtifactStore(cache).path(keys["adapter"]))
            _plant_checkpoints(cache, keys["adapter"], marker)
        else:
            (cache / rel).write_bytes(payload_bytes(marker, torch_format=i % 2 == 0))
        status = _rerun(cell, cache, tmp_path / f"job{i}")
        print(f"planted {rel or 'checkpoints'}: {status}")
        assert not marker.exists(), f"a pickle planted in {rel or 'checkpoints'} was executed"
        # A model folder's tokenizer files are read by transformers' tokenizer loader, whose decode error
        # is its own (a traceback, no code run); every other file rebuilds or stops with one line.
        tokenizer = rel is not None and rel.startswith("tiny/") and "tokenizer" in Path(rel).name
        assert status == "done" or status.startswith("error: ") or tokenizer, (rel, status)
        shutil.rmtree(cache)
