"""Conjugate-view (geometric-mean) quantification: exact on slabs, sensible on the torso.

Slab case (derivation in ``recon.algorithms.conjugate_view``): a source of concentration c filling
n whole
voxels of size Δ along each AP/PA line, inside a medium of uniform μ filling m >= n whole
voxels. The projector's midpoint rule attenuates the k-th source voxel (counted from the
medium's near face) by exp(−μΔ(k + 1/2)), so with q = exp(−μΔ)::

    I_A = s·c·Δ·q^(k_A + 1/2)·(1 − qⁿ)/(1 − q),   I_P likewise with k_P,  k_A + k_P = m − n
    √(I_A·I_P / T) = s·c·Δ·q^((1 − n)/2)·(1 − qⁿ)/(1 − q)
                   = s·c·Δ·(q^(−n/2) − q^(n/2))/(q^(−1/2) − q^(1/2)) = s·c·Δ·sinh(μt/2)/sinh(μΔ/2)

(T = q^m, t = nΔ), and with f = (μt/2)/sinh(μt/2) the estimate of the line integral is
c·t·g, g = (μΔ/2)/sinh(μΔ/2) — independent of the source's depth. The continuous method is
exact; the discrete projections carry this known factor g (1 − 1.5e-4 for μΔ = 0.06), which
the test divides out and then checks to 1e-9.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
import torch

from recon.algorithms.conjugate_view import (
    ConjugateViewRow,
    conjugate_view_quantification,
    self_attenuation_factor,
)
from recon.data.phantoms import default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.io.study import Acquisition, Study
from spectproj import ImageGrid, ParallelGeometry, project

MU = 0.015  # 1/mm
DY = 4.0  # mm, voxel size along the AP/PA lines
C = 2000.0  # Bq/mL


def slab_study(
    source_rows: slice,
    medium_rows: slice | None = None,
    *,
    columns: slice = slice(None),
    tapered: bool = False,
    angles: tuple[float, ...] = (0.0, 180.0),
) -> Study:
    """A source slab (label 2) in a uniform attenuating slab (label 1); noise-free counts.

    Grid (Z, Y, X) = (4, 16, 5) with voxels (3, 4, 5) mm: pixels 3 × 5 mm (15 mm²).
    ``tapered``: the medium's far face moves one voxel nearer per column (L varies per pixel).
    """
    grid = ImageGrid(shape=(4, 16, 5), spacing_mm=(3.0, DY, 5.0))
    medium_rows = medium_rows or slice(3, 13)
    labels = np.zeros(grid.shape, np.uint8)
    labels[:, medium_rows, :] = 1
    if tapered:
        for i in range(grid.shape[2]):
            labels[:, medium_rows.stop - i :, i] = 0
    labels[:, source_rows, columns] = 2
    mu = np.where(labels > 0, MU, 0.0)
    activity = np.where(labels == 2, C, 0.0)
    geometry = ParallelGeometry(grid, angles_deg=angles)
    acquisition = Acquisition(
        angles_deg=geometry.angles_deg,
        detector_shape=geometry.detector_shape,  # type: ignore[arg-type]
        pixel_size_mm=geometry.pixel_size_mm,  # type: ignore[arg-type]
        energy_keV=140.5,
        sensitivity_cps_per_mbq=80.0,
        duration_s=300.0,
    )
    # count scale = 15 mm² × 1e-3 mL/mm³ × 80 cps/MBq × 1e-6 MBq/Bq × 300 s = 3.6e-4
    assert acquisition.count_scale == pytest.approx(3.6e-4, rel=1e-12)
    counts = acquisition.count_scale * project(
        torch.from_numpy(activity), geometry, torch.from_numpy(mu)
    )
    return Study(
        projections=counts.numpy(),
        acquisition=acquisition,
        grid=grid,
        mu_per_mm=mu,
        truth_activity=activity,
        labels=labels,
        label_names={1: "medium", 2: "source"},
    )


def midpoint_factor(mu: float = MU, step: float = DY) -> float:
    """g = (μΔ/2)/sinh(μΔ/2): the discrete projector's bias of the conjugate-view estimate."""
    h = mu * step / 2
    return h / math.sinh(h)


def source_row(study: Study) -> ConjugateViewRow:
    (row,) = conjugate_view_quantification(study, organs=["source"])
    return row


@pytest.mark.parametrize("rows", [slice(5, 9), slice(3, 5), slice(9, 13), slice(3, 13)])
def test_slab_is_exact_at_any_depth(rows: slice) -> None:
    study = slab_study(rows)
    row = source_row(study)
    n_voxels = 4 * (rows.stop - rows.start) * 5
    true_mbq = C * n_voxels * 60.0 * 1e-3 * 1e-6  # Bq/mL × voxels × 60 mm³ × 1e-3 mL/mm³
    assert row.true_mbq == pytest.approx(true_mbq, rel=1e-12)
    assert row.roi_pixels == 20
    assert row.mean_thickness_mm == pytest.approx(DY * (rows.stop - rows.start))
    assert row.mu_per_mm == pytest.approx(MU)
    assert row.mean_transmission == pytest.approx(math.exp(-MU * 40.0), rel=1e-12)
    # exact up to the midpoint-rule factor g, which is 1 − 1.5e-4 here
    g = midpoint_factor()
    assert 1 - g == pytest.approx(1.5e-4, rel=1e-3)
    assert row.activity_mbq == pytest.approx(true_mbq * g, rel=1e-9)
    assert abs(row.relative_error) < 2e-4


def test_mirrored_pa_and_varying_body_thickness() -> None:
    # The source covers columns 0–1 only and the medium's thickness changes per column: both
    # views must be aligned pixel by pixel (mirror_bins), and T taken per pixel.
    study = slab_study(slice(4, 7), columns=slice(0, 2), tapered=True)
    row = source_row(study)
    assert row.roi_pixels == 4 * 2
    assert row.activity_mbq == pytest.approx(row.true_mbq * midpoint_factor(), rel=1e-9)


def test_views_found_among_others_and_background_options() -> None:
    study = slab_study(slice(5, 9), angles=(90.0, 180.0, 270.0, 0.0))
    reference = source_row(slab_study(slice(5, 9)))
    assert source_row(study).activity_mbq == pytest.approx(reference.activity_mbq, rel=1e-12)
    none = conjugate_view_quantification(study, organs=["source"], background=None)[0]
    assert none.activity_mbq == pytest.approx(reference.activity_mbq, rel=1e-12)
    # explicit labels / names, merged organs, and the default list (every label)
    merged = conjugate_view_quantification(
        study, study.labels, {1: "medium", 2: "source"}, organs={"all": ["medium", 2]}
    )
    assert merged[0].labels == (1, 2)
    assert [r.name for r in conjugate_view_quantification(study)] == ["medium", "source"]


def test_study_background_is_subtracted() -> None:
    study = slab_study(slice(5, 9))
    extra = np.full_like(study.projections, 0.3 * float(study.projections.mean()))
    with_bg = replace(study, projections=study.projections + extra, background=extra)
    before = with_bg.projections.copy()
    assert source_row(with_bg).activity_mbq == pytest.approx(
        source_row(study).activity_mbq, rel=1e-12
    )
    ignored = conjugate_view_quantification(with_bg, organs=["source"], background=None)[0]
    assert ignored.activity_mbq > 1.2 * source_row(study).activity_mbq
    np.testing.assert_array_equal(with_bg.projections, before)  # the study is left alone


def test_rejects_missing_views_mu_or_organ() -> None:
    with pytest.raises(ValueError, match="AP"):
        conjugate_view_quantification(slab_study(slice(5, 9), angles=(0.0, 90.0)))
    study = slab_study(slice(5, 9))
    with pytest.raises(ValueError, match="μ map"):
        conjugate_view_quantification(replace(study, mu_per_mm=None))
    with pytest.raises(KeyError, match="liver"):
        conjugate_view_quantification(study, organs=["liver"])
    with pytest.raises(ValueError, match="no voxel"):
        conjugate_view_quantification(study, organs=[7])
    with pytest.raises(ValueError, match="labels"):
        conjugate_view_quantification(replace(study, labels=None))
    assert conjugate_view_quantification(study, organs="source")[0].name == "source"


def test_self_attenuation_factor() -> None:
    f = self_attenuation_factor(np.array([0.0, 1e-12, 2.0]))
    assert f[0] == 1.0 and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0 / math.sinh(1.0), rel=1e-12)


# -- torso -----------------------------------------------------------------------------------


@cache
def torso_study(scatter_fraction: float = 0.0) -> Study:
    phantom = make_torso(default_grid(48), 140.5)
    geometry = ParallelGeometry.ap_pa(phantom.grid)
    return simulate_acquisition(
        phantom, geometry, duration_s=600.0, scatter_fraction=scatter_fraction, noise=False
    )


def test_torso_organ_errors() -> None:
    # Noise-free Tc-99m torso, 48³ (8.3 mm voxels), AP/PA, no collimator blur, with the body as
    # tissue background. Not exact: organs overlap in projection (right kidney behind the liver),
    # the body is not uniform, partial-volume labels. Measured: liver +14.6 %,
    # spleen −1.3 %, kidney_left −5.1 %, bladder −12.7 %, kidney_right +116 % (liver overlap).
    rows = {r.name: r for r in conjugate_view_quantification(torso_study(), background="body")}
    assert "body" not in rows
    assert abs(rows["liver"].relative_error) < 0.3
    assert abs(rows["spleen"].relative_error) < 0.3
    assert abs(rows["kidney_left"].relative_error) < 0.3
    assert abs(rows["bladder"].relative_error) < 0.3
    # without the tissue background the liver is overestimated (body activity in front/behind)
    plain = {r.name: r for r in conjugate_view_quantification(torso_study(), organs=["liver"])}
    assert plain["liver"].relative_error > rows["liver"].relative_error + 0.2


def test_torso_scatter_removed_by_the_study_background() -> None:
    clean = conjugate_view_quantification(torso_study(), organs=["liver", "spleen"])
    scattered = conjugate_view_quantification(
        torso_study(0.3), organs=["liver", "spleen"], background="study"
    )
    for a, b in zip(clean, scattered, strict=True):
        assert b.activity_mbq == pytest.approx(a.activity_mbq, rel=1e-4)
