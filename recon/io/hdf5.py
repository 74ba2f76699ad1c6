"""Study and result files: HDF5 (h5py), with one-line errors for every kind of bad file.

A *study file* (``format = "spect-study"``) holds a `Study`: projections, the acquisition, the
image grid and the optional attenuation map, CT, background and truth. A *result file*
(``format = "spect-result"``) holds a `Result`: a reconstructed activity volume, its grid, the
method and its parameters, per-iteration history and method-specific extras. The layout of both is
documented, dataset by dataset, in ``docs/file-format.md``; axes and units follow
``docs/conventions.md``.

Writing is atomic (`recon.io.atomic.atomic_output`): the file appears complete or not at all, and
an existing file is replaced only with ``overwrite=True``. Writing checks the object first with the
same rules as reading, so a file that was written can always be read back. Reading checks
everything and raises `StudyFileError` (``"<file>: <dataset>: <problem>"``) on the first problem.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import math
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import h5py
import numpy as np

from recon.io.atomic import atomic_output
from recon.io.errors import StudyFileError
from recon.io.study import Acquisition, Result, Study
from spectproj import ImageGrid

__all__ = [
    "FORMAT_VERSION",
    "RESULT_FORMAT",
    "STUDY_FORMAT",
    "describe",
    "read_result",
    "read_study",
    "software_version",
    "write_result",
    "write_study",
]

FORMAT_VERSION = 1
"""Layout version written by this ``spect``; files with a higher version are refused."""

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
    ("/grid", "shape"): "voxels (Z, Y, X)",
    ("/grid", "spacing_mm"): "mm — voxel size (dz, dy, dx)",
    ("/grid", "offset_mm"): "mm — volume centre (oz, oy, ox) from the rotation axis",
    ("/grid", "axes"): "array axis order",
    ("/grid", "frame"): "patient frame of x, y, z",
    ("/grid", "units"): "unit of spacing_mm and offset_mm",
    ("/attenuation/mu", "energy_keV"): "keV — photon energy of μ",
    ("/truth/labels", "label_values"): "labels that have a name",
    ("/truth/labels", "label_names"): "names of label_values",
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
    if dtype.kind in "SU" or h5py.check_string_dtype(dtype) is not None:
        return "string"
    if dtype.kind == "O":
        return "object"
    if dtype.kind == "V":
        return "compound"
    return str(dtype)


def _as_numpy(value: Any) -> np.ndarray:
    """A NumPy array from an array-like (torch tensors included, detached and moved to CPU)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class _Checker:
    """Raises `StudyFileError` for one file; ``prefix`` marks errors found before writing."""

    def __init__(self, file: PathLike, prefix: str = "") -> None:
        self.file = os.fspath(file)
        self.prefix = prefix

    def fail(self, where: str, problem: str) -> NoReturn:
        raise StudyFileError(self.file, where, self.prefix + problem)


# ----------------------------------------------------------------------------------------------
# Checks shared by writing and reading


def _check_real(chk: _Checker, where: str, a: np.ndarray, what: str) -> None:
    kind = a.dtype.kind
    if kind == "c":
        chk.fail(where, f"dtype {a.dtype} is complex; {what} must be real numbers")
    if kind not in "iuf":
        chk.fail(where, f"dtype {_dtype_name(a.dtype)} is not numeric; {what} must be real numbers")


def _check_values(
    chk: _Checker, where: str, a: np.ndarray, what: str, *, nonnegative: bool
) -> None:
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            bad = a.size - int(np.count_nonzero(finite))
            chk.fail(where, f"contains {bad} NaN/Inf value(s); {what} must be finite")
    if nonnegative and a.size and a.min() < 0:
        chk.fail(
            where,
            f"contains {int(np.count_nonzero(a < 0))} negative value(s) "
            f"(minimum {float(a.min()):.6g}); {what} must be >= 0",
        )


def _check_shape(chk: _Checker, where: str, a: np.ndarray, shape: tuple[int, ...], of: str) -> None:
    if tuple(a.shape) != tuple(shape):
        chk.fail(where, f"shape {tuple(a.shape)} does not match {of} {tuple(shape)}")


def _check_volume(
    chk: _Checker, where: str, a: np.ndarray, grid: ImageGrid, what: str, *, nonnegative: bool
) -> None:
    _check_real(chk, where, a, what)
    if a.ndim != 3:
        chk.fail(where, f"shape {tuple(a.shape)} is not 3D [z, y, x]")
    _check_shape(chk, where, a, grid.shape, "/grid shape")
    _check_values(chk, where, a, what, nonnegative=nonnegative)


def _check_acquisition(chk: _Checker, acq: Acquisition) -> None:
    where = "/acquisition"
    angles = np.asarray(acq.angles_deg, dtype=np.float64)
    if angles.size == 0:
        chk.fail(f"{where}/angles_deg", "no angles: there must be at least one view")
    if not np.isfinite(angles).all():
        chk.fail(f"{where}/angles_deg", "contains NaN/Inf angles")
    if len(acq.detector_shape) != 2 or any(n < 1 for n in acq.detector_shape):
        chk.fail(
            where,
            f"detector_shape must be two positive integers (rows, bins), got {acq.detector_shape}",
        )
    if len(acq.pixel_size_mm) != 2 or not all(
        math.isfinite(p) and p > 0 for p in acq.pixel_size_mm
    ):
        chk.fail(where, f"pixel_size_mm must be two positive lengths (mm), got {acq.pixel_size_mm}")
    window = acq.energy_window_keV
    if window is not None:
        try:
            w = tuple(float(v) for v in window)
        except (TypeError, ValueError):
            w = ()
        if len(w) != 2 or not all(math.isfinite(v) and v > 0 for v in w) or not w[0] < w[1]:
            chk.fail(
                where,
                f"energy_window_keV must be two positive energies low < high (keV), got {window}",
            )
    for name in ("isotope", "collimator"):
        value = getattr(acq, name)
        if value is not None and not isinstance(value, str):
            chk.fail(where, f"{name} must be a string, got {type(value).__name__}")


def _check_study(
    chk: _Checker,
    *,
    projections: np.ndarray,
    acquisition: Acquisition,
    grid: ImageGrid,
    mu: np.ndarray | None,
    energy_of_mu: float | None,
    ct_hu: np.ndarray | None,
    background: np.ndarray | None,
    truth: np.ndarray | None,
    labels: np.ndarray | None,
    label_names: Mapping[int, str],
) -> None:
    """Every consistency rule of a study; the same on writing and reading."""
    _check_acquisition(chk, acquisition)
    where = "/projections/counts"
    _check_real(chk, where, projections, "counts")
    if projections.ndim != 3:
        chk.fail(where, f"shape {tuple(projections.shape)} is not 3D [view, row, bin]")
    n_angles = len(acquisition.angles_deg)
    if projections.shape[0] != n_angles:
        chk.fail(
            where,
            f"{projections.shape[0]} views but /acquisition/angles_deg has {n_angles} angles",
        )
    if tuple(projections.shape[1:]) != tuple(acquisition.detector_shape):
        chk.fail(
            where,
            f"detector size {tuple(projections.shape[1:])} does not match "
            f"/acquisition detector_shape {tuple(acquisition.detector_shape)}",
        )
    _check_values(chk, where, projections, "counts", nonnegative=True)

    if background is not None:
        where = "/background/counts"
        _check_real(chk, where, background, "background counts")
        _check_shape(chk, where, background, projections.shape, "/projections/counts shape")
        _check_values(chk, where, background, "background counts", nonnegative=True)
    if mu is not None:
        where = "/attenuation/mu"
        _check_volume(chk, where, mu, grid, "μ (1/mm)", nonnegative=True)
        if energy_of_mu is not None and not math.isclose(
            energy_of_mu, acquisition.energy_keV, rel_tol=1e-6
        ):
            chk.fail(
                where,
                f"μ is given at {energy_of_mu:g} keV but the acquisition energy_keV is "
                f"{acquisition.energy_keV:g} keV",
            )
    if ct_hu is not None:
        _check_volume(chk, "/attenuation/ct_hu", ct_hu, grid, "CT (HU)", nonnegative=False)
    if truth is not None:
        _check_volume(chk, "/truth/activity", truth, grid, "activity", nonnegative=True)
    where = "/truth/labels"
    if labels is not None:
        if labels.dtype.kind not in "iu":
            chk.fail(where, f"dtype {_dtype_name(labels.dtype)} is not an integer type")
        if labels.ndim != 3:
            chk.fail(where, f"shape {tuple(labels.shape)} is not 3D [z, y, x]")
        _check_shape(chk, where, labels, grid.shape, "/grid shape")
    if label_names and labels is None:
        chk.fail(where, "label names are given but there are no labels")
    for value, name in label_names.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            chk.fail(where, f"label value {value!r} is not an integer")
        if not isinstance(name, str):
            chk.fail(where, f"name of label {value} is not a string: {name!r}")


def _check_name(chk: _Checker, group: str, name: object) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        chk.fail(group, f"invalid entry name {name!r} (a non-empty string without '/')")
    return name


def _check_history(chk: _Checker, history: Mapping[str, np.ndarray]) -> None:
    lengths: dict[str, int] = {}
    for name, values in history.items():
        where = f"/history/{name}"
        _check_real(chk, where, values, "history values")
        if values.ndim != 1:
            chk.fail(where, f"shape {tuple(values.shape)} is not 1D")
        lengths[name] = values.shape[0]
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        chk.fail("/history", f"arrays differ in length ({listed}); they must be equal")


def _check_extra(chk: _Checker, where: str, values: np.ndarray) -> None:
    if values.dtype.kind not in "biufc":
        chk.fail(where, f"dtype {_dtype_name(values.dtype)} is not numeric")


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
        The study breaks a rule that reading enforces (shapes, dtypes, NaN/Inf or negative
        values, ...); the message says ``cannot write``. Nothing is written.
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    chk = _Checker(path, prefix="cannot write: ")
    acq = study.acquisition
    projections = _as_numpy(study.projections)
    optional = {
        "mu": study.mu_per_mm,
        "ct_hu": study.ct_hu,
        "background": study.background,
        "truth": study.truth_activity,
        "labels": study.labels,
    }
    arrays = {k: None if v is None else _as_numpy(v) for k, v in optional.items()}
    label_names = dict(study.label_names)
    activity_unit = _check_unit(chk, "/", study.activity_unit, "activity_unit")
    _check_study(
        chk,
        projections=projections,
        acquisition=acq,
        grid=study.grid,
        mu=arrays["mu"],
        energy_of_mu=None,
        ct_hu=arrays["ct_hu"],
        background=arrays["background"],
        truth=arrays["truth"],
        labels=arrays["labels"],
        label_names=label_names,
    )
    provenance = {str(k): str(v) for k, v in study.provenance.items()}

    with atomic_output(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        _write_root(f, STUDY_FORMAT, software_version(), _now_utc())
        f.attrs["activity_unit"] = activity_unit
        _write_fixed(f, "/projections/counts", _float32(projections), activity_unit)

        a = f.create_group("acquisition")
        angles = np.asarray(acq.angles_deg, dtype=np.float64)
        _write_fixed(f, "/acquisition/angles_deg", angles, activity_unit)
        a.attrs["detector_shape"] = np.asarray(acq.detector_shape, dtype=np.int64)
        a.attrs["pixel_size_mm"] = np.asarray(acq.pixel_size_mm, dtype=np.float64)
        a.attrs["energy_keV"] = float(acq.energy_keV)
        for name in ("radius_mm", "duration_s", "sensitivity_cps_per_mbq"):
            value = getattr(acq, name)
            if value is not None:
                a.attrs[name] = float(value)
        if acq.energy_window_keV is not None:
            a.attrs["energy_window_keV"] = np.asarray(acq.energy_window_keV, dtype=np.float64)
        for name in ("isotope", "collimator"):
            value = getattr(acq, name)
            if value is not None:
                a.attrs[name] = value

        _write_grid(f, study.grid)
        if arrays["mu"] is not None:
            ds = _write_fixed(f, "/attenuation/mu", _float32(arrays["mu"]), activity_unit)
            ds.attrs["energy_keV"] = float(acq.energy_keV)
        if arrays["ct_hu"] is not None:
            ct = arrays["ct_hu"]
            ct = np.ascontiguousarray(ct) if ct.dtype.kind in "iu" else _float32(ct)
            _write_fixed(f, "/attenuation/ct_hu", ct, activity_unit)
        if arrays["background"] is not None:
            _write_fixed(f, "/background/counts", _float32(arrays["background"]), activity_unit)
        if arrays["truth"] is not None:
            _write_fixed(f, "/truth/activity", _float32(arrays["truth"]), activity_unit)
        if arrays["labels"] is not None:
            ds = _write_fixed(
                f, "/truth/labels", np.ascontiguousarray(arrays["labels"]), activity_unit
            )
            if label_names:
                ds.attrs["label_values"] = np.asarray(list(label_names), dtype=np.int64)
                ds.attrs["label_names"] = np.asarray(
                    list(label_names.values()), dtype=h5py.string_dtype()
                )
        p = f.create_group("provenance")
        for key, value in provenance.items():
            p.attrs[key] = value


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


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
        The result breaks a rule that reading enforces; the message says ``cannot write``.
        Nothing is written.
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    chk = _Checker(path, prefix="cannot write: ")
    activity = _as_numpy(result.activity)
    activity_unit = _check_unit(chk, "/activity", result.activity_unit, "activity_unit")
    _check_volume(chk, "/activity", activity, result.grid, "activity", nonnegative=True)
    if not isinstance(result.method, str) or not result.method:
        chk.fail("/method", f"method name must be a non-empty string, got {result.method!r}")
    try:
        parameters = json.dumps(dict(result.parameters), default=_json_default)
    except (TypeError, ValueError) as error:
        chk.fail("/method", f"parameters are not JSON-serialisable ({_short(error)})")
    history = {_check_name(chk, "/history", k): _as_numpy(v) for k, v in result.history.items()}
    _check_history(chk, history)
    extras = {_check_name(chk, "/extras", k): _as_numpy(v) for k, v in result.extras.items()}
    for name, values in extras.items():
        _check_extra(chk, f"/extras/{name}", values)

    with atomic_output(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        _write_root(
            f,
            RESULT_FORMAT,
            result.software_version or software_version(),
            result.created_utc or _now_utc(),
        )
        f.attrs["activity_unit"] = activity_unit
        if result.study_file is not None:
            f.attrs["study_file"] = os.fspath(result.study_file)
        _write_fixed(f, "/activity", _float32(activity), activity_unit)
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
        spacing = self.numbers(g, where, "spacing_mm", 3)
        offset = self.numbers(g, where, "offset_mm", 3, required=False) or (0.0, 0.0, 0.0)
        for name, expected in (("axes", VOLUME_AXES), ("frame", FRAME), ("units", "mm")):
            got = self.string(g, where, name, required=False)
            if got is not None and got != expected:
                self.fail(where, f"{name} is '{got}', expected '{expected}'")
        try:
            return ImageGrid(shape=shape, spacing_mm=spacing, offset_mm=offset)  # type: ignore[arg-type]
        except (TypeError, ValueError) as error:
            self.fail(where, _short(error))

    def acquisition(self) -> Acquisition:
        where = "/acquisition"
        a = self.group(where)
        assert a is not None
        angles = self.dataset(f"{where}/angles_deg")
        assert angles is not None
        _check_real(self.chk, f"{where}/angles_deg", angles, "angles")
        if angles.ndim != 1:
            self.fail(f"{where}/angles_deg", f"shape {tuple(angles.shape)} is not 1D")
        values: dict[str, Any] = {
            "angles_deg": tuple(float(v) for v in angles),
            "detector_shape": self.integers(a, where, "detector_shape", 2),
            "pixel_size_mm": self.numbers(a, where, "pixel_size_mm", 2),
            "energy_keV": self.number(a, where, "energy_keV"),
            "energy_window_keV": self.numbers(a, where, "energy_window_keV", 2, required=False),
        }
        for name in ("radius_mm", "duration_s", "sensitivity_cps_per_mbq"):
            values[name] = self.number(a, where, name, required=False)
        for name in ("isotope", "collimator"):
            values[name] = self.string(a, where, name, required=False)
        try:
            acq = Acquisition(**values)
        except (TypeError, ValueError) as error:
            self.fail(where, _short(error))
        _check_acquisition(self.chk, acq)
        return acq


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

    _check_study(
        r.chk,
        projections=projections,
        acquisition=acq,
        grid=grid,
        mu=mu,
        energy_of_mu=energy_of_mu,
        ct_hu=ct_hu,
        background=background,
        truth=truth,
        labels=labels,
        label_names=label_names,
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
    if ct_hu is not None and ct_hu.dtype.kind == "f":
        ct_hu = ct_hu.astype(np.float32, copy=False)
    return Study(
        projections=_float32(projections),
        acquisition=acq,
        grid=grid,
        mu_per_mm=None if mu is None else _float32(mu),
        ct_hu=ct_hu,
        background=None if background is None else _float32(background),
        truth_activity=None if truth is None else _float32(truth),
        labels=labels,
        label_names=label_names,
        activity_unit=activity_unit or DEFAULT_ACTIVITY_UNIT,
        provenance=provenance,
    )


def _read_label_names(r: _Reader) -> dict[int, str]:
    where = "/truth/labels"
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
    _check_volume(r.chk, "/activity", activity, grid, "activity", nonnegative=True)

    m = r.group("/method")
    assert m is not None
    method = r.string(m, "/method", "name")
    if not method:
        r.fail("/method", "attribute 'name' is empty")
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
    _check_history(r.chk, history)
    extras: dict[str, np.ndarray] = {}
    e = r.group("/extras", required=False)
    if e is not None:
        for name in e:
            values = r.dataset(f"/extras/{name}")
            assert values is not None
            _check_extra(r.chk, f"/extras/{name}", values)
            extras[name] = values

    return Result(
        activity=_float32(activity),
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
        or unit, NaN/Inf or negative counts, background, μ or activity, an inconsistent grid.
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
