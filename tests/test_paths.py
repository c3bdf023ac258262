"""No path from a name leaves its root: the one path builder (readaptir/paths.py), its callers, the Makefile."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from readaptir.data.beir import dataset_dir, load_qrels
from readaptir.grid.record import CellCoords
from readaptir.paths import NAME_PATTERN, PathError, check_name, confined, env_root, root_dir, safe_name

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ["..", "../x", "../../../x", "a/b", "/abs", ".hidden", "", " ", "a\x00b", "~", "x/../..", "é"]
# Names: mostly printable text with path punctuation, plus the hostile ones above.
NAMES = st.one_of(st.sampled_from(HOSTILE), st.text(st.sampled_from("ab.-_/\\~ \x00é:$*"), max_size=12),
                  st.text(max_size=12))  # fmt: skip


def _inside(path: Path, root: Path) -> bool:
    real, base = path.resolve(), root.resolve()
    return real == base or base in real.parents


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_in_one_line(tmp_path, name):
    with pytest.raises(PathError) as e:
        confined(tmp_path, name, key="model.name")
    assert str(e.value).startswith("config key model.name=") and "\n" not in str(e.value)


def test_documented_names_are_kept():
    for name in ("repllama", "e5-mistral", "scifact-mini", "in-domain", "a0.5", "_x", "test.tsv"):
        assert check_name(name, "k") == name
    assert NAME_PATTERN.startswith("[A-Za-z0-9_-]")  # no leading dot


@settings(max_examples=100, deadline=None)
@given(names=st.lists(NAMES, min_size=1, max_size=3))
def test_a_confined_path_is_inside_its_root_or_refused(tmp_path_factory, names):
    root = tmp_path_factory.mktemp("root")
    try:
        path = confined(root, *names, key="k")
    except PathError as e:
        assert str(e).startswith("config key k=") and "\n" not in str(e)
        return
    assert _inside(path, root) and path != root.resolve()
    assert all(n and not n.startswith(".") and "/" not in n for n in names)


def test_a_symlink_inside_the_root_cannot_lead_out(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "model").symlink_to(tmp_path)
    with pytest.raises(PathError, match="outside"):
        confined(tmp_path / "root", "model", "x", key="model.name")


def test_empty_roots_and_environment_variables_are_refused(monkeypatch):
    with pytest.raises(PathError, match="paths.results_dir"):
        root_dir("", "paths.results_dir")
    monkeypatch.setenv("READAPTIR_CACHE", "")
    with pytest.raises(PathError, match="READAPTIR_CACHE is set but empty"):
        env_root("READAPTIR_CACHE", "cache")
    monkeypatch.delenv("READAPTIR_CACHE")
    assert env_root("READAPTIR_CACHE", "cache") == Path("cache").absolute()


def test_result_paths_stay_in_the_results_store(tmp_path):
    good = CellCoords(model="m", dataset="d", adapter="in-domain", ablation="both", alpha=0.5, beta=1.0)
    assert _inside(good.store_path(tmp_path, "k"), tmp_path)
    for field in ("model", "dataset", "adapter"):
        bad = good.model_copy(update={field: "../../../x"})
        with pytest.raises(PathError, match=r"config key model\.name/dataset\.name/adapter\.name"):
            bad.store_path(tmp_path, "k")
    with pytest.raises(PathError, match="paths.results_dir"):
        good.store_path("", "k")  # an empty results_dir wrote into the working folder


def test_dataset_folders_and_splits_stay_in_the_data_folder(tmp_path):
    assert dataset_dir("scifact", tmp_path) == tmp_path.resolve() / "scifact"
    for name in ("../x", "", ".."):
        with pytest.raises(PathError, match="dataset.beir_name"):
            dataset_dir(name, tmp_path)
    with pytest.raises(PathError, match="paths.data_dir"):
        dataset_dir("scifact", "")
    with pytest.raises(PathError, match="dataset.split"):
        load_qrels(tmp_path, "../../etc/x")


@settings(max_examples=100, deadline=None)
@given(value=st.text(max_size=20))
def test_safe_name_is_always_a_valid_name(value):
    assert check_name(safe_name(value), "k")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_quotes_every_variable_it_hands_to_the_shell():
    """`make -n` with `;`, quotes and spaces in the user variables: each stays one shell word (VENV names
    make targets, where make itself cannot take a `;`)."""
    hostile = "c; touch PWNED 'q'"
    args = [f"CACHE={hostile}", f"BENCH_PY={hostile}", "BENCH_ARGS=--x;id --y",
            f"TORCH_SPEC={hostile}", f"SMOLLM2_SPEC={hostile}", "EXTRAS=dev;id", "FAISS=cpu"]  # fmt: skip
    out = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "install", "table1", "bench", "bench-gpu", *args],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    words = [w for line in out.replace("\\\n", " ").splitlines() for w in shlex.split(line, comments=True)]
    assert f"{hostile}/results" in words and hostile in words  # CACHE / RESULTS, BENCH_PY, specs: one word
    assert "--x;id" in words and ".[cpu,dev;id]" in words
    assert (
        "PWNED" not in words and "id" not in words
    )  # no part of a value became a word (a command) of its own


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_runs_no_part_of_a_variable_while_reading_the_makefile(tmp_path):
    """`$(shell ...)` runs even under `make -n`: GPU_PY asked BENCH_PY for its version unquoted."""
    planted = tmp_path / "PWNED"
    subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "gpu-bundle", f"BENCH_PY=python3; touch {planted} #"],
                   capture_output=True, text=True, check=False)  # fmt: skip
    assert not planted.exists()


def test_an_empty_results_folder_for_reports_is_one_line(tmp_path, capsys):
    """`--results-dir ""` read the working folder as the results store."""
    from readaptir.report.render import main

    with pytest.raises(SystemExit) as e:
        main(["table1", "--results-dir", "", "--out", str(tmp_path)])
    assert e.value.code == 2 and "option --results-dir='': empty" in capsys.readouterr().err
