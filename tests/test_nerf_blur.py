"""Collimator blur in NeRF training: whole-view rendering (`RayData.expected_views` with a
collimator) against the projector, gradients, the default for a study that names a collimator,
the holdout in views mode, and a fit that the blur makes better. Tiny 16³ torso studies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recon.data.phantoms.torso import default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.nerf.config import TrainConfig
from recon.nerf.field import EmissionField, FieldConfig
from recon.nerf.rays import RayData
from recon.nerf.representations import VoxelActivity
from recon.nerf.training import fit, rendered_counts
from recon.support import support_mask
from spectproj import CollimatorResponse, GridField, ParallelGeometry, SPECTProjector
from tests.helpers import random_volume

#: A strong blur (σ ≈ 2 voxels of 25 mm at the far side of the torso), so that it matters.
STRONG = CollimatorResponse(sigma0_mm=5.0, slope=0.1)
TINY_FIELD = FieldConfig(
    encoding="hashgrid", latent_dim=4, hash_levels=4, hash_features=2, hash_log2_size=10,
    hash_base_resolution=4, hash_finest_resolution=32, hash_mlp_depth=2, hash_mlp_width=16,
)  # fmt: skip
TINY = TrainConfig(
    steps=6, n_samples=None, lr=1e-2, val_every=3, log_every=3, preview_every=0,
    checkpoint_every=0, field=TINY_FIELD,
)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def phantom():
    return make_torso(default_grid(16), supersample=2)


@pytest.fixture(scope="module")
def blurred(phantom):
    """AP/PA with attenuation, scatter background and the strong blur (no collimator name)."""
    geometry = ParallelGeometry.ap_pa(phantom.grid, radius_mm=250.0)
    return simulate_acquisition(
        phantom, geometry, collimator=STRONG, total_counts=1e7, scatter_fraction=0.1, seed=1
    )


@pytest.fixture(scope="module")
def named(phantom):
    """AP/PA naming the HE collimator (and a radius): its blur is the study's."""
    geometry = ParallelGeometry.ap_pa(phantom.grid, radius_mm=250.0)
    return simulate_acquisition(phantom, geometry, collimator="HE", total_counts=2e5, seed=2)


def test_views_rendering_equals_the_projector_with_blur(blurred) -> None:
    data = RayData(blurred, holdout_fraction=0.0, dtype=torch.float64, collimator=STRONG)
    volume = random_volume(blurred.grid.shape, seed=3)
    mu = torch.as_tensor(blurred.mu_per_mm, dtype=torch.float64)
    op = SPECTProjector(blurred.geometry(), mu, STRONG, dtype=torch.float64)
    background = torch.as_tensor(blurred.background, dtype=torch.float64)
    expected = blurred.acquisition.count_scale * op(volume) + background
    as_field = data.expected_views(GridField(volume, blurred.grid))
    as_volume = data.expected_views(volume)
    torch.testing.assert_close(as_field, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(as_volume, expected, rtol=1e-10, atol=1e-10)
    # the blur matters here: the torso's views without it differ by far more than the tolerance
    truth = torch.as_tensor(blurred.truth_activity, dtype=torch.float64)
    sharp = RayData(blurred, holdout_fraction=0.0, dtype=torch.float64).expected_views(truth)
    blurry = data.expected_views(truth)
    assert float((sharp - blurry).abs().max() / blurry.abs().max()) > 0.1
    # a neural field: the same as the projector's field path with the blur
    torch.manual_seed(0)
    field = EmissionField(blurred.grid, TINY_FIELD).double()
    with torch.no_grad():
        got = data.expected_views(field, n_samples=12)
        want = blurred.acquisition.count_scale * op(field, n_samples=12) + background
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_gradients_flow_through_the_blur(blurred) -> None:
    data = RayData(blurred, holdout_fraction=0.0, collimator=STRONG)
    rep = VoxelActivity(blurred.grid, torch.as_tensor(blurred.truth_activity) / 1e4)
    grads = []
    for target in (lambda: rep, rep.volume):  # field path, voxel path
        rep.zero_grad()
        (data.expected_views(target()) * data.counts).sum().backward()
        grads.append(rep.theta.grad.clone())
    assert bool(torch.isfinite(grads[0]).all()) and float(grads[0].abs().sum()) > 0
    # the field path samples the voxel centres: the same gradient as the voxel path
    torch.testing.assert_close(
        grads[0], grads[1], rtol=1e-4, atol=1e-6 * float(grads[1].abs().max())
    )


def test_fit_uses_the_blur_a_study_names(named) -> None:
    result = fit(EmissionField(named.grid, TINY_FIELD), named, TINY)
    assert result.render == "views"
    assert result.collimator_response == named.collimator_response()
    assert result.collimator.startswith("HE at 140.5 keV, radius 250 mm (σ = ")
    assert result.physics["collimator"] == result.collimator
    assert np.isfinite(result.val_deviance) and len(result.losses) == 6
    short = dataclasses.replace(TINY, steps=2, val_every=0)
    lines = fit(
        EmissionField(named.grid, TINY_FIELD), named, dataclasses.replace(short, render="lines")
    )
    assert lines.render == "lines" and lines.collimator_response is None
    assert lines.collimator.startswith("not modelled (HE named, but render 'lines'")
    off = fit(EmissionField(named.grid, TINY_FIELD), named, short, collimator=None)
    assert (off.render, off.collimator) == ("lines", "off (collimator=None)")
    with pytest.raises(ValueError, match="render 'lines' cannot apply the collimator blur"):
        fit(
            EmissionField(named.grid, TINY_FIELD), named,
            dataclasses.replace(TINY, render="lines"), collimator=STRONG,
        )  # fmt: skip
    odd = dataclasses.replace(
        named, acquisition=dataclasses.replace(named.acquisition, collimator="PINHOLE")
    )
    with pytest.raises(ValueError, match=r"unknown collimator 'PINHOLE'.*collimator=None"):
        fit(EmissionField(named.grid, TINY_FIELD), odd, short)
    with pytest.raises(ValueError, match="render must be one of"):
        dataclasses.replace(TINY, render="patches")


def test_views_loss_uses_training_pixels_only(named) -> None:
    config = dataclasses.replace(TINY, steps=4, val_every=4, jitter=True)
    first = fit(EmissionField(named.grid, TINY_FIELD), named, config, init_scale=False)
    held = ~first.train_mask
    counts = named.projections.copy()
    counts[held] *= 3.0  # change only the held-out pixels
    changed = dataclasses.replace(named, projections=counts)
    torch.manual_seed(0)
    second = fit(EmissionField(named.grid, TINY_FIELD), changed, config, init_scale=False)
    torch.manual_seed(0)
    again = fit(EmissionField(named.grid, TINY_FIELD), named, config, init_scale=False)
    assert second.losses == again.losses  # the held-out pixels never enter the loss
    assert second.val_deviance > 2 * again.val_deviance  # ... but they are what is validated
    assert held.sum() == 2 * round(0.2 * 16 * 16)  # AP and the conjugate PA pixels


def test_views_fit_recovers_a_blurred_study_better_than_lines(blurred) -> None:
    body = support_mask(blurred, "body")
    truth = blurred.truth_activity
    errors = {}
    for render, collimator in (("lines", None), ("views", STRONG)):
        config = TrainConfig(
            steps=15, optimizer="lbfgs", lr=1.0, render=render, holdout_fraction=0.0,
            val_every=0, log_every=5, checkpoint_every=0,
        )  # fmt: skip
        result = fit(
            VoxelActivity(blurred.grid), blurred, config, support=body, collimator=collimator
        )
        activity = (result.representation.field.volume() * torch.as_tensor(body)).detach()
        # in-plane (AP-projected) activity: what two views can recover
        a, t = activity.numpy().sum(axis=1), truth.sum(axis=1)
        errors[render] = float(np.linalg.norm(a - t) / np.linalg.norm(t))
    # Measured: lines 0.337, views 0.261 (relative L2 error of the depth-summed activity)
    assert errors["views"] < 0.85 * errors["lines"], errors
    assert errors["views"] < 0.3, errors


def test_rendered_counts_include_the_blur(named) -> None:
    result = fit(EmissionField(named.grid, TINY_FIELD), named, dataclasses.replace(TINY, steps=1))
    data = RayData(named, holdout_fraction=0.0, collimator=named.collimator_response())
    with torch.no_grad():
        want = data.expected_views(result.representation.eval(), TINY.n_samples)
    torch.testing.assert_close(rendered_counts(result, named), want)


def test_tv_ray_in_views_mode(named) -> None:
    config = dataclasses.replace(TINY, steps=2, tv_ray=0.1, log_every=1)
    result = fit(EmissionField(named.grid, TINY_FIELD), named, config)
    values = [row["tv_ray"] for row in result.history]
    assert all(np.isfinite(v) and v > 0 for v in values), values


def test_views_and_lines_validation_agree_without_blur(named) -> None:
    """Without a blur both renderings score the same held-out pixels with the same values."""
    data = RayData(named, holdout_fraction=0.2, seed=4, dtype=torch.float64)
    torch.manual_seed(1)
    field = EmissionField(named.grid, TINY_FIELD).double()
    with torch.no_grad():
        lines = data.validate(field, n_samples=10)
        views = data.validate(field, n_samples=10, render="views")
    assert lines[0] == pytest.approx(views[0], rel=1e-9)
    assert lines[1] == pytest.approx(views[1], rel=1e-9)
    with pytest.raises(ValueError, match="render must be 'lines' or 'views', got 'rays'"):
        data.validate(field, render="rays")
