"""``python -m readaptir ...``: the same Hydra app as the ``readaptir`` command and ``run.py``."""

from readaptir.cli import main

main()
