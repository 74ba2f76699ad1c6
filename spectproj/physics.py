"""Narrow-beam attenuation coefficients at SPECT photon energies, and CT (HU) → μ.

Values are NIST XCOM total attenuation coefficients (coherent scattering included) in cm²/g,
interpolated log–log in energy and returned in 1/mm. Water: ≈0.0154/mm at 140 keV (Tc-99m),
≈0.0135/mm at 208 keV (Lu-177), ≈0.0111/mm at 364 keV (I-131).
"""

from __future__ import annotations

import itertools
import math
from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# (energy keV, mass attenuation cm²/g), NIST XCOM, total with coherent scattering.
_WATER = (
    (50.0, 0.2269), (60.0, 0.2059), (80.0, 0.1837), (100.0, 0.1707), (150.0, 0.1505),
    (200.0, 0.1370), (300.0, 0.1186), (400.0, 0.1061), (500.0, 0.09687), (600.0, 0.08956),
)  # fmt: skip
_WATER_DENSITY_G_CM3 = 1.0
# Cortical bone (ICRU-44), density 1.92 g/cm³.
_BONE = (
    (50.0, 0.4242), (60.0, 0.3148), (80.0, 0.2229), (100.0, 0.1855), (150.0, 0.1480),
    (200.0, 0.1309), (300.0, 0.1113), (400.0, 0.09908), (500.0, 0.09022), (600.0, 0.08332),
)  # fmt: skip
_BONE_DENSITY_G_CM3 = 1.92
# Lead above its K edge (88 keV).
_LEAD = (
    (100.0, 5.549), (150.0, 2.014), (200.0, 0.9985), (300.0, 0.4031), (400.0, 0.2323),
    (500.0, 0.1614), (600.0, 0.1248),
)  # fmt: skip
_LEAD_DENSITY_G_CM3 = 11.35


def _loglog(table: tuple[tuple[float, float], ...], energy_keV: float, name: str) -> float:
    e = float(energy_keV)
    lo, hi = table[0][0], table[-1][0]
    if not (math.isfinite(e) and lo <= e <= hi):
        raise ValueError(
            f"energy_keV for {name} must be within [{lo:g}, {hi:g}] keV, got {energy_keV!r}"
        )
    for (e0, m0), (e1, m1) in itertools.pairwise(table):
        if e <= e1:
            t = math.log(e / e0) / math.log(e1 / e0)
            return math.exp(math.log(m0) + t * (math.log(m1) - math.log(m0)))
    return table[-1][1]  # pragma: no cover - e == hi handled above


def water_mu_per_mm(energy_keV: float) -> float:
    """Linear attenuation coefficient of water (1/mm) at ``energy_keV`` (50–600 keV)."""
    return _loglog(_WATER, energy_keV, "water") * _WATER_DENSITY_G_CM3 / 10.0


def lead_mu_per_mm(energy_keV: float) -> float:
    """Linear attenuation coefficient of lead (1/mm) at ``energy_keV`` (100–600 keV)."""
    return _loglog(_LEAD, energy_keV, "lead") * _LEAD_DENSITY_G_CM3 / 10.0


def bone_mu_per_mm(energy_keV: float) -> float:
    """Linear attenuation coefficient of cortical bone (1/mm) at ``energy_keV`` (50–600 keV)."""
    return _loglog(_BONE, energy_keV, "bone") * _BONE_DENSITY_G_CM3 / 10.0


def hu_to_mu_per_mm(hu: ArrayT, energy_keV: float, ct_effective_keV: float = 70.0) -> ArrayT:
    """Bilinear CT-number → μ (1/mm) conversion at the photon energy ``energy_keV``.

    Below 0 HU tissue is a water–air mixture: ``μ = μ_water(E)·(1 + HU/1000)``. Above 0 HU it is
    a water–bone mixture: the bone segment reaches cortical bone's μ(E) at the CT number that
    bone has at the CT's effective energy (``ct_effective_keV``, about 70 keV for 120 kVp).
    Values below −1000 HU give 0. Works on NumPy arrays and torch tensors.
    """
    mu_w = water_mu_per_mm(energy_keV)
    mu_b = bone_mu_per_mm(energy_keV)
    bone_hu = 1000.0 * (bone_mu_per_mm(ct_effective_keV) / water_mu_per_mm(ct_effective_keV) - 1.0)
    slope_bone = (mu_b - mu_w) / bone_hu
    if isinstance(hu, torch.Tensor):
        low = mu_w * (1.0 + hu / 1000.0)
        return torch.where(hu <= 0, low.clamp_min(0.0), mu_w + slope_bone * hu)
    h = np.asarray(hu, dtype=np.float64)
    return np.where(h <= 0, np.maximum(mu_w * (1.0 + h / 1000.0), 0.0), mu_w + slope_bone * h)
