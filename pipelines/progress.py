"""Progress bars for long work: tqdm on a terminal, silent otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def set_description(self, s: str) -> None:
        pass


def progress_factory(enabled: bool | None = None) -> Callable[..., Any]:
    """A ``progress(total=None, desc=None)`` factory.

    Parameters
    ----------
    enabled : bool, optional
        Force bars on or off; by default on only when stderr is a terminal.
    """
    on = sys.stderr.isatty() if enabled is None else enabled

    def progress(total: int | None = None, desc: str | None = None):
        if not on:
            return _Silent()
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)

    return progress


silent = progress_factory(False)
