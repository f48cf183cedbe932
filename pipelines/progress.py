"""Progress bars for long work: tqdm on a terminal, silent otherwise."""

from __future__ import annotations

import sys
import time
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


class Progress:
    """A progress bar over the steps of a loop that also keeps when each step ended, for
    a rate metric (:meth:`seconds_per_step`).

    Parameters
    ----------
    bar : tqdm-like
        ``update(n)``, ``set_postfix_str(s)``, a context manager.
    """

    def __init__(self, bar: Any):
        self._bar = bar
        self._ends: list[tuple[float, int]] = [(time.perf_counter(), 0)]

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        return bool(self._bar.__exit__(*exc))

    def update(self, n: int = 1) -> None:
        """``n`` more steps are done."""
        self._bar.update(n)
        self._ends.append((time.perf_counter(), n))

    def set_postfix_str(self, s: str) -> None:
        """Show ``s`` after the bar (a residual, the current step)."""
        self._bar.set_postfix_str(s)

    def seconds_per_step(self, skip: int = 1) -> float:
        """Mean wall seconds of a step of this loop, without its first ``skip`` steps
        (which pay for shipping data and warming caches) when there are more.

        Returns
        -------
        float
            Seconds; NaN when no step was done.
        """
        ends = self._ends if len(self._ends) <= skip + 1 else self._ends[skip:]
        steps = sum(n for _, n in ends[1:])
        return (ends[-1][0] - ends[0][0]) / steps if steps else float("nan")


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
