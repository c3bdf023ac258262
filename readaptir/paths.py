"""The one way a config value becomes a path: names have a pattern, roots are not empty, results stay inside.

A model, dataset, adapter or split name from a config (or the command line) becomes a folder of the results
store, the data folder or the cache. Unchecked, ``model.name=../../x`` writes outside the store and an empty
``READAPTIR_CACHE`` puts the store at ``/results``. Every such path is built by :func:`confined`:

    NAME_PATTERN   letters, digits, ``.``, ``_``, ``-``; not empty, no leading dot, at most 128 characters
    root_dir(value, key)              the root a config value names: refused when empty (one line naming the key)
    confined(root, *names, key=..)    root / name / ...: each name matches the pattern, the result resolves
                                      inside the root (a symlinked root is followed, then compared)
    env_root(var, default)            a folder from an environment variable: set but empty is refused

Hydra builds its job folders (``hydra.run.dir``, ``hydra.sweep.subdir``) from the same names before the
config is validated; they go through the ``safe_name`` resolver (:func:`safe_name`, registered on import),
so a bad name is refused inside a job folder that stays where it belongs.

A refusal is a :class:`PathError` (a :class:`~readaptir.errors.UserError`): one line, no traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from readaptir.errors import UserError

NAME_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
NAME_RULE = "letters, digits, '.', '_', '-', not starting with a dot, 1-128 characters"


class PathError(UserError):
    """A config value that would make a path outside its root, or an empty root."""


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a path component (None when it can)."""
    if not isinstance(value, str):
        return f"a name must be a string, not {type(value).__name__}"
    if not value:
        return "empty; give a name"
    if _NAME.fullmatch(value) is None:
        return f"not a valid name (use {NAME_RULE})"
    return None


def check_name(value: object, key: str) -> str:
    """``value`` when it is a valid name, else one :class:`PathError` line naming ``key``."""
    problem = name_problem(value)
    if problem is not None:
        raise PathError(f"config key {key}={value!r}: {problem}")
    return value  # type: ignore[return-value]


def root_dir(value: str | os.PathLike, key: str) -> Path:
    """The folder a config value names (``~`` expanded, made absolute); empty is refused."""
    if not str(value).strip():
        what = "option" if key.startswith("-") else "config key"
        raise PathError(f"{what} {key}={str(value)!r}: empty; give a folder (an environment variable "
                        "that is set but empty, e.g. READAPTIR_CACHE=, gives this: unset it or set it)")  # fmt: skip
    return Path(value).expanduser().absolute()


def confined(root: str | os.PathLike, *names: str, key: str = "name", root_key: str = "root") -> Path:
    """``root / names[0] / names[1] ...`` after checking every name, proven to resolve inside ``root``.

    ``key`` names the config key(s) the names came from, for the refusal line (e.g.
    ``"model.name/dataset.name"``), ``root_key`` the one the root came from (e.g. ``"paths.data_dir"``).
    """
    base = root_dir(root, root_key)
    for name in names:
        check_name(name, key)
    path = base.joinpath(*names)
    real_base = base.resolve()
    real = path.resolve()
    if real != real_base and real_base not in real.parents:
        raise PathError(f"config key {key}={'/'.join(names)!r}: {real} is outside {real_base}; a symlink "
                        "inside it points elsewhere, remove it")  # fmt: skip
    return path


def env_root(var: str, default: str) -> Path:
    """The folder in environment variable ``var`` (``default`` when unset); set but empty is refused."""
    value = os.environ.get(var)
    if value is None:
        value = default
    elif not value.strip():
        raise PathError(f"environment variable {var} is set but empty; unset it (default {default!r}) "
                        "or set it to a folder")  # fmt: skip
    return Path(value).expanduser().absolute()


def safe_name(value: object) -> str:
    """``value`` as a folder name for Hydra's job folders: characters outside the pattern and a leading dot
    become ``_`` (the cell's validation then refuses the real value in one line). At most 100 characters:
    the run folder joins two names behind the time, and two valid 128-character names made 266 bytes,
    over the file system's 255 ("File name too long" before the cell ran)."""
    text = re.sub(r"[^A-Za-z0-9._-]", "_", str(value))[:100]
    return "_" + text[1:] if not text or text.startswith(".") else text


try:  # the bare GPU image (experiments/bench_gpu.py) has no omegaconf, and nothing there resolves configs
    from omegaconf import OmegaConf
except ImportError:
    pass
else:
    OmegaConf.register_new_resolver("safe_name", safe_name, replace=True)
