"""Collimator–detector response: a depth-dependent Gaussian blur.

The response at distance d (mm) from the collimator face is a normalised 2D Gaussian with standard
deviation ``σ(d) = σ0 + slope·d`` (mm). For a parallel-hole collimator of hole diameter D and
effective hole length L_eff = L − 2/μ_lead (septal penetration), the geometric resolution is
FWHM(d) = D·(L_eff + d)/L_eff, i.e. σ0 = D/2.3548 and slope = D/(2.3548·L_eff).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spectproj.physics import lead_mu_per_mm

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Hole diameter and hole length (mm) of common parallel-hole collimators (Siemens Symbia data sheet
# values; other vendors' collimators of the same class are close). Use your own for quantitation.
COLLIMATOR_HOLES_MM: dict[str, tuple[float, float]] = {
    "LEHR": (1.11, 24.05),
    "LEAP": (1.45, 24.05),
    "MELP": (2.94, 40.64),
    "HE": (4.00, 59.70),
}
# A usual choice of collimator per photon energy class; "MEGP" is the generic name of MELP.
COLLIMATOR_ALIASES = {"MEGP": "MELP", "LEGP": "LEAP", "HEGP": "HE"}


@dataclass(frozen=True)
class CollimatorResponse:
    """Depth-dependent Gaussian blur ``σ(d) = sigma0_mm + slope·d`` (d, σ in mm).

    Parameters
    ----------
    sigma0_mm: σ at the collimator face (mm), >= 0.
    slope: increase of σ per mm of distance (dimensionless), >= 0.
    """

    sigma0_mm: float
    slope: float

    def __post_init__(self) -> None:
        for name in ("sigma0_mm", "slope"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))

    @classmethod
    def from_holes(
        cls, hole_diameter_mm: float, hole_length_mm: float, energy_keV: float
    ) -> CollimatorResponse:
        """Geometric response of round holes of the given size at a photon energy (keV)."""
        if not (hole_diameter_mm > 0 and hole_length_mm > 0):
            raise ValueError(
                "hole_diameter_mm and hole_length_mm must be positive (mm), got "
                f"{hole_diameter_mm!r} and {hole_length_mm!r}"
            )
        effective = hole_length_mm - 2.0 / lead_mu_per_mm(energy_keV)
        if effective <= 0:
            raise ValueError(
                f"a {hole_length_mm} mm hole is transparent at {energy_keV} keV "
                "(effective length <= 0); choose a collimator for this energy"
            )
        sigma0 = hole_diameter_mm / FWHM_PER_SIGMA
        return cls(sigma0_mm=sigma0, slope=sigma0 / effective)

    @classmethod
    def preset(cls, name: str, energy_keV: float) -> CollimatorResponse:
        """A named collimator (``LEHR``, ``LEAP``/``LEGP``, ``MELP``/``MEGP``, ``HE``) at a keV."""
        key = COLLIMATOR_ALIASES.get(name.upper(), name.upper())
        if key not in COLLIMATOR_HOLES_MM:
            known = sorted([*COLLIMATOR_HOLES_MM, *COLLIMATOR_ALIASES])
            raise ValueError(f"unknown collimator {name!r}; expected one of {known}")
        return cls.from_holes(*COLLIMATOR_HOLES_MM[key], energy_keV=energy_keV)

    def sigma_mm(self, distance_mm: torch.Tensor) -> torch.Tensor:
        """σ (mm) at distances (mm) from the collimator face; negative distances count as 0."""
        return self.sigma0_mm + self.slope * distance_mm.clamp_min(0.0)


def gaussian_blur_matrices(
    sigma_mm: torch.Tensor, positions_count: int, spacing_mm: float
) -> torch.Tensor:
    """Blur matrices ``[..., N, N]`` for Gaussians of ``sigma_mm`` ``[...]`` on a comb of N pixels.

    Entry ``[i, j]`` is the fraction of a unit source in pixel j that lands in pixel i: the
    Gaussian integrated over pixel i. Columns sum to one except for what falls off the ends.
    A σ of 0 gives the identity.
    """
    offsets = torch.arange(positions_count, dtype=torch.float64, device=sigma_mm.device)
    diff = (offsets[:, None] - offsets[None, :]) * spacing_mm  # [N, N] mm
    sig = sigma_mm.to(torch.float64)[..., None, None]
    safe = sig.clamp_min(1e-12) * math.sqrt(2.0)
    upper = torch.erf((diff + spacing_mm / 2) / safe)
    lower = torch.erf((diff - spacing_mm / 2) / safe)
    return 0.5 * (upper - lower)
