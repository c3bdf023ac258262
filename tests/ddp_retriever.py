"""Run by tests/test_retriever.py under torchrun: train a retriever on the toy data with a given recipe.

python -m torch.distributed.run --nproc_per_node 2 tests/ddp_retriever.py PRETRAINED OUT WORK RECIPE_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from readaptir.config import ModelSpec, RetrieverTraining  # noqa: E402
from readaptir.data.beir import RESOURCES  # noqa: E402
from readaptir.train.retriever import train_retriever  # noqa: E402


class Recorder:
    """A tracker that keeps every logged step (the training calls ``log`` and ``summary``)."""

    def __init__(self) -> None:
        self.steps: dict[int, dict] = {}

    def log(self, metrics: dict, step: int) -> None:
        self.steps[step] = dict(metrics)

    def summary(self, values: dict) -> None:
        pass


if __name__ == "__main__":
    pretrained, out, work, recipe = sys.argv[1:5]
    torch.set_num_threads(1)
    rec = Recorder()
    train_retriever(Path(pretrained), "b", RESOURCES / "toy", ModelSpec.model_validate({"name": "t"}),
                    RetrieverTraining.model_validate_json(recipe), Path(out), Path(work), rec)  # fmt: skip
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        (Path(out) / "logged.json").write_text(json.dumps(rec.steps))
