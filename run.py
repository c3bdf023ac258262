"""Run one cell of the RE-AdaptIR grid (or a sweep with -m): the ``readaptir`` command from a checkout.

python run.py                                     # embedded demo cell: tiny models, toy data, CPU
python run.py -m model=repllama 'dataset=glob(*)' # a sweep over the 14 paper datasets
python run.py -m model=repllama 'dataset=glob(*)' run.plan=true   # what it would compute, and the total

Installed (pip install readaptir), the same app is the ``readaptir`` command; see readaptir/cli.py.
"""

from readaptir.cli import main

if __name__ == "__main__":
    main()
