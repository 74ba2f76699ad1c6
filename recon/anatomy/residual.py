"""Organs + residual: organ concentrations, a smooth within-organ modulation, and sparse sources.

The activity model (`docs/anatomy.md`)::

    e(x) = Σ_k m_k(x − t_k; b_k) · c_k · exp(g_k(x))  +  Σ_j a_j · G(x; p_j, s_j)

- ``m_k``, ``c_k``: compartment masks and concentrations, started from the organ fit
  (`recon.anatomy.organ_fit`);
- ``t_k``: a registration shift of each segment (up to `MAX_SHIFT_VOX` voxels per axis, linear
  interpolation between whole-voxel shifts), as EQPlanar fits per organ: a segmentation that is
  off by a voxel otherwise leaves counts at the organ's edges that no concentration explains.
  The background regions fill whatever the shifted segments leave of the support;
- ``b_k``: a boundary offset of each segment (up to `MAX_BOUNDARY_VOX` voxels, linear between
  whole voxels, from the segment's signed distance map): outward grows the segment, inward shrinks
  it, the dilation or erosion of a segmentation drawn one voxel too wide or too tight. A shift
  cannot explain either: a too-wide kidney leaves counts missing at its centre and in excess at
  its rim, and a residual source nearby then takes the centre's counts;
- ``g_k``: a smooth modulation of the uptake across segment k: trilinear over the segment's
  bounding box from a coarse grid of `MODULATION_GRID` values, each bounded to
  ``±MAX_LOG_MODULATION`` (a factor 0.5 … 2) and pulled towards 0 by a Gaussian prior — the
  smooth part of uneven uptake, which the two views see across the detector and, through the
  attenuation, weakly in depth;
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

__all__ = [
    "MAX_BOUNDARY_VOX",
    "MAX_LOG_MODULATION",
    "MAX_SHIFT_VOX",
    "MAX_SOURCE_SIGMA_MM",
    "MODULATION_GRID",
    "SOURCE_UNIT_VOXEL_ML",
    "OrganResidualModel",
    "ResidualSource",
]

#: A box of the grid: slices along z, y and x.
Box = tuple[slice, slice, slice]

#: Nodes ``(z, y, x)`` of the coarse grid of each segment's uptake modulation.
MODULATION_GRID = (3, 3, 3)
#: Bound on each node of the log-modulation: the uptake varies by a factor of at most e^±0.7.
MAX_LOG_MODULATION = 0.7
#: Prior standard deviation of each log-modulation node (a Gaussian prior, in units of the
#: Poisson log-likelihood): uptake inside an organ varies by some tens of percent.
MODULATION_PRIOR_SD = 0.3
#: Bound on each component (x, y, z) of a segment's registration shift, in voxels.
MAX_SHIFT_VOX = 1.5
#: Bound on each segment's boundary offset (voxels, outward positive).
MAX_BOUNDARY_VOX = 1.5
#: Prior standard deviation (voxels) of each boundary offset: a segmentation is right to about
#: a voxel.
BOUNDARY_PRIOR_SD = 1.0
#: A source's activity is a parameter in units of the data's activity level times 100 voxels of
#: this volume (mL) or of the grid's voxels, whichever are larger: the scale it was chosen at
#: (6.25 mm voxels), so that the fit's steps mean the same in MBq on a finer grid.
SOURCE_UNIT_VOXEL_ML = 6.25**3 * 1e-3
#: Largest width σ (mm) of a residual source (a uniform sphere of about 9 cm has this rms
#: radius per axis): sources are focal; what is broader belongs to the organs and background.
MAX_SOURCE_SIGMA_MM = 20.0


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
    """Organ concentrations with a smooth within-organ modulation, plus sparse Gaussian sources.

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
    modulation:
        Fit the smooth uptake modulation ``g_k`` of each segment (background regions have none).
    register:
        Fit the registration shift ``t_k`` of each segment.
    boundary:
        Fit the boundary offset ``b_k`` of each segment (its dilation or erosion).
    source_prior:
        Weight of the L1 prior on the source activities, relative to the data term (>= 0).
    data_counts:
        Total counts of the data the model is fitted to (> 0). The training loss is the Poisson
        negative log-likelihood divided by them (`recon.training.terms`), so the Gaussian priors
        on the modulation and the boundary offsets, in log-likelihood units, are divided by the
        same number: their weight against the data does not depend on the count level
        (default: 10⁶, the order of a planar study's counts; `reconstruct_organs` passes the
        study's).
    """

    xs: torch.Tensor
    ys: torch.Tensor
    zs: torch.Tensor
    index: torch.Tensor
    support: torch.Tensor
    segment: torch.Tensor
    background_bands: torch.Tensor
    scale: torch.Tensor
    c0: torch.Tensor
    modulated: torch.Tensor
    registered: torch.Tensor
    bounded: torch.Tensor
    spacing_xyz: torch.Tensor
    p0: torch.Tensor
    a_unit: torch.Tensor

    def __init__(
        self,
        grid: ImageGrid,
        compartments: Compartments,
        concentrations: np.ndarray,
        sources: tuple[ResidualSource, ...] = (),
        support: np.ndarray | None = None,
        *,
        modulation: bool = True,
        register: bool = True,
        boundary: bool = True,
        source_prior: float = 0.0,
        data_counts: float = 1e6,
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
        if not (math.isfinite(data_counts) and data_counts > 0):
            raise ValueError(f"data_counts must be > 0, got {data_counts!r}")
        self.data_counts = float(data_counts)
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
        segment = torch.tensor([not b for b in compartments.background])
        self.register_buffer("segment", segment, persistent=False)
        bands = _background_bands(compartments, sup)
        if compartments.weight is not None:
            bands = bands * torch.as_tensor(compartments.weight)[None]
        # The background regions' bands (the segments' rows of `bands` are zero).
        self.background_rows = [i for i in range(k) if compartments.background[i]]
        self.register_buffer("background_bands", bands[self.background_rows], persistent=False)
        # Each segment lives in its bounding box (with room for the shift and the boundary).
        pad = math.ceil(MAX_SHIFT_VOX) + math.ceil(MAX_BOUNDARY_VOX) + 1
        sampling = np.asarray(grid.spacing_mm, dtype=np.float64)
        sampling = sampling / sampling.min()
        self.boxes: list[Box | None] = []
        for i in range(k):
            if not bool(segment[i]):
                self.boxes.append(None)
                continue
            where = np.argwhere(compartments.index == i)
            lo = np.maximum(where.min(axis=0) - pad, 0)
            hi = np.minimum(where.max(axis=0) + pad + 1, grid.shape)
            box: Box = (
                slice(int(lo[0]), int(hi[0])),
                slice(int(lo[1]), int(hi[1])),
                slice(int(lo[2]), int(hi[2])),
            )
            self.boxes.append(box)
            distance = _signed_distance(compartments.index[box] == i, sampling)
            self.register_buffer(f"_distance{i}", distance, persistent=False)
        # Parameters, all of order one.
        level = float(c0.max()) if c0.max() > 0 else 1.0
        self.register_buffer("scale", torch.tensor(level), persistent=True)
        self.register_buffer("c0", torch.as_tensor(c0 / level, dtype=torch.float32))
        self.log_c = nn.Parameter(torch.zeros(k))
        modulated = segment.float() if modulation else torch.zeros(k)
        self.register_buffer("modulated", modulated, persistent=True)
        self.modulation = nn.Parameter(torch.zeros(k, *MODULATION_GRID))
        registered = segment.float() if register else torch.zeros(k)
        self.register_buffer("registered", registered, persistent=True)
        self.registration = nn.Parameter(torch.zeros(k, 3))
        bounded = segment.float() if boundary else torch.zeros(k)
        self.register_buffer("bounded", bounded, persistent=True)
        self.boundary = nn.Parameter(torch.zeros(k))
        n = len(sources)
        spacing = torch.tensor(grid.spacing_mm[::-1], dtype=torch.float32)  # x, y, z
        self.register_buffer("spacing_xyz", spacing, persistent=False)
        start = torch.tensor([s.centre_mm for s in sources], dtype=torch.float32).reshape(n, 3)
        self.register_buffer("p0", start)
        self.source_shift = nn.Parameter(torch.zeros(n, 3))  # in voxels
        floor = 0.5 * float(spacing.min())
        s0 = torch.tensor([s.sigma_mm for s in sources], dtype=torch.float32).reshape(n)
        fraction = ((s0 - floor) / (MAX_SOURCE_SIGMA_MM - floor)).clamp(1e-3, 1 - 1e-3)
        self.sigma_logit = nn.Parameter(torch.log(fraction / (1 - fraction)))
        voxel_ml = grid.voxel_volume_mm3 * 1e-3
        a0 = torch.tensor([max(s.activity, 0.0) for s in sources], dtype=torch.float32)
        unit_ml = 100.0 * max(voxel_ml, SOURCE_UNIT_VOXEL_ML)
        self.register_buffer("a_unit", torch.tensor(level * unit_ml))
        self.raw_a = nn.Parameter(_inverse_softplus(a0.reshape(n) / self.a_unit))

    # -- parts -------------------------------------------------------------------------------
    def concentrations(self) -> torch.Tensor:
        """``[K]`` concentrations (activity unit)."""
        return self.scale * self.c0 * torch.exp(self.log_c)

    def log_modulations(self) -> torch.Tensor:
        """``[K, *MODULATION_GRID]`` nodes of each compartment's log-modulation ``g_k``, each in
        ``[−MAX_LOG_MODULATION, MAX_LOG_MODULATION]`` (0 for background regions)."""
        bound = MAX_LOG_MODULATION * torch.tanh(self.modulation)
        return bound * self.modulated[:, None, None, None]

    def source_activities(self) -> torch.Tensor:
        """``[J]`` source activities (activity unit · mL)."""
        return nn.functional.softplus(self.raw_a) * self.a_unit

    def source_centres_mm(self) -> torch.Tensor:
        """``[J, 3]`` source centres (x, y, z mm)."""
        return self.p0 + self.source_shift * self.spacing_xyz

    def source_sigmas_mm(self) -> torch.Tensor:
        """``[J]`` source widths σ (mm), between half a voxel and `MAX_SOURCE_SIGMA_MM`."""
        floor = 0.5 * float(self.spacing_xyz.min())
        return floor + (MAX_SOURCE_SIGMA_MM - floor) * torch.sigmoid(self.sigma_logit)

    def shifts_vox(self) -> torch.Tensor:
        """``[K, 3]`` registration shift of each compartment (x, y, z voxels; 0 for backgrounds),
        each in ``[−MAX_SHIFT_VOX, MAX_SHIFT_VOX]``."""
        return MAX_SHIFT_VOX * torch.tanh(self.registration) * self.registered[:, None]

    def boundary_offsets_vox(self) -> torch.Tensor:
        """``[K]`` boundary offset of each compartment (voxels, outward positive; 0 for
        backgrounds), each in ``[−MAX_BOUNDARY_VOX, MAX_BOUNDARY_VOX]``."""
        return MAX_BOUNDARY_VOX * torch.tanh(self.boundary) * self.bounded

    def segment_mask(self, k: int, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Segment k's mask within its box with its boundary offset (before the shift): the
        fraction ``clamp(½ + b_k − d, 0, 1)`` of each voxel, ``d`` the voxel's signed distance to
        the outline (−½ on the inner shell, +½ on the outer one): exactly the segment at
        ``b_k = 0``, one voxel dilated at ``b_k = 1``. ``offsets``: `boundary_offsets_vox`, when
        the caller has it already."""
        distance = getattr(self, f"_distance{k}")
        offsets = self.boundary_offsets_vox() if offsets is None else offsets
        return (0.5 + offsets[k] - distance).clamp(0.0, 1.0)

    def _segment_parts(self) -> list[tuple[int, tuple[slice, slice, slice], torch.Tensor,
                                             torch.Tensor]]:  # fmt: skip
        """``(k, box, shifted mask, modulation)`` of each segment, within its box."""
        shifts, nodes, offsets = (
            self.shifts_vox(),
            self.log_modulations(),
            self.boundary_offsets_vox(),
        )
        parts = []
        for k, box in enumerate(self.boxes):
            if box is None:
                continue
            mask = _shift_volume(self.segment_mask(k, offsets), shifts[k])
            g = nn.functional.interpolate(
                nodes[k][None, None], size=tuple(mask.shape), mode="trilinear", align_corners=True
            )[0, 0]
            parts.append((k, box, mask, torch.exp(g)))
        return parts

    def _placed(self, k: int, crop: torch.Tensor) -> torch.Tensor:
        """A crop of segment k's box placed in a zero volume of the grid's shape."""
        box = self.boxes[k]
        assert box is not None
        pads: list[int] = []
        for axis in (2, 1, 0):  # F.pad takes the last axis first
            size = self.support.shape[axis]
            pads += [box[axis].start, size - box[axis].stop]
        return nn.functional.pad(crop, pads)

    def unit_volumes(self) -> torch.Tensor:
        """``[K, Z, Y, X]``: each compartment's part of the activity per unit concentration —
        its (shifted) mask times its modulation, inside the support; the background regions fill the
        support the shifted segments leave."""
        out = torch.zeros((len(self.boxes), *self.support.shape), device=self.support.device)
        covered = torch.zeros_like(self.support)
        for k, box, mask, modulation in self._segment_parts():
            out[(k, *box)] = mask * modulation
            covered = covered + self._placed(k, mask)
        rest = 1.0 - covered.clamp(0.0, 1.0)
        out[self.background_rows] = out[self.background_rows] + self.background_bands * rest
        return out * self.support

    def organ_volume(self) -> torch.Tensor:
        """``[Z, Y, X]`` the compartment part of the activity (activity unit)."""
        c = self.concentrations()
        out = torch.zeros_like(self.support)
        covered = torch.zeros_like(self.support)
        for k, _, mask, modulation in self._segment_parts():
            out = out + self._placed(k, c[k] * mask * modulation)
            covered = covered + self._placed(k, mask)
        rest = 1.0 - covered.clamp(0.0, 1.0)
        background = torch.einsum("b,bzyx->zyx", c[self.background_rows], self.background_bands)
        return (out + background * rest) * self.support

    def source_volume(self, activities: torch.Tensor | None = None) -> torch.Tensor:
        """``[Z, Y, X]`` the residual sources (activity unit): Gaussians integrated per voxel.

        ``activities``: ``[J]`` to use instead of the model's (e.g. one-hot for a basis)."""
        out = torch.zeros_like(self.support)
        if self.p0.shape[0] == 0:
            return out
        centres, sigmas = self.source_centres_mm(), self.source_sigmas_mm()
        acts = self.source_activities() if activities is None else activities
        for j in range(centres.shape[0]):
            box, blob = self._source_blob(centres[j], sigmas[j])
            out[box] = out[box] + acts[j] * blob
        return out

    def source_unit_volume(self, j: int, centre_mm: torch.Tensor | None = None) -> torch.Tensor:
        """``[Z, Y, X]`` source ``j`` with unit activity (activity unit per (activity unit · mL)),
        at its centre or at ``centre_mm`` (x, y, z mm) with its width."""
        centre = self.source_centres_mm()[j] if centre_mm is None else centre_mm
        out = torch.zeros_like(self.support)
        box, blob = self._source_blob(centre, self.source_sigmas_mm()[j])
        out[box] = blob
        return out

    def move_source(self, j: int, centre_mm: torch.Tensor, activity: float) -> None:
        """Put source ``j`` at ``centre_mm`` (x, y, z mm) with ``activity`` (activity unit · mL),
        in place (its width stays)."""
        with torch.no_grad():
            shift = (centre_mm.to(self.p0) - self.p0[j]) / self.spacing_xyz
            self.source_shift[j] = shift
            self.raw_a[j] = _inverse_softplus(torch.tensor(activity / float(self.a_unit)))

    def _source_blob(
        self, centre: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[tuple[slice, slice, slice], torch.Tensor]:
        """The box within 5 σ of ``centre`` (x, y, z mm) and, in it, a Gaussian of width ``sigma``
        integrated per voxel, inside the support and normalised there to unit activity (its
        values are concentrations per unit activity: 1/mL)."""
        voxel_ml = float(self.spacing_xyz.prod()) * 1e-3
        reach = 5.0 * float(sigma.detach())
        axes = (self.zs, self.ys, self.xs)
        box = []
        for a, c in ((0, 2), (1, 1), (2, 0)):
            inside = (axes[a] - centre[c].detach()).abs() <= reach
            idx = torch.nonzero(inside).flatten()
            box.append(slice(int(idx[0]), int(idx[-1]) + 1) if idx.numel() else slice(0, 0))
        box_t = (box[0], box[1], box[2])
        g = [
            _gauss_1d(axes[a][box[a]], centre[c], sigma, float(self.spacing_xyz[c]))
            for a, c in ((0, 2), (1, 1), (2, 0))
        ]
        blob = g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
        blob = blob * self.support[box_t]
        # Normalised inside the support: the source's activity is all in the volume.
        return box_t, blob / (voxel_ml * blob.sum().clamp_min(1e-12))

    def volume(self) -> torch.Tensor:
        """``[Z, Y, X]`` activity concentration (activity unit) at the voxel centres."""
        return self.organ_volume() + self.source_volume()

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Activity at points ``[..., 3]`` (x, y, z mm), trilinear in `volume`."""
        return GridField(self.volume(), self.grid)(points_mm.to(torch.float32)).to(points_mm.dtype)

    def penalty(self) -> torch.Tensor:
        """The model's prior (added to the data term by `fit`): L1 on the source activities
        (in units of the data's activity level × 100 voxels, voxels of `SOURCE_UNIT_VOXEL_ML` on
        finer grids), and Gaussian priors on the log-modulation nodes (sd
        `MODULATION_PRIOR_SD`) and the boundary offsets (sd `BOUNDARY_PRIOR_SD`), as negative
        log-likelihoods divided by ``data_counts``."""
        l1 = self.source_activities().sum() / self.a_unit
        gaussian = 0.5 * (
            ((self.log_modulations() / MODULATION_PRIOR_SD) ** 2).sum()
            + ((self.boundary_offsets_vox() / BOUNDARY_PRIOR_SD) ** 2).sum()
        )
        return self.source_prior * l1 + gaussian / self.data_counts

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


def _background_bands(compartments: Compartments, support: torch.Tensor) -> torch.Tensor:
    """``[K, Z, Y, X]``: for each background compartment, the support in the z slices of its band
    (slices with no background voxel go to the nearest band); zero for segments."""
    k = len(compartments)
    nz = compartments.index.shape[0]
    bands = torch.zeros((k, *compartments.index.shape), dtype=torch.float32)
    rows = [i for i in range(k) if compartments.background[i]]
    if not rows:
        return bands
    slice_band = np.full(nz, -1)
    for i in rows:
        in_band = (compartments.index == i).reshape(nz, -1).any(axis=1)
        slice_band[in_band] = i
    known = np.flatnonzero(slice_band >= 0)
    for missing in np.flatnonzero(slice_band < 0):
        slice_band[missing] = slice_band[known[np.argmin(np.abs(known - missing))]]
    for z in range(nz):
        bands[int(slice_band[z]), z] = support[z].float()
    return bands


def _signed_distance(mask: np.ndarray, sampling: np.ndarray) -> torch.Tensor:
    """Signed distance (voxels of the finest axis) of each voxel centre to a mask's outline:
    −½ on the mask's outer shell, +½ on the first shell outside, further in or out by the
    Euclidean distance between voxel centres."""
    from scipy import ndimage

    inside = ndimage.distance_transform_edt(mask, sampling=sampling) - 0.5
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling) - 0.5
    return torch.as_tensor(np.where(mask, -inside, outside), dtype=torch.float32)


def _shift_volume(volume: torch.Tensor, shift_xyz: torch.Tensor) -> torch.Tensor:
    """``volume`` ``[Z, Y, X]`` moved by ``shift_xyz`` voxels (x, y, z), linear between whole-voxel
    shifts (differentiable in the shift), zero filled."""
    out = volume
    for c, axis in ((0, 2), (1, 1), (2, 0)):
        t = shift_xyz[c]
        n = int(torch.floor(t.detach()))
        f = t - n
        out = (1.0 - f) * _roll(out, n, axis) + f * _roll(out, n + 1, axis)
    return out


def _roll(volume: torch.Tensor, n: int, axis: int) -> torch.Tensor:
    """Shift by ``n`` whole voxels along ``axis``, zero filled (no wrap-around)."""
    if n == 0:
        return volume
    out = torch.zeros_like(volume)
    size = volume.shape[axis]
    if abs(n) >= size:
        return out
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    if n > 0:
        src[axis], dst[axis] = slice(0, size - n), slice(n, size)
    else:
        src[axis], dst[axis] = slice(-n, size), slice(0, size + n)
    out[tuple(dst)] = volume[tuple(src)]
    return out


def _inverse_softplus(v: torch.Tensor) -> torch.Tensor:
    v = v.clamp_min(1e-6)
    return v + torch.log(-torch.expm1(-v))
