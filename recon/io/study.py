"""The in-memory study and result: what a study file and a result file hold.

Arrays are NumPy, in the axis orders of ``docs/conventions.md``: volumes ``[Z, Y, X]`` on
``grid``, projections ``[V, rows, bins]``. Units are fixed: lengths mm, μ 1/mm, energies keV,
times s, activity concentration in ``activity_unit`` (Bq/mL unless a file says otherwise).

Expected counts in a pixel = ``count_scale`` × (projector line integral), where
``count_scale = pixel area (mm²) × 1e-3 (mL/mm³) × sensitivity (cps/MBq) × 1e-6 (MBq/Bq) ×
duration (s) × decay factor × dead-time factor``. When the sensitivity or the duration is
unknown the first five factors are replaced by 1 and activities are in "counts per (mm · pixel
area)", still one common scale for all views. The decay factor (activities at a reference time)
and the dead-time factor (observed / true counts) are 1 unless the acquisition gives them
(`recon.corrections.timing`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from recon.corrections.timing import (
    DEAD_TIME_MODELS,
    dead_time_factor,
    decay_factor,
    parse_time,
    seconds_between,
)
from recon.io.errors import FieldTypeError, FieldValueError
from spectproj import CollimatorResponse, CollimatorSpec, ImageGrid, ParallelGeometry
from spectproj.collimator_table import normalise_name
from spectproj.collimator_table import table as collimator_table

ML_PER_MM3 = 1e-3
MBQ_PER_BQ = 1e-6

MAX_COUNTS = 1e15
"""Largest projection or background value accepted (counts in one pixel).

Real pixels hold at most ~1e7 counts; the bound keeps every float32 quantity of the Poisson
likelihood finite with a wide margin: even 2³¹ pixels at the bound give
Σ y·log λ ≈ 2³¹ × 1e15 × 35 ≈ 8e25, far below float32's 3.4e38 (a bound of 1e30 would
not: 1e30 × 1e8 pixels × log 1e30 ≈ 7e39 overflows), and ratios y/λ and their
backprojections stay below 1e20.
"""


# ----------------------------------------------------------------------------------------------
# Field rules, shared by the dataclasses below and (through them) by recon.io.hdf5


def as_numpy(value: Any) -> np.ndarray:
    """A NumPy array from an array-like (torch tensors included, detached and moved to CPU)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def dtype_text(dtype: np.dtype) -> str:
    """A dtype as the errors name it: ``"float32"``, ``"string"``, ``"object"``, ..."""
    if dtype.kind in "SU":
        return "string"
    if dtype.kind == "O":
        return "object"
    if dtype.kind == "V":
        return "compound"
    return str(dtype)


def floating(a: np.ndarray) -> np.ndarray:
    """``a`` itself when float32 or float64 (kept: analytic float64 studies keep their
    precision), else ``a`` as float32 (integers, float16)."""
    if a.dtype in (np.float32, np.float64):
        return a
    return a.astype(np.float32)


def json_default(value: object) -> object:
    """``json.dumps`` fallback for `Result.parameters`: NumPy scalars and arrays, paths, sets."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


class _Rules:
    """Raises `FieldValueError` / `FieldTypeError` for the fields of one class (``owner``)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def bad_value(self, name: str, problem: str, key: str | None = None) -> NoReturn:
        raise FieldValueError(self.owner, name, problem, key)

    def bad_type(self, name: str, problem: str, key: str | None = None) -> NoReturn:
        raise FieldTypeError(self.owner, name, problem, key)

    def array(
        self, name: str, value: object, kinds: str, what: str, key: str | None = None
    ) -> np.ndarray:
        """``value`` as an array whose dtype kind is in ``kinds`` (TypeError otherwise)."""
        if value is None or isinstance(value, (str, bytes, Mapping)):
            self.bad_type(name, f"must be an array of {what}, got {type(value).__name__}", key)
        try:
            a = as_numpy(value)
        except (TypeError, ValueError, RuntimeError) as error:
            self.bad_type(
                name, f"must be an array of {what}, got {type(value).__name__} ({error})", key
            )
        if a.dtype.kind not in kinds:
            if a.dtype.kind == "c":
                self.bad_type(name, f"dtype {a.dtype} is complex; {what} must be real numbers", key)
            if kinds == "iu":
                self.bad_type(name, f"dtype {dtype_text(a.dtype)} is not an integer type", key)
            self.bad_type(
                name, f"dtype {dtype_text(a.dtype)} is not numeric; {what} must be numbers", key
            )
        return a

    def finite(self, name: str, a: np.ndarray, what: str, key: str | None = None) -> None:
        if a.dtype.kind == "f":
            finite = np.isfinite(a)
            if not finite.all():
                bad = a.size - int(np.count_nonzero(finite))
                self.bad_value(name, f"contains {bad} NaN/Inf value(s); {what} must be finite", key)

    def nonnegative(self, name: str, a: np.ndarray, what: str) -> None:
        if a.size and a.min() < 0:
            self.bad_value(
                name,
                f"contains {int(np.count_nonzero(a < 0))} negative value(s) "
                f"(minimum {float(a.min()):.6g}); {what} must be >= 0",
            )

    def at_most(self, name: str, a: np.ndarray, limit: float, what: str) -> None:
        if a.size and a.max() > limit:
            self.bad_value(
                name,
                f"contains {int(np.count_nonzero(a > limit))} value(s) above {limit:g} "
                f"(maximum {float(a.max()):.6g}); {what} must be <= {limit:g} "
                "(float32 likelihood)",
            )

    def volume(
        self, name: str, value: object, grid: ImageGrid, what: str, *, nonnegative: bool
    ) -> np.ndarray:
        """A real ``[Z, Y, X]`` array on ``grid``, finite (and >= 0 when asked)."""
        a = self.array(name, value, "iuf", what)
        if a.ndim != 3:
            self.bad_value(name, f"shape {tuple(a.shape)} is not 3D [z, y, x]")
        if tuple(a.shape) != tuple(grid.shape):
            self.bad_value(name, f"shape {tuple(a.shape)} does not match grid.shape {grid.shape}")
        self.finite(name, a, what)
        if nonnegative:
            self.nonnegative(name, a, what)
        return a

    def counts(self, name: str, a: np.ndarray, what: str) -> np.ndarray:
        """Finite counts in ``[0, MAX_COUNTS]``, as a `floating` array."""
        self.finite(name, a, what)
        self.nonnegative(name, a, what)
        self.at_most(name, a, MAX_COUNTS, what)
        return floating(a)

    def text(self, name: str, value: object, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            self.bad_type(name, f"must be a string, got {type(value).__name__} {value!r}")
        if not empty and not value.strip():
            self.bad_value(name, f"must be a non-empty string, got {value!r}")
        return value

    def numbers(self, name: str, value: Any, kind: type[float] | type[int]) -> tuple[Any, ...]:
        """``value`` as a tuple of ``kind`` (TypeError naming the field otherwise)."""
        try:
            return tuple(kind(v) for v in value)
        except (TypeError, ValueError) as error:
            self.bad_type(name, f"must be a sequence of numbers, got {value!r} ({error})")

    def mapping(self, name: str, value: object) -> Mapping[Any, Any]:
        if not isinstance(value, Mapping):
            self.bad_type(name, f"must be a mapping, got {type(value).__name__}")
        return value

    def keys(self, name: str, value: object) -> dict[str, Any]:
        """A mapping with non-empty string keys, as a dict."""
        items = self.mapping(name, value)
        for key in items:
            if not isinstance(key, str) or not key:
                self.bad_type(name, f"keys must be non-empty strings, got {key!r}")
        return dict(items)

    def json_keys(self, name: str, value: object) -> dict[str, Any]:
        """`keys`, and ``json.dumps`` (with `json_default`) must be able to write it."""
        items = self.keys(name, value)
        try:
            json.dumps(items, default=json_default)
        except (TypeError, ValueError) as error:
            self.bad_type(name, f"are not JSON-serialisable ({error})")
        return items

    def instance(self, name: str, value: object, kind: type) -> None:
        if not isinstance(value, kind):
            self.bad_type(name, f"must be of type {kind.__name__}, got {type(value).__name__}")


def _names_match(name: str, spec: CollimatorSpec) -> bool:
    """``name`` is ``spec``'s name, or a table alias of it (any case and punctuation)."""
    if normalise_name(name) == normalise_name(spec.name):
        return True
    row = collimator_table().find(name)
    return row is not None and row.name == spec.name


@dataclass(frozen=True)
class Acquisition:
    """How the projections were acquired.

    Parameters
    ----------
    angles_deg: detector angle β of each view (docs/conventions.md).
    detector_shape: ``(rows, bins)``.
    pixel_size_mm: ``(row height, bin width)`` in mm.
    radius_mm: distance from the rotation axis to the collimator face (mm), if known.
    isotope: e.g. ``"Tc-99m"``, ``"Lu-177"``.
    energy_keV: photon energy of the main window (keV); μ is at this energy.
    energy_window_keV: ``(low, high)`` of the main window (keV), if known.
    duration_s: acquisition time per view (s), if known.
    sensitivity_cps_per_mbq: planar system sensitivity (counts/s per MBq), if known.
    collimator: collimator name (e.g. ``"LEHR"``, ``"SY-ME"``), if known.
    collimator_spec: the collimator's parameters (hole diameter, length, septa, shape, intrinsic
        resolution, penetration model; `spectproj.CollimatorSpec`), if known. Filled in from the
        collimator table (docs/collimators.md) when only a name the table knows is given; when
        both are given the name must be the spec's name (or a table alias of it), and a spec
        alone sets the name. A name the table does not know leaves it ``None`` (modelling the
        blur then fails with a message naming the collimator).
    half_life_s: physical half-life of the isotope (s), if known.
    acquisition_start: ISO 8601 date-time the acquisition started, if known.
    reference_time: ISO 8601 date-time the activities refer to (decay-corrected to it), or
        ``None`` for no decay correction. Needs ``half_life_s`` and ``acquisition_start``.
    dead_time_s: the camera's dead time τ (s), or ``None`` for no dead-time correction.
    dead_time_model: ``"paralyzable"`` or ``"non-paralyzable"`` (with ``dead_time_s``).
    observed_rate_cps: the observed count rate (cps) the dead-time factor is computed from
        (with ``dead_time_s``).
    """

    angles_deg: tuple[float, ...]
    detector_shape: tuple[int, int]
    pixel_size_mm: tuple[float, float]
    energy_keV: float
    radius_mm: float | None = None
    isotope: str | None = None
    energy_window_keV: tuple[float, float] | None = None
    duration_s: float | None = None
    sensitivity_cps_per_mbq: float | None = None
    collimator: str | None = None
    collimator_spec: CollimatorSpec | None = None
    half_life_s: float | None = None
    acquisition_start: str | None = None
    reference_time: str | None = None
    dead_time_s: float | None = None
    dead_time_model: str | None = None
    observed_rate_cps: float | None = None

    def __post_init__(self) -> None:
        rules = _Rules("Acquisition")
        angles = rules.numbers("angles_deg", self.angles_deg, float)
        detector = rules.numbers("detector_shape", self.detector_shape, int)
        pixel = rules.numbers("pixel_size_mm", self.pixel_size_mm, float)
        if not angles:
            rules.bad_value("angles_deg", "no angles: there must be at least one view")
        if not all(math.isfinite(a) for a in angles):
            rules.bad_value("angles_deg", "contains NaN/Inf angles")
        if len(detector) != 2 or any(n < 1 for n in detector):
            rules.bad_value(
                "detector_shape",
                f"detector_shape must be two positive integers (rows, bins), got {detector}",
            )
        if len(pixel) != 2 or not all(math.isfinite(p) and p > 0 for p in pixel):
            rules.bad_value(
                "pixel_size_mm", f"pixel_size_mm must be two positive lengths (mm), got {pixel}"
            )
        object.__setattr__(self, "angles_deg", angles)
        object.__setattr__(self, "detector_shape", detector)
        object.__setattr__(self, "pixel_size_mm", pixel)
        if not (math.isfinite(self.energy_keV) and self.energy_keV > 0):
            rules.bad_value(
                "energy_keV",
                f"energy_keV must be a positive energy (keV), got {self.energy_keV!r}",
            )
        for name in (
            "radius_mm", "duration_s", "sensitivity_cps_per_mbq", "half_life_s", "dead_time_s",
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                rules.bad_value(name, f"{name} must be positive or None, got {value!r}")
        self._check_times(rules)
        window = self.energy_window_keV
        if window is not None:
            try:
                w = tuple(float(v) for v in window)
            except (TypeError, ValueError):
                w = ()
            if len(w) != 2 or not all(math.isfinite(v) and v > 0 for v in w) or not w[0] < w[1]:
                rules.bad_value(
                    "energy_window_keV",
                    f"energy_window_keV must be two positive energies low < high (keV), "
                    f"got {window}",
                )
            object.__setattr__(self, "energy_window_keV", w)
        for name in ("isotope", "collimator"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                rules.bad_type(name, f"{name} must be a string, got {type(value).__name__}")
        self._resolve_collimator(rules)

    def _resolve_collimator(self, rules: _Rules) -> None:
        spec, name = self.collimator_spec, self.collimator
        if spec is not None:
            rules.instance("collimator_spec", spec, CollimatorSpec)
        table = collimator_table()
        if spec is not None and name is None:
            object.__setattr__(self, "collimator", spec.name)
            return
        if spec is not None and name is not None and _names_match(name, spec):
            return
        if spec is not None and spec != table.find(spec.name):
            rules.bad_value(
                "collimator",
                f"collimator {name!r} is not the name of collimator_spec {spec.name!r}; "
                "replace both (recon.io.study.with_collimator)",
            )
        # No spec, or a row of the table under another name (dataclasses.replace(acquisition,
        # collimator=...)): the name picks the row; a name the table does not know, none.
        object.__setattr__(self, "collimator_spec", table.find(name) if name else None)

    def _check_times(self, rules: _Rules) -> None:
        """Rules of the decay and dead-time fields (they come in groups)."""
        for name in ("acquisition_start", "reference_time"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                rules.bad_type(name, f"{name} must be an ISO 8601 string, got {value!r}")
            try:
                parse_time(value, name)
            except ValueError as error:
                rules.bad_value(name, str(error))
        if self.reference_time is not None:
            missing = [n for n in ("half_life_s", "acquisition_start") if getattr(self, n) is None]
            if missing:
                rules.bad_value(
                    "reference_time",
                    f"a decay correction to {self.reference_time} needs {' and '.join(missing)}",
                )
            try:
                assert self.acquisition_start is not None
                seconds_between(self.reference_time, self.acquisition_start)
            except ValueError as error:
                rules.bad_value("reference_time", str(error))
        dead = (self.dead_time_s, self.dead_time_model, self.observed_rate_cps)
        if any(v is not None for v in dead):
            if any(v is None for v in dead):
                rules.bad_value(
                    "dead_time_s",
                    f"dead_time_s, dead_time_model and observed_rate_cps go together, got {dead}",
                )
            if self.dead_time_model not in DEAD_TIME_MODELS:
                rules.bad_value(
                    "dead_time_model",
                    f"must be one of {list(DEAD_TIME_MODELS)}, got {self.dead_time_model!r}",
                )
            try:
                self.dead_time_factor  # noqa: B018  (checks the rate is below the maximum)
            except ValueError as error:
                rules.bad_value("observed_rate_cps", str(error))

    @property
    def decay_factor(self) -> float:
        """Mean fraction of the reference-time activity present during the acquisition
        (`recon.corrections.timing.decay_factor`); 1 without a ``reference_time``."""
        if self.reference_time is None:
            return 1.0
        assert self.half_life_s is not None and self.acquisition_start is not None
        elapsed = seconds_between(self.reference_time, self.acquisition_start)
        return decay_factor(self.half_life_s, elapsed, self.duration_s)

    @property
    def dead_time_factor(self) -> float:
        """Observed / true counts at ``observed_rate_cps``
        (`recon.corrections.timing.dead_time_factor`); 1 without a dead time."""
        if self.dead_time_s is None or self.dead_time_model is None:
            return 1.0
        assert self.observed_rate_cps is not None
        return dead_time_factor(self.observed_rate_cps, self.dead_time_s, self.dead_time_model)

    @property
    def count_scale(self) -> float:
        """Expected counts per unit of projector output (activity·mm) in one pixel: pixel area ×
        1e-3 × sensitivity × 1e-6 × duration (1 when either is unknown) × `decay_factor` ×
        `dead_time_factor`. The one place where counts meet activity: every method uses it."""
        scale = 1.0
        if self.sensitivity_cps_per_mbq is not None and self.duration_s is not None:
            area = self.pixel_size_mm[0] * self.pixel_size_mm[1]
            scale = area * ML_PER_MM3 * self.sensitivity_cps_per_mbq * MBQ_PER_BQ * self.duration_s
        return scale * self.decay_factor * self.dead_time_factor

    def quantification(self) -> dict[str, object]:
        """How counts become activity, for a result's parameters: the count scale and every
        factor in it (sensitivity, duration, decay, dead time) with their inputs."""
        return {
            "count_scale": self.count_scale,
            "sensitivity_cps_per_mbq": self.sensitivity_cps_per_mbq,
            "duration_s": self.duration_s,
            "decay_factor": self.decay_factor,
            "half_life_s": self.half_life_s,
            "acquisition_start": self.acquisition_start,
            "reference_time": self.reference_time,
            "dead_time_factor": self.dead_time_factor,
            "dead_time_s": self.dead_time_s,
            "dead_time_model": self.dead_time_model,
            "observed_rate_cps": self.observed_rate_cps,
        }


@dataclass(frozen=True)
class EnergyWindow:
    """The counts of one more energy window, acquired with the projections (same views, pixels).

    Parameters
    ----------
    name: a short name, unique in the study (``"lower"``, ``"upper"``, ``"peak2"``...; no ``/``).
    low_keV, high_keV: the window's limits (keV), ``0 < low < high``.
    counts: ``[V, rows, bins]`` counts, on the conventions of the projections (float32 or
        float64 after construction, finite, 0 ≤ counts ≤ `MAX_COUNTS`).
    """

    name: str
    low_keV: float
    high_keV: float
    counts: np.ndarray

    def __post_init__(self) -> None:
        rules = _Rules("EnergyWindow")
        name = rules.text("name", self.name)
        if "/" in name or name in (".", ".."):
            rules.bad_value("name", f"must be a plain name without '/', got {name!r}")
        lo, hi = float(self.low_keV), float(self.high_keV)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            rules.bad_value(
                "low_keV", f"window must be two energies 0 < low < high (keV), got ({lo}, {hi})"
            )
        counts = rules.array("counts", self.counts, "iuf", "counts")
        if counts.ndim != 3:
            rules.bad_value("counts", f"shape {tuple(counts.shape)} is not 3D [view, row, bin]")
        object.__setattr__(self, "low_keV", lo)
        object.__setattr__(self, "high_keV", hi)
        object.__setattr__(self, "counts", rules.counts("counts", counts, "counts"))

    @property
    def width_keV(self) -> float:
        """``high − low`` (keV)."""
        return self.high_keV - self.low_keV


#: How a study's background can have been made (`BackgroundSource.method`).
BACKGROUND_METHODS = ("tew", "dew", "simulated", "given")


@dataclass(frozen=True)
class BackgroundSource:
    """How a study's background (the additive scatter term) was made.

    Parameters
    ----------
    method: one of `BACKGROUND_METHODS`: ``"tew"`` / ``"dew"`` (triple / dual energy window,
        `recon.corrections.scatter`), ``"simulated"`` (the expected scatter of a simulation),
        ``"given"`` (from elsewhere).
    parameters: the windows, smoothing, k... (JSON-serialisable values).
    """

    method: str
    parameters: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rules = _Rules("BackgroundSource")
        if self.method not in BACKGROUND_METHODS:
            rules.bad_value(
                "method", f"must be one of {list(BACKGROUND_METHODS)}, got {self.method!r}"
            )
        object.__setattr__(self, "parameters", rules.json_keys("parameters", self.parameters))


@dataclass(frozen=True)
class Anatomy:
    """A segmentation of the study's body on the study grid: an input, not the truth.

    Stored in a study file under ``/anatomy`` (``docs/file-format.md``), separately from the
    phantom truth ``/truth/labels``. It may be wrong (misregistered, dilated, missing lesions);
    methods that use it (`recon.anatomy`) must tolerate that.

    Parameters
    ----------
    labels:
        ``[Z, Y, X]`` integer segment labels on the study grid, 0 = no segment (int32 after
        construction). Segments do not overlap (one label per voxel).
    names:
        Label value → segment name (e.g. ``{1: "liver", 2: "spleen"}``); every non-zero value
        present in ``labels`` has a name, names are unique and non-empty.
    body:
        ``[Z, Y, X]`` bool body outline (where activity may be), or ``None`` when not known.
        Every labelled voxel should lie inside it (importers drop or warn otherwise).
    source:
        One line on where it came from (e.g. ``"TotalSegmentator NIfTI /path/seg.nii.gz"``,
        ``"CT threshold"``, ``"phantom labels, shifted 1 voxel in x"``).
    """

    labels: np.ndarray
    names: Mapping[int, str]
    body: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 3:
            raise ValueError(f"anatomy labels must be 3D [z, y, x], got shape {labels.shape}")
        if labels.dtype.kind not in "iub":
            raise ValueError(f"anatomy labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int32, copy=False)
        if labels.size and int(labels.min()) < 0:
            raise ValueError(f"anatomy labels must be >= 0, got {int(labels.min())}")
        names = {int(k): str(v) for k, v in dict(self.names).items()}
        if 0 in names:
            raise ValueError("anatomy label 0 means 'no segment' and cannot be named")
        if any(not n.strip() for n in names.values()):
            raise ValueError("anatomy segment names must be non-empty")
        if len(set(names.values())) != len(names):
            raise ValueError(f"anatomy segment names must be unique, got {sorted(names.values())}")
        present = {int(v) for v in np.unique(labels)} - {0}
        unnamed = sorted(present - set(names))
        if unnamed:
            raise ValueError(f"anatomy labels {unnamed} have no name")
        body = self.body
        if body is not None:
            body = np.asarray(body)
            if body.shape != labels.shape:
                raise ValueError(
                    f"anatomy body outline has shape {body.shape}, labels {labels.shape}"
                )
            body = body.astype(bool, copy=False)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "source", str(self.source))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        z, y, x = self.labels.shape
        return int(z), int(y), int(x)

    def label(self, name: str) -> int:
        """Label value of a segment name (``KeyError`` naming the known ones otherwise)."""
        for value, n in self.names.items():
            if n == name:
                return value
        raise KeyError(f"no segment named {name!r}; have {sorted(self.names.values())}")

    def mask(self, name: str) -> np.ndarray:
        """Bool ``[Z, Y, X]``: the voxels of segment ``name``."""
        return self.labels == self.label(name)


@dataclass(frozen=True)
class Study:
    """Measured (or simulated) projections with everything needed to reconstruct them.

    Parameters
    ----------
    projections: ``[V, rows, bins]`` counts (float32 or float64, finite, 0 ≤ counts ≤
        `MAX_COUNTS`).
    acquisition: the acquisition facts.
    grid: the image grid on which μ, the CT and truths are given and reconstructions are made.
    mu_per_mm: ``[Z, Y, X]`` attenuation map at ``acquisition.energy_keV`` (1/mm), if any.
    ct_hu: ``[Z, Y, X]`` CT in Hounsfield units on ``grid``, if any.
    background: ``[V, rows, bins]`` expected additive background (scatter) counts, if any.
    truth_activity: ``[Z, Y, X]`` true activity concentration (phantoms), if any.
    labels: ``[Z, Y, X]`` integer organ labels (0 = none), if any, named by ``label_names``
        (the phantom's truth; a segmentation given as an input is ``anatomy``).
    activity_unit: unit of activity concentrations (default ``"Bq/mL"``).
    provenance: free-text facts about the origin (source file, software, seed, ...).
    anatomy: a segmentation on ``grid`` (an input of anatomy-guided methods), if any.
    windows: the other energy windows acquired with the projections (scatter windows, other
        photopeaks), each `EnergyWindow` of the projections' shape; names unique.
    background_source: how ``background`` was made (`BackgroundSource`), if known; ``None``
        (dropped) when there is no background.
    """

    projections: np.ndarray
    acquisition: Acquisition
    grid: ImageGrid
    mu_per_mm: np.ndarray | None = None
    ct_hu: np.ndarray | None = None
    background: np.ndarray | None = None
    truth_activity: np.ndarray | None = None
    labels: np.ndarray | None = None
    label_names: Mapping[int, str] = field(default_factory=dict)
    activity_unit: str = "Bq/mL"
    provenance: Mapping[str, str] = field(default_factory=dict)
    anatomy: Anatomy | None = None
    windows: tuple[EnergyWindow, ...] = ()
    background_source: BackgroundSource | None = None

    def __post_init__(self) -> None:
        """Check every rule of a study and normalise dtypes (no copy when already right).

        Raises `recon.io.FieldValueError` / `FieldTypeError` (``ValueError`` / ``TypeError``)
        naming the field, the expected and the actual value: wrong types; projections not
        ``[V, rows, bins]`` with V = ``len(acquisition.angles_deg)`` and (rows, bins) =
        ``acquisition.detector_shape``; projections or background not finite, negative or above
        `MAX_COUNTS`; background not of the projections' shape; μ, CT or truth not ``[Z, Y, X]``
        on ``grid`` (μ and truth finite and >= 0, CT finite); labels not integer or not on
        ``grid``; label names without labels or not int → str; an anatomy not on ``grid``; an
        empty ``activity_unit``. Tensors become NumPy arrays (on the CPU); projections,
        background, μ and truth become `floating` (float32 or float64 kept, integers → float32,
        no copy when already floating), a floating-point CT too; provenance becomes
        ``dict[str, str]``, label names ``dict[int, str]``. Files store float32
        (`recon.io.write_study`).
        """
        rules = _Rules("Study")
        rules.instance("acquisition", self.acquisition, Acquisition)
        rules.instance("grid", self.grid, ImageGrid)
        acq, grid = self.acquisition, self.grid
        name = "projections"
        projections = rules.array(name, self.projections, "iuf", "counts")
        if projections.ndim != 3:
            rules.bad_value(name, f"shape {tuple(projections.shape)} is not 3D [view, row, bin]")
        views = len(acq.angles_deg)
        if projections.shape[0] != views:
            rules.bad_value(
                name, f"{projections.shape[0]} views but acquisition.angles_deg has {views} angles"
            )
        if tuple(projections.shape[1:]) != acq.detector_shape:
            rules.bad_value(
                name,
                f"detector size {tuple(projections.shape[1:])} does not match "
                f"acquisition.detector_shape {acq.detector_shape}",
            )
        set_field = functools.partial(object.__setattr__, self)
        set_field(name, rules.counts(name, projections, "counts"))
        if self.background is not None:
            name = "background"
            background = rules.array(name, self.background, "iuf", "background counts")
            if background.shape != projections.shape:
                rules.bad_value(
                    name,
                    f"shape {tuple(background.shape)} does not match projections shape "
                    f"{tuple(projections.shape)}",
                )
            set_field(name, rules.counts(name, background, "background counts"))
        if self.mu_per_mm is not None:
            mu = rules.volume("mu_per_mm", self.mu_per_mm, grid, "μ (1/mm)", nonnegative=True)
            set_field("mu_per_mm", floating(mu))
        if self.ct_hu is not None:
            ct = rules.volume("ct_hu", self.ct_hu, grid, "CT (HU)", nonnegative=False)
            set_field("ct_hu", floating(ct) if ct.dtype.kind == "f" else ct)
        if self.truth_activity is not None:
            truth = rules.volume(
                "truth_activity", self.truth_activity, grid, "activity", nonnegative=True
            )
            set_field("truth_activity", floating(truth))
        if self.labels is not None:
            labels = rules.array("labels", self.labels, "iu", "labels")
            if labels.ndim != 3:
                rules.bad_value("labels", f"shape {tuple(labels.shape)} is not 3D [z, y, x]")
            if tuple(labels.shape) != grid.shape:
                rules.bad_value(
                    "labels", f"shape {tuple(labels.shape)} does not match grid.shape {grid.shape}"
                )
            set_field("labels", labels)
        names = dict(rules.mapping("label_names", self.label_names))
        if names and self.labels is None:
            rules.bad_value("label_names", "label names are given but there are no labels")
        for value, text in names.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                rules.bad_type("label_names", f"label value {value!r} is not an integer")
            if not isinstance(text, str):
                rules.bad_type("label_names", f"name of label {value} is not a string: {text!r}")
        set_field("label_names", {int(k): v for k, v in names.items()})
        rules.text("activity_unit", self.activity_unit)
        provenance = rules.mapping("provenance", self.provenance)
        set_field("provenance", {str(k): str(v) for k, v in provenance.items()})
        if self.anatomy is not None:
            rules.instance("anatomy", self.anatomy, Anatomy)
            if self.anatomy.shape != grid.shape:
                rules.bad_value(
                    "anatomy",
                    f"labels shape {self.anatomy.shape} does not match grid.shape {grid.shape}",
                )
        self._check_windows(rules, tuple(projections.shape))

    def _check_windows(self, rules: _Rules, shape: tuple[int, ...]) -> None:
        windows = self.windows
        if isinstance(windows, (EnergyWindow, str, bytes)) or not hasattr(windows, "__iter__"):
            rules.bad_type("windows", f"must be a sequence of EnergyWindow, got {windows!r}")
        windows = tuple(windows)
        names = []
        for w in windows:
            rules.instance("windows", w, EnergyWindow)
            if tuple(w.counts.shape) != shape:
                rules.bad_value(
                    "windows",
                    f"window {w.name!r} has shape {tuple(w.counts.shape)}, the projections {shape}",
                )
            names.append(w.name)
        if len(set(names)) != len(names):
            rules.bad_value("windows", f"window names repeat: {names}")
        object.__setattr__(self, "windows", windows)
        if self.background_source is not None:
            rules.instance("background_source", self.background_source, BackgroundSource)
            if self.background is None:  # replace(study, background=None) drops its origin too
                object.__setattr__(self, "background_source", None)

    def counts_model(self) -> dict[str, object]:
        """How this study's counts relate to activity, for every result's parameters (one record,
        the same for every method): ``quantification`` (`Acquisition.quantification`: count
        scale, sensitivity, decay and dead-time factors) and ``background_source`` (method and
        parameters of the scatter background, ``None`` without one or when unknown)."""
        source = self.background_source
        return {
            "quantification": self.acquisition.quantification(),
            "background_source": (
                None
                if source is None
                else {"method": source.method, "parameters": dict(source.parameters)}
            ),
        }

    def window(self, name: str) -> EnergyWindow:
        """The energy window called ``name`` (``KeyError`` naming the known ones otherwise)."""
        for w in self.windows:
            if w.name == name:
                return w
        raise KeyError(f"no energy window named {name!r}; have {[w.name for w in self.windows]}")

    def geometry(self) -> ParallelGeometry:
        """The projector geometry of this study."""
        a = self.acquisition
        return ParallelGeometry(
            self.grid,
            angles_deg=a.angles_deg,
            detector_shape=a.detector_shape,
            pixel_size_mm=a.pixel_size_mm,
            radius_mm=a.radius_mm,
        )

    def collimator_response(self) -> CollimatorResponse | None:
        """The depth-dependent collimator blur of this study, or ``None``.

        ``acquisition.collimator_spec.response(acquisition.energy_keV)`` (geometric response at
        the photon energy, intrinsic resolution in quadrature, the penetration tail if the spec
        has one) when the acquisition has a collimator and a radius (``radius_mm``, needed to
        place the collimator face); ``None`` when either is missing. The one way to resolve a
        study's collimator (CLI, batch and NeRF training use it).

        Raises
        ------
        ValueError
            The acquisition names a collimator the table does not know (the message lists the
            known ones), or the holes are transparent at the photon energy.
        """
        a = self.acquisition
        if not a.collimator or a.radius_mm is None:
            return None
        if a.collimator_spec is None:
            return CollimatorResponse.from_table(a.collimator, a.energy_keV)  # raises: unknown
        return a.collimator_spec.response(a.energy_keV)


def with_collimator(study: Study, spec: CollimatorSpec | None) -> Study:
    """``study`` with another collimator (``--collimator NAME|FILE.toml``), or none (``None``).

    Name and parameters are replaced together; everything else is kept.
    """
    if spec is not None and not isinstance(spec, CollimatorSpec):
        raise TypeError(
            f"spec must be a spectproj.CollimatorSpec or None, got {type(spec).__name__}"
        )
    acquisition = dataclasses.replace(
        study.acquisition,
        collimator=None if spec is None else spec.name,
        collimator_spec=spec,
    )
    return dataclasses.replace(study, acquisition=acquisition)


@dataclass(frozen=True)
class Result:
    """A reconstruction: activity on a grid, how it was made and how it went.

    Parameters
    ----------
    activity: ``[Z, Y, X]`` reconstructed activity concentration in ``activity_unit``.
    grid: its image grid.
    method: e.g. ``"mlem"``, ``"osem"``, ``"nerf"``.
    parameters: every parameter of the method (JSON-serialisable values).
    history: per-iteration/step values, each a 1D array of equal length (e.g. log-likelihood).
    activity_unit: unit of ``activity``.
    software_version: the ``spect`` version that made it.
    created_utc: ISO 8601 timestamp.
    extras: method-specific arrays (a NeRF checkpoint's tensors, rendered projections, ...).
    study_file: path of the study it came from, if any.
    """

    activity: np.ndarray
    grid: ImageGrid
    method: str
    parameters: Mapping[str, object] = field(default_factory=dict)
    history: Mapping[str, np.ndarray] = field(default_factory=dict)
    activity_unit: str = "Bq/mL"
    software_version: str = ""
    created_utc: str = ""
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    study_file: str | None = None

    def __post_init__(self) -> None:
        """Check every rule of a result and normalise dtypes (no copy when already right).

        Raises `recon.io.FieldValueError` / `FieldTypeError` (``ValueError`` / ``TypeError``)
        naming the field, the expected and the actual value: activity not a real ``[Z, Y, X]``
        array on ``grid``, or not finite, or negative; an empty ``method`` or ``activity_unit``;
        parameters not a mapping with string keys that ``json.dumps`` can write (NumPy values,
        paths and sets allowed); history not 1D real arrays of one length; extras not numeric
        arrays. Activity becomes `floating` (float32 or float64 kept, integers → float32), history
        and extras NumPy arrays (tensors are moved to the CPU), ``study_file`` a string.
        """
        rules = _Rules("Result")
        rules.instance("grid", self.grid, ImageGrid)
        activity = rules.volume("activity", self.activity, self.grid, "activity", nonnegative=True)
        object.__setattr__(self, "activity", floating(activity))
        rules.text("method", self.method)
        object.__setattr__(self, "parameters", rules.json_keys("parameters", self.parameters))
        history = rules.keys("history", self.history)
        for key, values in history.items():
            a = rules.array("history", values, "iuf", "history values", key)
            if a.ndim != 1:
                rules.bad_value("history", f"shape {tuple(a.shape)} is not 1D", key)
            history[key] = a
        lengths = {key: a.shape[0] for key, a in history.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            rules.bad_value("history", f"arrays differ in length ({listed}); they must be equal")
        object.__setattr__(self, "history", history)
        extras = rules.keys("extras", self.extras)
        for key, values in extras.items():
            extras[key] = rules.array("extras", values, "biufc", "extras", key)
        object.__setattr__(self, "extras", extras)
        rules.text("activity_unit", self.activity_unit)
        rules.text("software_version", self.software_version, empty=True)
        rules.text("created_utc", self.created_utc, empty=True)
        if self.study_file is not None:
            if not isinstance(self.study_file, (str, os.PathLike)):
                rules.bad_type(
                    "study_file", f"must be a path or None, got {type(self.study_file).__name__}"
                )
            object.__setattr__(self, "study_file", os.fspath(self.study_file))
