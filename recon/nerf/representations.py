"""Differentiable activity representations: anything that maps points to activity.

`recon.nerf.training.fit` fits any `Representation`: a callable (normally a `torch.nn.Module`,
whose parameters are then optimised) mapping points ``[N, 3]`` (x, y, z in mm, patient frame of
``docs/conventions.md``) to activity concentrations ``[N]`` >= 0. Two are provided:

- `recon.nerf.field.EmissionField`: the latent-conditioned neural field (pieNeRF's model);
- `VoxelActivity`: a voxel grid ``softplus(θ)·scale``, read by trilinear interpolation exactly as
  `spectproj.GridField` reads a volume (zero outside the grid).

Either may carry a ``scale`` buffer (activity of a unit output); `fit` sets it from the data before
training (`set_activity_scale`) so that scaling the counts by k scales the result by k.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from spectproj import GridField, ImageGrid

__all__ = [
    "Representation",
    "VoxelActivity",
    "inverse_softplus",
    "set_activity_scale",
]


@runtime_checkable
class Representation(Protocol):
    """Activity ``[N]`` (>= 0, the study's activity unit) at points ``[N, 3]`` (x, y, z mm)."""

    def __call__(self, points_mm: torch.Tensor) -> torch.Tensor: ...


def inverse_softplus(value: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """``θ`` with ``softplus(θ) = value`` (values below ``floor`` are raised to it)."""
    v = value.clamp_min(floor)
    return v + torch.log(-torch.expm1(-v))


class VoxelActivity(nn.Module):
    """A voxel grid of activity, ``softplus(θ)·scale``, seen as a field by trilinear interpolation.

    Parameters
    ----------
    grid:
        Where the voxels are.
    init:
        Initial activity ``[Z, Y, X]`` in units of ``scale`` (i.e. the initial ``softplus(θ)``),
        or a number for a uniform start (default 1: a uniform volume of ``scale``).
    scale:
        Activity concentration of a unit ``softplus(θ)`` (the study's activity unit).

    Notes
    -----
    Calling it with points ``[..., 3]`` (x, y, z mm) returns ``[...]`` with the semantics of
    `spectproj.GridField`: trilinear between voxel centres, falling to zero over the half voxel
    outside the grid. At the voxel centres it returns the voxels, so the projector renders it
    exactly like the volume `volume` itself.
    """

    scale: torch.Tensor  # buffer (registered in __init__)

    def __init__(
        self, grid: ImageGrid, init: torch.Tensor | float = 1.0, scale: float = 1.0
    ) -> None:
        super().__init__()
        if not isinstance(grid, ImageGrid):
            raise TypeError(f"grid must be an ImageGrid, got {type(grid).__name__}")
        self.grid = grid
        if isinstance(init, torch.Tensor):
            if tuple(init.shape) != grid.shape:
                raise ValueError(
                    f"init must have the grid's shape {list(grid.shape)}, got {list(init.shape)}"
                )
            start = init.detach().to(torch.float32)
        else:
            start = torch.full(grid.shape, float(init), dtype=torch.float32)
        if not torch.isfinite(start).all() or bool((start < 0).any()):
            raise ValueError("init must be finite and >= 0")
        self.theta = nn.Parameter(inverse_softplus(start))
        self.register_buffer("scale", torch.tensor(float(scale)), persistent=True)

    def volume(self) -> torch.Tensor:
        """Activity ``[Z, Y, X]`` at the voxel centres (unit of ``scale``)."""
        return nn.functional.softplus(self.theta) * self.scale

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        values = GridField(self.volume(), self.grid)(points_mm.to(self.theta.dtype))
        return values.to(points_mm.dtype)


def set_activity_scale(representation: object, level: float) -> bool:
    """Set the ``scale`` buffer to ``level`` (activity unit); ``False`` if there is none."""
    scale = getattr(representation, "scale", None)
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        with torch.no_grad():
            scale.fill_(float(level))
        return True
    return False
