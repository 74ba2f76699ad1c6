"""Simulated SPECT acquisitions of a phantom: expected counts, scatter and Poisson noise.

The model (units in ``docs/phantoms.md``)::

    primary  = count_scale · A(activity)                 [V, rows, bins] counts
    scatter  = count_scale · f · G_σ(A(activity)) · ΣA / ΣG_σ(A)
    expected = primary + scatter
    counts   ~ Poisson(expected)

``A`` is `spectproj.SPECTProjector` with the phantom's μ (and optionally a collimator blur), its
output a line integral in (Bq/mL)·mm; ``count_scale`` is the expected counts per unit of it in one
pixel, one number for every view (``recon.io.study.Acquisition.count_scale``); ``G_σ`` is a wide
Gaussian blur of every view and ``f`` the scatter-to-primary ratio (the scatter fraction of the
window, scatter / (primary + scatter), is ``f / (1 + f)``).

With ``scatter_windows=True`` two more energy windows are simulated next to the photopeak window
(width ``W_p``), each ``W_s`` = `SCATTER_WINDOW_WIDTH` × ``W_p`` wide: their scatter has the
spatial distribution of the photopeak's and a count density per keV that falls linearly from
``s_l`` below the photopeak to ``s_u = r · s_l`` above it (``r`` = ``scatter_upper_ratio``)::

    s_l = 2 S / (W_p (1 + r)),   lower = s_l · W_s,   upper = r · s_l · W_s

so that the trapezoid assumption of the triple-energy-window estimate holds exactly in
expectation. This is a *model* of the scatter spectrum for testing the pipeline, not a Monte Carlo
simulation: real scatter differs in shape between the windows (``docs/scatter-calibration.md``).
"""

from __future__ import annotations

import json
import math
from importlib import metadata

import torch

from recon.data.phantoms.torso import (
    ENERGY_WINDOWS_KEV,
    NUCLIDES,
    TYPICAL_SENSITIVITY_CPS_PER_MBQ,
    Phantom,
    nuclide_name,
)
from recon.io.study import (
    MBQ_PER_BQ,
    ML_PER_MM3,
    Acquisition,
    BackgroundSource,
    EnergyWindow,
    Study,
)
from spectproj import CollimatorResponse, CollimatorSpec, ParallelGeometry, SPECTProjector
from spectproj.collimator import gaussian_blur_matrices
from spectproj.collimator_table import lookup

__all__ = [
    "DEFAULT_SCATTER_SIGMA_MM",
    "DEFAULT_SCATTER_UPPER_RATIO",
    "SCATTER_WINDOW_WIDTH",
    "scatter_projections",
    "scatter_window_counts",
    "simulate_acquisition",
]

#: Standard deviation (mm) of the Gaussian that spreads the primary projections into scatter.
DEFAULT_SCATTER_SIGMA_MM = 25.0
#: Width of each simulated scatter window, as a fraction of the photopeak window's width.
SCATTER_WINDOW_WIDTH = 0.5
#: Scatter count density per keV above the photopeak window / below it (the model's ``r``):
#: illustrative; the spectrum of down-scattered photons falls toward the photopeak.
DEFAULT_SCATTER_UPPER_RATIO = 0.25


def scatter_projections(
    primary: torch.Tensor,
    pixel_size_mm: tuple[float, float],
    scatter_fraction: float,
    sigma_mm: float = DEFAULT_SCATTER_SIGMA_MM,
) -> torch.Tensor:
    """A smooth scatter estimate: the primary blurred by a wide Gaussian, scaled to a fraction.

    Parameters
    ----------
    primary : torch.Tensor
        ``[V, rows, bins]`` primary projections (any unit; the result has the same).
    pixel_size_mm : tuple of float
        ``(row height, bin width)`` in mm.
    scatter_fraction : float
        Scatter-to-primary ratio ``f`` >= 0: the result sums to ``f · primary.sum()`` (one
        factor for all views, so each view's scatter is close to ``f`` times its primary).
    sigma_mm : float
        Standard deviation of the Gaussian in mm, along rows and bins.

    Returns
    -------
    torch.Tensor
        ``[V, rows, bins]`` scatter, same dtype and device as ``primary``.
    """
    if not (math.isfinite(scatter_fraction) and scatter_fraction >= 0):
        raise ValueError(f"scatter_fraction must be >= 0, got {scatter_fraction!r}")
    if not (math.isfinite(sigma_mm) and sigma_mm > 0):
        raise ValueError(f"sigma_mm must be a positive length (mm), got {sigma_mm!r}")
    if primary.ndim != 3:
        raise ValueError(f"primary must be [V, rows, bins], got shape {tuple(primary.shape)}")
    if scatter_fraction == 0:
        return torch.zeros_like(primary)
    p = primary.double()
    rows, bins = p.shape[-2:]
    sig = torch.tensor(float(sigma_mm), dtype=torch.float64, device=p.device)
    blur_rows = gaussian_blur_matrices(sig / pixel_size_mm[0], rows, 1.0)  # [rows, rows]
    blur_bins = gaussian_blur_matrices(sig / pixel_size_mm[1], bins, 1.0)  # [bins, bins]
    blurred = blur_rows @ p @ blur_bins.T
    total, total_blurred = p.sum(), blurred.sum()
    if float(total_blurred) <= 0:
        return torch.zeros_like(primary)
    return (blurred * (scatter_fraction * total / total_blurred)).to(primary.dtype)


def scatter_window_counts(
    scatter: torch.Tensor, peak_keV: tuple[float, float], upper_ratio: float
) -> tuple[tuple[float, float, torch.Tensor], tuple[float, float, torch.Tensor]]:
    """Expected counts of the lower and upper scatter windows of the model (module docstring).

    Parameters
    ----------
    scatter: ``[V, rows, bins]`` expected scatter counts in the photopeak window.
    peak_keV: the photopeak window ``(low, high)`` in keV.
    upper_ratio: ``r`` >= 0, the count density above the window / below it.

    Returns
    -------
    ``((low, high, counts), (low, high, counts))`` of the lower and the upper window.
    """
    if not (math.isfinite(upper_ratio) and upper_ratio >= 0):
        raise ValueError(f"scatter_upper_ratio must be >= 0, got {upper_ratio!r}")
    lo, hi = (float(v) for v in peak_keV)
    width = hi - lo
    w_s = SCATTER_WINDOW_WIDTH * width
    density_low = scatter * (2.0 / (width * (1.0 + upper_ratio)))
    return (
        (lo - w_s, lo, density_low * w_s),
        (hi, hi + w_s, density_low * (upper_ratio * w_s)),
    )


def simulate_acquisition(
    phantom: Phantom,
    geometry: ParallelGeometry,
    *,
    collimator: str | CollimatorSpec | CollimatorResponse | None = None,
    scatter_fraction: float = 0.0,
    scatter_sigma_mm: float = DEFAULT_SCATTER_SIGMA_MM,
    scatter_windows: bool = False,
    scatter_upper_ratio: float = DEFAULT_SCATTER_UPPER_RATIO,
    total_counts: float | None = None,
    sensitivity_cps_per_mbq: float | None = None,
    duration_s: float | None = None,
    isotope: str | None = None,
    seed: int = 0,
    noise: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Study:
    """Simulate a planar or SPECT acquisition of ``phantom``.

    Parameters
    ----------
    phantom : recon.data.phantoms.Phantom
        Activity (Bq/mL), μ (1/mm) and labels on ``geometry.grid``.
    geometry : spectproj.ParallelGeometry
        Views and detector, e.g. ``ParallelGeometry.ap_pa(grid, radius_mm=250.0)`` or
        ``ParallelGeometry.full_circle(grid, 120, radius_mm=250.0)``.
    collimator : str, spectproj.CollimatorSpec or spectproj.CollimatorResponse, optional
        Collimator blur: a name of the collimator table (``"LEHR"``, ``"MEGP"``, ``"SY-ME"``,
        ...; docs/collimators.md) or a spec (both evaluated at the phantom's energy and recorded
        in the study), or a bare response (not recorded); ``None`` for no blur. Needs
        ``geometry.radius_mm``.
    scatter_fraction : float
        Scatter-to-primary ratio ``f``: a smooth scatter term totalling ``f`` × the primary
        counts is added (see `scatter_projections`) and returned as the study's ``background``.
    scatter_sigma_mm : float
        Width (σ, mm) of the scatter blur.
    scatter_windows : bool
        Also simulate the lower and upper scatter windows (`scatter_window_counts`, Poisson
        counts when ``noise``) as the study's ``windows`` ``"lower"`` and ``"upper"``; needs an
        isotope with a photopeak window.
    scatter_upper_ratio : float
        The model's ``r`` (module docstring).
    total_counts : float, optional
        Expected total counts (primary + scatter) over **all** views. The one count scale for
        every view is chosen to give it; the acquisition's sensitivity (or duration) is then
        derived so that ``Acquisition.count_scale`` equals that scale: from
        ``sensitivity_cps_per_mbq`` if given, else from ``duration_s``, else from the isotope's
        `TYPICAL_SENSITIVITY_CPS_PER_MBQ`. Give at most one of the two with ``total_counts``.
    sensitivity_cps_per_mbq : float, optional
        Planar sensitivity (counts/s per MBq). Without ``total_counts`` the count scale is
        ``pixel area · 1e-3 · sensitivity · 1e-6 · duration_s``; it defaults to the isotope's
        typical value.
    duration_s : float, optional
        Acquisition time per view (s); required unless ``total_counts`` is given.
    isotope : str, optional
        Nuclide name; by default the one of `NUCLIDES` whose photopeak is the phantom's energy.
    seed : int
        Seed of the Poisson noise (a CPU `torch.Generator`): the same seed gives the same counts.
    noise : bool
        Draw Poisson counts; ``False`` returns the expected counts.
    dtype : torch.dtype
        Dtype of the projector's arithmetic.
    device : torch.device or str, optional
        Device of the projection (the noise is always drawn on the CPU, in float64).

    Returns
    -------
    recon.io.study.Study
        ``projections`` ``[V, rows, bins]`` counts (float32); ``background`` ``[V, rows, bins]``
        expected scatter counts (``None`` without scatter); the acquisition facts; ``mu_per_mm``,
        ``truth_activity`` (Bq/mL), ``labels`` and ``label_names`` from the phantom; and the
        provenance (seed, phantom configuration, count scale, software, and when the phantom
        has them its structures' exact activities ``truth_activity_mbq``: JSON, name → MBq,
        summed over the sub-voxels, which a label's voxels do not hold exactly).

    Raises
    ------
    ValueError
        If the geometry's grid is not the phantom's, the count scale is under- or
        over-determined, or ``total_counts`` is requested for a phantom with no activity.
    """
    if not isinstance(phantom, Phantom):
        raise TypeError(f"phantom must be a Phantom, got {type(phantom).__name__}")
    if not isinstance(geometry, ParallelGeometry):
        raise TypeError(f"geometry must be a ParallelGeometry, got {type(geometry).__name__}")
    if geometry.grid != phantom.grid:
        raise ValueError(
            f"geometry.grid {geometry.grid} differs from the phantom's grid {phantom.grid}"
        )
    if not (math.isfinite(scatter_fraction) and scatter_fraction >= 0):
        raise ValueError(f"scatter_fraction must be >= 0, got {scatter_fraction!r}")
    if total_counts is not None and not (math.isfinite(total_counts) and total_counts > 0):
        raise ValueError(f"total_counts must be positive, got {total_counts!r}")
    for name, value in (
        ("sensitivity_cps_per_mbq", sensitivity_cps_per_mbq),
        ("duration_s", duration_s),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive or None, got {value!r}")
    energy = float(phantom.energy_keV)
    isotope = _isotope(isotope, energy)
    response, spec = _collimator(collimator, energy)
    if response is not None and geometry.radius_mm is None:
        raise ValueError("a collimator blur needs geometry.radius_mm (mm), got None")

    # Noise-free projections in (Bq/mL)·mm, then the one count scale.
    projector = SPECTProjector(
        geometry,
        mu=phantom.mu.to(device=device, dtype=dtype),
        collimator=response,
        dtype=dtype,
        device=device,
    )
    with torch.no_grad():
        primary = projector(phantom.activity.to(device=device, dtype=dtype)).double().cpu()
    scatter = scatter_projections(
        primary, geometry.pixel_size_mm, scatter_fraction, scatter_sigma_mm
    )

    area_ml_per_mm = geometry.pixel_size_mm[0] * geometry.pixel_size_mm[1] * ML_PER_MM3
    sensitivity, duration, scale = _count_scale(
        primary, scatter, total_counts, sensitivity_cps_per_mbq, duration_s, isotope, area_ml_per_mm
    )
    acquisition = Acquisition(
        angles_deg=geometry.angles_deg,
        detector_shape=geometry.detector_shape,
        pixel_size_mm=geometry.pixel_size_mm,
        energy_keV=energy,
        radius_mm=geometry.radius_mm,
        isotope=isotope,
        energy_window_keV=ENERGY_WINDOWS_KEV.get(isotope) if isotope else None,
        duration_s=duration,
        sensitivity_cps_per_mbq=sensitivity,
        collimator=collimator.upper() if isinstance(collimator, str) else None,
        collimator_spec=spec,
    )
    # The study's count scale is the one used here (up to rounding).
    if not math.isclose(acquisition.count_scale, scale, rel_tol=1e-9):  # pragma: no cover
        raise AssertionError("count scale mismatch")

    background = scale * scatter
    expected = scale * primary + background
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    counts = torch.poisson(expected, generator=generator) if noise else expected
    windows: list[EnergyWindow] = []
    if scatter_windows:
        if acquisition.energy_window_keV is None:
            raise ValueError(
                f"scatter windows need the photopeak window of a known isotope, got {isotope!r}"
            )
        for name, (low, high, mean) in zip(
            ("lower", "upper"),
            scatter_window_counts(background, acquisition.energy_window_keV, scatter_upper_ratio),
            strict=True,
        ):
            drawn = torch.poisson(mean, generator=generator) if noise else mean
            windows.append(EnergyWindow(name, low, high, drawn.to(torch.float32).numpy()))

    provenance = {
        "software": f"spect {_version()} (recon.data.simulate.simulate_acquisition)",
        "seed": str(int(seed)),
        "noise": "poisson" if noise else "none (expected counts)",
        "count_scale": repr(scale),
        "count_scale_source": "total_counts"
        if total_counts is not None
        else "sensitivity×duration",
        "total_counts_requested": repr(total_counts),
        "expected_total_counts": repr(float(expected.sum())),
        "scatter_fraction": repr(float(scatter_fraction)),
        "scatter_sigma_mm": repr(float(scatter_sigma_mm)) if scatter_fraction > 0 else "",
        "collimator_response": (
            ""
            if response is None
            else f"sigma0_mm={response.sigma0_mm!r}, slope={response.slope!r}"
            + (
                f", intrinsic_sigma_mm={response.intrinsic_sigma_mm!r}"
                if response.intrinsic_sigma_mm
                else ""
            )
            + (f", tail_fraction={response.tail_fraction!r}" if response.tail_fraction else "")
        ),
        "phantom": json.dumps(phantom.config.to_dict()) if phantom.config is not None else "custom",
        "phantom_energy_keV": repr(energy),
    }
    if phantom.activities_mbq:  # each structure's exact activity (`structure_truth_mbq` reads it)
        provenance["truth_activity_mbq"] = json.dumps(
            {phantom.label_names[v]: mbq for v, mbq in sorted(phantom.activities_mbq.items())}
        )
    return Study(
        projections=counts.to(torch.float32).numpy(),
        acquisition=acquisition,
        grid=phantom.grid,
        mu_per_mm=phantom.mu.detach().cpu().to(torch.float32).numpy(),
        background=background.to(torch.float32).numpy() if scatter_fraction > 0 else None,
        background_source=(
            BackgroundSource(
                "simulated",
                {
                    "model": "expected scatter: primary blurred by a Gaussian, scaled",
                    "scatter_to_primary": float(scatter_fraction),
                    "sigma_mm": float(scatter_sigma_mm),
                },
            )
            if scatter_fraction > 0
            else None
        ),
        windows=tuple(windows),
        truth_activity=phantom.activity.detach().cpu().to(torch.float32).numpy(),
        labels=phantom.labels.detach().cpu().numpy(),
        label_names=dict(phantom.label_names),
        activity_unit="Bq/mL",
        provenance=provenance,
    )


def _isotope(isotope: str | None, energy_keV: float) -> str | None:
    if isotope is not None:
        try:
            return nuclide_name(isotope)
        except ValueError:
            return str(isotope)
    for name, e in NUCLIDES.items():
        if abs(e - energy_keV) <= 0.5:
            return name
    return None


def _collimator(
    collimator: str | CollimatorSpec | CollimatorResponse | None, energy_keV: float
) -> tuple[CollimatorResponse | None, CollimatorSpec | None]:
    if collimator is None:
        return None, None
    if isinstance(collimator, str):
        collimator = lookup(collimator)
    if isinstance(collimator, CollimatorSpec):
        return collimator.response(energy_keV), collimator
    if isinstance(collimator, CollimatorResponse):
        return collimator, None
    raise TypeError(
        "collimator must be a name, a CollimatorSpec, a CollimatorResponse or None, got "
        f"{type(collimator).__name__}"
    )


def _count_scale(
    primary: torch.Tensor,
    scatter: torch.Tensor,
    total_counts: float | None,
    sensitivity: float | None,
    duration: float | None,
    isotope: str | None,
    area_ml_per_mm: float,
) -> tuple[float, float, float]:
    """``(sensitivity cps/MBq, duration s, count scale)`` with scale = area·sens·1e-6·duration."""
    per_cps_s = area_ml_per_mm * MBQ_PER_BQ  # count scale per (cps/MBq · s)
    if total_counts is None:
        if duration is None:
            raise ValueError(
                "give total_counts, or duration_s (s per view) with an optional "
                "sensitivity_cps_per_mbq"
            )
        if sensitivity is None:
            sensitivity = _typical_sensitivity(isotope)
        return sensitivity, duration, per_cps_s * sensitivity * duration
    if sensitivity is not None and duration is not None:
        raise ValueError(
            "total_counts fixes the count scale: give at most one of sensitivity_cps_per_mbq "
            "and duration_s with it"
        )
    unit_total = float(primary.sum() + scatter.sum())
    if not unit_total > 0:
        raise ValueError("the phantom projects to zero counts; total_counts cannot be reached")
    scale = float(total_counts) / unit_total
    if duration is not None:
        return scale / (per_cps_s * duration), duration, scale
    if sensitivity is None:
        sensitivity = _typical_sensitivity(isotope)
    return sensitivity, scale / (per_cps_s * sensitivity), scale


def _typical_sensitivity(isotope: str | None) -> float:
    if isotope is None or isotope not in TYPICAL_SENSITIVITY_CPS_PER_MBQ:
        raise ValueError(
            f"no typical sensitivity for isotope {isotope!r}; give sensitivity_cps_per_mbq"
        )
    return TYPICAL_SENSITIVITY_CPS_PER_MBQ[isotope]


def _version() -> str:
    try:
        return metadata.version("spect")
    except metadata.PackageNotFoundError:
        import spectproj

        return spectproj.__version__
