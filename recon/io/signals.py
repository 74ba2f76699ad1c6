"""Stop signals (SIGINT, SIGTERM, SIGHUP) as one exception, and critical sections that defer them.

A command-line program stops on Ctrl-C (SIGINT), on a batch scheduler's SIGTERM (SLURM's
``scancel``, a pre-emption) and on a closed terminal (SIGHUP). `install_handlers` makes all three
raise `Interrupted` (a ``KeyboardInterrupt``, so every ``finally`` and every
``except KeyboardInterrupt`` cleans up as for Ctrl-C); only the first signal raises, later ones
are ignored while the program cleans up and exits (a second Ctrl-C never interrupts the cleanup
itself). `exit_code` is the conventional ``128 + signal number`` (130, 143, 129).

`deferred_signals` holds the three signals back over a short critical section (the final rename
of an output, an in-memory HDF5 build that must not be interrupted inside the HDF5 library) and
delivers the first one when the section ends.

Nothing here prints or exits; the handlers are installed by the CLI (`cli.main`) only.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = [
    "STOP_SIGNALS",
    "Interrupted",
    "deferred_signals",
    "exit_code",
    "install_handlers",
    "note",
    "received",
    "signal_name",
]

#: The signals that stop a command cleanly (SIGHUP where the platform has it).
STOP_SIGNALS: tuple[int, ...] = tuple(
    int(s) for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s
)

_RECEIVED: list[int] = []  # stop signals received since `install_handlers` (first one counts)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` says which (``signal.SIGINT`` for a plain Ctrl-C)."""

    def __init__(self, signum: int = int(signal.SIGINT)) -> None:
        super().__init__(f"interrupted by {signal_name(signum)}")
        self.signum = int(signum)


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15, ...; ``"signal N"`` for an unknown number."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def received() -> tuple[int, ...]:
    """Stop signals received since the handlers were installed, in order."""
    return tuple(_RECEIVED)


def exit_code(error: BaseException | None = None) -> int:
    """``128 + signal number`` of the stop: the signal an `Interrupted` ``error`` carries, else the
    first signal received, else SIGINT's (a ``KeyboardInterrupt`` from elsewhere): 130."""
    signum = getattr(error, "signum", None)
    if signum is None:
        signum = _RECEIVED[0] if _RECEIVED else int(signal.SIGINT)
    return 128 + int(signum)


def _raise_first(signum: int, frame: FrameType | None) -> None:
    first = not _RECEIVED
    _RECEIVED.append(int(signum))
    if first:
        raise Interrupted(signum)
    # Later signals: the program is already stopping and cleaning up; let it finish.


def note(signum: int) -> int:
    """Record a stop signal handled elsewhere (a training loop's graceful stop); returns how many
    stop signals have arrived, this one included."""
    _RECEIVED.append(int(signum))
    return len(_RECEIVED)


def install_handlers() -> Callable[[], None]:
    """Make SIGINT, SIGTERM and SIGHUP raise `Interrupted` (the first one only); returns a
    function that restores the previous handlers.

    Once a signal has arrived the program is stopping: ``restore`` then leaves the handlers in
    place (ignoring further signals), so a second Ctrl-C during the exit prints no traceback.
    In a thread other than the main one (where handlers cannot be set) it changes nothing."""
    _RECEIVED.clear()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}
    for s in STOP_SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            previous[s] = signal.signal(s, _raise_first)

    def restore() -> None:
        if _RECEIVED:
            return
        for s, handler in previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(s, handler)

    return restore


def _deliver(signum: int, handler: Any) -> None:
    """Act on ``signum`` as ``handler`` (a previous handler) would have."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise Interrupted(signum)
        signal.raise_signal(signum)  # the default action (terminate)
    # SIG_IGN (or None: set outside Python): nothing


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back over the body, then deliver the first one received
    (as the handler in place before would have). Outside the main thread it does nothing.

    For short critical sections only: the body cannot be interrupted by these signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        pending.append(int(signum))

    previous: dict[int, Any] = {}
    try:
        for s in STOP_SIGNALS:
            with contextlib.suppress(OSError, ValueError):
                previous[s] = signal.signal(s, record)
        yield
    finally:
        for s, handler in previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(s, handler)
        if pending:
            _deliver(pending[0], previous.get(pending[0], signal.SIG_DFL))
