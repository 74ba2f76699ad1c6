"""Atomic output: a file (or a folder of files) appears complete at its final path, or not at all.

Every file the library writes goes through `atomic_output` (a temporary file in the same folder,
flushed to disk, then renamed onto the final name) or its helpers `write_bytes` and `write_text`
(which write with plain Python I/O, so a full disk or a read-only file system is an ``OSError``
from ``write()``, never a crash inside a C library). A group of files that belongs together (a
report folder) goes through `staged_folder`. On any failure -- ``ENOSPC``, ``EACCES``, ``EROFS``,
an exception of the body, a stop signal (`recon.io.signals`) -- the temporary is deleted and the
previous file is left as it was. The final rename runs with the stop signals deferred, so it
happens whole or not at all.

Temporaries are named ``.<name>.tmp-<pid>-<host>-<random>``. Only ``SIGKILL`` (or a power cut)
can leave one behind; the next write of the same output removes the stale ones of its own name
(`sweep_stale`): those whose process is gone (same host) or that are more than a day old.

Fault injection (tests): `set_fault_hook` installs a callback run at named points of every write
(``"open"``, ``"write"``, ``"written"``, ``"commit"``); the ``SPECT_FAULT_INJECT`` environment
variable does the same for a separate process (``POINT:ACTION[:NAME]``, e.g.
``commit:SIGTERM`` or ``write:ENOSPC:out.h5``; actions: a signal name, which the process sends to
itself (``SIGINT*2``: twice), or an errno name, raised as ``OSError``). See ``docs/faults.md``.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from recon.io.signals import deferred_signals

__all__ = [
    "FAULT_POINTS",
    "STALE_AGE_S",
    "atomic_output",
    "check_target",
    "fault_point",
    "set_fault_hook",
    "staged_folder",
    "sweep_stale",
    "write_bytes",
    "write_text",
]

#: Age (s) after which a temporary of an output is stale even if its process may live.
STALE_AGE_S = 24 * 3600.0
#: Points of a write where the fault hook runs.
FAULT_POINTS = ("open", "write", "written", "commit")
#: Bytes per ``write()`` call of `write_bytes`.
CHUNK_BYTES = 1 << 22

FaultHook = Callable[[str, Path], None]
_fault_hook: FaultHook | None = None


def set_fault_hook(hook: FaultHook | None) -> FaultHook | None:
    """Install ``hook(point, path)`` (``None``: remove it); returns the previous hook.

    The hook runs at each point of `FAULT_POINTS` of every atomic write (``path`` is the final
    path) and may raise (``OSError(errno.ENOSPC, ...)``) or send a signal, as a test of what a
    fault at that point does. For tests only.
    """
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    return previous


def _env_hook(point: str, path: Path) -> None:
    spec = os.environ.get("SPECT_FAULT_INJECT", "")
    if not spec:
        return
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] != point:
        return
    if len(parts) > 2 and parts[2] and not fnmatch.fnmatch(path.name, parts[2]):
        return
    action, _, times = parts[1].upper().partition("*")
    if action.startswith("SIG") and hasattr(signal, action):
        for _ in range(int(times or 1)):  # SIGINT*2: a second Ctrl-C right after the first
            os.kill(os.getpid(), getattr(signal, action))
            time.sleep(0.05)  # let the handler run here, at this point
    elif hasattr(errno, action):
        code = getattr(errno, action)
        raise OSError(code, os.strerror(code), os.fspath(path))


def fault_point(point: str, path: Path) -> None:
    """Run the fault hook (and ``SPECT_FAULT_INJECT``) for ``point`` of writing ``path``; an
    ``OSError`` it raises stands for that step failing, and is reported as such."""
    try:
        if _fault_hook is not None:
            _fault_hook(point, path)
        _env_hook(point, path)
    except OSError as error:
        raise _named(error, path) from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file through a temporary file in the same folder, then move it into place.

    Use it for every file the library writes (HDF5, PNG, NIfTI, JSON, ...)::

        with atomic_output("result.h5", overwrite=force) as tmp:
            write_something(tmp)

    The body writes (and closes) the file at ``tmp``. On success the temporary file is flushed to
    disk (``fsync``) and renamed onto ``path`` in one step (``os.replace``, with SIGINT, SIGTERM
    and SIGHUP deferred), so a reader never sees a half-written file. If anything fails -- the
    body raises, the disk is full, a stop signal arrives -- the temporary file is deleted,
    ``path`` is left as it was, and the exception propagates. Stale temporaries of ``path`` from
    a killed process are removed first (`sweep_stale`).

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
        The temporary path to write, ``<folder>/.<name>.tmp-<pid>-<host>-<random>``. It already
        exists as an empty file (created exclusively, so the name is unique); writers should
        truncate it.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    FileNotFoundError
        The folder of ``path`` does not exist.
    IsADirectoryError
        ``path`` is a folder.
    PermissionError
        The folder cannot be written (the message names ``path``, not the temporary).
    OSError
        Disk full, read-only file system, ... (the message names ``path``).
    """
    target = Path(path)
    folder = target.parent
    check_target(target, overwrite)
    sweep_stale(target)
    tmp = _create_temporary(target)
    try:
        fault_point("open", target)
        try:
            yield tmp
        except OSError as error:  # the writer's own error about the temporary: name the output
            if tmp.name not in str(error) and os.fspath(tmp) != error.filename:
                raise
            raise _named(error, target) from None
        fault_point("written", target)
        _fsync_file(tmp, target)
        fault_point("commit", target)
        with deferred_signals():
            try:
                if overwrite:
                    os.replace(tmp, target)
                else:
                    _move_no_clobber(tmp, target)
            except OSError as error:
                raise _named(error, target) from None
            _fsync_folder(folder)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (`atomic_output`) with plain Python I/O.

    A full disk, a quota or a read-only file system raises ``OSError`` naming ``path``; nothing
    is left behind and a previous ``path`` is untouched.
    """
    target = Path(path)
    with atomic_output(target, overwrite=overwrite) as tmp:
        try:
            with open(tmp, "wb") as fh:
                view = memoryview(data)
                for start in range(0, max(len(view), 1), CHUNK_BYTES):
                    fault_point("write", target)
                    fh.write(view[start : start + CHUNK_BYTES])
        except OSError as error:
            raise _named(error, target) from None


def write_text(
    path: str | os.PathLike[str], text: str, *, overwrite: bool = False, encoding: str = "utf-8"
) -> None:
    """Write ``text`` to ``path`` atomically (`write_bytes`), encoded with ``encoding``."""
    write_bytes(path, text.encode(encoding), overwrite=overwrite)


@contextlib.contextmanager
def staged_folder(
    path: str | os.PathLike[str], names: Sequence[str], *, overwrite: bool = False
) -> Iterator[Path]:
    """Write a group of files (``names``, e.g. a report) into ``path`` as a whole.

    The body writes the files into a hidden staging folder beside ``path``
    (``.<name>.tmp-<pid>-<host>-<random>/``, yielded). On success, if ``path`` does not exist
    the staging folder is renamed to it; otherwise each staged file is moved into ``path``
    (``os.replace``), all of them with the stop signals deferred, so an interruption leaves the
    previous files or the new ones, never a mix. On failure the staging folder is deleted.

    Parameters
    ----------
    path
        The output folder (created if missing; its parent must exist).
    names
        The files the body writes (checked before it runs: without ``overwrite`` none may exist
        in ``path``). Other files in ``path`` are left alone.
    overwrite
        Replace existing files of ``names`` in ``path``.

    Raises
    ------
    FileExistsError
        ``path`` is a file, or (without ``overwrite``) holds one of ``names``.
    FileNotFoundError
        The parent of ``path`` does not exist.
    """
    out = Path(path)
    if os.path.lexists(out) and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out}: folder {out.parent} does not exist")
    if not overwrite and out.is_dir():
        existing = [str(out / n) for n in names if os.path.lexists(out / n)]
        if existing:
            raise FileExistsError(
                f"{', '.join(existing)}: already exist(s); use --force (overwrite=True) to replace"
            )
    sweep_stale(out)
    stage = _create_temporary(out, folder=True)
    try:
        fault_point("open", out)
        try:
            yield stage
        except OSError as error:  # name the output folder, not the hidden staging folder
            if os.fspath(stage) not in str(error):
                raise
            renamed = type(error)(str(error).replace(os.fspath(stage), os.fspath(out)))
            renamed.errno = error.errno
            raise renamed from None
        fault_point("written", out)
        for item in stage.iterdir():
            if item.is_file():
                _fsync_file(item, out / item.name)
        fault_point("commit", out)
        with deferred_signals():
            try:
                if not out.exists():
                    os.rename(stage, out)
                else:
                    for item in sorted(stage.iterdir(), key=lambda p: p.suffix == ".html"):
                        os.replace(item, out / item.name)  # the page last
            except OSError as error:
                raise _named(error, out) from None
            _fsync_folder(out.parent)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


# -- temporaries -----------------------------------------------------------------------------


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _temporary_prefix(name: str) -> str:
    return f".{name}.tmp-"


def _create_temporary(target: Path, *, folder: bool = False) -> Path:
    """Create an empty file (or folder) beside ``target`` with a fresh unique temporary name."""
    host = _host_tag()
    while True:
        tmp = (
            target.parent
            / f"{_temporary_prefix(target.name)}{os.getpid()}-{host}-{secrets.token_hex(4)}"
        )
        try:
            if folder:
                os.mkdir(tmp)
            else:
                # Mode 0o666 is filtered by the umask, as for any ordinary new file.
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                os.close(fd)
        except FileExistsError:
            continue
        except OSError as error:
            raise _named(error, target) from None
        return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def sweep_stale(target: str | os.PathLike[str], *, max_age_s: float = STALE_AGE_S) -> list[Path]:
    """Remove stale temporaries of ``target`` (left by a killed process); returns them.

    Only names ``.<target name>.tmp-...`` beside ``target`` are considered, and of those only
    the ones made on this host by a process that no longer runs, or older than ``max_age_s``
    (any other name pattern, e.g. an older spect's ``.<name>.tmp-<random>``, only by age).
    Errors (a read-only folder) are ignored: sweeping is best effort.
    """
    path = Path(target)
    prefix = _temporary_prefix(path.name)
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    host, now = _host_tag(), time.time()
    for entry in entries:
        rest = entry.name[len(prefix) :].split("-")
        stale = False
        with contextlib.suppress(OSError):
            stale = now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
        if not stale and len(rest) == 3 and rest[0].isdigit() and rest[1] == host:
            pid = int(rest[0])
            stale = pid != os.getpid() and not _pid_alive(pid)
        if not stale:
            continue
        p = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def _named(error: OSError, target: Path) -> OSError:
    """``error`` (same class and errno) reworded to name ``target``, not a hidden temporary."""
    if str(error).startswith(f"{target}: cannot write"):
        return error  # already reworded
    code = error.errno
    reason = {
        errno.ENOSPC: "no space left on device",
        errno.EROFS: "read-only file system",
        errno.EACCES: f"permission denied in folder {target.parent}",
        errno.EPERM: f"permission denied in folder {target.parent}",
        errno.EDQUOT: "disk quota exceeded",
    }.get(code or 0, error.strerror or str(error))
    new = type(error)(f"{target}: cannot write: {reason}")
    new.errno = code
    return new


def _exists_message(target: Path) -> str:
    return f"{target}: already exists; use --force (overwrite=True) to replace it"


def check_target(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Refuse an output path as `atomic_output` would, before any work is done.

    Raises
    ------
    IsADirectoryError, FileExistsError, FileNotFoundError, NotADirectoryError
        ``path`` is a folder; exists (without ``overwrite``); its folder is missing or a file.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target}: is a folder, not a file")
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(_exists_message(target))
    if not target.parent.is_dir():
        if target.parent.exists():
            raise NotADirectoryError(f"{target}: {target.parent} is a file, not a folder")
        raise FileNotFoundError(f"{target}: folder {target.parent} does not exist")


def _fsync_file(tmp: Path, target: Path) -> None:
    try:
        fd = os.open(tmp, os.O_RDWR)  # writable: some platforms refuse fsync on read-only handles
    except IsADirectoryError:
        return
    except OSError as error:
        raise _named(error, target) from None
    try:
        os.fsync(fd)
    except OSError as error:
        raise _named(error, target) from None
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
