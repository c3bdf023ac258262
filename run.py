"""Run one cell of the RE-AdaptIR grid (or a sweep with -m): the ``readaptir`` command from a checkout.

python run.py                                     # embedded demo cell: tiny models, toy data, CPU
python run.py -m model=repllama 'dataset=glob(*)' # a sweep over the 14 paper datasets
python run.py -m model=repllama 'dataset=glob(*)' run.plan=true   # what it would compute, and the total

Installed (pip install readaptir), the same app is the ``readaptir`` command; see readaptir/cli.py.

A failing cell of a sweep is recorded (status: failed in its results.json) and the sweep goes on; the sweep
ends with a summary and a non-zero exit code (readaptir/grid/sweep.py).
"""

from readaptir.cli import main

if __name__ == "__main__":
    main()
