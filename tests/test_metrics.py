"""Volume, region and projection metrics against values worked out by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.evaluation.metrics import (
    OrganError,
    activity_outside,
    evaluate_volume,
    nrmse,
    organ_errors,
    psnr,
    recovery_coefficients,
    region_activity,
    region_bias,
    region_cov,
    ssim3d,
    total_activity_error,
    unit_to_bq_per_ml,
)
from recon.evaluation.projection_metrics import projection_fit
from spectproj import ImageGrid

# -- whole-volume errors ---------------------------------------------------------------------


def test_nrmse_by_hand() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    t = np.array([1.0, 2.0, 2.0, 4.0])
    # ‖x − t‖ = ‖(0, 0, 1, 0)‖ = 1;  ‖t‖ = √(1 + 4 + 4 + 16) = 5
    assert nrmse(x, t) == pytest.approx(0.2, rel=1e-12)
    # mask keeps elements 1, 2: ‖(0, 1)‖ = 1, ‖(2, 2)‖ = √8
    mask = np.array([False, True, True, False])
    assert nrmse(x, t, mask) == pytest.approx(1 / math.sqrt(8), rel=1e-12)
    # torch in, float out
    value = nrmse(torch.tensor(x, dtype=torch.float32), torch.tensor(t), torch.tensor(mask))
    assert isinstance(value, float) and value == pytest.approx(1 / math.sqrt(8), rel=1e-6)
    assert nrmse(t, t) == 0.0


def test_nrmse_rejects_empty_mask_and_zero_truth() -> None:
    with pytest.raises(ValueError, match="no voxel"):
        nrmse(np.ones(3), np.ones(3), np.zeros(3, bool))
    with pytest.raises(ValueError, match="zero"):
        nrmse(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        nrmse(np.ones(3), np.ones(4))


def test_psnr_by_hand() -> None:
    t = np.array([0.0, 1.0, 2.0, 4.0])
    x = np.array([0.0, 1.0, 2.0, 2.0])
    # MSE = (0 + 0 + 0 + 2²) / 4 = 1; peak = max(t) = 4 → 10·log10(16 / 1)
    assert psnr(x, t) == pytest.approx(10 * math.log10(16.0), rel=1e-12)
    # over the first three only: MSE = 0 → inf
    assert psnr(x, t, np.array([True, True, True, False])) == math.inf
    # mask [F, T, F, T]: peak = 4, MSE = (0 + 4) / 2 = 2 → 10·log10(16 / 2)
    assert psnr(x, t, np.array([False, True, False, True])) == pytest.approx(
        10 * math.log10(8.0), rel=1e-12
    )


# -- SSIM ------------------------------------------------------------------------------------


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random((9, 10, 11))
    b = a + 0.2 * rng.standard_normal(a.shape)
    return a, b


def test_ssim_identical_is_one() -> None:
    a, _ = _pair()
    assert ssim3d(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim3d(a, a, kernel="uniform") == pytest.approx(1.0, abs=1e-12)
    assert ssim3d(torch.tensor(a), torch.tensor(a)) == pytest.approx(1.0, abs=1e-12)


def test_ssim_below_one_and_symmetric_for_a_fixed_range() -> None:
    a, b = _pair()
    ab = ssim3d(a, b, data_range=1.0)
    ba = ssim3d(b, a, data_range=1.0)
    assert ab < 0.99
    assert ab == pytest.approx(ba, rel=1e-12)
    # more noise, lower SSIM
    rng = np.random.default_rng(1)
    worse = a + 0.5 * rng.standard_normal(a.shape)
    assert ssim3d(worse, a, data_range=1.0) < ssim3d(b, a, data_range=1.0)


def _global_ssim(x: np.ndarray, t: np.ndarray, w: np.ndarray, data_range: float) -> float:
    """The SSIM formula with weights ``w`` (summing to 1) over the whole array, by hand."""
    mx, mt = (w * x).sum(), (w * t).sum()
    vx = (w * (x - mx) ** 2).sum()
    vt = (w * (t - mt) ** 2).sum()
    cxt = (w * (x - mx) * (t - mt)).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * mt + c1) * (2 * cxt + c2)) / ((mx**2 + mt**2 + c1) * (vx + vt + c2))


def test_ssim_known_value_on_a_window_sized_volume() -> None:
    # On a 7×7×7 volume with a 7-voxel window only the centre voxel is away from the faces, and
    # its window covers the whole volume exactly: the SSIM is the global formula.
    rng = np.random.default_rng(3)
    t = rng.random((7, 7, 7))
    x = 0.8 * t + 0.1 + 0.05 * rng.standard_normal(t.shape)
    data_range = float(t.max() - t.min())
    uniform = np.full(t.shape, 1.0 / t.size)
    expected = _global_ssim(x, t, uniform, data_range)
    assert ssim3d(x, t, kernel="uniform") == pytest.approx(expected, rel=1e-10)
    # Gaussian window: separable weights exp(−i²/(2·1.5²)), i = −3..3, normalised.
    i = np.arange(-3, 4)
    g = np.exp(-(i**2) / (2 * 1.5**2))
    g /= g.sum()
    gauss = g[:, None, None] * g[None, :, None] * g[None, None, :]
    expected_g = _global_ssim(x, t, gauss, data_range)
    assert ssim3d(x, t) == pytest.approx(expected_g, rel=1e-10)
    # a hand-picked value: x = t + constant shifts only the luminance term
    y = t + 0.5
    mx, mt = y.mean(), t.mean()
    c1 = (0.01 * data_range) ** 2
    lum = (2 * mx * mt + c1) / (mx**2 + mt**2 + c1)
    assert ssim3d(y, t, kernel="uniform") == pytest.approx(lum, rel=1e-10)


def test_ssim_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="window"):
        ssim3d(np.ones((5, 9, 9)), np.ones((5, 9, 9)))
    with pytest.raises(ValueError, match="odd"):
        ssim3d(np.ones((9, 9, 9)), np.ones((9, 9, 9)), window=6)
    with pytest.raises(ValueError, match="data_range"):
        ssim3d(np.ones((9, 9, 9)), np.ones((9, 9, 9)))  # constant truth: range 0


# -- regions ---------------------------------------------------------------------------------


def test_region_bias_and_cov_by_hand() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 9.0])
    t = np.array([2.0, 2.0, 2.0, 2.0, 0.0])
    region = np.array([True, True, True, True, False])
    # mean_R(x) = 10/4 = 2.5, mean_R(t) = 2 → (2.5 − 2)/2 = 0.25
    assert region_bias(x, t, region) == pytest.approx(0.25, rel=1e-12)
    # x on R: mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25)/4 = 1.25
    assert region_cov(x, region) == pytest.approx(math.sqrt(1.25) / 2.5, rel=1e-12)
    assert region_cov(np.array([1.0, 3.0]), np.array([True, True])) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        region_bias(x, t, np.zeros(5, bool))


def test_total_activity_and_outside_by_hand() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0]) * 1e6  # Bq/mL
    t = np.array([1.0, 2.0, 3.0, 2.0]) * 1e6
    # Σx = 10e6 Bq/mL × 0.5 mL = 5e6 Bq = 5 MBq; Σt = 8e6 × 0.5 = 4 MBq; (10 − 8)/8 = 0.25
    total = total_activity_error(x, t, 0.5)
    assert total["estimate_mbq"] == pytest.approx(5.0, rel=1e-12)
    assert total["truth_mbq"] == pytest.approx(4.0, rel=1e-12)
    assert total["relative_error"] == pytest.approx(0.25, rel=1e-12)
    # kBq/mL: 1000× more MBq, same relative error
    total_k = total_activity_error(x, t, 0.5, unit="kBq/mL")
    assert total_k["estimate_mbq"] == pytest.approx(5000.0, rel=1e-12)
    body = np.array([True, True, False, False])
    # outside: (3 + 4)e6 × 0.5 mL = 3.5 MBq, fraction 7/10
    out = activity_outside(x, body, 0.5)
    assert out["mbq"] == pytest.approx(3.5, rel=1e-12)
    assert out["fraction"] == pytest.approx(0.7, rel=1e-12)


def test_unit_conversion() -> None:
    assert unit_to_bq_per_ml("Bq/mL") == 1.0
    assert unit_to_bq_per_ml("kBq/ml") == 1e3
    assert unit_to_bq_per_ml("MBq/cc") == 1e6
    with pytest.raises(ValueError, match="convert"):
        unit_to_bq_per_ml("counts")


def test_region_activity_and_organ_errors_by_hand() -> None:
    labels = np.array([0, 1, 1, 2, 3])
    names = {1: "a", 2: "b", 3: "c", 4: "absent"}
    est = np.array([5.0, 1.0, 2.0, 4.0, 1.0])  # kBq/mL
    tru = np.array([0.0, 1.0, 1.0, 5.0, 0.0])
    # a: (1 + 2) kBq/mL × 2 mL = 6 kBq = 0.006 MBq; b: 4 × 2 = 8 kBq; c: 2 kBq; absent: 0
    act = region_activity(est, labels, names, 2.0, unit="kBq/mL")
    assert act == pytest.approx({"a": 0.006, "b": 0.008, "c": 0.002, "absent": 0.0}, rel=1e-12)
    rows = organ_errors(est, tru, labels, names, 2.0, unit="kBq/mL")
    assert [r.name for r in rows] == ["a", "b", "c", "absent"]
    a, b, c, absent = rows
    # a: true (1 + 1)·2 = 4 kBq, estimated 6 kBq → +0.5;  b: true 10 kBq, estimated 8 → −0.2
    assert a == OrganError(
        "a", 1, 2, pytest.approx(0.004), pytest.approx(0.006), pytest.approx(0.5)
    )
    assert b.relative_error == pytest.approx(-0.2, rel=1e-12)
    assert b.n_voxels == 1
    assert c.relative_error is None and c.true_mbq == 0.0  # zero truth
    assert absent.n_voxels == 0 and absent.relative_error is None
    assert a.to_dict()["name"] == "a"


def test_recovery_coefficients_by_hand() -> None:
    labels = np.array([10, 10, 11, 11, 11, 0])
    tru = np.array([4.0, 4.0, 3.0, 3.0, 3.0, 0.0])
    est = np.array([3.0, 2.0, 3.0, 1.0, 2.0, 9.0])
    # lesion 10: mean est 2.5 / mean true 4 = 0.625; lesion 11: 2 / 3
    rc = recovery_coefficients(est, tru, labels, {10: "big", 11: "small", 12: "gone"})
    assert rc["big"] == pytest.approx(0.625, rel=1e-12)
    assert rc["small"] == pytest.approx(2 / 3, rel=1e-12)
    assert rc["gone"] is None
    assert recovery_coefficients(est, tru, labels, [10]) == {"10": pytest.approx(0.625)}


def test_evaluate_volume_bundles_the_metrics() -> None:
    grid = ImageGrid(shape=(8, 9, 10), spacing_mm=(2.0, 3.0, 4.0))  # 24 mm³ = 0.024 mL
    rng = np.random.default_rng(5)
    labels = np.zeros(grid.shape, np.int64)
    labels[1:7, 1:8, 1:9] = 1
    labels[2:4, 2:4, 2:4] = 2
    labels[5:6, 5:7, 5:7] = 10
    names = {1: "body", 2: "liver", 10: "lesion_a"}
    truth = np.where(labels > 0, 1000.0 * labels, 0.0)
    est = truth * (1 + 0.1 * rng.standard_normal(grid.shape)) + 5.0
    out = evaluate_volume(torch.tensor(est), truth, labels, names, grid)
    assert out["voxel_volume_ml"] == pytest.approx(0.024)
    assert out["nrmse"] == pytest.approx(nrmse(est, truth))
    assert out["nrmse_body"] == pytest.approx(nrmse(est, truth, labels > 0))
    assert out["psnr_db"] == pytest.approx(psnr(est, truth))
    assert out["ssim"] == pytest.approx(ssim3d(est, truth))
    assert out["total_activity"] == pytest.approx(total_activity_error(est, truth, 0.024))
    assert out["activity_outside"] == pytest.approx(activity_outside(est, labels > 0, 0.024))
    organs = {row["name"]: row for row in out["organs"]}  # type: ignore[union-attr]
    assert set(organs) == {"body", "liver", "lesion_a"}
    assert organs["liver"]["relative_error"] == pytest.approx(region_bias(est, truth, labels == 2))
    assert organs["liver"]["cov"] == pytest.approx(region_cov(est, labels == 2))
    assert out["recovery_coefficients"] == pytest.approx(
        {"lesion_a": float(est[labels == 10].mean() / 10000.0)}
    )


# -- projections -----------------------------------------------------------------------------


def test_projection_fit_by_hand() -> None:
    y = np.array([2.0, 0.0, 3.0])
    yhat = np.array([1.0, 1.0, 3.0])
    # deviance = 2[(2·ln(2/1) − (2 − 1)) + (0 − (0 − 1)) + (3·ln 1 − 0)] = 2[2 ln 2 − 1 + 1]
    fit = projection_fit(yhat, y)
    assert fit["deviance"] == pytest.approx(4 * math.log(2), rel=1e-12)
    assert fit["deviance_per_pixel"] == pytest.approx(4 * math.log(2) / 3, rel=1e-12)
    # PSNR: peak = max(y) = 3, MSE = (1 + 1 + 0)/3 → 10·log10(9 · 3/2)
    assert fit["psnr"] == pytest.approx(10 * math.log10(13.5), rel=1e-12)
    assert fit["n_pixels"] == 3
    # held-out pixels 0 and 2: deviance 2(2 ln 2 − 1); MSE = 1/2 → 10·log10(18)
    held = projection_fit(torch.tensor(yhat), torch.tensor(y), np.array([True, False, True]))
    assert held["deviance"] == pytest.approx(2 * (2 * math.log(2) - 1), rel=1e-12)
    assert held["psnr"] == pytest.approx(10 * math.log10(18.0), rel=1e-12)
    assert held["n_pixels"] == 2


def test_projection_fit_perfect_and_impossible() -> None:
    y = np.array([[1.0, 4.0], [0.0, 2.0]])
    perfect = projection_fit(y, y)
    assert perfect["deviance"] == 0.0 and perfect["psnr"] == math.inf
    impossible = projection_fit(np.array([0.0, 1.0]), np.array([1.0, 1.0]))
    assert impossible["deviance"] == math.inf
    with pytest.raises(ValueError, match="no pixel"):
        projection_fit(y, y, np.zeros_like(y, dtype=bool))
    with pytest.raises(ValueError, match=">= 0"):
        projection_fit(-y, y)


def test_projection_fit_poisson_noise_gives_about_one_per_pixel() -> None:
    gen = torch.Generator().manual_seed(0)
    yhat = torch.full((4, 32, 32), 200.0, dtype=torch.float64)
    y = torch.poisson(yhat, generator=gen)
    fit = projection_fit(yhat, y)
    assert 0.9 < fit["deviance_per_pixel"] < 1.1
    # a 10 % scale error is a misfit
    assert projection_fit(1.1 * yhat, y)["deviance_per_pixel"] > 2.0
