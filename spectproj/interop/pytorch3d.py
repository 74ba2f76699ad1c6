"""SPECT rendering with PyTorch3D: a raymarcher, cameras, raysamplers and ``Volumes`` conversions.

This module is optional: it needs ``pytorch3d`` (``pip install -e ".[pytorch3d]"``, which installs
the ``easypytorch3d`` wheels built for ``torch==2.11.0``), and ``spectproj`` never imports it.

Conventions (see ``docs/pytorch3d.md``, ``docs/conventions.md``):

- PyTorch3D **world coordinates are the patient frame**: (X, Y, Z) = (x, y, z) in mm, DICOM LPS
  (+x patient left, +y posterior, +z head). ``Volumes`` arrays ``(D, H, W)`` are our ``[Z, Y, X]``.
- The camera of view β sits on the detector side, at ``distance·n(β)`` with
  n(β) = (−sin β, −cos β, 0), and looks toward the rotation axis along −n(β). Its view axes are
  +X_view = −u(β) (u(β) = (cos β, −sin β, 0) is the bin direction r), +Y_view = +z (head up),
  +Z_view = −n(β): ``R = [−u, e_z, −n]`` (columns), ``T = (0, 0, distance)``.
- NDC: a camera's NDC image is the detector, PyTorch3D style (pixel (i, j) of an image of
  ``rows × bins`` pixels, row 0 at the top). PyTorch3D pixel ``(i, j)`` is our detector pixel
  ``(rows − 1 − i, j)``: columns are our bins as they are, rows are flipped (our row 0 is at the
  feet). ``SPECTRaysampler`` and ``multinomial_raysampler`` emit rays in our order directly.
- PyTorch3D's rays start at the camera, so along a ray the first sample is the one **nearest the
  detector**: ``SPECTRaymarcher`` applies ``spectproj``'s midpoint rule in that order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Union

import torch
from torch import nn

try:
    from pytorch3d.renderer import (
        FoVOrthographicCameras,
        HarmonicEmbedding,
        ImplicitRenderer,
        MultinomialRaysampler,
        OrthographicCameras,
        RayBundle,
        VolumeRenderer,
        ray_bundle_to_ray_points,
    )
    from pytorch3d.renderer.cameras import CamerasBase
    from pytorch3d.renderer.implicit.utils import HeterogeneousRayBundle
    from pytorch3d.structures import Volumes
except ImportError as err:  # pragma: no cover - exercised only without pytorch3d
    raise ImportError(
        "spectproj.interop.pytorch3d needs pytorch3d, which is an optional dependency: install "
        'it with `pip install -e ".[pytorch3d]"` (easypytorch3d wheels, which need '
        f"torch==2.11.0 exactly). The import failed with: {err}"
    ) from err

from spectproj.geometry import ParallelGeometry
from spectproj.grid import ImageGrid
from spectproj.lattice import ViewLattice, detector_lattice
from spectproj.sampling import GridField

__all__ = [
    "HarmonicEncoding",
    "SPECTRaymarcher",
    "SPECTRaysampler",
    "SPECTVolumetricFunction",
    "cameras_from_geometry",
    "geometry_from_cameras",
    "grid_from_volumes",
    "harmonic_encoding",
    "multinomial_raysampler",
    "render_spect",
    "volumes_from_grid",
]

Field = Callable[[torch.Tensor], torch.Tensor]
FieldOrVolume = Union[torch.Tensor, Field]  # noqa: UP007 - a runtime alias
AnyRayBundle = Union[RayBundle, HeterogeneousRayBundle]  # noqa: UP007 - a runtime alias
Cameras = Union[OrthographicCameras, FoVOrthographicCameras]  # noqa: UP007 - a runtime alias

DEFAULT_ANGLE_TOLERANCE_DEG = 1e-3


# -- the raymarcher ------------------------------------------------------------------------------
class SPECTRaymarcher(nn.Module):
    """Attenuated emission line integrals: a PyTorch3D raymarcher with ``spectproj``'s rule.

    Plugs into ``pytorch3d.renderer.ImplicitRenderer`` and ``VolumeRenderer``: the densities are
    the linear attenuation coefficient μ (1/mm) and the features the activity (any unit *a*).
    For samples i along a ray **ordered from the camera (the detector) outward**, as PyTorch3D's
    raysamplers emit them, with widths Δ_i (mm)::

        value = Σ_i a_i · Δ_i · exp(−(Σ_{j<i} μ_j Δ_j + μ_i Δ_i / 2))

    which for uniform steps is exactly ``spectproj``'s midpoint rule
    ``Δ·exp(−Δ·(Σ_{j nearer the detector} μ_j + μ_i/2))`` (``docs/conventions.md``).

    Parameters
    ----------
    step_mm:
        Fixed sample width Δ in mm. ``None`` (default): from ``ray_bundle``: the distances between
        consecutive samples, ``diff(lengths)·|directions|`` (mm); a sample's width is half the
        distance between its two neighbours (the full step at the ends), so uniform samples all get
        the step Δ and stratified (jittered) samples get the width of their cell.
    append_opacity:
        Also return ``1 − exp(−Σ μ_i Δ_i)`` (the fraction of photons from beyond the ray that the
        medium absorbs) as a last channel, like PyTorch3D's raymarchers' opacity channel.
    """

    def __init__(self, *, step_mm: float | None = None, append_opacity: bool = False) -> None:
        super().__init__()
        if step_mm is not None and not (math.isfinite(step_mm) and step_mm > 0):
            raise ValueError(f"step_mm must be a positive length (mm) or None, got {step_mm!r}")
        self.step_mm = None if step_mm is None else float(step_mm)
        self.append_opacity = bool(append_opacity)

    def forward(
        self,
        rays_densities: torch.Tensor,
        rays_features: torch.Tensor,
        ray_bundle: AnyRayBundle | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        """Render each ray.

        Parameters
        ----------
        rays_densities:
            ``[..., S, 1]`` μ in 1/mm at the S samples of each ray, nearest the camera first.
        rays_features:
            ``[..., S, F]`` activity at the same samples.
        ray_bundle:
            The rays (``lengths [..., S]`` in units of ``|directions [..., 3]|`` mm); needed
            unless ``step_mm`` was given.

        Returns
        -------
        torch.Tensor
            ``[..., F]`` line integrals in activity·mm (``[..., F + 1]`` with
            ``append_opacity``, the last channel being the opacity).
        """
        if not isinstance(rays_densities, torch.Tensor) or not isinstance(
            rays_features, torch.Tensor
        ):
            raise TypeError("rays_densities and rays_features must be torch.Tensors")
        if rays_densities.dim() < 2 or rays_densities.shape[-1] != 1:
            raise ValueError(
                "rays_densities must have shape [..., n_points_per_ray, 1] (μ in 1/mm), got "
                f"{list(rays_densities.shape)}"
            )
        if rays_features.shape[:-1] != rays_densities.shape[:-1] or rays_features.shape[-1] < 1:
            raise ValueError(
                "rays_features must have shape [..., n_points_per_ray, n_features] matching "
                f"rays_densities {list(rays_densities.shape)}, got {list(rays_features.shape)}"
            )
        mu = rays_densities[..., 0]  # [..., S]
        widths = self._widths(mu, ray_bundle)
        tau = mu * widths  # optical thickness of each sample
        optical_depth = torch.cumsum(tau, dim=-1) - 0.5 * tau  # Σ_{j<i} τ_j + τ_i / 2
        weights = widths * torch.exp(-optical_depth)  # [..., S] in mm
        values = (weights.unsqueeze(-1) * rays_features).sum(dim=-2)  # [..., F]
        if not self.append_opacity:
            return values
        opacity = 1.0 - torch.exp(-tau.sum(dim=-1, keepdim=True))
        return torch.cat([values, opacity], dim=-1)

    def _widths(self, mu: torch.Tensor, ray_bundle: AnyRayBundle | None) -> torch.Tensor:
        """Sample widths in mm, ``[..., S]`` (or a scalar tensor for a fixed step)."""
        if self.step_mm is not None:
            return mu.new_tensor(self.step_mm)
        if ray_bundle is None:
            raise ValueError("SPECTRaymarcher needs ray_bundle (or step_mm) to know the step")
        lengths = ray_bundle.lengths
        if lengths.shape != mu.shape:
            raise ValueError(
                f"ray_bundle.lengths has shape {list(lengths.shape)} but the densities are "
                f"{list(mu.shape)} (one length per sample)"
            )
        if lengths.shape[-1] < 2:
            raise ValueError("one sample per ray has no step: give SPECTRaymarcher(step_mm=...)")
        scale = ray_bundle.directions.norm(dim=-1, keepdim=True)  # mm per unit of length
        gaps = torch.diff(lengths, dim=-1) * scale.to(lengths.dtype)  # [..., S-1] mm
        with torch.no_grad():
            if bool((gaps <= 0).any()):
                raise ValueError(
                    "ray_bundle.lengths must increase along each ray (samples ordered from the "
                    "camera outward)"
                )
        if gaps.shape[-1] == 1:
            widths = torch.cat([gaps, gaps], dim=-1)
        else:
            mid = 0.5 * (gaps[..., :-1] + gaps[..., 1:])
            widths = torch.cat([gaps[..., :1], mid, gaps[..., -1:]], dim=-1)
        return widths.to(mu.dtype)


# -- volumetric function -------------------------------------------------------------------------
class SPECTVolumetricFunction(nn.Module):
    """A PyTorch3D volumetric function returning (μ, activity) from ``spectproj`` fields.

    Parameters
    ----------
    activity:
        A field (callable mapping points ``[N, 3]``, (x, y, z) in mm, to ``[N]``; an
        ``nn.Module`` such as ``recon.nerf.field.EmissionField`` is registered as a submodule), or a
        volume ``[Z, Y, X]`` on ``grid`` (sampled trilinearly, zero outside, as ``GridField``).
    mu:
        Attenuation in 1/mm, a field or a volume on ``grid``; ``None``: no attenuation.
    grid:
        The grid of volume inputs (needed only for them).

    Notes
    -----
    Called by ``ImplicitRenderer`` as ``f(ray_bundle=..., **kwargs)``; returns
    ``(rays_densities [..., S, 1], rays_features [..., S, 1])``.
    """

    def __init__(
        self,
        activity: FieldOrVolume,
        mu: FieldOrVolume | None = None,
        grid: ImageGrid | None = None,
    ) -> None:
        super().__init__()
        self.activity = _as_field(activity, grid, "activity")
        self.mu = None if mu is None else _as_field(mu, grid, "mu")

    def forward(
        self, ray_bundle: AnyRayBundle, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        points = ray_bundle_to_ray_points(ray_bundle)  # [..., S, 3] (x, y, z) mm
        flat = points.reshape(-1, 3)
        act = _call_field(self.activity, flat, "activity").reshape(points.shape[:-1])
        if self.mu is None:
            mu = torch.zeros_like(act)
        else:
            mu = _call_field(self.mu, flat, "mu").reshape(points.shape[:-1])
        return mu.unsqueeze(-1), act.unsqueeze(-1)


def _as_field(value: FieldOrVolume, grid: ImageGrid | None, name: str) -> Field:
    if isinstance(value, torch.Tensor):
        if grid is None:
            raise ValueError(f"{name} is a volume: give its grid (an ImageGrid)")
        return GridField(value, grid)
    if callable(value):
        return value
    raise TypeError(f"{name} must be a field (callable) or a [Z, Y, X] tensor, got {type(value)}")


def _call_field(field: Field, points: torch.Tensor, name: str) -> torch.Tensor:
    out = field(points)
    if not isinstance(out, torch.Tensor) or out.numel() != points.shape[0]:
        raise ValueError(
            f"the {name} field must map points [N, 3] to values [N]; for N = {points.shape[0]} "
            f"it returned {getattr(out, 'shape', type(out))}"
        )
    return out.reshape(-1)


# -- Volumes <-> ImageGrid -----------------------------------------------------------------------
def volumes_from_grid(
    activity: torch.Tensor,
    mu: torch.Tensor | None,
    grid: ImageGrid,
    *,
    batch_size: int = 1,
) -> Volumes:
    """A ``pytorch3d.structures.Volumes`` holding μ as densities and activity as features.

    Parameters
    ----------
    activity:
        ``[Z, Y, X]`` activity on ``grid``.
    mu:
        ``[Z, Y, X]`` attenuation in 1/mm on ``grid``, or ``None`` (zeros).
    grid:
        Voxel positions. Every axis needs at least two voxels (PyTorch3D places voxel centres by
        ``(size − 1)·voxel_size``).
    batch_size:
        Number of (shared, not copied) entries: ``VolumeRenderer`` needs one per camera.

    Returns
    -------
    Volumes
        ``densities`` and ``features`` ``[batch_size, 1, Z, Y, X]`` (views of the inputs, so
        gradients flow back to them), ``voxel_size = (dx, dy, dz)``,
        ``volume_translation = −(ox, oy, oz)`` (PyTorch3D's sign: the centre voxel sits at
        ``−volume_translation``), ``align_corners=True``. Voxel ``[k, j, i]`` is then at world
        ``(x, y, z)`` exactly as ``ImageGrid`` places it.
    """
    if not isinstance(grid, ImageGrid):
        raise TypeError(f"grid must be an ImageGrid, got {type(grid).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if any(n < 2 for n in grid.shape):
        raise ValueError(
            f"pytorch3d Volumes need at least 2 voxels along every axis, got shape {grid.shape}"
        )
    act = _check_grid_volume("activity", activity, grid)
    m = torch.zeros_like(act) if mu is None else _check_grid_volume("mu", mu, grid)
    if m.dtype != act.dtype or m.device != act.device:
        raise ValueError(
            f"mu ({m.dtype}, {m.device}) and activity ({act.dtype}, {act.device}) must share "
            "dtype and device"
        )
    dz, dy, dx = grid.spacing_mm
    oz, oy, ox = grid.offset_mm
    shape = (batch_size, 1, *grid.shape)
    return Volumes(
        densities=m[None, None].expand(shape),
        features=act[None, None].expand(shape),
        voxel_size=(dx, dy, dz),
        volume_translation=(-ox, -oy, -oz),
        align_corners=True,
    )


def grid_from_volumes(
    volumes: Volumes, index: int = 0
) -> tuple[torch.Tensor, torch.Tensor, ImageGrid]:
    """``(activity, mu, grid)`` of entry ``index`` of a ``Volumes`` (the inverse of
    ``volumes_from_grid``).

    Returns
    -------
    activity:
        ``[Z, Y, X]``, the features (one channel).
    mu:
        ``[Z, Y, X]``, the densities (one channel), 1/mm.
    grid:
        ``ImageGrid`` with spacing and offset read from the volume's local-to-world transform
        (float32 in PyTorch3D: spacings are rounded to 6 significant digits).
    """
    if not isinstance(volumes, Volumes):
        raise TypeError(f"volumes must be pytorch3d Volumes, got {type(volumes).__name__}")
    if not -len(volumes) <= index < len(volumes):
        raise IndexError(f"index {index} out of range for {len(volumes)} volumes")
    densities = volumes.densities_list()[index]
    features = volumes.features_list()[index] if volumes.features() is not None else None
    if densities.shape[0] != 1:
        raise ValueError(f"densities must have one channel (μ), got {densities.shape[0]}")
    if features is None or features.shape[0] != 1:
        raise ValueError("volumes must have one feature channel (the activity)")
    shape = tuple(int(n) for n in densities.shape[1:])  # (Z, Y, X)
    matrix = volumes.get_local_to_world_coords_transform().get_matrix()[index]
    matrix = matrix.detach().to("cpu", torch.float64)  # row-vector convention: p @ M
    off_diagonal = matrix[:3, :3] - torch.diag(torch.diagonal(matrix[:3, :3]))
    if bool(off_diagonal.abs().max() > 1e-6 * matrix[:3, :3].abs().max()):
        raise ValueError("the volume's local-to-world transform is not axis-aligned")
    scale_xyz = torch.diagonal(matrix[:3, :3]).tolist()
    centre_xyz = matrix[3, :3].tolist()
    align = volumes.get_align_corners()
    spacing = []
    for axis, n in zip((2, 1, 0), reversed(shape), strict=True):  # x, y, z
        scale = scale_xyz[2 - axis]
        if not scale > 0:
            raise ValueError(
                f"cannot recover the voxel size along {'zyx'[axis]} (size {n}, scale {scale})"
            )
        d = 2.0 * scale / ((n - 1) if align else n)
        spacing.append(float(f"{d:.6g}"))
    dx, dy, dz = spacing
    grid = ImageGrid(
        shape=shape,  # type: ignore[arg-type]  # ImageGrid checks the length
        spacing_mm=(dz, dy, dx),
        offset_mm=(centre_xyz[2], centre_xyz[1], centre_xyz[0]),
    )
    return features[0], densities[0], grid


def _check_grid_volume(name: str, volume: torch.Tensor, grid: ImageGrid) -> torch.Tensor:
    if not isinstance(volume, torch.Tensor) or not volume.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor [Z, Y, X]")
    if tuple(volume.shape) != grid.shape:
        raise ValueError(
            f"{name} must have the grid's shape [Z, Y, X] = {list(grid.shape)}, "
            f"got {list(volume.shape)}"
        )
    return volume


# -- cameras <-> geometry ------------------------------------------------------------------------
def cameras_from_geometry(
    geometry: ParallelGeometry,
    *,
    kind: Literal["orthographic", "fov"] = "orthographic",
    distance_mm: float | None = None,
    device: torch.device | str = "cpu",
) -> Cameras:
    """One PyTorch3D orthographic camera per view of ``geometry``, in the order of its angles.

    Parameters
    ----------
    geometry:
        Angles, detector shape ``(rows, bins)`` and pixel size.
    kind:
        ``"orthographic"``: ``OrthographicCameras`` (NDC, focal lengths ``(fx, fy)``);
        ``"fov"``: ``FoVOrthographicCameras`` with ``max_x = −min_x = 1/fx`` and likewise y.
    distance_mm:
        Distance from the rotation axis to the camera (orthographic rays do not depend on it;
        it sets the ray lengths). Default: ``geometry.radius_mm``, else the radius of the
        cylinder around the axis that encloses the grid.
    device:
        Device of the cameras.

    Returns
    -------
    OrthographicCameras | FoVOrthographicCameras
        ``V`` cameras: camera v at ``distance·n(β_v)`` looking along −n(β_v),
        ``R = [−u, e_z, −n]`` (columns: X_view = −u, image up = +z, view direction −n),
        ``T = (0, 0, distance)`` (this equals ``look_at_view_transform(eye=distance·n,
        at=(0, 0, 0), up=(0, 0, 1))``). The NDC image of ``rows × bins`` pixels is the detector:
        ``fx = 2/(min(rows, bins)·bin width)``, ``fy = 2/(min(rows, bins)·row height)`` so that
        PyTorch3D pixel ``(i, j)`` is our pixel ``(rows − 1 − i, j)``.
    """
    if not isinstance(geometry, ParallelGeometry):
        raise TypeError(f"geometry must be a ParallelGeometry, got {type(geometry).__name__}")
    if kind not in ("orthographic", "fov"):
        raise ValueError(f"kind must be 'orthographic' or 'fov', got {kind!r}")
    distance = _camera_distance(geometry, distance_mm)
    n_views = geometry.n_views
    rot = torch.zeros(n_views, 3, 3, dtype=torch.float64)
    for v in range(n_views):
        (ux, uy), (nx, ny) = _directions(geometry, v)
        rot[v, :, 0] = torch.tensor([-ux, -uy, 0.0], dtype=torch.float64)
        rot[v, :, 1] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        rot[v, :, 2] = torch.tensor([-nx, -ny, 0.0], dtype=torch.float64)
    trans = torch.tensor([[0.0, 0.0, distance]], dtype=torch.float64).repeat(n_views, 1)
    fx, fy = _ndc_focal(geometry)
    r32, t32 = rot.to(torch.float32), trans.to(torch.float32)
    if kind == "orthographic":
        return OrthographicCameras(
            focal_length=torch.tensor([[fx, fy]], dtype=torch.float32).repeat(n_views, 1),
            principal_point=torch.zeros(n_views, 2, dtype=torch.float32),
            R=r32,
            T=t32,
            device=device,
            in_ndc=True,
        )
    reach = _enclosing_radius(geometry.grid)
    return FoVOrthographicCameras(
        znear=distance - reach,
        zfar=distance + reach,
        max_x=1.0 / fx,
        min_x=-1.0 / fx,
        max_y=1.0 / fy,
        min_y=-1.0 / fy,
        R=r32,
        T=t32,
        device=device,
    )


def geometry_from_cameras(
    cameras: CamerasBase,
    grid: ImageGrid,
    *,
    detector_shape: tuple[int, int] | None = None,
    radius_mm: float | None = None,
    angle_tolerance_deg: float = DEFAULT_ANGLE_TOLERANCE_DEG,
) -> ParallelGeometry:
    """The ``ParallelGeometry`` whose views are ``cameras`` (the inverse of
    ``cameras_from_geometry``).

    Supported cameras are those of a parallel-hole camera rotating about the z axis: orthographic
    (``OrthographicCameras``, ``FoVOrthographicCameras``), looking along a direction in the
    transverse (x, y) plane toward the rotation axis (the image centre on the line x = y = 0,
    at z = 0), with the image's up axis along +z and no mirroring; all with one pixel size.

    Parameters
    ----------
    cameras:
        V cameras, one per view.
    grid:
        The image grid of the geometry.
    detector_shape:
        ``(rows, bins)`` of the images the cameras render (PyTorch3D cameras do not store it);
        default ``(Z, X)`` of ``grid``. With it the NDC focal lengths give the pixel size.
    radius_mm:
        Passed to the geometry (the camera distance is not the collimator radius).
    angle_tolerance_deg:
        Largest tilt/roll (degrees) accepted as zero; angles this close to a multiple of 90°
        are snapped to it (so the projector's axis-aligned fast path applies).

    Returns
    -------
    ParallelGeometry
        Angles ``β = atan2(d_x, d_y)`` (degrees, d = view direction = −n(β)), pixel size
        ``(2/(m·fy), 2/(m·fx))`` mm with ``m = min(rows, bins)``, rounded to 6 significant digits.

    Raises
    ------
    ValueError
        For a perspective camera, a view direction tilted out of the transverse plane, a rolled
        or mirrored image, an image not centred on the rotation axis, or differing pixel sizes.
    """
    if not isinstance(cameras, CamerasBase):
        raise TypeError(f"cameras must be PyTorch3D cameras, got {type(cameras).__name__}")
    if not isinstance(grid, ImageGrid):
        raise TypeError(f"grid must be an ImageGrid, got {type(grid).__name__}")
    if cameras.is_perspective():
        raise ValueError(
            f"{type(cameras).__name__} are perspective cameras; a parallel-hole SPECT view needs "
            "an orthographic camera (OrthographicCameras or FoVOrthographicCameras)"
        )
    shape = tuple(detector_shape) if detector_shape is not None else (grid.shape[0], grid.shape[2])
    rows, bins = (int(n) for n in shape)
    tol = math.radians(float(angle_tolerance_deg))
    rot = cameras.R.detach().to("cpu", torch.float64)
    trans = cameras.T.detach().to("cpu", torch.float64)
    fx, fy, off_x, off_y = _ndc_intrinsics(cameras)
    m = min(rows, bins)
    angles = []
    for c in range(rot.shape[0]):
        x_axis, y_axis, view = rot[c, :, 0], rot[c, :, 1], rot[c, :, 2]
        tilt = math.degrees(math.asin(min(1.0, abs(float(view[2])))))
        if tilt > angle_tolerance_deg:
            raise ValueError(
                f"camera {c} looks along {_fmt(view)} (x, y, z), {tilt:.4g}° out of the transverse "
                "(x, y) plane; spectproj geometries rotate about the z axis only"
            )
        if float(y_axis[2]) < math.cos(tol):
            raise ValueError(
                f"camera {c} has its image up axis along {_fmt(y_axis)}; spectproj needs +z (head "
                "up, rows along z): the camera is rolled about its view direction"
            )
        if float(torch.dot(torch.linalg.cross(y_axis, view), x_axis)) < 0:
            raise ValueError(f"camera {c} has a mirrored (left-handed) rotation R")
        if not (fx[c] > 0 and fy[c] > 0):
            raise ValueError(
                f"camera {c} flips the image (NDC focal lengths {fx[c]:.6g}, {fy[c]:.6g}); "
                "they must be positive"
            )
        p_bin, p_row = 2.0 / (m * fx[c]), 2.0 / (m * fy[c])
        # The rotation axis (0, 0, z) is at X_view = T_x; z = 0 at Y_view = T_y: image centre?
        shift_r = float(trans[c, 0]) + off_x[c] / fx[c]
        shift_z = float(trans[c, 1]) + off_y[c] / fy[c]
        slack = 1e-6 * float(trans[c].abs().max())
        if abs(shift_r) > 1e-3 * p_bin + slack or abs(shift_z) > 1e-3 * p_row + slack:
            raise ValueError(
                f"camera {c}'s image centre is {shift_r:.4g} mm beside the rotation axis and "
                f"{shift_z:.4g} mm from z = 0; spectproj detectors are centred on the axis at z = 0"
            )
        beta = math.degrees(math.atan2(float(view[0]), float(view[1])))
        angles.append(_snap_angle(beta, angle_tolerance_deg))
    for name, f in (("fx", fx), ("fy", fy)):
        if max(f) - min(f) > 1e-5 * max(f):
            raise ValueError(
                f"cameras have different NDC focal lengths {name} ({min(f):.6g}..{max(f):.6g}); "
                "a ParallelGeometry has one pixel size"
            )
    pixel = (float(f"{2.0 / (m * fy[0]):.6g}"), float(f"{2.0 / (m * fx[0]):.6g}"))
    return ParallelGeometry(
        grid,
        angles_deg=tuple(angles),
        detector_shape=(rows, bins),
        pixel_size_mm=pixel,
        radius_mm=radius_mm,
    )


def _ndc_intrinsics(
    cameras: CamerasBase,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """``(fx, fy, px, py)`` per camera: ``x_ndc = fx·X_view + px``, ``y_ndc = fy·Y_view + py``."""
    to_ndc = cameras.get_projection_transform()
    if not cameras.in_ndc():
        to_ndc = to_ndc.compose(cameras.get_ndc_camera_transform())
    n = cameras.R.shape[0]
    probe = torch.tensor(
        [[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 2.0]],
        dtype=torch.float32,
        device=cameras.device,
    ).expand(n, 4, 3)
    ndc = to_ndc.transform_points(probe).detach().to("cpu", torch.float64)  # [N, 4, 3]
    fx = ndc[:, 1, 0] - ndc[:, 0, 0]
    fy = ndc[:, 2, 1] - ndc[:, 0, 1]
    scale = torch.maximum(fx.abs(), fy.abs())
    depth = (ndc[:, 3, :2] - ndc[:, 0, :2]).T  # [2, N]: orthographic → 0
    mixing = torch.stack(
        [ndc[:, 1, 1] - ndc[:, 0, 1], ndc[:, 2, 0] - ndc[:, 0, 0], depth[0], depth[1]]
    ).abs()
    if bool((mixing > 1e-5 * scale).any()):
        raise ValueError(
            "the cameras' projection is not an axis-aligned orthographic one (x_ndc and y_ndc "
            "must depend on X_view and Y_view only, each on its own)"
        )
    return fx.tolist(), fy.tolist(), ndc[:, 0, 0].tolist(), ndc[:, 0, 1].tolist()


def _fmt(v: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(a):.4g}" for a in v) + ")"


def _snap_angle(beta: float, tolerance_deg: float) -> float:
    k = round(beta / 90.0)
    if abs(beta - 90.0 * k) <= tolerance_deg:
        return float((90 * k) % 360)
    return beta % 360.0


def _directions(geometry: ParallelGeometry, view: int) -> tuple[tuple[float, float], ...]:
    """``(u, n)`` of view ``view`` as (x, y) pairs, exact for axis-aligned views."""
    lat = ViewLattice(geometry.angles_deg[view], geometry.quadrant(view), (), (), 1.0, 1.0)
    return lat.directions()


def _ndc_focal(geometry: ParallelGeometry) -> tuple[float, float]:
    rows, bins = geometry.detector_shape
    p_row, p_bin = geometry.pixel_size_mm
    m = min(rows, bins)
    return 2.0 / (m * p_bin), 2.0 / (m * p_row)


def _enclosing_radius(grid: ImageGrid) -> float:
    _, oy, ox = grid.offset_mm
    return 0.5 * grid.inplane_diagonal_mm + math.hypot(ox, oy)


def _camera_distance(geometry: ParallelGeometry, distance_mm: float | None) -> float:
    if distance_mm is not None:
        d = float(distance_mm)
        if not (math.isfinite(d) and d > 0):
            raise ValueError(f"distance_mm must be a positive length (mm), got {distance_mm!r}")
        return d
    if geometry.radius_mm is not None:
        return float(geometry.radius_mm)
    return _enclosing_radius(geometry.grid)


# -- raysamplers ---------------------------------------------------------------------------------
def _depth_comb(
    geometry: ParallelGeometry, view: int, n_pts_per_ray: int | None
) -> tuple[tuple[float, ...], float]:
    """Depth samples s (mm, increasing: far → near the detector) and step of a view's rays.

    The same samples as ``SPECTProjector``'s fields (``n_samples=n_pts_per_ray``).
    """
    lat = detector_lattice(geometry, view)
    s, step = lat.s_mm, lat.step_s_mm
    if n_pts_per_ray is None or n_pts_per_ray == len(s):
        return s, step
    length = len(s) * step
    centre = 0.5 * (s[0] + s[-1])
    new_step = length / n_pts_per_ray
    comb = tuple(centre + (k - (n_pts_per_ray - 1) / 2) * new_step for k in range(n_pts_per_ray))
    return comb, new_step


def _check_n_pts(n_pts_per_ray: int | None) -> int | None:
    if n_pts_per_ray is not None and (
        isinstance(n_pts_per_ray, bool) or not isinstance(n_pts_per_ray, int) or n_pts_per_ray < 1
    ):
        raise ValueError(f"n_pts_per_ray must be a positive integer or None, got {n_pts_per_ray!r}")
    return n_pts_per_ray


class SPECTRaysampler(nn.Module):
    """One ray per detector pixel with ``spectproj``'s depth samples: renders ``[V, rows, bins]``.

    A PyTorch3D raysampler (``raysampler(cameras=..., **kwargs) -> RayBundle``) for
    ``ImplicitRenderer`` and ``VolumeRenderer``. Ray ``[v, row, bin]`` goes through the centre of
    detector pixel ``(row, bin)`` of view v, and its samples are the depth samples that
    ``SPECTProjector`` uses for fields, nearest the detector first, so that
    ``renderer(...)[0][..., 0]`` equals ``spectproj.project`` of a field pixel for pixel.

    Parameters
    ----------
    geometry:
        Grid, angles and detector.
    n_pts_per_ray:
        Samples per ray over each view's depth range (as ``project(..., n_samples=...)``).
        Default: the projector's lattice (one per voxel for axis-aligned views); views with
        different counts (axis-aligned and oblique) then need an explicit value.
    dtype, device:
        Of the rays (computed in float64).

    Notes
    -----
    ``forward(cameras)`` honours the cameras: their angles and pixel size are read with
    ``geometry_from_cameras`` (on ``geometry``'s grid and detector shape) and the ray lengths start
    at each camera (``T_z`` from the axis). Without cameras, it renders ``geometry``'s views from
    cameras at ``cameras_from_geometry``'s default distance.
    """

    def __init__(
        self,
        geometry: ParallelGeometry,
        n_pts_per_ray: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(geometry, ParallelGeometry):
            raise TypeError(f"geometry must be a ParallelGeometry, got {type(geometry).__name__}")
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        self.geometry = geometry
        self.n_pts_per_ray = _check_n_pts(n_pts_per_ray)
        self.register_buffer("_probe", torch.zeros(0, dtype=dtype, device=device), persistent=False)
        self._combs(geometry)  # fail early on mixed sample counts

    def _combs(self, geometry: ParallelGeometry) -> list[tuple[tuple[float, ...], float]]:
        combs = [_depth_comb(geometry, v, self.n_pts_per_ray) for v in range(geometry.n_views)]
        counts = sorted({len(s) for s, _ in combs})
        if len(counts) > 1:
            raise ValueError(
                f"views have different numbers of depth samples {counts} (AP/PA sample the Y "
                "voxels, 90°/270° the X voxels, oblique views the in-plane diagonal); set "
                "n_pts_per_ray"
            )
        return combs

    def forward(
        self,
        cameras: CamerasBase | None = None,
        *,
        jitter: bool = False,
        generator: torch.Generator | None = None,
        **kwargs: object,
    ) -> RayBundle:
        """Rays of every pixel of every view.

        Parameters
        ----------
        cameras:
            V cameras (see the class notes), or ``None`` for ``geometry``'s views.
        jitter:
            Shift each ray's samples by one random fraction of a step (``spectproj``'s
            stratified sampling; the step stays uniform), using ``generator``.

        Returns
        -------
        RayBundle
            ``origins``, ``directions`` (unit, −n(β)) ``[V, rows, bins, 3]`` (world = patient mm),
            ``lengths [V, rows, bins, S]`` (mm from the camera, increasing), ``xys
            [V, rows, bins, 2]`` (the pixel's NDC coordinates in the cameras of
            ``cameras_from_geometry``).
        """
        dtype, device = self._probe.dtype, self._probe.device
        geometry = self.geometry
        if cameras is not None:
            geometry = geometry_from_cameras(
                cameras,
                geometry.grid,
                detector_shape=geometry.detector_shape,
                radius_mm=geometry.radius_mm,
            )
            distances = cameras.T.detach().to("cpu", torch.float64)[:, 2].tolist()
            device = cameras.device
        else:
            distances = [_camera_distance(geometry, None)] * geometry.n_views
        combs = self._combs(geometry)
        rows, bins = geometry.detector_shape
        f64: dict[str, Any] = {"dtype": torch.float64}
        r = geometry.detector_centres_mm(1)  # [W]
        z = geometry.detector_centres_mm(0)  # [H]
        origins, directions, lengths = [], [], []
        for v, ((s, _), dist) in enumerate(zip(combs, distances, strict=True)):
            (ux, uy), (nx, ny) = _directions(geometry, v)
            u = torch.tensor([ux, uy, 0.0], **f64)
            n = torch.tensor([nx, ny, 0.0], **f64)
            ez = torch.tensor([0.0, 0.0, 1.0], **f64)
            o = r[None, :, None] * u + z[:, None, None] * ez + dist * n  # [H, W, 3]
            origins.append(o)
            directions.append((-n).expand(rows, bins, 3))
            t = dist - torch.flip(torch.tensor(s, **f64), (0,))  # increasing: near → far
            lengths.append(t.expand(rows, bins, -1))
        lengths_t = torch.stack(lengths)
        if jitter:
            steps = torch.tensor([step for _, step in combs], **f64)
            shift = torch.rand(geometry.n_views, rows, bins, 1, generator=generator, **f64)
            lengths_t = lengths_t + (shift - 0.5) * steps[:, None, None, None]
        fx, fy = _ndc_focal(geometry)
        xy = torch.stack(torch.broadcast_tensors(-fx * r[None, :], fy * z[:, None]), dim=-1)
        out: dict[str, Any] = {"dtype": dtype, "device": device}
        return RayBundle(
            origins=torch.stack(origins).to(**out),
            directions=torch.stack(directions).to(**out),
            lengths=lengths_t.to(**out),
            xys=xy.expand(geometry.n_views, rows, bins, 2).to(**out),
        )


def multinomial_raysampler(
    geometry: ParallelGeometry,
    n_pts_per_ray: int | None = None,
    *,
    distance_mm: float | None = None,
    **kwargs: object,
) -> MultinomialRaysampler:
    """PyTorch3D's ``MultinomialRaysampler`` configured to ``geometry``'s detector.

    For the cameras of ``cameras_from_geometry(geometry, distance_mm=distance_mm)``: pixel-centre
    rays in our order ``[V, rows, bins]`` (NDC x from ``+`` to ``−``: bins along r; NDC y from
    ``−`` to ``+``: rows along z) and the same depth samples as ``SPECTRaysampler``. Float32
    throughout (PyTorch3D's cameras are); ``kwargs`` go to ``MultinomialRaysampler`` (e.g.
    ``n_rays_per_image`` or ``stratified_sampling``).

    Raises
    ------
    ValueError
        If the views' depth samples differ (e.g. oblique and axis-aligned views, or an off-centre
        grid): PyTorch3D's sampler uses one depth range for all cameras; use ``SPECTRaysampler``.
    """
    if not isinstance(geometry, ParallelGeometry):
        raise TypeError(f"geometry must be a ParallelGeometry, got {type(geometry).__name__}")
    _check_n_pts(n_pts_per_ray)
    combs = [_depth_comb(geometry, v, n_pts_per_ray) for v in range(geometry.n_views)]
    s0 = combs[0][0]
    for s, _ in combs[1:]:
        if len(s) != len(s0) or any(
            abs(a - b) > 1e-9 * (1 + abs(b)) for a, b in zip(s, s0, strict=True)
        ):
            raise ValueError(
                "the views sample different depth ranges (mixed axis-aligned/oblique views or an "
                "off-centre grid); MultinomialRaysampler uses one range: use SPECTRaysampler"
            )
    distance = _camera_distance(geometry, distance_mm)
    rows, bins = geometry.detector_shape
    m = min(rows, bins)
    half_x = (bins - 1) / m  # NDC of the outermost pixel centres
    half_y = (rows - 1) / m
    return MultinomialRaysampler(
        min_x=half_x,
        max_x=-half_x,
        min_y=-half_y,
        max_y=half_y,
        image_width=bins,
        image_height=rows,
        n_pts_per_ray=len(s0),
        min_depth=distance - s0[-1],
        max_depth=distance - s0[0],
        **kwargs,
    )


# -- one call ------------------------------------------------------------------------------------
def render_spect(
    activity: FieldOrVolume | Volumes,
    geometry: ParallelGeometry,
    mu: FieldOrVolume | None = None,
    *,
    renderer: Literal["auto", "volume", "implicit"] = "auto",
    n_pts_per_ray: int | None = None,
    cameras: CamerasBase | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Attenuated projections ``[V, rows, bins]`` (activity·mm) rendered by PyTorch3D.

    The recipe, in one call: ``SPECTRaysampler`` + ``SPECTRaymarcher`` in a ``VolumeRenderer``
    (for volumes on ``geometry.grid``, or ``Volumes``) or an ``ImplicitRenderer`` (for fields,
    through ``SPECTVolumetricFunction``), with ``cameras_from_geometry(geometry)``.

    For fields the result equals ``spectproj.project(activity, geometry, mu=mu,
    n_samples=n_pts_per_ray)`` (no collimator blur) pixel for pixel, for any detector. For volumes
    it equals ``project`` of the volume where the detector pixels are the projector's lattice
    (the default detector: pixels the size of the voxels), and ``project`` of
    ``GridField(volume, grid)`` otherwise (one ray per pixel centre, no area rebinning).

    Parameters
    ----------
    activity:
        A volume ``[Z, Y, X]`` on ``geometry.grid``, a ``Volumes`` (densities μ, features
        activity; one entry, or one per view), or a field (a callable, points ``[N, 3]`` in mm →
        values ``[N]``).
    geometry:
        The views.
    mu:
        Attenuation (1/mm), a volume or a field; ignored for ``Volumes`` (their densities are μ).
    renderer:
        ``"volume"`` (``VolumeRenderer``, trilinear ``grid_sample``; float32 only, like
        PyTorch3D's ``Volumes``), ``"implicit"`` (``ImplicitRenderer``; volumes are sampled as
        ``GridField``), or ``"auto"``: volume for float32 tensors and ``Volumes``, else implicit.
    n_pts_per_ray:
        Samples per ray (see ``SPECTRaysampler``).
    cameras:
        Default ``cameras_from_geometry(geometry)`` on the input's device.
    dtype:
        Of the rays; default the activity's (float32 for fields and ``Volumes``).
    """
    if renderer not in ("auto", "volume", "implicit"):
        raise ValueError(f"renderer must be 'auto', 'volume' or 'implicit', got {renderer!r}")
    float32_volume = isinstance(activity, Volumes) or (
        isinstance(activity, torch.Tensor) and activity.dtype == torch.float32
    )
    if renderer == "auto":
        kind = "volume" if float32_volume else "implicit"
    else:
        kind = renderer
    if isinstance(activity, Volumes) and kind != "volume":
        raise ValueError("Volumes render with renderer='volume'")
    if kind == "volume" and not float32_volume:
        raise TypeError(
            "renderer='volume' works in float32 (PyTorch3D's Volumes transforms are float32); "
            f"got {getattr(activity, 'dtype', type(activity).__name__)}: use renderer='implicit'"
        )
    device = _device_of(activity, mu)
    if dtype is None:
        dtype = activity.dtype if isinstance(activity, torch.Tensor) else torch.float32
    if cameras is None:
        cameras = cameras_from_geometry(geometry, device=device)
    sampler = SPECTRaysampler(geometry, n_pts_per_ray, dtype=dtype, device=device)
    marcher = SPECTRaymarcher()
    n_views = geometry.n_views
    if kind == "volume":
        if isinstance(activity, Volumes):
            volumes = activity if len(activity) == n_views else activity[[0] * n_views]
        elif isinstance(activity, torch.Tensor) and (mu is None or isinstance(mu, torch.Tensor)):
            volumes = volumes_from_grid(activity, mu, geometry.grid, batch_size=n_views)
        else:
            raise TypeError("renderer='volume' needs activity and mu as [Z, Y, X] tensors")
        images, _ = VolumeRenderer(sampler, marcher)(cameras=cameras, volumes=volumes)
    else:
        function = SPECTVolumetricFunction(activity, mu, geometry.grid)
        images, _ = ImplicitRenderer(sampler, marcher)(
            cameras=cameras, volumetric_function=function
        )
    return images[..., 0]


def _device_of(*candidates: object) -> torch.device:
    """The device of the first tensor, ``Volumes`` or module with tensors; else the CPU."""
    for c in candidates:
        if isinstance(c, (torch.Tensor, Volumes)):
            return torch.device(c.device)
        if isinstance(c, nn.Module):
            for t in (*c.parameters(), *c.buffers()):
                return t.device
    return torch.device("cpu")


# -- positional encoding -------------------------------------------------------------------------
class HarmonicEncoding(nn.Module):
    """PyTorch3D's ``HarmonicEmbedding`` as a positional encoding for ``EmissionField``.

    ``[..., 3] → [..., out_features]``, ``out_features = 3·(2·n_frequencies + 1)`` (with the
    input appended): with ``omega_0 = π`` the same features as ``recon.nerf.encodings.
    FrequencyEncoding`` (``sin``/``cos`` of ``2^k·π·p``, k < n_frequencies, and p), in PyTorch3D's
    order. Points are expected in the unit cube, as ``EmissionField`` normalises them.

    Parameters
    ----------
    n_frequencies:
        Number of octaves.
    omega_0:
        Base angular frequency (radians per unit of the input).
    append_input:
        Append the input itself.
    """

    def __init__(
        self, n_frequencies: int = 10, *, omega_0: float = math.pi, append_input: bool = True
    ) -> None:
        super().__init__()
        if (
            isinstance(n_frequencies, bool)
            or not isinstance(n_frequencies, int)
            or n_frequencies < 0
        ):
            raise ValueError(f"n_frequencies must be a non-negative integer, got {n_frequencies!r}")
        self.n_frequencies = n_frequencies
        self.append_input = bool(append_input)
        self.embedding = HarmonicEmbedding(
            n_harmonic_functions=n_frequencies,
            omega_0=omega_0,
            logspace=True,
            append_input=append_input,
        )

    @property
    def out_features(self) -> int:
        """Length of the encoding of one 3D point."""
        return 3 * (2 * self.n_frequencies + int(self.append_input))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        """``[..., 3] → [..., out_features]`` (the dtype of ``p``)."""
        return self.embedding(p).to(p.dtype)


def harmonic_encoding(
    n_frequencies: int = 10, *, omega_0: float = math.pi, append_input: bool = True
) -> HarmonicEncoding:
    """A ``HarmonicEncoding``: swap it into an ``EmissionField`` before training, e.g.
    ``field.encoding = harmonic_encoding(field.config.n_frequencies)`` (same ``out_features`` as
    the field's frequency encoding, so the network's layers stay as they are).
    """
    return HarmonicEncoding(n_frequencies, omega_0=omega_0, append_input=append_input)
