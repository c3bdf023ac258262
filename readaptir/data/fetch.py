"""Fetching a BeIR dataset missing from ``paths.data_dir``: from the Hugging Face Hub or BeIR's official zips.

``dataset.source`` says where from: ``auto`` (default) tries the Hub, then the dataset's zip url (a
``file:`` url, a local mirror, first); ``hub`` or ``zip`` only that one; ``local`` never downloads. A
dataset already in ``paths.data_dir`` is never fetched and nothing touches the network
(:func:`readaptir.data.beir.ensure_dataset` looks there first).

- Hub: ``BeIR/<name>`` holds ``corpus.jsonl.gz`` and ``queries.jsonl.gz``, ``BeIR/<name>-qrels`` holds
  ``<split>.tsv`` (the layout of BeIR's own Hub copies). huggingface_hub shows progress, resumes into its
  cache and checks sizes; each LFS blob is then hashed against the sha256 it is named by.
- Zip: streamed with a progress bar into ``.<name>.zip.part`` beside the dataset, resumed by an HTTP
  ``Range`` request after an interruption, and checked against the md5 BeIR publishes for its zips.

Either is unpacked into a temporary folder renamed into place, so an interrupted or refused fetch never
leaves a half-written dataset. With ``HF_HUB_OFFLINE=1`` only the Hugging Face cache (and a ``file:`` url)
is read; a dataset in neither is refused in one line saying what to download and where to put it.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from huggingface_hub import snapshot_download
from tqdm.auto import tqdm

from readaptir.errors import UserError
from readaptir.fs import STORAGE_ERRNOS

log = logging.getLogger(__name__)

SOURCES = ("auto", "hub", "zip", "local")
BEIR_ZIP = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
HUB_ORG = "BeIR"
# md5 of BeIR's official zips, as published in the dataset table of the beir-cellar/beir README.
ZIP_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4", "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d", "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114", "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99", "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78", "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c", "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03", "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}  # fmt: skip
CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FetchError(UserError):
    """A dataset that could not be fetched; the message says what to download and where to put it."""


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) read now, not when huggingface_hub was imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text if len(text) <= 200 else text[:197] + "..."


def fetch_dataset(name: str, root: Path, url: str | None, source: str = "auto") -> None:
    """Put BeIR dataset ``name`` at ``root`` (absent) from ``source`` (:data:`SOURCES`), or refuse in one
    line naming what was tried, what to download and where to put it."""
    url = url or BEIR_ZIP.format(name=name)
    hint = (f"download {url} and unzip it into {root.parent} (or the Hub datasets {HUB_ORG}/{name} and "
            f"{HUB_ORG}/{name}-qrels), so that {root}/corpus.jsonl exists")  # fmt: skip
    if source not in SOURCES:
        raise FetchError(f"config key dataset.source={source!r}: use one of {list(SOURCES)}")
    if source == "local":
        raise FetchError(f"dataset {name!r}: {root}/corpus.jsonl not found and dataset.source=local "
                         f"downloads nothing; {hint}")  # fmt: skip
    local_zip = url.startswith("file:")
    tries = {"auto": ["zip", "hub"] if local_zip else ["hub", "zip"], "hub": ["hub"], "zip": ["zip"]}[source]
    reasons = []
    with fetch_lock(root.parent):
        if (root / "corpus.jsonl").is_file():  # another job fetched it while this one waited
            return
        # A file or a non-empty folder there (a partial unzip): the fetched copy could not be renamed onto it.
        if os.path.lexists(root) and not (root.is_dir() and not any(root.iterdir())):
            raise FetchError(f"dataset {name!r}: {root} exists without corpus.jsonl (a partial copy?) and is "
                             f"left as it is; move it away (or complete it) so that it can be fetched; {hint}")  # fmt: skip
        for how in tries:
            if offline() and how == "zip" and not local_zip:
                reasons.append("zip: HF_HUB_OFFLINE=1 forbids downloading")
                continue
            try:
                if how == "hub":
                    fetch_hub(name, root, cached_only=offline())
                else:
                    fetch_zip(name, root, url)
                return
            except FetchError as e:
                reasons.append(f"{how}: {e}")
            except OSError as e:  # a full disk or a read-only folder while writing: no other source helps
                if e.errno not in STORAGE_ERRNOS:
                    raise
                raise FetchError(f"dataset {name!r} ({how}): writing into {root.parent}: {STORAGE_ERRNOS[e.errno]}; "
                                 "free space (or fix the permissions) and run again (a partial download is "
                                 "kept and resumed)") from None  # fmt: skip
    raise FetchError(f"dataset {name!r}: {root}/corpus.jsonl not found ({'; '.join(reasons)}); {hint}")


@contextmanager
def fetch_lock(folder: Path) -> Iterator[None]:
    """One fetch at a time into ``folder`` (an advisory lock on the folder itself, so nothing is left
    behind): two jobs of a sweep missing the same dataset never append to one partial zip, and the second
    finds the first's copy."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another job fetching into %s", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def staging(root: Path) -> Iterator[Path]:
    """A temporary folder beside ``root``, renamed to ``root`` when the block ends without error (and
    removed, with whatever it holds, when it does not)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.") as tmp:
        out = Path(tmp) / root.name
        out.mkdir()
        yield out
        try:
            os.replace(out, root)
        except OSError:
            if not (root / "corpus.jsonl").is_file():  # not another job's finished copy: a real failure
                raise


def _hub_files(repo: str, patterns: list[str], cached_only: bool) -> Path:
    try:
        return Path(snapshot_download(repo, repo_type="dataset", allow_patterns=patterns,
                                      local_files_only=cached_only))  # fmt: skip
    # huggingface_hub raises httpx2 errors (not httpx's), Xet and entry errors outside HfHubHTTPError: all
    # of them mean "not from the Hub this time", the zip is the next try.
    except Exception as e:  # noqa: BLE001
        if cached_only:
            raise FetchError(f"{repo} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
                             "downloading it") from None  # fmt: skip
        raise FetchError(f"{repo}: {e.__class__.__name__}: {_one_line(e)}") from None


def verify_blob(path: Path) -> None:
    """Hash a file of the Hub cache against the sha256 its blob is named by (LFS files); a mismatch
    deletes the blob, so the next run downloads it again."""
    blob = path.resolve()
    if not _SHA256.fullmatch(blob.name):
        return
    digest = hashlib.sha256()
    with open(blob, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != blob.name:
        blob.unlink()
        raise FetchError(f"{path.name}: checksum mismatch (sha256 {digest.hexdigest()}, expected {blob.name}); "
                         "the corrupt copy was deleted, run again to download it anew")  # fmt: skip


def gunzip(src: Path, dst: Path) -> None:
    """Decompress ``src`` into ``dst`` with a progress bar over the compressed bytes."""
    try:
        with open(src, "rb") as raw, gzip.GzipFile(fileobj=raw) as z, open(dst, "wb") as out:
            with tqdm(total=src.stat().st_size, desc=f"unpack {dst.name}", unit="B", unit_scale=True) as bar:
                while chunk := z.read(CHUNK):
                    out.write(chunk)
                    bar.update(raw.tell() - bar.n)
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: damaged data (no LFS sha256 to catch it)
        if getattr(e, "errno", None) in STORAGE_ERRNOS:  # the disk, not the file: fetch_dataset says so
            raise
        raise FetchError(f"{src.name}: not a valid gzip file ({_one_line(e)})") from None


def fetch_hub(name: str, root: Path, cached_only: bool = False) -> None:
    """``BeIR/<name>`` + ``BeIR/<name>-qrels`` from the Hub (only from the Hugging Face cache when
    ``cached_only``, no network call), converted into the BeIR layout at ``root``."""
    docs = _hub_files(f"{HUB_ORG}/{name}", ["corpus.jsonl.gz", "queries.jsonl.gz"], cached_only)
    qrels = _hub_files(f"{HUB_ORG}/{name}-qrels", ["*.tsv"], cached_only)
    files = [docs / "corpus.jsonl.gz", docs / "queries.jsonl.gz"]
    splits = sorted(qrels.glob("*.tsv"))
    missing = [f"{HUB_ORG}/{name}/{p.name}" for p in files if not p.is_file()]
    if missing or not splits:
        if cached_only:  # an interrupted earlier download: the Hub has it, this machine's cache does not
            raise FetchError(f"the Hugging Face cache lacks {missing or [f'{HUB_ORG}/{name}-qrels/<split>.tsv']} "
                             "and HF_HUB_OFFLINE=1 forbids downloading it")  # fmt: skip
        raise FetchError(f"the Hub copy lacks {missing or [f'{HUB_ORG}/{name}-qrels/<split>.tsv']}")
    for path in [*files, *splits]:
        verify_blob(path)
    with staging(root) as out:
        for path in files:
            gunzip(path, out / path.stem)
        (out / "qrels").mkdir()
        for path in splits:
            shutil.copyfile(path, out / "qrels" / path.name)
        if not (out / "corpus.jsonl").stat().st_size:
            raise FetchError(f"{HUB_ORG}/{name}/corpus.jsonl.gz is empty")


def download(url: str, part: Path, desc: str) -> None:
    """Stream ``url`` onto ``part`` with a progress bar, continuing a partial ``part`` by a ``Range``
    request (from scratch when the server ignores it). An interruption keeps ``part`` for the next run."""
    if url.startswith("file:"):
        src = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        try:
            shutil.copyfile(src, part)
        except OSError as e:
            raise FetchError(f"{url}: {_one_line(e)}") from None
        return
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as r:
            if have and r.status_code == 416:  # the partial file is already whole
                return
            r.raise_for_status()
            if r.status_code != 206:
                have = 0
            size = int(r.headers.get("Content-Length") or 0)
            with (
                open(part, "ab" if have else "wb") as f,
                tqdm(total=have + size or None, initial=have, desc=desc, unit="B", unit_scale=True) as bar,
            ):
                for chunk in r.iter_bytes(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except httpx.HTTPError as e:
        kept = (
            f"; the {part.stat().st_size} bytes so far are kept in {part}, run again to resume"
            if part.is_file()
            else ""
        )
        raise FetchError(f"{url}: {_one_line(e)}{kept}") from None  # fmt: skip


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_zip(name: str, root: Path, url: str) -> None:
    """A BeIR zip (``<name>/corpus.jsonl`` ...) from ``url`` unpacked at ``root``; BeIR's own zips are
    checked against their published md5 (a mismatch deletes the download and is refused)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    part = root.parent / f".{name}.zip.part"
    download(url, part, f"download {name}")
    expected = ZIP_MD5.get(name) if url == BEIR_ZIP.format(name=name) else None
    if expected is not None and (got := md5sum(part)) != expected:
        part.unlink()
        raise FetchError(f"{url}: checksum mismatch (md5 {got}, BeIR publishes {expected}); the download "
                         "was deleted, run again (or fetch it from the Hub: dataset.source=hub)")  # fmt: skip
    with staging(root) as out:
        try:
            with zipfile.ZipFile(part) as z:
                z.extractall(out.parent / "unzipped")
        except OSError as e:  # a full disk is no fault of the zip: the (checked) download is kept
            if e.errno in STORAGE_ERRNOS:
                raise FetchError(f"unpacking {part} into {root.parent}: {STORAGE_ERRNOS[e.errno]}; free space "
                                 "(or fix the permissions) and run again, the download is kept") from None  # fmt: skip
            part.unlink()
            raise FetchError(f"{url}: not a valid zip ({_one_line(e)}); the download was deleted") from None
        except (zipfile.BadZipFile, zlib.error) as e:  # zlib.error: damaged compressed data
            part.unlink()
            raise FetchError(f"{url}: not a valid zip ({_one_line(e)}); the download was deleted") from None
        unpacked = out.parent / "unzipped" / name
        if not (unpacked / "corpus.jsonl").is_file():  # not kept: the next run would resume onto it
            part.unlink()
            unzipped = out.parent / "unzipped"
            top = sorted(p.name for p in unzipped.iterdir()) if unzipped.is_dir() else []
            raise FetchError(f"{url} does not contain {name}/corpus.jsonl (its top level: {top}); the download "
                             "was deleted")  # fmt: skip
        out.rmdir()
        unpacked.rename(out)
    part.unlink()
