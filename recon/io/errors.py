"""Errors raised when a study or result file cannot be read or written."""

from __future__ import annotations

import os


def _one_line(text: object) -> str:
    """``text`` as a single line: runs of whitespace (newlines included) become one space."""
    return " ".join(str(text).split())


class StudyFileError(ValueError):
    """A study or result file is not what it should be (or an object cannot be written as one).

    The message is always one line, ``"<file>: <dataset>: <problem>"``, for example
    ``"scan.h5: /projections/counts: contains 3 NaN/Inf values"``.

    Parameters
    ----------
    file
        Path of the file.
    dataset
        HDF5 path of the dataset or group concerned (``"/"`` for the file as a whole).
    problem
        What is wrong, in a few words.

    Attributes
    ----------
    file, dataset, problem
        The three parts of the message, as given (``file`` as a string).
    """

    def __init__(self, file: str | os.PathLike[str], dataset: str, problem: str) -> None:
        self.file = os.fspath(file)
        self.dataset = dataset
        self.problem = problem
        super().__init__(
            f"{_one_line(self.file)}: {_one_line(dataset) or '/'}: {_one_line(problem)}"
        )

    def __reduce__(self) -> tuple[type[StudyFileError], tuple[str, str, str]]:
        # Keep the error picklable (multiprocessing) despite the three-argument constructor.
        return (type(self), (self.file, self.dataset, self.problem))


class FieldError(Exception):
    """Base of the errors a `Study`, `Result` or `Acquisition` raises for one of its fields.

    The message is one line, ``"<owner>.<field>[<key>]: <problem>"``, for example
    ``"Study.projections: shape (2, 4) is not 3D [view, row, bin]"`` or
    ``"Result.history['loglik']: shape (1, 3) is not 1D"``. Catch the concrete
    `FieldValueError` / `FieldTypeError` (or plain ``ValueError`` / ``TypeError``); this base
    lets file readers and writers turn any of them into a `StudyFileError` for the dataset the
    field is stored in.

    Attributes
    ----------
    owner
        The class, e.g. ``"Study"``.
    field
        The dataclass field, e.g. ``"projections"``.
    key
        The entry of a mapping field (``history``, ``extras``, ...), or ``None``.
    problem
        What is wrong: the expected and the actual value.
    """

    def __init__(self, owner: str, field: str, problem: str, key: str | None = None) -> None:
        self.owner = owner
        self.field = field
        self.problem = problem
        self.key = key
        where = f"{owner}.{field}" + ("" if key is None else f"[{key!r}]")
        super().__init__(f"{where}: {_one_line(problem)}")

    def __reduce__(self) -> tuple[type[FieldError], tuple[str, str, str, str | None]]:
        return (type(self), (self.owner, self.field, self.problem, self.key))


class FieldValueError(FieldError, ValueError):
    """A field has the right type but a wrong value (shape, range, NaN/Inf, ...)."""


class FieldTypeError(FieldError, TypeError):
    """A field has the wrong type (not an array, not a mapping, not a string, ...)."""
