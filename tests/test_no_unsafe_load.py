"""No code from files: nothing in the package, the experiments or run.py can unpickle or evaluate what it reads.

The cache is a shared folder on a cluster: whoever can write a file there would run code as everyone who
reads it if any reader unpickled it (``torch.load(weights_only=False)``, ``pickle.load``,
``np.load(allow_pickle=True)``) or evaluated it (``eval``/``exec``, ``trust_remote_code=True``). This
check reads the source with :mod:`ast` and fails the build on any such call.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
EVALS = {"eval", "exec", "execfile"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _call_problem(call: ast.Call) -> str | None:
    name = _dotted(call.func)
    head, _, last = name.rpartition(".")
    weights_only = _kw(call, "weights_only")
    if weights_only is not None and not _is_const(weights_only, True):
        return "weights_only other than True (unpickles arbitrary objects)"
    if last == "load" and head.split(".")[-1] == "torch" and not _is_const(weights_only, True):
        return "torch.load without weights_only=True"
    if head.split(".")[0] in PICKLERS or last in {"Unpickler", "read_pickle", "unsafe_load", "full_load"}:
        return f"{name} (unpickles or evaluates file content)"
    allow_pickle = _kw(call, "allow_pickle")
    if last == "load" and head in {"np", "numpy"} and allow_pickle and not _is_const(allow_pickle, False):
        return "np.load with allow_pickle other than False"
    if last == "load" and head == "yaml" and "Safe" not in _dotted(_kw(call, "Loader") or ast.Name("")):
        return "yaml.load without a SafeLoader"
    if isinstance(call.func, ast.Name) and call.func.id in EVALS:
        return f"{call.func.id}() runs code"
    if _kw(call, "trust_remote_code") is not None and not _is_const(_kw(call, "trust_remote_code"), False):
        return "trust_remote_code (runs code shipped with a model folder)"
    return None


def unsafe_calls(source: str, filename: str = "<string>") -> list[str]:
    """``file:line: what`` for every call or import in ``source`` that could run code read from a file."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        why = None
        if isinstance(node, ast.Call):
            why = _call_problem(node)
        elif isinstance(node, ast.Import):
            why = next((f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLERS), None)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLERS:
            why = f"from {node.module} import ..."
        if why:
            found.append(f"{filename}:{node.lineno}: {why}")
    return found


def _sources() -> list[Path]:
    files = [
        ROOT / "run.py",
        *sorted((ROOT / "readaptir").rglob("*.py")),
        *sorted((ROOT / "experiments").rglob("*.py")),
    ]
    return [f for f in files if f.is_file()]


def test_no_unsafe_load_in_the_package_experiments_and_run_py():
    sources = _sources()
    assert len(sources) > 50 and ROOT / "readaptir" / "train" / "checkpoint.py" in sources
    found = [
        p for f in sources for p in unsafe_calls(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))
    ]
    assert not found, "code that could run what a file holds:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        "torch.load(p, weights_only=False)",
        "torch.load(p)",
        "torch.load(p, map_location='cpu')",
        "import torch as t\nt.serialization.torch.load(p)",
        "x = load(p, weights_only=flag)",
        "pickle.load(f)",
        "pickle.loads(b)",
        "import pickle",
        "from pickle import loads",
        "import dill",
        "joblib.load(p)",
        "pd.read_pickle(p)",
        "np.load(p, allow_pickle=True)",
        "numpy.load(p, allow_pickle=flag)",
        "yaml.load(text)",
        "yaml.unsafe_load(text)",
        "eval(text)",
        "exec(code)",
        "AutoModel.from_pretrained(folder, trust_remote_code=True)",
    ],
)
def test_the_check_finds_a_planted_unsafe_call(snippet):
    src = "def f(p, f, b, text, code, folder, flag):\n    " + snippet.replace("\n", "\n    ")
    assert unsafe_calls(src), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "torch.load(p, map_location='cpu', weights_only=True)",
        "np.load(p)",
        "np.load(p, allow_pickle=False)",
        "model.eval()",
        "yaml.load(text, Loader=yaml.SafeLoader)",
        "json.loads(text)",
        "safetensors.torch.load_file(p)",
        "AutoModel.from_pretrained(folder, trust_remote_code=False)",
    ],
)
def test_the_check_lets_safe_calls_pass(snippet):
    assert not unsafe_calls(f"def f(p, text, folder):\n    {snippet}"), snippet


def test_a_planted_file_fails_the_build(tmp_path):
    """The scan over real files reports the file and line of a planted call."""
    bad = tmp_path / "planted.py"
    bad.write_text("import torch\n\n\ndef resume(p):\n    return torch.load(p, weights_only=False)\n")
    assert unsafe_calls(bad.read_text(), "planted.py") == [
        "planted.py:5: weights_only other than True (unpickles arbitrary objects)"
    ]
