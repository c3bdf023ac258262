# The package's Hydra configs (pkg://readaptir.conf); Hydra's package config source needs this file.
