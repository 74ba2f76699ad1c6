"""Collimator–detector response: a depth-dependent Gaussian blur, optionally with a long tail.

The response at distance d (mm) from the collimator face is a normalised 2D Gaussian of standard
deviation ``σ(d) = sqrt((σ0 + slope·d)² + σ_i²)`` (mm): the geometric resolution of the holes
(linear in d) and the camera's intrinsic resolution σ_i added in quadrature. With a septal
penetration tail, a fraction f of the counts is spread instead by a wider Gaussian
``σ_t(d) = sqrt((σ_t0 + slope_t·d)² + σ_i²)``: along each detector axis the line-spread function
is ``(1 − f)·G(σ(d)) + f·G(σ_t(d))``, which sums to one.

For a parallel-hole collimator of hole diameter D and effective hole length L_eff = L − 2/μ_lead,
the geometric resolution is FWHM(d) = D·(L_eff + d + b)/L_eff (b: back face of the collimator to
the image plane): σ0 = D·(L_eff + b)/(2.3548·L_eff), slope = D/(2.3548·L_eff).
`spectproj.collimator_table.CollimatorSpec.response` builds the response of a real collimator
(the shipped table, or a user's TOML file) this way; `CollimatorResponse.from_table` is its
shortcut. docs/collimators.md and docs/references.md give the sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spectproj.physics import lead_mu_per_mm

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class CollimatorResponse:
    """Depth-dependent blur: ``σ(d) = sqrt((sigma0_mm + slope·d)² + intrinsic_sigma_mm²)``.

    Parameters
    ----------
    sigma0_mm: geometric σ at the collimator face (mm), >= 0.
    slope: increase of the geometric σ per mm of distance (dimensionless), >= 0.
    intrinsic_sigma_mm: the camera's intrinsic σ (mm), >= 0, added in quadrature.
    tail_fraction: fraction f of the counts in the septal-penetration tail, in [0, 1).
    tail_sigma0_mm, tail_slope: the tail's geometric σ at the face (mm) and its increase per mm;
        the intrinsic σ is added to it in quadrature as well.
    """

    sigma0_mm: float
    slope: float
    intrinsic_sigma_mm: float = 0.0
    tail_fraction: float = 0.0
    tail_sigma0_mm: float = 0.0
    tail_slope: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "sigma0_mm", "slope", "intrinsic_sigma_mm", "tail_fraction", "tail_sigma0_mm",
            "tail_slope",
        ):  # fmt: skip
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        if not self.tail_fraction < 1.0:
            raise ValueError(f"tail_fraction must be < 1, got {self.tail_fraction!r}")

    @classmethod
    def from_holes(
        cls, hole_diameter_mm: float, hole_length_mm: float, energy_keV: float
    ) -> CollimatorResponse:
        """Geometric response of holes of the given size at a photon energy (keV).

        No septa, intrinsic resolution or penetration: the same as a
        `spectproj.collimator_table.CollimatorSpec` with only D and L.
        """
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
    def from_table(cls, name: str, energy_keV: float) -> CollimatorResponse:
        """The response of a collimator of the shipped table (docs/collimators.md) at a keV.

        ``name`` is a row name or alias, any letter case (``"SY-ME"``, ``"LEHR"``, ``"megp"``).
        """
        from spectproj.collimator_table import lookup

        return lookup(name).response(energy_keV)

    @classmethod
    def preset(cls, name: str, energy_keV: float) -> CollimatorResponse:
        """`from_table` under its older name (``LEHR``, ``LEAP``/``LEGP``, ``MELP``/``MEGP``,
        ``HE``, or any other row of the table)."""
        return cls.from_table(name, energy_keV)

    def summary(self) -> str:
        """One line: ``"σ = 0.471 mm + 0.0202·d"``, with ``"⊕ 1.32 mm"`` (intrinsic σ, in
        quadrature) and ``", penetration tail 0.106 %"`` when present."""
        text = f"σ = {self.sigma0_mm:.3g} mm + {self.slope:.3g}·d"
        if self.intrinsic_sigma_mm > 0:
            text += f" ⊕ {self.intrinsic_sigma_mm:.3g} mm"
        if self.tail_fraction > 0:
            text += f", penetration tail {100 * self.tail_fraction:.3g} %"
        return text

    def sigma_mm(self, distance_mm: torch.Tensor) -> torch.Tensor:
        """σ (mm) of the main Gaussian at distances (mm) from the collimator face; negative
        distances count as 0."""
        geometric = self.sigma0_mm + self.slope * distance_mm.clamp_min(0.0)
        if self.intrinsic_sigma_mm == 0:
            return geometric
        return torch.sqrt(geometric**2 + self.intrinsic_sigma_mm**2)

    def tail_sigma_mm(self, distance_mm: torch.Tensor) -> torch.Tensor:
        """σ (mm) of the penetration tail at distances (mm) from the collimator face."""
        geometric = self.tail_sigma0_mm + self.tail_slope * distance_mm.clamp_min(0.0)
        return torch.sqrt(geometric**2 + self.intrinsic_sigma_mm**2)

    def line_spread_matrices(
        self, distance_mm: torch.Tensor, positions_count: int, spacing_mm: float
    ) -> torch.Tensor:
        """Blur matrices ``[..., N, N]`` along one detector axis for distances ``[...]`` (mm).

        ``(1 − f)·G(σ(d)) + f·G(σ_t(d))`` integrated over pixels of ``spacing_mm``
        (`gaussian_blur_matrices`); the projector applies one along rows and one along bins, so
        each axis's line-spread function is exactly this mixture. Columns sum to one except for
        what falls off the ends.
        """
        main = gaussian_blur_matrices(self.sigma_mm(distance_mm), positions_count, spacing_mm)
        if self.tail_fraction == 0:
            return main
        tail = gaussian_blur_matrices(self.tail_sigma_mm(distance_mm), positions_count, spacing_mm)
        return (1.0 - self.tail_fraction) * main + self.tail_fraction * tail


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
