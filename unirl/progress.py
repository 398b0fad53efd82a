"""Progress bars for long commands: shown on a terminal, silent when output is redirected."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None, **kwargs) -> tqdm:
    return tqdm(iterable, desc=desc, total=total, disable=not sys.stdout.isatty(), dynamic_ncols=True,
                **kwargs)
