"""A cell's log: library noise filtered, real warnings kept, progress in the log file, no rank prefixes."""

from __future__ import annotations

import io
import logging
import time
import warnings

from tqdm import tqdm

from readaptir.logs import ProgressLog, main_logger, quiet_libraries

UNUSED = "LlamaModel LOAD REPORT from: /m\nKey | Status\nlm_head.weight | UNEXPECTED\n"
MISSING = "LlamaModel LOAD REPORT from: /m\nKey | Status\nlayers.0.q.weight | MISSING\nlm_head.weight | UNEXPECTED\n"


def test_quiet_libraries_keeps_what_matters(caplog):
    quiet_libraries()
    quiet_libraries()  # idempotent: filters are not stacked
    report = logging.getLogger("transformers.modeling_utils")
    assert sum(type(f).__name__ == "_UnusedKeysReport" for f in report.filters) == 1
    with caplog.at_level(logging.DEBUG):
        report.warning(UNUSED)  # a retriever loading a causal LM checkpoint: the LM head is not used
        report.warning(MISSING)  # weights the model needs but did not get: must show
        report.warning("something else")
        bm25s = logging.getLogger("bm25s")
        bm25s.setLevel(logging.DEBUG)  # what `import bm25s` does
        bm25s.debug("Building index from IDs objects")
        bm25s.warning("a real bm25s warning")
    text = caplog.text
    assert "MISSING" in text and "something else" in text and "a real bm25s warning" in text
    assert text.count("LOAD REPORT") == 1 and "Building index" not in text
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_libraries()
        warnings.warn_explicit(
            "deprecated in v6", FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils"
        )
        warnings.warn_explicit("ours", FutureWarning, "cell.py", 1, module="readaptir.grid.cell")
    assert [str(w.message) for w in seen] == ["ours"]


def test_main_logger_has_no_rank_prefix(caplog, monkeypatch):
    with caplog.at_level(logging.INFO):
        main_logger("readaptir.x").info("Training on %d passages", 5)
        monkeypatch.setenv("RANK", "1")
        main_logger("readaptir.x").info("not on rank 1")
    assert [r.getMessage() for r in caplog.records] == ["Training on 5 passages"]


def test_progress_log_writes_live_bars_into_the_log(caplog):
    with caplog.at_level(logging.INFO, logger="readaptir.logs"):
        with (
            tqdm(total=1000, desc="encode msmarco", unit="psg", file=io.StringIO()) as bar,
            ProgressLog(every_s=0.05),
        ):
            bar.update(250)
            time.sleep(0.3)
        hidden = tqdm(total=5, disable=True)  # other ranks' bars are disabled: never logged
        assert ProgressLog.log_bars() == 0
        hidden.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert lines and "encode msmarco" in lines[0] and "250/1000" in lines[0]


def test_a_log_line_never_lands_behind_a_progress_bar(monkeypatch):
    """The console (and a SLURM .err file) shared with a live bar: each log line starts a line of its own."""
    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    monkeypatch.setattr(root, "handlers", [handler])  # only this one is changed
    try:
        quiet_libraries()
        with tqdm(total=10, desc="encode", file=stream, mininterval=0) as bar:
            bar.update(3)
            logging.getLogger("readaptir.x").warning("Knowledge adapter: /cache/a")
        lines = stream.getvalue().replace("\r", "\n").splitlines()
        assert "[WARNING] Knowledge adapter: /cache/a" in lines, stream.getvalue()
    finally:
        root.removeHandler(handler)


def test_other_ranks_keep_only_warnings_on_the_console(monkeypatch):
    """Under torchrun every rank runs the app with Hydra's handlers: rank 1 must not repeat rank 0's lines."""
    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(root, "handlers", [handler])  # pytest's own handlers stay as they are
    level = root.level
    root.setLevel(logging.INFO)
    try:
        monkeypatch.setenv("RANK", "1")
        quiet_libraries()
        log = logging.getLogger("readaptir.y")
        log.info("Loading retriever")
        log.warning("a real problem")
        assert stream.getvalue().splitlines() == ["a real problem"]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
