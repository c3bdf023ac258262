"""The ``readaptir`` command (and ``python run.py``, ``python -m readaptir``): one Hydra app over the grid.

The configs ship inside the package (``readaptir/conf``, found as ``pkg://readaptir.conf``; the top-level
``conf/`` of a source checkout is a link to them), so an installed wheel runs from any folder. Add your
own config groups with ``--config-dir DIR`` (new names, e.g. ``model=my-retriever``) or
``'hydra.searchpath=[file:///path]'``.

    readaptir                                            # the embedded demo cell: tiny models, toy data, CPU
    readaptir model=repllama dataset=scifact run.plan=true           # what one cell would compute
    readaptir -m model=repllama 'dataset=glob(*)' run.plan=true      # a sweep's plan, with its total
    readaptir -m experiment=table1                                    # Table 1's 28 cells
    readaptir adapt retriever=<hub id or folder> corpus=<path>        # your corpus (readaptir/grid/adapt.py)
    readaptir evaluate retriever=<...> readapted=<...> dataset=<name or folder>  # (readaptir/grid/compare.py)

Plan mode loads nothing and leaves nothing behind: its Hydra job folders go to a temporary folder that is
removed at the end, and a sweep's plan ends with the total over the unique products of all its cells.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

# `run.plan=true` on the command line (Hydra accepts these spellings of true).
_PLAN_ARG = re.compile(r"^\+{0,2}run\.plan=(true|True|TRUE|yes|on|1)$")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _app(cfg: DictConfig) -> str:
    # A failing cell is recorded and a sweep goes on; bad input is one line (readaptir/grid/sweep.py).
    from readaptir.grid.sweep import run_job

    return run_job(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="adapt")
def _adapt(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    from readaptir.grid.adapt import run_adapt
    from readaptir.grid.sweep import command_errors

    with command_errors():
        missing = sorted(k for k in OmegaConf.missing_keys(cfg) if "." not in k)
        if missing:
            from readaptir.config import ConfigError

            raise ConfigError(f"readaptir adapt needs {' and '.join(f'{k}=...' for k in missing)}")
        run_adapt(OmegaConf.to_container(cfg, resolve=True))


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def _evaluate(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    from readaptir.grid.compare import run_evaluate
    from readaptir.grid.sweep import command_errors

    with command_errors():
        if OmegaConf.is_missing(cfg, "retriever"):
            from readaptir.config import ConfigError

            raise ConfigError("readaptir evaluate needs retriever=<hub id or folder>")
        run_evaluate(OmegaConf.to_container(cfg, resolve=True))


def dataset_path_args(argv: list[str]) -> list[str]:
    """``dataset=<folder>`` (a BeIR copy, not a name of conf/dataset/) becomes ``+data_path=<folder>``."""
    out = []
    for a in argv:
        value = a.split("=", 1)[1] if a.startswith("dataset=") else None
        if value and (
            value.startswith(("/", "./", "../", "~")) or (Path(value).expanduser() / "corpus.jsonl").is_file()
        ):
            a = f"+data_path={value}"
        out.append(a)
    return out


SUBCOMMANDS = {"adapt": _adapt, "evaluate": _evaluate}
_LAUNCHER_ARG = re.compile(r"^[+~]{0,2}hydra/launcher(=|$)")


def plan_requested(argv: list[str]) -> bool:
    return any(_PLAN_ARG.match(a) for a in argv)


def shadowed_configs(argv: list[str]) -> list[str]:
    """Configs in ``--config-dir``/``-cd`` whose names the packaged ones take (Hydra would use those)."""
    from pathlib import Path

    from readaptir.config import CONF_DIR

    dirs = [b for a, b in zip(argv, argv[1:], strict=False) if a in ("--config-dir", "-cd")]
    dirs += [a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")]
    return [f"readaptir: warning: {f} is ignored: the packaged {f.relative_to(d)} comes first in Hydra's search "
            f"path; give it a new name (e.g. {f.parent.name}=my-{f.stem})"
            for d in map(Path, dirs) for f in sorted(d.glob("*/*.yaml")) if (CONF_DIR / f.relative_to(d)).is_file()]  # fmt: skip


def main() -> None:
    """Run the Hydra app; in plan mode keep its job folders out of the user's tree and print the total."""
    for line in shadowed_configs(sys.argv[1:]):
        print(line, file=sys.stderr)
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:  # `readaptir adapt ...`: its own Hydra entry
        sub = SUBCOMMANDS[sys.argv.pop(1)]
        sys.argv = dataset_path_args(sys.argv)
        sub()
        return
    if not plan_requested(sys.argv[1:]):
        _app()
        return
    from readaptir.grid import plan

    args = [a for a in sys.argv[1:] if a not in ("-m", "--multirun") and not _PLAN_ARG.match(a)]
    scratch = tempfile.mkdtemp(prefix="readaptir-plan-")
    # A plan runs here, in this process: a cluster launcher would submit one job per cell to print it (and
    # the sweep's total would never be seen), so its override is replaced by the basic launcher.
    sys.argv = [a for a in sys.argv if not _LAUNCHER_ARG.match(a)]
    # Appended last, so they win over the user's own hydra.*.dir overrides: a plan writes no job folder.
    sys.argv += [
        "hydra/launcher=basic",
        f"hydra.run.dir={scratch}/run",
        f"hydra.sweep.dir={scratch}/sweep",
        "hydra.output_subdir=null",
    ]
    try:
        _app()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if len(plan.PLANNED) > 1:
        print("\n[plan total] the sweep, each shared product counted once:")
        print(plan.summarize(plan.PLANNED, indent="    "))
        print('\n[plan stages] on a cluster, the shared products first (README "Running the grid on SLURM"):')
        print("\n".join(plan.stage_lines(plan.PLANNED, args, indent="    ")))


if __name__ == "__main__":
    main()
