"""The built wheel is a working package: configs inside, the `readaptir` command, usable outside the tree.

The wheel is built from a copy of the sources with the installed setuptools (no network), installed into
a fresh venv, and run from an unrelated folder. The venv reuses this environment's dependencies (the
installed CPU torch among them) through a .pth file naming this environment's site-packages: a venv's
``--system-site-packages`` would show the base interpreter's packages, not the ones `make install` put in
.venv. Path lines in a .pth add folders to sys.path without running their .pth files, so the editable
install of the checkout stays out and `import readaptir` can only find the wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    shutil.copytree(REPO / "readaptir", src / "readaptir", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            dist,
            src,
        ],
        src,
    )
    (whl,) = dist.glob("readaptir-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_carries_configs_resources_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    conf = (REPO / "readaptir" / "conf").rglob("*")
    shipped = {
        f"readaptir/{p.relative_to(REPO / 'readaptir').as_posix()}"
        for p in conf
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert shipped and shipped <= names, sorted(shipped - names)  # every config file, __init__.py included
    assert "readaptir/resources/toy/corpus.jsonl" in names and "readaptir/cli.py" in names
    assert "readaptir = readaptir.cli:main" in entry_points


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_outside_the_tree(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    py = venv / "bin" / "python"
    purelib = Path(
        _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    here = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (purelib / "_readaptir_test_deps.pth").write_text("\n".join(here) + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", wheel], tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WANDB_API_KEY")}
    env |= {
        "READAPTIR_CACHE": str(tmp_path / "cache"),
        "READAPTIR_DATA": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
    }
    where = _run([py, "-c", "import readaptir; print(readaptir.__file__)"], elsewhere, env).stdout.strip()
    assert where.startswith(str(purelib)), where  # the wheel, not the checkout
    helped = _run([venv / "bin" / "readaptir", "--help"], elsewhere, env).stdout
    assert (
        "readaptir: RE-AdaptIR" in helped
        and "model: bm25, e5-mistral" in helped
        and "experiment: demo" in helped
    )
    plan = _run(
        [venv / "bin" / "readaptir", "run.plan=true", "model=repllama", "dataset=scifact"], elsewhere, env
    ).stdout
    assert "[plan] repllama × scifact × in-domain × both:" in plan and "train dora adapter on scifact" in plan
    assert (
        list(elsewhere.iterdir()) == [] and not (tmp_path / "cache").exists()
    )  # a plan leaves nothing behind
    # A user's own config group option, beside the packaged ones (Hydra's search path).
    user = tmp_path / "userconf" / "model"
    user.mkdir(parents=True)
    (user / "my-retriever.yaml").write_text("defaults:\n  - repllama\n  - _self_\nname: my-retriever\n")
    cmd = [
        venv / "bin" / "readaptir",
        "--config-dir",
        user.parent,
        "model=my-retriever",
        "dataset=scifact",
        "run.plan=true",
    ]
    assert "[plan] my-retriever × scifact × in-domain × both:" in _run(cmd, elsewhere, env).stdout
