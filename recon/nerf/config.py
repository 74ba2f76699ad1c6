"""Training settings of a neural-field (NeRF) reconstruction: `TrainConfig`.

One frozen dataclass holds everything `recon.nerf.training.fit` needs besides the data: the
schedule (steps, rays, samples, learning rate), the optimiser, reproducibility (seed,
deterministic mode), validation and output intervals, the regulariser weights and the field's
architecture (`recon.nerf.field.FieldConfig`). Two presets exist: `TrainConfig.cpu_default`
(a small hash-grid field, minutes on a laptop) and `TrainConfig.gpu_default` (pieNeRF's size).

A TOML file sets any subset of the fields on top of a preset; the architecture goes in a
``[field]`` table::

    steps = 2000
    rays_per_step = 4096
    n_samples = 48          # or "lattice": one sample per voxel along each ray
    lr_schedule = "cosine"
    tv_ray = 0.01

    [field]
    encoding = "hashgrid"
    hash_log2_size = 16
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recon.nerf.field import FieldConfig

__all__ = [
    "AMP_MODES",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "REGULARISERS",
    "RENDER_MODES",
    "SELECT_MODES",
    "TrainConfig",
]

LR_SCHEDULES = ("constant", "cosine", "step")
OPTIMIZERS = ("adam", "lbfgs")
AMP_MODES = ("off", "bf16", "fp16")
#: How a training step renders the data (see `TrainConfig.render`).
RENDER_MODES = ("auto", "lines", "views")
#: Which state a fit returns (see `TrainConfig.select`).
SELECT_MODES = ("last", "best_holdout")
#: The regulariser weights, in the order they appear in logs.
REGULARISERS = ("latent_l2", "ct_smoothness", "tv_ray", "tv_3d", "l1_activity")

_INT_FIELDS = (
    "steps",
    "rays_per_step",
    "seed",
    "val_every",
    "log_every",
    "preview_every",
    "checkpoint_every",
    "reg_points",
)
_NONNEGATIVE_FLOATS = (
    "lr_min",
    *REGULARISERS,
    "ct_threshold_per_mm",
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that controls one neural-field fit, except the data.

    Parameters
    ----------
    steps:
        Optimiser steps in total (a resumed run continues up to this number).
    rays_per_step:
        Detector lines drawn (with replacement) per step. With opposed views (AP/PA) a line is
        rendered in both views from the same field samples, so it yields two measured pixels.
    n_samples:
        Samples per ray; ``None`` = the projector's lattice (one sample per voxel along the ray).
    jitter:
        Shift each ray's samples by a random fraction of a step (stratified sampling).
    render:
        How a step renders the data: ``"lines"`` (``rays_per_step`` random detector lines; no
        collimator blur), ``"views"`` (every view whole, with the collimator blur; the loss is
        over all training pixels and ``rays_per_step`` is unused) or ``"auto"`` (default:
        views when a collimator blur is modelled, i.e. the study names one, else lines).
    lr, lr_schedule, lr_gamma, lr_milestones, lr_min:
        Learning rate and its schedule: ``"constant"``; ``"cosine"`` (from ``lr`` down to
        ``lr_min`` at the last step); ``"step"`` (multiplied by ``lr_gamma`` at each step
        number in ``lr_milestones``).
    grad_clip:
        Maximum global gradient norm (``None`` or 0: no clipping).
    amp:
        Automatic mixed precision of the field on CUDA: ``"off"``, ``"bf16"`` or ``"fp16"``
        (the latter with a gradient scaler). Ignored on other devices (see ``cpu_bf16``).
    cpu_bf16:
        Opt-in speed option for the CPU: run the field's matrix products under bfloat16
        autocast (``torch.autocast("cpu", torch.bfloat16)``; the result records
        ``amp = "bf16"``). Faster on CPUs with bfloat16 instructions (AVX-512 BF16, AMX), at
        reduced precision (8 mantissa bits in the products; parameters, optimiser, loss and the
        projector's sums stay float32). Off by default; Adam only; it has no effect on CUDA,
        where ``amp`` applies as before.
    seed:
        Seeds the ray sampler and jitter (a `torch.Generator`), ``torch``, ``random`` and
        ``numpy``; the train/validation split uses its own generator seeded from it.
    deterministic:
        ``torch.use_deterministic_algorithms(True)`` during the fit (restored afterwards).
    holdout_fraction:
        Fraction of each view's pixels held out for validation (fixed by ``seed``), in [0, 1).
    select:
        The state a fit returns: ``"last"`` (default: the last step's) or ``"best_holdout"``: of
        the state at the start (the representation as given, e.g. a prior's anchor, or at a
        resume) and at every validation, the one with the lowest held-out deviance (ties: the
        earliest); the trainer keeps a copy of it (also in checkpoints, so a resume continues
        the choice) and restores it at the end. Needs ``holdout_fraction`` > 0; single-study
        fits only (cohort training scores no held-out pixels of its own).
    val_every, log_every, preview_every, checkpoint_every:
        Intervals in steps (0 = never; validation, logging and a checkpoint also happen at the
        last step). Previews and checkpoints need an output folder.
    optimizer:
        ``"adam"`` (random ray batches) or ``"lbfgs"`` (full batch of all training pixels,
        no jitter; meant for voxel grids, `recon.nerf.representations.VoxelActivity`).
    latent_l2, ct_smoothness, tv_ray, tv_3d, l1_activity:
        Regulariser weights (all 0 by default; see `recon.nerf.losses`). ``l1_activity``
        needs a supplied activity volume: that is 3D supervision, recorded in the result.
    ct_threshold_per_mm:
        ``ct_smoothness`` only compares points whose μ differs by less than this (1/mm).
    reg_offset_mm:
        Distance between the point pairs of ``ct_smoothness`` and ``tv_3d`` (mm; ``None`` = the
        smallest voxel size).
    reg_points:
        Random points per step for ``ct_smoothness``, ``tv_3d`` and ``l1_activity``.
    field:
        Architecture of the `recon.nerf.field.EmissionField`.
    """

    steps: int = 1000
    rays_per_step: int = 4096
    n_samples: int | None = None
    jitter: bool = True
    render: str = "auto"
    lr: float = 5e-4
    lr_schedule: str = "constant"
    lr_gamma: float = 0.1
    lr_milestones: tuple[int, ...] = ()
    lr_min: float = 0.0
    grad_clip: float | None = 1.0
    amp: str = "off"
    cpu_bf16: bool = False
    seed: int = 0
    deterministic: bool = False
    holdout_fraction: float = 0.2
    select: str = "last"
    val_every: int = 100
    log_every: int = 10
    preview_every: int = 0
    checkpoint_every: int = 500
    optimizer: str = "adam"
    latent_l2: float = 0.0
    ct_smoothness: float = 0.0
    tv_ray: float = 0.0
    tv_3d: float = 0.0
    l1_activity: float = 0.0
    ct_threshold_per_mm: float = 1e-4
    reg_offset_mm: float | None = None
    reg_points: int = 4096
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("rays_per_step", "reg_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.n_samples is not None and (
            isinstance(self.n_samples, bool)
            or not isinstance(self.n_samples, int)
            or self.n_samples < 1
        ):
            raise ValueError(
                f"n_samples must be a positive integer or None, got {self.n_samples!r}"
            )
        if not _finite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not _finite(self.lr_gamma) or self.lr_gamma <= 0:
            raise ValueError(f"lr_gamma must be a finite number > 0, got {self.lr_gamma!r}")
        for name in _NONNEGATIVE_FLOATS:
            v = getattr(self, name)
            if not _finite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("grad_clip", "reg_offset_mm"):
            v = getattr(self, name)
            if v is not None and (not _finite(v) or v < 0):
                raise ValueError(f"{name} must be None or a finite number >= 0, got {v!r}")
        if self.reg_offset_mm == 0:
            raise ValueError("reg_offset_mm must be > 0 (or None for one voxel)")
        if not _finite(self.holdout_fraction) or not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction!r}")
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("amp", self.amp, AMP_MODES)
        _choice("render", self.render, RENDER_MODES)
        _choice("select", self.select, SELECT_MODES)
        if self.select == "best_holdout" and self.holdout_fraction == 0:
            raise ValueError(
                "select 'best_holdout' needs held-out pixels to score: holdout_fraction must be "
                f"> 0, got {self.holdout_fraction!r}"
            )
        for name in ("jitter", "deterministic", "cpu_bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        try:
            milestones = tuple(int(m) for m in self.lr_milestones)
        except (TypeError, ValueError):
            raise ValueError(
                f"lr_milestones must be a list of step numbers, got {self.lr_milestones!r}"
            ) from None
        if any(m < 1 for m in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(
                f"lr_milestones must be increasing step numbers >= 1, got {list(milestones)}"
            )
        object.__setattr__(self, "lr_milestones", milestones)
        if not isinstance(self.field, FieldConfig):
            raise ValueError(f"field must be a FieldConfig, got {type(self.field).__name__}")

    # -- presets -----------------------------------------------------------------------------
    @classmethod
    def cpu_default(cls) -> TrainConfig:
        """A fast CPU setting: small hash grid (6 levels × 2 features, resolutions 8–64, 2¹⁵
        entries per level), a 2×32 MLP and a 16-d latent code.

        400 steps of 2048 rays × 32 jittered samples, Adam with a cosine decay from 5e-3 to
        2.5e-4: about a minute for a 64³ AP/PA study on one or two cores (``docs/nerf.md``).
        """
        return cls(
            steps=400,
            rays_per_step=2048,
            n_samples=32,
            lr=5e-3,
            lr_schedule="cosine",
            lr_min=2.5e-4,
            val_every=100,
            log_every=10,
            preview_every=200,
            checkpoint_every=200,
            field=FieldConfig(
                encoding="hashgrid",
                latent_dim=16,
                hash_levels=6,
                hash_features=2,
                hash_log2_size=15,
                hash_base_resolution=8,
                hash_finest_resolution=64,
                hash_mlp_depth=2,
                hash_mlp_width=32,
            ),
        )

    @classmethod
    def gpu_default(cls) -> TrainConfig:
        """pieNeRF's size: frequency encoding (10 bands), 8×256 MLP with a skip at layer 4,
        a 256-d latent code, 16384 rays per step × 32 jittered samples, Adam at 5e-4."""
        return cls(
            steps=20000,
            rays_per_step=16384,
            n_samples=32,
            lr=5e-4,
            lr_schedule="constant",
            val_every=500,
            log_every=50,
            preview_every=2000,
            checkpoint_every=2000,
            field=FieldConfig(encoding="frequency", n_frequencies=10, latent_dim=256),
        )

    # -- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain values only (the field architecture as a nested dict, tuples as lists)."""
        out = dataclasses.asdict(self)
        out["lr_milestones"] = list(self.lr_milestones)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """``base`` (default ``TrainConfig()``) with the fields in ``values`` replaced.

        ``values["field"]`` (a mapping) replaces fields of the architecture. ``n_samples``
        may be ``"lattice"`` (TOML has no null). Unknown keys raise a ValueError that lists the
        valid ones.
        """
        base = cls() if base is None else base
        if not isinstance(values, Mapping):
            raise ValueError(
                f"a training configuration must be a table, got {type(values).__name__}"
            )
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {unknown}; valid keys: {', '.join(valid)}"
            )
        changes = dict(values)
        if "field" in changes:
            changes["field"] = _field_config(changes["field"], base.field)
        if changes.get("n_samples") in ("lattice", "none", None):
            changes["n_samples"] = None
        if "grad_clip" in changes and changes["grad_clip"] in (0, 0.0):
            changes["grad_clip"] = None
        if "reg_offset_mm" in changes and changes["reg_offset_mm"] in ("voxel", None):
            changes["reg_offset_mm"] = None
        for name in ("lr", "lr_gamma", "lr_min", "holdout_fraction", *REGULARISERS):
            if isinstance(changes.get(name), int) and not isinstance(changes[name], bool):
                changes[name] = float(changes[name])
        try:
            return dataclasses.replace(base, **changes)
        except TypeError as error:  # a wrong type deep inside a comparison
            raise ValueError(f"bad training configuration: {error}") from None

    @classmethod
    def from_toml(
        cls, path: str | os.PathLike[str], base: TrainConfig | None = None
    ) -> TrainConfig:
        """Read a TOML file of settings on top of ``base`` (default ``TrainConfig()``).

        Raises
        ------
        ValueError
            Unknown keys (the message lists the valid ones), bad values, or a file that is not
            valid TOML (the message names the file).
        FileNotFoundError
            The file does not exist.
        """
        import tomllib

        from recon.io.text import read_text

        try:
            values = tomllib.loads(read_text(path))
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{os.fspath(path)}: not valid TOML ({error})") from None
        try:
            return cls.from_dict(values, base)
        except ValueError as error:
            raise ValueError(f"{os.fspath(path)}: {error}") from None

    @property
    def regularisers(self) -> dict[str, float]:
        """``{name: weight}`` of the regularisers, in log order."""
        return {name: float(getattr(self, name)) for name in REGULARISERS}


def _field_config(values: object, base: FieldConfig) -> FieldConfig:
    if isinstance(values, FieldConfig):
        return values
    if not isinstance(values, Mapping):
        raise ValueError(f"[field] must be a table, got {type(values).__name__}")
    valid = [f.name for f in dataclasses.fields(FieldConfig)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown [field] setting(s) {unknown}; valid keys: {', '.join(valid)}")
    for name, value in values.items():
        expected = str if name == "encoding" else int
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError(
                f"[field] {name} must be {'a string' if expected is str else 'an integer'}, "
                f"got {value!r}"
            )
    try:
        return dataclasses.replace(base, **dict(values))
    except TypeError as error:
        raise ValueError(f"bad [field] configuration: {error}") from None


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
