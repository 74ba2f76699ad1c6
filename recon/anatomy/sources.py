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

import numpy as np
import torch

from recon.anatomy.organ_fit import study_projector
from recon.anatomy.residual import ResidualSource
from recon.io.study import Study
from spectproj import CollimatorResponse

__all__ = ["conjugate_activity", "find_sources", "opposed_pair"]


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
        smoothed expectation (in standard deviations of Poisson noise).
    sigma_mm:
        Starting width of each source (default 1.5 voxels).
    exclude:
        Sources already in the model: new ones within 3 voxels of them (in-plane) are skipped.

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
    smooth = [_smooth(e, 1.0) for e in excess]
    noise = torch.sqrt(_smooth(level[0] + level[1], 1.0).clamp_min(1.0))
    score = torch.where(sup, (smooth[0] + smooth[1]) / noise, -math.inf)
    ray_axis = _ray_axis(geometry.angles_deg[pair[0]])
    peaks = _peaks(score.amax(dim=ray_axis).numpy(), threshold, radius=3)
    width = 1.5 * min(grid.spacing_mm) if sigma_mm is None else float(sigma_mm)
    voxel_ml = grid.voxel_volume_mm3 * 1e-3
    scale = study.acquisition.count_scale
    centres = [grid.centres_mm(a).detach().cpu().numpy() for a in range(3)]  # z, y, x
    spacing_xyz = (dx, dy, dz)
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
        columns_patch[_patch_index(peak, ray_axis, radius=2)] = 1.0
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
        if any(_near(xyz, s.centre_mm, spacing_xyz, ray_axis) for s in (*exclude, *found)):
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
    patch_fraction: float = 0.5,
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
    of its peak: by default its full width at half maximum, where the source dominates what the
    rest of the model gets wrong around it), and ``r_v`` the counts a unit of activity at the
    fitted place puts into that patch (attenuation, blur, count scale: ``unit``).

    Parameters
    ----------
    counts, rest, unit:
        ``[V, P]`` measured counts, expected counts of the rest of the model (with
        background), and the source's counts per unit activity.
    pair:
        The opposed views ``(i, j)``.
    patch_fraction:
        In (0, 1). The default, 0.5, was chosen on six phantom cases other than those of
        ``benchmarks/bench_anatomy.py`` (seeds 31–36): 12 of 17 lesions within ±30 % at 0.5,
        10 of 17 at 0.05 and 0.1.

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
    spacing_xyz: tuple[float, float, float],
    ray_axis: int,
) -> bool:
    """Within 3 voxels of each other across the rays (the ray axis is z, y, x = 0, 1, 2)."""
    along = 2 - ray_axis  # index in (x, y, z)
    return all(abs(a[i] - b[i]) <= 3 * spacing_xyz[i] for i in range(3) if i != along)


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
