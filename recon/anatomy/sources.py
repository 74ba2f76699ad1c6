"""Where the anatomy leaves counts unexplained: residual sources from an AP/PA pair.

After an organ fit, a lesion that the segmentation does not contain shows as a compact excess of
counts in both opposed views. Its position on the detector is the excess's peak; its depth comes
from the ratio of the excess counts in the two views: a source at depth ``y`` gives
``N_AP / N_PA = t_AP(y) / t_PA(y)``, where ``t_v(y)`` is the attenuation factor from that point to
detector ``v`` (`docs/anatomy.md` shows this with a point source). Counts summed over a patch
are compared with what a point source at each depth would put into the same patches, computed
exactly by the adjoint of the full projector (attenuation and collimator blur) applied to the
patches: the blur widens the far view's peak, and that loss is part of the prediction.

`find_sources` returns starting sources for `recon.anatomy.residual.OrganResidualModel`; the fit
through the full projector then refines position, width and activity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from recon.anatomy.organ_fit import basis_projections, study_projector
from recon.anatomy.residual import OrganResidualModel, ResidualSource
from recon.io.study import Study
from spectproj import CollimatorResponse

__all__ = [
    "DEPTH_PATCH_MM",
    "DEPTH_SEARCH_MARGIN",
    "SEARCH_SMOOTHING_MM",
    "SOURCE_SEPARATION_MM",
    "START_SIGMA_MM",
    "conjugate_activity",
    "find_sources",
    "opposed_pair",
    "search_depths",
]

#: A source moves to another depth when that lowers the Poisson deviance by more than this.
DEPTH_SEARCH_MARGIN = 4.0

#: Scales of the source search in mm: the smoothing of the significance map, the least distance
#: between two sources across the rays, the half-width of the patch whose AP/PA ratio gives a new
#: source's depth, and a new source's starting width σ. They were chosen on studies of 6.25 mm
#: voxels (1, 3, 2 and 1.5 voxels there); on a coarser grid the search keeps those numbers of
#: voxels, so it never works below one voxel.
SEARCH_SMOOTHING_MM = 6.25
SOURCE_SEPARATION_MM = 18.75
DEPTH_PATCH_MM = 12.5
START_SIGMA_MM = 9.375

#: The depth search first tries at most this many depths along a source's ray (every voxel on
#: small grids, every few on large ones), then every voxel around the best.
DEPTH_SEARCH_POINTS = 32


def opposed_pair(angles_deg: tuple[float, ...]) -> tuple[int, int] | None:
    """Indices ``(i, j)`` of the first pair of opposed views (β and β + 180°), or ``None``."""
    for i, a in enumerate(angles_deg):
        for j in range(i + 1, len(angles_deg)):
            if abs(((angles_deg[j] - a) % 360.0) - 180.0) < 1e-6:
                return i, j
    return None


def find_sources(
    study: Study,
    expected: np.ndarray,
    support: np.ndarray | None,
    *,
    collimator: CollimatorResponse | None = None,
    max_sources: int = 8,
    threshold: float = 5.0,
    sigma_mm: float | None = None,
    exclude: tuple[ResidualSource, ...] = (),
) -> tuple[ResidualSource, ...]:
    """Starting residual sources where the counts exceed a model's expectation.

    Parameters
    ----------
    study:
        The study (counts, μ, count scale); its first opposed pair of views is used.
    expected:
        ``[V, rows, bins]`` expected counts of the current model (with background).
    support:
        ``[Z, Y, X]`` bool, where sources may lie (``None``: the whole grid).
    collimator:
        The blur the model has (normally ``study.collimator_response()``): the depth is matched
        with the blur's loss of counts out of the patch taken into account.
    max_sources:
        At most this many sources, strongest first.
    threshold:
        Minimum significance: the smoothed excess of both views over the square root of their
        smoothed expectation (in standard deviations of the Poisson noise of one pixel of
        6.25 mm; on finer grids scaled so that the same excess per mm² scores the same).
    sigma_mm:
        Starting width of each source (default `START_SIGMA_MM`, at least 1.5 voxels).
    exclude:
        Sources already in the model: new ones within `SOURCE_SEPARATION_MM` of them across the
        rays (at least 3 voxels) are skipped.

    Returns
    -------
    tuple of ResidualSource
        Empty when the study has no opposed pair of views or nothing is significant.
    """
    if max_sources < 0:
        raise ValueError(f"max_sources must be >= 0, got {max_sources}")
    pair = opposed_pair(study.acquisition.angles_deg)
    if pair is None or max_sources == 0:
        return ()
    grid = study.grid
    geometry = study.geometry()
    dz, dy, dx = grid.spacing_mm
    shape = tuple(study.projections.shape)
    counts = torch.as_tensor(np.asarray(study.projections, dtype=np.float64))
    model = torch.as_tensor(np.asarray(expected, dtype=np.float64))
    if tuple(model.shape) != shape:
        raise ValueError(f"expected must have the projections' shape {shape}, got {model.shape}")
    plain = study_projector(study, None, attenuation=False, dtype=torch.float64)
    full = study_projector(study, collimator, dtype=torch.float64)

    def columns(view: int, values: torch.Tensor) -> torch.Tensor:
        """A view's pixels spread over the voxel columns that project onto them."""
        only = torch.zeros(shape, dtype=torch.float64)
        only[view] = values[view]
        return plain.adjoint(only)

    ones = torch.ones(shape, dtype=torch.float64)
    weight = [columns(v, ones).clamp_min(1e-300) for v in pair]
    excess = [columns(v, counts - model) / w for v, w in zip(pair, weight, strict=True)]
    level = [columns(v, model) / w for v, w in zip(pair, weight, strict=True)]
    sup = (
        torch.ones(grid.shape, dtype=torch.bool)
        if support is None
        else torch.as_tensor(np.asarray(support, dtype=bool))
    )
    # Significance on the voxel lattice: smoothed excess of both views over the noise; one score
    # per ray of the pair (the best over the ray, inside the support).
    voxel_mm = min(grid.spacing_mm)
    smoothing = max(1.0, SEARCH_SMOOTHING_MM / voxel_mm)
    separation = max(3, round(SOURCE_SEPARATION_MM / voxel_mm))
    patch_radius = max(2, round(DEPTH_PATCH_MM / voxel_mm))
    smooth = [_smooth(e, smoothing) for e in excess]
    noise = torch.sqrt(_smooth(level[0] + level[1], smoothing).clamp_min(1.0))
    # The same excess per mm² of detector must score the same on any grid: a pixel's counts
    # scale with its area, so e/√level falls as the voxel side; the kernel's side in voxels
    # (`smoothing`) makes up for it (1 at the 6.25 mm voxels the threshold was chosen at).
    score = torch.where(sup, smoothing * (smooth[0] + smooth[1]) / noise, -math.inf)
    ray_axis = _ray_axis(geometry.angles_deg[pair[0]])
    peaks = _peaks(score.amax(dim=ray_axis).numpy(), threshold, radius=separation)
    width = max(1.5 * voxel_mm, START_SIGMA_MM) if sigma_mm is None else float(sigma_mm)
    voxel_ml = grid.voxel_volume_mm3 * 1e-3
    scale = study.acquisition.count_scale
    centres = [grid.centres_mm(a).detach().cpu().numpy() for a in range(3)]  # z, y, x
    reach = tuple(max(3 * h, SOURCE_SEPARATION_MM) for h in (dx, dy, dz))
    found: list[ResidualSource] = []
    for peak in peaks:
        if len(found) >= max_sources:
            break
        ray = _ray(peak, ray_axis)
        inside = sup[ray].numpy()
        if not inside.any():
            continue
        # The patch: the pixels of each view that see the columns around the peak.
        columns_patch = torch.zeros(grid.shape, dtype=torch.float64)
        columns_patch[_patch_index(peak, ray_axis, radius=patch_radius)] = 1.0
        seen = plain(columns_patch) > 0  # [V, rows, bins]
        indicator = torch.zeros((2, *shape), dtype=torch.float64)
        for k, v in enumerate(pair):
            indicator[k, v] = seen[v].to(torch.float64)
        measured = [float(((counts - model) * indicator[k]).sum()) for k in range(2)]
        # What a unit point at each voxel puts into each patch (attenuation and blur).
        response = full.adjoint(indicator)  # [2, Z, Y, X]
        r0, r1 = response[0][ray].numpy(), response[1][ray].numpy()
        depth = _depth(measured, r0, r1, inside)
        voxel = list(peak)
        voxel.insert(ray_axis, depth)
        zyx = tuple(float(centres[a][voxel[a]]) for a in range(3))
        xyz = (zyx[2], zyx[1], zyx[0])
        if any(_near(xyz, s.centre_mm, reach, ray_axis) for s in (*exclude, *found)):
            continue
        total = max(measured[0] + measured[1], 0.0)
        unit = scale * float(r0[depth] + r1[depth])  # counts per unit concentration there
        found.append(ResidualSource(xyz, width, total / max(unit, 1e-300) * voxel_ml))
    return tuple(found)


def conjugate_activity(
    counts: torch.Tensor,
    rest: torch.Tensor,
    unit: torch.Tensor,
    pair: tuple[int, int],
    patch_fraction: float = 0.9,
) -> tuple[float, float]:
    """A source's activity from its opposed views, by the geometric mean of its excess counts.

    The model places a source at some depth; the Poisson fit of its amplitude then weighs the two
    views by the counts the model expects in each, so a depth error (the AP/PA ratio is the only
    depth information, and the model around the source biases it) biases the amplitude: a source
    placed nearer a detector than it is gets too little activity, one placed too deep too much.
    The geometric mean of the two views does not depend on the depth for a source in a uniform
    attenuator (the conjugate-view principle), so the activity is measured as

        A = sqrt(n_1 · n_2 / (r_1 · r_2)),

    with ``n_v`` the measured counts minus everything else of the model (``rest``) over the
    source's patch in view ``v`` (the pixels where its own projection exceeds ``patch_fraction``
    of its peak: by default the top of its peak, where the source dominates most what the rest
    of the model gets wrong around it), and ``r_v`` the counts a unit of activity at the fitted
    place puts into that patch (attenuation, blur, count scale: ``unit``).

    Parameters
    ----------
    counts, rest, unit:
        ``[V, P]`` measured counts, expected counts of the rest of the model (with
        background), and the source's counts per unit activity.
    pair:
        The opposed views ``(i, j)``.
    patch_fraction:
        In (0, 1). The default, 0.9, was chosen on twelve phantom cases other than those of
        ``benchmarks/bench_anatomy.py`` (seeds 31–42), with the depth search: mean |lesion
        error| 13.0 % at 0.3, 11.4 % at 0.5, 11.0 % at 0.7, 10.0 % at 0.85, 9.3 % at 0.9,
        9.9 % at 0.95 (26, 27, 28, 29, 29, 29 of 30 within ±30 %).

    Returns
    -------
    (activity, sd)
        In the unit of ``unit``'s activity; ``sd`` from the Poisson variance of the counts in
        the two patches (first order). ``(0, 0)`` when either view has no excess.
    """
    if not 0.0 < patch_fraction < 1.0:
        raise ValueError(f"patch_fraction must lie in (0, 1), got {patch_fraction}")
    n, r, var = [], [], []
    for v in pair:
        patch = unit[v] > patch_fraction * unit[v].max()
        n.append(float((counts[v] - rest[v])[patch].sum()))
        r.append(float(unit[v][patch].sum()))
        var.append(float(counts[v][patch].sum()))
    if min(n) <= 0 or min(r) <= 0:
        return 0.0, 0.0
    activity = math.sqrt(n[0] * n[1] / (r[0] * r[1]))
    relative = 0.5 * math.sqrt(var[0] / n[0] ** 2 + var[1] / n[1] ** 2)
    return activity, activity * relative


def search_depths(
    study: Study,
    model: OrganResidualModel,
    *,
    collimator: CollimatorResponse | None = None,
    margin: float = DEPTH_SEARCH_MARGIN,
    device: torch.device | str = "cpu",
) -> int:
    """Move each residual source to the depth along its ray that explains the counts best.

    Depth is the one coordinate two opposed views hardly constrain: the likelihood of a source's
    depth is flat and can have several minima (the AP/PA ratio, the blur, and what the organs
    around it leave unexplained all pull on it), and a gradient fit started at the depth
    `find_sources` gave stays in the nearest one. For each source in turn (the rest of the model
    fixed), this tries every depth along the ray through its centre inside the support (every
    voxel, or every few voxels and then every voxel around the best; `DEPTH_SEARCH_POINTS`),
    each with its Poisson maximum-likelihood activity, and moves the source (centre and
    activity) to the best one when that lowers the deviance by more than ``margin`` against
    the source where it is, with its own maximum-likelihood activity. Lateral position and width
    stay as they are; a training round after a move refines everything together.

    Returns the number of sources moved (the model's ``source_shift`` and ``raw_a`` are set in
    place). Nothing moves without an opposed pair of views.
    """
    pair = opposed_pair(study.acquisition.angles_deg)
    n_sources = int(model.p0.shape[0])
    if pair is None or n_sources == 0:
        return 0
    ray_axis = _ray_axis(study.acquisition.angles_deg[pair[0]])  # volume axis (z, y, x)
    along = 2 - ray_axis  # the same axis in (x, y, z)
    projector = study_projector(study, collimator, device=device)
    scale = study.acquisition.count_scale
    y = torch.as_tensor(np.asarray(study.projections, dtype=np.float64)).reshape(-1)
    background = (
        torch.zeros_like(y)
        if study.background is None
        else torch.as_tensor(np.asarray(study.background, dtype=np.float64)).reshape(-1)
    )

    def project(volumes: torch.Tensor) -> torch.Tensor:
        return basis_projections(projector, volumes.to(projector.device), scale).double().cpu()

    coords = study.grid.centres_mm(ray_axis).detach().cpu().to(torch.float64)
    support = model.support.detach().cpu() > 0
    moved = 0
    with torch.no_grad():
        expected = project(model.volume()[None])[0] + background
        for j in range(n_sources):
            centre = model.source_centres_mm()[j].detach()
            activity = float(model.source_activities()[j])
            unit = project(model.source_unit_volume(j)[None])[0]
            rest = (expected - activity * unit).clamp_min(0.0)
            column = _column(study, centre, ray_axis)
            inside = support[column].numpy()
            if not inside.any():
                continue
            here = _objective(y, rest, unit, _ml_activity(y, rest, unit, activity))
            depths = np.flatnonzero(inside)
            step = max(1, math.ceil(len(depths) / DEPTH_SEARCH_POINTS))
            profile = _DepthProfile(model, j, centre, along, coords, project, y, rest, activity)
            tried = profile([int(i) for i in depths[::step]])
            best = min(tried, key=lambda i: tried[i][0])
            near = [int(i) for i in depths if abs(int(i) - best) < step and int(i) not in tried]
            if near:
                tried.update(profile(near))
                best = min(tried, key=lambda i: tried[i][0])
            value, a, u = tried[best]
            if 2.0 * (here - value) <= margin:  # deviance = 2 × negative log-likelihood
                continue
            target = centre.clone()
            target[along] = float(coords[best])
            model.move_source(j, target, a)
            expected = rest + a * u
            moved += 1
    return moved


class _DepthProfile:
    """A source's objective along its ray: for each depth index (along ``coords``), the Poisson
    negative log-likelihood at its maximum-likelihood activity, the activity, and its
    projection (the rest of the model fixed)."""

    def __init__(
        self,
        model: OrganResidualModel,
        j: int,
        centre: torch.Tensor,
        along: int,
        coords: torch.Tensor,
        project: Callable[[torch.Tensor], torch.Tensor],
        counts: torch.Tensor,
        rest: torch.Tensor,
        start: float,
    ) -> None:
        self.model, self.j, self.centre, self.along, self.coords = model, j, centre, along, coords
        self.project, self.counts, self.rest, self.start = project, counts, rest, start

    def __call__(self, indices: list[int]) -> dict[int, tuple[float, float, torch.Tensor]]:
        volumes = []
        for i in indices:
            moved = self.centre.clone()
            moved[self.along] = float(self.coords[i])
            volumes.append(self.model.source_unit_volume(self.j, moved))
        units = self.project(torch.stack(volumes))
        out = {}
        for i, u in zip(indices, units, strict=True):
            a = _ml_activity(self.counts, self.rest, u, self.start)
            out[i] = (_objective(self.counts, self.rest, u, a), a, u)
        return out


def _column(study: Study, centre_xyz: torch.Tensor, ray_axis: int) -> Index:
    """The line of voxels along ``ray_axis`` through the voxel nearest to a point (x, y, z mm)."""
    x, y, z = (float(c) for c in centre_xyz)
    voxel = nearest_voxel(study, (x, y, z))
    in_plane = [v for axis, v in enumerate(voxel) if axis != ray_axis]
    return _ray((in_plane[0], in_plane[1]), ray_axis)


def nearest_voxel(study: Study, centre_xyz: tuple[float, float, float]) -> tuple[int, int, int]:
    """Index ``(z, y, x)`` of the voxel nearest to a point (x, y, z mm), clipped to the grid."""
    grid = study.grid
    index = []
    for axis, value in ((0, centre_xyz[2]), (1, centre_xyz[1]), (2, centre_xyz[0])):
        centres = np.asarray(grid.centres_mm(axis))
        index.append(int(np.argmin(np.abs(centres - value))))
    return index[0], index[1], index[2]


def _objective(y: torch.Tensor, rest: torch.Tensor, unit: torch.Tensor, activity: float) -> float:
    """The Poisson negative log-likelihood of ``activity · unit + rest`` for counts ``y``, up to
    a constant that does not depend on the source (over the pixels the source reaches)."""
    seen = unit > 0
    u, r, n = unit[seen], rest[seen], y[seen]
    e = activity * u + r
    safe = torch.where(e > 0, e, torch.ones_like(e))
    return float((activity * u - n * torch.log(safe / torch.where(r > 0, r, safe))).sum())


def _ml_activity(
    y: torch.Tensor, rest: torch.Tensor, unit: torch.Tensor, start: float, iterations: int = 30
) -> float:
    """Poisson maximum-likelihood activity ``a >= 0`` of ``y ~ Poisson(a · unit + rest)``
    (Newton's method on the pixels the source reaches, started at ``start``)."""
    seen = unit > 0
    u, r, n = unit[seen], rest[seen], y[seen]
    a = max(start, 1e-12 * float(n.sum()) / max(float(u.sum()), 1e-300))
    for _ in range(iterations):
        e = (a * u + r).clamp_min(1e-300)
        gradient = float((u - n * u / e).sum())
        curvature = float((n * u * u / (e * e)).sum())
        if curvature <= 0:  # no counts where the source reaches: the best activity is 0
            return 0.0 if gradient > 0 else a
        step = gradient / curvature
        a_new = max(a - step, 0.1 * a)
        if abs(a_new - a) <= 1e-9 * a:
            a = a_new
            break
        a = a_new
    return a


def _ray_axis(angle_deg: float) -> int:
    """The volume axis along a view's rays: y (1) for AP/PA-like views (β near 0 or 180°), x (2)
    for lateral ones (docs/conventions.md)."""
    beta = math.radians(angle_deg)
    return 1 if abs(math.cos(beta)) >= abs(math.sin(beta)) else 2


#: An index into a volume: integers and slices.
Index = tuple[int | slice, ...]


def _ray(peak: tuple[int, int], axis: int) -> Index:
    index: list[int | slice] = list(peak)
    index.insert(axis, slice(None))
    return tuple(index)


def _patch_index(peak: tuple[int, int], axis: int, radius: int) -> Index:
    a, b = peak
    index: list[int | slice] = [slice(max(a - radius, 0), a + radius + 1),
                           slice(max(b - radius, 0), b + radius + 1)]  # fmt: skip
    index.insert(axis, slice(None))
    return tuple(index)


def _depth(patch: list[float], t0: np.ndarray, t1: np.ndarray, inside: np.ndarray) -> int:
    """Index along the ray whose response ratio ``t0/t1`` matches the patch's count ratio."""
    candidates = np.flatnonzero(inside)
    n0, n1 = patch
    if n0 <= 0 or n1 <= 0:
        return int(candidates[len(candidates) // 2])
    want = math.log(n0 / n1)
    have = np.log(np.maximum(t0[candidates], 1e-300)) - np.log(np.maximum(t1[candidates], 1e-300))
    return int(candidates[int(np.argmin(np.abs(have - want)))])


def _near(
    a: tuple[float, float, float],
    b: tuple[float, float, float],
    reach_xyz: tuple[float, ...],
    ray_axis: int,
) -> bool:
    """Within ``reach_xyz`` (mm, per axis x, y, z) of each other across the rays (the ray axis is
    z, y, x = 0, 1, 2)."""
    along = 2 - ray_axis  # index in (x, y, z)
    return all(abs(a[i] - b[i]) <= reach_xyz[i] for i in range(3) if i != along)


def _smooth(volume: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable Gaussian smoothing of a ``[Z, Y, X]`` volume (σ in voxels, zero padding)."""
    radius = max(1, math.ceil(3 * sigma_vox))
    x = torch.arange(-radius, radius + 1, dtype=volume.dtype)
    kernel = torch.exp(-0.5 * (x / sigma_vox) ** 2)
    kernel = kernel / kernel.sum()
    out = volume
    for axis in range(3):
        moved = out.movedim(axis, -1)
        flat = moved.reshape(-1, 1, moved.shape[-1])
        conv = torch.nn.functional.conv1d(flat, kernel.view(1, 1, -1), padding=radius)
        out = conv.reshape(moved.shape).movedim(-1, axis)
    return out


def _peaks(score: np.ndarray, threshold: float, radius: int) -> list[tuple[int, int]]:
    """Local maxima of a 2D map above ``threshold``, strongest first, ``radius`` apart."""
    s = np.where(np.isfinite(score), score, -np.inf)
    order = np.argsort(s, axis=None)[::-1]
    taken: list[tuple[int, int]] = []
    for flat in order:
        value = s.flat[flat]
        if not value > threshold:
            break
        a, b = np.unravel_index(flat, s.shape)
        if all(max(abs(a - p), abs(b - q)) > radius for p, q in taken):
            block = s[max(a - 1, 0) : a + 2, max(b - 1, 0) : b + 2]
            if value >= block.max():
                taken.append((int(a), int(b)))
    return taken
