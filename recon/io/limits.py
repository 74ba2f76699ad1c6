"""Limits before allocation: a file's declared array shapes are checked before anything is read.

A header can declare any shape (a 78 KB study declaring projections of 16×200000×200000); every
reader checks the declared size against

- the memory budget, `max_memory_bytes`: ``SPECT_MAX_MEMORY_GB`` gigabytes (10⁹ bytes) from the
  environment, else `DEFAULT_MAX_MEMORY_GB` (16), per array; and
- what the file can hold: an uncompressed array cannot be larger than the file, a deflate-
  compressed one (gzip, ``.nii.gz``) not larger than `MAX_DEFLATE_RATIO` times the file.

and refuses with a one-line `ArraySizeError` naming the file, the array, the declared shape and
the limit, before allocating.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

__all__ = [
    "DEFAULT_MAX_MEMORY_GB",
    "MAX_DEFLATE_RATIO",
    "ArraySizeError",
    "array_size_problem",
    "check_array_size",
    "max_memory_bytes",
]

#: Default memory budget per array (GB, 10⁹ bytes); ``SPECT_MAX_MEMORY_GB`` overrides it.
DEFAULT_MAX_MEMORY_GB = 16.0
#: Deflate (gzip/zlib) cannot compress by more than about 1032:1; with some margin.
MAX_DEFLATE_RATIO = 1100


class ArraySizeError(ValueError):
    """A file declares an array larger than the memory budget or than the file could hold."""


def max_memory_bytes() -> int:
    """The memory budget per array, in bytes (``SPECT_MAX_MEMORY_GB``, default 16 GB).

    Raises
    ------
    ValueError
        ``SPECT_MAX_MEMORY_GB`` is not a positive number.
    """
    text = os.environ.get("SPECT_MAX_MEMORY_GB", "").strip()
    if not text:
        return int(DEFAULT_MAX_MEMORY_GB * 1e9)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"SPECT_MAX_MEMORY_GB must be a positive number of GB, got {text!r}")
    return int(value * 1e9)


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(int(n)) for n in shape) or "scalar"


def _size_text(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def array_size_problem(
    shape: Sequence[int],
    itemsize: int,
    *,
    file_bytes: int | None = None,
    compression: float | None = 1.0,
) -> str | None:
    """Why an array of ``shape`` × ``itemsize`` bytes that a file declares must not be read
    (``"declared shape A×B×C (N GB) exceeds ..."``), or ``None``; see `check_array_size`."""
    dims = [int(n) for n in shape]
    if any(n < 0 for n in dims):
        return f"declared shape {dims} is negative"
    nbytes = math.prod(dims) * int(itemsize)
    budget = max_memory_bytes()
    head = f"declared shape {_shape_text(dims)} ({_size_text(nbytes)})"
    if nbytes > budget:
        return (
            f"{head} exceeds the memory limit of {_size_text(budget)} "
            "(set SPECT_MAX_MEMORY_GB to allow more)"
        )
    if file_bytes is not None and compression is not None and nbytes > compression * file_bytes:
        how = "" if compression == 1 else f" even at the compression limit of {compression:g}:1"
        return (
            f"{head} cannot be stored in the file's {_size_text(file_bytes)}{how}; "
            "the header is wrong or the file is truncated"
        )
    return None


def check_array_size(
    file: str | os.PathLike[str],
    what: str,
    shape: Sequence[int],
    itemsize: int,
    *,
    file_bytes: int | None = None,
    compression: float | None = 1.0,
) -> None:
    """Refuse an array of ``shape`` × ``itemsize`` bytes that a file declares, before reading it.

    Parameters
    ----------
    file
        The file, for the message.
    what
        The array (``"/projections/counts"``, ``"image data"``, ...), for the message.
    shape, itemsize
        Declared shape and bytes per element.
    file_bytes
        Bytes the file (or the part holding the array) has; ``None``: not checked.
    compression
        Largest ratio of array bytes to file bytes the storage allows: 1 for raw data,
        `MAX_DEFLATE_RATIO` for gzip; ``None``: unknown (only the budget is checked).

    Raises
    ------
    ArraySizeError
        ``"<file>: <what>: declared shape A×B×C (N GB) exceeds ..."``.
    """
    problem = array_size_problem(shape, itemsize, file_bytes=file_bytes, compression=compression)
    if problem is not None:
        raise ArraySizeError(f"{os.fspath(file)}: {what}: {problem}")
