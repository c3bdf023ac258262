"""Generated hostile inputs (hypothesis) over the config schema, the data loaders and the Hydra app.

The property everywhere: a value is either accepted and then works (finite numbers, names that stay inside
their roots, templates that format), or refused before any work in one line (ConfigError / DataError /
PathError); never a traceback, never a file outside the cache/results/data/job roots.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from readaptir.config import CONF_DIR, CellConfig, ConfigError
from readaptir.data.beir import DataError, dataset_dir, load_qrels, load_queries
from readaptir.data.checks import check_dataset
from readaptir.grid.record import CellCoords
from readaptir.paths import check_name
from readaptir.retrieval.prompts import format_passage, format_query

ROOT = Path(__file__).resolve().parents[1]
HOSTILE_TEXT = ["..", "../x", "/", "", " ", "a/b", ".x", "{0}", "{query.__class__}", "{query[0]}", "{query!r}",
                "{}", "{query", "x@..", "org/x@", "org/x@..", "nan", "inf", "-1", "\x00", "~", "{title}"]  # fmt: skip
SCALARS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.text(max_size=16),
    st.sampled_from(HOSTILE_TEXT),
    st.none(),
    st.booleans(),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))
KEYS = [
    "readapt.alpha", "readapt.beta", "readapt.alpha_selection.grid", "readapt.alpha_selection.seed", "train.seed",
    "train.lr", "train.max_grad_norm", "evaluate.k_values", "search.faiss_max_gb", "run.seed",
    "run.progress_every_s", "model.query_template", "model.passage_template", "model.name", "model.pretrained",
    "dataset.name", "dataset.beir_name", "dataset.split", "dataset.knowledge_corpus", "adapter.name",
    "adapter.corpus", "paths.data_dir", "paths.cache_dir", "paths.results_dir", "store.lock_stale_s",
]  # fmt: skip


@pytest.fixture(scope="module")
def base_config() -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["run.plan=true"])
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=True)


def _set(cfg: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for p in path:
        cfg = cfg[p]
    cfg[last] = value


def _floats(obj):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _floats(v)


def _inside(path: Path, root: Path) -> bool:
    return root.resolve() in path.resolve().parents


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_any_config_value_is_accepted_and_works_or_refused_in_one_line(base_config, tmp_path, changes):
    cfg = copy.deepcopy(base_config)
    for key, value in changes:
        _set(cfg, key, value)
    try:
        spec = CellConfig.from_hydra(cfg)
    except ConfigError as e:
        assert str(e).startswith("config key") and "\n" not in str(e), str(e)
        return
    dumped = spec.model_dump()
    assert all(math.isfinite(x) for x in _floats(dumped))
    assert spec.train.seed >= 0 and spec.run.seed >= 0 and min(spec.evaluate.k_values) >= 1
    for name in (
        spec.model.name,
        spec.dataset.name,
        spec.dataset.beir_name,
        spec.adapter.name,
        spec.dataset.split,
    ):
        check_name(name, "k")
    assert _inside(CellCoords.of(spec).store_path(tmp_path / "results", "0" * 32), tmp_path / "results")
    assert _inside(dataset_dir(spec.dataset.beir_name, tmp_path / "data"), tmp_path / "data")
    assert "\x01Q" in format_query(spec.model.query_template, "task", "\x01Q")
    assert "\x01X" in format_passage(spec.model.passage_template, "title", "\x01X")


GRADES = st.one_of(st.integers(-3, 5).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["0.9", "1.0", "inf", "nan", "", "x", "1e400", " 2", "-0"]))  # fmt: skip
TEXTS = st.one_of(st.text(max_size=8), st.none(), st.integers(), st.sampled_from(["", "  "]), st.booleans())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    grades=st.lists(GRADES, min_size=1, max_size=5),
    queries=st.lists(st.tuples(st.sampled_from(["q0", "q1", "q2"]), TEXTS), min_size=1, max_size=4),
)
def test_any_qrels_and_queries_load_exactly_or_are_refused_naming_file_and_line(
    tmp_path_factory, grades, queries
):
    root = tmp_path_factory.mktemp("d")
    (root / "qrels").mkdir()
    docs = [f"d{i}" for i in range(len(grades))]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": f"t {d}"}) + "\n" for d in docs))
    lines = [f"q{i % 3}\t{d}\t{g}" for i, (d, g) in enumerate(zip(docs, grades, strict=True))]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries))
    try:
        qrels = load_qrels(root, "test")
        texts = load_queries(root)
        check_dataset(root, "test")
    except DataError as e:
        assert "\n" not in str(e) and str(root) in str(e), str(e)
        return
    for g, line in zip(grades, lines, strict=True):  # every grade was an integer, kept exactly
        value = float(g)
        assert math.isfinite(value) and value.is_integer()
        assert qrels[line.split("\t")[0]][line.split("\t")[1]] == int(value)
    ids = [q for q, _ in queries]
    assert len(set(ids)) == len(ids) and all(isinstance(t, str) for t in texts.values())
    assert sorted(texts) == sorted(ids) and any(texts[q].strip() for q in set(qrels) & set(texts))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["model.name", "dataset.name", "adapter.name", "dataset.beir_name"]),
    name=st.sampled_from(["../../../escaped", "..", "/tmp/escaped", "a/../../escaped", ".escaped"]),
    plan=st.booleans(),
)
def test_the_app_refuses_hostile_names_before_writing_outside_its_roots(tmp_path_factory, key, name, plan):
    """The Hydra app itself (plan mode and a real run): one error line, no traceback, nothing outside."""
    box = tmp_path_factory.mktemp("box")
    work = box / "a" / "b" / "c"  # `..` from the working folder still lands inside the box
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "READAPTIR_CACHE": str(work / "cache"),
           "READAPTIR_DATA": str(work / "data"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}  # fmt: skip
    before = _files(box)
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), f"{key}={name}", f"run.plan={str(plan).lower()}"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"readaptir: error: config key {key}=" in out.stderr, out.stderr[-2000:]
    new = _files(box) - before
    assert all(work in p.parents for p in new), sorted(map(str, new))
    assert not [p for p in new if p.name in ("escaped", ".escaped")], sorted(map(str, new))
    assert not Path("/tmp/escaped").exists()
