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
