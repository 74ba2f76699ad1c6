"""A small analytic torso phantom for demos and tests.

Everything is defined in millimetres in the patient frame of ``docs/conventions.md``
(LPS: +x toward the patient's left, +y posterior, +z toward the head), so the same
phantom appears on any `spectproj.ImageGrid` that covers it, whatever its voxel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spectproj import ImageGrid, water_mu_per_mm
from spectproj.shapes import ellipsoid_mask

__all__ = ["BASIC_PHANTOM_STRUCTURES", "LESION_CENTRE_MM", "Structure", "basic_phantom"]


@dataclass(frozen=True)
class Structure:
    """One uniform ellipsoid of activity.

    Attributes
    ----------
    name : str
        Label used in tables and plots.
    centre_mm : tuple of float
        Centre ``(z, y, x)`` in mm, patient frame.
    semi_axes_mm : tuple of float
        Semi-axes ``(a_z, a_y, a_x)`` in mm.
    concentration : float
        Activity concentration inside, in the phantom's activity unit *a*. Where
        structures overlap the largest concentration wins.
    """

    name: str
    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    concentration: float


#: Semi-axes ``(y, x)`` in mm of the water-filled elliptical body, an elliptical cylinder
#: along z covering every slice: 240 mm wide (left-right), 180 mm deep (front-back).
BODY_SEMI_AXES_YX_MM: tuple[float, float] = (90.0, 120.0)

#: Activity concentration of the body background (soft tissue), unit *a*.
BODY_BACKGROUND: float = 1.0

#: Centre ``(z, y, x)`` in mm of the small lesion: anterior, on the patient's left.
LESION_CENTRE_MM: tuple[float, float, float] = (-40.0, -50.0, 25.0)

#: The hot structures (liver on the patient's right, two posterior kidneys, one lesion).
BASIC_PHANTOM_STRUCTURES: tuple[Structure, ...] = (
    Structure("liver", (40.0, -10.0, -55.0), (50.0, 55.0, 55.0), 6.0),
    Structure("right kidney", (-15.0, 45.0, -60.0), (40.0, 20.0, 20.0), 10.0),
    Structure("left kidney", (-10.0, 45.0, 60.0), (40.0, 20.0, 20.0), 10.0),
    Structure("lesion", LESION_CENTRE_MM, (8.0, 8.0, 8.0), 40.0),
)


def basic_phantom(
    grid: ImageGrid,
    energy_keV: float = 140.5,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the basic torso phantom on ``grid``.

    The body is an elliptical cylinder of water along z (semi-axes
    `BODY_SEMI_AXES_YX_MM`) holding a uniform background activity
    (`BODY_BACKGROUND`) and the hot ellipsoids of
    `BASIC_PHANTOM_STRUCTURES`. A voxel belongs to a shape when its centre does
    (no partial-volume weighting).

    Parameters
    ----------
    grid : spectproj.ImageGrid
        Voxel grid; the phantom fits in a 256 mm cube centred on the rotation axis.
    energy_keV : float
        Photon energy used for the attenuation map, in keV (140.5 for Tc-99m).
    dtype : torch.dtype
        Floating dtype of both outputs.
    device : torch.device or str, optional
        Device of both outputs (default: the current default device).

    Returns
    -------
    activity : torch.Tensor
        Activity concentration ``[Z, Y, X]`` in the arbitrary unit *a*; zero outside the body.
    mu : torch.Tensor
        Linear attenuation coefficient ``[Z, Y, X]`` in 1/mm: water's at ``energy_keV``
        inside the body, 0 outside.

    Raises
    ------
    ValueError
        If ``energy_keV`` is not positive.
    """
    if not energy_keV > 0:
        raise ValueError(f"energy_keV must be positive, got {energy_keV}")
    z_extent = max(grid.shape[0] * grid.spacing_mm[0], 1.0)
    body = ellipsoid_mask(
        grid,
        centre_mm=(0.0, 0.0, 0.0),
        semi_axes_mm=(10.0 * z_extent, *BODY_SEMI_AXES_YX_MM),
    ).to(device)

    activity = torch.zeros(tuple(grid.shape), dtype=dtype, device=device)
    activity[body] = BODY_BACKGROUND
    for s in BASIC_PHANTOM_STRUCTURES:
        inside = ellipsoid_mask(grid, centre_mm=s.centre_mm, semi_axes_mm=s.semi_axes_mm)
        inside = inside.to(device) & body
        activity = torch.where(inside, torch.clamp(activity, min=s.concentration), activity)

    mu_water = float(water_mu_per_mm(energy_keV))
    mu = body.to(dtype) * mu_water
    return activity, mu
