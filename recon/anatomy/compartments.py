"""Compartments: the anatomy's segments and background regions as masks on the study grid.

An organ fit (`recon.anatomy.organ_fit`) models the activity as ``Σ_k c_k · m_k(x)``: one
concentration ``c_k`` (Bq/mL) per compartment ``k`` and its mask ``m_k`` ([Z, Y, X], 0/1). The
compartments are the segments of a study's `recon.io.study.Anatomy` (organs, lesions a CT shows)
clipped to the support (the body), plus *background* compartments for the rest of the support:
the body minus the segments, split along z into ``background_regions`` bands of equal volume (one
band by default; more let the background vary head to foot, as QPlanar's background regions do).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from recon.io.study import Anatomy

__all__ = ["BACKGROUND_PREFIX", "Compartments", "compartments_from_anatomy", "tissue_fraction"]

#: Name prefix of the background compartments (``background``, or ``background_1`` ... ``_n``).
BACKGROUND_PREFIX = "background"


@dataclass(frozen=True)
class Compartments:
    """Disjoint masks on one grid.

    Parameters
    ----------
    index:
        ``[Z, Y, X]`` int32: the compartment of each voxel (0-based), −1 outside every
        compartment (no activity there).
    names:
        Name of each compartment, in order (unique).
    background:
        Whether each compartment is a background region (not a segment of the anatomy).
    weight:
        ``[Z, Y, X]`` fraction of each voxel that holds the compartment's tissue, in [0, 1]
        (``None``: 1 everywhere). Segments are whole voxels; a background voxel at the body's
        surface or next to gas is partly air (`tissue_fraction`).
    """

    index: np.ndarray
    names: tuple[str, ...]
    background: tuple[bool, ...]
    weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        index = np.asarray(self.index)
        if index.ndim != 3 or index.dtype.kind not in "iu":
            raise ValueError(f"index must be an integer [Z, Y, X] array, got {index.dtype} "
                             f"{index.shape}")  # fmt: skip
        names = tuple(str(n) for n in self.names)
        background = tuple(bool(b) for b in self.background)
        if len(background) != len(names):
            raise ValueError(f"background has {len(background)} entries for {len(names)} names")
        if len(set(names)) != len(names):
            raise ValueError(f"compartment names must be unique, got {names}")
        k = len(names)
        if index.size and (int(index.min()) < -1 or int(index.max()) >= k):
            raise ValueError(f"index values must lie in [-1, {k - 1}]")
        counts = np.bincount(index[index >= 0].ravel(), minlength=k)
        empty = [n for n, c in zip(names, counts, strict=True) if c == 0]
        if empty:
            raise ValueError(f"compartments {empty} have no voxels")
        if self.weight is not None:
            weight = np.asarray(self.weight, dtype=np.float32)
            if weight.shape != index.shape:
                raise ValueError(f"weight has shape {weight.shape}, the index {index.shape}")
            if not np.isfinite(weight).all() or weight.min() < 0 or weight.max() > 1:
                raise ValueError("weight must lie in [0, 1]")
            object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "index", index.astype(np.int32, copy=False))
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "background", background)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def voxel_counts(self) -> np.ndarray:
        """``[K]`` voxels per compartment, each counted by its `weight` (its volume in voxels)."""
        inside = self.index >= 0
        weights = None if self.weight is None else self.weight[inside].astype(np.float64)
        return np.bincount(self.index[inside].ravel(), weights, minlength=len(self))

    def masks(self) -> np.ndarray:
        """``[K, Z, Y, X]`` float32 masks (0/1, times `weight`)."""
        k = np.arange(len(self), dtype=np.int32)[:, None, None, None]
        masks = (self.index[None] == k).astype(np.float32)
        return masks if self.weight is None else masks * self.weight[None]

    def volume(self, values: np.ndarray) -> np.ndarray:
        """``[Z, Y, X]`` volume holding ``values[k]`` in compartment k and 0 elsewhere."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(self),):
            raise ValueError(f"values must have shape [{len(self)}], got {list(values.shape)}")
        out = np.zeros(self.index.shape, dtype=np.float64)
        inside = self.index >= 0
        out[inside] = values[self.index[inside]]
        return out if self.weight is None else out * self.weight


def tissue_fraction(mu_per_mm: np.ndarray, energy_keV: float) -> np.ndarray:
    """``[Z, Y, X]`` fraction of each voxel that is tissue rather than air: ``μ / μ_water``
    clipped to [0, 1] (1 in soft tissue and bone, about 0.3 in lung, less at the body's surface,
    where a voxel is partly air, and 0 in gas)."""
    from spectproj.physics import water_mu_per_mm

    fraction = np.asarray(mu_per_mm, dtype=np.float64) / water_mu_per_mm(energy_keV)
    return np.clip(fraction, 0.0, 1.0).astype(np.float32)


def compartments_from_anatomy(
    anatomy: Anatomy,
    support: np.ndarray | None = None,
    *,
    background_regions: int = 1,
    background_weight: np.ndarray | None = None,
) -> Compartments:
    """The compartments of an anatomy: its segments, then the background bands of the support.

    Parameters
    ----------
    anatomy:
        Segments on the study grid. Its ``body`` is the support when ``support`` is ``None``.
    support:
        ``[Z, Y, X]`` bool, where activity may be (normally the body). Segment voxels outside it
        are dropped (with a warning giving the count); ``None`` and no body: the segments only.
    background_regions:
        Number of background bands (split along z at equal voxel counts), >= 0; 0 leaves the
        support outside the segments without activity.
    background_weight:
        ``[Z, Y, X]`` in [0, 1]: the share of each background voxel that holds tissue (e.g.
        `tissue_fraction` of μ), so the background's activity follows the partial volume at the
        body's surface and is absent from gas; ``None``: whole voxels.

    Returns
    -------
    Compartments
        Segments in label order (empty ones are dropped with a warning), then ``background`` (one
        band) or ``background_1`` ... ``background_n``.
    """
    if isinstance(background_regions, bool) or not isinstance(background_regions, int):
        raise TypeError(f"background_regions must be an int, got {background_regions!r}")
    if background_regions < 0:
        raise ValueError(f"background_regions must be >= 0, got {background_regions}")
    labels = anatomy.labels
    if support is None:
        support = anatomy.body
    if support is not None:
        support = np.asarray(support, dtype=bool)
        if support.shape != labels.shape:
            raise ValueError(
                f"support has shape {support.shape}, the anatomy {labels.shape}; they must match"
            )
        outside = int(np.count_nonzero((labels > 0) & ~support))
        if outside:
            warnings.warn(
                f"{outside} segmented voxels lie outside the support and were dropped",
                stacklevel=2,
            )
        labels = np.where(support, labels, 0)
    index = np.full(labels.shape, -1, dtype=np.int32)
    names: list[str] = []
    for value in sorted(anatomy.names):
        mask = labels == value
        if not mask.any():
            warnings.warn(
                f"segment {anatomy.names[value]!r} has no voxels in the support; dropped",
                stacklevel=2,
            )
            continue
        index[mask] = len(names)
        names.append(anatomy.names[value])
    n_segments = len(names)
    if support is not None and background_regions > 0:
        rest = support & (labels == 0)
        if rest.any():
            bands = _z_bands(rest, background_regions)
            for b, band in enumerate(bands):
                index[band] = len(names)
                suffix = "" if len(bands) == 1 else f"_{b + 1}"
                names.append(f"{BACKGROUND_PREFIX}{suffix}")
    if not names:
        raise ValueError("the anatomy has no segment inside the support and there is no background")
    background = tuple(k >= n_segments for k in range(len(names)))
    weight = None
    if background_weight is not None:
        weight = np.where(index >= n_segments, np.asarray(background_weight), 1.0)
    return Compartments(index, tuple(names), background, weight)


def _z_bands(region: np.ndarray, n: int) -> list[np.ndarray]:
    """``region`` split into at most ``n`` non-empty bands of whole z slices, equal voxel counts."""
    per_slice = region.reshape(region.shape[0], -1).sum(axis=1)
    cumulative = np.cumsum(per_slice) / max(int(per_slice.sum()), 1)
    band_of_slice = np.minimum((cumulative * n - 1e-9).astype(int), n - 1)
    bands = []
    for b in range(n):
        in_band = band_of_slice == b
        if in_band.any() and per_slice[in_band].sum() > 0:
            bands.append(region & in_band[:, None, None])
    return bands
