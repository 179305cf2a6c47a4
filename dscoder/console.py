"""What commands print besides their results: progress lines and bars on stderr, one switch
(`-q`) that silences ours and the libraries', and the libraries' own chatter (transformers' load
reports and long-sequence warnings) kept from the user either way."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("dscoder")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup(quiet: bool) -> None:
    """Progress and skip counts go to stderr as plain lines (only warnings with `quiet`);
    results go to stdout. The environment variables reach libraries imported later and
    worker processes (Ray, torchrun)."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # already imported (a second command in one process)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        if quiet:
            hf_logging.disable_progress_bar()


def quiet() -> bool:
    return not log.isEnabledFor(logging.INFO)


def progress(iterable=None, disable: bool = False, **kwargs):
    """A tqdm progress bar on stderr, silent under `-q`."""
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, disable=disable or quiet(), **kwargs)
