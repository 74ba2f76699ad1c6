"""Anatomy-guided quantification: compartments, the organ fit, its uncertainty, residual sources."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from recon.anatomy import (
    OrganFitConfig,
    OrganResidualModel,
    OrgansConfig,
    ResidualSource,
    compartments_from_anatomy,
    fit_organs,
    reconstruct_organs,
)
from recon.anatomy.compartments import tissue_fraction
from recon.anatomy.organ_fit import fisher_information, fit_organ_coefficients
from recon.anatomy.quantify import quantify, rows_to_csv
from recon.anatomy.reconstruct import LESION_CONTRAST, SPILL_MARGIN_VOXELS, _host
from recon.anatomy.residual import BOUNDARY_PRIOR_SD, MAX_BOUNDARY_VOX, MODULATION_PRIOR_SD
from recon.anatomy.sources import (
    START_SIGMA_MM,
    _ml_activity,
    conjugate_activity,
    find_sources,
    opposed_pair,
    search_depths,
)
from recon.anatomy.uncertainty import (
    ORGAN_FIT_MODEL_ERROR,
    RESIDUAL_MODEL_ERROR,
    ModelError,
    combined_sd,
)
from recon.io import Acquisition, Anatomy, Result, Study
from spectproj import CollimatorResponse, ImageGrid, ParallelGeometry, SPECTProjector

MU_WATER = 0.0135  # 1/mm at 208 keV


def _slab_study(
    concentrations: dict[str, float],
    *,
    n: int = 16,
    point: tuple[int, int, int] | tuple[slice, slice, slice] | None = None,
    point_activity: float = 0.0,
    collimator: bool = True,
    counts_scale: float = 1.0,
    spacing_mm: float = 8.0,
) -> tuple[Study, np.ndarray]:
    """A box body (water) with two organ blocks, AP/PA, noise-free expected counts.

    Returns the study (anatomy = the two blocks and the body) and the true activity volume.
    """
    grid = ImageGrid((n, n, n), (spacing_mm,) * 3)
    body = np.zeros(grid.shape, dtype=bool)
    body[2:-2, 3:-3, 2:-2] = True
    labels = np.zeros(grid.shape, dtype=np.int32)
    labels[5:9, 4:8, 3:7] = 1  # "front": anterior half (small y)
    labels[6:11, 9:12, 8:13] = 2  # "back": posterior
    activity = np.zeros(grid.shape, dtype=np.float64)
    activity[body] = concentrations["background"]
    activity[labels == 1] = concentrations["front"]
    activity[labels == 2] = concentrations["back"]
    if point is not None:
        activity[point] += point_activity
    mu = np.where(body, MU_WATER, 0.0)
    geometry = ParallelGeometry.ap_pa(grid, radius_mm=200.0)
    response = CollimatorResponse.preset("MEGP", 208.4) if collimator else None
    projector = SPECTProjector(geometry, torch.as_tensor(mu), response, dtype=torch.float64)
    area_ml_per_mm = geometry.pixel_size_mm[0] * geometry.pixel_size_mm[1] * 1e-3
    acquisition = Acquisition(
        angles_deg=geometry.angles_deg,
        detector_shape=geometry.detector_shape,  # type: ignore[arg-type] - set by the geometry
        pixel_size_mm=geometry.pixel_size_mm,  # type: ignore[arg-type] - set by the geometry
        energy_keV=208.4,
        radius_mm=200.0,
        collimator="MEGP" if collimator else None,
        sensitivity_cps_per_mbq=100.0,
        duration_s=counts_scale / (area_ml_per_mm * 100.0 * 1e-6),
    )
    assert acquisition.count_scale == pytest.approx(counts_scale)
    counts = projector(torch.as_tensor(activity)).numpy() * acquisition.count_scale
    anatomy = Anatomy(labels, {1: "front", 2: "back"}, body, "test blocks")
    study = Study(
        projections=counts.astype(np.float32),
        acquisition=acquisition,
        grid=grid,
        mu_per_mm=mu.astype(np.float32),
        truth_activity=activity.astype(np.float32),
        labels=labels,
        label_names={1: "front", 2: "back"},
        anatomy=anatomy,
    )
    return study, activity


# -- compartments ----------------------------------------------------------------------------


def test_compartments_segments_then_background_bands() -> None:
    study, _ = _slab_study({"front": 1.0, "back": 1.0, "background": 1.0})
    anatomy = study.anatomy
    assert anatomy is not None
    one = compartments_from_anatomy(anatomy)
    assert one.names == ("front", "back", "background")
    assert one.background == (False, False, True)
    body_voxels = int(anatomy.body.sum())  # type: ignore[union-attr] - the test body exists
    assert int(one.voxel_counts.sum()) == body_voxels
    three = compartments_from_anatomy(anatomy, background_regions=3)
    assert three.names[2:] == ("background_1", "background_2", "background_3")
    counts = three.voxel_counts[2:]
    assert counts.sum() == one.voxel_counts[2]
    assert counts.max() / counts.min() < 1.6  # bands of whole slices, about equal volumes
    masks = three.masks()
    assert masks.shape == (5, *study.grid.shape)
    assert np.array_equal(masks.sum(0) > 0, anatomy.body)


def test_compartments_drop_with_warnings_and_refuse_bad_input() -> None:
    labels = np.zeros((4, 4, 4), dtype=np.int32)
    labels[0, 0, 0] = 1  # outside the body below
    labels[2, 2, 2] = 2
    body = np.zeros((4, 4, 4), dtype=bool)
    body[1:, 1:, 1:] = True
    anatomy = Anatomy(labels, {1: "outside", 2: "inside", 3: "empty"}, body)
    with pytest.warns(UserWarning) as caught:
        comp = compartments_from_anatomy(anatomy)
    messages = " ".join(str(w.message) for w in caught)
    assert "1 segmented voxels lie outside the support" in messages
    assert "'outside' has no voxels" in messages and "'empty' has no voxels" in messages
    assert comp.names == ("inside", "background")
    with pytest.raises(ValueError, match="background_regions must be >= 0"):
        compartments_from_anatomy(anatomy, background_regions=-1)
    with pytest.raises(ValueError, match="support has shape"):
        compartments_from_anatomy(anatomy, np.ones((4, 4, 5), dtype=bool))
    with pytest.raises(ValueError, match="no segment inside the support"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compartments_from_anatomy(anatomy, np.zeros((4, 4, 4), dtype=bool))


# -- the organ fit ---------------------------------------------------------------------------


@pytest.mark.parametrize("collimator", [False, True])
def test_organ_fit_recovers_compartment_concentrations(collimator: bool) -> None:
    truth = {"front": 5000.0, "back": 2000.0, "background": 300.0}
    study, activity = _slab_study(truth, collimator=collimator, counts_scale=0.05)
    anatomy = study.anatomy
    assert anatomy is not None
    comp = compartments_from_anatomy(anatomy)
    result = fit_organs(study, comp, collimator=study.collimator_response())
    got = dict(zip(comp.names, result.concentrations, strict=True))
    for name, value in truth.items():
        assert got[name] == pytest.approx(value, rel=2e-5)
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    front = result.estimates[0]
    assert front.volume_ml == pytest.approx(64 * voxel_ml)
    assert front.activity_mbq == pytest.approx(5000.0 * 64 * voxel_ml * 1e-6, rel=2e-5)
    assert result.deviance_per_pixel < 1e-6  # noise-free, the model is exact
    assert np.allclose(result.activity_volume(), activity, rtol=2e-5)


def test_organ_fit_em_and_newton_reach_the_same_maximum() -> None:
    gen = torch.Generator().manual_seed(3)
    basis = torch.rand(4, 300, generator=gen, dtype=torch.float64) * 50.0
    c_true = torch.tensor([2.0, 0.5, 1.0, 0.0], dtype=torch.float64)
    counts = torch.poisson(c_true @ basis + 1.0, generator=gen)
    background = torch.full((300,), 1.0, dtype=torch.float64)
    newton, _ = fit_organ_coefficients(basis, counts, background)
    em_config = OrganFitConfig(em_iterations=200_000, newton_steps=0, tolerance=1e-14)
    em_only, _ = fit_organ_coefficients(basis, counts, background, em_config)
    assert torch.allclose(newton, em_only, rtol=1e-5, atol=1e-6)
    # The maximum: the gradient vanishes on the free coefficients, points down at the bound.
    expected = newton @ basis + background
    gradient = basis @ (counts / expected - 1.0)
    free = newton > 1e-9
    assert torch.allclose(gradient[free], torch.zeros_like(gradient[free]), atol=1e-6)
    assert bool((gradient[~free] <= 1e-6).all())


def test_cramer_rao_bound_matches_the_spread_of_repeated_fits() -> None:
    gen = torch.Generator().manual_seed(11)
    basis = torch.rand(3, 200, generator=gen, dtype=torch.float64) * 40.0
    c_true = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)
    mean = c_true @ basis
    quick = OrganFitConfig(em_iterations=20, newton_steps=30)
    sd_bound = torch.sqrt(torch.linalg.inv(fisher_information(basis, mean)).diagonal())
    fits = torch.stack(
        [
            fit_organ_coefficients(basis, torch.poisson(mean, generator=gen), config=quick)[0]
            for _ in range(300)
        ]
    )
    spread = fits.std(dim=0)
    assert torch.allclose(spread, sd_bound, rtol=0.15)  # 300 samples: ±~8 % sampling error
    assert torch.allclose(fits.mean(dim=0), c_true, rtol=0.02)


def test_fisher_information_is_the_poisson_information() -> None:
    basis = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    expected = torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64)
    f = fisher_information(basis, expected)
    by_hand = torch.tensor([[1 / 2 + 4 / 4, 2 / 4], [2 / 4, 1 / 4 + 9 / 6]], dtype=torch.float64)
    assert torch.allclose(f, by_hand, rtol=1e-14)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("em_iterations", 0, "em_iterations must be >= 1"),
        ("newton_steps", -1, "newton_steps must be >= 0"),
        ("tolerance", 0.0, "tolerance must be > 0"),
    ],
)
def test_organ_fit_config_refuses_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OrganFitConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("background_regions", -1, "background_regions must be an integer >= 0"),
        ("rounds", 0, "rounds must be >= 1"),
        ("lr", 0.0, "lr must be > 0"),
        ("source_threshold", math.nan, "source_threshold must be a finite number"),
    ],
)
def test_organs_config_refuses_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OrgansConfig(**{field: value})  # type: ignore[arg-type]


# -- the residual model ----------------------------------------------------------------------


def test_residual_model_parts_hold_their_activities() -> None:
    study, _ = _slab_study({"front": 1.0, "back": 1.0, "background": 1.0})
    anatomy = study.anatomy
    assert anatomy is not None
    comp = compartments_from_anatomy(anatomy)
    source = ResidualSource((4.0, -3.0, 6.0), 9.0, 250.0)
    model = OrganResidualModel(study.grid, comp, np.array([5.0, 2.0, 0.5]), (source,), anatomy.body)
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    with torch.no_grad():
        # A source is normalised inside the support: its activity is all in the volume.
        assert float(model.source_volume().double().sum()) * voxel_ml == pytest.approx(
            250.0, rel=1e-5
        )
        # Unshifted and unmodulated, each compartment holds concentration × voxels.
        organs = model.organ_volume().double().numpy()
        for k, c in enumerate((5.0, 2.0, 0.5)):
            assert organs[comp.index == k].sum() == pytest.approx(c * comp.voxel_counts[k])
        # A whole-voxel shift moves a segment; the background fills what it leaves.
        model.registration[0] = torch.tensor([0.0, 0.0, 10.0])  # tanh → +1.5 voxels in z
        shifted = model.unit_volumes()
        assert float(shifted[0].sum()) == pytest.approx(float(comp.voxel_counts[0]), rel=1e-5)
        assert float((shifted.sum(0) - torch.as_tensor(anatomy.body).float()).abs().max()) < 1e-5
        # The modulation stays within a factor e^±0.7 and background regions have none.
        model.modulation.fill_(50.0)
        nodes = model.log_modulations()
        assert float(nodes[:2].max()) == pytest.approx(0.7) and float(nodes[2].abs().max()) == 0


def test_boundary_offset_dilates_and_erodes_a_segment_by_whole_voxels() -> None:
    """b = 0 is the segment, b = +1 adds the voxels face-adjacent to it (scipy's binary dilation
    with the cross), b = −1 removes its outer shell (binary erosion); in between, linear."""
    from scipy import ndimage

    study, _ = _slab_study({"front": 1.0, "back": 1.0, "background": 1.0})
    anatomy = study.anatomy
    assert anatomy is not None
    comp = compartments_from_anatomy(anatomy)
    model = OrganResidualModel(study.grid, comp, np.array([5.0, 2.0, 0.5]), (), anatomy.body)
    box = model.boxes[0]
    assert box is not None
    segment = comp.index[box] == 0
    cross = ndimage.generate_binary_structure(3, 1)
    with torch.no_grad():
        for offset, want in (
            (0.0, segment),
            (1.0, ndimage.binary_dilation(segment, cross)),
            (-1.0, ndimage.binary_erosion(segment, cross)),
        ):
            model.boundary[0] = math.atanh(offset / MAX_BOUNDARY_VOX)
            mask = model.segment_mask(0).numpy()
            assert np.array_equal(mask[want], np.ones(int(want.sum()))), offset
            # Only voxels diagonal to the segment (distance √2 > 1) are partly in at b = +1.
            assert (mask[~want] < 1.0).all() and (mask[~want] <= max(offset, 0.0) * 0.6).all()
        model.boundary[0] = math.atanh(0.5 / MAX_BOUNDARY_VOX)
        half = model.segment_mask(0).numpy()
        shell = ndimage.binary_dilation(segment, cross) & ~segment
        assert np.allclose(half[shell], 0.5) and np.allclose(half[segment], 1.0)
        # Background regions have no boundary offset.
        model.boundary.fill_(5.0)
        assert float(model.boundary_offsets_vox()[2]) == 0.0


def test_residual_priors_are_likelihoods_independent_of_the_count_level() -> None:
    """The Gaussian priors on the modulation and the boundary offsets are negative
    log-likelihoods divided by the data's counts (the data term's normalisation)."""
    study, _ = _slab_study({"front": 1.0, "back": 1.0, "background": 1.0})
    anatomy = study.anatomy
    assert anatomy is not None
    comp = compartments_from_anatomy(anatomy)
    values = []
    for counts in (1e4, 1e8):
        model = OrganResidualModel(
            study.grid, comp, np.array([5.0, 2.0, 0.5]), (), anatomy.body, data_counts=counts
        )
        with torch.no_grad():
            model.modulation.fill_(0.3)
            model.boundary.fill_(0.2)
            g, b = model.log_modulations(), model.boundary_offsets_vox()
            want = 0.5 * float(
                ((g / MODULATION_PRIOR_SD) ** 2).sum() + ((b / BOUNDARY_PRIOR_SD) ** 2).sum()
            )
            values.append(float(model.penalty()) * counts)
        assert values[-1] == pytest.approx(want, rel=1e-5) and want > 0
    assert values[0] == pytest.approx(values[1], rel=1e-5)
    with pytest.raises(ValueError, match="data_counts must be > 0"):
        OrganResidualModel(study.grid, comp, np.ones(3), (), anatomy.body, data_counts=0.0)


def test_background_follows_the_tissue_fraction() -> None:
    mu = np.array([[[0.0, 0.0075, 0.015, 0.02]]], dtype=np.float32)  # air, half, water, bone
    fraction = tissue_fraction(mu, 140.5)
    water = 0.015 / 0.0154  # μ here is a little below water's at 140.5 keV
    assert np.allclose(fraction, [[[0.0, 0.5 * water, water, 1.0]]], rtol=0.02)
    labels = np.zeros((1, 1, 4), dtype=np.int32)
    labels[0, 0, 3] = 1
    anatomy = Anatomy(labels, {1: "bone"}, np.ones((1, 1, 4), dtype=bool))
    comp = compartments_from_anatomy(anatomy, background_weight=fraction)
    assert comp.names == ("bone", "background")
    assert comp.voxel_counts[0] == 1.0  # segments are whole voxels
    assert comp.voxel_counts[1] == pytest.approx(float(fraction[0, 0, :3].sum()))
    assert np.allclose(comp.masks()[1, 0, 0], [0.0, fraction[0, 0, 1], fraction[0, 0, 2], 0.0])


def _point_in_body(
    point: tuple[int, int, int], spacing_mm: float = 8.0
) -> tuple[Study, Any, Any, tuple[ResidualSource, ...]]:
    """A point source in a uniform body: the study, its one compartment, the organ fit and the
    sources `find_sources` starts from."""
    truth = {"front": 0.0, "back": 0.0, "background": 100.0}
    study, _ = _slab_study(truth, point=point, point_activity=4e4, spacing_mm=spacing_mm)
    body = study.anatomy.body  # type: ignore[union-attr] - the test body exists
    anatomy = Anatomy(body.astype(np.int32), {1: "body"}, body)
    comp = compartments_from_anatomy(anatomy, background_regions=0)
    organ_fit = fit_organs(study, comp, collimator=study.collimator_response())
    found = find_sources(
        study, organ_fit.expected, body, collimator=study.collimator_response(), threshold=3.0
    )
    return study, comp, organ_fit, found


def test_find_sources_puts_a_point_source_at_its_depth() -> None:
    """The AP/PA count ratio gives the depth of a compact source (docs/anatomy.md)."""
    point = (7, 10, 5)  # z, y, x voxel: posterior, off-centre
    study, _, _, found = _point_in_body(point)
    assert len(found) >= 1
    z, y, x = (float(study.grid.centres_mm(a)[i]) for a, i in enumerate(point))
    cx, cy, cz = found[0].centre_mm
    assert (cx, cz) == pytest.approx((x, z), abs=1e-6)  # in-plane: the peak pixel
    assert abs(cy - y) <= study.grid.spacing_mm[1] + 1e-6  # depth: within one voxel
    assert opposed_pair((0.0, 90.0, 180.0)) == (0, 2)
    assert opposed_pair((0.0, 90.0)) is None


@pytest.mark.parametrize(("spacing_mm", "width_mm"), [(8.0, 12.0), (3.125, START_SIGMA_MM)])
def test_source_scales_are_in_mm_on_fine_grids(spacing_mm: float, width_mm: float) -> None:
    """A new source starts `START_SIGMA_MM` wide (1.5 voxels on grids coarser than 6.25 mm), and
    its activity parameter's unit is the same number of mL on any finer grid."""
    study, comp, organ_fit, found = _point_in_body((7, 10, 5), spacing_mm)
    assert found and all(s.sigma_mm == pytest.approx(width_mm) for s in found)
    body = study.anatomy.body  # type: ignore[union-attr] - the test body exists
    model = OrganResidualModel(study.grid, comp, organ_fit.concentrations, found, body)
    voxel_ml = max(spacing_mm**3 * 1e-3, 6.25**3 * 1e-3)
    level = float(np.max(organ_fit.concentrations))
    assert float(model.a_unit) == pytest.approx(level * 100.0 * voxel_ml, rel=1e-6)


def test_depth_search_moves_a_source_to_the_depth_of_the_counts() -> None:
    """A source started at the wrong depth (its in-plane place right) moves to the depth of the
    true source, with its maximum-likelihood activity; one at the right depth stays."""
    truth = {"front": 100.0, "back": 100.0, "background": 100.0}  # a uniform body
    point = (7, 9, 5)  # z, y, x voxel: the centre of a 3³-voxel (24 mm) cube
    cube = tuple(slice(i - 1, i + 2) for i in point)
    study, _ = _slab_study(truth, point=cube, point_activity=4e4 / 27)  # type: ignore[arg-type]
    body = study.anatomy.body  # type: ignore[union-attr] - the test body exists
    comp = compartments_from_anatomy(Anatomy(body.astype(np.int32), {1: "body"}, body),
                                     background_regions=0)  # fmt: skip
    z, y, x = (float(study.grid.centres_mm(a)[i]) for a, i in enumerate(point))
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    true_activity = 4e4 * voxel_ml
    sigma = 24.0 / math.sqrt(12.0)  # the cube's rms extent along each axis
    collimator = study.collimator_response()
    for start_y, moves in ((y - 32.0, 1), (y + 24.0, 1), (y, 0)):
        source = ResidualSource((x, start_y, z), sigma, 0.5 * true_activity)
        model = OrganResidualModel(study.grid, comp, np.array([100.0]), (source,), body)
        assert search_depths(study, model, collimator=collimator) == moves
        with torch.no_grad():
            cx, cy, cz = (float(v) for v in model.source_centres_mm()[0])
            activity = float(model.source_activities()[0])
        assert (cx, cz) == pytest.approx((x, z), abs=1e-4)  # in-plane: untouched
        if moves:
            assert cy == pytest.approx(y, abs=1e-4)  # the voxel of the true source
            # A Gaussian for a uniform cube: the same activity to a few per cent.
            assert activity == pytest.approx(true_activity, rel=0.05)
        else:
            assert cy == pytest.approx(y, abs=1e-4) and activity == pytest.approx(
                0.5 * true_activity, rel=1e-5
            )
        # Unit activity is one activity unit · mL wherever the source is put.
        unit = model.source_unit_volume(0).detach().double()
        assert float(unit.sum()) * voxel_ml == pytest.approx(1.0)


def test_ml_activity_is_the_poisson_maximum() -> None:
    """The Newton solution of a source's activity zeroes the Poisson score, and is 0-bounded."""
    gen = torch.Generator().manual_seed(5)
    unit = torch.rand(200, generator=gen, dtype=torch.float64) * 3.0
    rest = torch.rand(200, generator=gen, dtype=torch.float64) * 20.0 + 1.0
    counts = torch.poisson(rest + 6.0 * unit, generator=gen)
    a = _ml_activity(counts, rest, unit, start=1.0)
    score = float((unit - counts * unit / (a * unit + rest)).sum())
    assert abs(score) < 1e-8 * float(unit.sum())
    assert 4.0 < a < 8.0
    assert _ml_activity(torch.zeros(200, dtype=torch.float64), rest, unit, start=1.0) < 1e-3


def test_conjugate_activity_does_not_depend_on_the_fitted_depth() -> None:
    """The geometric mean of the two views' excess gives the activity whatever depth the model
    put the source at: a source placed nearer the AP detector (its AP response × f, PA ÷ f)
    measures the same activity; a Poisson fit of the amplitude would not."""
    gen = torch.Generator().manual_seed(3)
    unit = torch.rand((2, 40), generator=gen, dtype=torch.float64) * 10.0  # counts per MBq
    rest = torch.full((2, 40), 50.0, dtype=torch.float64)
    activity = 7.0
    for f in (1.0, 1.8, 0.4):  # the model's depth is wrong by a factor f in the view ratio
        truth = unit.clone()
        truth[0] *= f
        truth[1] /= f
        counts = rest + activity * truth
        estimate, sd = conjugate_activity(counts, rest, unit, (0, 1), patch_fraction=0.05)
        assert estimate == pytest.approx(activity, rel=1e-12)
        patch = [unit[v] > 0.05 * unit[v].max() for v in (0, 1)]
        n = [float((activity * truth[v])[patch[v]].sum()) for v in (0, 1)]
        var = [float(counts[v][patch[v]].sum()) for v in (0, 1)]
        assert sd == pytest.approx(
            activity * 0.5 * math.sqrt(var[0] / n[0] ** 2 + var[1] / n[1] ** 2)
        )
        ml = float(((counts - rest) * unit).sum() / (unit * unit).sum())  # least-squares amplitude
        assert (abs(ml - activity) > 0.05 * activity) == (f != 1.0)
    assert conjugate_activity(rest, rest, unit, (0, 1)) == (0.0, 0.0)  # no excess
    with pytest.raises(ValueError, match="patch_fraction"):
        conjugate_activity(rest, rest, unit, (0, 1), patch_fraction=1.0)


def test_a_source_beside_a_segment_is_that_organ_unless_it_is_hot() -> None:
    """Activity just outside a segment (its segmentation missed it) is counted in the organ; a
    source as hot as a lesion stays a lesion; far from every segment, the host is the region
    the source lies in."""
    distance = np.full((1, 1, 6), 9.0)
    distance[0, 0, :3] = [0.0, 1.0, SPILL_MARGIN_VOXELS]  # voxels 0..2 within the margin
    distances = {0: distance}
    concentrations = torch.tensor([1000.0, 10.0])  # the organ, the background
    assert _host(1, (0, 0, 2), 800.0, concentrations, distances) == (0, 0.8)
    hot = 1000.0 * LESION_CONTRAST * 2.0
    host, contrast = _host(1, (0, 0, 2), hot, concentrations, distances)
    assert host == 0 and contrast >= LESION_CONTRAST  # the organ, but a lesion by contrast
    assert _host(1, (0, 0, 5), 800.0, concentrations, distances) == (1, 80.0)  # beyond the margin
    assert _host(-1, (0, 0, 5), 800.0, concentrations, distances) == (-1, math.inf)


def test_organs_plus_residual_finds_an_unsegmented_lesion() -> None:
    truth = {"front": 3000.0, "back": 1500.0, "background": 200.0}
    block = (slice(10, 13), slice(6, 9), slice(2, 5))  # 3³ voxels, not in the anatomy
    lesion = (11, 7, 3)  # its centre voxel
    study, activity = _slab_study(truth, point=block, point_activity=6e3, counts_scale=0.02)
    gen = torch.Generator().manual_seed(0)
    noisy = torch.poisson(torch.as_tensor(study.projections, dtype=torch.float64), generator=gen)
    study = dataclasses.replace(study, projections=noisy.numpy().astype(np.float32))
    organ_only = reconstruct_organs(study, config=OrgansConfig(residual=False))
    both = reconstruct_organs(study, config=OrgansConfig(steps=150, seed=1))
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    lesion_true = 6e3 * 27 * voxel_ml * 1e-6
    sources = both.result.parameters["sources"]
    assert isinstance(sources, list) and len(sources) >= 1
    z, y, x = (float(study.grid.centres_mm(a)[i]) for a, i in enumerate(lesion))
    near = [s for s in sources if np.linalg.norm(np.subtract(s["centre_mm"], (x, y, z))) < 12.0]
    assert near, sources
    assert near[0]["activity_mbq"] == pytest.approx(lesion_true, rel=0.15)

    def background_error(outcome: object) -> float:
        table = outcome.result.parameters["organ_table"]  # type: ignore[attr-defined]
        row = next(r for r in table if r["name"] == "background")
        true = truth["background"] * row["volume_ml"] * 1e-6
        return abs(row["activity_mbq"] / true - 1.0)

    # The organ fit spreads the lesion over the background; the residual model does not.
    assert background_error(both) < 0.5 * background_error(organ_only)
    assert both.result.method == "organs+residual" and organ_only.result.method == "organs"
    # The lesion's sd: its two-view count spread and the method's 12 % model sd, in quadrature.
    lesion_row = near[0]
    assert lesion_row["activity_sd_model_mbq"] == pytest.approx(
        RESIDUAL_MODEL_ERROR.lesion * lesion_row["activity_mbq"], rel=1e-12
    )
    assert lesion_row["activity_sd_mbq"] == pytest.approx(
        math.hypot(lesion_row["activity_sd_counts_mbq"], lesion_row["activity_sd_model_mbq"]),
        rel=1e-12,
    )
    assert "MEGP" in str(both.result.parameters["collimator"])
    assert both.result.activity.shape == activity.shape


# -- the table -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("organ", -0.01, r"ModelError.organ must lie in \[0, 1\), got -0.01"),
        ("lesion", 1.0, r"ModelError.lesion must lie in \[0, 1\), got 1.0"),
        ("organ", math.nan, r"ModelError.organ must lie in \[0, 1\), got nan"),
        ("lesion", "0.1", "ModelError.lesion must be a number, got '0.1'"),
        ("organ", True, "ModelError.organ must be a number, got True"),
    ],
)
def test_model_error_refuses_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelError(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model_error must be a ModelError or None"):
        OrgansConfig(model_error=0.03)  # type: ignore[arg-type]


def test_combined_sd_adds_the_model_part_in_quadrature() -> None:
    assert combined_sd(3.0, 40.0, 0.1) == (5.0, 4.0)  # 3-4-5
    assert combined_sd(3.0, -40.0, 0.1) == (5.0, 4.0)
    assert combined_sd(2.0, 40.0, 0.0) == (2.0, 0.0)


def test_the_table_adds_each_methods_model_error_to_the_cramer_rao_sd() -> None:
    study, _ = _slab_study({"front": 4000.0, "back": 1000.0, "background": 100.0})
    tables = {}
    for label, config, relative in (
        ("measured", OrgansConfig(residual=False), ORGAN_FIT_MODEL_ERROR.organ),
        ("own", OrgansConfig(residual=False, model_error=ModelError(organ=0.05)), 0.05),
        ("counts", OrgansConfig(residual=False, model_error=ModelError()), 0.0),
    ):
        outcome = reconstruct_organs(study, config=config)
        counts_sd = {e.name: e.activity_sd_mbq for e in outcome.organ_fit.estimates}
        tables[label] = {r["name"]: r for r in outcome.result.parameters["organ_table"]}  # type: ignore[union-attr]
        for name, row in tables[label].items():
            expected_model = 0.0 if row["background"] else relative * row["activity_mbq"]
            assert row["activity_sd_counts_mbq"] == pytest.approx(counts_sd[name], rel=1e-12)
            assert row["activity_sd_model_mbq"] == pytest.approx(expected_model, rel=1e-12)
            total = math.hypot(counts_sd[name], expected_model)
            assert row["activity_sd_mbq"] == pytest.approx(total, rel=1e-12)
            relative_sd = row["concentration_sd"] / row["concentration"]
            assert relative_sd == pytest.approx(total / row["activity_mbq"], rel=1e-6)
    # Counts only, the table is the Cramér–Rao bound; the measured model sd dominates it here.
    front = tables["counts"]["front"]
    assert front["activity_sd_mbq"] == front["activity_sd_counts_mbq"] > 0
    assert tables["measured"]["front"]["activity_sd_mbq"] > 10 * front["activity_sd_mbq"]


def test_quantify_uses_each_methods_definition_and_the_truth() -> None:
    truth = {"front": 4000.0, "back": 1000.0, "background": 100.0}
    study, activity = _slab_study(truth, counts_scale=0.05)
    exact = Result(activity.astype(np.float32), study.grid, "mlem")
    organs = reconstruct_organs(study, config=OrgansConfig(residual=False)).result
    rows = quantify(study, [exact, organs])
    by = {(r.method, r.region): r for r in rows}
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    front_true = 4000.0 * 64 * voxel_ml * 1e-6
    assert by[("mlem", "front")].activity_mbq == pytest.approx(front_true, rel=1e-6)
    assert by[("mlem", "front")].error_percent == pytest.approx(0.0, abs=1e-4)
    assert math.isnan(by[("mlem", "front")].activity_sd_mbq)
    assert by[("organs", "front")].activity_mbq == pytest.approx(front_true, rel=1e-4)
    front = by[("organs", "front")]
    own = next(r for r in organs.parameters["organ_table"] if r["name"] == "front")  # type: ignore[union-attr]
    assert (front.activity_sd_mbq, front.activity_sd_counts_mbq) == (
        own["activity_sd_mbq"],
        own["activity_sd_counts_mbq"],
    )
    assert 0 < front.activity_sd_counts_mbq < front.activity_sd_mbq
    assert math.isnan(by[("mlem", "front")].activity_sd_counts_mbq)
    assert by[("organs", "background")].kind == "background"
    total = sum(r.percent_of_total for r in rows if r.method == "mlem" and r.kind == "organ")
    assert 0 < total < 100
    csv = rows_to_csv(rows).splitlines()
    assert csv[0].startswith(
        "method,region,kind,activity_mbq,activity_sd_mbq,activity_sd_counts_mbq"
    )
    assert len(csv) == len(rows) + 1
    with pytest.raises(ValueError, match="names has 1 entries for 2 results"):
        quantify(study, [exact, organs], ["one"])
