"""Reading and writing studies and results.

Public names
------------
Acquisition, Anatomy, Study, Result
    The in-memory data model (`recon.io.study`).
with_collimator
    A study with another collimator (name and parameters together).
write_study, read_study, write_result, read_result, describe, FORMAT_VERSION
    The HDF5 study and result files (`recon.io.hdf5`, layout in ``docs/file-format.md``).
StudyFileError
    Raised for a bad file, with a one-line ``"<file>: <dataset>: <problem>"`` message.
FieldError, FieldValueError, FieldTypeError
    Raised by `Study`, `Result` and `Acquisition` for a bad field, naming it
    (``"Study.projections: ..."``).
MAX_COUNTS
    The largest count (or background) a study may hold (the likelihood stays finite in float32).
atomic_output
    Write any file atomically (temporary file in the same folder, then rename);
    `recon.io.atomic` also has `write_bytes`, `write_text` and `staged_folder` (a folder of files
    moved into place as a whole).

Modules for failing cleanly (``docs/faults.md``): `recon.io.signals` (SIGINT/SIGTERM/SIGHUP as one
exception, critical sections), `recon.io.limits` (declared sizes checked before allocation,
``SPECT_MAX_MEMORY_GB``), `recon.io.text` (user text files with one-line errors).
"""

from recon.io.atomic import atomic_output
from recon.io.errors import FieldError, FieldTypeError, FieldValueError, StudyFileError
from recon.io.hdf5 import (
    FORMAT_VERSION,
    describe,
    read_result,
    read_study,
    write_result,
    write_study,
)
from recon.io.study import MAX_COUNTS, Acquisition, Anatomy, Result, Study, with_collimator

__all__ = [
    "FORMAT_VERSION",
    "MAX_COUNTS",
    "Acquisition",
    "Anatomy",
    "FieldError",
    "FieldTypeError",
    "FieldValueError",
    "Result",
    "Study",
    "StudyFileError",
    "atomic_output",
    "describe",
    "read_result",
    "read_study",
    "with_collimator",
    "write_result",
    "write_study",
]
