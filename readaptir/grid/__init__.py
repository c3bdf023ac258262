"""The grid: a cell's artifact keys (:mod:`~readaptir.grid.keys`), its stages (:mod:`~readaptir.grid.stages`)
run in order by :mod:`~readaptir.grid.cell`, its ``results.json`` (:mod:`~readaptir.grid.record`) and plans
of cells and whole grids (:mod:`~readaptir.grid.plan`)."""
