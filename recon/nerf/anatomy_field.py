"""The anatomy-conditioned emission field: activity from position *and* anatomy at each point.

Two planar views do not tell depth; a CT and its segmentation do. `AnatomyField` is the
`recon.nerf.field.EmissionField` whose input also holds anatomy features at the point,

    e(x) = scale · softplus(MLP([encoding(x̂), features(x), z])) · body(x),

so that uptake can follow the organs, and zero outside the body outline (a support).

`AnatomyFeatures` computes the features from volumes on the study grid; it is a module of its own
so that other models (e.g. a cohort prior learning "uptake given anatomy") can reuse it. Its
feature layout, ``[N, F]`` with ``F = embedding_dim + 2``:

=====================  ==============================================================
column                 value at the point
=====================  ==============================================================
0                      μ/μ_water (trilinear, `spectproj.GridField` semantics: zero
                       beyond the grid), from the study's μ map or its CT
1 … embedding_dim      learned embedding of the point's segment (nearest voxel)
embedding_dim + 1      body indicator: 1 inside the body outline (nearest voxel), else 0
=====================  ==============================================================

Segment indices (rows of the embedding): 0 = body without a segment (or a segment outside the
vocabulary), ``1 … K`` = the vocabulary ``segment_names`` in order, ``K + 1`` = outside the body
(also every point outside the grid).

The volumes (μ/μ_water ``mu_ratio`` and the per-voxel segment index ``segment_index``) are
persistent buffers: a result or checkpoint holds them, so `recon.nerf.export.load_field` rebuilds
a trained field without the study.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from recon.io.study import Study
from recon.nerf.field import EmissionField, FieldConfig
from recon.support import resolve_support
from spectproj import GridField, ImageGrid, hu_to_mu_per_mm, water_mu_per_mm

__all__ = [
    "MU_SOURCES",
    "AnatomyFeatureConfig",
    "AnatomyFeatures",
    "AnatomyField",
    "AnatomyFieldConfig",
    "AnatomyNetworkField",
    "anatomy_features_for_study",
    "anatomy_field_for_study",
]

#: Where the μ column comes from: the study's μ map, its CT (converted at the photon energy), or
#: nowhere (the column is zero).
MU_SOURCES = ("mu_per_mm", "ct_hu", "none")


@dataclass(frozen=True)
class AnatomyFeatureConfig:
    """What `AnatomyFeatures` computes.

    Parameters
    ----------
    embedding_dim:
        Size of the learned segment embedding (>= 1).
    segment_names:
        The segment vocabulary: segment ``k`` (1-based) is ``segment_names[k - 1]``. A study's
        segments are matched by name; a segment not in the vocabulary counts as body without a
        segment (index 0). `anatomy_field_for_study` fills it from the study when empty.
    mu_source:
        Where the μ column comes from (`MU_SOURCES`), set by `anatomy_features_for_study`.
    body_source:
        One line on where the body outline comes from (`recon.support.resolve_support`'s note),
        set by `anatomy_features_for_study`; ``"whole grid"`` when no outline was given.
    """

    embedding_dim: int = 8
    segment_names: tuple[str, ...] = ()
    mu_source: str = "none"
    body_source: str = "whole grid"

    def __post_init__(self) -> None:
        if isinstance(self.segment_names, str):
            raise TypeError(
                f"segment_names must be a sequence of names, got {self.segment_names!r}"
            )
        names = tuple(str(n) for n in self.segment_names)
        object.__setattr__(self, "segment_names", names)
        dim = self.embedding_dim
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"embedding_dim must be an integer >= 1, got {dim!r}")
        if any(not n.strip() for n in names) or len(set(names)) != len(names):
            raise ValueError(f"segment_names must be unique and non-empty, got {list(names)}")
        if self.mu_source not in MU_SOURCES:
            raise ValueError(f"mu_source must be one of {list(MU_SOURCES)}, got {self.mu_source!r}")
        if not isinstance(self.body_source, str) or not self.body_source.strip():
            raise ValueError(f"body_source must be a non-empty string, got {self.body_source!r}")

    @property
    def n_segments(self) -> int:
        """Rows of the embedding: body without segment, the vocabulary, outside the body."""
        return len(self.segment_names) + 2

    @property
    def outside_index(self) -> int:
        """Segment index of points outside the body."""
        return len(self.segment_names) + 1

    @property
    def out_features(self) -> int:
        """``F = embedding_dim + 2``."""
        return self.embedding_dim + 2

    def to_dict(self) -> dict[str, object]:
        return {
            "embedding_dim": self.embedding_dim,
            "segment_names": list(self.segment_names),
            "mu_source": self.mu_source,
            "body_source": self.body_source,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AnatomyFeatureConfig:
        return cls(**_known(cls, values, "anatomy feature"))


@dataclass(frozen=True)
class AnatomyFieldConfig:
    """Architecture of an `AnatomyField`: the network (`FieldConfig`) and its anatomy features."""

    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    features: AnatomyFeatureConfig = dataclasses.field(default_factory=AnatomyFeatureConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.field, FieldConfig):
            raise TypeError(f"field must be a FieldConfig, got {type(self.field).__name__}")
        if not isinstance(self.features, AnatomyFeatureConfig):
            raise TypeError(
                f"features must be an AnatomyFeatureConfig, got {type(self.features).__name__}"
            )

    def to_dict(self) -> dict[str, object]:
        return {"field": self.field.to_dict(), "features": self.features.to_dict()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AnatomyFieldConfig:
        known = _known(cls, values, "anatomy field")
        field = known.get("field", {})
        features = known.get("features", {})
        if not isinstance(field, Mapping) or not isinstance(features, Mapping):
            raise ValueError("an anatomy field description needs 'field' and 'features' tables")
        return cls(
            field=FieldConfig(**_known(FieldConfig, field, "field")),
            features=AnatomyFeatureConfig.from_dict(features),
        )


def _known(cls: type, values: Mapping[str, Any], what: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; valid keys: {sorted(names)}")
    return dict(values)


class AnatomyFeatures(nn.Module):
    """Anatomy features ``[..., F]`` at points ``[..., 3]`` (x, y, z mm); layout in the module doc.

    Parameters
    ----------
    grid:
        The grid of the volumes (the study's).
    config:
        Embedding size and segment vocabulary.
    mu_ratio:
        ``[Z, Y, X]`` μ/μ_water (dimensionless); ``None``: zero (no μ known).
    labels:
        ``[Z, Y, X]`` integer segment labels (0 = none), named by ``label_names``; ``None``: no
        segments.
    label_names:
        Label value → segment name; values whose name is not in the vocabulary count as 0.
    body:
        ``[Z, Y, X]`` bool body outline; ``None``: the whole grid. Labelled voxels are in the body.

    With no volumes at all it is an empty shell (whole grid body, no segments, μ zero) whose
    buffers `load_state_dict` then fills: that is how a trained model is rebuilt.
    """

    # buffers (registered in __init__)
    mu_ratio: torch.Tensor
    segment_index: torch.Tensor

    def __init__(
        self,
        grid: ImageGrid,
        config: AnatomyFeatureConfig = AnatomyFeatureConfig(),
        *,
        mu_ratio: torch.Tensor | np.ndarray | None = None,
        labels: torch.Tensor | np.ndarray | None = None,
        label_names: Mapping[int, str] | None = None,
        body: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(grid, ImageGrid):
            raise TypeError(f"grid must be an ImageGrid, got {type(grid).__name__}")
        if not isinstance(config, AnatomyFeatureConfig):
            raise TypeError(f"config must be an AnatomyFeatureConfig, got {type(config).__name__}")
        self.grid = grid
        self.config = config
        shape = tuple(grid.shape)
        mu = (
            np.zeros(shape, np.float32)
            if mu_ratio is None
            else _volume("mu_ratio", mu_ratio, shape)
        )
        if not np.isfinite(mu).all():
            raise ValueError("mu_ratio must be finite")
        index = _segment_index(config, shape, labels, label_names, body)
        self.register_buffer("mu_ratio", torch.as_tensor(mu, dtype=torch.float32), persistent=True)
        self.register_buffer("segment_index", torch.as_tensor(index), persistent=True)
        self.embedding = nn.Embedding(config.n_segments, config.embedding_dim)

    @property
    def out_features(self) -> int:
        return self.config.out_features

    def segment_at(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Segment index ``[...]`` (int64) of the voxel nearest each point ``[..., 3]``
        (x, y, z mm); ``outside_index`` beyond the grid."""
        _check_points(points_mm)
        batch = points_mm.shape[:-1]
        pts = points_mm.reshape(-1, 3).detach()
        pts = pts if pts.dtype == torch.float64 else pts.float()
        _, ny, nx = self.grid.shape
        flat = torch.zeros(pts.shape[0], dtype=torch.int64, device=pts.device)
        inside = torch.ones(pts.shape[0], dtype=torch.bool, device=pts.device)
        for axis, column, stride in ((0, 2, ny * nx), (1, 1, nx), (2, 0, 1)):
            n, d, o = self.grid.shape[axis], self.grid.spacing_mm[axis], self.grid.offset_mm[axis]
            k = torch.floor((pts[:, column] - o) / d + (n - 1) / 2 + 0.5)
            inside &= (k >= 0) & (k <= n - 1)
            flat += k.clamp(0, n - 1).to(torch.int64) * stride
        index = self.segment_index.reshape(-1)[flat].to(torch.int64)
        index = torch.where(inside, index, torch.full_like(index, self.config.outside_index))
        return index.reshape(batch)

    def inside(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Bool ``[...]``: whether each point ``[..., 3]`` lies in a body voxel."""
        return self.segment_at(points_mm) != self.config.outside_index

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return self.forward_with(points_mm, self.embedding)

    def forward_with(self, points_mm: torch.Tensor, embedding: nn.Embedding) -> torch.Tensor:
        """The features with another segment embedding of the same shape (a cohort's shared
        one, `recon.cohort.model.CohortModel`)."""
        batch = points_mm.shape[:-1]
        pts = points_mm.reshape(-1, 3)
        dtype = embedding.weight.dtype
        index = self.segment_at(pts)
        mu = GridField(self.mu_ratio, self.grid)(pts.to(self.mu_ratio.dtype)).to(dtype)
        body = (index != self.config.outside_index).to(dtype)
        features = torch.cat([mu[:, None], embedding(index), body[:, None]], dim=-1)
        return features.reshape(*batch, self.out_features)


class AnatomyNetworkField(nn.Module):
    """Base of the fields built around an `EmissionField` ``network`` with anatomy features
    (`AnatomyField`, `recon.nerf.organ_field.OrganAnchoredField`): it exposes the network's
    ``features``, ``scale`` and ``latent``, so that `fit` (scale setting, ``latent_l2``) treats
    the field like an `EmissionField`."""

    network: EmissionField

    @property
    def features(self) -> AnatomyFeatures:
        return self.network.features  # type: ignore[return-value]  # built with AnatomyFeatures

    @property
    def scale(self) -> torch.Tensor:
        """The network's ``scale`` buffer."""
        return self.network.scale

    @property
    def latent(self) -> torch.Tensor:
        return self.network.latent


class AnatomyField(AnatomyNetworkField):
    """Activity ``[...]`` (>= 0, unit of ``scale``; exactly 0 outside the body) at points
    ``[..., 3]`` (x, y, z mm), from position and anatomy.

    Parameters
    ----------
    grid:
        The field of view (the study's grid; the features' grid must be the same).
    config:
        The architecture; ``config.features`` must be the features' configuration.
    features:
        The anatomy features; ``None``: an empty shell to be filled by ``load_state_dict``.
    scale:
        Activity concentration of a unit network output (`recon.nerf.training.fit` sets it).

    The network is an `EmissionField` (``network``) with the features as its extra input; the
    field exposes its ``scale`` (the activity of a unit output), ``latent`` and ``features``
    (`AnatomyNetworkField`).
    """

    def __init__(
        self,
        grid: ImageGrid,
        config: AnatomyFieldConfig = AnatomyFieldConfig(),
        features: AnatomyFeatures | None = None,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(config, AnatomyFieldConfig):
            raise TypeError(f"config must be an AnatomyFieldConfig, got {type(config).__name__}")
        if features is None:
            features = AnatomyFeatures(grid, config.features)
        if not isinstance(features, AnatomyFeatures):
            raise TypeError(f"features must be AnatomyFeatures, got {type(features).__name__}")
        if features.grid != grid:
            raise ValueError(f"the features' grid {features.grid} differs from the field's {grid}")
        if features.config != config.features:
            raise ValueError(
                f"the features' configuration {features.config} differs from "
                f"config.features {config.features}"
            )
        self.grid = grid
        self.config = config
        self.network = EmissionField(grid, config.field, scale, features=features)

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        values = self.network(points_mm)
        return values * self.features.inside(points_mm).to(values.dtype)


# -- from a study ----------------------------------------------------------------------------


def anatomy_features_for_study(
    study: Study, config: AnatomyFeatureConfig = AnatomyFeatureConfig()
) -> AnatomyFeatures:
    """`AnatomyFeatures` of ``study`` (μ or CT, its ``anatomy``, the body outline).

    The μ column is ``mu_per_mm / μ_water(E)`` (E = ``acquisition.energy_keV``), else the CT
    converted by `spectproj.hu_to_mu_per_mm` at E, else zero. The body is the study's body
    support (`recon.support.resolve_support` with ``"body"``: the anatomy's outline, else μ or
    the CT thresholded with holes filled, else the filled union of the segments); labelled voxels
    always belong to it. An empty ``config.segment_names`` becomes the anatomy's segment names in
    label order; the returned features' config records the vocabulary and the sources.

    Raises
    ------
    ValueError
        The study has neither μ, nor a CT, nor an anatomy; or μ/CT is not on the study grid.
    """
    if not isinstance(study, Study):
        raise TypeError(f"study must be a Study, got {type(study).__name__}")
    anatomy = study.anatomy
    if study.mu_per_mm is None and study.ct_hu is None and anatomy is None:
        raise ValueError(
            "the anatomy field needs a study with a μ map, a CT or an anatomy (segmentation); "
            "this study has none"
        )
    shape = tuple(study.grid.shape)
    energy = study.acquisition.energy_keV
    mu_ratio: np.ndarray | None = None
    mu_source = "none"
    if study.mu_per_mm is not None:
        mu = _volume("study.mu_per_mm", study.mu_per_mm, shape)
        mu_ratio, mu_source = mu / water_mu_per_mm(energy), "mu_per_mm"
    elif study.ct_hu is not None:
        ct = _volume("study.ct_hu", study.ct_hu, shape).astype(np.float64)
        mu_ratio = (hu_to_mu_per_mm(ct, energy) / water_mu_per_mm(energy)).astype(np.float32)
        mu_source = "ct_hu"
    body, body_source = resolve_support(study, "body")
    names = tuple(config.segment_names)
    if not names and anatomy is not None:
        names = tuple(anatomy.names[k] for k in sorted(anatomy.names))
    full = dataclasses.replace(
        config, segment_names=names, mu_source=mu_source, body_source=body_source
    )
    return AnatomyFeatures(
        study.grid,
        full,
        mu_ratio=mu_ratio,
        labels=None if anatomy is None else anatomy.labels,
        label_names=None if anatomy is None else anatomy.names,
        body=body,
    )


def anatomy_field_for_study(
    study: Study, config: AnatomyFieldConfig = AnatomyFieldConfig(), *, scale: float = 1.0
) -> AnatomyField:
    """An untrained `AnatomyField` for ``study`` (features from `anatomy_features_for_study`).

    ``config.features.segment_names`` (the vocabulary), ``mu_source`` and ``body_source`` are
    completed from the study; the returned field's ``config`` is the complete one, recorded by
    `recon.nerf.training.representation_info` so that `recon.nerf.export.load_field` rebuilds it.

    Raises
    ------
    ValueError
        The study has neither μ, nor a CT, nor an anatomy.
    """
    if not isinstance(config, AnatomyFieldConfig):
        raise TypeError(f"config must be an AnatomyFieldConfig, got {type(config).__name__}")
    features = anatomy_features_for_study(study, config.features)
    full = dataclasses.replace(config, features=features.config)
    return AnatomyField(study.grid, full, features, scale=scale)


# -- helpers ---------------------------------------------------------------------------------


def _check_points(points_mm: torch.Tensor) -> None:
    if points_mm.shape[-1] != 3:
        raise ValueError(
            f"points_mm must have shape [..., 3] (x, y, z mm), got {list(points_mm.shape)}"
        )


def _volume(name: str, values: torch.Tensor | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.shape != shape:
        raise ValueError(
            f"{name} must have the grid's shape {list(shape)}, got {list(array.shape)}"
        )
    if array.dtype.kind == "b":
        return array
    return array.astype(np.float32, copy=False)


def _segment_index(
    config: AnatomyFeatureConfig,
    shape: tuple[int, ...],
    labels: torch.Tensor | np.ndarray | None,
    label_names: Mapping[int, str] | None,
    body: torch.Tensor | np.ndarray | None,
) -> np.ndarray:
    """``[Z, Y, X]`` int32 segment index per voxel (see the module doc)."""
    index = np.zeros(shape, np.int32)
    in_body = np.ones(shape, bool)
    if body is not None:
        b = _volume("body", body, shape)
        if b.dtype.kind != "b":
            raise ValueError(f"body must be a bool volume, got dtype {b.dtype}")
        in_body = b.copy()
    if labels is not None:
        lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
        lab = np.asarray(lab)
        if lab.shape != shape:
            raise ValueError(f"labels must have the grid's shape {list(shape)}, got {lab.shape}")
        if lab.dtype.kind not in "iu" or (lab.size and int(lab.min()) < 0):
            raise ValueError(f"labels must be integers >= 0, got dtype {lab.dtype}")
        names = {int(k): str(v) for k, v in dict(label_names or {}).items()}
        top = int(lab.max()) if lab.size else 0
        lut = np.zeros(max(top, max(names, default=0)) + 1, np.int32)
        vocabulary = {name: k + 1 for k, name in enumerate(config.segment_names)}
        for value, name in names.items():
            if value > 0:
                lut[value] = vocabulary.get(name, 0)
        index = lut[lab]
        in_body |= lab > 0
    index[~in_body] = config.outside_index
    return index
