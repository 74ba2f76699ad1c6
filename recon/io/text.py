"""Reading the text files users hand to spect (CSV, TOML, JSON) with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_text"]


def read_text(path: str | os.PathLike[str], *, encoding: str = "utf-8-sig") -> str:
    """The text of ``path`` (UTF-8, an optional byte-order mark dropped; line ends kept as they
    are, so ``csv`` can read it with ``io.StringIO(text, newline="")``).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not UTF-8 text: ``"<file>: not UTF-8 text (byte 0xff at offset 12); save it as UTF-8"``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    data = p.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        byte = data[error.start : error.start + 1].hex()
        raise ValueError(
            f"{p}: not UTF-8 text (byte 0x{byte} at offset {error.start}); save it as UTF-8"
        ) from None
