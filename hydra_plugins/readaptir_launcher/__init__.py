"""readaptir's submitit launchers where Hydra looks for plugins (it instantiates only ``hydra_plugins.*``
classes); the code is :mod:`readaptir.grid.launch`. Selected by ``hydra/launcher=slurm`` or ``=local``.
Without the ``slurm`` extra (submitit and its Hydra plugin) this package defines nothing: Hydra imports
it at every start, and a core install must start without a warning."""

try:
    from readaptir.grid import launch
except ImportError:  # no hydra-submitit-launcher: hydra/launcher=slurm says what to install
    launch = None

if launch is not None:

    class LocalLauncher(launch.LocalLauncher):
        """Local processes, a job per cell, each cell's end line on the console."""

    class SlurmLauncher(launch.SlurmLauncher):
        """SLURM jobs named after their cells, each cell's end line on the console."""
