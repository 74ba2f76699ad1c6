"""The torso phantom (anatomy in LPS, μ, concentrations, resolution independence) and the
simulated acquisitions (count scale, scatter, Poisson noise)."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
import torch

from recon.data.phantoms import (
    FIRST_LESION_LABEL,
    LABELS,
    NUCLIDES,
    Lesion,
    Phantom,
    TorsoPhantom,
    collimator_for,
    default_grid,
    make_torso,
    nuclide_energy,
    nuclide_name,
)
from recon.data.simulate import scatter_projections, simulate_acquisition
from recon.io.study import Study
from spectproj import (
    CollimatorResponse,
    ImageGrid,
    ParallelGeometry,
    bone_mu_per_mm,
    project,
    water_mu_per_mm,
)

ORGANS = tuple(n for n in LABELS if n != "bowel")  # the default torso (no bowel)


@cache
def torso(size: int = 32, energy_keV: float = 140.5, supersample: int | None = None) -> Phantom:
    return make_torso(default_grid(size), energy_keV, supersample=supersample)


def centroid_mm(phantom: Phantom, name: str) -> tuple[float, float, float]:
    """(z, y, x) mm centroid of the voxels labelled ``name``."""
    idx = phantom.mask(name).nonzero().double()
    assert idx.shape[0] > 0, name
    g = phantom.grid
    return tuple(float(g.centres_mm(a)[idx[:, a].long()].mean()) for a in range(3))  # type: ignore[return-value]


# -- phantom ---------------------------------------------------------------------------------


def test_labels_present_named_and_uint8() -> None:
    ph = torso(32)
    assert ph.labels.dtype == torch.uint8
    present = set(ph.labels.unique().tolist())
    for name in ORGANS:
        value = LABELS[name]
        assert ph.label_names[value] == name
        assert value in present, name
    assert LABELS["bowel"] not in ph.label_names  # drawn only with include_bowel
    assert 0 in present and 0 not in ph.label_names
    lesions = {v: n for v, n in ph.label_names.items() if v >= FIRST_LESION_LABEL}
    assert len(lesions) == 4 and all(n.startswith("lesion") for n in lesions.values())
    assert all(ph.volumes_ml[v] > 0 for v in lesions)
    # The larger lesions survive as labels on 12.5 mm voxels.
    for v in (FIRST_LESION_LABEL, FIRST_LESION_LABEL + 1, FIRST_LESION_LABEL + 2):
        assert v in present


def test_anatomy_in_lps() -> None:
    ph = torso(32)
    c = {name: centroid_mm(ph, name) for name in ORGANS}
    z, y, x = 0, 1, 2
    assert c["liver"][x] < -30  # patient's right
    assert c["spleen"][x] > 30 and c["spleen"][y] > 0  # left, posterior
    assert c["kidney_right"][x] < -30 and c["kidney_left"][x] > 30
    assert c["kidney_right"][y] > 20 and c["kidney_left"][y] > 20  # posterior
    assert c["spine"][y] > 30 and abs(c["spine"][x]) < 10  # posterior midline
    assert c["bladder"][y] < 0  # anterior
    assert c["heart"][x] > 0  # left of midline
    organs = [n for n in ORGANS if n != "body"]
    assert min(organs, key=lambda n: c[n][z]) == "bladder"
    assert max(organs, key=lambda n: c[n][z]) == "lungs"
    assert c["kidney_right"][z] < c["liver"][z] < c["lungs"][z]


def test_default_grid_covers_the_body() -> None:
    ph = torso(32)
    assert ph.grid.extent_mm == (400.0, 400.0, 400.0)
    assert default_grid(128).spacing_mm == (3.125, 3.125, 3.125)
    lab = ph.labels
    for face in (lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]):
        assert int(face.max()) == 0
    # Body about 340 mm wide and 220 mm deep at its centre (z = 0).
    mid = ph.activity.shape[0] // 2
    inside = ph.mu[mid] > 0
    width = float(inside.any(0).sum()) * ph.grid.spacing_mm[2]
    depth = float(inside.any(1).sum()) * ph.grid.spacing_mm[1]
    assert 320 <= width <= 360 and 200 <= depth <= 240


@pytest.mark.parametrize("energy_keV", [140.5, 208.4])
def test_mu_per_organ(energy_keV: float) -> None:
    # One sample per voxel: every voxel is pure, so μ is exact per label.
    ph = torso(24, energy_keV, supersample=1)
    water, bone = water_mu_per_mm(energy_keV), bone_mu_per_mm(energy_keV)
    expected = {name: water for name in ORGANS} | {"lungs": 0.3 * water, "spine": bone}
    for name, mu in expected.items():
        values = ph.mu[ph.mask(name)]
        assert torch.allclose(values, torch.full_like(values, mu), rtol=1e-6), name
    assert float(ph.mu[ph.labels == 0].abs().max()) == 0.0
    # NIST values: water 0.0154/mm (140 keV), 0.0135/mm (208 keV); bone about twice.
    assert water == pytest.approx(0.0154 if energy_keV < 150 else 0.0136, rel=0.02)
    assert 1.7 < bone / water < 2.0
    # Partial volume: supersampled μ stays within [0, bone].
    ph2 = torso(24, energy_keV)
    assert float(ph2.mu.min()) >= 0 and float(ph2.mu.max()) <= bone * (1 + 1e-6)


def test_concentrations_as_configured() -> None:
    cfg = TorsoPhantom().with_concentrations(liver=1234.0, kidney_left=9876.0)
    ph = make_torso(default_grid(24), config=cfg, supersample=1)
    for name in ORGANS:
        values = ph.activity[ph.mask(name)]
        assert torch.allclose(values, torch.full_like(values, cfg.concentration(name))), name
    assert cfg.concentration("liver") == 1234.0
    assert float(ph.activity[ph.labels == 0].abs().max()) == 0.0
    for value, name in ph.label_names.items():
        if value >= FIRST_LESION_LABEL and ph.mask(name).any():
            assert float(ph.activity[ph.mask(name)][0]) == cfg.concentration(name)
    # Tc-99m defaults: lesions 4–8× background, kidneys and bladder hot, lungs low.
    d = TorsoPhantom()
    assert all(4 <= les.concentration / d.body <= 8 for les in d.lesions)
    assert d.lungs < d.body < d.liver < d.kidney_left <= d.bladder
    with pytest.raises(ValueError, match="unknown organs"):
        d.with_concentrations(pancreas=1.0)


def test_lu177_preset() -> None:
    lu = TorsoPhantom.lu177_dotatate()
    tumours = min(les.concentration for les in lu.lesions)
    assert tumours > lu.kidney_left >= lu.spleen > lu.liver > lu.body > lu.lungs
    ph = make_torso(default_grid(24), NUCLIDES["Lu-177"], lu, supersample=1)
    assert ph.energy_keV == 208.4
    assert float(ph.mu.max()) == pytest.approx(bone_mu_per_mm(208.4), rel=1e-5)


def test_partial_volume_conserves_activity() -> None:
    ph = torso(32)
    cfg = ph.config
    assert cfg is not None
    # Σ activity × voxel volume = Σ concentration × structure volume (both partial-volume).
    expected_bq = sum(cfg.concentration(n) * ph.volumes_ml[v] for v, n in ph.label_names.items())
    assert ph.total_activity_mbq * 1e6 == pytest.approx(expected_bq, rel=1e-5)
    mixed = ph.activity[(ph.labels == LABELS["liver"])]
    assert float(mixed.min()) >= 0 and float(mixed.max()) <= max(
        les.concentration for les in cfg.lesions
    )


def test_resolution_independence() -> None:
    coarse, fine = torso(32), torso(64)
    for name in ORGANS:
        v = LABELS[name]
        assert coarse.volumes_ml[v] == pytest.approx(fine.volumes_ml[v], rel=0.03), name
    # Analytic volumes: the spine cylinder and the lesions of >= 20 mm.
    spine = math.pi * 18.0**2 * 380.0 * 1e-3
    assert fine.volumes_ml[LABELS["spine"]] == pytest.approx(spine, rel=0.02)
    cfg = TorsoPhantom()
    for k, lesion in enumerate(cfg.lesions):
        if lesion.diameter_mm >= 20:
            label = FIRST_LESION_LABEL + k
            assert coarse.volumes_ml[label] == pytest.approx(lesion.volume_ml, rel=0.1)
            assert fine.volumes_ml[label] == pytest.approx(lesion.volume_ml, rel=0.05)
    assert coarse.total_activity_mbq == pytest.approx(fine.total_activity_mbq, rel=0.01)
    # Labelled-voxel volumes of the large organs agree too.
    for name in ("liver", "lungs", "heart"):
        a = float(coarse.mask(name).sum()) * coarse.voxel_volume_ml
        b = float(fine.mask(name).sum()) * fine.voxel_volume_ml
        assert a == pytest.approx(b, rel=0.05), name


def test_body_size_and_lesions_configurable() -> None:
    small = TorsoPhantom(body_width_mm=300.0, body_depth_mm=200.0, lesions=())
    ph = make_torso(default_grid(24), config=replace(small, include_heart=False))
    assert 9 not in ph.label_names and not any(v >= FIRST_LESION_LABEL for v in ph.label_names)
    assert ph.volumes_ml[LABELS["liver"]] < torso(24).volumes_ml[LABELS["liver"]]
    one = TorsoPhantom(lesions=(Lesion((0.0, 0.0, 0.0), 40.0, 7000.0, "centre"),))
    ph1 = make_torso(default_grid(32), config=one)
    assert ph1.label_names[FIRST_LESION_LABEL] == "centre"
    sphere_ml = math.pi / 6 * 40.0**3 * 1e-3
    assert ph1.volumes_ml[FIRST_LESION_LABEL] == pytest.approx(sphere_ml, rel=0.05)
    with pytest.raises(ValueError):
        Lesion((0.0, 0.0, 0.0), -1.0, 1.0)


def test_nuclides() -> None:
    assert NUCLIDES == {"Tc-99m": 140.5, "Lu-177": 208.4, "I-131": 364.5}
    assert nuclide_name("lu177") == "Lu-177" and nuclide_energy("TC-99M") == 140.5
    assert collimator_for("Tc-99m") == CollimatorResponse.preset("LEHR", 140.5)
    assert collimator_for("Lu-177") == CollimatorResponse.preset("MEGP", 208.4)
    assert collimator_for("I-131") == CollimatorResponse.preset("HE", 364.5)
    with pytest.raises(ValueError, match="unknown nuclide"):
        nuclide_name("F-18")


# -- simulation ------------------------------------------------------------------------------


def flat_phantom(shape: tuple[int, int, int], spacing: float = 4.0) -> Phantom:
    """A uniform box of 1 kBq/mL filling the grid, no attenuation."""
    grid = ImageGrid(shape=shape, spacing_mm=(spacing,) * 3)
    return Phantom(
        activity=torch.full(shape, 1000.0),
        mu=torch.zeros(shape),
        labels=torch.ones(shape, dtype=torch.uint8),
        label_names={1: "box"},
        grid=grid,
        energy_keV=140.5,
    )


@pytest.mark.parametrize("scatter", [0.0, 0.4])
def test_total_counts_over_all_views(scatter: float) -> None:
    ph = torso(24)
    for geometry in (
        ParallelGeometry.ap_pa(ph.grid),
        ParallelGeometry.full_circle(ph.grid, 12),
    ):
        study = simulate_acquisition(
            ph, geometry, total_counts=2.5e6, scatter_fraction=scatter, noise=False
        )
        assert float(study.projections.astype(np.float64).sum()) == pytest.approx(2.5e6, rel=1e-5)
        noisy = simulate_acquisition(ph, geometry, total_counts=2.5e6, scatter_fraction=scatter)
        assert abs(noisy.projections.sum() - 2.5e6) < 6 * math.sqrt(2.5e6)


def test_count_scale_formula_by_hand() -> None:
    # One voxel of 1 MBq/mL in a 2 × 3 × 4 mm voxel (0.024 mL = 24 kBq), no attenuation:
    # AP counts = 24e3 Bq × 1e-6 MBq/Bq × 90 cps/MBq × 10 s = 21.6 in its pixel.
    grid = ImageGrid(shape=(3, 4, 5), spacing_mm=(2.0, 3.0, 4.0))
    activity = torch.zeros(grid.shape)
    activity[1, 2, 3] = 1e6
    ph = Phantom(
        activity=activity,
        mu=torch.zeros(grid.shape),
        labels=(activity > 0).to(torch.uint8),
        label_names={1: "source"},
        grid=grid,
        energy_keV=140.5,
    )
    study = simulate_acquisition(
        ph,
        ParallelGeometry.ap_pa(grid),
        sensitivity_cps_per_mbq=90.0,
        duration_s=10.0,
        noise=False,
    )
    assert study.acquisition.count_scale == pytest.approx(2.0 * 4.0 * 1e-3 * 90.0 * 1e-6 * 10.0)
    ap, pa = study.projections
    assert float(ap[1, 3]) == pytest.approx(21.6, rel=1e-6)
    assert float(pa[1, 5 - 1 - 3]) == pytest.approx(21.6, rel=1e-6)
    assert float(study.projections.sum()) == pytest.approx(2 * 21.6, rel=1e-6)
    # Default sensitivity is the isotope's typical one (Tc-99m: 90 cps/MBq).
    default = simulate_acquisition(ph, ParallelGeometry.ap_pa(grid), duration_s=10.0, noise=False)
    np.testing.assert_allclose(default.projections, study.projections)


def test_expected_counts_are_scale_times_projector() -> None:
    ph = torso(24)
    geometry = ParallelGeometry.full_circle(ph.grid, 6, radius_mm=260.0)
    lehr = CollimatorResponse.preset("LEHR", 140.5)
    study = simulate_acquisition(
        ph, geometry, collimator="LEHR", duration_s=15.0, sensitivity_cps_per_mbq=80.0, noise=False
    )
    reference = project(ph.activity, geometry, mu=ph.mu, collimator=lehr).double().numpy()
    scale = study.acquisition.count_scale
    assert scale == pytest.approx(geometry.pixel_size_mm[0] ** 2 * 1e-3 * 80e-6 * 15.0)
    np.testing.assert_allclose(study.projections, scale * reference, rtol=1e-5, atol=1e-6)


def test_ap_pa_share_one_scale() -> None:
    ph = torso(24)
    geometry = ParallelGeometry.ap_pa(ph.grid)
    p = project(ph.activity, geometry, mu=ph.mu).double()
    ratio = float(p[0].sum() / p[1].sum())
    assert abs(ratio - 1.0) > 0.02  # the torso is not front-back symmetric
    study = simulate_acquisition(ph, geometry, total_counts=1e6, noise=False)
    ap, pa = study.projections.astype(np.float64).sum(axis=(1, 2))
    assert ap / pa == pytest.approx(ratio, rel=1e-5)
    # total_counts derives the duration so that the study's count scale is the one used.
    assert study.acquisition.sensitivity_cps_per_mbq == 90.0
    np.testing.assert_allclose(
        study.projections, study.acquisition.count_scale * p.numpy(), rtol=1e-5
    )


def test_poisson_noise_is_seeded_and_poisson() -> None:
    ph = flat_phantom((32, 8, 64))
    geometry = ParallelGeometry.ap_pa(ph.grid)
    n_pixels = 2 * 32 * 64
    a = simulate_acquisition(ph, geometry, total_counts=1000.0 * n_pixels, seed=7)
    b = simulate_acquisition(ph, geometry, total_counts=1000.0 * n_pixels, seed=7)
    c = simulate_acquisition(ph, geometry, total_counts=1000.0 * n_pixels, seed=8)
    assert a.projections.dtype == np.float32
    np.testing.assert_array_equal(a.projections, b.projections)
    assert not np.array_equal(a.projections, c.projections)
    assert np.array_equal(a.projections, np.round(a.projections))
    counts = a.projections.astype(np.float64).ravel()
    lam = 1000.0  # every pixel expects the same counts
    assert abs(counts.mean() - lam) < 5 * math.sqrt(lam / n_pixels)
    # sd of the sample variance of Poisson(λ) ≈ λ·sqrt(2/n): 5σ ≈ 0.11 λ here.
    assert abs(counts.var(ddof=1) / lam - 1.0) < 0.15


def test_scatter_is_the_stored_background() -> None:
    ph = torso(24)
    geometry = ParallelGeometry.ap_pa(ph.grid)
    kwargs = {"duration_s": 10.0, "noise": False}
    primary = simulate_acquisition(ph, geometry, **kwargs)
    with_scatter = simulate_acquisition(ph, geometry, scatter_fraction=0.3, **kwargs)
    assert primary.background is None
    bg = with_scatter.background
    assert bg is not None and bg.shape == with_scatter.projections.shape and bg.min() >= 0
    np.testing.assert_allclose(with_scatter.projections - primary.projections, bg, atol=1e-3)
    assert float(bg.sum()) == pytest.approx(0.3 * float(primary.projections.sum()), rel=1e-5)
    # Smooth: much flatter than the primary.
    assert bg.std() / bg.mean() < primary.projections.std() / primary.projections.mean()
    s = scatter_projections(torch.ones(2, 8, 8), (4.0, 4.0), 0.5)
    assert float(s.sum()) == pytest.approx(0.5 * 128, rel=1e-6)


def test_study_contents() -> None:
    ph = torso(24, 208.4)
    geometry = ParallelGeometry.full_circle(ph.grid, 8, radius_mm=250.0)
    study = simulate_acquisition(ph, geometry, collimator="MEGP", total_counts=1e5, seed=3)
    assert isinstance(study, Study)
    acq = study.acquisition
    assert acq.angles_deg == geometry.angles_deg and acq.detector_shape == (24, 24)
    assert acq.pixel_size_mm == geometry.pixel_size_mm and acq.radius_mm == 250.0
    assert acq.isotope == "Lu-177" and acq.energy_keV == 208.4 and acq.collimator == "MEGP"
    assert acq.duration_s is not None and acq.sensitivity_cps_per_mbq == 10.0
    assert study.projections.shape == (8, 24, 24) and study.projections.dtype == np.float32
    np.testing.assert_array_equal(study.truth_activity, ph.activity.numpy())
    np.testing.assert_array_equal(study.mu_per_mm, ph.mu.numpy())
    np.testing.assert_array_equal(study.labels, ph.labels.numpy())
    assert dict(study.label_names) == dict(ph.label_names) and study.activity_unit == "Bq/mL"
    assert study.provenance["seed"] == "3" and '"liver"' in study.provenance["phantom"]
    assert study.provenance["software"].startswith("spect")
    assert study.geometry() == geometry


def test_study_records_each_structures_exact_activity() -> None:
    """A simulated study records each structure's activity summed over its sub-voxels
    (`structure_truth_mbq`, what `spect quantify` takes as truth): a lesion's is its sphere's
    concentration × volume, which the voxels carrying its label do not hold on a coarse grid."""
    from recon.anatomy.quantify import structure_truth_mbq

    ph = torso(32)
    study = simulate_acquisition(ph, ParallelGeometry.ap_pa(ph.grid), total_counts=1e5)
    exact = structure_truth_mbq(study)
    assert exact == pytest.approx({ph.label_names[v]: a for v, a in ph.activities_mbq.items()})
    voxel_ml = ph.grid.voxel_volume_mm3 * 1e-3
    activity = ph.activity.double().numpy()
    for lesion in ph.config.lesions:  # type: ignore[union-attr] - made from a TorsoPhantom
        sphere_mbq = lesion.concentration * math.pi / 6.0 * lesion.diameter_mm**3 * 1e-9
        in_label = float(activity[ph.mask(lesion.name).numpy()].sum()) * voxel_ml * 1e-6
        # 12.5 mm voxels: the labelled voxels miss a quarter or more of a 20-30 mm lesion; the
        # sub-voxel sum is within the sub-voxels' own discretisation of the sphere.
        if lesion.diameter_mm >= 20.0:
            assert exact[lesion.name] == pytest.approx(sphere_mbq, rel=0.06)
            assert abs(in_label / sphere_mbq - 1.0) > 0.2
        assert abs(exact[lesion.name] - sphere_mbq) < abs(in_label - sphere_mbq)


def test_simulation_errors() -> None:
    ph = torso(24)
    geometry = ParallelGeometry.ap_pa(ph.grid)
    with pytest.raises(ValueError, match="duration_s"):
        simulate_acquisition(ph, geometry)
    with pytest.raises(ValueError, match="at most one"):
        simulate_acquisition(
            ph, geometry, total_counts=1e5, duration_s=1.0, sensitivity_cps_per_mbq=1.0
        )
    with pytest.raises(ValueError, match="grid"):
        simulate_acquisition(ph, ParallelGeometry.ap_pa(default_grid(16)), duration_s=1.0)
    with pytest.raises(ValueError, match="radius_mm"):
        simulate_acquisition(ph, geometry, collimator="LEHR", duration_s=1.0)
    with pytest.raises(ValueError, match="scatter_fraction"):
        simulate_acquisition(ph, geometry, duration_s=1.0, scatter_fraction=-0.1)
