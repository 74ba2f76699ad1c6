"""The in-memory study and result: what a study file and a result file hold.

Arrays are NumPy, in the axis orders of ``docs/conventions.md``: volumes ``[Z, Y, X]`` on
``grid``, projections ``[V, rows, bins]``. Units are fixed: lengths mm, μ 1/mm, energies keV,
times s, activity concentration in ``activity_unit`` (Bq/mL unless a file says otherwise).

Expected counts in a pixel = ``count_scale`` × (projector line integral), where
``count_scale = pixel area (mm²) × 1e-3 (mL/mm³) × sensitivity (cps/MBq) × 1e-6 (MBq/Bq) ×
duration (s)``. When the sensitivity or the duration is unknown the scale is 1 and activities are
in "counts per (mm · pixel area)", still one common scale for all views.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from spectproj import ImageGrid, ParallelGeometry

ML_PER_MM3 = 1e-3
MBQ_PER_BQ = 1e-6


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
    collimator: collimator name (e.g. ``"LEHR"``), if known.
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "angles_deg", tuple(float(a) for a in self.angles_deg))
        object.__setattr__(self, "detector_shape", tuple(int(n) for n in self.detector_shape))
        object.__setattr__(self, "pixel_size_mm", tuple(float(p) for p in self.pixel_size_mm))
        if not (math.isfinite(self.energy_keV) and self.energy_keV > 0):
            raise ValueError(f"energy_keV must be a positive energy (keV), got {self.energy_keV!r}")
        for name in ("radius_mm", "duration_s", "sensitivity_cps_per_mbq"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive or None, got {value!r}")

    @property
    def count_scale(self) -> float:
        """Expected counts per unit of projector output (activity·mm) in one pixel."""
        if self.sensitivity_cps_per_mbq is None or self.duration_s is None:
            return 1.0
        area = self.pixel_size_mm[0] * self.pixel_size_mm[1]
        return area * ML_PER_MM3 * self.sensitivity_cps_per_mbq * MBQ_PER_BQ * self.duration_s


@dataclass(frozen=True)
class Study:
    """Measured (or simulated) projections with everything needed to reconstruct them.

    Parameters
    ----------
    projections: ``[V, rows, bins]`` counts (float32, >= 0).
    acquisition: the acquisition facts.
    grid: the image grid on which μ, the CT and truths are given and reconstructions are made.
    mu_per_mm: ``[Z, Y, X]`` attenuation map at ``acquisition.energy_keV`` (1/mm), if any.
    ct_hu: ``[Z, Y, X]`` CT in Hounsfield units on ``grid``, if any.
    background: ``[V, rows, bins]`` expected additive background (scatter) counts, if any.
    truth_activity: ``[Z, Y, X]`` true activity concentration (phantoms), if any.
    labels: ``[Z, Y, X]`` integer organ labels (0 = none), if any, named by ``label_names``.
    activity_unit: unit of activity concentrations (default ``"Bq/mL"``).
    provenance: free-text facts about the origin (source file, software, seed, ...).
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
