"""Atomic file output: a file appears complete at its final path, or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file through a temporary file in the same folder, then move it into place.

    Use it for every file the library writes (HDF5, PNG, NIfTI, JSON, ...)::

        with atomic_output("result.h5", overwrite=force) as tmp:
            write_something(tmp)

    The body writes (and closes) the file at ``tmp``. On success the temporary file is flushed to
    disk (``fsync``) and renamed onto ``path`` in one step (``os.replace``), so a reader never
    sees a half-written file. If the body raises anything, ``KeyboardInterrupt`` included, the
    temporary file is deleted, ``path`` is left as it was, and the exception propagates.

    Parameters
    ----------
    path
        Final path of the file. Its folder must exist.
    overwrite
        Replace ``path`` if it already exists. Without it an existing ``path`` is refused, both
        before the body runs and (atomically, where the file system allows hard links) at the
        final rename.

    Yields
    ------
    pathlib.Path
        The temporary path to write, ``<folder>/.<name>.tmp-<random>``. It already exists as an
        empty file (created exclusively, so the name is unique); writers should truncate it.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    FileNotFoundError
        The folder of ``path`` does not exist.
    IsADirectoryError
        ``path`` is a folder.
    """
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise IsADirectoryError(f"{target}: is a folder, not a file")
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(_exists_message(target))
    if not folder.is_dir():
        raise FileNotFoundError(f"{target}: folder {folder} does not exist")

    tmp = _create_temporary(folder, target.name)
    try:
        yield tmp
        _fsync_file(tmp)
        if overwrite:
            os.replace(tmp, target)
        else:
            _move_no_clobber(tmp, target)
        _fsync_folder(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _exists_message(target: Path) -> str:
    return f"{target}: already exists; use --force (overwrite=True) to replace it"


def _create_temporary(folder: Path, name: str) -> Path:
    """Create an empty file with a fresh unique name ``.<name>.tmp-<random>`` in ``folder``."""
    while True:
        tmp = folder / f".{name}.tmp-{secrets.token_hex(6)}"
        try:
            # Mode 0o666 is filtered by the umask, as for any ordinary new file.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _fsync_file(tmp: Path) -> None:
    fd = os.open(tmp, os.O_RDWR)  # writable: some platforms refuse fsync on read-only handles
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the platform allows syncing a folder (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_no_clobber(tmp: Path, target: Path) -> None:
    """Move ``tmp`` onto ``target``, failing if ``target`` appeared meanwhile."""
    try:
        os.link(tmp, target)  # atomic and refuses an existing target
    except FileExistsError:
        raise FileExistsError(_exists_message(target)) from None
    except OSError:
        # No hard links here (some network or FAT file systems): check, then rename.
        if os.path.lexists(target):
            raise FileExistsError(_exists_message(target)) from None
        os.replace(tmp, target)
    else:
        tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Fill a folder through a temporary sibling folder, then move it into place in one rename.

    The body writes into the yielded temporary folder; on success it is renamed onto ``path``
    (an existing ``path`` is replaced only with ``overwrite``: it is moved aside first and
    deleted after the new folder is in place). If the body raises anything
    (``KeyboardInterrupt`` included; a SIGTERM in the main thread is turned into
    ``KeyboardInterrupt`` for the duration), the temporary folder is deleted and ``path`` is
    left as it was.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false (checked before and after the body).
    NotADirectoryError
        ``path`` exists and is not a folder.
    FileNotFoundError
        The parent folder of ``path`` does not exist.
    """
    target = Path(path)
    parent = target.parent
    if os.path.lexists(target) and not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a folder")
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(_exists_message(target))
    if not parent.is_dir():
        raise FileNotFoundError(f"{target}: folder {parent} does not exist")
    while True:
        tmp = parent / f".{target.name}.tmp-{secrets.token_hex(6)}"
        try:
            tmp.mkdir()
            break
        except FileExistsError:
            continue
    with contextlib.ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)

            def on_term(signum: int, frame: object) -> None:
                raise KeyboardInterrupt("SIGTERM")

            signal.signal(signal.SIGTERM, on_term)
            stack.callback(signal.signal, signal.SIGTERM, previous)
        try:
            yield tmp
            _fsync_folder(tmp)
            old = None
            if os.path.lexists(target):
                if not overwrite:
                    raise FileExistsError(_exists_message(target))
                old = parent / f".{target.name}.old-{secrets.token_hex(6)}"
                os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                if old is not None:
                    os.rename(old, target)
                raise
            _fsync_folder(parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
