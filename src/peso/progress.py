"""Progress for people and for logs, and the check that training has not diverged.

On a terminal, tqdm bars; elsewhere (CI, a log file, nohup) no bar frames, only the one line per epoch that
the trainers print. A non-finite loss or gradient stops the run: a NaN must never become a result."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm

from peso.errors import PesoError
from peso.io import is_main


def interactive() -> bool:
    return sys.stderr.isatty()


def bar(iterable: Iterable, desc: str, **kwargs) -> Iterable:
    """A tqdm bar on a terminal, the bare iterable otherwise."""
    if not interactive() or not is_main():
        return iterable
    return tqdm(iterable, desc=desc, leave=False, mininterval=1.0, **kwargs)


def note(text: str) -> None:
    """One line of progress on stderr (the main process only)."""
    if is_main():
        print(text, file=sys.stderr, flush=True)


def check_finite(value: float, what: str, where: str, epoch: int, step: int, fix: str) -> None:
    """Stop with one line naming where training diverged (the run records nothing of this unit)."""
    if not math.isfinite(value):
        raise PesoError(where, f"training diverged at epoch {epoch}, step {step}: {what} is {value}", fix)
