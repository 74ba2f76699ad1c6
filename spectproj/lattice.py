"""The sampling lattice of one view: where the projector samples activity and μ.

Every view is integrated on a lattice ``[Z, S, R]``: rows z, depth samples s ordered from far to
near the detector, and bin positions r along the detector. Both voxel grids and implicit fields are
sampled on it, then go through the same integration (``integration.py``).

- ``view_lattice``: the lattice of voxel volumes (rows = the grid's slices).
- ``detector_lattice``: the lattice of fields, one ray through each detector pixel centre (rows and
  bins = the detector's); it equals ``view_lattice`` whenever the detector matches the grid.

- Axis-aligned views (β = k·90°): the lattice is the voxel grid itself, permuted and flipped
  (``to_lattice``/``from_lattice``), so no interpolation happens.
- Oblique views: a square lattice of step Δ = min(dx, dy) rotated with the detector; bins sit on
  the detector's bin centres when the bin width equals Δ, else on a Δ-spaced comb covering the
  detector (rebinned by area afterwards, ``detector.py``).

Unit vectors in the (x, y) plane: bins along u(β) = (cos β, −sin β), depth along the detector normal
n(β) = (−sin β, −cos β); a lattice point is ``x·e_x + y·e_y = r·u + s·n``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from spectproj.geometry import ParallelGeometry

# Lattice axes (depth dim of the volume, depth reversed?, bins dim, bins reversed?) per quadrant,
# for volumes [..., Z, Y, X] (dims -2 = y, -1 = x).
_QUADRANT_AXES = {
    0: (-2, True, -1, False),  # AP: s = −y, r = x
    1: (-1, True, -2, True),  # 90: s = −x, r = −y
    2: (-2, False, -1, True),  # PA: s = y, r = −x
    3: (-1, False, -2, False),  # 270: s = x, r = y
}


@dataclass(frozen=True)
class ViewLattice:
    """Sample positions of one view (all lengths in mm).

    Attributes
    ----------
    angle_deg: detector angle β.
    quadrant: ``k`` for β = k·90°, ``None`` for an oblique view.
    r_mm: ``[R]`` bin positions, increasing.
    s_mm: ``[S]`` depth positions along n(β), increasing (far → near the detector).
    z_mm: ``[Z]`` row positions along z, increasing.
    step_r_mm, step_s_mm, step_z_mm: lattice spacings; ``step_s_mm`` is the Δ of the
        attenuation rule.
    """

    angle_deg: float
    quadrant: int | None
    r_mm: tuple[float, ...]
    s_mm: tuple[float, ...]
    step_r_mm: float
    step_s_mm: float
    z_mm: tuple[float, ...] = ()
    step_z_mm: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        """``(S, R)``."""
        return len(self.s_mm), len(self.r_mm)

    def directions(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(u, n)``: bin and depth unit vectors as (x, y) pairs."""
        b = math.radians(self.angle_deg)
        if self.quadrant is not None:  # exact values for the axis-aligned views
            c, s = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[self.quadrant]
        else:
            c, s = math.cos(b), math.sin(b)
        return (c, -s), (-s, -c)

    def inplane_points_mm(
        self, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """``[S, R, 2]`` (y, x) positions in mm of the lattice points."""
        (ux, uy), (nx, ny) = self.directions()
        r = torch.tensor(self.r_mm, dtype=torch.float64)
        s = torch.tensor(self.s_mm, dtype=torch.float64)
        x = r[None, :] * ux + s[:, None] * nx
        y = r[None, :] * uy + s[:, None] * ny
        return torch.stack([y, x], dim=-1).to(dtype=dtype, device=device)


def _comb(centre: float, count: int, step: float) -> tuple[float, ...]:
    return tuple(centre + (k - (count - 1) / 2) * step for k in range(count))


def view_lattice(geometry: ParallelGeometry, view: int) -> ViewLattice:
    """The lattice on which view ``view`` of ``geometry`` is sampled."""
    grid = geometry.grid
    beta = geometry.angles_deg[view]
    quadrant = geometry.quadrant(view)
    _, dy, dx = grid.spacing_mm
    _, oy, ox = grid.offset_mm
    provisional = ViewLattice(beta, quadrant, (), (), 1.0, 1.0)
    z = tuple(grid.centres_mm(0).tolist())
    dz = grid.spacing_mm[0]
    (ux, uy), (nx, ny) = provisional.directions()
    r_centre = ox * ux + oy * uy
    s_centre = ox * nx + oy * ny
    if quadrant is not None:
        depth_dim, _, bins_dim, _ = _QUADRANT_AXES[quadrant]
        spacing = {-2: dy, -1: dx}
        count = {-2: grid.shape[1], -1: grid.shape[2]}
        step_r, step_s = spacing[bins_dim], spacing[depth_dim]
        r = _comb(r_centre, count[bins_dim], step_r)
        s = _comb(s_centre, count[depth_dim], step_s)
        return ViewLattice(beta, quadrant, r, s, step_r, step_s, z, dz)
    step = min(dx, dy)
    n_bins = geometry.detector_shape[1]
    bin_width = geometry.pixel_size_mm[1]
    if math.isclose(bin_width, step, rel_tol=1e-9):
        r = _comb(0.0, n_bins, step)
    else:
        r = _comb(0.0, math.ceil(n_bins * bin_width / step) + 1, step)
    s = _comb(s_centre, math.ceil(grid.inplane_diagonal_mm / step - 1e-9), step)
    return ViewLattice(beta, None, r, s, step, step, z, dz)


def detector_lattice(geometry: ParallelGeometry, view: int) -> ViewLattice:
    """The lattice of fields: ``view_lattice``'s depth samples on rays through pixel centres."""
    lat = view_lattice(geometry, view)
    rows_mm, bins_mm = geometry.pixel_size_mm
    return dataclasses.replace(
        lat,
        r_mm=tuple(geometry.detector_centres_mm(1).tolist()),
        step_r_mm=bins_mm,
        z_mm=tuple(geometry.detector_centres_mm(0).tolist()),
        step_z_mm=rows_mm,
    )


def to_lattice(volume: torch.Tensor, quadrant: int) -> torch.Tensor:
    """Permute/flip ``[..., Z, Y, X]`` to the lattice ``[..., Z, S, R]`` of an axis-aligned view."""
    depth_dim, depth_rev, bins_dim, bins_rev = _QUADRANT_AXES[quadrant]
    flips = [d for d, rev in ((depth_dim, depth_rev), (bins_dim, bins_rev)) if rev]
    out = torch.flip(volume, flips) if flips else volume
    return out.transpose(-1, -2) if depth_dim == -1 else out


def from_lattice(lattice: torch.Tensor, quadrant: int) -> torch.Tensor:
    """Inverse of ``to_lattice``: ``[..., Z, S, R]`` back to ``[..., Z, Y, X]``."""
    depth_dim, depth_rev, bins_dim, bins_rev = _QUADRANT_AXES[quadrant]
    out = lattice.transpose(-1, -2) if depth_dim == -1 else lattice
    flips = [d for d, rev in ((depth_dim, depth_rev), (bins_dim, bins_rev)) if rev]
    return torch.flip(out, flips) if flips else out


def quadrant_axes(quadrant: int) -> tuple[int, bool, int, bool]:
    """``(depth dim, depth reversed, bins dim, bins reversed)`` of an axis-aligned view."""
    return _QUADRANT_AXES[quadrant]
