"""NeRF building blocks: configuration, losses, representations, rendering, checkpoints, export."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from recon.data.phantoms.torso import default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.nerf import losses
from recon.nerf.checkpoint import load_checkpoint, save_checkpoint
from recon.nerf.config import TrainConfig
from recon.nerf.export import render_counts, sample_on_grid
from recon.nerf.field import EmissionField, FieldConfig
from recon.nerf.rays import RayData
from recon.nerf.representations import VoxelActivity, inverse_softplus
from spectproj import GridField, ParallelGeometry, SPECTProjector

TINY_HASH = FieldConfig(
    encoding="hashgrid", latent_dim=4, hash_levels=3, hash_features=2, hash_log2_size=8,
    hash_base_resolution=4, hash_finest_resolution=16, hash_mlp_depth=2, hash_mlp_width=16,
)  # fmt: skip
TINY_FREQ = FieldConfig(
    encoding="frequency", n_frequencies=3, latent_dim=4, depth=3, width=16, skip_layer=2
)


@pytest.fixture(scope="module")
def study():
    """A 16³ torso, AP/PA, with scatter background (noise-free expected counts)."""
    grid = default_grid(16)
    phantom = make_torso(grid, supersample=2)
    return simulate_acquisition(
        phantom, ParallelGeometry.ap_pa(grid), total_counts=2e5, scatter_fraction=0.2,
        noise=False,
    )  # fmt: skip


# -- configuration ----------------------------------------------------------------------------


def test_presets_are_valid_and_round_trip() -> None:
    for preset in (TrainConfig.cpu_default(), TrainConfig.gpu_default(), TrainConfig()):
        assert TrainConfig.from_dict(preset.to_dict()) == preset
    gpu = TrainConfig.gpu_default()
    assert gpu.field.encoding == "frequency" and gpu.field.latent_dim == 256
    assert (gpu.field.depth, gpu.field.width, gpu.rays_per_step, gpu.n_samples) == (
        8,
        256,
        16384,
        32,
    )
    cpu = TrainConfig.cpu_default()
    assert cpu.field.encoding == "hashgrid" and cpu.field.hash_log2_size == 15


def test_toml_sets_fields_on_a_base(tmp_path) -> None:
    path = tmp_path / "train.toml"
    path.write_text(
        'steps = 7\nn_samples = "lattice"\nlr = 1\nlr_milestones = [3, 5]\n'
        'lr_schedule = "step"\ngrad_clip = 0\n[field]\nencoding = "frequency"\nwidth = 32\n'
    )
    cfg = TrainConfig.from_toml(path, TrainConfig.cpu_default())
    assert cfg.steps == 7 and cfg.n_samples is None and cfg.lr == 1.0
    assert cfg.lr_milestones == (3, 5) and cfg.grad_clip is None
    assert cfg.field.encoding == "frequency" and cfg.field.width == 32
    assert cfg.field.hash_log2_size == 15  # the rest of the base's field is kept
    assert cfg.rays_per_step == TrainConfig.cpu_default().rays_per_step


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("stepz = 3\n", r"unknown training setting\(s\) \['stepz'\]; valid keys: steps, "),
        ("[field]\nwidht = 3\n", r"unknown \[field\] setting\(s\) \['widht'\]; valid keys: "),
        ('optimizer = "sgd"\n', r"optimizer must be one of \['adam', 'lbfgs'\]"),
        ("steps = -1\n", "steps must be an integer >= 0"),
        ("holdout_fraction = 1.0\n", r"holdout_fraction must be in \[0, 1\)"),
        ("steps = [\n", "not valid TOML"),
    ],
)
def test_bad_toml_is_a_clear_value_error(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_toml(path)


# -- losses -----------------------------------------------------------------------------------


def test_poisson_nll_value_clamp_and_saturation() -> None:
    y = torch.tensor([0.0, 3.0, 10.0])
    e = torch.tensor([1.0, 2.0, 10.0])
    want = float((e - y * torch.log(e)).mean())
    assert math.isclose(float(losses.poisson_nll(e, y)), want, rel_tol=1e-6)
    # ŷ = 0 is clamped at 1e-8 × count level: finite.
    zero = losses.poisson_nll(torch.zeros(3), y, count_level=100.0)
    assert math.isclose(float(zero), float(-(y * math.log(1e-6)).mean() + 1e-6), rel_tol=1e-5)
    # The saturated value is the minimum, reached at ŷ = y.
    sat = losses.poisson_nll_saturated(y)
    assert math.isclose(float(losses.poisson_nll(y.clamp_min(1e-30), y)), float(sat), rel_tol=1e-5)
    assert float(losses.poisson_nll(e, y)) > float(sat)


def test_regularisers() -> None:
    const = torch.full((4, 6), 5.0)
    assert float(losses.tv_ray(const, 5.0)) == 0.0
    ramp = torch.arange(6.0).expand(4, 6)
    assert math.isclose(float(losses.tv_ray(ramp, 2.0)), 0.5)
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])
    assert math.isclose(float(losses.tv_3d(a, b, 2.0)), 0.5)
    # CT smoothness compares only pairs on one μ plateau.
    mu_p, mu_q = torch.tensor([0.015, 0.015]), torch.tensor([0.015, 0.03])
    assert float(losses.ct_smoothness(a, b, mu_p, mu_q, 1.0, 1e-4)) == 0.0
    mu_q2 = torch.tensor([0.015, 0.015])
    assert math.isclose(float(losses.ct_smoothness(a, b, mu_p, mu_q2, 1.0, 1e-4)), 2.0)
    assert math.isclose(float(losses.l1_activity(a, b, 1.0)), 1.0)
    assert float(losses.latent_l2(torch.tensor([3.0, 4.0]))) == 25.0


# -- representations and rendering ------------------------------------------------------------


def test_voxel_activity_is_a_grid_field(study) -> None:
    truth = torch.as_tensor(study.truth_activity)
    rep = VoxelActivity(study.grid, init=truth / 1000.0 + 0.01, scale=1000.0)
    vol = rep.volume().detach()
    torch.testing.assert_close(vol, truth + 10.0, rtol=1e-4, atol=1e-2)
    pts = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 100
    torch.testing.assert_close(rep(pts).detach(), GridField(vol, study.grid)(pts))
    torch.testing.assert_close(
        inverse_softplus(torch.nn.functional.softplus(torch.tensor([2.0]))), torch.tensor([2.0])
    )


def test_rendering_a_field_equal_to_the_phantom_matches_voxel_projection(study) -> None:
    """count_scale · A e + b, through whole views and through random lines (AP and mirrored PA)."""
    truth = torch.as_tensor(study.truth_activity)
    op = SPECTProjector(study.geometry(), mu=torch.as_tensor(study.mu_per_mm))
    want = study.acquisition.count_scale * op(truth) + torch.as_tensor(study.background)
    assert float(torch.as_tensor(study.background).min()) > 0
    field = GridField(truth, study.grid)
    data = RayData(study, holdout_fraction=0.2, seed=3)
    torch.testing.assert_close(data.expected_views(field), want, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(render_counts(field, study), want, rtol=1e-5, atol=1e-3)
    # And the projections equal the noise-free counts of the simulation.
    torch.testing.assert_close(want, torch.as_tensor(study.projections), rtol=1e-4, atol=1e-2)

    lines = data.sample_lines(300, torch.Generator().manual_seed(1))
    batch = data.render_lines(field, lines)
    n = len(lines)
    v, r, b = data.view[lines], data.row[lines], data.bin[lines]
    assert bool((v == 0).all()) and bool((data.opposed[lines] == 1).all())
    torch.testing.assert_close(batch.expected[:n], want[v, r, b], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(batch.expected[n:], want[1, r, 15 - b], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(batch.counts[n:], torch.as_tensor(study.projections)[1, r, 15 - b])


def test_split_is_per_view_fixed_and_mirrored(study) -> None:
    a = RayData(study, holdout_fraction=0.25, seed=5)
    b = RayData(study, holdout_fraction=0.25, seed=5)
    assert torch.equal(a.train_mask, b.train_mask)
    held = ~a.train_mask
    assert int(held[0].sum()) == round(0.25 * 256)
    assert torch.equal(held[1], torch.flip(held[0], (1,)))  # PA holds out the conjugate pixels
    assert not torch.equal(a.train_mask, RayData(study, holdout_fraction=0.25, seed=6).train_mask)
    assert len(a.train_lines) + len(a.holdout_lines) == 256


@pytest.mark.parametrize("config", [TINY_FREQ, TINY_HASH], ids=["frequency", "hashgrid"])
def test_gradients_reach_the_latent_code_and_every_layer(study, config) -> None:
    torch.manual_seed(0)
    field = EmissionField(study.grid, config, scale=1000.0)
    with torch.no_grad():
        field.latent.normal_()
    data = RayData(study, holdout_fraction=0.2)
    batch = data.render_lines(
        field, data.sample_lines(64, torch.Generator().manual_seed(0)), n_samples=8, jitter=True,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    losses.poisson_nll(batch.expected, batch.counts).backward()
    for name, p in field.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().max()) > 0, name


class _Depth(torch.nn.Module):
    """A one-column point feature: a trainable multiple of y (mm)."""

    out_features = 1

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([0.01]))

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return points_mm[:, 1:2] * self.weight


def test_extra_features_join_the_input_and_are_trained(study) -> None:
    torch.manual_seed(0)
    plain = EmissionField(study.grid, TINY_FREQ)
    field = EmissionField(study.grid, TINY_FREQ, features=_Depth())
    n_in = plain.layers[0].in_features
    assert n_in == 3 * 7 + 4
    assert field.layers[0].in_features == n_in + 1
    assert field.layers[2].in_features == 16 + n_in + 1  # re-injected at the skip layer
    assert set(field.state_dict()) == set(plain.state_dict()) | {"features.weight"}
    pts = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)) * 80
    field(pts).sum().backward()
    assert float(field.features.weight.grad.abs()) > 0
    # The feature reaches the output: changing it changes the activity.
    before = field(pts).detach()
    with torch.no_grad():
        field.features.weight.fill_(0.02)
    assert float((field(pts).detach() - before).abs().max()) > 0


def test_sample_on_grid(study) -> None:
    truth = torch.as_tensor(study.truth_activity)
    field = GridField(truth, study.grid)
    torch.testing.assert_close(
        sample_on_grid(field, study.grid, chunk=999), truth, rtol=1e-5, atol=1e-3
    )
    # Sub-voxel averaging of a constant field is exact; of the trilinear field it smooths.
    ones = VoxelActivity(study.grid, 1.0, scale=3.0)
    inner = sample_on_grid(ones, study.grid, subsamples=2)[2:-2, 2:-2, 2:-2]
    torch.testing.assert_close(inner, torch.full_like(inner, 3.0))
    with pytest.raises(ValueError, match="subsamples"):
        sample_on_grid(field, study.grid, subsamples=0)


def test_activity_level_scales_with_the_data(study) -> None:
    level = RayData(study).activity_level()
    scaled = dataclasses.replace(
        study, projections=study.projections * 3.0, background=study.background * 3.0
    )
    assert math.isclose(RayData(scaled).activity_level(), 3.0 * level, rel_tol=1e-5)
    # Of the order of the body's activity (Bq/mL).
    body = study.truth_activity[study.mu_per_mm > 0]
    assert 0.2 * body.mean() < level < 5 * body.mean()


# -- checkpoints ------------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_checkpoints_are_weights_only(tmp_path) -> None:
    payload = {
        "format": "spect-nerf-checkpoint",
        "version": 1,
        "x": torch.ones(2),
        "n": [1, 2.0, None],
    }
    path = tmp_path / "c.pt"
    save_checkpoint(payload, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    with pytest.raises(TypeError, match="cannot go into a weights-only checkpoint"):
        save_checkpoint({**payload, "bad": np.zeros(2)}, path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "spect-nerf-checkpoint", "version": 1, "x": _Evil()}, evil)
    with pytest.raises(ValueError, match="refused: it holds Python objects") as refused:
        load_checkpoint(evil)
    assert "weights_only" not in str(refused.value)  # no advice to turn the protection off
    with pytest.raises(ValueError, match="not a loadable spect checkpoint"):
        load_checkpoint(tmp_path / "c.pt" if (tmp_path / "c.pt").write_bytes(b"PK\x03") else None)
    other = tmp_path / "other.pt"
    torch.save({"format": "something"}, other)
    with pytest.raises(ValueError, match="not a spect NeRF checkpoint"):
        load_checkpoint(other)


@pytest.mark.parametrize("n_views", [6, 3], ids=["opposed-pairs", "no-opposed"])
def test_lines_of_many_views_match_whole_views(study, n_views: int) -> None:
    """Oblique views, with and without conjugate views: lines equal the pixels of whole views."""
    geometry = ParallelGeometry.full_circle(study.grid, n_views, start_deg=10.0)
    views = dataclasses.replace(
        study.acquisition, angles_deg=geometry.angles_deg, detector_shape=geometry.detector_shape
    )
    multi = dataclasses.replace(
        study,
        acquisition=views,
        projections=np.ones((n_views, 16, 16), np.float32),
        background=np.full((n_views, 16, 16), 0.5, np.float32),
    )
    data = RayData(multi, holdout_fraction=0.2)
    paired = n_views == 6
    assert data.n_lines == (n_views // 2 if paired else n_views) * 256
    field = GridField(torch.as_tensor(study.truth_activity), study.grid)
    whole = data.expected_views(field)
    lines = data.sample_lines(200, torch.Generator().manual_seed(0))
    batch = data.render_lines(field, lines)
    v, r, b = data.view[lines], data.row[lines], data.bin[lines]
    want = [whole[v, r, b]]
    if paired:
        want.append(whole[data.opposed[lines], r, 15 - b])
    torch.testing.assert_close(batch.expected, torch.cat(want), rtol=1e-4, atol=1e-3)
    assert bool((~data.train_mask).sum() == round(0.2 * 256) * n_views)
