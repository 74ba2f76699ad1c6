"""Rich progress display for long CLI work, shown only when stderr is a terminal.

Output to a pipe, a file or a test runner (``typer.testing.CliRunner``) stays clean: no bars, no
spinners, no control characters. ``SPECT_PROGRESS=1`` forces the display on, ``SPECT_PROGRESS=0``
off.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["IterationUpdate", "iteration_progress", "progress_enabled", "status", "stderr_console"]

#: ``update(completed, **fields)``: mark ``completed`` steps done and set display fields.
IterationUpdate = Callable[..., None]


def progress_enabled() -> bool:
    """Whether to draw progress displays: stderr is a terminal, unless ``SPECT_PROGRESS`` says."""
    forced = os.environ.get("SPECT_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or unusual stream
        return False


def stderr_console() -> Console:
    """A console on the current ``sys.stderr`` (looked up at call time, so test runners work)."""
    return Console(file=sys.stderr, highlight=False)


@contextlib.contextmanager
def status(message: str) -> Iterator[Callable[[str], None]]:
    """Show a spinner with ``message`` while the body runs (nothing if progress is disabled);
    yields ``update(message)`` to change the message (e.g. a library's progress callback)."""
    if not progress_enabled():
        yield lambda text: None
        return
    with stderr_console().status(Text(message), spinner="dots") as spinner:
        yield lambda text: spinner.update(Text(text))


@contextlib.contextmanager
def iteration_progress(
    total: int, description: str, *, fields: dict[str, str] | None = None
) -> Iterator[IterationUpdate]:
    """A progress bar for ``total`` steps; yields ``update(completed, **fields)``.

    Parameters
    ----------
    total
        Number of steps (e.g. iterations).
    description
        Text left of the bar.
    fields
        Extra values shown right of the bar, by name, with their initial text (e.g.
        ``{"logL": ""}``); ``update`` replaces them.

    Yields
    ------
    callable
        ``update(completed, **fields)``. When progress is disabled it does nothing.
    """
    fields = dict(fields or {})
    if not progress_enabled():

        def noop(completed: int, **values: str) -> None:
            return None

        yield noop
        return

    extra = [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=False,
    )
    with progress:
        shown: dict[str, Any] = fields  # display fields only, never add_task's own arguments
        task = progress.add_task(description, total=total, **shown)

        def update(completed: int, **values: str) -> None:
            now: dict[str, Any] = values
            progress.update(task, completed=completed, **now)

        yield update


def loss_psnr_callback(update: Callable[..., None], psnr_key: str) -> Callable[..., None]:
    """A training callback that shows the loss and the held-out PSNR (``metrics[psnr_key]``)."""

    def callback(step: int, total: int, metrics: Any) -> None:
        psnr = metrics[psnr_key]
        update(step, loss=f"{metrics['loss']:.4g}", PSNR="–" if psnr != psnr else f"{psnr:.2f} dB")

    return callback
