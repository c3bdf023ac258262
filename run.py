"""Run one cell of the RE-AdaptIR grid (or a sweep with -m). See README.md.

python run.py                                     # embedded demo cell: tiny models, toy data, CPU
python run.py -m model=repllama 'dataset=glob(*)' # a sweep over the 14 paper datasets
python run.py -m model=repllama 'dataset=glob(*)' run.plan=true   # what it would compute

A failing cell of a sweep is recorded (status: failed in its results.json) and the sweep goes on; the sweep
ends with a summary and a non-zero exit code (readaptir/grid/sweep.py).
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> str:
    from readaptir.grid.sweep import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
