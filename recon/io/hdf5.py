"""Study and result files: HDF5 (h5py), with one-line errors for every kind of bad file.

A *study file* (``format = "spect-study"``) holds a `Study`: projections, the acquisition, the
image grid and the optional attenuation map, CT, background and truth. A *result file*
(``format = "spect-result"``) holds a `Result`: a reconstructed activity volume, its grid, the
method and its parameters, per-iteration history and method-specific extras. The layout of both is
documented, dataset by dataset, in ``docs/file-format.md``; axes and units follow
``docs/conventions.md``.

Writing is atomic (`recon.io.atomic.atomic_output`): the file appears complete or not at all, and
an existing file is replaced only with ``overwrite=True``. The rules of the data live in one place,
the dataclasses (`Study`, `Result`, `Acquisition`, `Anatomy` check themselves when made); this
module adds only the rules of the file (datasets, attributes, units, axes, versions). Writing
checks the object again (its arrays may have changed in place), so a file that was written can
always be read back. Reading checks everything and raises `StudyFileError`
(``"<file>: <dataset>: <problem>"``) on the first problem, a dataclass's `FieldError` included,
reported at the dataset that stores the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import h5py
import numpy as np

from recon.io.atomic import check_target, write_bytes
from recon.io.errors import FieldError, StudyFileError
from recon.io.limits import MAX_DEFLATE_RATIO, array_size_problem
from recon.io.signals import deferred_signals
from recon.io.study import (
    Acquisition,
    Anatomy,
    BackgroundSource,
    EnergyWindow,
    Result,
    Study,
    as_numpy,
    dtype_text,
    json_default,
)
from spectproj import CollimatorSpec, ImageGrid
from spectproj.collimator_table import SPEC_KEYS

__all__ = [
    "FORMAT_VERSION",
    "RESULT_FORMAT",
    "STUDY_FORMAT",
    "describe",
    "file_kind",
    "read_result",
    "read_study",
    "software_version",
    "write_result",
    "write_study",
]

FORMAT_VERSION = 4
"""Layout version written by this ``spect``; files with a higher version are refused.

Version 2 added the optional ``/anatomy`` group (a segmentation given as an input); version 3 the
optional ``/collimator`` group (the collimator's parameters, not only its name); version 4 the
optional ``/windows`` group (other energy windows), the ``method``/``parameters`` of
``/background/counts`` and the decay and dead-time attributes of ``/acquisition``. Older files
still read: their collimator name is looked up in the collimator table (docs/collimators.md);
they have no windows and no decay or dead-time correction.
"""

STUDY_FORMAT = "spect-study"
RESULT_FORMAT = "spect-result"

PathLike = str | os.PathLike[str]

VOLUME_AXES = "z,y,x"
PROJECTION_AXES = "view,row,bin"
FRAME = "DICOM LPS"
GZIP_LEVEL = 4
DEFAULT_ACTIVITY_UNIT = "Bq/mL"

# Fixed datasets: path -> (units, axes, description). Units None: the activity unit of the file.
_DATASETS: dict[str, tuple[str | None, str, str]] = {
    "/projections/counts": ("counts", PROJECTION_AXES, "measured projections"),
    "/acquisition/angles_deg": ("deg", "view", "detector angle β of each view"),
    "/attenuation/mu": ("1/mm", VOLUME_AXES, "attenuation map μ at energy_keV"),
    "/attenuation/ct_hu": ("HU", VOLUME_AXES, "CT on the image grid"),
    "/background/counts": ("counts", PROJECTION_AXES, "expected additive background (scatter)"),
    "/truth/activity": (None, VOLUME_AXES, "true activity concentration"),
    "/truth/labels": ("label", VOLUME_AXES, "integer organ labels (0 = none)"),
    "/anatomy/labels": ("label", VOLUME_AXES, "segmentation given as an input (0 = none)"),
    "/anatomy/body": ("mask", VOLUME_AXES, "body outline (1 = inside)"),
    "/activity": (None, VOLUME_AXES, "reconstructed activity concentration"),
}

# Attributes: (object path, name) -> "units — description" for `describe` and the docs.
_ATTRIBUTES: dict[tuple[str, str], str] = {
    ("/", "format"): f"file kind: {STUDY_FORMAT} or {RESULT_FORMAT}",
    ("/", "format_version"): "layout version of the file",
    ("/", "software_version"): "spect version that wrote the file",
    ("/", "created_utc"): "creation time, ISO 8601 UTC",
    ("/", "activity_unit"): "unit of activity concentrations",
    ("/", "study_file"): "study the result was reconstructed from",
    ("/acquisition", "detector_shape"): "detector (rows, bins)",
    ("/acquisition", "pixel_size_mm"): "mm — pixel (row height, bin width)",
    ("/acquisition", "energy_keV"): "keV — photon energy of the main window",
    ("/acquisition", "radius_mm"): "mm — rotation axis to collimator face",
    ("/acquisition", "isotope"): "radionuclide",
    ("/acquisition", "energy_window_keV"): "keV — main window (low, high)",
    ("/acquisition", "duration_s"): "s — acquisition time per view",
    ("/acquisition", "sensitivity_cps_per_mbq"): "cps/MBq — planar system sensitivity",
    ("/acquisition", "collimator"): "collimator name",
    ("/acquisition", "half_life_s"): "s — physical half-life of the isotope",
    ("/acquisition", "acquisition_start"): "ISO 8601 — start of the acquisition",
    ("/acquisition", "reference_time"): "ISO 8601 — time the activities are decay-corrected to",
    ("/acquisition", "dead_time_s"): "s — dead time τ of the camera",
    ("/acquisition", "dead_time_model"): "paralyzable or non-paralyzable",
    ("/acquisition", "observed_rate_cps"): "cps — observed count rate of the dead-time factor",
    ("/background/counts", "method"): "how the background was made: tew, dew, simulated, given",
    ("/background/counts", "parameters"): "JSON object: windows, smoothing, k... of the method",
    ("/collimator", "name"): "collimator name (the table's row, or the user's file)",
    ("/collimator", "hole_diameter_mm"): "mm — hole diameter D",
    ("/collimator", "hole_length_mm"): "mm — hole (bore) length L",
    ("/collimator", "septal_thickness_mm"): "mm — septal thickness t",
    ("/collimator", "hole_shape"): "hex, round or square",
    ("/collimator", "intrinsic_fwhm_mm"): "mm — intrinsic resolution (FWHM), 0: none",
    ("/collimator", "intrinsic_energy_keV"): "keV — energy of intrinsic_fwhm_mm",
    ("/collimator", "back_distance_mm"): "mm — collimator back face to the image plane",
    ("/collimator", "penetration"): "septal penetration model: none or geometric",
    ("/collimator", "vendor"): "vendor",
    ("/collimator", "camera"): "camera",
    ("/collimator", "source"): "where the parameters come from",
    ("/grid", "shape"): "voxels (Z, Y, X)",
    ("/grid", "spacing_mm"): "mm — voxel size (dz, dy, dx)",
    ("/grid", "offset_mm"): "mm — volume centre (oz, oy, ox) from the rotation axis",
    ("/grid", "axes"): "array axis order",
    ("/grid", "frame"): "patient frame of x, y, z",
    ("/grid", "units"): "unit of spacing_mm and offset_mm",
    ("/attenuation/mu", "energy_keV"): "keV — photon energy of μ",
    ("/truth/labels", "label_values"): "labels that have a name",
    ("/truth/labels", "label_names"): "names of label_values",
    ("/anatomy/labels", "label_values"): "segment labels that have a name",
    ("/anatomy/labels", "label_names"): "segment names of label_values",
    ("/anatomy/labels", "source"): "where the segmentation came from",
    ("/method", "name"): "reconstruction method",
    ("/method", "parameters"): "JSON object: every parameter of the method",
}


# ----------------------------------------------------------------------------------------------
# Small helpers


@functools.lru_cache(maxsize=1)
def software_version() -> str:
    """The installed ``spect`` version, or ``"unknown"`` when it is not installed."""
    try:
        return importlib.metadata.version("spect")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _dtype_name(dtype: np.dtype) -> str:
    if h5py.check_string_dtype(dtype) is not None:
        return "string"
    return dtype_text(dtype)


# Where each dataclass field is stored: (class, field) -> HDF5 path (mapping entries below it).
_FIELD_DATASETS: dict[tuple[str, str], str] = {
    ("Acquisition", "angles_deg"): "/acquisition/angles_deg",
    ("Study", "projections"): "/projections/counts",
    ("Study", "background"): "/background/counts",
    ("Study", "mu_per_mm"): "/attenuation/mu",
    ("Study", "ct_hu"): "/attenuation/ct_hu",
    ("Study", "truth_activity"): "/truth/activity",
    ("Study", "labels"): "/truth/labels",
    ("Study", "label_names"): "/truth/labels",
    ("Study", "acquisition"): "/acquisition",
    ("Study", "grid"): "/grid",
    ("Study", "provenance"): "/provenance",
    ("Study", "anatomy"): "/anatomy/labels",
    ("Study", "windows"): "/windows",
    ("Study", "background_source"): "/background/counts",
    ("Result", "activity"): "/activity",
    ("Result", "activity_unit"): "/activity",
    ("Result", "grid"): "/grid",
    ("Result", "method"): "/method",
    ("Result", "parameters"): "/method",
    ("Result", "history"): "/history",
    ("Result", "extras"): "/extras",
}


def _dataset_of(error: FieldError) -> str:
    """The HDF5 path that holds the field an error names (``/history/<key>`` for entries)."""
    if error.owner == "Acquisition":
        return _FIELD_DATASETS.get((error.owner, error.field), "/acquisition")
    where = _FIELD_DATASETS.get((error.owner, error.field), "/")
    if error.key is not None and where in ("/history", "/extras"):
        return f"{where}/{error.key}"
    return where


class _Checker:
    """Raises `StudyFileError` for one file; ``prefix`` marks errors found before writing."""

    def __init__(self, file: PathLike, prefix: str = "") -> None:
        self.file = os.fspath(file)
        self.prefix = prefix

    def fail(self, where: str, problem: str) -> NoReturn:
        raise StudyFileError(self.file, where, self.prefix + problem)

    def field(self, error: FieldError) -> NoReturn:
        """Re-raise a dataclass's field error as ``"<file>: <dataset>: <problem>"``."""
        raise StudyFileError(self.file, _dataset_of(error), self.prefix + error.problem) from error


# ----------------------------------------------------------------------------------------------
# Checks shared by writing and reading


def _check_shape(chk: _Checker, where: str, a: np.ndarray, shape: tuple[int, ...], of: str) -> None:
    if tuple(a.shape) != tuple(shape):
        chk.fail(where, f"shape {tuple(a.shape)} does not match {of} {tuple(shape)}")


def _check_anatomy(
    chk: _Checker,
    grid: ImageGrid,
    labels: np.ndarray,
    body: np.ndarray | None,
    names: Mapping[int, str],
) -> None:
    """Rules of ``/anatomy``: labels ``[Z, Y, X]`` integers >= 0 on the grid, every non-zero
    label named (unique, non-empty names, 0 unnamed), body ``[Z, Y, X]`` of 0/1 on the grid."""
    where = "/anatomy/labels"
    if labels.dtype.kind not in "iu":
        chk.fail(where, f"dtype {_dtype_name(labels.dtype)} is not an integer type")
    if labels.ndim != 3:
        chk.fail(where, f"shape {tuple(labels.shape)} is not 3D [z, y, x]")
    _check_shape(chk, where, labels, grid.shape, "/grid shape")
    if labels.size and int(labels.min()) < 0:
        chk.fail(where, f"contains negative label {int(labels.min())}; labels must be >= 0")
    for value, name in names.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            chk.fail(where, f"label value {value!r} is not an integer")
        if int(value) == 0:
            chk.fail(where, "label 0 means 'no segment' and cannot be named")
        if not isinstance(name, str) or not name.strip():
            chk.fail(where, f"name of label {value} must be a non-empty string, got {name!r}")
    if len(set(names.values())) != len(names):
        repeated = sorted({n for n in names.values() if list(names.values()).count(n) > 1})
        chk.fail(where, f"segment names are repeated: {repeated}")
    present = {int(v) for v in np.unique(labels)} - {0}
    unnamed = sorted(present - {int(v) for v in names})
    if unnamed:
        chk.fail(where, f"label values {unnamed} have no name in label_names")
    if body is not None:
        where = "/anatomy/body"
        if body.dtype.kind not in "biu":
            chk.fail(where, f"dtype {_dtype_name(body.dtype)} is not a mask (bool or uint8)")
        if body.ndim != 3:
            chk.fail(where, f"shape {tuple(body.shape)} is not 3D [z, y, x]")
        _check_shape(chk, where, body, grid.shape, "/grid shape")
        if body.dtype.kind != "b" and body.size and (body.min() < 0 or body.max() > 1):
            bad = int(np.count_nonzero((body < 0) | (body > 1)))
            chk.fail(where, f"contains {bad} value(s) other than 0 and 1")


def _check_name(chk: _Checker, group: str, name: object) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        chk.fail(group, f"invalid entry name {name!r} (a non-empty string without '/')")
    return name


def _check_unit(chk: _Checker, where: str, unit: object, what: str) -> str:
    if not isinstance(unit, str) or not unit.strip():
        chk.fail(where, f"{what} must be a non-empty string, got {unit!r}")
    return unit


# ----------------------------------------------------------------------------------------------
# Writing


def _write_root(f: h5py.File, kind: str, version: str, created: str) -> None:
    f.attrs["format"] = kind
    f.attrs["format_version"] = np.int64(FORMAT_VERSION)
    f.attrs["software_version"] = version
    f.attrs["created_utc"] = created


def _write_grid(f: h5py.File, grid: ImageGrid) -> None:
    g = f.create_group("grid")
    g.attrs["shape"] = np.asarray(grid.shape, dtype=np.int64)
    g.attrs["spacing_mm"] = np.asarray(grid.spacing_mm, dtype=np.float64)
    g.attrs["offset_mm"] = np.asarray(grid.offset_mm, dtype=np.float64)
    g.attrs["axes"] = VOLUME_AXES
    g.attrs["frame"] = FRAME
    g.attrs["units"] = "mm"


def _write_array(
    parent: h5py.Group,
    name: str,
    data: np.ndarray,
    *,
    units: str,
    axes: str,
    compress: bool,
) -> h5py.Dataset:
    options: dict[str, Any] = {}
    if compress and data.ndim >= 1 and data.size > 0:
        chunks: tuple[int, ...] | bool = (1, *data.shape[1:]) if data.ndim == 3 else True
        options = {
            "compression": "gzip",
            "compression_opts": GZIP_LEVEL,
            "shuffle": True,
            "chunks": chunks,
        }
    ds = parent.create_dataset(name, data=data, **options)
    ds.attrs["units"] = units
    ds.attrs["axes"] = axes
    return ds


def _write_fixed(f: h5py.File, path: str, data: np.ndarray, activity_unit: str) -> h5py.Dataset:
    units, axes, _ = _DATASETS[path]
    group, name = path.rsplit("/", 1)
    parent = f.require_group(group) if group else f
    return _write_array(
        parent,
        name,
        data,
        units=activity_unit if units is None else units,
        axes=axes,
        compress=data.ndim == 3,
    )


def _float32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


_Checked = TypeVar("_Checked", Study, Result)


def _revalidated(chk: _Checker, obj: _Checked) -> _Checked:
    """``obj`` checked again by its own rules (its arrays may have been changed in place since
    it was made), so that what is written can always be read back."""
    try:
        return dataclasses.replace(obj)
    except FieldError as error:
        chk.field(error)


def write_study(path: PathLike, study: Study, *, overwrite: bool = False) -> None:
    """Write a study file (``format = "spect-study"``), atomically.

    Parameters
    ----------
    path
        File to write (conventionally ``*.h5``). Its folder must exist.
    study
        The study. Its projections ``[V, rows, bins]``, background ``[V, rows, bins]`` (counts),
        μ ``[Z, Y, X]`` (1/mm) and truth activity ``[Z, Y, X]`` (``study.activity_unit``) are
        stored as float32; a floating-point CT ``[Z, Y, X]`` (HU) as float32 and an integer one
        as is; labels ``[Z, Y, X]`` keep their integer type. NumPy arrays or CPU tensors.
    overwrite
        Replace an existing file (the CLI's ``--force``).

    Raises
    ------
    StudyFileError
        The study breaks one of its own rules (`Study` checks them when made; checked again
        here because arrays can be changed in place: shapes, dtypes, NaN/Inf, negative or
        above-MAX_COUNTS (1e15) counts, ...); the message says ``cannot write``. Nothing is written.
    TypeError
        ``study`` is not a `Study`.
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    chk = _Checker(path, prefix="cannot write: ")
    if not isinstance(study, Study):
        raise TypeError(f"study must be a recon.io.Study, got {type(study).__name__}")
    study = _revalidated(chk, study)
    acq = study.acquisition
    activity_unit = study.activity_unit
    anatomy = study.anatomy
    if anatomy is not None:
        try:  # Anatomy's own rules, again: its arrays may have been changed in place
            dataclasses.replace(anatomy)
        except (TypeError, ValueError) as error:
            chk.fail("/anatomy/labels", _short(error))

    def fill(f: h5py.File) -> None:
        _write_root(f, STUDY_FORMAT, software_version(), _now_utc())
        f.attrs["activity_unit"] = activity_unit
        _write_fixed(f, "/projections/counts", _float32(study.projections), activity_unit)

        a = f.create_group("acquisition")
        angles = np.asarray(acq.angles_deg, dtype=np.float64)
        _write_fixed(f, "/acquisition/angles_deg", angles, activity_unit)
        a.attrs["detector_shape"] = np.asarray(acq.detector_shape, dtype=np.int64)
        a.attrs["pixel_size_mm"] = np.asarray(acq.pixel_size_mm, dtype=np.float64)
        a.attrs["energy_keV"] = float(acq.energy_keV)
        for name in _ACQUISITION_NUMBERS:
            value = getattr(acq, name)
            if value is not None:
                a.attrs[name] = float(value)
        if acq.energy_window_keV is not None:
            a.attrs["energy_window_keV"] = np.asarray(acq.energy_window_keV, dtype=np.float64)
        for name in _ACQUISITION_TEXTS:
            value = getattr(acq, name)
            if value is not None:
                a.attrs[name] = value
        if acq.collimator_spec is not None:
            c = f.create_group("collimator")
            for key, value in acq.collimator_spec.to_dict().items():
                c.attrs[key] = value

        _write_grid(f, study.grid)
        if study.mu_per_mm is not None:
            ds = _write_fixed(f, "/attenuation/mu", _float32(study.mu_per_mm), activity_unit)
            ds.attrs["energy_keV"] = float(acq.energy_keV)
        if study.ct_hu is not None:
            ct = study.ct_hu
            ct = np.ascontiguousarray(ct) if ct.dtype.kind in "iu" else _float32(ct)
            _write_fixed(f, "/attenuation/ct_hu", ct, activity_unit)
        if study.background is not None:
            ds = _write_fixed(f, "/background/counts", _float32(study.background), activity_unit)
            if study.background_source is not None:
                ds.attrs["method"] = study.background_source.method
                ds.attrs["parameters"] = json.dumps(
                    dict(study.background_source.parameters), default=json_default
                )
        for window in study.windows:
            ds = _write_array(
                f.require_group("windows"),
                window.name,
                _float32(window.counts),
                units="counts",
                axes=PROJECTION_AXES,
                compress=True,
            )
            ds.attrs["low_keV"] = float(window.low_keV)
            ds.attrs["high_keV"] = float(window.high_keV)
        if study.truth_activity is not None:
            _write_fixed(f, "/truth/activity", _float32(study.truth_activity), activity_unit)
        if study.labels is not None:
            ds = _write_fixed(f, "/truth/labels", np.ascontiguousarray(study.labels), activity_unit)
            label_names = study.label_names
            if label_names:
                ds.attrs["label_values"] = np.asarray(list(label_names), dtype=np.int64)
                ds.attrs["label_names"] = np.asarray(
                    list(label_names.values()), dtype=h5py.string_dtype()
                )
        if anatomy is not None:
            _write_anatomy(f, anatomy, activity_unit)
        p = f.create_group("provenance")
        for key, value in study.provenance.items():
            p.attrs[key] = value

    write_hdf5(path, fill, overwrite=overwrite)


_ACQUISITION_NUMBERS = (
    "radius_mm", "duration_s", "sensitivity_cps_per_mbq", "half_life_s", "dead_time_s",
    "observed_rate_cps",
)  # fmt: skip
_ACQUISITION_TEXTS = (
    "isotope", "collimator", "acquisition_start", "reference_time", "dead_time_model",
)  # fmt: skip


def _write_anatomy(f: h5py.File, anatomy: Anatomy, activity_unit: str) -> None:
    labels = np.ascontiguousarray(as_numpy(anatomy.labels), dtype=np.int32)
    ds = _write_fixed(f, "/anatomy/labels", labels, activity_unit)
    names = {int(k): str(v) for k, v in anatomy.names.items()}
    ds.attrs["label_values"] = np.asarray(sorted(names), dtype=np.int64)
    ds.attrs["label_names"] = np.asarray(
        [names[k] for k in sorted(names)], dtype=h5py.string_dtype()
    )
    ds.attrs["source"] = str(anatomy.source)
    if anatomy.body is not None:
        body = np.ascontiguousarray(as_numpy(anatomy.body), dtype=np.uint8)
        _write_fixed(f, "/anatomy/body", body, activity_unit)


def write_result(path: PathLike, result: Result, *, overwrite: bool = False) -> None:
    """Write a result file (``format = "spect-result"``), atomically.

    Parameters
    ----------
    path
        File to write (conventionally ``*.h5``). Its folder must exist.
    result
        The reconstruction. ``activity`` ``[Z, Y, X]`` (``result.activity_unit``) is stored as
        float32; ``parameters`` as a JSON object (tuples come back as lists, NumPy scalars and
        arrays as numbers and lists); ``history`` arrays (1D, equal lengths) and ``extras``
        arrays (any shape, numeric) keep their dtype. Empty ``software_version`` and
        ``created_utc`` are filled in with this ``spect``'s version and the current time.
    overwrite
        Replace an existing file (the CLI's ``--force``).

    Raises
    ------
    StudyFileError
        The result breaks one of its own rules (checked again, see `write_study`) or a history
        or extras name cannot be an HDF5 name; the message says ``cannot write``. Nothing is
        written.
    TypeError
        ``result`` is not a `Result`.
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    chk = _Checker(path, prefix="cannot write: ")
    if not isinstance(result, Result):
        raise TypeError(f"result must be a recon.io.Result, got {type(result).__name__}")
    result = _revalidated(chk, result)
    activity_unit = result.activity_unit
    parameters = json.dumps(dict(result.parameters), default=json_default)
    history = {_check_name(chk, "/history", k): v for k, v in result.history.items()}
    extras = {_check_name(chk, "/extras", k): v for k, v in result.extras.items()}

    def fill(f: h5py.File) -> None:
        _write_root(
            f,
            RESULT_FORMAT,
            result.software_version or software_version(),
            result.created_utc or _now_utc(),
        )
        f.attrs["activity_unit"] = activity_unit
        if result.study_file is not None:
            f.attrs["study_file"] = os.fspath(result.study_file)
        _write_fixed(f, "/activity", _float32(result.activity), activity_unit)
        _write_grid(f, result.grid)
        m = f.create_group("method")
        m.attrs["name"] = result.method
        m.attrs["parameters"] = parameters
        h = f.create_group("history")
        for name, values in history.items():
            _write_array(h, name, values, units="", axes="iteration", compress=False)
        e = f.create_group("extras")
        for name, values in extras.items():
            _write_array(
                e,
                name,
                np.ascontiguousarray(values),
                units="",
                axes="",
                compress=values.size >= 1024,
            )

    write_hdf5(path, fill, overwrite=overwrite)


def write_hdf5(
    path: PathLike, fill: Callable[[h5py.File], None], *, overwrite: bool = False
) -> None:
    """Write an HDF5 file atomically: ``fill(f)`` builds it in memory, then its bytes go to disk.

    The file is built by HDF5's in-memory (``core``) driver with SIGINT/SIGTERM/SIGHUP deferred
    (an interrupt inside the HDF5 library would be swallowed by it, or leave it in a state that
    crashes the interpreter at exit), and its image is written by `recon.io.atomic.write_bytes`
    with plain Python I/O: a full disk or a read-only folder is an ``OSError`` naming ``path``,
    the previous file is untouched and no temporary is left. Studies and results are megabytes
    to a few hundred megabytes, so the image fits in memory beside the arrays.

    Raises
    ------
    FileExistsError, FileNotFoundError, IsADirectoryError
        Checked before anything is built (`recon.io.atomic.atomic_output`'s rules).
    OSError
        The disk write failed (full disk, quota, permissions, read-only file system).
    """
    check_target(path, overwrite)
    with deferred_signals():
        f = h5py.File(f"spect-{secrets.token_hex(8)}.h5", "w", driver="core", backing_store=False)
        try:
            fill(f)
            f.flush()
            image = f.id.get_file_image()
        finally:
            f.close()
    write_bytes(path, image, overwrite=overwrite)


# ----------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Reads pieces of one open file, turning every problem into a `StudyFileError`."""

    def __init__(self, path: PathLike, f: h5py.File) -> None:
        self.chk = _Checker(path)
        self.f = f

    def fail(self, where: str, problem: str) -> NoReturn:
        self.chk.fail(where, problem)

    def _get(self, where: str) -> h5py.Group | h5py.Dataset | None:
        try:
            return self.f.get(where)
        except (OSError, KeyError, RuntimeError, ValueError) as error:
            self.fail(where, f"cannot be read; the file is damaged ({_short(error)})")

    def group(self, where: str, *, required: bool = True) -> h5py.Group | None:
        obj = self._get(where)
        if obj is None:
            if required:
                self.fail(where, "missing required group")
            return None
        if not isinstance(obj, h5py.Group):
            self.fail(where, "is a dataset, expected a group")
        return obj

    def attr(self, obj: h5py.HLObject, where: str, name: str, *, required: bool = True) -> Any:
        try:
            present = name in obj.attrs
            value = obj.attrs[name] if present else None
        except (OSError, KeyError, RuntimeError, TypeError, ValueError) as error:
            self.fail(where, f"attribute '{name}' cannot be read ({_short(error)})")
        if not present:
            if required:
                self.fail(where, f"missing required attribute '{name}'")
            return None
        if isinstance(value, h5py.Empty):
            self.fail(where, f"attribute '{name}' is empty")
        return value

    def string(self, obj: h5py.HLObject, where: str, name: str, *, required: bool = True) -> Any:
        value = self.attr(obj, where, name, required=required)
        if value is None:
            return None
        if isinstance(value, np.ndarray) and value.shape in ((), (1,)):
            value = value.reshape(-1)[0]
        if isinstance(value, (bytes, np.bytes_)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                self.fail(where, f"attribute '{name}' is not valid UTF-8 text")
        if not isinstance(value, str):
            self.fail(where, f"attribute '{name}' must be a string, got {value!r}")
        return str(value)

    def numbers(
        self, obj: h5py.HLObject, where: str, name: str, count: int | None, *, required: bool = True
    ) -> tuple[float, ...] | None:
        value = self.attr(obj, where, name, required=required)
        if value is None:
            return None
        a = np.asarray(value)
        if a.dtype.kind not in "iuf":
            self.fail(where, f"attribute '{name}' must be numbers, got {_dtype_name(a.dtype)}")
        if a.ndim > 1 or (count is not None and a.size != count):
            self.fail(where, f"attribute '{name}' must hold {count} number(s), got shape {a.shape}")
        values = tuple(float(v) for v in a.reshape(-1))
        if not all(math.isfinite(v) for v in values):
            self.fail(where, f"attribute '{name}' contains NaN/Inf")
        return values

    def number(
        self, obj: h5py.HLObject, where: str, name: str, *, required: bool = True
    ) -> float | None:
        values = self.numbers(obj, where, name, 1, required=required)
        return None if values is None else values[0]

    def integers(
        self, obj: h5py.HLObject, where: str, name: str, count: int | None
    ) -> tuple[int, ...]:
        values = self.numbers(obj, where, name, count)
        assert values is not None
        if not all(v == round(v) for v in values):
            self.fail(where, f"attribute '{name}' must hold integers, got {values}")
        return tuple(int(v) for v in values)

    def dataset(
        self, where: str, *, required: bool = True, units: str | None = None
    ) -> np.ndarray | None:
        """Read a dataset, checking its ``units`` and ``axes`` attributes where they are fixed."""
        obj = self._get(where)
        if obj is None:
            if required:
                self.fail(where, "missing required dataset")
            return None
        if not isinstance(obj, h5py.Dataset):
            self.fail(where, "is a group, expected a dataset")
        if where in _DATASETS:
            fixed_units, axes, _ = _DATASETS[where]
            expected = fixed_units if fixed_units is not None else units
            got_units = self.string(obj, where, "units")
            if expected is not None and got_units != expected:
                self.fail(where, f"units are '{got_units}', expected '{expected}'")
            got_axes = self.string(obj, where, "axes")
            if got_axes != axes:
                self.fail(where, f"axes are '{got_axes}', expected '{axes}'")
        problem = dataset_size_problem(self.chk.file, obj)
        if problem is not None:
            self.fail(where, problem)
        try:
            if h5py.check_string_dtype(obj.dtype) is not None:
                data = np.asarray(obj.asstr()[()], dtype=str)  # refused by the dtype checks
            else:
                data = obj[()]
        except (OSError, RuntimeError, ValueError, TypeError) as error:
            self.fail(where, f"data cannot be read; the file is damaged ({_short(error)})")
        return np.asarray(data)

    def check_root(self, kind: str) -> None:
        if "format" not in self.f.attrs:
            self.fail("/", "missing attribute 'format': not a spect study or result file")
        fmt = self.string(self.f, "/", "format")
        if fmt != kind:
            other = {STUDY_FORMAT: "a study file", RESULT_FORMAT: "a result file"}.get(fmt)
            hint = f" ({other})" if other else ""
            self.fail("/", f"format is '{fmt}'{hint}, expected '{kind}'")
        value = self.attr(self.f, "/", "format_version")
        a = np.asarray(value)
        if a.dtype.kind not in "iu" or a.size != 1:
            self.fail("/", f"format_version must be an integer, got {value!r}")
        version = int(a.reshape(-1)[0])
        if version > FORMAT_VERSION:
            self.fail(
                "/",
                f"written by a newer spect (format version {version} > {FORMAT_VERSION}); "
                "upgrade spect",
            )
        if version < 1:
            self.fail("/", f"format_version must be >= 1, got {version}")

    def grid(self) -> ImageGrid:
        where = "/grid"
        g = self.group(where)
        assert g is not None
        shape = self.integers(g, where, "shape", 3)
        problem = array_size_problem(shape, 4)  # every method allocates float32 volumes of it
        if problem is not None:
            self.fail(where, problem)
        spacing = self.numbers(g, where, "spacing_mm", 3)
        offset = self.numbers(g, where, "offset_mm", 3, required=False) or (0.0, 0.0, 0.0)
        for name, expected in (("axes", VOLUME_AXES), ("frame", FRAME), ("units", "mm")):
            got = self.string(g, where, name, required=False)
            if got is not None and got != expected:
                self.fail(where, f"{name} is '{got}', expected '{expected}'")
        try:
            return ImageGrid(shape=shape, spacing_mm=spacing, offset_mm=offset)  # type: ignore[arg-type]  # numbers(..., 3) read 3 values
        except (TypeError, ValueError) as error:
            self.fail(where, _short(error))

    def acquisition(self) -> Acquisition:
        where = "/acquisition"
        a = self.group(where)
        assert a is not None
        angles = self.dataset(f"{where}/angles_deg")
        assert angles is not None
        if angles.dtype.kind not in "iuf":
            self.fail(f"{where}/angles_deg", f"dtype {_dtype_name(angles.dtype)} is not numeric")
        if angles.ndim != 1:
            self.fail(f"{where}/angles_deg", f"shape {tuple(angles.shape)} is not 1D")
        values: dict[str, Any] = {
            "angles_deg": tuple(float(v) for v in angles),
            "detector_shape": self.integers(a, where, "detector_shape", 2),
            "pixel_size_mm": self.numbers(a, where, "pixel_size_mm", 2),
            "energy_keV": self.number(a, where, "energy_keV"),
            "energy_window_keV": self.numbers(a, where, "energy_window_keV", 2, required=False),
        }
        for name in _ACQUISITION_NUMBERS:
            values[name] = self.number(a, where, name, required=False)
        for name in _ACQUISITION_TEXTS:
            values[name] = self.string(a, where, name, required=False)
        values["collimator_spec"] = self.collimator()
        try:
            return Acquisition(**values)
        except FieldError as error:
            self.chk.field(error)
        except (TypeError, ValueError) as error:
            self.fail(where, _short(error))

    def collimator(self) -> CollimatorSpec | None:
        """``/collimator`` (format version 3) as a `CollimatorSpec`, or ``None`` when absent."""
        where = "/collimator"
        c = self.group(where, required=False)
        if c is None:
            return None
        values: dict[str, Any] = {}
        for key in c.attrs:
            if key not in SPEC_KEYS:
                self.fail(where, f"unknown attribute '{key}'; expected one of {list(SPEC_KEYS)}")
            value = self.attr(c, where, key)
            if isinstance(value, (bytes, np.bytes_, str)):
                value = self.string(c, where, key)
            elif isinstance(value, np.generic):
                value = value.item()
            values[str(key)] = value
        try:
            return CollimatorSpec.from_mapping(values)
        except (TypeError, ValueError) as error:
            self.fail(where, _short(error))


#: HDF5 filters whose compression is bounded by deflate's (shuffle and checksums add nothing).
_DEFLATE_LIKE = {
    h5py.h5z.FILTER_DEFLATE,
    h5py.h5z.FILTER_SHUFFLE,
    h5py.h5z.FILTER_FLETCHER32,
    32000,
}


def dataset_size_problem(file: PathLike, ds: h5py.Dataset) -> str | None:
    """Why the dataset ``ds`` of ``file`` must not be read into memory (`recon.io.limits`:
    larger than the memory budget, or than the file could hold), or ``None``."""
    try:
        shape = tuple(int(n) for n in (ds.shape or ()))
        itemsize = int(ds.dtype.itemsize)
        plist = ds.id.get_create_plist()
        filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        return f"cannot be read; the file is damaged ({_short(error)})"
    if not filters:
        ratio: float | None = 1.0
    elif filters <= _DEFLATE_LIKE:  # 32000: LZF
        ratio = float(MAX_DEFLATE_RATIO)
    else:
        ratio = None
    return array_size_problem(shape, itemsize, file_bytes=os.path.getsize(file), compression=ratio)


def _open(path: PathLike) -> h5py.File:
    """Open ``path`` read-only, or raise `StudyFileError` if it is not a readable HDF5 file."""
    p = Path(path)
    chk = _Checker(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        chk.fail("/", "is a folder, not an HDF5 file")
    try:
        is_hdf5 = h5py.is_hdf5(p)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        chk.fail("/", "not an HDF5 file")
    try:
        return h5py.File(p, "r")
    except OSError as error:
        chk.fail("/", f"truncated or damaged HDF5 file ({_short(error)})")


def _read(path: PathLike, read: Callable[[_Reader], Any]) -> Any:
    f = _open(path)
    try:
        return read(_Reader(path, f))
    finally:
        with contextlib.suppress(
            Exception
        ):  # closing a damaged file may fail; the first error counts
            f.close()


def _read_study(r: _Reader) -> Study:
    r.check_root(STUDY_FORMAT)
    acq = r.acquisition()
    grid = r.grid()
    activity_unit = r.string(r.f, "/", "activity_unit", required=False)
    if activity_unit is not None:
        _check_unit(r.chk, "/", activity_unit, "activity_unit")
    projections = r.dataset("/projections/counts")
    assert projections is not None
    background = r.dataset("/background/counts", required=False)
    mu = r.dataset("/attenuation/mu", required=False)
    energy_of_mu = None
    if mu is not None:
        energy_of_mu = r.number(r.f["/attenuation/mu"], "/attenuation/mu", "energy_keV")
    ct_hu = r.dataset("/attenuation/ct_hu", required=False)
    truth = r.dataset("/truth/activity", required=False, units=activity_unit)
    if truth is not None and activity_unit is None:
        activity_unit = r.string(r.f["/truth/activity"], "/truth/activity", "units")
        _check_unit(r.chk, "/truth/activity", activity_unit, "units")
    labels = r.dataset("/truth/labels", required=False)
    label_names: dict[int, str] = {}
    if labels is not None:
        label_names = _read_label_names(r)
    anatomy = _read_anatomy(r, grid)
    windows = _read_windows(r)
    background_source = None
    if background is not None:
        background_source = _read_background_source(r)

    if energy_of_mu is not None and not math.isclose(energy_of_mu, acq.energy_keV, rel_tol=1e-6):
        r.fail(
            "/attenuation/mu",
            f"μ is given at {energy_of_mu:g} keV but the acquisition energy_keV is "
            f"{acq.energy_keV:g} keV",
        )
    provenance: dict[str, str] = {}
    p = r.group("/provenance", required=False)
    if p is not None:
        for key in p.attrs:
            value = r.attr(p, "/provenance", key)
            if isinstance(value, (bytes, np.bytes_)):
                value = bytes(value).decode("utf-8", errors="replace")
            elif isinstance(value, np.ndarray):
                value = value.tolist()
            provenance[str(key)] = value if isinstance(value, str) else str(value)
    try:
        return Study(
            projections=_read_float32(projections),
            acquisition=acq,
            grid=grid,
            mu_per_mm=None if mu is None else _read_float32(mu),
            ct_hu=ct_hu if ct_hu is None or ct_hu.dtype.kind != "f" else _read_float32(ct_hu),
            background=None if background is None else _read_float32(background),
            truth_activity=None if truth is None else _read_float32(truth),
            labels=labels,
            label_names=label_names,
            activity_unit=activity_unit or DEFAULT_ACTIVITY_UNIT,
            provenance=provenance,
            anatomy=anatomy,
            windows=windows,
            background_source=background_source,
        )
    except FieldError as error:
        r.chk.field(error)


def _read_windows(r: _Reader) -> tuple[EnergyWindow, ...]:
    """``/windows/<name>`` (format version 3) as `EnergyWindow` s, in name order; () if absent."""
    g = r.group("/windows", required=False)
    if g is None:
        return ()
    windows = []
    for name in sorted(g):
        where = f"/windows/{name}"
        counts = r.dataset(where)
        assert counts is not None
        obj = r.f[where]
        for attr, expected in (("units", "counts"), ("axes", PROJECTION_AXES)):
            got = r.string(obj, where, attr)
            if got != expected:
                r.fail(where, f"{attr} are '{got}', expected '{expected}'")
        low = r.number(obj, where, "low_keV")
        high = r.number(obj, where, "high_keV")
        assert low is not None and high is not None
        try:
            windows.append(EnergyWindow(name, low, high, _read_float32(counts)))
        except FieldError as error:
            r.fail(where, error.problem)
    return tuple(windows)


def _read_background_source(r: _Reader) -> BackgroundSource | None:
    """The ``method`` and ``parameters`` of ``/background/counts`` (version 3), if written."""
    where = "/background/counts"
    obj = r.f[where]
    method = r.string(obj, where, "method", required=False)
    if method is None:
        return None
    text = r.string(obj, where, "parameters", required=False)
    parameters: object = {}
    if text is not None:
        try:
            parameters = json.loads(text)
        except json.JSONDecodeError as error:
            r.fail(where, f"attribute 'parameters' is not valid JSON ({_short(error)})")
        if not isinstance(parameters, dict):
            r.fail(where, "attribute 'parameters' is not a JSON object")
    try:
        return BackgroundSource(method, parameters)  # type: ignore[arg-type]  # a dict (checked)
    except FieldError as error:
        r.fail(where, error.problem)


def _read_anatomy(r: _Reader, grid: ImageGrid) -> Anatomy | None:
    """``/anatomy`` (format version 2) as an `Anatomy`, or ``None`` when absent."""
    if r.group("/anatomy", required=False) is None:
        return None
    where = "/anatomy/labels"
    labels = r.dataset(where)
    assert labels is not None
    body = r.dataset("/anatomy/body", required=False)
    names = _read_label_names(r, where)
    if labels.dtype.kind in "iu" and labels.size and labels.max() > 0 and not names:
        r.fail(where, "missing attributes 'label_values' and 'label_names' (segment names)")
    source = r.string(r.f[where], where, "source", required=False) or ""
    _check_anatomy(r.chk, grid, labels, body, names)
    try:
        return Anatomy(labels=labels, names=names, body=body, source=source)
    except (TypeError, ValueError) as error:
        r.fail(where, _short(error))


def _read_float32(a: np.ndarray) -> np.ndarray:
    """A real array read from a file as float32 (what `read_study` returns); other dtypes
    unchanged, for the dataclass to refuse with its message."""
    return _float32(a) if a.dtype.kind in "iuf" else a


def _read_label_names(r: _Reader, where: str = "/truth/labels") -> dict[int, str]:
    ds = r.f[where]
    values = r.attr(ds, where, "label_values", required=False)
    names = r.attr(ds, where, "label_names", required=False)
    if values is None and names is None:
        return {}
    if values is None or names is None:
        missing = "label_values" if values is None else "label_names"
        r.fail(where, f"missing attribute '{missing}' (label_values and label_names go together)")
    values = np.atleast_1d(np.asarray(values))
    names = np.atleast_1d(np.asarray(names))
    if values.dtype.kind not in "iu" or values.ndim != 1:
        r.fail(where, "attribute 'label_values' must be a list of integers")
    if names.shape != values.shape:
        r.fail(
            where,
            f"label_values has {values.size} entries but label_names has {names.size}",
        )
    decoded = []
    for name in names:
        if isinstance(name, (bytes, np.bytes_)):
            name = bytes(name).decode("utf-8", errors="replace")
        if not isinstance(name, str):
            r.fail(where, "attribute 'label_names' must be a list of strings")
        decoded.append(str(name))
    if len(set(values.tolist())) != values.size:
        r.fail(where, "attribute 'label_values' has repeated values")
    return {int(v): n for v, n in zip(values.tolist(), decoded, strict=True)}


def _read_result(r: _Reader) -> Result:
    r.check_root(RESULT_FORMAT)
    grid = r.grid()
    activity_unit = r.string(r.f, "/", "activity_unit", required=False)
    activity = r.dataset("/activity", units=activity_unit)
    assert activity is not None
    if activity_unit is None:
        activity_unit = r.string(r.f["/activity"], "/activity", "units")
    _check_unit(r.chk, "/activity", activity_unit, "units")

    m = r.group("/method")
    assert m is not None
    method = r.string(m, "/method", "name")
    text = r.string(m, "/method", "parameters", required=False)
    parameters: dict[str, object] = {}
    if text is not None:
        try:
            parameters = json.loads(text)
        except json.JSONDecodeError as error:
            r.fail("/method", f"attribute 'parameters' is not valid JSON ({_short(error)})")
        if not isinstance(parameters, dict):
            r.fail("/method", "attribute 'parameters' is not a JSON object")

    history: dict[str, np.ndarray] = {}
    h = r.group("/history", required=False)
    if h is not None:
        for name in h:
            values = r.dataset(f"/history/{name}")
            assert values is not None
            history[name] = values
    extras: dict[str, np.ndarray] = {}
    e = r.group("/extras", required=False)
    if e is not None:
        for name in e:
            values = r.dataset(f"/extras/{name}")
            assert values is not None
            extras[name] = values

    try:
        return Result(
            activity=_read_float32(activity),
            grid=grid,
            method=method,
            parameters=parameters,
            history=history,
            activity_unit=activity_unit,
            software_version=r.string(r.f, "/", "software_version", required=False) or "",
            created_utc=r.string(r.f, "/", "created_utc", required=False) or "",
            extras=extras,
            study_file=r.string(r.f, "/", "study_file", required=False),
        )
    except FieldError as error:
        r.chk.field(error)


def read_study(path: PathLike) -> Study:
    """Read and check a study file written by `write_study` (or by hand to the same layout).

    Parameters
    ----------
    path
        The study file.

    Returns
    -------
    Study
        Projections ``[V, rows, bins]`` (float32 counts), acquisition, grid and whichever of μ
        ``[Z, Y, X]`` (float32, 1/mm), CT ``[Z, Y, X]`` (HU), background ``[V, rows, bins]``
        (float32 counts), truth activity ``[Z, Y, X]`` (float32) and labels ``[Z, Y, X]``
        (integer) the file holds; absent ones are ``None``.

    Raises
    ------
    StudyFileError
        One line, ``"<file>: <dataset>: <problem>"``: not an HDF5 file or a truncated one, not a
        study file, a newer format version, a missing dataset or attribute, a wrong shape, dtype
        or unit, NaN/Inf or negative counts, background, μ or activity, counts or background
        above `recon.io.study.MAX_COUNTS` (1e15), an inconsistent grid.
    FileNotFoundError
        ``path`` does not exist.
    """
    return _read(path, _read_study)


def read_result(path: PathLike) -> Result:
    """Read and check a result file written by `write_result`.

    Parameters
    ----------
    path
        The result file.

    Returns
    -------
    Result
        Activity ``[Z, Y, X]`` (float32, in ``activity_unit``), grid, method, parameters (from
        JSON), history (1D arrays), extras, and the file's ``software_version``, ``created_utc``
        and ``study_file``.

    Raises
    ------
    StudyFileError
        One line, ``"<file>: <dataset>: <problem>"`` (see `read_study`).
    FileNotFoundError
        ``path`` does not exist.
    """
    return _read(path, _read_result)


# ----------------------------------------------------------------------------------------------
# Describing


def _shape_text(shape: tuple[int, ...] | None) -> str:
    if not shape:
        return "scalar"
    return "×".join(str(n) for n in shape)


def _attribute_row(where: str, name: str, value: Any) -> tuple[str, str, str, str]:
    path = f"{where}@{name}"
    if isinstance(value, (str, bytes)):
        shape, dtype = "scalar", "string"
    elif isinstance(value, h5py.Empty):
        shape, dtype = "empty", str(value.dtype)
    else:
        a = np.asarray(value)
        shape = _shape_text(a.shape)
        dtype = "string" if a.dtype.kind in "SUO" else str(a.dtype)
    if (where, name) in _ATTRIBUTES:
        info = _ATTRIBUTES[(where, name)]
    elif where == "/provenance":
        info = "provenance"
    else:
        info = ""
    return (path, shape, dtype, info)


def _dataset_info(where: str, ds: h5py.Dataset) -> str:
    units = ds.attrs.get("units", "")
    axes = ds.attrs.get("axes", "")
    if where in _DATASETS:
        description = _DATASETS[where][2]
    elif where.startswith("/history/"):
        description = "per-iteration values"
    elif where.startswith("/extras/"):
        description = "method-specific array"
    else:
        description = ""
    parts = [str(units), description, f"axes {axes}" if axes else ""]
    return "; ".join(p for p in parts if p)


def file_kind(path: PathLike) -> Literal["study", "result"] | None:
    """``"study"`` or ``"result"`` from an HDF5 file's root ``format`` attribute, else ``None``
    (not HDF5, unreadable, or neither kind)."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("format")
    except (OSError, RuntimeError, KeyError, ValueError, TypeError):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    kinds: dict[str, Literal["study", "result"]] = {STUDY_FORMAT: "study", RESULT_FORMAT: "result"}
    return kinds.get(str(value))


def describe(path: PathLike) -> list[tuple[str, str, str, str]]:
    """List what a study or result file (or any HDF5 file) holds, e.g. for ``spect info``.

    The file is not checked beyond being readable HDF5, so a broken file can still be inspected.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    list of (path, shape, dtype, description)
        One row per dataset (``"/projections/counts"``, shape ``"64×128×128"``, ``"float32"``,
        ``"counts; measured projections; axes view,row,bin"``) and one per attribute
        (``"/grid@spacing_mm"``, ``"3"``, ``"float64"``, ``"mm — voxel size (dz, dy, dx)"``;
        root attributes as ``"/@format"``). A dataset's ``units`` and ``axes`` attributes are
        folded into its own row. Rows come in file order: root attributes first, then groups and
        datasets by name.

    Raises
    ------
    StudyFileError
        Not an HDF5 file, or a truncated or damaged one.
    FileNotFoundError
        ``path`` does not exist.
    """

    def rows_of(r: _Reader) -> list[tuple[str, str, str, str]]:
        rows: list[tuple[str, str, str, str]] = []

        def add_attributes(where: str, obj: h5py.HLObject, skip: tuple[str, ...]) -> None:
            for name in obj.attrs:
                if name not in skip:
                    rows.append(_attribute_row(where, name, r.attr(obj, where, name)))

        def visit(name: str, obj: h5py.HLObject) -> None:
            where = "/" + name
            if isinstance(obj, h5py.Dataset):
                dtype = _dtype_name(obj.dtype)
                rows.append((where, _shape_text(obj.shape), dtype, _dataset_info(where, obj)))
                add_attributes(where, obj, skip=("units", "axes"))
            else:
                add_attributes(where, obj, skip=())

        try:
            add_attributes("/", r.f, skip=())
            r.f.visititems(visit)
        except (OSError, RuntimeError, KeyError) as error:
            r.fail("/", f"cannot be read; the file is damaged ({_short(error)})")
        return rows

    return _read(path, rows_of)
