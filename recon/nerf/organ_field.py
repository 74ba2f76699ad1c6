"""The organ-anchored field: explicit organ concentrations times a learned modulation.

A free latent code has to rediscover every organ's uptake from two views; the CT segmentation
already says where the organs are, and an organ fit (`recon.anatomy`, QPlanar) says how much each
holds. `OrganAnchoredField` keeps that fit as an explicit, interpretable part of the model and
lets a network learn only what the anatomy does not say:

    e(p) = A(p) · exp(B · tanh(n₀(p))) + scale · softplus(n₁(p) + RESIDUAL_OFFSET) · body(p)

    A(p) = Σ_k exp(ℓ_k) · m_k(p)        (the *anchor*)

- ``m_k`` are the masks of the study's compartments (its segments and the background of the body,
  `recon.anatomy.compartments`, with the organ fit's tissue weights), read trilinearly
  (`spectproj.GridField` semantics), and ``ℓ_k = ln c_k`` the **log-concentrations** (the
  study's activity unit), trainable, initialised from the study's organ fit;
- ``n = MLP([enc(p̂), features(p), z])`` is an `recon.nerf.field.EmissionField` network with
  anatomy features (`recon.nerf.anatomy_field.AnatomyFeatures`) and a latent code ``z``; its
  first output modulates the anchor within ``[e^−B, e^B]`` (``B = 0``: no modulation), its
  second (with ``residual``) is a non-negative residual inside the body for what lies outside
  the compartments' pattern (lesions, segmentation errors), in units of ``scale`` (the data's
  activity level). ``RESIDUAL_OFFSET`` makes a zero output a residual of 1.8 % of the level.

With a zero network output and ``B = 0`` (or without the residual) the field's volume *is* the
organ fit's volume at the voxel centres. The same formula (`anchored_activity`) is the activity
of every study of an organ-code cohort (`recon.cohort.model.CohortModel`), whose network is
shared and whose log-concentrations and codes are per study; a new study reconstructed with such
a cohort as a prior gets an `OrganAnchoredField` on its own anatomy and organ fit
(`organ_field_for_study`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from recon.io.study import Study
from recon.nerf.anatomy_field import (
    AnatomyFeatureConfig,
    AnatomyFeatures,
    AnatomyNetworkField,
    _known,
)
from recon.nerf.field import EmissionField, FieldConfig
from spectproj import GridField, ImageGrid

if TYPE_CHECKING:
    from recon.anatomy.organ_fit import OrganFit

__all__ = [
    "CONCENTRATION_FLOOR",
    "RESIDUAL_OFFSET",
    "OrganAnchor",
    "OrganAnchoredField",
    "OrganCodeConfig",
    "OrganFieldConfig",
    "anchored_activity",
    "initial_log_concentrations",
    "organ_field_for_study",
    "study_organ_fit",
]

#: Added to the residual output before the softplus: a zero output is a residual of
#: softplus(−4) ≈ 1.8 % of the activity level, so a fresh model starts close to its anchor.
RESIDUAL_OFFSET = -4.0

#: A compartment the organ fit holds at (nearly) zero starts at this fraction of the fit's
#: highest concentration (its log-concentration must be finite).
CONCENTRATION_FLOOR = 1e-3


@dataclass(frozen=True)
class OrganCodeConfig:
    """How the network acts on the organ anchor.

    Parameters
    ----------
    bound:
        ``B``: the modulation ``exp(B · tanh(n₀))`` lies in ``[e^−B, e^B]`` (>= 0; 0: none).
    residual:
        Add the non-negative residual head (a second network output) inside the body.
    """

    bound: float = 0.7
    residual: bool = True

    def __post_init__(self) -> None:
        b = self.bound
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
            raise ValueError(f"bound must be a finite number >= 0, got {b!r}")
        object.__setattr__(self, "bound", float(b))
        if not isinstance(self.residual, bool):
            raise TypeError(f"residual must be a bool, got {self.residual!r}")

    @property
    def outputs(self) -> int:
        """Network outputs: the modulation, and the residual."""
        return 2 if self.residual else 1

    def to_dict(self) -> dict[str, object]:
        return {"bound": self.bound, "residual": self.residual}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> OrganCodeConfig:
        return cls(**_known(cls, values, "organ code"))


@dataclass(frozen=True)
class OrganFieldConfig:
    """Architecture of an `OrganAnchoredField`: the network, its anatomy features, the organ
    code settings and the names of the compartments (segments, then background regions)."""

    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    features: AnatomyFeatureConfig = dataclasses.field(default_factory=AnatomyFeatureConfig)
    organ: OrganCodeConfig = dataclasses.field(default_factory=OrganCodeConfig)
    compartments: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, kind in (
            ("field", FieldConfig),
            ("features", AnatomyFeatureConfig),
            ("organ", OrganCodeConfig),
        ):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(
                    f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}"
                )
        if isinstance(self.compartments, str):
            raise TypeError(f"compartments must be a sequence of names, got {self.compartments!r}")
        names = tuple(str(n) for n in self.compartments)
        if len(set(names)) != len(names):
            raise ValueError(f"compartment names must be unique, got {list(names)}")
        object.__setattr__(self, "compartments", names)

    def to_dict(self) -> dict[str, object]:
        return {
            "field": self.field.to_dict(),
            "features": self.features.to_dict(),
            "organ": self.organ.to_dict(),
            "compartments": list(self.compartments),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> OrganFieldConfig:
        known = _known(cls, values, "organ field")
        parts = {k: known.get(k, {}) for k in ("field", "features", "organ")}
        if not all(isinstance(v, Mapping) for v in parts.values()):
            raise ValueError("an organ field description needs 'field', 'features' and 'organ'")
        return cls(
            field=FieldConfig(**_known(FieldConfig, parts["field"], "field")),
            features=AnatomyFeatureConfig.from_dict(parts["features"]),
            organ=OrganCodeConfig.from_dict(parts["organ"]),
            compartments=tuple(known.get("compartments", ())),
        )


class OrganAnchor(nn.Module):
    """The anchor ``A(p) = Σ_k exp(ℓ_k) · m_k(p)`` of one study's compartments.

    Parameters
    ----------
    grid:
        The compartments' grid (the study's).
    index:
        ``[Z, Y, X]`` integer compartment of each voxel (0-based), −1 outside every compartment
        (`recon.anatomy.Compartments.index`); ``None``: an empty shell for ``load_state_dict``.
    weight:
        ``[Z, Y, X]`` tissue fraction of each voxel in [0, 1] (`Compartments.weight`); ``None``:
        whole voxels.

    The volumes are persistent buffers, so a result or checkpoint rebuilds the anchor without
    the study. The log-concentrations are not part of it: they are passed to each call (a
    field's own parameter, or one study's row of a cohort's table).
    """

    # buffers (registered in __init__)
    index: torch.Tensor
    weight: torch.Tensor

    def __init__(
        self,
        grid: ImageGrid,
        index: np.ndarray | torch.Tensor | None = None,
        weight: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(grid, ImageGrid):
            raise TypeError(f"grid must be an ImageGrid, got {type(grid).__name__}")
        self.grid = grid
        shape = tuple(grid.shape)
        idx = torch.full(shape, -1, dtype=torch.int32)
        if index is not None:
            idx = torch.as_tensor(np.asarray(index)).to(torch.int32)
            if tuple(idx.shape) != shape:
                raise ValueError(f"index must have the grid's shape {list(shape)}, got "
                                 f"{list(idx.shape)}")  # fmt: skip
            if idx.numel() and int(idx.min()) < -1:
                raise ValueError("index values must be >= -1")
        w = torch.ones(shape, dtype=torch.float32)
        if weight is not None:
            w = torch.as_tensor(np.asarray(weight, dtype=np.float32))
            if tuple(w.shape) != shape:
                raise ValueError(f"weight must have the grid's shape {list(shape)}, got "
                                 f"{list(w.shape)}")  # fmt: skip
            if not bool(torch.isfinite(w).all()) or float(w.min()) < 0 or float(w.max()) > 1:
                raise ValueError("weight must lie in [0, 1]")
        self.register_buffer("index", idx, persistent=True)
        self.register_buffer("weight", w, persistent=True)

    @property
    def n_compartments(self) -> int:
        """``K``: one more than the largest index."""
        return int(self.index.max()) + 1 if self.index.numel() else 0

    def volume(self, log_concentration: torch.Tensor) -> torch.Tensor:
        """``[Z, Y, X]`` anchor at the voxel centres: ``exp(ℓ[index]) · weight``, 0 where
        ``index = −1``; ``log_concentration`` ``[K]`` (or longer: the rest is unused)."""
        c = torch.exp(log_concentration.float())
        lut = torch.cat([c, c.new_zeros(1)])  # index −1 reads the trailing zero
        k = torch.where(self.index < 0, torch.full_like(self.index, lut.shape[0] - 1), self.index)
        return lut[k.long()] * self.weight

    def forward(self, points_mm: torch.Tensor, log_concentration: torch.Tensor) -> torch.Tensor:
        """Anchor ``[...]`` at points ``[..., 3]`` (x, y, z mm), trilinear, zero beyond the grid."""
        values = GridField(self.volume(log_concentration), self.grid)(points_mm.float())
        return values.to(points_mm.dtype)


def anchored_activity(
    raw: torch.Tensor,
    anchor: torch.Tensor,
    inside: torch.Tensor,
    level: float | torch.Tensor,
    config: OrganCodeConfig,
) -> torch.Tensor:
    """``anchor · exp(B·tanh(raw₀)) + level · softplus(raw₁ + RESIDUAL_OFFSET) · inside``.

    ``raw`` ``[..., outputs]`` (the network's outputs), ``anchor`` and ``inside`` (body, bool)
    ``[...]``; the module notes give the meaning. The result has ``anchor``'s dtype.
    """
    mod = torch.exp(config.bound * torch.tanh(raw[..., 0].float()))
    values = anchor.float() * mod
    if config.residual:
        level_t = torch.as_tensor(level, dtype=torch.float32, device=values.device)
        residual = nn.functional.softplus(raw[..., 1].float() + RESIDUAL_OFFSET)
        values = values + level_t * residual * inside.to(torch.float32)
    return values.to(anchor.dtype)


class OrganAnchoredField(AnatomyNetworkField):
    """Activity ``[...]`` (>= 0, the study's activity unit) at points ``[..., 3]`` (x, y, z mm):
    organ concentrations times a learned modulation, plus a residual (module notes).

    Parameters
    ----------
    grid:
        The field of view (the study's grid; the features' and anchor's grid must be the same).
    config:
        The architecture; ``config.features`` must be the features' configuration.
    features:
        The study's anatomy features; ``None``: an empty shell (``load_state_dict`` fills it).
    anchor:
        The study's compartments; ``None``: an empty shell.
    log_concentration:
        ``[K]`` initial ``ℓ_k = ln c_k`` (K = ``len(config.compartments)``); ``None``: zeros.
    scale:
        Activity of a unit residual (`recon.nerf.training.fit` sets it to the data's level).

    Attributes
    ----------
    network:
        The `EmissionField` with the anatomy features and ``config.organ.outputs`` outputs (its
        ``features``, ``scale`` and ``latent`` are the field's, `AnatomyNetworkField`).
    anchor:
        The `OrganAnchor`.
    log_concentration:
        ``[K]`` trainable log-concentrations.
    """

    def __init__(
        self,
        grid: ImageGrid,
        config: OrganFieldConfig,
        features: AnatomyFeatures | None = None,
        anchor: OrganAnchor | None = None,
        log_concentration: torch.Tensor | np.ndarray | None = None,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(config, OrganFieldConfig):
            raise TypeError(f"config must be an OrganFieldConfig, got {type(config).__name__}")
        features = AnatomyFeatures(grid, config.features) if features is None else features
        anchor = OrganAnchor(grid) if anchor is None else anchor
        if features.grid != grid or anchor.grid != grid:
            raise ValueError(f"the features' and anchor's grid must be the field's {grid}")
        if features.config != config.features:
            raise ValueError(
                f"the features' configuration {features.config} differs from "
                f"config.features {config.features}"
            )
        k = len(config.compartments)
        if anchor.n_compartments > k:
            raise ValueError(
                f"the anchor has {anchor.n_compartments} compartments, the config names {k}"
            )
        start = torch.zeros(k)
        if log_concentration is not None:
            start = torch.as_tensor(np.asarray(log_concentration), dtype=torch.float32)
            if tuple(start.shape) != (k,):
                raise ValueError(
                    f"log_concentration must have shape [{k}], got {list(start.shape)}"
                )
            if not bool(torch.isfinite(start).all()):
                raise ValueError("log_concentration must be finite")
        self.grid = grid
        self.config = config
        self.network = EmissionField(
            grid, config.field, scale, features=features, outputs=config.organ.outputs
        )
        self.anchor = anchor
        self.log_concentration = nn.Parameter(start.clone())

    def concentrations(self) -> dict[str, float]:
        """The current concentration of each compartment (activity unit), by name."""
        values = torch.exp(self.log_concentration.detach().double()).cpu().tolist()
        return dict(zip(self.config.compartments, values, strict=True))

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        raw = self.network.raw(points_mm)
        anchor = self.anchor(points_mm, self.log_concentration)
        inside = self.features.inside(points_mm)
        values = anchored_activity(raw, anchor, inside, self.scale, self.config.organ)
        return values.to(points_mm.dtype)


# -- from a study ----------------------------------------------------------------------------


def study_organ_fit(study: Study, *, device: torch.device | str = "cpu") -> OrganFit:
    """The study's organ fit (QPlanar), exactly as ``spect recon organs`` makes it: its anatomy,
    the body support, the tissue-weighted background, its collimator blur, attenuation and
    scatter background (`recon.anatomy.reconstruct_organs` without the residual).

    Returns
    -------
    recon.anatomy.OrganFit

    Raises
    ------
    ValueError
        The study has no anatomy.
    """
    from recon.anatomy import OrgansConfig, reconstruct_organs

    return reconstruct_organs(study, config=OrgansConfig(residual=False), device=device).organ_fit


def initial_log_concentrations(concentrations: np.ndarray | torch.Tensor) -> np.ndarray:
    """``ln c_k`` (float32) of an organ fit's concentrations ``[K]``, each raised to at least
    ``CONCENTRATION_FLOOR`` times the highest (a compartment held at zero needs a finite start;
    1 if none is positive)."""
    c = np.asarray(concentrations, dtype=np.float64)
    if c.ndim != 1 or not np.isfinite(c).all():
        raise ValueError(f"concentrations must be a finite [K] array, got shape {c.shape}")
    top = float(c.max()) if c.size else 0.0
    floor = CONCENTRATION_FLOOR * top if top > 0 else 1.0
    return np.log(np.maximum(c, floor)).astype(np.float32)


def organ_field_for_study(
    study: Study,
    config: OrganFieldConfig,
    *,
    organ_fit: OrganFit | None = None,
    scale: float = 1.0,
    device: torch.device | str = "cpu",
) -> OrganAnchoredField:
    """An `OrganAnchoredField` for ``study``, its anchor at the study's organ fit.

    Parameters
    ----------
    study:
        The study (μ or CT, an anatomy).
    config:
        The architecture; its ``features`` vocabulary is kept (e.g. a cohort's), ``mu_source``,
        ``body_source`` and ``compartments`` are completed from the study.
    organ_fit:
        The study's `recon.anatomy.OrganFit` (default: `study_organ_fit`).
    scale:
        The residual's unit (`recon.nerf.training.fit` sets it from the data).
    device:
        Where the organ fit's projections run.
    """
    from recon.nerf.anatomy_field import anatomy_features_for_study

    fit = study_organ_fit(study, device=device) if organ_fit is None else organ_fit
    features = anatomy_features_for_study(study, config.features)
    compartments = fit.compartments
    full = dataclasses.replace(
        config, features=features.config, compartments=tuple(compartments.names)
    )
    anchor = OrganAnchor(study.grid, compartments.index, compartments.weight)
    start = initial_log_concentrations(fit.concentrations)
    return OrganAnchoredField(study.grid, full, features, anchor, start, scale=scale)
