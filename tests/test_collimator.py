"""Depth-dependent collimator blur."""

from __future__ import annotations

import pytest
import torch

from spectproj import CollimatorResponse, ImageGrid, ParallelGeometry, project
from spectproj.collimator import FWHM_PER_SIGMA, gaussian_blur_matrices


def _profile_stats(profile: torch.Tensor, centres: torch.Tensor) -> tuple[float, float]:
    total = profile.sum()
    mean = (profile * centres).sum() / total
    var = (profile * (centres - mean) ** 2).sum() / total
    return float(total), float(var)


@pytest.mark.parametrize("beta", [0.0, 30.0])
def test_blur_conserves_counts_and_widens_with_depth(beta):
    n, step = 41, 2.0
    grid = ImageGrid((41, n, n), (step, step, step))
    radius = 100.0
    col = CollimatorResponse(sigma0_mm=1.0, slope=0.04)
    geom = ParallelGeometry(grid, [beta], radius_mm=radius)
    centres = geom.detector_centres_mm(1)
    variances = []
    for j in (5, 20, 35):  # anterior (near the AP detector) → posterior
        a = torch.zeros(grid.shape, dtype=torch.float64)
        a[20, j, 20] = 1.0
        sharp = project(a, geom)[0]
        blurred = project(a, geom, collimator=col)[0]
        total, var = _profile_stats(blurred.sum(0), centres)  # bin profile
        _, var_rows = _profile_stats(blurred.sum(1), grid.centres_mm(0))  # row profile
        if beta == 0.0:  # rows and bins blur alike on a square lattice (rows: small tail loss)
            assert var_rows == pytest.approx(var, rel=1e-3)
        assert total == pytest.approx(float(sharp.sum()), rel=1e-4)  # tails beyond the detector
        if beta == 0.0:
            distance = radius - (-grid.centres_mm(1)[j].item())  # s = −y for AP
            sigma = 1.0 + 0.04 * distance
            assert var == pytest.approx(sigma**2 + step**2 / 12, rel=0.02)
        variances.append(var)
    assert variances[0] < variances[1] < variances[2]


def test_blur_matrices_are_normalised_and_identity_at_zero_sigma():
    mats = gaussian_blur_matrices(torch.tensor([0.0, 1.5, 6.0], dtype=torch.float64), 61, 2.0)
    assert torch.equal(mats[0], torch.eye(61, dtype=torch.float64))
    torch.testing.assert_close(
        mats[1:, :, 30].sum(-1), torch.ones(2, dtype=torch.float64), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(mats[1], mats[1].t())


def test_presets_follow_the_hole_geometry():
    lehr = CollimatorResponse.preset("LEHR", 140.5)
    assert lehr.sigma0_mm == pytest.approx(1.11 / FWHM_PER_SIGMA)
    # FWHM at 10 cm of a LEHR collimator is about 6-8 mm (geometric part)
    assert (lehr.sigma0_mm + 100 * lehr.slope) * FWHM_PER_SIGMA == pytest.approx(7.0, abs=1.5)
    megp = CollimatorResponse.preset("megp", 208.0)
    assert megp == CollimatorResponse.preset("MELP", 208.0)
    assert megp.sigma0_mm > lehr.sigma0_mm
    with pytest.raises(ValueError, match="unknown collimator 'XYZ'"):
        CollimatorResponse.preset("XYZ", 140.0)
    with pytest.raises(ValueError, match="transparent"):
        CollimatorResponse.from_holes(1.0, 0.5, 364.5)
