"""`recon.support`: the body / anatomy support of a study, its resolution for the commands, the
`SupportedField` wrapper, and `Study.collimator_response`. Tiny hand-made studies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from recon.io.study import Acquisition, Anatomy, Study
from recon.nerf.representations import VoxelActivity
from recon.support import (
    BODY_HU,
    BODY_MU_FRACTION,
    SupportedField,
    representation_volume,
    resolve_support,
    support_mask,
)
from spectproj import CollimatorResponse, GridField, ImageGrid
from spectproj.physics import water_mu_per_mm

SHAPE = (6, 8, 8)
GRID = ImageGrid(shape=SHAPE, spacing_mm=(10.0, 10.0, 10.0))


def _box() -> np.ndarray:
    """A body: the box y, x in 2..5 over all slices."""
    body = np.zeros(SHAPE, dtype=bool)
    body[:, 2:6, 2:6] = True
    return body


def _study(**fields: object) -> Study:
    acq = Acquisition(
        angles_deg=(0.0, 180.0), detector_shape=(6, 8), pixel_size_mm=(10.0, 10.0),
        energy_keV=140.5,
    )  # fmt: skip
    return Study(projections=np.zeros((2, 6, 8), np.float32), acquisition=acq, grid=GRID, **fields)


def _mu_study() -> Study:
    """Water in the box, with an air pocket inside (a hole) and a 'lung' of 0.3 × water that
    reaches the top slice through an air channel (open in 3D, closed in each slice)."""
    w = water_mu_per_mm(140.5)
    mu = np.where(_box(), w, 0.0).astype(np.float32)
    mu[2, 3, 3] = 0.0  # air pocket: a closed hole
    mu[:, 4, 4] = 0.0  # an air channel through every slice: open in 3D (ends at the grid edge)
    mu[1, 3, 4] = 0.3 * w  # lung-like tissue stays above the threshold
    return _study(mu_per_mm=mu)


def _grown(mask: np.ndarray, not_air: np.ndarray | None = None) -> np.ndarray:
    """``mask`` grown by one voxel (6-connected) into ``not_air``, as the thresholded bodies are."""
    grown = ndimage.binary_dilation(mask)
    return mask | (grown if not_air is None else grown & not_air)


def test_body_from_mu_fills_holes_in_3d_and_per_slice() -> None:
    study = _mu_study()
    mask = support_mask(study, "body")
    assert mask.dtype == bool and mask.shape == SHAPE
    np.testing.assert_array_equal(mask, _box())  # the air around the box is not grown into
    # A partial-volume edge voxel next to the body (μ below the threshold, yet not air) is kept;
    # one two voxels away is not.
    mu = np.asarray(study.mu_per_mm).copy()
    mu[0, 1, 3] = 0.05 * water_mu_per_mm(140.5)  # touches the box (y = 2)
    mu[0, 0, 5] = 0.05 * water_mu_per_mm(140.5)  # two voxels from it
    grown = support_mask(dataclasses.replace(study, mu_per_mm=mu), "body")
    expected = _box()
    expected[0, 1, 3] = True
    np.testing.assert_array_equal(grown, expected)
    np.testing.assert_array_equal(grown, _grown(_box(), mu > 0))


def test_body_threshold_is_a_fraction_of_water() -> None:
    w = water_mu_per_mm(140.5)
    mu = np.zeros(SHAPE, np.float32)
    mu[0, 0, 0] = 0.9 * BODY_MU_FRACTION * w  # below: outside
    mu[5, 7, 7] = 1.1 * BODY_MU_FRACTION * w  # above: inside
    mask = support_mask(_study(mu_per_mm=mu))
    assert mask.sum() == 1 and mask[5, 7, 7]  # the voxel below sits in air: not grown into


def test_body_from_the_ct_when_there_is_no_mu() -> None:
    ct = np.where(_box(), 0.0, -1000.0).astype(np.float32)
    ct[3, 3, 3] = -800.0  # lung: a hole, filled
    ct[0, 0, 0] = BODY_HU + 1.0  # just above the threshold: inside
    mask, note = resolve_support(_study(ct_hu=ct), None)
    expected = _box()
    expected[0, 0, 0] = True
    np.testing.assert_array_equal(mask, expected)
    assert note.startswith("body (CT > -500 HU, holes filled, edge voxels kept;")


def test_anatomy_body_comes_first_and_anatomy_kind_is_the_segments() -> None:
    labels = np.zeros(SHAPE, np.int32)
    labels[1:3, 3:5, 3:5] = 1
    labels[4, 2, 2] = 2
    outline = np.zeros(SHAPE, bool)
    outline[:, 1:7, 1:7] = True
    anatomy = Anatomy(labels=labels, names={1: "liver", 2: "lesion"}, body=outline)
    study = dataclasses.replace(_mu_study(), anatomy=anatomy)
    np.testing.assert_array_equal(support_mask(study, "body"), outline)
    np.testing.assert_array_equal(support_mask(study, "anatomy"), labels > 0)
    _, note = resolve_support(study, "anatomy")
    assert note == f"anatomy (union of 2 segments; {100 * 9 / 384:.1f} % of the grid)"
    # no body outline, no μ, no CT: the union of the segments, filled
    bare = _study(anatomy=dataclasses.replace(anatomy, body=None))
    np.testing.assert_array_equal(support_mask(bare, "body"), labels > 0)


def test_resolve_support_defaults() -> None:
    mask, note = resolve_support(_mu_study())
    np.testing.assert_array_equal(mask, _box())
    assert note == (
        f"body (μ > 0.1 × water's μ at 140.5 keV, holes filled, edge voxels kept; "
        f"{100 * 96 / 384:.1f} % of the grid)"
    )
    assert resolve_support(_study()) == (None, "none (the study has no μ, CT or anatomy)")
    assert resolve_support(_mu_study(), "none") == (None, "none (requested)")
    assert support_mask(_mu_study(), "none") is None


@pytest.mark.parametrize(
    ("study", "kind", "fragment"),
    [
        (_mu_study(), "skin", "support must be one of ['body', 'anatomy', 'none'], got 'skin'"),
        (_study(), "body", "support 'body' needs a study with μ, a CT or an anatomy"),
        (_mu_study(), "anatomy", "support 'anatomy' needs a study with an anatomy"),
        (_study(mu_per_mm=np.zeros(SHAPE, np.float32)), "body", "holds no voxel"),
    ],
)
def test_bad_support_requests(study: Study, kind: str, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        support_mask(study, kind)
    assert fragment in str(error.value)
    with pytest.raises(ValueError):
        resolve_support(study, kind)


def test_supported_field_trilinear_and_nearest() -> None:
    torch.manual_seed(0)
    values = torch.rand(SHAPE, dtype=torch.float64) + 0.5
    field = VoxelActivity(GRID, values.float())
    support = torch.as_tensor(_box())
    wrapped = SupportedField(field, support)
    cz, cy, cx = (GRID.centres_mm(a, dtype=torch.float32) for a in range(3))
    zz, yy, xx = torch.meshgrid(cz, cy, cx, indexing="ij")
    centres = torch.stack([xx, yy, zz], -1).reshape(-1, 3)
    with torch.no_grad():
        got = wrapped(centres).reshape(SHAPE)
        expected = field.volume() * support
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
        # a point a quarter voxel off a boundary centre: trilinear 0.75, nearest 1
        p = torch.tensor([[cx[2] - 2.5, cy[3], cz[3]]])
        assert float(wrapped.inside(p)) == pytest.approx(0.75)
        nearest = SupportedField(field, support, interpolation="nearest")
        assert float(nearest.inside(p)) == 1.0
        far = torch.tensor([[1e4, 0.0, 0.0]])
        assert float(nearest.inside(far)) == 0.0 and float(wrapped.inside(far)) == 0.0
    # the support is not part of the model
    assert list(wrapped.state_dict()) == list(field.state_dict()) == ["theta", "scale"]
    assert float(wrapped.scale) == 1.0
    torch.testing.assert_close(representation_volume(wrapped), field.volume() * support)
    assert representation_volume(GridField) is None


@pytest.mark.parametrize(
    ("support", "interpolation", "fragment"),
    [
        (
            torch.ones(2, 2, 2),
            "trilinear",
            "support has shape [2, 2, 2], the field's grid [6, 8, 8]",
        ),
        (torch.full(SHAPE, 2.0), "trilinear", "support values must lie in [0, 1]"),
        (torch.ones(SHAPE), "cubic", "interpolation must be 'trilinear' or 'nearest'"),
    ],
)
def test_supported_field_bad_inputs(support, interpolation: str, fragment: str) -> None:
    with pytest.raises(ValueError) as error:
        SupportedField(VoxelActivity(GRID), support, interpolation=interpolation)
    assert fragment in str(error.value)


def test_study_collimator_response() -> None:
    study = _study()
    assert study.collimator_response() is None  # no name
    acq = dataclasses.replace(study.acquisition, collimator="LEHR")
    assert dataclasses.replace(study, acquisition=acq).collimator_response() is None  # no radius
    acq = dataclasses.replace(acq, radius_mm=250.0)
    response = dataclasses.replace(study, acquisition=acq).collimator_response()
    assert response == CollimatorResponse.preset("LEHR", 140.5)
    acq = dataclasses.replace(acq, collimator="XYZ")
    with pytest.raises(ValueError, match="unknown collimator 'XYZ'"):
        dataclasses.replace(study, acquisition=acq).collimator_response()
