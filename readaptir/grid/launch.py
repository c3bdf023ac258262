"""Hydra's submitit launchers, with a job per cell that says which cell it is.

``hydra/launcher=slurm`` (``conf/hydra/launcher/slurm.yaml``) and ``hydra/launcher=local``
(``local.yaml``: the same jobs as local processes, for a workstation or a test) differ from the plugin's
own in three ways:

- each job is named after its cell, ``<model>/<dataset>/<adapter>-<ablation>`` plus the stage
  (``squeue`` and ``sacct`` say which cell a job is, not ``run``), so jobs are submitted one by one
  instead of as one array (``array_parallelism`` does not apply; SLURM's own limits do);
- ``submitit_folder`` is a real path: submitit's files of each job are named by its job id inside it;
- the console shows each cell's end line (status and nDCG@10, or the reason) as its job finishes, not
  only the sweep summary at the end (:func:`readaptir.grid.sweep.end_line`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from readaptir.grid.sweep import end_line

log = logging.getLogger(__name__)


def job_name(overrides: Sequence[str], defaults: dict[str, str]) -> str:
    """``model/dataset/adapter-ablation`` (and the stage) of a job, from its overrides over the defaults."""
    given = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    pick = {k: given.get(k, v) for k, v in defaults.items()}
    name = f"{pick['model']}/{pick['dataset']}/{pick['adapter']}-{pick['ablation']}"
    stage = given.get("run.stage", defaults.get("run.stage", "all"))
    return name if stage == "all" else f"{name}:{stage}"


class _NamedJobs(BaseSubmititLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        folder = str(self.params["submitit_folder"])
        init = (
            {f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]}
            if "max_num_timeout" in self.params
            else {}
        )
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=folder, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        skip = {"submitit_folder", "max_num_timeout", "name", "array_parallelism"}
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in skip})  # fmt: skip
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        choices = self.config.hydra.runtime.choices
        defaults = {g: str(choices.get(g)) for g in ("model", "dataset", "adapter", "ablation")}
        defaults["run.stage"] = str(OmegaConf.select(self.config, "run.stage", default="all"))
        jobs = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            name = job_name(overrides, defaults)
            log.info(f"\t#{idx} {name}: {' '.join(filter_overrides(overrides))}")
            executor.update_parameters(name=name)
            args = (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
            jobs.append((name, executor.submit(self, *args)))
        return self._collect(jobs)

    @staticmethod
    def _collect(jobs: list[tuple[str, Any]]) -> list[JobReturn]:
        """Each job's return, printing its cell's end line as it finishes (in the order they finish)."""
        import submitit

        names = {id(j): n for n, j in jobs}
        for job in submitit.helpers.as_completed([j for _, j in jobs], poll_frequency=1):
            try:
                ret = job.results()[0]
                line = end_line(Path(str(ret.hydra_cfg.hydra.runtime.output_dir)))
            except Exception as e:  # noqa: BLE001 - a job that died: its reason is in submitit's logs
                line = f"failed ({e.__class__.__name__}; see {job.paths.stderr})"
            print(f"[{job.job_id}] {names[id(job)]}: {line}", file=sys.stderr, flush=True)
        return [j.results()[0] for _, j in jobs]


class LocalLauncher(_NamedJobs):
    _EXECUTOR = "local"


class SlurmLauncher(_NamedJobs):
    _EXECUTOR = "slurm"
