"""BeIR datasets on disk: locating/downloading, streaming corpus reads, queries and qrels.

Layout: ``<root>/corpus.jsonl`` (``_id``, ``title``, ``text``), ``<root>/queries.jsonl`` (``_id``, ``text``)
and ``<root>/qrels/<split>.tsv`` (header, then query-id, corpus-id, score). MS-MARCO has 8.84M passages,
so the corpus is only ever streamed (:func:`iter_corpus`). A missing dataset is fetched from the Hub's
BeIR copies or BeIR's official zip (:mod:`readaptir.data.fetch`). Bad input is refused with one line naming the
file and line (:class:`DataError`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from readaptir.data.fetch import FetchError, fetch_dataset
from readaptir.errors import UserError
from readaptir.paths import confined, root_dir

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parents[1] / "resources"


class DataError(UserError):
    """Malformed or missing dataset input; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class Passage:
    doc_id: str
    title: str
    text: str


def dataset_dir(
    beir_name: str, data_dir: str | os.PathLike, builtin: bool = False, key: str = "dataset.beir_name"
) -> Path:
    """Folder of a BeIR dataset: the package's own for builtin ones (the toy demo set), else data_dir/name
    (``beir_name`` a plain name, :data:`readaptir.paths.NAME_PATTERN`; ``key`` names it in a refusal)."""
    if builtin:
        return confined(RESOURCES, beir_name, key=key)
    return confined(
        root_dir(data_dir, "paths.data_dir").resolve(), beir_name, key=key, root_key="paths.data_dir"
    )


def ensure_dataset(
    beir_name: str,
    data_dir: str | os.PathLike,
    url: str | None,
    builtin: bool = False,
    source: str = "auto",
) -> Path:
    """Return the dataset folder; when it is missing, fetch it from ``source`` (``dataset.source``: the
    Hub's BeIR copies or the zip at ``url``, :mod:`readaptir.data.fetch`). A folder already there always
    wins, with no network call."""
    root = dataset_dir(beir_name, data_dir, builtin)
    if (root / "corpus.jsonl").is_file():
        return root
    if os.path.lexists(root / "corpus.jsonl"):  # a folder, a FIFO, a dangling link: no download over it
        raise DataError(f"{root / 'corpus.jsonl'}: not a regular file; replace it with the corpus file")
    if builtin:
        raise DataError(f"dataset {beir_name!r}: {root}/corpus.jsonl not found (a builtin dataset ships with "
                        "the package: reinstall readaptir)")  # fmt: skip
    root.parent.mkdir(parents=True, exist_ok=True)
    log.info("Fetching BeIR %s into %s (dataset.source=%s)", beir_name, root, source)
    try:
        fetch_dataset(beir_name, root, url, source)
    except FetchError as e:
        raise DataError(str(e)) from None
    return root


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file; a byte that is not UTF-8 is refused naming file and line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from None
            yield lineno, line.removeprefix("\ufeff") if lineno == 1 else line


def iter_jsonl(path: Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of a JSONL file, blank lines skipped; broken JSON, a line that is not an
    object, or one without a ``required`` field is refused naming file and line."""
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: a JSON object per line is needed, got {type(row).__name__}")
        if any(k not in row for k in required):
            missing = [k for k in required if not isinstance(row, dict) or k not in row]
            raise DataError(f"{path}:{lineno}: missing field(s) {missing}; each line needs {list(required)}")
        yield lineno, row


def _id(row: dict, path: Path, lineno: int) -> str:
    """A passage or query id: a string or an integer without whitespace (``null`` would become "None"; a
    space or line break would split the id in the run files, which separate fields by whitespace)."""
    value = row["_id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(
            f"{path}:{lineno}: field '_id' is {json.dumps(value)}, not a string; give every line an id"
        )
    text = str(value)
    if not text or any(c.isspace() for c in text) or not text.isprintable():
        raise DataError(f"{path}:{lineno}: id {text!r} is empty or holds whitespace or control characters; "
                        "ids must be single printable words (run files separate fields by whitespace)")  # fmt: skip
    return text


def iter_corpus(
    root: str | os.PathLike,
    doc_ids: frozenset[str] | set[str] | None = None,
    exclude: frozenset[str] | set[str] | None = None,
) -> Iterator[Passage]:
    """Stream ``corpus.jsonl`` one passage at a time, optionally keeping only / dropping some doc ids."""
    path = Path(root) / "corpus.jsonl"
    for lineno, row in iter_jsonl(path, ("_id", "text")):
        doc_id = _id(row, path, lineno)
        if doc_ids is not None and doc_id not in doc_ids:
            continue
        if exclude is not None and doc_id in exclude:
            continue
        title = "" if row.get("title") is None else _text(row, "title", path, lineno)  # missing/null: none
        yield Passage(doc_id, title, _text(row, "text", path, lineno))


def iter_doc_ids(root: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """``(line number, doc id)`` of every passage of ``corpus.jsonl`` (what the dataset checks need)."""
    path = Path(root) / "corpus.jsonl"
    for lineno, row in iter_jsonl(path, ("_id", "text")):
        if row.get("title") is not None:  # checked with the ids, before any model is built
            _text(row, "title", path, lineno)
        yield lineno, _id(row, path, lineno)


def _text(row: dict, field: str, path: Path, lineno: int) -> str:
    """A text field that is a string (``null`` or a number would be encoded as "None" or "3")."""
    value = row[field]
    if not isinstance(value, str):
        raise DataError(f"{path}:{lineno}: field {field!r} is {json.dumps(value)}, not a string; give the text "
                        "(an empty string \"\" if there is none)")  # fmt: skip
    return value


def load_queries(root: str | os.PathLike, query_ids: set[str] | None = None) -> dict[str, str]:
    """``{query_id: text}``, restricted to ``query_ids`` when given (the eval split's queries). A query id
    that occurs twice is refused (which text is right cannot be known), naming both lines."""
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    path = Path(root) / "queries.jsonl"
    for lineno, row in iter_jsonl(path, ("_id", "text")):
        qid = _id(row, path, lineno)
        if qid in seen:
            raise DataError(f"{path}:{lineno}: query id {qid!r} also on line {seen[qid]}; make query ids "
                            "unique (only one of the texts would be evaluated)")  # fmt: skip
        seen[qid] = lineno
        if query_ids is None or qid in query_ids:
            out[qid] = _text(row, "text", path, lineno)
    return out


def _score(text: str, path: Path, lineno: int) -> int:
    """A relevance grade: an integer (``2`` or ``2.0``); ``0.9``, ``inf`` and ``nan`` are refused (as an
    integer ``0.9`` would silently become 0, not relevant)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{lineno}: score {text!r} is not a number") from None
    if not math.isfinite(value) or not value.is_integer():
        raise DataError(f"{path}:{lineno}: score {text!r} is not an integer relevance grade; BeIR qrels grade "
                        "with integers (0 = not relevant, 1, 2 ... = relevant): fix that line")  # fmt: skip
    return int(value)


def load_qrels(root: str | os.PathLike, split: str) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: score}}`` from ``qrels/<split>.tsv`` (its header line is skipped)."""
    path = confined(Path(root) / "qrels", f"{split}.tsv", key="dataset.split")
    if os.path.lexists(path) and not path.is_file():
        raise DataError(f"{path}: not a regular file; replace it with the split's qrels (set dataset.split)")
    if not path.is_file():
        have = sorted(p.stem for p in (Path(root) / "qrels").glob("*.tsv") if p.is_file())
        raise DataError(f"{path}: qrels split {split!r} not found (available: {have}); set dataset.split")
    qrels: dict[str, dict[str, int]] = {}
    where: dict[tuple[str, str], int] = {}
    for lineno, line in text_lines(path):
        row = line.rstrip("\r\n").split("\t")
        if lineno == 1 and not _is_number(row[-1]):
            continue  # header
        if not line.strip():
            continue
        if len(row) != 3:
            raise DataError(f"{path}:{lineno}: expected query-id<TAB>corpus-id<TAB>score (3 fields), got "
                            f"{len(row)}: {row!r}")  # fmt: skip
        score = _score(row[-1], path, lineno)
        old = qrels.setdefault(row[0], {}).get(row[1])
        if old is not None and old != score:
            raise DataError(f"{path}:{lineno}: query {row[0]!r} and doc {row[1]!r} graded {score} here and {old} on "
                            f"line {where[row[0], row[1]]}; keep one grade per pair")  # fmt: skip
        where.setdefault((row[0], row[1]), lineno)
        qrels[row[0]][row[1]] = score
    return qrels


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def passage_training_text(p: Passage) -> str:
    """Knowledge-adapter training text of a passage: ``title + " " + text``, stripped (docs/method.md §1)."""
    return f"{p.title} {p.text}".strip()
