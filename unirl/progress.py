"""Progress bars for long commands: a live bar on a terminal or in a notebook; redirected to a file
(a run in the background with a log), a plain line every minute instead, so the log shows how far
it got."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

LOG_INTERVAL_S = 60.0


class _Lines:
    """A file for tqdm that writes each refresh as its own line (tqdm redraws with carriage returns)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """Postfix and description updates wait for the next timed line instead of writing one each."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc=None, refresh=True) -> None:
        super().set_description(desc, refresh=False)


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None, **kwargs) -> tqdm:
    if sys.stderr.isatty() or "ipykernel" in sys.modules:  # a terminal or a notebook: a live bar
        return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, **kwargs)
    return _LogBar(iterable, desc=desc, total=total, file=_Lines(sys.stderr), mininterval=LOG_INTERVAL_S,
                maxinterval=LOG_INTERVAL_S, ncols=80, ascii=True, **kwargs)
