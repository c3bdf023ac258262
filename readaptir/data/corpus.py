"""Any corpus as a BeIR ``corpus.jsonl``: the one form every later stage reads (token cache, adapter, index).

``readaptir adapt corpus=<source>`` learns a corpus without queries or judgments. The source may be

- a BeIR folder (``corpus.jsonl`` inside) or a ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` / ``.parquet``
  file, or a folder of such files: rows with a text field (and optionally title and id fields);
- a folder of ``.txt`` / ``.md`` files: one passage per file, its id the path inside the folder;
- ``hf:<dataset>[:<config>]``: a ``datasets`` dataset (the ``split`` of :class:`CorpusFields`).

Field names are mapped by :class:`CorpusFields` (``corpus_fields.text=body`` ...). Passages whose text is
empty, shorter than ``min_chars`` or longer than ``max_chars`` are dropped, and so are exact repeats of an
earlier passage's title and text (``dedup=false`` keeps them: the grid's BeIR corpora are used whole); the
counts come back (:class:`CorpusCounts`). Bad input is one line
naming the file (and row) and the key to set.

    counts = write_corpus("my_docs/", CorpusFields(), out_dir)   # out_dir/corpus.jsonl
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import xxhash
from tqdm.auto import tqdm

from readaptir.data.beir import DataError, iter_jsonl
from readaptir.fs import atomic_write_lines

TEXT_SUFFIXES = (".txt", ".md")
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class CorpusFields:
    """How rows map to passages (``corpus_fields.*`` keys of ``readaptir adapt``) and what is kept."""

    text: str = "text"
    title: str | None = "title"  # absent from a row: an empty title
    id: str | None = "_id"  # absent from a row: its position (``<file>:<row>``)
    split: str = "train"  # of a ``hf:`` dataset
    min_chars: int = 1  # shorter passages (title + text) are dropped
    max_chars: int | None = None  # longer ones too (None: no limit)
    dedup: bool = True  # drop exact repeats of an earlier passage (false: every row kept, as the grid does)

    def __post_init__(self) -> None:
        """A bad value is refused here (``ValueError`` naming the key), not as a traceback mid-corpus."""
        for key in ("text", "title", "id", "split"):
            value = getattr(self, key)
            if not (isinstance(value, str) and value) and not (value is None and key in ("title", "id")):
                none = " (or null: none)" if key in ("title", "id") else ""
                raise ValueError(f"corpus_fields.{key}={value!r}: give a field name{none}")
        lo, hi = self.min_chars, self.max_chars
        if isinstance(lo, bool) or not isinstance(lo, int) or lo < 0:
            raise ValueError(f"corpus_fields.min_chars={lo!r}: give a whole number >= 0")
        if hi is not None and (isinstance(hi, bool) or not isinstance(hi, int) or hi < max(lo, 1)):
            raise ValueError(f"corpus_fields.max_chars={hi!r}: give null or a whole number >= "
                             f"corpus_fields.min_chars={lo} (and >= 1)")  # fmt: skip
        if not isinstance(self.dedup, bool):
            raise ValueError(f"corpus_fields.dedup={self.dedup!r}: give true or false")


@dataclass
class CorpusCounts:
    """What reading the corpus kept and dropped, reported to the user and stored beside the corpus."""

    read: int = 0
    empty: int = 0
    too_short: int = 0
    too_long: int = 0
    duplicates: int = 0
    kept: int = 0

    def line(self) -> str:
        return (f"{self.kept:,} passages kept of {self.read:,} read ({self.empty:,} empty, {self.too_short:,} "
                f"too short, {self.too_long:,} too long, {self.duplicates:,} duplicates dropped)")  # fmt: skip


def _row_fields(row: dict, fields: CorpusFields, where: str) -> tuple[str | None, str, str]:
    if fields.text not in row:
        raise DataError(
            f"{where}: no field {fields.text!r} (fields: {sorted(map(str, row))}); set corpus_fields.text=<field> "
            "to the one holding the passage text"
        )
    for key in (fields.text, fields.title, fields.id):
        if key and isinstance(row.get(key), list | dict):  # its repr would be learned as text
            raise DataError(f"{where}: field {key!r} holds a {type(row[key]).__name__}, not text; point "
                            f"corpus_fields.{_key_of(fields, key)}=<field> at a text field")  # fmt: skip
        if key and isinstance(row.get(key), bytes):  # a binary column: its repr "b'...'" is no text
            try:
                row = {**row, key: row[key].decode("utf-8")}
            except UnicodeDecodeError:
                raise DataError(f"{where}: field {key!r} is not valid UTF-8; re-encode it as UTF-8") from None
    title = row.get(fields.title) if fields.title else None
    doc_id = row.get(fields.id) if fields.id else None
    return (None if doc_id is None else str(doc_id)), str(title or ""), str(row[fields.text] or "")


def _key_of(fields: CorpusFields, name: str) -> str:
    return next(k for k in ("text", "title", "id") if getattr(fields, k) == name)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    for lineno, row in iter_jsonl(path):
        yield f"{path}:{lineno}", row


def _json_rows(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(
            f"{path}: not valid UTF-8 JSON ({e}); a list of objects (or JSONL) is needed"
        ) from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: a JSON list of objects is needed (or one object per line in a .jsonl file)")
    for i, row in enumerate(data):
        yield f"{path}[{i}]", row


def _csv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a long passage is no error (default 128 KiB)
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a BOM is not part of the first header
        tsv = path.suffix.lower() == ".tsv"  # TSV has no quoting: a passage's quote is text
        reader = csv.DictReader(
            f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
        )
        try:
            for row in reader:
                yield f"{path}:{reader.line_num}", row
        except UnicodeDecodeError:
            raise DataError(f"{path}: not valid UTF-8 (after line {reader.line_num}); re-encode the file "
                            "as UTF-8") from None  # fmt: skip
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e}); fix that row") from None


def _parquet_rows(path: Path, fields: CorpusFields) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'readaptir[corpora]'") from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError ... for a broken file
        raise DataError(f"{path}: not a readable Parquet file ({e.__class__.__name__}: {e}); "
                        "rewrite it or convert it to JSONL") from None  # fmt: skip
    names = pf.schema_arrow.names
    if fields.text not in names:
        raise DataError(
            f"{path}: no column {fields.text!r} (columns: {names}); set corpus_fields.text=<column>"
        )
    wanted = [c for c in (fields.id, fields.title, fields.text) if c and c in names]
    row_no = 0
    for batch in pf.iter_batches(columns=wanted):
        for row in batch.to_pylist():
            yield f"{path} row {row_no}", row
            row_no += 1


def _hf_rows(source: str, fields: CorpusFields) -> Iterator[tuple[str, dict]]:
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"corpus={source}: needs the datasets package: pip install 'readaptir[corpora]'"
        ) from e
    name, _, config = source[len(HF_PREFIX) :].partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=fields.split)
    except Exception as e:  # noqa: BLE001 - datasets raises many classes for "cannot load"
        raise DataError(
            f"corpus={source}: cannot load split {fields.split!r} ({e.__class__.__name__}: {e})"
        ) from e
    if fields.text not in ds.column_names:
        raise DataError(f"corpus={source}: no column {fields.text!r} (columns: {ds.column_names}); "
                        "set corpus_fields.text=<column>")  # fmt: skip
    for i, row in enumerate(ds):
        yield f"{source} row {i}", row


def _table_rows(path: Path, fields: CorpusFields) -> Iterator[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path)
    if suffix == ".json":
        return _json_rows(path)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path)
    return _parquet_rows(path, fields)


def iter_passages(source: str | os.PathLike, fields: CorpusFields) -> Iterator[tuple[str, str, str]]:
    """``(doc id, title, text)`` of every passage of ``source``, before filtering (see the module doc)."""
    if str(source).startswith(HF_PREFIX):
        rows = _hf_rows(str(source), fields)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(
                f"corpus={source}: no such file or folder (or use hf:<dataset> for a Hub dataset)"
            )
        if path.is_dir() and (path / "corpus.jsonl").is_file():  # a BeIR folder
            path = path / "corpus.jsonl"
        if path.is_file():
            if path.suffix.lower() not in TABLE_SUFFIXES:
                raise DataError(f"corpus={source}: a {path.suffix or 'suffix-less'} file; use one of "
                                f"{', '.join(TABLE_SUFFIXES)} or a folder of .txt/.md files")  # fmt: skip
            rows = _table_rows(path, fields)
        else:
            yield from _folder_passages(path, fields)
            return
    for where, row in rows:
        doc_id, title, text = _row_fields(row, fields, where)
        yield (doc_id if doc_id is not None else where), title, text


def _folder_passages(root: Path, fields: CorpusFields) -> Iterator[tuple[str, str, str]]:
    visible = (p for p in root.rglob("*") if not any(n.startswith(".") for n in p.relative_to(root).parts))
    files = sorted(p for p in visible if p.is_file())  # no .git/, .ipynb_checkpoints/, hidden files
    # A BeIR folder inside: its corpus.jsonl only (its queries are no passages, its qrels no table).
    beir = {p.parent for p in files if p.name == "corpus.jsonl"}
    files = [p for p in files if (p.parent in beir and p.name == "corpus.jsonl") or not beir & set(p.parents)]
    texts = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]
    tables = [p for p in files if p.suffix.lower() in TABLE_SUFFIXES]
    if not texts and not tables:
        raise DataError(f"corpus={root}: no .txt/.md files and no {'/'.join(TABLE_SUFFIXES)} files in this "
                        "folder; put one passage per .txt file there (or point corpus= at a data file)")  # fmt: skip
    for p in texts:
        try:
            text = p.read_text(encoding="utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            raise DataError(f"{p}: not valid UTF-8; re-encode the file as UTF-8") from None
        yield p.relative_to(root).with_suffix("").as_posix(), "", text
    for p in tables:
        for where, row in _table_rows(p, fields):
            doc_id, title, text = _row_fields(row, fields, where)
            yield (doc_id if doc_id is not None else where), title, text


def write_corpus(source: str | os.PathLike, fields: CorpusFields, out_dir: str | os.PathLike) -> CorpusCounts:
    """Read, filter and deduplicate ``source`` into ``out_dir/corpus.jsonl`` (+ ``counts.json``).

    Passage text is kept as read (the training text is ``title + " " + text``, stripped, as for BeIR);
    repeated ids get ``#2``, ``#3`` ... so every row keeps a unique id. An empty result is refused.
    """
    counts, seen_text, seen_ids = CorpusCounts(), set(), set()

    def rows() -> Iterator[str]:
        for doc_id, title, text in tqdm(iter_passages(source, fields), desc="read corpus", unit="passage"):
            counts.read += 1
            full = f"{title} {text}".strip()
            if not full:
                counts.empty += 1
                continue
            if len(full) < fields.min_chars:
                counts.too_short += 1
                continue
            if fields.max_chars is not None and len(full) > fields.max_chars:
                counts.too_long += 1
                continue
            digest = xxhash.xxh3_128_intdigest(f"{title.strip()}\0{text.strip()}".encode())
            if fields.dedup and digest in seen_text:
                counts.duplicates += 1
                continue
            seen_text.add(digest)
            # The index and run files need single printable words: "my notes/a b.txt" gives "my_notes/a_b".
            doc_id = "".join(c if c.isprintable() and not c.isspace() else "_" for c in doc_id) or "_"
            unique, n = doc_id, 1
            while unique in seen_ids:
                n += 1
                unique = f"{doc_id}#{n}"
            seen_ids.add(unique)
            counts.kept += 1
            yield json.dumps({"_id": unique, "title": title, "text": text}, ensure_ascii=False) + "\n"

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_lines(out / "corpus.jsonl", rows())
    if not counts.kept:
        raise DataError(f"corpus={source}: no passage left ({counts.line()}); "
                        "check the folder or the corpus_fields.* mapping and min_chars/max_chars")  # fmt: skip
    (out / "counts.json").write_text(json.dumps({**asdict(counts), "fields": asdict(fields)}, indent=2))
    return counts
