"""Progress bars that suit where the code runs: a widget in JupyterLab, plain lines headless.

``tqdm.auto`` picks the widget bar inside any kernel, papermill's too; there nobody sees the
widget, the executed notebook keeps only its first frame ("0/300") and the book's pages would
need a widget renderer from a CDN. Under ``dslib run`` (DSLIB_RUN_DIR set) and in plain
Python without a terminal the bar is tqdm's text bar, each refresh written as one line at most
every ``HEADLESS_INTERVAL_S`` seconds: readable in run.log, the executed notebook and CI logs.
"""
from __future__ import annotations

import re
import sys
from typing import Any, TextIO

from dslib.env import headless

HEADLESS_INTERVAL_S = 10.0


# "[00:12<00:30, 4.2it/s" in a bar: the clock and rate, which change between equal states
_CLOCK = re.compile(r"\[[^,\]]*(,\s*[^,\]]*(?:it/s|s/it))?")


class _Lines:
    """A stream for tqdm's text bar: each refresh (``\\r`` + status) becomes one line; a line
    that repeats the last state (tqdm redraws it on close) is dropped."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.last = stream, ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and _CLOCK.sub("[", line) != self.last:
            self.stream.write(line + "\n")
            self.last = _CLOCK.sub("[", line)

    def flush(self) -> None:
        self.stream.flush()


def interactive() -> bool:
    """True inside a Jupyter kernel that a person watches (JupyterLab), not under dslib run."""
    if headless():
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def progress_bar(iterable: Any = None, **kwargs: Any):
    """``tqdm(iterable, **kwargs)``: the notebook widget when interactive, tqdm's own bar in a
    terminal, else (papermill, logs, pipes) text lines."""
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    from tqdm.std import tqdm

    if getattr(sys.stderr, "isatty", lambda: False)():
        return tqdm(iterable, **kwargs)

    kwargs.setdefault("mininterval", HEADLESS_INTERVAL_S)
    kwargs.setdefault("file", _Lines(sys.stderr))
    kwargs["leave"] = True  # a log keeps the last line; leave=False would erase it
    return tqdm(iterable, **kwargs)
