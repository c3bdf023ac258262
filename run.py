"""Run one cell of the RE-AdaptIR grid (or a sweep with -m). See README.md.

python run.py                                     # embedded demo cell: tiny models, toy data, CPU
python run.py -m model=repllama 'dataset=glob(*)' # a sweep over the 14 paper datasets
python run.py -m model=repllama 'dataset=glob(*)' run.plan=true   # what it would compute
"""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from readaptir.errors import UserError
    from readaptir.grid.cell import run

    try:
        run(cfg)
    except UserError as e:  # bad input: one clear line, no traceback
        sys.exit(f"readaptir: error: {e}")


if __name__ == "__main__":
    main()
