"""Scatter in the photopeak window estimated from the counts of neighbouring energy windows.

The estimate becomes the study's background ``b``, the additive term of the Poisson model
``y ~ Poisson(count_scale · A x + b)`` that every method uses (MLEM, NeRF, organ fits,
conjugate view). It is stored with how it was made (`recon.io.study.BackgroundSource`).

Triple energy window (TEW; Ogawa et al., IEEE Trans. Med. Imaging 10 (1991) 408–412; Ichihara
et al., J. Nucl. Med. 34 (1993) 2216–2221): the scatter spectrum under the photopeak window is a
trapezoid between the count densities of two narrow windows at its edges, so per pixel::

    S = (C_lower / W_lower + C_upper / W_upper) · W_peak / 2

with C the counts and W the widths (keV) of the windows. Dual energy window (DEW; Jaszczak et
al., J. Nucl. Med. 25 (1984) 893–900): ``S = k · C_lower`` with a factor ``k`` calibrated for the
camera, isotope and windows (there is no universal value; it must be given).

Both estimates are noisy where the scatter windows have few counts; an optional Gaussian smoothing
of each view (``smoothing_fwhm_mm``) reduces the noise without changing the total (reflecting
edges). See ``docs/scatter-calibration.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from recon.io.study import BackgroundSource, EnergyWindow, Study

__all__ = [
    "SCATTER_METHODS",
    "dew_scatter",
    "estimate_scatter",
    "find_scatter_windows",
    "smooth_views",
    "tew_scatter",
]

#: Scatter estimates `estimate_scatter` can make.
SCATTER_METHODS = ("tew", "dew")

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _positive(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return v


def smooth_views(views: np.ndarray, fwhm_mm: float, pixel_size_mm: Sequence[float]) -> np.ndarray:
    """Each ``[rows, bins]`` view of ``views`` ``[V, rows, bins]`` blurred by a Gaussian of
    ``fwhm_mm`` (reflecting edges, so each view's total is kept); float64. ``fwhm_mm = 0``:
    a float64 copy."""
    import scipy.ndimage

    a = np.asarray(views, dtype=np.float64)
    if not (math.isfinite(fwhm_mm) and fwhm_mm >= 0):
        raise ValueError(f"smoothing FWHM must be >= 0 (mm), got {fwhm_mm!r}")
    if fwhm_mm == 0:
        return a.copy()
    sigma = [0.0] + [fwhm_mm / _FWHM_PER_SIGMA / float(p) for p in pixel_size_mm]
    return scipy.ndimage.gaussian_filter(a, sigma=sigma, mode="reflect")


def tew_scatter(
    lower: np.ndarray,
    upper: np.ndarray | None,
    *,
    lower_width_keV: float,
    upper_width_keV: float | None,
    peak_width_keV: float,
) -> np.ndarray:
    """Triple-energy-window scatter ``(C_l/W_l + C_u/W_u) · W_p / 2`` per pixel (float64).

    ``upper = None`` takes the upper window's count density as 0 (a triangle; common for Tc-99m,
    whose upper window holds almost nothing).
    """
    w_l = _positive("lower_width_keV", lower_width_keV)
    w_p = _positive("peak_width_keV", peak_width_keV)
    density = np.asarray(lower, dtype=np.float64) / w_l
    if upper is not None:
        if np.shape(upper) != np.shape(lower):
            raise ValueError(
                f"upper window shape {np.shape(upper)} differs from the lower's {np.shape(lower)}"
            )
        density = density + np.asarray(upper, dtype=np.float64) / _positive(
            "upper_width_keV", upper_width_keV if upper_width_keV is not None else math.nan
        )
    return density * (w_p / 2.0)


def dew_scatter(lower: np.ndarray, k: float) -> np.ndarray:
    """Dual-energy-window scatter ``k · C_lower`` per pixel (float64)."""
    return np.asarray(lower, dtype=np.float64) * _positive("k", k)


def find_scatter_windows(
    peak_keV: tuple[float, float], windows: Sequence[EnergyWindow], *, tolerance_keV: float = 2.0
) -> tuple[EnergyWindow | None, EnergyWindow | None]:
    """The windows adjacent to the photopeak window: ``(lower, upper)``, ``None`` where absent.

    A lower window ends within ``tolerance_keV`` of the photopeak's low edge (its high limit);
    an upper one starts within it of the high edge. Among several, the narrowest.
    """
    lo, hi = peak_keV
    lower = [w for w in windows if abs(w.high_keV - lo) <= tolerance_keV and w.low_keV < lo]
    upper = [w for w in windows if abs(w.low_keV - hi) <= tolerance_keV and w.high_keV > hi]

    def narrowest(found: list[EnergyWindow]) -> EnergyWindow | None:
        return min(found, key=lambda w: w.width_keV) if found else None

    return narrowest(lower), narrowest(upper)


def estimate_scatter(
    study: Study,
    method: str = "tew",
    *,
    lower: str | None = None,
    upper: str | None = None,
    k: float | None = None,
    smoothing_fwhm_mm: float = 0.0,
    use_upper: bool = True,
) -> Study:
    """``study`` with its background replaced by a TEW or DEW scatter estimate.

    Parameters
    ----------
    study:
        With ``acquisition.energy_window_keV`` (the photopeak window) and the scatter windows in
        ``study.windows``.
    method:
        ``"tew"`` or ``"dew"``.
    lower, upper:
        Names of the scatter windows; default the windows adjacent to the photopeak window
        (`find_scatter_windows`).
    k:
        The DEW factor (required for ``"dew"``).
    smoothing_fwhm_mm:
        Gaussian smoothing (FWHM, mm) of each view of the estimate; 0 for none.
    use_upper:
        TEW with the upper window (``False``: the triangle with an upper density of 0).

    Returns
    -------
    Study
        A copy with ``background`` ``[V, rows, bins]`` (float32) and ``background_source``
        (method, windows, widths, smoothing, k, the scatter fraction of the window).

    Raises
    ------
    ValueError
        An unknown method, no photopeak window, a missing scatter window, DEW without ``k``.
    """
    if method not in SCATTER_METHODS:
        raise ValueError(f"scatter method must be one of {list(SCATTER_METHODS)}, got {method!r}")
    peak = study.acquisition.energy_window_keV
    if peak is None:
        raise ValueError(
            "the study records no photopeak window (acquisition.energy_window_keV); a scatter "
            "estimate needs its width"
        )
    found_lower, found_upper = find_scatter_windows(peak, study.windows)
    low_w = study.window(lower) if lower is not None else found_lower
    up_w = study.window(upper) if upper is not None else found_upper
    have = ", ".join(f"{w.name} {w.low_keV:g}–{w.high_keV:g} keV" for w in study.windows) or "none"
    if low_w is None:
        raise ValueError(
            f"no lower scatter window next to the photopeak window {peak[0]:g}–{peak[1]:g} keV "
            f"(windows: {have}); name one"
        )
    peak_width = peak[1] - peak[0]
    parameters: dict[str, object] = {
        "peak_keV": list(peak),
        "lower": low_w.name,
        "lower_keV": [low_w.low_keV, low_w.high_keV],
        "smoothing_fwhm_mm": float(smoothing_fwhm_mm),
    }
    if method == "tew":
        if use_upper and up_w is None and upper is None:
            raise ValueError(
                f"no upper scatter window next to the photopeak window {peak[0]:g}–{peak[1]:g} "
                f"keV (windows: {have}); name one, or use the triangle (no upper window)"
            )
        chosen_upper = up_w if use_upper else None
        raw = tew_scatter(
            low_w.counts,
            None if chosen_upper is None else chosen_upper.counts,
            lower_width_keV=low_w.width_keV,
            upper_width_keV=None if chosen_upper is None else chosen_upper.width_keV,
            peak_width_keV=peak_width,
        )
        parameters["upper"] = None if chosen_upper is None else chosen_upper.name
        parameters["upper_keV"] = (
            None if chosen_upper is None else [chosen_upper.low_keV, chosen_upper.high_keV]
        )
        parameters["formula"] = "S = (C_l/W_l + C_u/W_u) · W_p / 2"
    else:
        if k is None:
            raise ValueError("the DEW scatter estimate needs its factor k (--dew-k)")
        raw = dew_scatter(low_w.counts, k)
        parameters["k"] = float(k)
        parameters["formula"] = "S = k · C_l"
    estimate = smooth_views(raw, smoothing_fwhm_mm, study.acquisition.pixel_size_mm)
    np.maximum(estimate, 0.0, out=estimate)
    total = float(np.asarray(study.projections, dtype=np.float64).sum())
    parameters["scatter_fraction"] = float(estimate.sum()) / total if total > 0 else None
    return dataclasses.replace(
        study,
        background=estimate.astype(np.float32),
        background_source=BackgroundSource(method, parameters),
    )
