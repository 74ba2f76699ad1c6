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

**The residual anchor** (`OrganCodeConfig.anchor = "residual"`, `ResidualAnchor`) is the
study's organs + residual fit instead: ``A(p) = Σ_i exp(ℓ_i) · U_i(p)`` over its refined
compartments (shifted, dilated or eroded, modulated; per unit concentration) and its residual
sources (per unit activity), each source a component with a log-amplitude of its own.

**The normalised modulation** (``normalise``): the anchor is read with ``ℓ_i − ln M_i``,
``M_i = Σ_v U_i(v) m(v) / Σ_v U_i(v)`` the anchor-weighted mean of the modulation
``m = exp(B·tanh(n₀))`` over the voxels of component ``i`` (`anchor_log_concentration`, one
network pass over the anchor's voxels). The network then only redistributes activity within a
component: each component's total over the voxel centres is its code's,
``exp(ℓ_i) · Σ_v U_i(v)`` (`OrganAnchoredField.component_activities`). ``normalise_sample``
estimates each ``M_i`` on a fixed, seeded, systematic subsample of at most that many of the
component's voxels (per component, a smaller one whole: `_GridAnchor.normalising_entries`),
so a step's extra network pass no longer grows with the anatomy; the totals are then the code's
up to that estimate's error (``M_i / M̂_i − 1``, a fraction of a percent at 4096 voxels,
`docs/cohorts.md`); ``None`` is the exact reference (every voxel).

With a zero network output and ``B = 0`` (or without the residual) the field's volume *is* the
anchor's volume (the organ fit's, or the organs + residual result's) at the voxel centres. The same
formula (`anchored_activity`) is the activity of every study of an organ-code cohort
(`recon.cohort.model.CohortModel`), whose network is shared and whose log-concentrations and codes
are per study; a new study reconstructed with such a cohort as a prior gets an `OrganAnchoredField`
on its own anatomy and organ fit (`organ_field_for_study`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
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
from recon.training.runtime import voxel_points
from spectproj import GridField, ImageGrid

if TYPE_CHECKING:
    from recon.anatomy import OrgansConfig
    from recon.anatomy.organ_fit import OrganFit

__all__ = [
    "ANCHORS",
    "CONCENTRATION_FLOOR",
    "NORMALISE_SAMPLE",
    "RESIDUAL_OFFSET",
    "Anchor",
    "OrganAnchor",
    "OrganAnchoredField",
    "OrganCodeConfig",
    "OrganFieldConfig",
    "ResidualAnchor",
    "StudyAnchor",
    "anchor_log_concentration",
    "anchored_activity",
    "entry_log_modulation",
    "initial_log_concentrations",
    "normalised_log_concentration",
    "organ_field_for_study",
    "study_anchor",
    "study_organ_fit",
]

#: Added to the residual output before the softplus: a zero output is a residual of
#: softplus(−4) ≈ 1.8 % of the activity level, so a fresh model starts close to its anchor.
RESIDUAL_OFFSET = -4.0

#: What an organ code can be anchored on (`OrganCodeConfig.anchor`).
ANCHORS = ("organs", "residual")

#: A compartment the organ fit holds at (nearly) zero starts at this fraction of the fit's
#: highest concentration (its log-concentration must be finite).
CONCENTRATION_FLOOR = 1e-3

#: Voxels per component the normalising means are estimated on by default
#: (`OrganCodeConfig.normalise_sample`).
NORMALISE_SAMPLE = 4096

#: Seed of the fixed subsample of each component's voxels (`_GridAnchor.normalising_entries`).
NORMALISE_SEED = 20261207


@dataclass(frozen=True)
class OrganCodeConfig:
    """How the network acts on the organ anchor.

    Parameters
    ----------
    bound:
        ``B``: the modulation ``exp(B · tanh(n₀))`` lies in ``[e^−B, e^B]`` (>= 0; 0: none).
    residual:
        Add the non-negative residual head (a second network output) inside the body.
    anchor:
        What the anchor is (`ANCHORS`): ``"organs"``, the study's organ fit (QPlanar: one
        concentration per compartment, `OrganAnchor`); ``"residual"``, its organs + residual fit
        (`recon.anatomy.reconstruct_organs`: the refined compartments with their shifts,
        boundaries and modulation, and the residual sources, each source a component of its
        own, `ResidualAnchor`).
    normalise:
        Divide the modulation by its anchor-weighted mean over each component (module notes),
        so the network only redistributes activity within a component and every component's
        total is its code's. Files of before these two settings read as ``"organs"`` and
        ``False``, what they were trained with.
    normalise_sample:
        With ``normalise``: estimate each component's mean modulation on a fixed, seeded
        subsample of at most this many of its voxels (``>= 1``; a smaller component whole), or
        ``None``: on every voxel (the exact reference; what files of before this setting read
        as). The totals are then the code's up to that estimate's error.
    """

    bound: float = 0.7
    residual: bool = True
    anchor: str = "organs"
    normalise: bool = False
    normalise_sample: int | None = NORMALISE_SAMPLE

    def __post_init__(self) -> None:
        b = self.bound
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
            raise ValueError(f"bound must be a finite number >= 0, got {b!r}")
        object.__setattr__(self, "bound", float(b))
        for name in ("residual", "normalise"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {list(ANCHORS)}, got {self.anchor!r}")
        n = self.normalise_sample
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"normalise_sample must be an integer >= 1 or None, got {n!r}")

    @property
    def outputs(self) -> int:
        """Network outputs: the modulation, and the residual."""
        return 2 if self.residual else 1

    def to_dict(self) -> dict[str, object]:
        return {
            "bound": self.bound,
            "residual": self.residual,
            "anchor": self.anchor,
            "normalise": self.normalise,
            "normalise_sample": self.normalise_sample,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> OrganCodeConfig:
        """Undo `to_dict`; a file of before ``normalise_sample`` reads as ``None`` (exact)."""
        return cls(**{"normalise_sample": None, **_known(cls, values, "organ code")})


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


class _GridAnchor(nn.Module):
    """What both anchors share: their grid, and reading their voxel volume at points."""

    def __init__(self, grid: ImageGrid) -> None:
        super().__init__()
        if not isinstance(grid, ImageGrid):
            raise TypeError(f"grid must be an ImageGrid, got {type(grid).__name__}")
        self.grid = grid

    def volume(self, log_concentration: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def normalising_entries(self, per_component: int) -> torch.Tensor:
        """``[S]`` sorted indices into `entries`: of each component, every entry when it has at
        most ``per_component``, else a systematic sample of ``per_component`` of them in the
        order of their voxels (every ``n/per_component``-th from a random start, so the sample
        is spread over the component's extent like a regular sub-grid; each entry is drawn
        with probability ``per_component/n``). The starts come from a generator seeded with
        `NORMALISE_SEED`: the same sample at every call and after a ``load_state_dict`` of the
        same entries. Cached per ``per_component``."""
        voxel, component, _ = self.entries()
        cache: dict[int, torch.Tensor] = self.__dict__.setdefault("_sample_cache", {})
        if per_component not in cache:
            comp = component.cpu()
            key = comp * math.prod(self.grid.shape) + voxel.cpu()
            order = torch.argsort(key)  # by component, then voxel
            counts = torch.bincount(comp).tolist() if comp.numel() else []
            g = torch.Generator().manual_seed(NORMALISE_SEED)
            parts, start = [], 0
            for n in counts:
                idx = order[start : start + n]
                start += n
                if n > per_component:
                    u = float(torch.rand((), generator=g, dtype=torch.float64))
                    steps = torch.arange(per_component, dtype=torch.float64)
                    idx = idx[((steps + u) * (n / per_component)).long()]
                parts.append(idx)
            keep = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
            cache[per_component] = torch.sort(keep).values
        return cache[per_component].to(component.device)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        self.__dict__.pop("_sample_cache", None)  # new entries: a new sample
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, points_mm: torch.Tensor, log_concentration: torch.Tensor) -> torch.Tensor:
        """Anchor ``[...]`` at points ``[..., 3]`` (x, y, z mm), trilinear, zero beyond the grid."""
        values = GridField(self.volume(log_concentration), self.grid)(points_mm.float())
        return values.to(points_mm.dtype)


class OrganAnchor(_GridAnchor):
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
        super().__init__(grid)
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

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The anchor as entries ``(voxel, component, value)`` ``[E]`` (flat voxel index, int64;
        component index, int64; unit volume, float32): ``A = Σ_e exp(ℓ[component_e]) · value_e``
        at ``voxel_e``; one entry per voxel inside a compartment (`ResidualAnchor.entries`)."""
        flat = self.index.reshape(-1)
        voxel = torch.nonzero(flat >= 0).flatten()
        return voxel, flat[voxel].long(), self.weight.reshape(-1)[voxel]


class ResidualAnchor(_GridAnchor):
    """The anchor ``A(p) = Σ_i exp(ℓ_i) · U_i(p)`` of a study's organs + residual fit.

    The components ``i`` are the fit's compartments (``U_k``: the segment's shifted, dilated or
    eroded mask times its uptake modulation, the background's tissue-weighted rest of the body,
    per unit concentration: `recon.anatomy.OrganResidualModel.unit_volumes`, so ``ℓ_k = ln c_k``)
    followed by its residual sources (``U_j``: the source's Gaussian per unit activity · mL,
    `OrganResidualModel.source_volume`, so ``ℓ_j = ln a_j``). Components overlap (a segment's
    soft outline shares voxels with the background), so the anchor is stored as its non-zero
    entries rather than as one compartment per voxel.

    Parameters
    ----------
    grid:
        The study's grid.
    voxel, component, value:
        ``[E]`` the entries (`entries`): flat voxel index into ``[Z, Y, X]``, component index
        (0-based), unit volume (>= 0); ``None``: an empty shell (``load_state_dict`` gives it
        the stored entries, whatever their number).

    Memory: 20 bytes per entry, about 1.2 entries per voxel of the body (a 32³ torso: ~0.3 MB).
    """

    voxel: torch.Tensor
    component: torch.Tensor
    value: torch.Tensor

    def __init__(
        self,
        grid: ImageGrid,
        voxel: torch.Tensor | np.ndarray | None = None,
        component: torch.Tensor | np.ndarray | None = None,
        value: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__(grid)
        parts = (voxel, component, value)
        if any(v is None for v in parts) and not all(v is None for v in parts):
            raise ValueError("voxel, component and value must be given together")
        vox = torch.zeros(0, dtype=torch.int64)
        comp = torch.zeros(0, dtype=torch.int64)
        val = torch.zeros(0, dtype=torch.float32)
        if voxel is not None:
            vox = torch.as_tensor(np.asarray(voxel)).to(torch.int64).reshape(-1)
            comp = torch.as_tensor(np.asarray(component)).to(torch.int64).reshape(-1)
            val = torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(-1)
            if not vox.shape == comp.shape == val.shape:
                raise ValueError(
                    f"voxel, component and value must have one length, got {len(vox)}, "
                    f"{len(comp)}, {len(val)}"
                )
            n = math.prod(grid.shape)
            if vox.numel() and (int(vox.min()) < 0 or int(vox.max()) >= n):
                raise ValueError(f"voxel indices must lie in [0, {n}), the grid's voxels")
            if comp.numel() and int(comp.min()) < 0:
                raise ValueError("component indices must be >= 0")
            if not bool(torch.isfinite(val).all()) or (val.numel() and float(val.min()) < 0):
                raise ValueError("values must be finite and >= 0")
        self.register_buffer("voxel", vox, persistent=True)
        self.register_buffer("component", comp, persistent=True)
        self.register_buffer("value", val, persistent=True)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        for name in ("voxel", "component", "value"):  # a shell takes the stored entries' size
            if prefix + name in state_dict:
                stored = state_dict[prefix + name]
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def n_compartments(self) -> int:
        """The number of components (one more than the largest index)."""
        return int(self.component.max()) + 1 if self.component.numel() else 0

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(voxel, component, value)`` ``[E]`` (`OrganAnchor.entries`)."""
        return self.voxel, self.component, self.value

    def volume(self, log_concentration: torch.Tensor) -> torch.Tensor:
        """``[Z, Y, X]`` anchor at the voxel centres, ``Σ_i exp(ℓ_i) · U_i``; ``log_concentration``
        ``[K]`` (or longer: the rest is unused)."""
        c = torch.exp(log_concentration.float())
        out = self.value.new_zeros(math.prod(self.grid.shape))
        out = out.index_add(0, self.voxel, c[self.component] * self.value)
        return out.reshape(self.grid.shape)


#: Either anchor.
Anchor = OrganAnchor | ResidualAnchor


def normalised_log_concentration(
    log_concentration: torch.Tensor,
    component: torch.Tensor,
    value: torch.Tensor,
    log_modulation: torch.Tensor,
) -> torch.Tensor:
    """``ℓ_i − ln M_i``, ``M_i = Σ_e value_e · exp(log_modulation_e) / Σ_e value_e`` over the
    entries ``e`` of component ``i``: the modulation's anchor-weighted mean (1 for a component
    without entries).

    With these log-concentrations every component's total under the modulation,
    ``Σ_e exp(ℓ_i − ln M_i) · value_e · exp(log_modulation_e)``, is exactly its total without,
    ``exp(ℓ_i) · Σ_e value_e``. Works in the inputs' dtype (float64 for an exact check).

    Parameters
    ----------
    log_concentration:
        ``[K]`` (or longer: the rest is returned unchanged).
    component, value, log_modulation:
        ``[E]`` each entry's component (int64), unit volume and log-modulation (at its voxel).
    """
    k = log_concentration.shape[0]
    dtype = log_concentration.dtype
    weight = value.to(dtype)
    num = weight.new_zeros(k).index_add(0, component, weight * torch.exp(log_modulation.to(dtype)))
    den = weight.new_zeros(k).index_add(0, component, weight)
    empty = den <= 0
    log_mean = torch.where(
        empty, torch.zeros_like(den), torch.log(num.clamp_min(1e-30)) - torch.log(den + empty)
    )
    return log_concentration - log_mean


def anchor_log_concentration(
    anchor: Anchor,
    log_concentration: torch.Tensor,
    raw: Callable[[torch.Tensor], torch.Tensor],
    config: OrganCodeConfig,
) -> torch.Tensor:
    """The log-concentrations the anchor is read with: ``log_concentration`` itself, or with
    ``config.normalise`` `normalised_log_concentration` of the modulation
    ``B · tanh(raw(p)₀)`` at the voxels of the anchor's entries (one network pass over them).

    ``raw``: points ``[N, 3]`` → the network's outputs ``[N, outputs]``. With
    ``config.normalise_sample`` the means are estimated on the anchor's fixed subsample
    (`_GridAnchor.normalising_entries`), the pass runs over those voxels only."""
    if not config.normalise:
        return log_concentration
    voxel, component, value = anchor.entries()
    if config.normalise_sample is not None:
        keep = anchor.normalising_entries(config.normalise_sample)
        voxel, component, value = voxel[keep], component[keep], value[keep]
    log_mod = entry_log_modulation(anchor, raw, config.bound, voxel=voxel)
    return normalised_log_concentration(log_concentration, component, value, log_mod)


def entry_log_modulation(
    anchor: Anchor,
    raw: Callable[[torch.Tensor], torch.Tensor],
    bound: float,
    dtype: torch.dtype = torch.float32,
    *,
    voxel: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[E]`` the modulation's log, ``B · tanh(raw(p)₀)``, at the voxel of each of the anchor's
    entries (`OrganAnchor.entries`; or at ``voxel`` ``[E]``, flat voxel indices), in ``dtype``:
    one network pass over the distinct voxels."""
    if voxel is None:
        voxel, _, _ = anchor.entries()
    unique, inverse = torch.unique(voxel, return_inverse=True)
    points = voxel_points(anchor.grid, unique)
    return (bound * torch.tanh(raw(points)[..., 0].to(dtype)))[inverse]


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
        The study's compartments: an `OrganAnchor` (``config.organ.anchor = "organs"``) or a
        `ResidualAnchor` (``"residual"``); ``None``: an empty shell.
    log_concentration:
        ``[K]`` initial ``ℓ_k = ln c_k`` (K = ``len(config.compartments)``, the residual anchor's
        sources included); ``None``: zeros.
    scale:
        Activity of a unit residual (`recon.nerf.training.fit` sets it to the data's level).

    Attributes
    ----------
    network:
        The `EmissionField` with the anatomy features and ``config.organ.outputs`` outputs (its
        ``features``, ``scale`` and ``latent`` are the field's, `AnatomyNetworkField`).
    anchor:
        The `OrganAnchor` or `ResidualAnchor`.
    log_concentration:
        ``[K]`` trainable log-concentrations.
    """

    def __init__(
        self,
        grid: ImageGrid,
        config: OrganFieldConfig,
        features: AnatomyFeatures | None = None,
        anchor: Anchor | None = None,
        log_concentration: torch.Tensor | np.ndarray | None = None,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(config, OrganFieldConfig):
            raise TypeError(f"config must be an OrganFieldConfig, got {type(config).__name__}")
        features = AnatomyFeatures(grid, config.features) if features is None else features
        kind = ResidualAnchor if config.organ.anchor == "residual" else OrganAnchor
        anchor = kind(grid) if anchor is None else anchor
        if not isinstance(anchor, kind):
            raise TypeError(
                f"anchor {config.organ.anchor!r} needs a {kind.__name__}, got "
                f"{type(anchor).__name__}"
            )
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

    def anchor_log_concentration(self) -> torch.Tensor:
        """The log-concentrations the anchor is read with (`anchor_log_concentration`: with
        ``normalise``, shifted so the modulation keeps every component's total)."""
        return anchor_log_concentration(
            self.anchor, self.log_concentration, self.network.raw, self.config.organ
        )

    def component_activities(self) -> dict[str, float]:
        """Each component's activity (activity unit · mL; MBq = × 1e-6 for Bq/mL), by name:
        ``Σ_v exp(ℓ'_i) · U_i(v) · m(v) · voxel mL`` over the voxel centres, with the current
        modulation ``m`` and the anchor's log-concentrations ``ℓ'`` (`anchor_log_concentration`).
        With ``normalise`` it is the code's ``exp(ℓ_i) · Σ_v U_i(v) · voxel mL`` (`code_activities`;
        exactly with ``normalise_sample = None``, else up to the sampled mean's error): the
        field's organ (and source) table. The residual head's activity is in no component."""
        _, component, value = self.anchor.entries()
        organ = self.config.organ
        with torch.no_grad():  # one network pass serves the normalisation and the totals
            log_mod = entry_log_modulation(self.anchor, self.network.raw, organ.bound, torch.double)
            log_c: torch.Tensor = self.log_concentration
            if organ.normalise:
                keep = (
                    slice(None)
                    if organ.normalise_sample is None
                    else self.anchor.normalising_entries(organ.normalise_sample)
                )
                log_c = normalised_log_concentration(
                    log_c, component[keep], value[keep], log_mod[keep].float()
                )
            parts = torch.exp(log_c.double())[component] * value.double() * torch.exp(log_mod)
            totals = parts.new_zeros(len(self.config.compartments)).index_add(0, component, parts)
        voxel_ml = self.grid.voxel_volume_mm3 * 1e-3
        return dict(zip(self.config.compartments, (totals * voxel_ml).tolist(), strict=True))

    def code_activities(self) -> dict[str, float]:
        """Each component's activity by its code alone, ``exp(ℓ_i) · Σ_v U_i(v) · voxel mL``
        (activity unit · mL), by name: what `component_activities` preserves under the
        normalised modulation (their ratio − 1 is the normalisation's error)."""
        _, component, value = self.anchor.entries()
        with torch.no_grad():
            sums = value.double().new_zeros(len(self.config.compartments))
            sums = sums.index_add(0, component, value.double())
            totals = torch.exp(self.log_concentration.detach().double()) * sums
        voxel_ml = self.grid.voxel_volume_mm3 * 1e-3
        return dict(zip(self.config.compartments, (totals * voxel_ml).tolist(), strict=True))

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        raw = self.network.raw(points_mm)
        anchor = self.anchor(points_mm, self.anchor_log_concentration())
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


@dataclass(frozen=True)
class StudyAnchor:
    """A study's anchor, with the names of its components and their starting ``ℓ``.

    Attributes
    ----------
    anchor:
        `OrganAnchor` (organ fit) or `ResidualAnchor` (organs + residual fit), on the CPU.
    names:
        The components: compartments (segments, then background regions), then with the
        residual anchor its sources ``"source j"`` (``j`` as in the result's table,
        ``source_j``; a source the table measures at 0 holds nothing and is left out).
    log_concentration:
        ``[K]`` float32 starting ``ℓ`` (`initial_log_concentrations`; a source's ``ln a_j``).
    """

    anchor: Anchor
    names: tuple[str, ...]
    log_concentration: np.ndarray


def study_anchor(
    study: Study,
    kind: str = "organs",
    *,
    organ_fit: OrganFit | None = None,
    organs: OrgansConfig | None = None,
    device: torch.device | str = "cpu",
) -> StudyAnchor:
    """The anchor of ``kind`` (`ANCHORS`) for ``study``.

    ``"organs"``: its organ fit (`study_organ_fit`, or ``organ_fit`` when given).
    ``"residual"``: its organs + residual fit, ``recon.anatomy.reconstruct_organs`` with
    ``organs`` (default: its defaults; the study's anatomy, body support, collimator blur,
    attenuation and scatter, as ``spect recon organs`` fits it): the refined compartments'
    unit volumes and the residual sources (`ResidualAnchor`), each source at the activity of
    the result's table. At ``ℓ`` = ``log_concentration`` its volume is the result's activity
    volume (the model's ``organ_volume()`` plus its sources at those activities).

    Raises
    ------
    ValueError
        The study has no anatomy, an unknown ``kind``.
    """
    if kind not in ANCHORS:
        raise ValueError(f"kind must be one of {list(ANCHORS)}, got {kind!r}")
    if kind == "organs":
        fit = study_organ_fit(study, device=device) if organ_fit is None else organ_fit
        parts = fit.compartments
        anchor = OrganAnchor(study.grid, parts.index, parts.weight)
        start = initial_log_concentrations(fit.concentrations)
        return StudyAnchor(anchor, tuple(parts.names), start)
    from recon.anatomy import reconstruct_organs

    if organs is not None and not organs.residual:
        raise ValueError("the residual anchor needs organs + residual: organs.residual=False")
    outcome = reconstruct_organs(study, config=organs, device=device)
    model = outcome.model
    assert model is not None  # residual=True always gives the model
    with torch.no_grad():
        units = model.unit_volumes().detach().cpu().float()
        conc = model.concentrations().detach().cpu().double().numpy()
        # The sources at the activities of the result's table (the conjugate views' measure),
        # as in the result's volume.
        acts = torch.tensor(outcome.source_activities, dtype=torch.float64)
        kept = [j for j in range(len(acts)) if float(acts[j]) > 0]  # a source measured at 0:
        for j in kept:  # nothing there (no finite ℓ)
            unit = model.source_unit_volume(j).detach().cpu().float()
            units = torch.cat([units, unit[None]])
    names = tuple(model.compartments.names) + tuple(f"source {j + 1}" for j in kept)
    flat = units.reshape(len(names), -1)
    comp, voxel = torch.nonzero(flat > 0, as_tuple=True)
    order = torch.argsort(voxel, stable=True)
    voxel, comp = voxel[order], comp[order]
    entries = ResidualAnchor(study.grid, voxel, comp, flat[comp, voxel])
    start_c = initial_log_concentrations(conc)
    start_a = np.log(acts[kept].numpy()).astype(np.float32)
    return StudyAnchor(entries, names, np.concatenate([start_c, start_a]).astype(np.float32))


def organ_field_for_study(
    study: Study,
    config: OrganFieldConfig,
    *,
    organ_fit: OrganFit | None = None,
    organs: OrgansConfig | None = None,
    scale: float = 1.0,
    device: torch.device | str = "cpu",
) -> OrganAnchoredField:
    """An `OrganAnchoredField` for ``study``, its anchor at the study's organ fit (or, with
    ``config.organ.anchor = "residual"``, its organs + residual fit; `study_anchor`).

    Parameters
    ----------
    study:
        The study (μ or CT, an anatomy).
    config:
        The architecture; its ``features`` vocabulary is kept (e.g. a cohort's), ``mu_source``,
        ``body_source`` and ``compartments`` are completed from the study.
    organ_fit:
        The study's `recon.anatomy.OrganFit` (default: `study_organ_fit`; the organs anchor
        only).
    organs:
        Settings of the organs + residual fit (the residual anchor only; default: its
        defaults).
    scale:
        The residual's unit (`recon.nerf.training.fit` sets it from the data).
    device:
        Where the organ fit's projections run.
    """
    from recon.nerf.anatomy_field import anatomy_features_for_study

    made = study_anchor(
        study, config.organ.anchor, organ_fit=organ_fit, organs=organs, device=device
    )
    features = anatomy_features_for_study(study, config.features)
    full = dataclasses.replace(config, features=features.config, compartments=made.names)
    return OrganAnchoredField(
        study.grid, full, features, made.anchor, made.log_concentration, scale=scale
    )
