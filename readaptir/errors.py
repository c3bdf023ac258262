"""The one base class for errors caused by bad input (config, data, model pairs), not by bugs, and the
one-line wording of a config value pydantic refused.

``run.py`` prints these as a single line naming the file, line or key and the fix, without a traceback.
"""

from typing import Any


class UserError(ValueError):
    """Bad input: the message names what is wrong and how to fix it, on one line."""


class StorageError(UserError):
    """The disk is full or a folder is not writable: the message names the folder and the fix."""


class NonFiniteError(FloatingPointError):
    """A NaN or infinite value about to be published (weights, embeddings, scores): nothing is stored."""


_UNION_TAGS = ("function-", "literal[", "float", "int", "str", "bool", "none", "tuple[", "list[", "dict[")


def _key(loc: tuple) -> str:
    """A config key from a validation location, without pydantic's union-member tags."""
    return ".".join(str(p) for p in loc if not str(p).startswith(_UNION_TAGS))


def config_line(err: Any, raw: Any = None) -> str:
    """The first error of a pydantic ``ValidationError`` as ``config key a.b=<value>: <what is allowed>``."""
    errors = err.errors()
    first = errors[0]
    key = _key(first["loc"])
    msg = first["msg"]
    union = [e for e in errors if _key(e["loc"]) == key]
    if len(union) > 1:  # a value of a union type (α: a number or "auto"): name every allowed form
        kinds = {"float": "a number", "int": "an integer", "bool": "true or false", "string": "a string"}
        forms = [f"one of {e['ctx']['expected']}" if "expected" in (e.get("ctx") or {})
                 else kinds.get(e["type"].split("_")[0], e["type"]) for e in union]  # fmt: skip
        return f"config key {key}={first.get('input')!r}: use {' or '.join(forms)}"
    if first["type"] == "missing":
        return f"config key {key} is missing; add it to the config or set +{key}=..."
    if first["type"] == "extra_forbidden":
        return f"config key {key} is not a known setting; remove it or check its spelling"
    ctx = first.get("ctx") or {}
    if "expected" in ctx:
        msg = f"use one of {ctx['expected']}"
    elif "ge" in ctx:
        msg = f"must be ≥ {ctx['ge']}"
    elif "gt" in ctx:
        msg = f"must be > {ctx['gt']}"
    elif "le" in ctx:
        msg = f"must be ≤ {ctx['le']}"
    elif "lt" in ctx:
        msg = f"must be < {ctx['lt']}"
    return f"config key {key}={first.get('input')!r}: {msg}"
