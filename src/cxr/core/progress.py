"""Progress bars and console output shared by every command.

Bars are drawn only on a terminal and never with `--quiet`, so logs and CI output stay clean;
there, long commands print one timestamped line per step instead (`log_stamp`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


def console() -> Console:
    """stdout console; rich turns colour and live display off when stdout is not a terminal."""
    return Console(highlight=False, soft_wrap=True)


def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def bars_enabled() -> bool:
    return not _state["quiet"] and sys.stdout.isatty()


def make_progress(*extra_columns) -> Progress:
    """A rich Progress that is inert (draws nothing) when bars are disabled."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not bars_enabled(),
        transient=False,
    )


@contextlib.contextmanager
def phase(description: str) -> Iterator[None]:
    """A step without a count (a bootstrap, figures): a spinner and its elapsed time on a
    terminal, left on screen when done; nothing elsewhere."""
    if not bars_enabled():
        yield
        return
    with Progress(
        SpinnerColumn(finished_text="done"),
        TextColumn("[bold]{task.description}"),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=None)
        yield
        progress.update(task, total=1, completed=1)


def log_stamp() -> str:
    """`2025-06-01 10:02:11 ` when stdout is not a terminal (a Slurm log, a file), else "":
    there a line per step replaces the bars, and the time says when it happened."""
    if sys.stdout.isatty():
        return ""
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S ")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def info(message: str) -> None:
    """A line of normal output (suppressed by --quiet), printed as is: no rich markup, since
    messages carry paths and label names that may contain brackets."""
    if not _state["quiet"]:
        console().print(message, markup=False)
