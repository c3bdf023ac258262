"""Which stored variant a table shows: the one the experiment's own config produces.

The results store keeps every variant of a cell (grid/record.py). For each cell a table asks for, this
composes the experiment's config at that cell's coordinates (``experiment=table1 model=… dataset=…
adapter=… ablation=… readapt.alpha=…``, plus any overrides the sweep was run with) exactly as ``run.py``
would, and hashes its determining settings into the ``variant`` a run of it records. Nothing is loaded.

    results = load_results("cache/results", expect=expected_variants("table1", ["train.batching=packed"]))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from readaptir.config import CONF_DIR as CONF
from readaptir.config import CellConfig
from readaptir.grid.record import variant_settings
from readaptir.report.results import Expect
from readaptir.store.artifacts import make_key

log = logging.getLogger(__name__)


def _dataset_options(conf: Path) -> dict[str, str]:
    """Dataset name → its option in the ``dataset`` group (``toy`` → ``demo/toy``)."""
    from omegaconf import OmegaConf

    out = {}
    for path in sorted((conf / "dataset").rglob("*.yaml")):
        name = OmegaConf.load(path).get("name", path.stem)
        out[str(name)] = path.relative_to(conf / "dataset").with_suffix("").as_posix()
    return out


def expected_variants(experiment: str | None, overrides: Sequence[str] = (), conf: Path = CONF) -> Expect:
    """A function from cell coordinates to the variant the experiment's config produces there (None, and
    one warning, when that config cannot be composed: then the newest variant is shown)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    datasets = _dataset_options(conf)
    memo: dict[tuple, str | None] = {}

    def expect(key: tuple[str, str, str, str, float, float, str]) -> str | None:
        if key in memo:
            return memo[key]
        model, dataset, adapter, ablation, alpha, beta, scaling = key
        cell = [f"model={model}", f"dataset={datasets.get(dataset, dataset)}", f"adapter={adapter}",
                f"ablation={ablation}", f"readapt.alpha={alpha}", f"readapt.beta={beta}",
                f"readapt.knowledge_scaling={scaling}", "run.plan=true"]  # fmt: skip
        exp = [f"experiment={experiment}"] if experiment else []
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
                cfg = CellConfig.from_hydra(
                    compose(config_name="config", overrides=[*exp, *cell, *overrides])
                )
            memo[key] = make_key("variant", variant_settings(cfg))
        except Exception as e:  # noqa: BLE001 - any compose/validation failure means "no preference"
            log.warning("cannot compose the config of %s (%s: %s); showing its newest result",
                        "/".join(map(str, key[:4])), type(e).__name__, e)  # fmt: skip
            memo[key] = None
        finally:
            GlobalHydra.instance().clear()
        return memo[key]

    return expect
