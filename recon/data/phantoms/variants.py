"""Torso phantom variants with the flaws of clinical data, simulated without the inverse crime.

A `PhantomVariant` lists what differs from the ideal torso: uneven uptake inside organs (a smooth
Gaussian random field), lesions with necrotic cores, lesions the segmentation does not show,
segmentation errors (shifts, dilation, erosion), moved/resized lesions and scatter.
`simulate_variant` evaluates the truth on a grid ``oversample``× finer than the study's, projects
it there (μ of the fine grid, collimator blur, AP/PA) onto a detector whose pixels are the study's,
and returns a `recon.io.study.Study` on the coarse grid with the segmentation the methods get
(`segmentation_from_phantom`) in ``Study.anatomy``. See ``docs/phantoms.md``.

Units: lengths mm, μ 1/mm, activity concentration Bq/mL; volumes ``[Z, Y, X]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from recon.data.phantoms.torso import (
    COLLIMATORS,
    FIRST_LESION_LABEL,
    LABELS,
    NUCLIDES,
    REFERENCE_BODY_MM,
    Lesion,
    Phantom,
    TorsoPhantom,
    UptakeField,
    default_grid,
    make_torso,
    nuclide_name,
    structure_at,
)
from recon.io.study import Anatomy, Study
from spectproj import ImageGrid, ParallelGeometry

__all__ = [
    "HETEROGENEOUS_ORGANS",
    "PhantomVariant",
    "block_mean",
    "gaussian_random_field",
    "heterogeneous_uptake",
    "segmentation_from_phantom",
    "simulate_variant",
    "vary_lesions",
]

#: Structures whose uptake the heterogeneity field modulates (not the body background, not
#: lesions).
HETEROGENEOUS_ORGANS: tuple[str, ...] = (
    "lungs",
    "liver",
    "spleen",
    "kidney_right",
    "kidney_left",
    "spine",
    "bladder",
    "heart",
    "bowel",
)

#: Lesions of at least this volume (mL) are never shrunk below it by `lesion_size_jitter`.
_KEEP_LESION_ML = 5.0

# Independent random streams drawn from one seed.
_STREAM_FIELD, _STREAM_SHIFT, _STREAM_LESIONS = 1, 2, 3


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


@dataclass(frozen=True)
class PhantomVariant:
    """The flaws of one phantom case (all off by default except unsegmented lesions).

    Attributes
    ----------
    heterogeneity_rms : float
        Relative rms of the uptake inside each organ of `HETEROGENEOUS_ORGANS`: the organ's
        concentration is multiplied by ``max(0, 1 + rms · g)`` with ``g`` a smooth Gaussian
        random field normalised to zero mean and unit variance over the organ's voxels on the
        study grid (`heterogeneous_uptake`), so each organ keeps its total activity to within
        about 0.3 % at 64³ (1–2 % for the kidneys at 32³); the exact totals are in the study's
        ``provenance["truth_activity_mbq"]``. Body background and lesions stay uniform. In
        [0, 1); 0.2 gives ±20 %.
    heterogeneity_mm : float
        σ (mm) of the Gaussian smoothing of white noise that makes ``g``.
    necrotic_lesions : bool
        Give every lesion a concentric cold core.
    necrotic_core_fraction : float
        Core diameter / lesion diameter, in (0, 1).
    necrotic_concentration_fraction : float
        Core concentration / lesion concentration, in [0, 1).
    unsegmented_lesions : bool
        The segmentation does not contain the lesions (the CT does not show them): their voxels
        take the label of the organ they sit in (none when in the body background).
    seg_shift_vox : tuple of 3 int
        Shift ``(z, y, x)`` in voxels of the whole segmentation (misregistration).
    seg_dilate_vox, seg_erode_vox : int
        Dilate / erode every segment by this many voxels (6-connected steps; erosion first).
        Dilation only takes unsegmented voxels; erosion never empties a segment (it stops at the
        last non-empty step, keeping the segment's core).
    seg_random_shift : bool
        Shift each segment by one voxel along a random axis and sign (seeded by ``seed``).
    lesion_jitter_mm : float
        Move each lesion's centre by up to this distance (uniform in a ball, seeded), keeping it
        inside the structure that holds it and away from the other lesions.
    lesion_size_jitter : float
        Scale each lesion's diameter by ``1 + u · lesion_size_jitter``, ``u`` uniform in [−1, 1]
        (seeded); lesions of ≥ 5 mL stay ≥ 5 mL. In [0, 0.5].
    scatter_fraction : float
        Scatter-to-primary ratio of the simulation (`recon.data.simulate.scatter_projections`).
    seed : int
        Seed (>= 0) of the heterogeneity field, the random shifts, the lesion jitter and the
        Poisson noise.
    """

    heterogeneity_rms: float = 0.0
    heterogeneity_mm: float = 30.0
    necrotic_lesions: bool = False
    necrotic_core_fraction: float = 0.5
    necrotic_concentration_fraction: float = 0.1
    unsegmented_lesions: bool = True
    seg_shift_vox: tuple[int, int, int] = (0, 0, 0)
    seg_dilate_vox: int = 0
    seg_erode_vox: int = 0
    seg_random_shift: bool = False
    lesion_jitter_mm: float = 0.0
    lesion_size_jitter: float = 0.0
    scatter_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_range("heterogeneity_rms", self.heterogeneity_rms, 0.0, 1.0, hi_open=True)
        _check_range("heterogeneity_mm", self.heterogeneity_mm, 0.0, math.inf, lo_open=True)
        _check_range(
            "necrotic_core_fraction", self.necrotic_core_fraction, 0.0, 1.0, lo_open=True,
            hi_open=True,
        )  # fmt: skip
        _check_range(
            "necrotic_concentration_fraction", self.necrotic_concentration_fraction, 0.0, 1.0,
            hi_open=True,
        )  # fmt: skip
        _check_range("lesion_jitter_mm", self.lesion_jitter_mm, 0.0, math.inf)
        _check_range("lesion_size_jitter", self.lesion_size_jitter, 0.0, 0.5)
        _check_range("scatter_fraction", self.scatter_fraction, 0.0, math.inf)
        for name in ("necrotic_lesions", "unsegmented_lesions", "seg_random_shift"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("seg_dilate_vox", "seg_erode_vox", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, name, int(value))
        shift = self.seg_shift_vox
        if (
            not isinstance(shift, tuple | list)
            or len(shift) != 3
            or any(isinstance(s, bool) or not isinstance(s, int | np.integer) for s in shift)
        ):
            raise ValueError(
                f"seg_shift_vox must be three integers (z, y, x) in voxels, got {shift!r}"
            )
        object.__setattr__(self, "seg_shift_vox", tuple(int(s) for s in shift))
        for name in (
            "heterogeneity_rms", "heterogeneity_mm", "necrotic_core_fraction",
            "necrotic_concentration_fraction", "lesion_jitter_mm", "lesion_size_jitter",
            "scatter_fraction",
        ):  # fmt: skip
            object.__setattr__(self, name, float(getattr(self, name)))

    def to_dict(self) -> dict[str, object]:
        """The fields as a JSON-serialisable dict."""
        d = dataclasses.asdict(self)
        d["seg_shift_vox"] = list(self.seg_shift_vox)
        return d

    def to_json(self) -> str:
        """The fields as one line of JSON (what the study's provenance records)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PhantomVariant:
        """Inverse of `to_dict` (unknown keys raise ``ValueError`` naming them)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown PhantomVariant fields {unknown}; expected some of {sorted(known)}"
            )
        kwargs: dict[str, Any] = dict(d)
        if "seg_shift_vox" in kwargs:
            kwargs["seg_shift_vox"] = tuple(kwargs["seg_shift_vox"])
        return cls(**kwargs)

    def describe_segmentation(self) -> str:
        """One line on the segmentation errors (for ``Anatomy.source``)."""
        parts = ["lesions unsegmented" if self.unsegmented_lesions else "lesions segmented"]
        if self.seg_random_shift:
            parts.append(f"random 1-voxel shift per organ (seed {self.seed})")
        if any(self.seg_shift_vox):
            z, y, x = self.seg_shift_vox
            parts.append(f"shift ({z},{y},{x}) vox (z,y,x)")
        if self.seg_erode_vox:
            parts.append(f"erode {self.seg_erode_vox}")
        if self.seg_dilate_vox:
            parts.append(f"dilate {self.seg_dilate_vox}")
        return ", ".join(parts)


def _check_range(
    name: str,
    value: object,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open or hi == math.inf else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")


# -- lesions ---------------------------------------------------------------------------------


def vary_lesions(config: TorsoPhantom, variant: PhantomVariant) -> TorsoPhantom:
    """The configuration with the variant's lesion changes: jitter, resizing, necrotic cores.

    Parameters
    ----------
    config : TorsoPhantom
        The base configuration.
    variant : PhantomVariant
        Uses ``lesion_jitter_mm``, ``lesion_size_jitter``, ``necrotic_*`` and ``seed``.

    Returns
    -------
    TorsoPhantom
        A copy with new lesions (same names and concentrations). A moved lesion stays entirely
        inside the structure that held its original centre (checked on 26 surface points) and
        does not touch another lesion; where no such place is found in 200 draws it keeps its
        original centre.
    """
    if not isinstance(config, TorsoPhantom):
        raise TypeError(f"config must be a TorsoPhantom, got {type(config).__name__}")
    rng = _rng(variant.seed, _STREAM_LESIONS)
    anatomy_only = replace(config, lesions=())
    scale = np.array(
        [
            config.body_length_mm / REFERENCE_BODY_MM[0],
            config.body_depth_mm / REFERENCE_BODY_MM[1],
            config.body_width_mm / REFERENCE_BODY_MM[2],
        ]
    )
    dirs = sphere_probe_directions()
    placed: list[tuple[np.ndarray, float]] = []  # (patient-frame centre, radius)
    lesions: list[Lesion] = []
    for k, lesion in enumerate(config.lesions):
        diameter = lesion.diameter_mm
        if variant.lesion_size_jitter > 0:
            diameter *= 1.0 + variant.lesion_size_jitter * rng.uniform(-1.0, 1.0)
            if lesion.volume_ml >= _KEEP_LESION_ML:
                diameter = max(diameter, (6.0 * _KEEP_LESION_ML * 1e3 / math.pi) ** (1.0 / 3.0))
        centre = np.array(lesion.centre_mm)
        if variant.lesion_jitter_mm > 0:
            centre = _jittered_centre(
                anatomy_only, centre, diameter / 2.0, scale, variant.lesion_jitter_mm, rng, dirs,
                placed,
            )  # fmt: skip
        placed.append((centre * scale, diameter / 2.0))
        core, core_conc = 0.0, 0.0
        if variant.necrotic_lesions:
            core = variant.necrotic_core_fraction * diameter
            core_conc = variant.necrotic_concentration_fraction * lesion.concentration
        elif lesion.core_diameter_mm > 0:
            core = min(lesion.core_diameter_mm * diameter / lesion.diameter_mm, diameter)
            core_conc = lesion.core_concentration
        lesions.append(
            Lesion(
                tuple(float(c) for c in centre),  # type: ignore[arg-type]  # Lesion checks the length
                diameter,
                lesion.concentration,
                lesion.name or f"lesion_{k + 1}",
                core_diameter_mm=core,
                core_concentration=core_conc,
            )
        )
    return replace(config, lesions=tuple(lesions))


def sphere_probe_directions() -> np.ndarray:
    """The 26 unit vectors ``[26, 3]`` towards the neighbours of a cube's centre: the surface
    points at which a sphere is checked to lie inside a structure."""
    dirs = np.array(
        [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if a or b or c],
        dtype=float,
    )
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def _jittered_centre(
    anatomy_only: TorsoPhantom,
    centre_ref: np.ndarray,
    radius_mm: float,
    scale: np.ndarray,
    jitter_mm: float,
    rng: np.random.Generator,
    dirs: np.ndarray,
    placed: list[tuple[np.ndarray, float]],
) -> np.ndarray:
    """A new reference-frame centre within ``jitter_mm`` that keeps the lesion in its host."""
    host = int(structure_at(anatomy_only, torch.from_numpy(centre_ref * scale)[None])[0])
    for _ in range(200):
        step = rng.normal(size=3)
        step *= jitter_mm * rng.uniform() ** (1.0 / 3.0) / max(np.linalg.norm(step), 1e-12)
        cand = centre_ref + step
        c_pat = cand * scale
        points = np.concatenate([c_pat[None], c_pat[None] + radius_mm * dirs])
        inside = structure_at(anatomy_only, torch.from_numpy(points))
        if not bool((inside == host).all()):
            continue
        if any(np.linalg.norm(c_pat - c) < radius_mm + r + 2.0 for c, r in placed):
            continue
        return cand
    return centre_ref


# -- heterogeneity ---------------------------------------------------------------------------


def gaussian_random_field(
    grid: ImageGrid, correlation_mm: float, seed: int, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A smooth Gaussian random field of zero mean and unit variance on ``grid``.

    White noise on a lattice of step ``correlation_mm / 3`` (in mm, fixed by the grid's extent,
    so two grids with the same extent and offset see the same field) is smoothed by a Gaussian of
    σ = ``correlation_mm`` and interpolated trilinearly at the voxel centres.

    Parameters
    ----------
    grid : spectproj.ImageGrid
        Where to evaluate the field.
    correlation_mm : float
        σ (mm) of the smoothing Gaussian (> 0).
    seed : int
        Seed of the white noise.
    dtype : torch.dtype
        Dtype of the result.

    Returns
    -------
    torch.Tensor
        ``[Z, Y, X]`` field (dimensionless; variance 1 up to the interpolation's slight smoothing).
    """
    if not (math.isfinite(correlation_mm) and correlation_mm > 0):
        raise ValueError(f"correlation_mm must be a positive length (mm), got {correlation_mm!r}")
    h = correlation_mm / 3.0
    radius = math.ceil(3.0 * correlation_mm / h)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64) * h
    kernel = torch.exp(-0.5 * (taps / correlation_mm) ** 2)
    kernel /= kernel.norm()  # unit-variance output for unit-variance white noise
    # Lattice nodes: multiples of h covering the grid's extent (plus one node) on every axis.
    nodes = []
    for a in range(3):
        c = grid.centres_mm(a)
        nodes.append((math.floor(float(c.min()) / h) - 1, math.ceil(float(c.max()) / h) + 1))
    shape = tuple(hi - lo + 1 + 2 * radius for lo, hi in nodes)
    noise = torch.from_numpy(_rng(seed, _STREAM_FIELD).standard_normal(shape))
    field = noise[None, None]
    k = kernel.numel()
    field = torch.nn.functional.conv3d(field, kernel.view(1, 1, k, 1, 1))
    field = torch.nn.functional.conv3d(field, kernel.view(1, 1, 1, k, 1))
    field = torch.nn.functional.conv3d(field, kernel.view(1, 1, 1, 1, k))[0, 0]
    # Trilinear interpolation at the voxel centres: one linear-interpolation matrix per axis.
    wz, wy, wx = (
        _linear_interpolation(grid.centres_mm(a) / h - nodes[a][0], field.shape[a])
        for a in range(3)
    )
    out = torch.einsum("xk,ijk->ijx", wx, field)
    out = torch.einsum("yj,ijx->iyx", wy, out)
    out = torch.einsum("zi,iyx->zyx", wz.to(dtype), out.to(dtype))
    return out.contiguous()


def _linear_interpolation(position: torch.Tensor, n: int) -> torch.Tensor:
    """``[P, n]`` float64 weights of linear interpolation at ``position`` (in node units)."""
    i0 = position.floor().clamp(0, n - 2)
    t = (position - i0).clamp(0.0, 1.0)
    w = torch.zeros(position.numel(), n, dtype=torch.float64)
    rows = torch.arange(position.numel())
    w[rows, i0.long()] = 1.0 - t
    w[rows, i0.long() + 1] += t
    return w


def heterogeneous_uptake(
    phantom: Phantom,
    field: torch.Tensor,
    rms: float,
    organs: tuple[str, ...] = HETEROGENEOUS_ORGANS,
) -> dict[str, tuple[float, float]]:
    """Per-organ ``(offset, gain)`` of an `UptakeField` for a relative rms ``rms``.

    Inside each organ the modulation is ``offset + gain · g = 1 + rms · (g − m) / σ``, with
    ``m`` and ``σ`` the mean and standard deviation of ``field`` over the voxels that
    ``phantom`` labels with the organ's name: zero mean and the requested rms inside each organ,
    so each organ's total activity stays close to the uniform one (exactly so up to the
    difference between labelled voxels and the organ's partial-volume shares).

    Parameters
    ----------
    phantom : Phantom
        Labels on the field's grid.
    field : torch.Tensor
        ``[Z, Y, X]`` field on ``phantom.grid`` (e.g. `gaussian_random_field`).
    rms : float
        Relative rms of the modulation, in [0, 1).
    organs : tuple of str
        Names of the modulated structures (absent or single-voxel ones are skipped).

    Returns
    -------
    dict
        Organ name → ``(offset, gain)``.
    """
    if not (math.isfinite(rms) and 0 <= rms < 1):
        raise ValueError(f"rms must be in [0, 1), got {rms!r}")
    if tuple(field.shape) != tuple(phantom.grid.shape):
        raise ValueError(
            f"field has shape {tuple(field.shape)}, expected the phantom's {phantom.grid.shape}"
        )
    labels = phantom.labels.detach().cpu()
    g = field.detach().cpu().double()
    present = {name: value for value, name in phantom.label_names.items()}
    terms: dict[str, tuple[float, float]] = {}
    for name in organs:
        if name not in present:
            continue
        values = g[labels == present[name]]
        if values.numel() < 2 or float(values.std()) <= 0:
            continue
        mean, std = float(values.mean()), float(values.std())
        terms[name] = (1.0 - rms * mean / std, rms / std)
    return terms


# -- the segmentation given to the methods --------------------------------------------------


_CROSS = ndimage.generate_binary_structure(3, 1)


def segmentation_from_phantom(phantom: Phantom, variant: PhantomVariant | None = None) -> Anatomy:
    """The segmentation a method gets: the phantom's organs with the variant's errors.

    Parameters
    ----------
    phantom : Phantom
        A torso phantom on the study grid (its labels are the truth).
    variant : PhantomVariant, optional
        Which errors to apply; ``PhantomVariant()`` (lesions unsegmented, no other error) when
        ``None``.

    Returns
    -------
    recon.io.study.Anatomy
        ``labels`` ``[Z, Y, X]`` with the organ label values of `LABELS` (``"body"`` is not a
        segment; lesions keep ``FIRST_LESION_LABEL + k`` when segmented), ``names`` the phantom's
        structure names, ``body`` the outline μ > 0, and ``source`` describing the errors. Order
        of the errors: random per-organ shift, global shift, erosion, dilation; labels outside
        the body outline are then dropped.
    """
    if not isinstance(phantom, Phantom):
        raise TypeError(f"phantom must be a Phantom, got {type(phantom).__name__}")
    variant = PhantomVariant() if variant is None else variant
    if not isinstance(variant, PhantomVariant):
        raise TypeError(f"variant must be a PhantomVariant, got {type(variant).__name__}")
    truth = phantom.labels.detach().cpu().numpy().astype(np.int32)
    body = phantom.mu.detach().cpu().numpy() > 0
    body_value = LABELS["body"] if phantom.label_names.get(LABELS["body"]) == "body" else -1
    lesion_values = sorted(v for v in phantom.label_names if v >= FIRST_LESION_LABEL)
    labels = truth.copy()
    labels[labels == body_value] = 0
    names = {int(v): str(n) for v, n in phantom.label_names.items() if v != body_value and v > 0}
    if variant.unsegmented_lesions and lesion_values:
        is_lesion = np.isin(truth, lesion_values)
        labels[is_lesion] = _host_labels(phantom, is_lesion)
        labels[labels == body_value] = 0
        for v in lesion_values:
            names.pop(v, None)
    segments = sorted(v for v in names if (labels == v).any())
    if variant.seg_random_shift:
        rng = _rng(variant.seed, _STREAM_SHIFT)
        shifted = np.zeros_like(labels)
        for v in segments:  # ascending = the phantom's painting order
            shift = [0, 0, 0]
            shift[int(rng.integers(3))] = int(rng.choice((-1, 1)))
            shifted[_shift(labels == v, tuple(shift))] = v  # type: ignore[arg-type]  # shift has 3 entries
        labels = shifted
    if any(variant.seg_shift_vox):
        moved = np.zeros_like(labels)
        for v in segments:
            moved[_shift(labels == v, variant.seg_shift_vox)] = v
        labels = moved
    if variant.seg_erode_vox:
        eroded = np.zeros_like(labels)
        for v in segments:
            mask = labels == v
            for _ in range(variant.seg_erode_vox):
                smaller = ndimage.binary_erosion(mask, structure=_CROSS)
                if not smaller.any():
                    break  # keep the core of a small organ
                mask = smaller
            eroded[mask] = v
        labels = eroded
    if variant.seg_dilate_vox:
        free = labels == 0
        grown = labels.copy()
        for v in segments:
            mask = ndimage.binary_dilation(
                labels == v, structure=_CROSS, iterations=variant.seg_dilate_vox
            )
            grown[mask & free] = v  # into unsegmented voxels only; later organs win
        labels = grown
    labels[~body] = 0
    source = f"phantom organs ({variant.describe_segmentation()})"
    return Anatomy(labels=labels, names=names, body=body, source=source)


def _shift(mask: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    """``mask`` moved by ``shift`` voxels (z, y, x), zero-filled (nothing wraps around)."""
    out = np.zeros_like(mask)
    src, dst = [], []
    for s, n in zip(shift, mask.shape, strict=True):
        if abs(s) >= n:
            return out
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def _host_labels(phantom: Phantom, where: np.ndarray) -> np.ndarray:
    """Label of the structure under each voxel of ``where`` had no lesion been drawn."""
    if phantom.config is None:
        return np.zeros(int(where.sum()), dtype=np.int32)
    idx = np.nonzero(where)
    centres = [phantom.grid.centres_mm(a).numpy()[idx[a]] for a in range(3)]
    points = torch.from_numpy(np.stack(centres, axis=1))
    host = structure_at(replace(phantom.config, lesions=()), points)
    return host.numpy().astype(np.int32)


# -- simulation ------------------------------------------------------------------------------


def simulate_variant(
    config: TorsoPhantom,
    variant: PhantomVariant,
    *,
    size: int = 64,
    fov_mm: float = 400.0,
    oversample: int = 2,
    isotope: str | None = None,
    collimator: str | None = "auto",
    counts_per_view: float = 2e6,
    radius_mm: float = 250.0,
    noise: bool = True,
    tissue_hu: Mapping[str, float] | None = None,
) -> Study:
    """Simulate an AP/PA study of a phantom variant, from a finer grid (no inverse crime).

    The truth (with the variant's lesions and heterogeneity) is evaluated on a grid
    ``oversample``× finer than the study's ``size³`` grid and projected there by
    `recon.data.simulate.simulate_acquisition` with the fine μ and the collimator blur onto a
    detector
    whose pixels are the study's (the projector takes the area-weighted mean of the fine line
    integrals under each pixel). The study carries the coarse grid: μ, labels and volumes of
    `make_torso` on it, and the truth activity averaged from the fine grid. Both grids use the
    same partial-volume sub-voxels (fine supersample ``s``, coarse ``oversample · s``), so without
    heterogeneity the coarse truth equals `make_torso`'s coarse activity.

    Parameters
    ----------
    config : TorsoPhantom
        The base phantom (e.g. ``TorsoPhantom.lu177_dotatate()``).
    variant : PhantomVariant
        The flaws of this case.
    size : int
        Study grid voxels per axis (`default_grid`).
    fov_mm : float
        Edge of the cubic field of view (mm).
    oversample : int
        Fine-grid factor (>= 1; 1 reproduces the inverse crime, for comparison only).
    isotope : str, optional
        Nuclide; ``None`` gives Lu-177 when the organ concentrations are those of
        `TorsoPhantom.lu177_dotatate` (any lesions), Tc-99m otherwise.
    collimator : str or None
        ``"auto"`` for the nuclide's usual one (`COLLIMATORS`), a preset name, or ``None``
        for no blur. Recorded in ``Acquisition.collimator`` with ``radius_mm``.
    counts_per_view : float
        Expected total counts (primary + scatter) per view; one count scale for AP and PA.
    radius_mm : float
        Rotation axis to collimator face (mm).
    noise : bool
        Poisson counts (seeded by ``variant.seed``); ``False`` gives the expected counts.
    tissue_hu : Mapping[str, float], optional
        CT numbers of the structures (`make_torso`): the study then carries the synthetic CT
        (``ct_hu``) of the study grid and μ derived from it, and the simulation uses the μ of
        the fine grid's CT, as for a patient whose μ map comes from the CT.

    Returns
    -------
    recon.io.study.Study
        AP/PA ``projections`` ``[2, size, size]``, ``background`` (scatter, if any), the
        acquisition, and on the ``size³`` grid: ``mu_per_mm``, ``truth_activity`` (Bq/mL),
        ``labels``/``label_names`` (truth), ``anatomy`` (`segmentation_from_phantom`), and
        ``provenance`` with the variant (``"phantom_variant"``, JSON), the oversampling
        (``"oversample"``, ``"simulation_grid_shape"``) and ``"truth_activity_mbq"``: JSON
        structure name → activity (MBq) of each structure, exact for the volume (sub-voxel sums
        on the fine grid: a lesion's own activity, not what its labelled voxels hold).

    Raises
    ------
    ValueError
        For a bad ``size``, ``fov_mm``, ``oversample``, ``counts_per_view``, ``radius_mm``,
        ``isotope`` or collimator name.
    """
    from recon.data.simulate import (
        simulate_acquisition,  # recon.data.simulate imports recon.data.phantoms
    )

    if not isinstance(config, TorsoPhantom):
        raise TypeError(f"config must be a TorsoPhantom, got {type(config).__name__}")
    if not isinstance(variant, PhantomVariant):
        raise TypeError(f"variant must be a PhantomVariant, got {type(variant).__name__}")
    if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 1:
        raise ValueError(f"oversample must be an integer >= 1, got {oversample!r}")
    if not (math.isfinite(counts_per_view) and counts_per_view > 0):
        raise ValueError(f"counts_per_view must be positive, got {counts_per_view!r}")
    if not (math.isfinite(radius_mm) and radius_mm > 0):
        raise ValueError(f"radius_mm must be a positive length (mm), got {radius_mm!r}")
    if not (math.isfinite(fov_mm) and fov_mm > 0):
        raise ValueError(f"fov_mm must be a positive length (mm), got {fov_mm!r}")
    nuclide = _nuclide(config) if isotope is None else nuclide_name(isotope)
    energy = NUCLIDES[nuclide]
    if collimator == "auto":
        collimator = COLLIMATORS[nuclide]
    coarse = default_grid(size, fov_mm)
    fine = default_grid(size * oversample, fov_mm)
    s_fine = max(1, math.ceil(fine.spacing_mm[0] / 2.5 - 1e-9))
    cfg = vary_lesions(config, variant)

    coarse_phantom = make_torso(
        coarse, energy, cfg, supersample=oversample * s_fine, tissue_hu=tissue_hu
    )
    uptake = None
    if variant.heterogeneity_rms > 0:
        # One field in mm: its statistics on the study grid's organs set each organ's modulation.
        field = partial(
            gaussian_random_field, correlation_mm=variant.heterogeneity_mm, seed=variant.seed
        )
        terms = heterogeneous_uptake(coarse_phantom, field(coarse), variant.heterogeneity_rms)
        uptake = UptakeField(field(fine), terms)
    fine_phantom = make_torso(
        fine, energy, cfg, supersample=s_fine, uptake=uptake, tissue_hu=tissue_hu
    )
    geometry = ParallelGeometry.ap_pa(
        fine,
        detector_shape=(coarse.shape[0], coarse.shape[2]),
        pixel_size_mm=(coarse.spacing_mm[0], coarse.spacing_mm[2]),
        radius_mm=radius_mm,
    )
    study = simulate_acquisition(
        fine_phantom,
        geometry,
        collimator=collimator,
        scatter_fraction=variant.scatter_fraction,
        total_counts=counts_per_view * geometry.n_views,
        isotope=nuclide,
        seed=variant.seed,
        noise=noise,
    )
    truth = block_mean(fine_phantom.activity, oversample)
    anatomy = segmentation_from_phantom(coarse_phantom, variant)
    provenance = dict(study.provenance)
    provenance.update(
        {
            "software": provenance["software"].replace(
                "(recon.data.simulate.simulate_acquisition)",
                "(recon.data.phantoms.simulate_variant via "
                "recon.data.simulate.simulate_acquisition)",
            ),
            "phantom_variant": variant.to_json(),
            "oversample": str(oversample),
            "simulation_grid_shape": json.dumps(list(fine.shape)),
            "simulation_supersample": str(s_fine),
            "study_supersample": str(oversample * s_fine),
            "anatomy_source": anatomy.source,
            # "truth_activity_mbq" comes with simulate_acquisition's provenance: the fine
            # phantom's structures, summed over their sub-voxels.
        }
    )
    return replace(
        study,
        grid=coarse,
        mu_per_mm=coarse_phantom.mu.cpu().to(torch.float32).numpy(),
        ct_hu=None if coarse_phantom.ct_hu is None else coarse_phantom.ct_hu.cpu().numpy(),
        truth_activity=truth.to(torch.float32).numpy(),
        labels=coarse_phantom.labels.cpu().numpy(),
        label_names=dict(coarse_phantom.label_names),
        anatomy=anatomy,
        provenance=provenance,
    )


def block_mean(volume: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over ``factor³`` blocks: ``[f·Z, f·Y, f·X] → [Z, Y, X]`` (float64, on the CPU)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    v = volume.detach().cpu().double()
    if v.dim() != 3 or any(n % factor for n in v.shape):
        raise ValueError(
            f"volume must be [Z, Y, X] with sizes divisible by {factor}, got {tuple(v.shape)}"
        )
    if factor == 1:
        return v
    return torch.nn.functional.avg_pool3d(v[None, None], factor)[0, 0]


def _nuclide(config: TorsoPhantom) -> str:
    lu = TorsoPhantom.lu177_dotatate()
    organs = (*LABELS,)
    if all(getattr(config, n) == getattr(lu, n) for n in organs):
        return "Lu-177"
    return "Tc-99m"
