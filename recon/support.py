"""Where activity may be: the support of a reconstruction (the body, or the segmented organs).

Two planar views cannot tell depth; without a support, MLEM and the NeRF put about half of the
activity in the air around the patient. Every reconstruction therefore keeps its activity inside
a support when the study allows one:

- `support_mask`: the support ``[Z, Y, X]`` (bool) of a study, of a kind in `SUPPORT_KINDS`:

  ``"body"``
      the anatomy's body outline when the study has one; else the body from μ
      (``μ > BODY_MU_FRACTION · μ_water(E)`` at the study energy); else from the CT
      (``HU > BODY_HU``). The thresholded bodies have their holes filled (in 3D, then slice by
      slice), so lungs and bowel gas stay inside, and are grown by one voxel into the voxels that
      are not pure air (μ > 0, HU > ``AIR_HU``), so the edge voxels that are partly air (below
      the threshold, yet holding activity) stay inside too. A study
      with only segment labels gets their union, filled.
  ``"anatomy"``
      the union of the anatomy's segments (``Study.anatomy.labels > 0``).
  ``"none"``
      no support (``None``).

- `resolve_support`: the support a command uses for an optional request, with a one-line note
  for the result's parameters (the default is the body when the study has μ, a CT or an anatomy,
  else none).
- `SupportedField`: a representation multiplied by the support read at the points, so a field
  has no activity outside it (`recon.nerf.training.fit` applies it with ``support=``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from recon.io.study import Study
from spectproj import GridField
from spectproj.physics import water_mu_per_mm

__all__ = [
    "AIR_HU",
    "BODY_HU",
    "BODY_MU_FRACTION",
    "SUPPORT_KINDS",
    "SupportedField",
    "representation_volume",
    "resolve_support",
    "support_mask",
]

#: The kinds of support `support_mask` knows.
SUPPORT_KINDS = ("body", "anatomy", "none")
#: The body from μ: voxels with μ above this fraction of water's μ at the study energy (air is
#: ~0.001, lung ~0.25, soft tissue ~1).
BODY_MU_FRACTION = 0.1
#: The body from the CT: voxels above this CT number (HU; air −1000, lung about −750 … −600 is
#: then a hole that the filling closes, soft tissue ~0).
BODY_HU = -500.0
#: Pure air in a CT (HU at or below it): the body's edge grows only into voxels above it.
AIR_HU = -990.0


def support_mask(study: Study, kind: str = "body") -> np.ndarray | None:
    """The support of ``study``: ``[Z, Y, X]`` bool on ``study.grid``, or ``None`` for ``"none"``.

    Parameters
    ----------
    study:
        The study (its ``anatomy``, ``mu_per_mm`` and ``ct_hu`` are used, in that order, for
        ``"body"``).
    kind:
        ``"body"``, ``"anatomy"`` or ``"none"`` (see the module notes).

    Raises
    ------
    ValueError
        An unknown kind; ``"body"`` for a study with no anatomy, μ or CT; ``"anatomy"`` for a
        study without an anatomy (or with no segment); a support with no voxel.
    """
    mask, _ = _support(study, kind)
    return mask


def resolve_support(study: Study, requested: str | None = None) -> tuple[np.ndarray | None, str]:
    """The support to use and a one-line note on it, e.g. for a result's parameters.

    ``requested`` ``None`` (the default of the commands) takes the body when the study has an
    anatomy, μ or a CT, and no support otherwise (the note says why); an explicit kind is
    `support_mask`'s (errors included).

    Returns
    -------
    (mask, note):
        ``mask`` ``[Z, Y, X]`` bool or ``None``; ``note`` e.g. ``"body (μ > 0.1 × water's μ at
        140.5 keV, holes filled; 23.1 % of the grid)"`` or ``"none (the study has no μ, CT or
        anatomy)"``.
    """
    if requested is None:
        if study.anatomy is None and study.mu_per_mm is None and study.ct_hu is None:
            return None, "none (the study has no μ, CT or anatomy)"
        requested = "body"
    return _support(study, requested)


def _support(study: Study, kind: str) -> tuple[np.ndarray | None, str]:
    if not isinstance(study, Study):
        raise TypeError(f"study must be a recon.io.Study, got {type(study).__name__}")
    if kind not in SUPPORT_KINDS:
        raise ValueError(f"support must be one of {list(SUPPORT_KINDS)}, got {kind!r}")
    if kind == "none":
        return None, "none (requested)"
    anatomy = study.anatomy
    if kind == "anatomy":
        if anatomy is None:
            raise ValueError(
                "support 'anatomy' needs a study with an anatomy (segmentation); this study has "
                "none (use 'body' or 'none')"
            )
        mask = anatomy.labels > 0
        how = f"anatomy (union of {len(anatomy.names)} segments)"
    elif anatomy is not None and anatomy.body is not None:
        mask, how = anatomy.body.astype(bool), "body (the anatomy's body outline)"
    elif study.mu_per_mm is not None:
        energy = study.acquisition.energy_keV
        threshold = BODY_MU_FRACTION * water_mu_per_mm(energy)
        mu = np.asarray(study.mu_per_mm)
        mask = _edge(_filled(mu > threshold), mu > 0)
        how = (
            f"body (μ > {BODY_MU_FRACTION:g} × water's μ at {energy:g} keV, holes filled, "
            "edge voxels kept)"
        )
    elif study.ct_hu is not None:
        ct = np.asarray(study.ct_hu)
        mask = _edge(_filled(ct > BODY_HU), ct > AIR_HU)
        how = f"body (CT > {BODY_HU:g} HU, holes filled, edge voxels kept)"
    elif anatomy is not None:
        mask = _filled(anatomy.labels > 0)
        how = "body (union of the anatomy's segments, holes filled; it has no body outline)"
    else:
        raise ValueError(
            "support 'body' needs a study with μ, a CT or an anatomy; this study has none "
            "(use support 'none')"
        )
    if tuple(mask.shape) != tuple(study.grid.shape):
        raise ValueError(
            f"the {kind} support has shape {list(mask.shape)}, the study grid "
            f"{list(study.grid.shape)}"
        )
    n = int(mask.sum())
    if n == 0:
        raise ValueError(f"the study's support {how} holds no voxel; use support 'none'")
    return mask, f"{how[:-1]}; {100.0 * n / mask.size:.1f} % of the grid)"


def _edge(mask: np.ndarray, not_air: np.ndarray) -> np.ndarray:
    """``mask`` grown by one voxel (6-connected) into the voxels that are not pure air: the body's
    edge voxels are partly air, so their μ or CT number falls below the threshold, yet they hold
    activity."""
    return (mask | (ndimage.binary_dilation(mask) & not_air)).astype(bool)


def _filled(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled in 3D, then in every axial slice (a lung that reaches the
    top of the grid is open in 3D but closed in each slice)."""
    out = ndimage.binary_fill_holes(mask)
    for k in range(out.shape[0]):
        out[k] = ndimage.binary_fill_holes(out[k])
    return out.astype(bool)


class SupportedField(nn.Module):
    """A representation whose activity is zero outside a support: ``e(x) = field(x) · s(x)``.

    ``s`` is the support volume read at the points by trilinear interpolation
    (`spectproj.GridField`: 1 inside, 0 outside, in between across the boundary voxels) or, with
    ``interpolation="nearest"``, the value of the nearest voxel. It exposes the field's ``scale``,
    ``grid`` and ``config``; its ``state_dict`` is the field's own (the support is not saved), so
    checkpoints and result files hold the field exactly as without a support, and
    `recon.nerf.training.representation_info` describes the field.

    Parameters
    ----------
    field:
        The representation (e.g. `recon.nerf.field.EmissionField`), a module with a ``grid``
        (`spectproj.ImageGrid`).
    support:
        ``[Z, Y, X]`` support on ``field.grid`` (bool or values in 0..1), e.g. `support_mask`.
    interpolation:
        ``"trilinear"`` (default) or ``"nearest"``.
    """

    support: torch.Tensor  # buffer (registered in __init__)

    def __init__(
        self,
        field: nn.Module,
        support: torch.Tensor | np.ndarray,
        interpolation: str = "trilinear",
    ) -> None:
        super().__init__()
        if not isinstance(field, nn.Module):
            raise TypeError(f"field must be a torch.nn.Module, got {type(field).__name__}")
        grid = getattr(field, "grid", None)
        if grid is None or not hasattr(grid, "shape"):
            raise TypeError(
                f"field must have a grid (an ImageGrid), {type(field).__name__} has none"
            )
        if interpolation not in ("trilinear", "nearest"):
            raise ValueError(
                f"interpolation must be 'trilinear' or 'nearest', got {interpolation!r}"
            )
        s = torch.as_tensor(support)
        if tuple(s.shape) != tuple(grid.shape):
            raise ValueError(
                f"support has shape {list(s.shape)}, the field's grid {list(grid.shape)}"
            )
        s = s.detach().to(torch.float32)
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()) or bool((s > 1).any()):
            raise ValueError("support values must lie in [0, 1]")
        self.field = field
        self.grid = grid
        self.config = getattr(field, "config", None)
        self.interpolation = interpolation
        self.register_buffer("support", s.to(_device_of(field)), persistent=False)

    @property
    def scale(self) -> torch.Tensor | None:
        """The field's ``scale`` buffer (activity of a unit output), if it has one."""
        return getattr(self.field, "scale", None)

    def inside(self, points_mm: torch.Tensor) -> torch.Tensor:
        """The support ``[...]`` at points ``[..., 3]`` (x, y, z mm), in 0..1."""
        p = points_mm.to(self.support.dtype)
        if self.interpolation == "trilinear":
            return GridField(self.support, self.grid)(p)
        idx = []
        for axis, c in ((0, 2), (1, 1), (2, 0)):
            n, d, o = self.grid.shape[axis], self.grid.spacing_mm[axis], self.grid.offset_mm[axis]
            idx.append(torch.round((p[..., c] - o) / d + (n - 1) / 2).long())
        k, j, i = idx
        z, y, x = self.grid.shape
        ok = (k >= 0) & (k < z) & (j >= 0) & (j < y) & (i >= 0) & (i < x)
        value = self.support[k.clamp(0, z - 1), j.clamp(0, y - 1), i.clamp(0, x - 1)]
        return torch.where(ok, value, torch.zeros_like(value))

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return self.field(points_mm) * self.inside(points_mm).to(points_mm.dtype)

    # The support is data, not model: checkpoints and results hold the field alone.
    def state_dict(self, *args, **kwargs):
        return self.field.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.field.load_state_dict(state_dict, strict=strict, assign=assign)


def representation_volume(representation: object) -> torch.Tensor | None:
    """``representation.volume()`` ``[Z, Y, X]`` on its grid (times the support for a
    `SupportedField`), or ``None`` when it has no ``volume`` method."""
    if isinstance(representation, SupportedField):
        inner = representation_volume(representation.field)
        return None if inner is None else inner * representation.support.to(inner.dtype)
    volume = getattr(representation, "volume", None)
    if not callable(volume):
        return None
    out = volume()
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"volume() must return a torch.Tensor, got {type(out).__name__}")
    return out


def _device_of(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")
