"""Sampling volumes at points: bilinear in-plane resampling with an exact adjoint, and fields.

- ``bilinear_matrix`` builds the sparse matrix that samples the (y, x) plane of a volume at
  lattice points (zero outside the grid). The projector applies it to every slice at once and its
  transpose in the back-projection, so the adjoint is exact by construction.
- ``GridField`` turns a voxel volume into an implicit field (trilinear interpolation), the
  form in which a grid can be handed to any code that expects a field.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from spectproj._validate import check_volume
from spectproj.grid import ImageGrid

CsrParts = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def bilinear_matrix(
    grid: ImageGrid, points_yx_mm: torch.Tensor
) -> tuple[CsrParts, CsrParts, tuple[int, int]]:
    """Sparse matrix ``A [P, Y·X]`` (float64) sampling a ``[Y, X]`` plane at ``P`` points.

    ``points_yx_mm`` is ``[P, 2]`` (y, x) in mm. Row ``p`` holds the bilinear weights of the four
    voxels around point ``p``; neighbours outside the grid are dropped (zero padding).

    Returns ``(parts of A, parts of Aᵀ, shape of A)``, each ``parts`` being the CSR
    ``(crow_indices, col_indices, values)``.
    """
    _, ny, nx = grid.shape
    _, dy, dx = grid.spacing_mm
    _, oy, ox = grid.offset_mm
    pts = points_yx_mm.to(torch.float64)
    fj = (pts[:, 0] - oy) / dy + (ny - 1) / 2
    fi = (pts[:, 1] - ox) / dx + (nx - 1) / 2
    j0, i0 = torch.floor(fj), torch.floor(fi)
    tj, ti = fj - j0, fi - i0
    j = torch.stack([j0, j0, j0 + 1, j0 + 1], dim=1)  # [P, 4], columns increasing within a row
    i = torch.stack([i0, i0 + 1, i0, i0 + 1], dim=1)
    w = torch.stack([(1 - tj) * (1 - ti), (1 - tj) * ti, tj * (1 - ti), tj * ti], dim=1)
    keep = (j >= 0) & (j < ny) & (i >= 0) & (i < nx) & (w > 0)
    cols = (j * nx + i)[keep].to(torch.int64)
    vals = w[keep]
    n_points, n_voxels = pts.shape[0], ny * nx
    per_row = keep.sum(dim=1)
    crow = torch.zeros(n_points + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(per_row, dim=0)
    rows = torch.repeat_interleave(torch.arange(n_points), per_row)
    order = torch.argsort(cols, stable=True)  # transpose: by column, rows stay sorted
    crow_t = torch.zeros(n_voxels + 1, dtype=torch.int64)
    crow_t[1:] = torch.cumsum(torch.bincount(cols, minlength=n_voxels), dim=0)
    return (crow, cols, vals), (crow_t, rows[order], vals[order]), (n_points, n_voxels)


class SparseApply(torch.autograd.Function):
    """``y = A @ x`` for a CSR matrix A given by its parts; the gradient applies Aᵀ exactly.

    Call as ``SparseApply.apply(x, parts_of_A, parts_of_A_transposed, shape_of_A)``.
    """

    @staticmethod
    def forward(ctx, x, a_parts, at_parts, a_shape):
        ctx.at_parts, ctx.a_parts, ctx.a_shape = at_parts, a_parts, a_shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            a = torch.sparse_csr_tensor(
                *a_parts, size=a_shape, dtype=x.dtype, device=x.device, check_invariants=False
            )  # type: ignore[misc]  # a_parts = (crow, col, values): 3 positionals
            return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad):
        shape_t = (ctx.a_shape[1], ctx.a_shape[0])
        return SparseApply.apply(grad, ctx.at_parts, ctx.a_parts, shape_t), None, None, None


class GridField:
    """A voxel volume seen as an implicit field: trilinear interpolation, zero outside the grid.

    Parameters
    ----------
    volume: ``[Z, Y, X]`` values on ``grid``.
    grid: where the voxels are.

    Notes
    -----
    Calling it with points ``[..., 3]`` (x, y, z) in mm returns values ``[...]``. Differentiable
    with respect to ``volume`` and the points.
    """

    def __init__(self, volume: torch.Tensor, grid: ImageGrid) -> None:
        vol = check_volume("volume", volume, grid.shape)
        if vol.shape[0] != 1:
            raise ValueError(f"volume must be one [Z, Y, X] volume, got shape {list(volume.shape)}")
        self.volume = vol
        self.grid = grid
        # One zero voxel around the volume: trilinear weights then fall off to zero outside the
        # grid exactly as with zero padding, for any axis length (also 1).
        self._padded = F.pad(vol, (1, 1, 1, 1, 1, 1)).unsqueeze(0)

    def __call__(self, points_mm: torch.Tensor) -> torch.Tensor:
        if points_mm.shape[-1] != 3:
            raise ValueError(
                f"points_mm must have shape [..., 3] (x, y, z mm), got {list(points_mm.shape)}"
            )
        batch = points_mm.shape[:-1]
        pts = points_mm.reshape(1, 1, 1, -1, 3).to(self.volume.dtype)
        norm = []
        for axis, c in ((2, 0), (1, 1), (0, 2)):  # grid_sample wants (x, y, z) order
            n, d, o = self.grid.shape[axis], self.grid.spacing_mm[axis], self.grid.offset_mm[axis]
            idx = (pts[..., c] - o) / d + (n - 1) / 2 + 1  # index in the padded volume
            norm.append(idx * (2.0 / (n + 1)) - 1.0)
        sampled = F.grid_sample(
            self._padded,
            torch.stack(norm, dim=-1),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
        return sampled.reshape(batch)
