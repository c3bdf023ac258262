"""`make bench-gpu` in its CPU smoke mode, on an interpreter that cannot import pydantic, Hydra, OmegaConf,
W&B, FAISS or BeIR (what bare CUDA images lack): the rows run and the report names what plan mode reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("pydantic", "hydra", "omegaconf", "wandb", "faiss", "beir")
# None in sys.modules: `import x` fails and importlib.util.find_spec("x") says "not installed", as on the image.
RUN_WITHOUT = """
import runpy, sys
sys.modules.update(dict.fromkeys({blocked!r}))
sys.argv = ["bench_gpu.py", *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_bench_gpu_cpu_smoke_without_the_heavy_dependencies(tmp_path):
    code = RUN_WITHOUT.format(blocked=BLOCKED, script=str(REPO / "experiments" / "bench_gpu.py"))
    rows = "check,encode_sorted,encode_packed_varlen,train_paper,train_packed_varlen,readapt"
    out = subprocess.run(
        [sys.executable, "-c", code, "--shape", "tiny", "--device", "cpu", "--threads", "1", "--only", rows,
         "--out", str(tmp_path), "--commit", "test"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    [report] = tmp_path.glob("bench_gpu-cpu-tiny-*.json")
    assert report.with_suffix(".md").is_file()
    data = json.loads(report.read_text())
    meta, by = data["meta"], {r["name"]: r for r in data["rows"]}
    assert meta["commit"] == "test" and {"torch", "transformers", "peft"} <= set(meta["versions"])
    assert [r["name"] for r in data["rows"]] == rows.split(",")
    assert all(by[n]["status"] == "ok" for n in rows.split(",")[:-1]), data["rows"]
    assert by["check"]["meets_targets"] and by["encode_packed_varlen"]["padding_fraction"] == 0
    assert by["train_packed_varlen"]["attention_paths"] and by["train_paper"]["passages_per_s"] > 0
    assert by["readapt"]["status"] == "skipped" and "pydantic" in by["readapt"]["error"]
    r = meta["rates"]
    assert r["train_passages_per_s"]["paper"] == by["train_paper"]["passages_per_s"]
    assert r["encode_passages_per_s"] == by["encode_packed_varlen"]["passages_per_s"]
