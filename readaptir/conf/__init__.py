# The package's Hydra configs (pkg://readaptir.conf); Hydra's package config source needs this file.
# Importing it registers the `safe_name` resolver the job folders in config.yaml use (readaptir/paths.py).
import readaptir.paths  # noqa: F401, E402
