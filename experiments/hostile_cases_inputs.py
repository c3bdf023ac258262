"""Hostile names, paths, config values and data inputs for experiments/hostile.py (classes ``input-*``).

Each case runs ``run.py`` inside a sandbox folder of its own (also its working directory):

    box/a/data          a copy of the campaign's data (mutated by the case)
    box/a/b/cache       READAPTIR_CACHE (paths.cache_dir and paths.results_dir)

and the job folder outside it. Every file or folder that appears in the sandbox outside the data and
the cache is a write outside the roots: the verdict is ``insecure`` whatever else happened (a name like
``../../../x`` resolved from the cache or data folder lands inside the sandbox). Otherwise a case expects
either one clear ``readaptir: error:`` line naming what to fix, given before any product is built, or the
reference run's numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hostile_cases import FAST, Ctx, Verdict, case, clear_error, record, same_numbers

LONG = "n" * 128


def _tree(root: Path, skip: tuple[Path, ...]) -> set[str]:
    """Every path under ``root`` (links not followed), without the folders in ``skip``."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        found.update(str(here / n) for n in (*dirnames, *filenames))
    return found


def _run(ctx: Ctx, overrides: list[str], mutate: Callable[[Path], None] | None = None,
         env: dict[str, str] | None = None, flags: tuple[str, ...] = ()) -> tuple[Verdict | None, object, dict | None, Path]:  # fmt: skip
    """Run one cell in a fresh sandbox → (``insecure`` verdict or None, process, job record, cache)."""
    ctx.n += 1
    box = ctx.root / "box" / str(ctx.n)
    data, cache, job = box / "a" / "data", box / "a" / "b" / "cache", ctx.root / "jobs" / str(ctx.n)
    shutil.copytree(ctx.data, data, symlinks=True)
    if mutate is not None:
        mutate(data / "scifact")
    cache.mkdir(parents=True)
    before = _tree(box, (data, cache))
    args = [sys.executable, str(ctx.repo / "run.py"), *flags, f"hydra.run.dir={job}", "dataset=scifact", *FAST,
            *overrides]  # fmt: skip
    full_env = {**os.environ, "READAPTIR_DATA": str(data), "READAPTIR_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": str(ctx.repo), **(env or {})}  # fmt: skip
    full_env.pop("WANDB_API_KEY", None)
    out = subprocess.run(args, env=full_env, cwd=box, capture_output=True, text=True, timeout=600)
    escaped = sorted(_tree(box, (data, cache)) - before)
    bad = ("insecure", f"wrote outside the roots: {escaped[:3]}") if escaped else None
    return bad, out, record(job), cache


def _refused(ctx: Ctx, overrides: list[str], *must: str, mutate: Callable[[Path], None] | None = None,
             env: dict[str, str] | None = None, flags: tuple[str, ...] = ()) -> Verdict:  # fmt: skip
    """One clear line naming ``must``, nothing written outside the roots, no product built."""
    bad, out, rec, cache = _run(ctx, overrides, mutate, env, flags)
    if bad is not None:
        return bad
    verdict = clear_error(out, rec, *must)
    built = sorted(p.parent.name for p in cache.rglob(".done"))
    if verdict[0] == "ok" and built:
        return "unclear error", f"refused only after building {built[:2]}: {verdict[1]}"
    return verdict


def _same(ctx: Ctx, overrides: list[str], mutate: Callable[[Path], None] | None = None) -> Verdict:
    """The reference run's numbers, nothing written outside the roots."""
    bad, out, rec, _ = _run(ctx, overrides, mutate)
    return bad or same_numbers(out, rec, ctx.ref["base"])


# ------------------------------------------------------------------------------- names that become paths
NAMES = [
    ("model.name=../../../escaped", "model.name"),
    ("dataset.name=../../../escaped", "dataset.name"),
    ("adapter.name=x/../../../../escaped", "adapter.name"),
    ("dataset.beir_name=../../escaped", "dataset.beir_name"),
    ("dataset.split=../../../../escaped", "dataset.split"),
    ("adapter.corpus=../escaped", "adapter.corpus"),
    ("dataset.knowledge_corpus=/tmp", "dataset.knowledge_corpus"),
    ("model.name=.hidden", "model.name"),
    (f"adapter.name={LONG}", "adapter.name"),  # valid alone, but its variant folder name would be too long
]
for _override, _key in NAMES:
    case("input-names", _override[:48])(lambda ctx, o=_override, k=_key: _refused(ctx, [o], k))


@case("input-names", "ablation=../escaped (a Hydra group)")
def _group(ctx: Ctx) -> Verdict:
    bad, out, rec, _ = _run(ctx, ["ablation=../escaped"])
    if bad is not None:
        return bad
    line = next((ln for ln in out.stderr.splitlines() if "Could not find 'ablation/../escaped'" in ln), None)
    return ("ok", line) if out.returncode and line else clear_error(out, rec, "ablation")


@case("input-names", "--config-dir model whose name climbs out")
def _config_dir(ctx: Ctx) -> Verdict:
    conf = ctx.root / "user-conf" / "model"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "evil.yaml").write_text("defaults:\n  - tiny-llama\n  - _self_\nname: ../../../escaped\n")
    return _refused(ctx, ["model=evil"], "model.name", flags=("--config-dir", str(conf.parent)))


@case("input-names", "model and dataset names of 128 characters")
def _long_names(ctx: Ctx) -> Verdict:
    return _same(ctx, [f"model.name={LONG}", f"dataset.name={LONG}"])


# ----------------------------------------------------------------------------------- environment roots
for _var, _value in (("READAPTIR_CACHE", ""), ("READAPTIR_CACHE", "  "), ("READAPTIR_DATA", "")):
    case("input-env", f"{_var}={_value!r}")(lambda ctx, v=_var, x=_value: _refused(ctx, [], v, env={v: x}))


# ------------------------------------------------------------------------- values checked before work
VALUES = [
    ("readapt.alpha=nan", "readapt.alpha"), ("readapt.beta=inf", "readapt.beta"),
    ("readapt.alpha_selection.grid=[nan]", "readapt.alpha_selection.grid"), ("train.seed=-1", "train.seed"),
    ("evaluate.k_values=[0,-3]", "evaluate.k_values"), ("evaluate.k_values=[]", "evaluate.k_values"),
    ('model.query_template="{0}"', "model.query_template"),
    ('model.passage_template="{text.__class__}"', "model.passage_template"),
    ('model.query_template="{query!r}"', "model.query_template"),
    ("model.pretrained=org/name@..", "model.pretrained"),
    ("readapt.alpha=true", "readapt.alpha"), ("train.batch_size=true", "train.batch_size"),
    ("++dataset.extra_metrics=[FOO@10]", "extra_metrics"), ("train.max_grad_norm=inf", "train.max_grad_norm"),
]  # fmt: skip
for _override, _key in VALUES:
    case("input-values", _override[:48])(lambda ctx, o=_override, k=_key: _refused(ctx, [o], k))


# ------------------------------------------------------------------------------------------ data files
def _rewrite(name: str, edit: Callable[[str], str]) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(edit((d / name).read_text()))


def _first_qrel(d: Path) -> list[str]:
    return (d / "qrels" / "test.tsv").read_text().splitlines()[1].split("\t")


def _as_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _as_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _link_to_text(path: Path) -> None:
    text = path.parent.parent / "notes.txt"
    text.write_text("a plain text file\n")
    path.unlink()
    path.symlink_to(text)


def _elsewhere(d: Path) -> None:
    target = d.parent.parent / "elsewhere"
    shutil.move(str(d), target)
    d.symlink_to(target)


QRELS = "qrels/test.tsv"
DATA = [
    ("doc _id null", _rewrite("corpus.jsonl", lambda t: t + '{"_id": null, "text": "x"}\n'), ("corpus.jsonl:", "'_id'")),
    ("passage title an object", _rewrite("corpus.jsonl", lambda t: t + '{"_id": "t", "title": {"a": 1}, "text": "x"}\n'),
     ("corpus.jsonl:", "'title'")),
    ("doc id with a space", _rewrite("corpus.jsonl", lambda t: t + '{"_id": "a b", "text": "x"}\n'), ("corpus.jsonl:", "'a b'")),
    ("doc id with U+2028", _rewrite("corpus.jsonl", lambda t: t + json.dumps({"_id": "a\u2028b", "text": "x"}) + "\n"),
     ("corpus.jsonl:",)),
    ("query id twice", _rewrite("queries.jsonl", lambda t: t + t.splitlines(keepends=True)[0]), ("queries.jsonl:", "also on line")),
    ("judged query with null text", lambda d: (d / "queries.jsonl").write_text("".join(
        json.dumps({**(r := json.loads(ln)), "text": None if r["_id"] == _first_qrel(d)[0] else r["text"]}) + "\n"
        for ln in (d / "queries.jsonl").read_text().splitlines())), ("queries.jsonl:", "'text' is null")),
    ("a pair graded twice differently", lambda d: _rewrite(QRELS, lambda t: t + "\t".join(_first_qrel(d)[:2]) + "\t0\n")(d),
     ("test.tsv:", "graded 0 here")),
    ("TREC-style 4-column qrels", _rewrite(QRELS, lambda t: "".join(
        f"{a}\t0\t{b}\t{c}\n" for a, b, c in (ln.split("\t") for ln in t.splitlines()[1:]))), ("test.tsv:", "3 fields")),
    ("qrels grade 0.5", _rewrite(QRELS, lambda t: t.replace("\t1\n", "\t0.5\n", 1)), ("test.tsv:", "not an integer")),
    ("corpus.jsonl is a folder", lambda d: _as_folder(d / "corpus.jsonl"), ("corpus.jsonl", "not a regular file")),
    ("corpus.jsonl is a FIFO", lambda d: _as_fifo(d / "corpus.jsonl"), ("corpus.jsonl", "not a regular file")),
    ("qrels/test.tsv is a folder", lambda d: _as_folder(d / QRELS), ("test.tsv", "not a regular file")),
    ("corpus.jsonl links to a non-JSON file", lambda d: _link_to_text(d / "corpus.jsonl"), ("corpus.jsonl:1",)),
    ("dataset folder symlinked elsewhere", _elsewhere, ("dataset.beir_name", "symlink")),
]  # fmt: skip
for _name, _mutate, _must in DATA:
    case("input-data", _name)(lambda ctx, m=_mutate, w=_must: _refused(ctx, [], *w, mutate=m))

SAME_DATA = [
    ("header-less qrels with 1.0 grades", _rewrite(QRELS, lambda t: "".join(
        f"{ln}.0\n" for ln in t.splitlines()[1:]))),
    ("BOM and CRLF in queries and qrels", lambda d: [(d / n).write_bytes(b"\xef\xbb\xbf" + (d / n).read_bytes().replace(
        b"\n", b"\r\n")) for n in ("queries.jsonl", QRELS)]),
    ("qrels for a query not in queries.jsonl", _rewrite(QRELS, lambda t: t + "ghost\tnowhere\t0\n")),
    ("unjudged query with an empty text", _rewrite("queries.jsonl", lambda t: t + '{"_id": "zz", "text": ""}\n')),
]  # fmt: skip
for _name, _mutate in SAME_DATA:
    case("input-data", _name)(lambda ctx, m=_mutate: _same(ctx, [], m))
