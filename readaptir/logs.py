"""What a cell's log says: its own lines and progress, not the libraries' noise.

- :func:`quiet_libraries` keeps out what no user can act on: transformers' load-report tables that only
  list checkpoint keys a model does not use (the LM head when a retriever loads a causal LM checkpoint;
  reports of missing or mismatched weights still show), deprecation FutureWarnings raised inside
  transformers, PEFT, accelerate or torch, and the INFO/DEBUG lines of bm25s, FAISS, httpx and
  sentence-transformers (bm25s sets its own logger to DEBUG when imported, so a level is not enough).
- :func:`main_logger` speaks on the main process only, without accelerate's ``[RANK 0]`` prefix; under a
  multi-process launch (torchrun) the other ranks' console and ``run.log`` handlers keep only warnings,
  so each INFO line appears once.
- A log line never lands behind a progress bar's fragment: the console handlers write it on a line of its
  own (on a terminal the bars are cleared and redrawn; in a file, a SLURM ``.err``, a newline ends the
  fragment first).
- :class:`ProgressLog` writes the state of every live progress bar into the log every few minutes, so
  ``run.log`` of a SLURM job shows progress during a stage that takes days (tqdm writes to the terminal).

    quiet_libraries()
    with ProgressLog(every_s=300):
        ...
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from contextlib import contextmanager

from readaptir.runtime import is_main

log = logging.getLogger(__name__)

NOISY_LOGGERS = ("bm25s", "faiss", "httpx", "sentence_transformers", "beir")
LOAD_REPORT_LOGGERS = (
    "transformers.modeling_utils",
    "transformers.modeling_layers",
    "transformers.integrations.peft",
)


class _AtLeast(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


class _UnusedKeysReport(logging.Filter):
    """Drops a load report whose only rows are UNEXPECTED keys (checkpoint weights the model does not use)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "LOAD REPORT" not in msg:
            return True
        return not ("UNEXPECTED" in msg and not any(s in msg for s in ("MISSING", "MISMATCH", "CONVERSION")))


def _add_once(logger: logging.Logger, flt: logging.Filter) -> None:
    if not any(type(f) is type(flt) for f in logger.filters):
        logger.addFilter(flt)


def quiet_libraries() -> None:
    """Install the filters above (idempotent)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
        _add_once(logging.getLogger(name), _AtLeast(logging.WARNING))
    for name in LOAD_REPORT_LOGGERS:
        _add_once(logging.getLogger(name), _UnusedKeysReport())
    warnings.filterwarnings(
        "ignore", category=FutureWarning, module=r"(transformers|peft|accelerate|torch)(\.|$)"
    )
    for handler in logging.getLogger().handlers:  # Hydra's console and run.log handlers
        if not is_main():  # under torchrun every rank runs the app; rank 0 says what happens
            _add_once(handler, _AtLeast(logging.WARNING))
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, _BarSafe):
            handler.__class__ = _bar_safe(type(handler))


class _BarSafe(logging.StreamHandler):
    """Writes each record on a line of its own when a progress bar is mid-line on the same stream or terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        stream = getattr(self, "stream", None)
        with tqdm.get_lock():
            bars = [
                b for b in list(getattr(tqdm, "_instances", ())) if not b.disable and _shares(b.fp, stream)
            ]
        if not bars:
            super().emit(record)
        elif _isatty(stream):
            with tqdm.external_write_mode(file=stream):  # clear the bars, write, redraw them
                super().emit(record)
        else:  # a file: a bar's last refresh left the line open
            for fp in {id(b.fp): b.fp for b in bars}.values():
                fp.write("\n")
            super().emit(record)


def hidden(hide: bool) -> dict[str, bool]:
    """tqdm keyword arguments that hide a bar when ``hide``, else none: an explicit ``disable=False``
    would override ``TQDM_DISABLE=1``, which tqdm applies only to arguments not given."""
    return {"disable": True} if hide else {}


def _bar_safe(cls: type) -> type:
    return type(f"BarSafe{cls.__name__}", (_BarSafe, cls), {})


def _isatty(stream) -> bool:  # noqa: ANN001 - any file-like object
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _shares(fp, stream) -> bool:  # noqa: ANN001
    """A bar writing to ``fp`` shows in ``stream``: the same object, or both on the terminal."""
    fp = getattr(fp, "_wrapped", fp)  # tqdm wraps sys.stderr
    return fp is stream or (_isatty(fp) and _isatty(stream))


class _MainOnly(logging.LoggerAdapter):
    def log(self, level, msg, *args, **kwargs):  # noqa: ANN001 - logging's own signature
        if is_main():
            kwargs.setdefault("stacklevel", 2)
            self.logger.log(level, msg, *args, **kwargs)


def main_logger(name: str) -> logging.LoggerAdapter:
    """A logger that speaks on the main process only (rank 0 under a launcher), with no rank prefix."""
    return _MainOnly(logging.getLogger(name), {})


class ProgressLog:
    """While open, log every live tqdm bar (its description, count, rate, ETA) every ``every_s`` seconds."""

    def __init__(self, every_s: float = 300.0) -> None:
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressLog:
        if self.every_s > 0 and is_main():
            self._thread = threading.Thread(target=self._run, name="readaptir-progress-log", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.log_bars()

    @staticmethod
    def log_bars() -> int:
        """Log each live, enabled bar once; returns how many were logged."""
        from tqdm import tqdm

        with tqdm.get_lock():
            bars = [b for b in list(getattr(tqdm, "_instances", ())) if not b.disable]
        for bar in bars:
            log.info("progress: %s", str(bar).strip())
        return len(bars)


@contextmanager
def timed(timings: dict[str, float], stage: str):
    """Record the seconds a ``with`` block takes as ``timings[stage]`` (a cell's stage timings)."""
    t0 = time.time()
    try:
        yield
    finally:
        timings[stage] = round(time.time() - t0, 3)
