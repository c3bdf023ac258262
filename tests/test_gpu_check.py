"""`make gpu-check` in its CPU self-test mode (CI): every step runs and the report names the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_plumbing_on_cpu(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "gpu_check.py"), "--self-test", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [report] = tmp_path.glob("gpu_check-cpu-*.json")
    data = json.loads(report.read_text())
    assert data["meta"]["device"] == "cpu" and data["meta"]["self_test"] is True
    assert {"torch", "transformers", "peft", "accelerate"} <= set(data["meta"]["versions"])
    steps = data["steps"]
    assert list(steps) == ["gpu_tests", "bench_gpu", "tiny_cell"] and all(s["ok"] for s in steps.values())
    assert "tests collected" in steps["gpu_tests"]["tail"]  # the GPU-marked tests are found
    cell = steps["tiny_cell"]
    assert cell["status"] == "done" and 0.0 <= cell["base"] <= 1.0 and 0.0 <= cell["readapted"] <= 1.0
    assert list(tmp_path.glob("bench_gpu-cpu-tiny-*.json")) and report.with_suffix(".md").is_file()


def test_gpu_check_without_cuda_says_so(tmp_path):
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "experiments"))
    if gpu_check.environment()["device"] != "cpu":
        pytest.skip("a CUDA device is present")
    assert gpu_check.main(["--out", str(tmp_path)]) == 1 and not list(tmp_path.iterdir())
