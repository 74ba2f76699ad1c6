"""Organs + residual: organ concentrations, a smooth within-organ modulation, and sparse sources.

The activity model (`docs/anatomy.md`)::

    e(x) = Σ_k m_k(x) · c_k · (1 + w_k · u_k(x))  +  Σ_j a_j · G(x; p_j, s_j)

- ``m_k``, ``c_k``: compartment masks and concentrations, started from the organ fit
  (`recon.anatomy.organ_fit`);
- ``u_k(x) = (x − x̄_k) / ℓ_k``: position relative to the compartment's centroid, in units of its
  rms radius ``ℓ_k``, so ``w_k`` (3 numbers per compartment, bounded to ``|w| ≤ 0.5`` by a tanh)
  tilts the uptake linearly across the organ — the smooth part of uneven uptake that two views
  can see — without changing the compartment's total activity (``Σ_x m_k u_k = 0``);
- ``G(x; p, s)``: a normalised 3D Gaussian at ``p`` (mm) of width ``s`` (mm), ``a_j`` its
  activity (activity unit · mL): the *residual* field, non-negative by construction and sparse
  (a handful of sources, each started where the organ fit leaves significant counts unexplained,
  at the depth the AP/PA count ratio gives, and shrunk by an L1 prior when the data do not need
  it). It holds what the segmentation misses: lesions the CT does not show. Each Gaussian is
  normalised inside the support, so ``a_j`` is exactly the activity the source adds.

Everything is restricted to the support (the body). The model is a `torch.nn.Module` with a
`volume` method, so `recon.nerf.training.fit` trains it through the full projector (attenuation
and collimator blur) like any other representation; its `penalty` is the model's own prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recon.anatomy.compartments import Compartments
from spectproj import GridField, ImageGrid

__all__ = ["MAX_TILT", "OrganResidualModel", "ResidualSource"]

#: Bound on each component of the within-organ tilt ``w_k`` (relative uptake change per rms
#: radius of the organ).
MAX_TILT = 0.5


@dataclass(frozen=True)
class ResidualSource:
    """A residual source (a lesion candidate) of the model.

    Attributes
    ----------
    centre_mm: ``(x, y, z)`` mm (patient frame, docs/conventions.md).
    sigma_mm: Gaussian width (mm).
    activity: its total activity (activity unit · mL; MBq when the unit is Bq/mL, × 1e-6).
    """

    centre_mm: tuple[float, float, float]
    sigma_mm: float
    activity: float


class OrganResidualModel(nn.Module):
    """Organ concentrations with a linear within-organ tilt, plus sparse Gaussian sources.

    Parameters
    ----------
    grid:
        The study grid.
    compartments:
        The compartments on ``grid``.
    concentrations:
        ``[K]`` starting concentrations (activity unit), e.g. from the organ fit.
    sources:
        Starting residual sources (may be empty).
    support:
        ``[Z, Y, X]`` bool, where activity may be (``None``: everywhere).
    tilt:
        Fit the within-organ tilt ``w_k`` for segment compartments (background regions are
        never tilted).
    source_prior:
        Weight of the L1 prior on the source activities, relative to the data term (>= 0).
    """

    def __init__(
        self,
        grid: ImageGrid,
        compartments: Compartments,
        concentrations: np.ndarray,
        sources: tuple[ResidualSource, ...] = (),
        support: np.ndarray | None = None,
        *,
        tilt: bool = True,
        source_prior: float = 0.0,
    ) -> None:
        super().__init__()
        if compartments.index.shape != tuple(grid.shape):
            raise ValueError(
                f"compartments have shape {compartments.index.shape}, the grid {grid.shape}"
            )
        c0 = np.asarray(concentrations, dtype=np.float64)
        if c0.shape != (len(compartments),) or not np.isfinite(c0).all() or (c0 < 0).any():
            raise ValueError(
                f"concentrations must be {len(compartments)} finite values >= 0, got {c0}"
            )
        if not (math.isfinite(source_prior) and source_prior >= 0):
            raise ValueError(f"source_prior must be >= 0, got {source_prior!r}")
        self.grid = grid
        self.compartments = compartments
        self.source_prior = float(source_prior)
        k = len(compartments)
        z, y, x = (torch.as_tensor(grid.centres_mm(a), dtype=torch.float32) for a in range(3))
        self.register_buffer("xs", x, persistent=False)
        self.register_buffer("ys", y, persistent=False)
        self.register_buffer("zs", z, persistent=False)
        index = torch.as_tensor(compartments.index.astype(np.int64))
        self.register_buffer("index", index, persistent=False)
        sup = (
            torch.ones(grid.shape, dtype=torch.bool)
            if support is None
            else torch.as_tensor(np.asarray(support, dtype=bool))
        )
        self.register_buffer("support", sup.float(), persistent=False)
        # Per-voxel relative position u (x, y, z) in each compartment's rms radius.
        u, radius = _relative_positions(compartments, grid)
        self.register_buffer("u", u, persistent=False)  # [3, Z, Y, X]
        self.register_buffer("rms_radius_mm", radius, persistent=False)  # [K]
        # Parameters, all of order one.
        level = float(c0.max()) if c0.max() > 0 else 1.0
        self.register_buffer("scale", torch.tensor(level), persistent=True)
        self.register_buffer("c0", torch.as_tensor(c0 / level, dtype=torch.float32))
        self.log_c = nn.Parameter(torch.zeros(k))
        tilted = torch.tensor([0.0 if b else 1.0 for b in compartments.background])
        self.register_buffer("tilted", tilted if tilt else torch.zeros(k), persistent=True)
        self.tilt = nn.Parameter(torch.zeros(k, 3))
        n = len(sources)
        spacing = torch.tensor(grid.spacing_mm[::-1], dtype=torch.float32)  # x, y, z
        self.register_buffer("spacing_xyz", spacing, persistent=False)
        start = torch.tensor([s.centre_mm for s in sources], dtype=torch.float32).reshape(n, 3)
        self.register_buffer("p0", start)
        self.shift = nn.Parameter(torch.zeros(n, 3))  # in voxels
        s0 = torch.tensor([s.sigma_mm for s in sources], dtype=torch.float32).reshape(n)
        self.register_buffer("s0", s0)
        self.log_sigma = nn.Parameter(torch.zeros(n))
        voxel_ml = grid.voxel_volume_mm3 * 1e-3
        a0 = torch.tensor([max(s.activity, 0.0) for s in sources], dtype=torch.float32)
        self.register_buffer("a_unit", torch.tensor(level * voxel_ml * 100.0))
        self.raw_a = nn.Parameter(_inverse_softplus(a0.reshape(n) / self.a_unit))

    # -- parts -------------------------------------------------------------------------------
    def concentrations(self) -> torch.Tensor:
        """``[K]`` concentrations (activity unit)."""
        return self.scale * self.c0 * torch.exp(self.log_c)

    def tilts(self) -> torch.Tensor:
        """``[K, 3]`` within-organ tilt ``w_k`` (x, y, z), each in ``[−MAX_TILT, MAX_TILT]``."""
        return MAX_TILT * torch.tanh(self.tilt) * self.tilted[:, None]

    def source_activities(self) -> torch.Tensor:
        """``[J]`` source activities (activity unit · mL)."""
        return nn.functional.softplus(self.raw_a) * self.a_unit

    def source_centres_mm(self) -> torch.Tensor:
        """``[J, 3]`` source centres (x, y, z mm)."""
        return self.p0 + self.shift * self.spacing_xyz

    def source_sigmas_mm(self) -> torch.Tensor:
        """``[J]`` source widths σ (mm), at least half a voxel."""
        floor = 0.5 * float(self.spacing_xyz.min())
        return torch.sqrt(floor**2 + (self.s0 * torch.exp(self.log_sigma)) ** 2)

    def organ_volume(self) -> torch.Tensor:
        """``[Z, Y, X]`` the compartment part of the activity (activity unit)."""
        inside = self.index >= 0
        k = self.index.clamp_min(0)
        c = self.concentrations()[k]
        w = self.tilts()[k]  # [Z, Y, X, 3]
        modulation = 1.0 + (w * self.u.permute(1, 2, 3, 0)).sum(-1)
        return torch.where(inside, c * modulation, 0.0) * self.support

    def source_volume(self, activities: torch.Tensor | None = None) -> torch.Tensor:
        """``[Z, Y, X]`` the residual sources (activity unit): Gaussians integrated per voxel.

        ``activities``: ``[J]`` to use instead of the model's (e.g. one-hot for a basis)."""
        out = torch.zeros(self.index.shape, dtype=torch.float32, device=self.index.device)
        if self.p0.shape[0] == 0:
            return out
        centres, sigmas = self.source_centres_mm(), self.source_sigmas_mm()
        voxel_ml = float(self.spacing_xyz.prod()) * 1e-3
        acts = self.source_activities() if activities is None else activities
        for j in range(centres.shape[0]):
            gx = _gauss_1d(self.xs, centres[j, 0], sigmas[j], float(self.spacing_xyz[0]))
            gy = _gauss_1d(self.ys, centres[j, 1], sigmas[j], float(self.spacing_xyz[1]))
            gz = _gauss_1d(self.zs, centres[j, 2], sigmas[j], float(self.spacing_xyz[2]))
            g = gz[:, None, None] * gy[None, :, None] * gx[None, None, :] * self.support
            # Normalised inside the support: the source's activity is all in the volume.
            out = out + acts[j] / voxel_ml * g / g.sum().clamp_min(1e-12)
        return out

    def volume(self) -> torch.Tensor:
        """``[Z, Y, X]`` activity concentration (activity unit) at the voxel centres."""
        return self.organ_volume() + self.source_volume()

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Activity at points ``[..., 3]`` (x, y, z mm), trilinear in `volume`."""
        return GridField(self.volume(), self.grid)(points_mm.to(torch.float32)).to(points_mm.dtype)

    def penalty(self) -> torch.Tensor:
        """The model's prior (added to the data term by `fit`): L1 on the source activities
        (in units of the data's activity level × 100 voxels) and a small L2 on the tilts."""
        l1 = self.source_activities().sum() / self.a_unit
        return self.source_prior * l1 + 1e-3 * (self.tilts() ** 2).sum()

    def sources(self) -> tuple[ResidualSource, ...]:
        """The current residual sources."""
        centres = self.source_centres_mm().detach().cpu().numpy()
        sigmas = self.source_sigmas_mm().detach().cpu().numpy()
        acts = self.source_activities().detach().cpu().numpy()
        return tuple(
            ResidualSource(tuple(float(v) for v in c), float(s), float(a))  # type: ignore[arg-type]
            for c, s, a in zip(centres, sigmas, acts, strict=True)
        )


def _gauss_1d(
    coords: torch.Tensor, centre: torch.Tensor, sigma: torch.Tensor, spacing: float
) -> torch.Tensor:
    """A unit-area Gaussian integrated over each voxel of a comb (exact, by erf differences)."""
    half = 0.5 * spacing
    scale = 1.0 / (sigma * math.sqrt(2.0))
    hi = torch.erf((coords + half - centre) * scale)
    lo = torch.erf((coords - half - centre) * scale)
    return 0.5 * (hi - lo)


def _relative_positions(
    compartments: Compartments, grid: ImageGrid
) -> tuple[torch.Tensor, torch.Tensor]:
    """``u`` ``[3, Z, Y, X]`` (x, y, z) relative to each voxel's compartment centroid, in units of
    the compartment's rms radius; and the rms radii ``[K]`` (mm)."""
    index = compartments.index
    k = len(compartments)
    z, y, x = (grid.centres_mm(a).detach().cpu().numpy() for a in range(3))
    coords = np.stack(np.meshgrid(x, y, z, indexing="ij"), axis=0)  # [3, X, Y, Z]
    coords = coords.transpose(0, 3, 2, 1)  # [3, Z, Y, X]
    inside = index >= 0
    counts = np.bincount(index[inside], minlength=k).astype(np.float64)
    u = np.zeros_like(coords, dtype=np.float64)
    centroids = np.zeros((k, 3))
    for a in range(3):
        centroids[:, a] = np.bincount(index[inside], coords[a][inside], minlength=k) / counts
    rel = coords[:, inside] - centroids[index[inside]].T  # [3, n]
    radius = np.sqrt(np.bincount(index[inside], (rel**2).sum(0), minlength=k) / counts)
    radius = np.maximum(radius, 1e-6)
    u[:, inside] = rel / radius[index[inside]]
    return torch.as_tensor(u, dtype=torch.float32), torch.as_tensor(radius, dtype=torch.float32)


def _inverse_softplus(v: torch.Tensor) -> torch.Tensor:
    v = v.clamp_min(1e-6)
    return v + torch.log(-torch.expm1(-v))
