"""The PyTorch3D bridge (``spectproj.interop.pytorch3d``): renders equal ``spectproj.project``.

Skipped where pytorch3d is not installed (the main dev environment); with
``SPECT_REQUIRE_PYTORCH3D=1`` (CI's pytorch3d job) a missing pytorch3d fails instead.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

if os.environ.get("SPECT_REQUIRE_PYTORCH3D") == "1":
    try:
        import pytorch3d  # noqa: F401
    except ImportError as err:  # a collection error: the CI job fails
        raise ImportError(
            f"SPECT_REQUIRE_PYTORCH3D=1 but pytorch3d cannot be imported ({err}); install it with "
            'pip install -e ".[pytorch3d]"'
        ) from err
else:
    pytest.importorskip(
        "pytorch3d",
        reason='pytorch3d is optional (pip install -e ".[pytorch3d]", torch==2.11.0)',
    )

from pytorch3d.renderer import (
    FoVPerspectiveCameras,
    ImplicitRenderer,
    NDCMultinomialRaysampler,
    OrthographicCameras,
    RayBundle,
    VolumeRenderer,
    look_at_view_transform,
)

from recon.nerf.encodings import FrequencyEncoding
from recon.nerf.field import EmissionField, FieldConfig
from spectproj import (
    GridField,
    ImageGrid,
    ParallelGeometry,
    SPECTProjector,
    depth_weights,
    project,
)
from spectproj.interop.pytorch3d import (
    HarmonicEncoding,
    SPECTRaymarcher,
    SPECTRaysampler,
    SPECTVolumetricFunction,
    cameras_from_geometry,
    geometry_from_cameras,
    grid_from_volumes,
    harmonic_encoding,
    multinomial_raysampler,
    render_spect,
    volumes_from_grid,
)

GRID = ImageGrid(shape=(5, 8, 8), spacing_mm=(4.0, 4.0, 4.0))
OFF_GRID = ImageGrid(shape=(5, 7, 6), spacing_mm=(3.0, 4.0, 3.5), offset_mm=(2.0, -5.0, 3.0))


def _volumes(grid: ImageGrid, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    activity = torch.rand(grid.shape, generator=g, dtype=torch.float64).to(dtype)
    mu = (0.03 * torch.rand(grid.shape, generator=g, dtype=torch.float64)).to(dtype)
    return activity, mu


def _blob(points: torch.Tensor) -> torch.Tensor:
    """A smooth activity field: two Gaussian blobs, points (x, y, z) mm."""
    x, y, z = points.unbind(-1)
    return torch.exp(-((x - 4) ** 2 + (y + 6) ** 2 + z**2) / 60.0) + 0.5 * torch.exp(
        -((x + 6) ** 2 + (y - 3) ** 2 + (z - 2) ** 2) / 40.0
    )


def _body(points: torch.Tensor) -> torch.Tensor:
    """A smooth attenuation field (1/mm)."""
    x, y, _ = points.unbind(-1)
    return 0.015 * torch.sigmoid((200.0 - x**2 - 1.5 * y**2) / 20.0)


def _n(beta_deg: float) -> torch.Tensor:
    b = math.radians(beta_deg)
    return torch.tensor([-math.sin(b), -math.cos(b), 0.0])


# -- the module stays optional -------------------------------------------------------------------
def test_core_never_imports_pytorch3d() -> None:
    code = (
        "import sys, spectproj, spectproj.interop, recon.nerf.field, cli.main\n"
        "assert 'pytorch3d' not in sys.modules, sorted(m for m in sys.modules if 'pytorch3d' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the raymarcher ------------------------------------------------------------------------------
def test_raymarcher_is_the_midpoint_rule_with_the_first_sample_nearest_the_detector() -> None:
    g = torch.Generator().manual_seed(1)
    mu = 0.05 * torch.rand(3, 9, generator=g, dtype=torch.float64)  # 3 rays, 9 samples each
    act = torch.rand(3, 9, generator=g, dtype=torch.float64)
    step = 2.5
    # spectproj orders samples far → near the detector; PyTorch3D near → far (from the camera).
    expected = (act.flip(-1) * depth_weights(mu.flip(-1), step, dim=-1)).sum(-1)
    lengths = 40.0 + step * torch.arange(9, dtype=torch.float64).expand(3, 9)
    bundle = RayBundle(
        origins=torch.zeros(3, 3, dtype=torch.float64),
        directions=torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64).expand(3, 3),
        lengths=lengths,
        xys=torch.zeros(3, 2, dtype=torch.float64),
    )
    out = SPECTRaymarcher()(mu[..., None], act[..., None], ray_bundle=bundle)
    assert out.shape == (3, 1)
    torch.testing.assert_close(out[:, 0], expected, rtol=1e-13, atol=0)
    # Unnormalised directions: lengths are in units of |direction|.
    half = bundle._replace(directions=2 * bundle.directions, lengths=lengths / 2)
    torch.testing.assert_close(SPECTRaymarcher()(mu[..., None], act[..., None], half), out)
    fixed = SPECTRaymarcher(step_mm=step)(mu[..., None], act[..., None])
    torch.testing.assert_close(fixed, out)
    # Reversing the samples changes the value: the order matters and is the detector's.
    assert not torch.allclose(
        SPECTRaymarcher(step_mm=step)(mu.flip(-1)[..., None], act[..., None]), out
    )
    with_opacity = SPECTRaymarcher(append_opacity=True)(mu[..., None], act[..., None], bundle)
    torch.testing.assert_close(with_opacity[:, 1], 1 - torch.exp(-step * mu.sum(-1)))


def test_raymarcher_input_errors() -> None:
    mu, act = torch.zeros(2, 4, 1), torch.ones(2, 4, 1)
    bundle = RayBundle(
        torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([[0.0, 1, 2, 3], [3, 2, 1, 0]]), None
    )
    with pytest.raises(ValueError, match="increase along each ray"):
        SPECTRaymarcher()(mu, act, bundle)
    with pytest.raises(ValueError, match="needs ray_bundle"):
        SPECTRaymarcher()(mu, act)
    with pytest.raises(ValueError, match=r"\[..., n_points_per_ray, 1\]"):
        SPECTRaymarcher(step_mm=1.0)(torch.zeros(2, 4, 2), act)


# -- renders equal spectproj.project -------------------------------------------------------------
@pytest.mark.parametrize(
    "angles", [(0.0, 180.0), (0.0, 90.0, 180.0, 270.0), (30.0, 210.0), (0.0, 45.0, 135.0, 300.0)]
)
def test_volume_renderer_equals_project(angles: tuple[float, ...]) -> None:
    activity, mu = _volumes(GRID)
    geometry = ParallelGeometry(GRID, angles)
    n_pts = None if len({geometry.quadrant(v) is None for v in range(len(angles))}) == 1 else 11
    volumes = volumes_from_grid(activity, mu, GRID, batch_size=len(angles))
    renderer = VolumeRenderer(SPECTRaysampler(geometry, n_pts), SPECTRaymarcher())
    images, _ = renderer(cameras=cameras_from_geometry(geometry), volumes=volumes)
    assert images.shape == (len(angles), 5, 8, 1)
    if n_pts is None:  # the projector's own lattice: equal to the volume projection
        expected = project(activity, geometry, mu=mu)
    else:  # resampled depth: equal to the projection of the grid seen as a field
        op = SPECTProjector(geometry, GridField(mu, GRID))
        expected = op(GridField(activity, GRID), n_samples=n_pts)
    torch.testing.assert_close(
        images[..., 0], expected, rtol=2e-6, atol=2e-6 * float(expected.max())
    )
    assert torch.equal(render_spect(activity, geometry, mu, n_pts_per_ray=n_pts), images[..., 0])


def test_volume_renderer_off_centre_grid_and_detector_pixels() -> None:
    activity, mu = _volumes(OFF_GRID)
    geometry = ParallelGeometry(
        OFF_GRID, (0.0, 180.0), detector_shape=(4, 9), pixel_size_mm=(4.42, 3.3)
    )
    images = render_spect(activity, geometry, mu)  # VolumeRenderer, float32
    expected = project(GridField(activity, OFF_GRID), geometry, mu=GridField(mu, OFF_GRID))
    assert images.shape == (2, 4, 9)
    torch.testing.assert_close(images, expected, rtol=2e-6, atol=2e-6 * float(expected.max()))


def test_pytorch3d_raysamplers_with_our_cameras_equal_project() -> None:
    """PyTorch3D's own unprojection of ``cameras_from_geometry`` finds our pixels' rays."""
    activity, mu = _volumes(GRID)
    geometry = ParallelGeometry.ap_pa(GRID)
    expected = project(activity, geometry, mu=mu)
    cameras = cameras_from_geometry(geometry)
    volumes = volumes_from_grid(activity, mu, GRID, batch_size=2)
    sampler = multinomial_raysampler(geometry)
    ours, _ = VolumeRenderer(sampler, SPECTRaymarcher())(cameras=cameras, volumes=volumes)
    torch.testing.assert_close(ours[..., 0], expected, rtol=2e-6, atol=2e-6 * float(expected.max()))
    # PyTorch3D's NDC image: row 0 at the top (head), so our rows are flipped; bins are not.
    ndc = NDCMultinomialRaysampler(
        image_width=8,
        image_height=5,
        n_pts_per_ray=8,
        min_depth=sampler._min_depth,
        max_depth=sampler._max_depth,
    )
    for kind in ("orthographic", "fov"):
        cams = cameras_from_geometry(geometry, kind=kind)
        images, _ = VolumeRenderer(ndc, SPECTRaymarcher())(cameras=cams, volumes=volumes)
        torch.testing.assert_close(
            images[..., 0].flip(1), expected, rtol=2e-6, atol=2e-6 * float(expected.max())
        )


def test_implicit_renderer_equals_project_float64() -> None:
    geometry = ParallelGeometry(
        OFF_GRID, (0.0, 180.0), detector_shape=(4, 9), pixel_size_mm=(4.0, 3.0)
    )
    op = SPECTProjector(geometry, _body, dtype=torch.float64)
    expected = op(_blob)
    function = SPECTVolumetricFunction(_blob, _body)
    renderer = ImplicitRenderer(SPECTRaysampler(geometry, dtype=torch.float64), SPECTRaymarcher())
    images, bundle = renderer(cameras=cameras_from_geometry(geometry), volumetric_function=function)
    assert images.dtype == torch.float64 and bundle.lengths.shape == (2, 4, 9, 7)
    torch.testing.assert_close(images[..., 0], expected, rtol=1e-12, atol=1e-12)


def test_implicit_renderer_full_circle_float64() -> None:
    geometry = ParallelGeometry.full_circle(OFF_GRID, 7, start_deg=10.0)
    n_pts = 13
    expected = SPECTProjector(geometry, _body, dtype=torch.float64)(_blob, n_samples=n_pts)
    sampler = SPECTRaysampler(geometry, n_pts, dtype=torch.float64)
    renderer = ImplicitRenderer(sampler, SPECTRaymarcher())
    function = SPECTVolumetricFunction(_blob, _body)
    exact, _ = renderer(cameras=None, volumetric_function=function)  # geometry's own views
    torch.testing.assert_close(exact[..., 0], expected, rtol=1e-12, atol=1e-12)
    # Through float32 cameras: angles are read back to ~1e-6 degrees.
    cams, _ = renderer(cameras=cameras_from_geometry(geometry), volumetric_function=function)
    torch.testing.assert_close(cams[..., 0], expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(
        render_spect(_blob, geometry, _body, n_pts_per_ray=n_pts, dtype=torch.float64),
        cams[..., 0],
    )


def test_attenuation_order_point_source_in_a_slab() -> None:
    """ln(AP/PA) = μ(L − 2d) for a source at depth d behind the anterior surface."""
    grid = ImageGrid(shape=(3, 10, 3), spacing_mm=(4.0, 4.0, 4.0))
    mu_value, j = 0.02, 2  # source in row j (y increases toward posterior)
    activity = torch.zeros(grid.shape)
    activity[1, j, 1] = 1.0
    mu = torch.full(grid.shape, mu_value)
    ap, pa = render_spect(activity, ParallelGeometry.ap_pa(grid), mu)[:, 1, 1]
    length, depth = 10 * 4.0, (j + 0.5) * 4.0
    assert ap > pa
    assert math.isclose(math.log(ap / pa), mu_value * (length - 2 * depth), rel_tol=1e-5)


# -- gradients -----------------------------------------------------------------------------------
def test_gradients_flow_through_volume_renderer_as_through_project() -> None:
    activity, mu = _volumes(GRID)
    geometry = ParallelGeometry(GRID, (0.0, 90.0, 180.0, 270.0))
    weights = torch.rand(4, 5, 8, generator=torch.Generator().manual_seed(3))
    grads = []
    for render in (render_spect, project):
        a = activity.clone().requires_grad_(True)
        m = mu.clone().requires_grad_(True)
        (render(a, geometry, mu=m) * weights).sum().backward()
        grads.append((a.grad, m.grad))
    (ga, gm), (ga_ref, gm_ref) = grads
    for g in (ga, gm):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    torch.testing.assert_close(ga, ga_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gm, gm_ref, rtol=1e-5, atol=1e-4 * float(gm_ref.abs().max()))


def test_gradients_reach_a_neural_field_with_harmonic_encoding() -> None:
    torch.manual_seed(0)
    config = FieldConfig(n_frequencies=3, latent_dim=4, depth=2, width=16, skip_layer=1)
    field = EmissionField(GRID, config)
    field.encoding = harmonic_encoding(config.n_frequencies)  # same out_features: a drop-in
    geometry = ParallelGeometry.ap_pa(GRID)
    _, mu = _volumes(GRID)
    images = render_spect(field, geometry, mu)
    expected = project(field, geometry, mu=mu)
    torch.testing.assert_close(
        images, expected, rtol=1e-5, atol=1e-5 * float(expected.detach().max())
    )
    images.sum().backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert field.output.weight.grad.abs().sum() > 0 and field.layers[0].weight.grad.abs().sum() > 0


def test_harmonic_encoding_has_the_frequency_encoding_features() -> None:
    enc = harmonic_encoding(4)
    assert (
        isinstance(enc, HarmonicEncoding) and enc.out_features == FrequencyEncoding(4).out_features
    )
    p = 2 * torch.rand(50, 3, dtype=torch.float64) - 1
    ours, theirs = enc(p), FrequencyEncoding(4)(p)
    assert ours.shape == theirs.shape == (50, enc.out_features) and ours.dtype == torch.float64
    torch.testing.assert_close(ours.sort(-1).values, theirs.sort(-1).values, atol=1e-5, rtol=0)
    assert HarmonicEncoding(2, append_input=False)(p).shape == (50, 12)


# -- cameras and geometry ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["orthographic", "fov"])
@pytest.mark.parametrize(
    "geometry",
    [
        ParallelGeometry.ap_pa(GRID),
        ParallelGeometry.full_circle(GRID, 12, radius_mm=250.0),
        ParallelGeometry(
            OFF_GRID, (0.0, 90.0, 200.0), detector_shape=(4, 9), pixel_size_mm=(4.42, 3.3)
        ),
    ],
    ids=["ap-pa", "full-circle", "off-centre"],
)
def test_cameras_round_trip(geometry: ParallelGeometry, kind: str) -> None:
    cameras = cameras_from_geometry(geometry, kind=kind)  # type: ignore[arg-type]
    assert len(cameras) == geometry.n_views
    back = geometry_from_cameras(
        cameras, geometry.grid, detector_shape=geometry.detector_shape, radius_mm=geometry.radius_mm
    )
    assert back.detector_shape == geometry.detector_shape
    assert back.pixel_size_mm == geometry.pixel_size_mm
    assert back.radius_mm == geometry.radius_mm
    for a, b in zip(back.angles_deg, geometry.angles_deg, strict=True):
        assert abs((a - b + 180) % 360 - 180) < 1e-4
    for v in range(geometry.n_views):  # quadrants come back exact (the fast path applies)
        assert back.quadrant(v) == geometry.quadrant(v)
    # And back again: the same cameras.
    again = cameras_from_geometry(back, kind=kind, distance_mm=float(cameras.T[0, 2]))  # type: ignore[arg-type]
    torch.testing.assert_close(again.R, cameras.R, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.T, cameras.T)


def test_cameras_are_look_at_cameras_on_the_detector_side() -> None:
    geometry = ParallelGeometry.full_circle(GRID, 8, radius_mm=200.0)
    cameras = cameras_from_geometry(geometry)
    eyes = torch.stack([200.0 * _n(b) for b in geometry.angles_deg])
    R, T = look_at_view_transform(eye=eyes, at=((0, 0, 0),), up=((0, 0, 1),))
    torch.testing.assert_close(cameras.R, R, atol=1e-6, rtol=0)
    torch.testing.assert_close(cameras.T, T, atol=1e-4, rtol=0)
    torch.testing.assert_close(cameras.get_camera_center(), eyes, atol=1e-4, rtol=0)
    # Cameras built by look_at are read back as the same views.
    back = geometry_from_cameras(
        OrthographicCameras(focal_length=cameras.focal_length, R=R, T=T), GRID
    )
    assert all(abs(a - b) < 1e-4 for a, b in zip(back.angles_deg, geometry.angles_deg, strict=True))


def test_camera_pixels_are_our_pixels() -> None:
    """A point at the centre of our pixel (row k, bin b) lands on PyTorch3D pixel (rows−1−k, b)."""
    geometry = ParallelGeometry(GRID, (0.0, 90.0, 180.0, 270.0, 35.0), detector_shape=(5, 7))
    rows, bins = geometry.detector_shape
    cameras = cameras_from_geometry(geometry)
    k, b, depth = 1, 5, 7.0
    for v, beta in enumerate(geometry.angles_deg):
        rad = math.radians(beta)
        u = torch.tensor([math.cos(rad), -math.sin(rad), 0.0])
        r = (b - (bins - 1) / 2) * geometry.pixel_size_mm[1]
        z = (k - (rows - 1) / 2) * geometry.pixel_size_mm[0]
        point = r * u + torch.tensor([0.0, 0.0, z]) + depth * _n(beta)
        screen = cameras[v].transform_points_screen(point[None, None], image_size=((rows, bins),))
        assert torch.allclose(
            screen[0, 0, :2], torch.tensor([b + 0.5, rows - 1 - k + 0.5]), atol=1e-4
        )


def test_raysampler_follows_the_cameras() -> None:
    geometry = ParallelGeometry(
        OFF_GRID, (0.0, 180.0), detector_shape=(4, 9), pixel_size_mm=(4.0, 3.0)
    )
    sampler = SPECTRaysampler(geometry, dtype=torch.float64)
    own = sampler()
    from_cams = sampler(cameras_from_geometry(geometry, distance_mm=80.0))
    points = [o[..., None, :] + t[..., None] * d[..., None, :] for o, d, t, _ in (own, from_cams)]
    torch.testing.assert_close(points[0], points[1], atol=1e-5, rtol=0)
    # The lengths start at the camera: its plane is 80 mm from the axis along n(β).
    n = torch.stack([_n(b) for b in geometry.angles_deg]).double()
    torch.testing.assert_close(
        (from_cams.origins * n[:, None, None]).sum(-1),
        torch.full((2, 4, 9), 80.0, dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )
    # Only PA cameras: the sampler renders what the cameras see.
    pa = sampler(cameras_from_geometry(ParallelGeometry(OFF_GRID, (180.0,), (4, 9), (4.0, 3.0))))
    torch.testing.assert_close(pa.directions[0], own.directions[1], atol=1e-7, rtol=0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: look_at_view_transform(eye=((0.0, -100.0, 30.0),), up=((0, 0, 1),)), "transverse"),
        (lambda: look_at_view_transform(eye=((0.0, -100.0, 0.0),), up=((1, 0, 0),)), "rolled"),
        (lambda: look_at_view_transform(eye=((0.0, -100.0, 0.0),), up=((0, 0, -1),)), "rolled"),
        (
            lambda: look_at_view_transform(
                eye=((5.0, -100.0, 0.0),), at=((5.0, 0.0, 0.0),), up=((0, 0, 1),)
            ),
            "beside the rotation axis",
        ),
    ],
    ids=["tilted", "rolled", "upside-down", "off-axis"],
)
def test_unsupported_cameras_raise(make, match: str) -> None:
    R, T = make()
    with pytest.raises(ValueError, match=match):
        geometry_from_cameras(OrthographicCameras(R=R, T=T), GRID)


def test_perspective_mirrored_and_mixed_cameras_raise() -> None:
    R, T = look_at_view_transform(eye=((0.0, -100.0, 0.0),), up=((0, 0, 1),))
    with pytest.raises(ValueError, match="perspective"):
        geometry_from_cameras(FoVPerspectiveCameras(R=R, T=T), GRID)
    mirrored = R.clone()
    mirrored[:, :, 0] *= -1
    with pytest.raises(ValueError, match="mirrored"):
        geometry_from_cameras(OrthographicCameras(R=mirrored, T=T), GRID)
    with pytest.raises(ValueError, match="flips the image"):
        geometry_from_cameras(OrthographicCameras(focal_length=((-0.1, 0.1),), R=R, T=T), GRID)
    cams = OrthographicCameras(focal_length=((0.1,), (0.2,)), R=R.expand(2, 3, 3), T=T.expand(2, 3))
    with pytest.raises(ValueError, match="different NDC focal lengths"):
        geometry_from_cameras(cams, GRID)
    with pytest.raises(TypeError, match="must be a ParallelGeometry"):
        cameras_from_geometry("AP")  # type: ignore[arg-type]


def test_raysampler_errors() -> None:
    mixed = ParallelGeometry(GRID, (0.0, 30.0))
    with pytest.raises(ValueError, match="set n_pts_per_ray"):
        SPECTRaysampler(mixed)
    with pytest.raises(ValueError, match="use SPECTRaysampler"):
        multinomial_raysampler(mixed, 12)
    with pytest.raises(ValueError, match="positive integer"):
        SPECTRaysampler(mixed, 0)
    with pytest.raises(TypeError, match="float32"):
        render_spect(torch.zeros(GRID.shape, dtype=torch.float64), mixed, renderer="volume")


# -- Volumes -------------------------------------------------------------------------------------
def test_volumes_round_trip_and_voxel_positions() -> None:
    activity, mu = _volumes(OFF_GRID)
    volumes = volumes_from_grid(activity, mu, OFF_GRID)
    coords = volumes.get_coord_grid(world_coordinates=True)[0]  # [Z, Y, X, 3] (x, y, z)
    z, y, x = torch.meshgrid(*(OFF_GRID.centres_mm(a) for a in "zyx"), indexing="ij")
    torch.testing.assert_close(coords.double(), torch.stack([x, y, z], -1), atol=1e-5, rtol=0)
    back_activity, back_mu, grid = grid_from_volumes(volumes)
    assert grid == OFF_GRID
    assert torch.equal(back_activity, activity) and torch.equal(back_mu, mu)
    with pytest.raises(ValueError, match="at least 2 voxels"):
        volumes_from_grid(torch.zeros(1, 4, 4), None, ImageGrid((1, 4, 4), (4.0, 4.0, 4.0)))
    with pytest.raises(ValueError, match="shape"):
        volumes_from_grid(activity, mu, GRID)


def test_float64_volume_renders_through_the_implicit_renderer() -> None:
    activity, mu = _volumes(GRID, torch.float64)
    geometry = ParallelGeometry.ap_pa(GRID)
    out = render_spect(activity, geometry, mu)  # auto: float64 volumes go through GridField
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, project(activity, geometry, mu=mu), rtol=1e-12, atol=1e-12)
