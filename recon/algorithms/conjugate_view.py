"""Conjugate-view (geometric-mean) organ quantification from an AP/PA pair: the clinical baseline.

For each organ, with the AP (β = 0) and PA (β = 180) images of a `recon.io.study.Study`, its
μ map and an organ label mask on the study's grid (units of ``docs/conventions.md``)::

    t(p)   = ∫ 1_organ dl            organ thickness along pixel p's line (mm; projector, no μ)
    ROI    = {p : t(p) > roi_threshold_mm}
    L_μ(p) = ∫ μ dl                  (projector of the μ map, no attenuation; dimensionless)
    T(p)   = exp(−L_μ(p))            transmission through the whole body
    I_A(p), I_P(p)                   background-subtracted counts; PA mirrored onto AP's pixels
    G(p)   = √(I_A(p) · I_P(p))      geometric mean (negative counts clipped to 0)
    f(p)   = (μ̄ t/2) / sinh(μ̄ t/2)   source self-attenuation correction, μ̄ = organ's mean μ
    a(p)   = G(p) / √T(p) · f(p) / s  estimated line integral of activity (activity·mm)
    A      = Σ_ROI a(p) · P · 1e-3 · k · 1e-6                                     (MBq)

with s = ``acquisition.count_scale`` (expected counts per unit activity·mm line integral in one
pixel, the same for both views), P the detector pixel area (mm²), 1e-3 mL/mm³, k the
activity unit in Bq/mL (1 for Bq/mL) and 1e-6 MBq/Bq.

Why it works: for a source of uniform concentration c over a chord [s₁, s₁ + t] of a line of
uniform μ and total length L, I_A = s·c·(1 − e^{−μt})/μ · e^{−μ d_A} and
I_P = s·c·(1 − e^{−μt})/μ · e^{−μ d_P} with d_A + d_P = L − t, so
√(I_A I_P) = s·c·(2/μ)·sinh(μt/2)·e^{−μL/2}, and √(I_A I_P / T) · f / s = c·t exactly, the
line integral of activity, independently of the depth. The projection value is a line integral
averaged over the pixel, so Σ_ROI a(p)·P is the activity times mm³.

The projector's midpoint rule (docs/conventions.md) makes this exact only up to a factor: for
a source of n whole voxels of size Δ along the line in a uniform medium the discrete projections
give √(I_A I_P / T) · f / s = c·t · (μΔ/2) / sinh(μΔ/2) ≈ c·t·(1 − (μΔ)²/24), i.e. −1.5e-4 for
μ = 0.015/mm and Δ = 4 mm.

Limitations (as in the clinic): overlapping organs share pixels (their counts are attributed to
both), the body is taken as uniform along each line for f, and scatter is removed only as well
as the background estimate allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from recon.evaluation.metrics import unit_to_bq_per_ml
from recon.io.study import ML_PER_MM3, Study
from spectproj import ParallelGeometry, SPECTProjector
from spectproj.display import mirror_bins

ArrayLike = np.ndarray | torch.Tensor
OrganSpec = Sequence[str | int] | Mapping[str, Sequence[str | int]]

__all__ = [
    "ConjugateViewRow",
    "conjugate_view_quantification",
    "self_attenuation_factor",
]

MBQ_PER_BQ = 1e-6
_ANGLE_TOL_DEG = 1e-6


@dataclass(frozen=True)
class ConjugateViewRow:
    """The conjugate-view result for one organ.

    Attributes
    ----------
    name : str
        Organ name.
    labels : tuple of int
        Label values making up the organ.
    activity_mbq : float
        Estimated activity (MBq; in ``activity_unit``·mL × 1e-6 if the unit is not an activity
        per mL known to `recon.evaluation.metrics.unit_to_bq_per_ml`, see
        `conjugate_view_quantification`).
    roi_pixels : int
        Pixels of the region of interest.
    mean_thickness_mm : float
        Mean organ thickness t over the ROI (mm).
    mu_per_mm : float
        The organ's mean μ (1/mm), used in the self-attenuation factor.
    mean_transmission : float
        Mean of T over the ROI.
    true_mbq : float or None
        Σ of the study's ``truth_activity`` over the organ's voxels (MBq), if the study has one.
    relative_error : float or None
        (activity − true) / true, if the truth is known and non-zero.
    """

    name: str
    labels: tuple[int, ...]
    activity_mbq: float
    roi_pixels: int
    mean_thickness_mm: float
    mu_per_mm: float
    mean_transmission: float
    true_mbq: float | None = None
    relative_error: float | None = None

    def to_dict(self) -> dict[str, object]:
        """The row as a JSON-serialisable dict."""
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d


def self_attenuation_factor(mu_t: np.ndarray) -> np.ndarray:
    """f = (μt/2) / sinh(μt/2), elementwise (1 where μt = 0); dimensionless, ``mu_t`` = μ·t."""
    h = 0.5 * np.asarray(mu_t, dtype=np.float64)
    safe = np.where(h == 0, 1.0, h)
    return np.where(h == 0, 1.0, safe / np.sinh(safe))


def _numpy(x: ArrayLike | None, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if x is None:
        raise ValueError(f"{name} is required")
    return np.asarray(x)


def _views(geometry: ParallelGeometry) -> tuple[int, int]:
    """Indices of the AP (β = 0) view and its conjugate PA (β = 180) view."""
    for v, beta in enumerate(geometry.angles_deg):
        if min(beta, 360.0 - beta) <= _ANGLE_TOL_DEG:
            pa = geometry.opposed_view(v)
            if pa is not None:
                return v, pa
    raise ValueError(
        f"the conjugate-view method needs an AP (β = 0) and a PA (β = 180) view; the study has "
        f"β = {list(geometry.angles_deg)}"
    )


def _label_value(key: str | int, label_names: Mapping[int, str]) -> int:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key)
    for value, name in label_names.items():
        if name == key:
            return int(value)
    raise KeyError(f"no label named {key!r}; have {sorted(map(str, label_names.values()))}")


def _organ_table(
    organs: OrganSpec | None,
    label_names: Mapping[int, str],
    exclude: set[int],
    present: set[int],
) -> list[tuple[str, tuple[int, ...]]]:
    if isinstance(organs, (str, int)):
        organs = [organs]
    if organs is None:
        return [
            (str(name), (int(v),))
            for v, name in label_names.items()
            if int(v) not in exclude and int(v) in present
        ]
    if isinstance(organs, Mapping):
        table = [
            (str(name), tuple(_label_value(k, label_names) for k in keys))
            for name, keys in organs.items()
        ]
    else:
        table = []
        for key in organs:
            value = _label_value(key, label_names)
            table.append((str(label_names.get(value, key)), (value,)))
    for name, values in table:
        if not any(v in present for v in values):
            raise ValueError(f"organ {name!r} (labels {list(values)}) has no voxel")
    return table


def conjugate_view_quantification(
    study: Study,
    labels: ArrayLike | None = None,
    label_names: Mapping[int, str] | None = None,
    *,
    organs: OrganSpec | None = None,
    roi_threshold_mm: float = 0.0,
    background: str | int | None = "study",
) -> list[ConjugateViewRow]:
    """Organ activities (MBq) from the AP/PA pair of ``study`` by the conjugate-view method.

    The formulas are in the module docstring (`recon.algorithms.conjugate_view`). All arithmetic is
    in
    float64.

    Parameters
    ----------
    study : recon.io.study.Study
        With views at β = 0 (AP) and β = 180 (PA) (others are ignored), ``mu_per_mm`` (1/mm) on
        ``study.grid`` and ``acquisition.count_scale``. Its ``activity_unit`` must be Bq/mL,
        kBq/mL or MBq/mL for the result to be in MBq; otherwise the result is
        Σ a·P·1e-3·1e-6 in the study's own unit × mL (e.g. with ``count_scale`` = 1, the
        unknown-sensitivity case of `recon.io.study`, the numbers are relative).
    labels : array or tensor, optional
        ``[Z, Y, X]`` integer organ labels on ``study.grid``; ``study.labels`` by default.
    label_names : mapping, optional
        Label value → name; ``study.label_names`` by default.
    organs : sequence or mapping, optional
        Which organs to quantify: label names or values (one organ each), or a mapping
        name → names/values to merge into one organ (e.g. the liver with its lesions). Default:
        every named label present in ``labels`` except a ``background`` region.
    roi_threshold_mm : float
        A pixel belongs to an organ's ROI when the organ's thickness t along its line exceeds
        this (mm). 0 (default) takes every pixel the organ projects onto.
    background : "study", None, or a label name/value
        What is subtracted from the counts of both views before the geometric mean:

        - ``"study"`` (default): ``study.background``, the expected additive (scatter) counts,
          when the study has one; nothing otherwise.
        - ``None``: nothing.
        - a label (e.g. ``"body"``): ``study.background`` as above, then a tissue background
          estimated from that region (thickness-scaled Buijs correction). Background ROI: the
          pixels the region covers (its thickness > ``roi_threshold_mm``) outside the ROI of
          every other named label. Per view v, b_v = Σ_bgROI I_v / Σ_bgROI L (counts per mm of
          body), L the body thickness (``labels > 0``) along each line; each organ pixel loses
          b_v · max(L − t, 0) counts, the background in front of and behind the organ.

    Returns
    -------
    list of ConjugateViewRow
        One row per organ (activity in MBq, ROI size, mean thickness, μ̄, mean transmission,
        and the truth and relative error when ``study.truth_activity`` is present).

    Raises
    ------
    ValueError
        If the study lacks an AP/PA pair or a μ map, labels are missing or mis-shaped, an
        explicitly requested organ has no voxel, or the background ROI is empty.
    """
    grid = study.grid
    shape = tuple(grid.shape)
    lab = _numpy(study.labels if labels is None else labels, "labels").astype(np.int64)
    if lab.shape != shape:
        raise ValueError(f"labels has shape {lab.shape}, the study's grid {shape}")
    names = dict(study.label_names if label_names is None else label_names)
    if study.mu_per_mm is None:
        raise ValueError("the conjugate-view method needs the study's μ map (mu_per_mm)")
    mu = np.asarray(study.mu_per_mm, dtype=np.float64)
    if mu.shape != shape:
        raise ValueError(f"mu_per_mm has shape {mu.shape}, the study's grid {shape}")
    threshold = float(roi_threshold_mm)
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"roi_threshold_mm must be >= 0 (mm), got {roi_threshold_mm!r}")
    scale = float(study.acquisition.count_scale)

    geometry = study.geometry()
    ap, pa = _views(geometry)
    ap_geometry = ParallelGeometry(
        grid,
        angles_deg=(0.0,),
        detector_shape=geometry.detector_shape,
        pixel_size_mm=geometry.pixel_size_mm,
        radius_mm=geometry.radius_mm,
    )
    projector = SPECTProjector(ap_geometry, None, dtype=torch.float64)

    def line_integrals(volumes: np.ndarray) -> np.ndarray:
        """``[B, Z, Y, X]`` → ``[B, rows, bins]``: ∫ volume dl along each AP pixel's line."""
        with torch.no_grad():
            out = projector(torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float64)))
        return out[:, 0].numpy()

    # New arrays (never views of the study's): AP, and PA mirrored onto AP's pixels.
    counts = np.asarray(study.projections, dtype=np.float64)
    i_ap = np.array(counts[ap], dtype=np.float64)
    i_pa = np.array(mirror_bins(counts[pa]), dtype=np.float64)
    if background is not None and study.background is not None:
        b = np.asarray(study.background, dtype=np.float64)
        i_ap = i_ap - b[ap]
        i_pa = i_pa - np.asarray(mirror_bins(b[pa]))

    present = {int(v) for v in np.unique(lab)}
    bg_value = None
    if background is not None and background != "study":
        bg_value = _label_value(background, names)
        if bg_value not in present:
            raise ValueError(f"background region {background!r} has no voxel")
    table = _organ_table(organs, names, {bg_value} if bg_value is not None else set(), present)

    def thickness_of(mask: np.ndarray) -> np.ndarray:
        """``[rows, bins]`` thickness (mm) of a ``[Z, Y, X]`` mask along each AP pixel's line."""
        return line_integrals(mask[None].astype(np.float64))[0]

    transmission = np.exp(-line_integrals(mu[None])[0])  # T = exp(−∫ μ dl)

    if bg_value is not None:
        bg_roi = thickness_of(lab == bg_value) > threshold
        for v in names:
            if int(v) != bg_value and int(v) in present:
                bg_roi &= thickness_of(lab == int(v)) <= threshold
        body_thick = thickness_of(lab > 0)
        body_in_roi = float(body_thick[bg_roi].sum())
        if not bg_roi.any() or body_in_roi <= 0:
            raise ValueError(
                f"the background region {background!r} has no pixel outside the other organs"
            )
        per_mm_ap = float(i_ap[bg_roi].sum()) / body_in_roi
        per_mm_pa = float(i_pa[bg_roi].sum()) / body_in_roi
    else:
        body_thick = None
        per_mm_ap = per_mm_pa = 0.0

    truth = None
    if study.truth_activity is not None:
        truth = np.asarray(study.truth_activity, dtype=np.float64)
    try:
        unit_factor = unit_to_bq_per_ml(study.activity_unit)
    except ValueError:
        unit_factor = 1.0
    pixel_area = geometry.pixel_size_mm[0] * geometry.pixel_size_mm[1]
    to_mbq = pixel_area * ML_PER_MM3 * unit_factor * MBQ_PER_BQ
    voxel_to_mbq = grid.voxel_volume_mm3 * ML_PER_MM3 * unit_factor * MBQ_PER_BQ

    rows = []
    for name, values in table:
        inside = np.isin(lab, values)
        t = thickness_of(inside)
        roi = t > threshold
        mu_bar = float(mu[inside].mean())
        a_ap, a_pa = i_ap[roi], i_pa[roi]
        if body_thick is not None:
            behind = np.maximum(body_thick[roi] - t[roi], 0.0)
            a_ap = a_ap - per_mm_ap * behind
            a_pa = a_pa - per_mm_pa * behind
        geometric_mean = np.sqrt(np.clip(a_ap, 0.0, None) * np.clip(a_pa, 0.0, None))
        f = self_attenuation_factor(mu_bar * t[roi])
        line = geometric_mean / np.sqrt(transmission[roi]) * f / scale  # activity·mm
        activity = float(line.sum()) * to_mbq
        true_mbq = rel = None
        if truth is not None:
            true_mbq = float(truth[inside].sum()) * voxel_to_mbq
            rel = (activity - true_mbq) / true_mbq if true_mbq != 0 else None
        rows.append(
            ConjugateViewRow(
                name=name,
                labels=tuple(values),
                activity_mbq=activity,
                roi_pixels=int(roi.sum()),
                mean_thickness_mm=float(t[roi].mean()) if roi.any() else 0.0,
                mu_per_mm=mu_bar,
                mean_transmission=float(transmission[roi].mean()) if roi.any() else 1.0,
                true_mbq=true_mbq,
                relative_error=rel,
            )
        )
    return rows
