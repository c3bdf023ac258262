"""`make gpu-check`: the first run on a GPU machine, one script, ≤ 8 minutes on one H100/H200.

Steps, each timed, each recorded whatever the others do:

1. ``env``: python, torch, CUDA, the device's name, transformers/peft/accelerate, FAISS (GPU or not);
2. ``gpu_tests``: the GPU-marked tests (``pytest -m gpu``);
3. ``bench_gpu``: ``make bench-gpu`` (``experiments/bench_gpu.py``) within ``--bench-budget-s``;
4. ``tiny_cell``: one tiny cell end to end (knowledge adapter, RE-Adapt, encoding, search, nDCG) in bf16,
   searched with FAISS-GPU when it is installed.

The report, ``experiments/results/gpu_check-<device>-<date>.json`` (and ``.md``), names the device and
every step's status, seconds and output tail; the exit code is 1 when a step failed.

``--self-test`` checks the plumbing on CPU (CI runs it, tests/test_gpu_check.py): the same steps with the
GPU tests only collected, the benchmark at its tiny CPU shape and the cell in float32.

It runs from a checkout on a bare CUDA image that has torch, transformers, peft and accelerate: the
project's other dependencies come from ``make gpu-bundle`` (``--bundle DIR --python 3.11``: Linux x86_64
wheels for that CPython, ≤ 60 MiB), installed with
``pip install --no-index --no-deps gpu-bundle/*.whl``.

    python experiments/gpu_check.py                      # on the GPU machine
    python experiments/gpu_check.py --self-test --out /tmp/check
    python experiments/gpu_check.py --bundle gpu-bundle --python 3.10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAIL = 4000
# What a bare CUDA image brings (torch and the libraries it names), so the bundle leaves them out; and
# matplotlib, only used to draw report figures.
IMAGE = {"torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "huggingface-hub",
         "numpy", "triton", "sympy", "networkx", "jinja2", "markupsafe", "fsspec", "filelock", "mpmath",
         "matplotlib", "regex", "requests", "urllib3", "idna", "certifi", "charset-normalizer", "hf-xet",
         "setuptools", "psutil", "pyyaml", "typing-extensions", "tqdm", "packaging"}  # fmt: skip
BUNDLE_MAX_MIB = 60
SDIST_ONLY = "antlr4-python3-runtime==4.9.3"


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    t0 = time.time()
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})  # fmt: skip
        ok, text = out.returncode == 0, out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        ok, text = False, f"timed out after {timeout:.0f} s\n{e.stdout or ''}{e.stderr or ''}"
    return {"ok": ok, "seconds": round(time.time() - t0, 1), "command": " ".join(cmd), "tail": text[-TAIL:]}


def environment() -> dict:
    """Versions and the device (``cpu`` without CUDA)."""
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    faiss = next(
        (f"{n} {version(n)}" for n in ("faiss-gpu", "faiss-gpu-cu12", "faiss-cpu") if version(n)), None
    )
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": torch.version.cuda, "python": platform.python_version(), "host": platform.node(),
        "versions": {n: version(n) for n in ("torch", "transformers", "peft", "accelerate", "hydra-core", "pydantic")},
        "faiss": faiss, "faiss_gpu": bool(faiss and "gpu" in faiss),
    }  # fmt: skip


def steps(env: dict, self_test: bool, budget_s: float, work: Path) -> dict[str, dict]:
    py = sys.executable
    out: dict[str, dict] = {}
    tests = [py, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"]
    out["gpu_tests"] = _run([*tests, "--collect-only"] if self_test else tests, 300)
    bench = [py, "experiments/bench_gpu.py", "--out", str(work / "bench"), "--time-budget-s", str(budget_s)]
    if self_test:
        bench += [
            "--shape",
            "tiny",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--only",
            "check,encode_sorted,readapt",
        ]
    out["bench_gpu"] = _run(bench, budget_s + 120)
    cell = [py, "-m", "readaptir", "model=tiny-llama", "dataset=demo/toy", "tracking.backend=none",
            "train.max_passages=48", f"hydra.run.dir={work / 'cell'}",
            "encode.dtype=" + ("float32" if self_test else "bfloat16"),
            "search.backend=" + ("faiss" if env["faiss"] else "stream")]  # fmt: skip
    out["tiny_cell"] = _run(cell, 300, {"READAPTIR_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"})
    results = work / "cell" / "results.json"
    if results.is_file():
        rec = json.loads(results.read_text())
        out["tiny_cell"].update(status=rec.get("status"), encode_dtype="float32" if self_test else "bfloat16",
                                faiss=env["faiss"], base=rec.get("base", {}).get("NDCG@10"),
                                readapted=rec.get("readapted", {}).get("NDCG@10"))  # fmt: skip
        out["tiny_cell"]["ok"] &= rec.get("status") == "done"
    else:
        out["tiny_cell"]["ok"] = False
    return out


def report(env: dict, results: dict, out_dir: Path, self_test: bool) -> Path:
    """Write the JSON and Markdown report named after the device; returns the JSON path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    path = out_dir / f"gpu_check-{slug}-{stamp}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"meta": {**env, "self_test": self_test, "date": stamp}, "steps": results}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    lines = [f"# gpu-check on {env['device']} ({stamp})", "", "| step | ok | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {'yes' if v['ok'] else 'NO'} | {v['seconds']} |" for k, v in results.items()]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path


def bundle(folder: Path, python: str) -> int:
    """``make gpu-bundle``: readaptir's wheel and its dependencies the image lacks, for CPython ``python``."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    name = re.compile(r"^[A-Za-z0-9_.-]+")
    wanted = [d for d in deps if name.match(d).group(0).lower() not in IMAGE] + ["pytest>=8"]
    folder.mkdir(parents=True, exist_ok=True)
    tag = python.replace(".", "")
    pip = [sys.executable, "-m", "pip"]
    # OmegaConf's parser runtime ships as a source archive only: built here (pure Python), found below.
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(folder), SDIST_ONLY], check=True)
    subprocess.run([*pip, "download", "-q", "--only-binary=:all:", "--find-links", str(folder), "--dest", str(folder), "--implementation", "cp",
                    "--python-version", tag, "--abi", f"cp{tag}", *(f"--platform={p}" for p in (
                        "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")), *wanted],
                   check=True)  # fmt: skip
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(folder), str(REPO)], check=True)
    shutil.rmtree(REPO / "build", ignore_errors=True)
    for whl in folder.glob("*.whl"):  # what the resolver pulled in that the image has
        if whl.name.split("-")[0].lower().replace("_", "-") in IMAGE or whl.name.startswith("nvidia_"):
            whl.unlink()
    size = sum(f.stat().st_size for f in folder.glob("*.whl")) / 2**20
    print(
        f"{folder}: {len(list(folder.glob('*.whl')))} wheels for CPython {python} (Linux x86_64), {size:.1f} MiB"
    )
    print(f"install on the image: pip install --no-index --no-deps {folder}/*.whl")
    if size > BUNDLE_MAX_MIB:
        print(f"gpu-bundle: {size:.1f} MiB is over {BUNDLE_MAX_MIB} MiB", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--self-test", action="store_true", help="check the plumbing on CPU (CI)")
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    p.add_argument("--bench-budget-s", type=float, default=240.0, help="make bench-gpu's time budget")
    p.add_argument(
        "--bundle", type=Path, help="build the wheel bundle for a bare CUDA image into this folder"
    )
    p.add_argument(
        "--python", default=f"{sys.version_info[0]}.{sys.version_info[1]}", help="the image's CPython"
    )
    a = p.parse_args(argv)
    if a.bundle:
        return bundle(a.bundle, a.python)
    env = environment()
    if not a.self_test and env["device"] == "cpu":
        print(
            "gpu-check: no CUDA device (torch.cuda.is_available() is False); --self-test checks the plumbing on CPU"
        )
        return 1
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="readaptir-gpu-check-") as work:
        results = steps(env, a.self_test, a.bench_budget_s, Path(work))
        a.out.mkdir(parents=True, exist_ok=True)
        for f in (Path(work) / "bench").glob("bench_gpu-*"):  # the benchmark's own report beside ours
            shutil.copy(f, a.out / f.name)
    path = report(env, results, a.out, a.self_test)
    for k, v in results.items():
        print(
            f"{k:<10} {'ok' if v['ok'] else 'FAILED'} ({v['seconds']} s)"
            + ("" if v["ok"] else f"\n{v['tail'][-1500:]}")
        )
    print(f"gpu-check on {env['device']}: {time.time() - t0:.0f} s, report {path}")
    return 0 if all(v["ok"] for v in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
