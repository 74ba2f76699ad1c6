"""Attenuation coefficients and the CT → μ conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectproj import bone_mu_per_mm, hu_to_mu_per_mm, lead_mu_per_mm, water_mu_per_mm


@pytest.mark.parametrize("energy", [140.5, 208.4, 364.5])
def test_bilinear_hu_to_mu_anchor_points(energy):
    hu = np.array([-2000.0, -1000.0, -500.0, 0.0])
    mu = hu_to_mu_per_mm(hu, energy)
    water = water_mu_per_mm(energy)
    assert mu.tolist() == pytest.approx([0.0, 0.0, water / 2, water], rel=1e-12)
    # cortical bone's CT number at the CT energy maps to cortical bone's μ at the photon energy
    bone_hu = 1000 * (bone_mu_per_mm(70.0) / water_mu_per_mm(70.0) - 1)
    assert 1300 < bone_hu < 1900
    assert hu_to_mu_per_mm(np.array([bone_hu]), energy)[0] == pytest.approx(bone_mu_per_mm(energy))


def test_hu_to_mu_same_for_numpy_and_torch_and_monotonic():
    hu = np.linspace(-1100, 2500, 50)
    mu_np = hu_to_mu_per_mm(hu, 140.5)
    mu_t = hu_to_mu_per_mm(torch.tensor(hu), 140.5)
    assert isinstance(mu_t, torch.Tensor)
    np.testing.assert_allclose(mu_t.numpy(), mu_np, rtol=1e-12)
    assert np.all(np.diff(mu_np) >= 0)


def test_attenuation_falls_with_energy():
    for f in (water_mu_per_mm, bone_mu_per_mm, lead_mu_per_mm):
        assert f(140.5) > f(208.4) > f(364.5)
    assert lead_mu_per_mm(140.5) == pytest.approx(2.6, rel=0.15)  # ≈ 2.5 cm²/g × 11.35 g/cm³
