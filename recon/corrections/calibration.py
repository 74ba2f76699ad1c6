"""Planar sensitivity (cps/MBq) of a camera from an image of a source of known activity.

A source of activity ``A`` at the reference time ``t_ref``, imaged for ``T`` seconds from
``t_start``, gives in each view ``C = S · A · f_decay · T`` photopeak counts (after the scatter
estimate is subtracted), with ``f_decay`` the mean decay over the frame relative to ``t_ref``
(`recon.corrections.timing.decay_factor`). So ``S = C / (A · f_decay · T)``, per view; the
calibration is their mean (a study has one count scale for AP and PA). Image the source in air
(or in a known scatter medium), centred, well inside the field of view, with the collimator and
energy window of the patient studies: that is the planar-sensitivity definition of
``docs/scatter-calibration.md``, and the sensitivity is valid for those only.

A calibration is written as a small JSON file (`write_calibration`) that ``spect convert
dicom-planar --calibration`` reads (`read_calibration`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Calibration",
    "calibrate_planar",
    "read_calibration",
    "sensitivity_from_counts",
    "write_calibration",
]

PathLike = str | os.PathLike[str]
_FORMAT = "spect-calibration"


@dataclass(frozen=True)
class Calibration:
    """A planar sensitivity and how it was measured.

    Attributes
    ----------
    sensitivity_cps_per_mbq: counts per second per MBq in the photopeak window (> 0).
    isotope: the nuclide it holds for, if known.
    energy_window_keV: the photopeak window ``(low, high)`` it holds for, if known.
    method: ``"planar source"`` (measured by `calibrate_planar`) or ``"given"``.
    details: what was measured (file, activity, times, counts and sensitivity per view...).
    """

    sensitivity_cps_per_mbq: float
    isotope: str | None = None
    energy_window_keV: tuple[float, float] | None = None
    method: str = "given"
    details: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = float(self.sensitivity_cps_per_mbq)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"sensitivity_cps_per_mbq must be positive, got {s!r}")
        object.__setattr__(self, "sensitivity_cps_per_mbq", s)
        if self.energy_window_keV is not None:
            lo, hi = (float(v) for v in self.energy_window_keV)
            if not 0 < lo < hi:
                raise ValueError(f"energy_window_keV must be 0 < low < high, got ({lo}, {hi})")
            object.__setattr__(self, "energy_window_keV", (lo, hi))
        object.__setattr__(self, "details", dict(self.details))


def sensitivity_from_counts(
    counts: float, *, activity_mbq: float, duration_s: float, decay_factor: float = 1.0
) -> float:
    """``counts / (activity_mbq · decay_factor · duration_s)`` in cps/MBq.

    Raises
    ------
    ValueError
        A count below 0, or an activity, duration or decay factor that is not positive.
    """
    for name, value in (
        ("activity_mbq", activity_mbq),
        ("duration_s", duration_s),
        ("decay_factor", decay_factor),
    ):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive, got {value!r}")
    if not (math.isfinite(counts) and counts >= 0):
        raise ValueError(f"counts must be >= 0, got {counts!r}")
    return float(counts) / (activity_mbq * decay_factor * duration_s)


def calibrate_planar(
    source: PathLike,
    *,
    activity_mbq: float,
    activity_time: str | None = None,
    half_life_s: float | None = None,
    duration_s: float | None = None,
    scatter: str = "auto",
) -> Calibration:
    """The planar sensitivity from a DICOM NM planar image (AP/PA) of a known source.

    Parameters
    ----------
    source:
        The NM file (or folder) of the source (`recon.io.dicom_nm.read_nm_planar`).
    activity_mbq:
        The source's activity (MBq) at ``activity_time``.
    activity_time:
        ISO 8601 time the activity was measured; ``None``: at the acquisition start (the decay
        during the frame is still corrected when the half-life is known).
    half_life_s:
        Overrides the file's RadionuclideHalfLife and the nuclide table.
    duration_s:
        Overrides the file's ActualFrameDuration.
    scatter:
        ``"auto"`` (subtract a TEW estimate when the file has scatter windows on both sides),
        ``"tew"`` or ``"none"``.

    Returns
    -------
    Calibration
        The mean of the views' sensitivities, with the per-view numbers in ``details``.

    Raises
    ------
    ValueError
        No duration, an activity time without a half-life or acquisition time, bad numbers.
    """
    from recon.corrections.scatter import estimate_scatter, find_scatter_windows
    from recon.corrections.timing import decay_factor, seconds_between
    from recon.io._common import detector_grid
    from recon.io.dicom_nm import nm_planar_study, read_nm_planar

    if scatter not in ("auto", "tew", "none"):
        raise ValueError(f"scatter must be auto, tew or none; got {scatter!r}")
    images = read_nm_planar(source)
    grid = detector_grid(images.images.shape[1:], images.pixel_size_mm, transverse_size=1)
    study = nm_planar_study(
        images, grid, energy_keV=images.energy_keV or 1.0, duration_s=duration_s,
        half_life_s=half_life_s,
    )  # fmt: skip
    acq = study.acquisition
    if acq.duration_s is None:
        raise ValueError(
            f"{images.sources[0]}: the acquisition duration is unknown (no static "
            "ActualFrameDuration); give --duration-s"
        )
    factor = 1.0
    elapsed = None
    if acq.half_life_s is not None and (activity_time is None or acq.acquisition_start):
        if activity_time is not None:
            assert acq.acquisition_start is not None
            elapsed = seconds_between(activity_time, acq.acquisition_start)
        factor = decay_factor(acq.half_life_s, elapsed or 0.0, acq.duration_s)
    elif activity_time is not None:
        missing = "half-life" if acq.half_life_s is None else "acquisition time"
        raise ValueError(
            f"{images.sources[0]}: decay from {activity_time} needs the {missing} (not in the "
            "file; give it)"
        )
    window = acq.energy_window_keV
    lower, upper = find_scatter_windows(window, study.windows) if window else (None, None)
    use = scatter == "tew" or (scatter == "auto" and lower is not None and upper is not None)
    counts = np.asarray(study.projections, dtype=np.float64).sum(axis=(1, 2))
    scatter_counts = np.zeros_like(counts)
    if use:
        estimated = estimate_scatter(study, "tew")
        assert estimated.background is not None
        scatter_counts = np.asarray(estimated.background, dtype=np.float64).sum(axis=(1, 2))
    per_view = [
        sensitivity_from_counts(
            float(c - s), activity_mbq=activity_mbq, duration_s=acq.duration_s, decay_factor=factor
        )
        for c, s in zip(counts, scatter_counts, strict=True)
    ]
    details: dict[str, object] = {
        "source_file": images.sources[0],
        "activity_mbq": float(activity_mbq),
        "activity_time": activity_time,
        "acquisition_start": acq.acquisition_start,
        "duration_s": acq.duration_s,
        "half_life_s": acq.half_life_s,
        "decay_factor": factor,
        "views": ["anterior", "posterior"],
        "counts": [float(c) for c in counts],
        "scatter_counts": [float(s) for s in scatter_counts],
        "scatter": "tew" if use else "none",
        "sensitivity_per_view_cps_per_mbq": per_view,
    }
    return Calibration(
        sensitivity_cps_per_mbq=float(np.mean(per_view)),
        isotope=acq.isotope,
        energy_window_keV=window,
        method="planar source",
        details=details,
    )


def write_calibration(path: PathLike, calibration: Calibration, *, overwrite: bool = False) -> None:
    """Write ``calibration`` as JSON (atomically; an existing file only with ``overwrite``)."""
    from recon.io.atomic import atomic_output
    from recon.io.hdf5 import software_version

    payload = {"format": _FORMAT, "software": f"spect {software_version()}", **asdict(calibration)}
    with atomic_output(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


def read_calibration(path: PathLike) -> Calibration:
    """A calibration written by `write_calibration`.

    Raises
    ------
    ValueError
        Not JSON, not a calibration file, or bad values (the message names the file).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a JSON calibration file ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a calibration file (format must be {_FORMAT!r})")
    try:
        window = payload.get("energy_window_keV")
        return Calibration(
            sensitivity_cps_per_mbq=payload["sensitivity_cps_per_mbq"],
            isotope=payload.get("isotope"),
            energy_window_keV=None if window is None else (window[0], window[1]),
            method=str(payload.get("method", "given")),
            details=payload.get("details") or {},
        )
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise ValueError(f"{path}: bad calibration ({error})") from None
