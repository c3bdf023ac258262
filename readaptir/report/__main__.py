"""``python -m readaptir.report table1 --results-dir cache/results --out experiments/table1``."""

from readaptir.report.render import main

raise SystemExit(main())
