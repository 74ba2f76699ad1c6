"""Phantom variants (heterogeneity, necrotic and unsegmented lesions, segmentation errors, lesion
jitter) and their simulation from a finer grid (no inverse crime). Size 32, oversample 2."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from recon.data.phantoms import (
    FIRST_LESION_LABEL,
    HETEROGENEOUS_ORGANS,
    LABELS,
    NUCLIDES,
    Lesion,
    Phantom,
    PhantomVariant,
    TorsoPhantom,
    UptakeField,
    block_mean,
    collimator_for,
    default_grid,
    gaussian_random_field,
    heterogeneous_uptake,
    make_torso,
    segmentation_from_phantom,
    simulate_variant,
    structure_at,
    vary_lesions,
)
from recon.io import read_study, write_study
from recon.io.study import Study
from spectproj import ParallelGeometry, SPECTProjector

LU = TorsoPhantom.lu177_dotatate()
E_LU = NUCLIDES["Lu-177"]
ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")


@cache
def coarse_phantom() -> Phantom:
    """The study grid's phantom as `simulate_variant` makes it (sub-voxels 2 × those of 64³)."""
    return make_torso(default_grid(32), E_LU, LU, supersample=6)


@cache
def study(**kwargs: object) -> Study:
    variant = PhantomVariant(**kwargs)  # type: ignore[arg-type]
    return simulate_variant(LU, variant, size=32, noise=False)


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


# -- the variant -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("heterogeneity_rms", -0.1),
        ("heterogeneity_rms", 1.0),
        ("heterogeneity_rms", math.nan),
        ("heterogeneity_mm", 0.0),
        ("necrotic_core_fraction", 1.0),
        ("necrotic_core_fraction", 0.0),
        ("necrotic_concentration_fraction", 1.5),
        ("seg_shift_vox", (0, 1)),
        ("seg_shift_vox", (0, 0.5, 0)),
        ("seg_dilate_vox", -1),
        ("seg_erode_vox", 1.5),
        ("lesion_jitter_mm", -2.0),
        ("lesion_size_jitter", 0.6),
        ("scatter_fraction", -0.1),
        ("seed", -1),
    ],
)
def test_bad_variant_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        PhantomVariant(**{field: value})  # type: ignore[arg-type]


def test_variant_json_round_trip_and_unknown_field() -> None:
    v = PhantomVariant(heterogeneity_rms=0.2, seg_shift_vox=(0, 1, -1), seed=4)
    assert PhantomVariant.from_dict(json.loads(v.to_json())) == v
    with pytest.raises(ValueError, match="colour"):
        PhantomVariant.from_dict({"colour": 1})


# -- heterogeneity ------------------------------------------------------------------------------


def test_random_field_is_seeded_smooth_and_unit_variance() -> None:
    grid = default_grid(32)
    g = gaussian_random_field(grid, 30.0, seed=1)
    assert torch.equal(g, gaussian_random_field(grid, 30.0, seed=1))
    assert not torch.equal(g, gaussian_random_field(grid, 30.0, seed=2))
    assert 0.6 < float(g.std()) < 1.4
    # Smooth: neighbouring 12.5 mm voxels are strongly correlated (σ = 30 mm).
    a, b = g[:, :, :-1].flatten(), g[:, :, 1:].flatten()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.8


def test_uptake_field_rms_and_exact_structure_activities() -> None:
    ph = coarse_phantom()
    g = gaussian_random_field(ph.grid, 30.0, seed=0)
    terms = heterogeneous_uptake(ph, g, 0.2)
    assert set(terms) == set(HETEROGENEOUS_ORGANS) - {"bowel"}  # the default torso has no bowel
    het = make_torso(ph.grid, E_LU, LU, supersample=6, uptake=UptakeField(g, terms))
    liver = ph.mask("liver")
    a = het.activity[torch.from_numpy(ndimage.binary_erosion(liver.numpy()))].double()
    assert 0.2 * 0.7 < float(a.std() / a.mean()) < 0.2 * 1.3
    # Uniform structures: activity = concentration × partial volume; all: Σ = the volume's.
    for v, name in ph.label_names.items():
        expected = LU.concentration(name) * ph.volumes_ml[v] * 1e-6
        assert ph.activities_mbq[v] == pytest.approx(expected, rel=1e-9), name
        if name not in terms:
            assert het.activities_mbq[v] == pytest.approx(expected, rel=1e-9), name
        else:
            assert het.activities_mbq[v] == pytest.approx(expected, rel=0.03), name
    assert sum(het.activities_mbq.values()) == pytest.approx(het.total_activity_mbq, rel=1e-6)
    # Voxels of the body background only (2 voxels from any organ) are unchanged.
    pure_body = torch.from_numpy(ndimage.binary_erosion(ph.mask("body").numpy(), iterations=2))
    assert int(pure_body.sum()) > 1000
    assert torch.equal(het.activity[pure_body], ph.activity[pure_body])
    assert torch.equal(het.mu, ph.mu) and torch.equal(het.labels, ph.labels)


def test_heterogeneous_study_rms_and_totals() -> None:
    uniform, het = study(), study(heterogeneity_rms=0.2, seed=2)
    liver = ndimage.binary_erosion(uniform.labels == LABELS["liver"])
    near_lesions = ndimage.binary_dilation(uniform.labels >= FIRST_LESION_LABEL, iterations=2)
    a = het.truth_activity[liver & ~near_lesions].astype(np.float64)
    assert a.size > 100 and 0.2 * 0.7 < a.std() / a.mean() < 0.2 * 1.3
    t_u = json.loads(uniform.provenance["truth_activity_mbq"])
    t_h = json.loads(het.provenance["truth_activity_mbq"])
    for name in ORGANS:  # organ totals kept: zero-mean modulation (on 12.5 mm voxels, ~1 %)
        assert t_h[name] == pytest.approx(t_u[name], rel=0.025), name
    assert t_h["liver"] == pytest.approx(t_u["liver"], rel=0.005)
    assert t_h["lesion_liver_30mm"] == t_u["lesion_liver_30mm"]  # lesions stay uniform
    for t, s in ((t_u, uniform), (t_h, het)):  # the table is what the volume holds
        held = s.truth_activity.astype(np.float64).sum() * s.grid.voxel_volume_mm3 * 1e-9
        assert sum(t.values()) == pytest.approx(held, rel=1e-5)


# -- lesions ------------------------------------------------------------------------------------


def test_necrotic_core_is_colder_and_holds_less_activity() -> None:
    cfg = vary_lesions(LU, PhantomVariant(necrotic_lesions=True))
    les = cfg.lesions[0]
    assert les.core_diameter_mm == pytest.approx(0.5 * les.diameter_mm)
    assert les.core_concentration == pytest.approx(0.1 * les.concentration)
    grid = default_grid(64)
    plain, necrotic = make_torso(grid, E_LU, LU), make_torso(grid, E_LU, cfg)
    idx = tuple(int(torch.argmin((grid.centres_mm(a) - les.centre_mm[a]).abs())) for a in range(3))
    assert float(plain.activity[idx]) == pytest.approx(les.concentration, rel=0.01)
    assert float(necrotic.activity[idx]) < 0.5 * les.concentration
    # The core is part of the lesion's label, and the lesion lost the core's activity.
    assert torch.equal(plain.labels, necrotic.labels)
    lost = float((plain.activity - necrotic.activity).double().sum()) * plain.voxel_volume_ml
    core_ml = math.pi / 6 * les.core_diameter_mm**3 * 1e-3
    expected = sum(
        math.pi / 6 * x.core_diameter_mm**3 * 1e-3 * (x.concentration - x.core_concentration)
        for x in cfg.lesions
    )
    assert core_ml > 0 and lost == pytest.approx(expected, rel=0.05)


def test_large_lesions_in_liver_and_soft_tissue_survive_jitter() -> None:
    anatomy_only = replace(LU, lesions=())
    for seed in range(3):
        variant = PhantomVariant(lesion_jitter_mm=15.0, lesion_size_jitter=0.3, seed=seed)
        cfg = vary_lesions(LU, variant)
        hosts = structure_at(anatomy_only, torch.tensor([x.centre_mm for x in cfg.lesions]))
        big = {int(h) for h, x in zip(hosts, cfg.lesions, strict=True) if x.volume_ml >= 5.0}
        assert {LABELS["liver"], LABELS["body"]} <= big, seed
        moved = [
            float(np.linalg.norm(np.subtract(a.centre_mm, b.centre_mm)))
            for a, b in zip(cfg.lesions, LU.lesions, strict=True)
        ]
        assert max(moved) > 0 and all(d <= 15.0 + 1e-9 for d in moved)
        assert [x.name for x in cfg.lesions] == [x.name for x in LU.lesions]
    assert vary_lesions(LU, variant) == cfg  # seeded


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"core_diameter_mm": 30.0}, "core_diameter_mm"),
        ({"core_diameter_mm": -1.0}, "core_diameter_mm"),
        ({"core_diameter_mm": 10.0, "core_concentration": -1.0}, "core_concentration"),
    ],
)
def test_bad_lesion_core(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Lesion((0.0, 0.0, 0.0), 30.0, 1000.0, **kwargs)  # type: ignore[arg-type]


def test_structure_at_points() -> None:
    points = torch.tensor(
        [
            [0.0, -15.0, -65.0],  # liver centre
            [10.0, -30.0, -80.0],  # the 30 mm liver lesion
            [-60.0, -60.0, 60.0],  # anterior abdomen: body background
            [0.0, 0.0, 300.0],  # outside the body
            [0.0, 70.0, 0.0],  # spine axis
        ],
        dtype=torch.float64,
    )
    got = structure_at(LU, points).tolist()
    assert got == [LABELS["liver"], FIRST_LESION_LABEL, LABELS["body"], 0, LABELS["spine"]]


# -- segmentation -------------------------------------------------------------------------------


def test_unsegmented_lesions_take_their_host_organ() -> None:
    ph = coarse_phantom()
    anatomy = segmentation_from_phantom(ph, PhantomVariant())
    assert set(anatomy.names.values()) == set(LABELS) - {"body", "bowel"}
    lesion = ph.mask("lesion_liver_30mm").numpy()
    assert lesion.any() and (anatomy.labels[lesion] == LABELS["liver"]).all()
    soft = ph.mask("lesion_soft_25mm").numpy()
    assert soft.any() and (anatomy.labels[soft] == 0).all()  # body background: no segment
    assert np.array_equal(anatomy.body, ph.mu.numpy() > 0)
    segmented = segmentation_from_phantom(ph, PhantomVariant(unsegmented_lesions=False))
    assert segmented.names[FIRST_LESION_LABEL] == "lesion_liver_30mm"
    assert (segmented.labels[lesion] == FIRST_LESION_LABEL).all()
    # The study keeps the lesions in its truth labels and not in its anatomy.
    s = study()
    assert "lesion_liver_30mm" in s.label_names.values()
    assert (s.labels == FIRST_LESION_LABEL).any()
    assert s.anatomy is not None and "lesion_liver_30mm" not in s.anatomy.names.values()


@pytest.mark.parametrize("shift", [(0, 0, 1), (1, 0, 0), (0, -1, 0)])
def test_shift_moves_the_liver_by_one_voxel(shift: tuple[int, int, int]) -> None:
    ph = coarse_phantom()
    base = segmentation_from_phantom(ph, PhantomVariant())
    moved = segmentation_from_phantom(ph, PhantomVariant(seg_shift_vox=shift))
    delta = centroid(moved.mask("liver")) - centroid(base.mask("liver"))
    np.testing.assert_allclose(delta, shift, atol=1e-12)
    assert "shift" in moved.source


def test_dilation_grows_erosion_shrinks_but_keeps_every_organ() -> None:
    ph = coarse_phantom()
    base = segmentation_from_phantom(ph, PhantomVariant())
    grown = segmentation_from_phantom(ph, PhantomVariant(seg_dilate_vox=1))
    shrunk = segmentation_from_phantom(ph, PhantomVariant(seg_erode_vox=6))
    for name in ORGANS:
        n0, n1 = base.mask(name).sum(), grown.mask(name).sum()
        assert n1 > n0, name
        assert (grown.mask(name) | ~base.mask(name)).all()  # the original stays
        assert 0 < shrunk.mask(name).sum() < n0, name  # 6 voxels erode a kidney: core kept
    assert not (grown.labels[~grown.body] > 0).any()
    assert "dilate 1" in grown.source and "erode 6" in shrunk.source


def test_random_shift_moves_each_organ_by_one_voxel() -> None:
    ph = coarse_phantom()
    base = segmentation_from_phantom(ph, PhantomVariant())
    variant = PhantomVariant(seg_random_shift=True, seed=5)
    shifted = segmentation_from_phantom(ph, variant)
    assert np.array_equal(shifted.labels, segmentation_from_phantom(ph, variant).labels)
    steps = [(a, s) for a in range(3) for s in (-1, 1)]
    for name in ORGANS:
        m0, m1 = base.mask(name), shifted.mask(name)
        fits = []
        for axis, sign in steps:
            moved = np.zeros_like(m0)
            src = [slice(None)] * 3
            dst = [slice(None)] * 3
            src[axis] = slice(0, -1) if sign > 0 else slice(1, None)
            dst[axis] = slice(1, None) if sign > 0 else slice(0, -1)
            moved[tuple(dst)] = m0[tuple(src)]
            fits.append(bool((m1 <= moved).all()))
        assert sum(fits) == 1, name


# -- simulation without the inverse crime -------------------------------------------------------


def test_study_contents_counts_and_provenance() -> None:
    s = study(scatter_fraction=0.2)
    a = s.acquisition
    assert s.projections.shape == (2, 32, 32) and a.angles_deg == (0.0, 180.0)
    assert a.isotope == "Lu-177" and a.collimator == "MEGP" and a.radius_mm == 250.0
    assert s.grid == default_grid(32)
    assert s.projections.astype(np.float64).sum() == pytest.approx(4e6, rel=1e-5)
    assert s.background is not None
    assert s.background.sum() / (s.projections.sum() - s.background.sum()) == pytest.approx(0.2)
    assert PhantomVariant.from_dict(json.loads(s.provenance["phantom_variant"])) == PhantomVariant(
        scatter_fraction=0.2
    )
    assert s.provenance["oversample"] == "2" and s.provenance["study_supersample"] == "6"
    assert json.loads(s.provenance["simulation_grid_shape"]) == [64, 64, 64]
    ph = coarse_phantom()
    np.testing.assert_array_equal(s.labels, ph.labels.numpy())
    np.testing.assert_allclose(s.mu_per_mm, ph.mu.numpy(), rtol=1e-6)


def test_noise_is_poisson_and_seeded() -> None:
    one = simulate_variant(LU, PhantomVariant(seed=1), size=32)
    again = simulate_variant(LU, PhantomVariant(seed=1), size=32)
    other = simulate_variant(LU, PhantomVariant(seed=2), size=32)
    assert np.array_equal(one.projections, again.projections)
    assert not np.array_equal(one.projections, other.projections)
    assert np.array_equal(one.projections, np.round(one.projections))
    expected = study().projections.astype(np.float64)
    z = (one.projections - expected)[expected > 100] / np.sqrt(expected[expected > 100])
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1


def test_truth_is_the_fine_truth_averaged() -> None:
    s = study()
    fine_s = int(s.provenance["simulation_supersample"])
    fine = make_torso(default_grid(64), E_LU, LU, supersample=fine_s)
    np.testing.assert_allclose(
        s.truth_activity, block_mean(fine.activity, 2).numpy(), rtol=1e-6, atol=1e-3
    )
    # The same sub-voxels: the study grid's phantom holds the same activity voxel by voxel.
    np.testing.assert_allclose(
        s.truth_activity, coarse_phantom().activity.numpy(), rtol=1e-5, atol=1e-2
    )
    # Structure activities of the two grids agree (the same sub-voxels: to rounding) ...
    t_fine = json.loads(s.provenance["truth_activity_mbq"])
    coarse = coarse_phantom()
    for v, name in coarse.label_names.items():
        assert coarse.activities_mbq[v] == pytest.approx(t_fine[name], rel=1e-6), name
    # ... and with uneven uptake, within 1 % (the field is sampled per voxel of each grid).
    het = study(heterogeneity_rms=0.2, seed=2)
    g = gaussian_random_field(coarse.grid, 30.0, seed=2)
    uptake = UptakeField(g, heterogeneous_uptake(coarse, g, 0.2))
    coarse_het = make_torso(coarse.grid, E_LU, LU, supersample=6, uptake=uptake)
    t_het = json.loads(het.provenance["truth_activity_mbq"])
    for name in (*ORGANS, "lesion_liver_30mm"):
        assert coarse_het.activities_mbq[coarse.label(name)] == pytest.approx(
            t_het[name], rel=0.01
        ), name


def test_fine_projection_differs_from_the_coarse_projector() -> None:
    s = study()
    scale = s.acquisition.count_scale
    coll = collimator_for("Lu-177")
    coarse_proj = SPECTProjector(s.geometry(), mu=torch.from_numpy(s.mu_per_mm), collimator=coll)
    with torch.no_grad():
        p_coarse = coarse_proj(torch.from_numpy(s.truth_activity)).double().numpy() * scale
    diff = np.abs(s.projections - p_coarse).sum() / p_coarse.sum()
    assert 1e-3 < diff < 0.05
    # A direct fine-grid projection on fine pixels, averaged over 2 × 2 pixels, is the study's.
    fine = make_torso(
        default_grid(64), E_LU, LU, supersample=int(s.provenance["simulation_supersample"])
    )
    geo = ParallelGeometry.ap_pa(fine.grid, radius_mm=250.0)
    with torch.no_grad():
        p_fine = SPECTProjector(geo, mu=fine.mu, collimator=coll)(fine.activity).double()
    summed = p_fine.reshape(2, 32, 2, 32, 2).sum(dim=(2, 4)).numpy() / 4.0 * scale
    np.testing.assert_allclose(s.projections, summed, rtol=1e-4, atol=1e-3)


def test_simulation_bad_arguments() -> None:
    with pytest.raises(ValueError, match="oversample"):
        simulate_variant(LU, PhantomVariant(), size=32, oversample=0)
    with pytest.raises(ValueError, match="counts_per_view"):
        simulate_variant(LU, PhantomVariant(), size=32, counts_per_view=0.0)
    with pytest.raises(ValueError, match="nuclide"):
        simulate_variant(LU, PhantomVariant(), size=32, isotope="F-18")
    with pytest.raises(TypeError, match="variant"):
        simulate_variant(LU, {"seed": 1}, size=32)  # type: ignore[arg-type]


def test_study_file_round_trip_keeps_anatomy_and_variant(tmp_path: Path) -> None:
    s = study(seg_shift_vox=(0, 0, 1))
    path = tmp_path / "variant.h5"
    write_study(path, s)
    back = read_study(path)
    assert back.anatomy is not None and s.anatomy is not None
    np.testing.assert_array_equal(back.anatomy.labels, s.anatomy.labels)
    assert back.anatomy.names == s.anatomy.names and back.anatomy.source == s.anatomy.source
    assert back.provenance["phantom_variant"] == s.provenance["phantom_variant"]
    np.testing.assert_array_equal(back.truth_activity, s.truth_activity)
