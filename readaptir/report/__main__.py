"""``python -m readaptir.report table1 --out experiments/table1`` (``--results-dir`` defaults to the configured
cache's results store, ``paths.results_dir``: ``$READAPTIR_CACHE/results``, else ``cache/results``)."""

import sys

from omegaconf import OmegaConf

from readaptir.config import CONF_DIR
from readaptir.report.render import main


def default_results_dir() -> str:
    """``paths.results_dir`` of the shipped config, resolved as a run resolves it."""
    paths = OmegaConf.load(CONF_DIR / "config.yaml").paths
    return str(OmegaConf.select(paths, "results_dir"))


if not any(a == "--results-dir" or a.startswith("--results-dir=") for a in sys.argv[1:]):
    sys.argv[1:1] = ["--results-dir", default_results_dir()]
raise SystemExit(main())
