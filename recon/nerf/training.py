"""`fit`: fit a differentiable activity representation to a study's projections.

The model of the counts is exact physics (`recon.nerf.rays`): ``ŷ = count_scale · A e + b`` with
the study's attenuation, one count scale for all views, the study's background and, when the
study names a collimator, its depth-dependent blur. ``TrainConfig.render`` chooses how a step
sees the data:

- ``"lines"``: random training lines (uniform over the primary view's training pixels; with AP
  and PA each line is rendered in both views from the same field samples). No collimator blur.
- ``"views"``: every view whole, through `spectproj.SPECTProjector.forward` with the collimator
  blur; the loss sums over the training pixels (``train_mask``) only. A representation with a
  ``volume()`` method (``[Z, Y, X]`` on the study grid, e.g. `VoxelActivity`) takes the
  projector's voxel path, any other is evaluated on its sampling lattice.
- ``"auto"`` (default): views when a collimator blur is to be modelled, else lines.

An optional ``support`` (`recon.support`) keeps the activity inside the body: the
representation is wrapped in `recon.support.SupportedField`. Each step computes

    loss = (poisson_nll(ŷ, y) − poisson_nll_saturated(y)) / count_level + Σ_k w_k · R_k

(half the mean Poisson deviance per pixel, divided by the mean count so that the loss, its
gradients and hence the whole fit are unchanged when the data are scaled), and takes an Adam (or
L-BFGS) step with the learning-rate schedule and gradient clipping of the `TrainConfig`.

Outputs in ``out_dir`` (optional): ``log.csv`` and ``log.json`` (one row per logged step),
``checkpoint-XXXXXX.pt`` and ``checkpoint-last.pt`` (`recon.nerf.checkpoint`),
``preview-XXXXXX-projections.png`` and ``preview-XXXXXX-depth.png`` (`recon.nerf.previews`).

The loop is `recon.training.loop.Trainer` (with cohort training's): Ctrl-C or SIGTERM finish
the step, write its checkpoint and raise `TrainingInterrupted`; resuming from it continues
exactly. A non-finite loss or gradient raises `TrainingDiverged` without writing a checkpoint.
A representation's own ``penalty()`` is added to the loss (``model_prior``).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recon.io.study import Study
from recon.nerf.checkpoint import capture_rng, grid_to_dict, load_checkpoint, restore_rng
from recon.nerf.config import REGULARISERS, TrainConfig
from recon.nerf.previews import write_previews
from recon.nerf.rays import RayData, study_digest
from recon.nerf.representations import set_activity_scale
from recon.support import SupportedField, representation_volume
from recon.training import terms
from recon.training.loop import (
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    lr_at,
    require_same,
)
from recon.training.runtime import AutocastField, amp_mode, voxel_points
from spectproj import CollimatorResponse

__all__ = [
    "LOG_COLUMNS",
    "FitResult",
    "StepCallback",
    "StudyPhysics",
    "TrainingDiverged",
    "TrainingInterrupted",
    "fit",
    "lr_at",
    "rendered_counts",
    "representation_info",
    "study_physics",
]

#: Columns of ``log.csv`` / ``log.json`` (regulariser values are unweighted; ``model_prior``: the
#: representation's own ``penalty()``, if it has one, `recon.training.loop`).
LOG_COLUMNS = (
    "step", "loss", "nll", *REGULARISERS, "model_prior", "lr", "val_deviance", "val_psnr",
    "time_s",
)  # fmt: skip

#: ``callback(step, total_steps, metrics)`` after every step; ``metrics`` has ``loss``, ``nll``,
#: ``lr`` and the latest ``val_psnr`` / ``val_deviance`` (NaN before the first validation).
StepCallback = Callable[[int, int, Mapping[str, float]], None]

#: Seed offset of the ray sampler's generator (the global torch seed uses ``seed`` itself).
SAMPLER_SEED_OFFSET = 1


@dataclass
class FitResult:
    """What `fit` returns.

    Attributes
    ----------
    representation:
        The trained representation (the object passed in, trained in place).
    config:
        The `TrainConfig` used.
    history:
        Logged rows (dicts with the keys of `LOG_COLUMNS`; NaN where not computed).
    losses:
        The loss of every step, from step 1 (also across a resume).
    steps_done:
        Optimiser steps completed.
    activity_level:
        The data's uniform activity level (activity unit) that set the representation's scale.
    count_scale, count_level:
        The study's count scale (counts per activity·mm) and mean training count.
    device, amp:
        Where it ran and the mixed precision actually used (``"off"`` off CUDA, unless
        ``cpu_bf16`` made it ``"bf16"`` on the CPU).
    used_3d_supervision:
        Whether an activity volume supervised the fit (``l1_activity`` > 0).
    val_deviance, val_psnr:
        The validation of the returned state (mean deviance per held-out pixel, PSNR in dB):
        the last one, or with ``config.select = "best_holdout"`` the kept state's; NaN if none.
    selected_step:
        The step whose state the representation holds: ``steps_done`` with ``select = "last"``,
        with ``"best_holdout"`` the kept one (0: the state it started from).
    elapsed_s:
        Training time (s), including time before a resume.
    checkpoint:
        The last checkpoint written (``None`` without an output folder).
    out_dir:
        The output folder, if any.
    train_mask:
        ``[V, rows, bins]`` bool, the pixels used for training.
    representation_info:
        What `recon.nerf.export.load_field` needs to rebuild the model (`representation_info`).
    render:
        The rendering the fit used: ``"lines"`` or ``"views"`` (``TrainConfig.render`` resolved).
    collimator:
        One line on the collimator blur: what was modelled, or why none was.
    collimator_response:
        The blur modelled (``None``: none).
    support:
        One line on the support applied by `fit` (``None``: none). With a support,
        ``representation`` is the `recon.support.SupportedField` wrapping the trained model
        (its ``state_dict`` is the model's).
    """

    representation: Any
    config: TrainConfig
    history: list[dict[str, float]]
    losses: list[float]
    steps_done: int
    activity_level: float
    count_scale: float
    count_level: float
    device: str
    amp: str
    used_3d_supervision: bool
    val_deviance: float
    val_psnr: float
    elapsed_s: float
    checkpoint: Path | None
    out_dir: Path | None
    train_mask: np.ndarray
    representation_info: dict[str, Any] = field(default_factory=dict)
    render: str = "lines"
    collimator: str = "not modelled"
    collimator_response: CollimatorResponse | None = None
    support: str | None = None
    selected_step: int | None = None

    @property
    def physics(self) -> dict[str, Any]:
        """``{"render", "collimator", "support"}``: what the fit modelled, for a result's
        parameters (``recon.nerf.export.to_result``'s ``extra_parameters``)."""
        return {"render": self.render, "collimator": self.collimator, "support": self.support}

    def history_arrays(self) -> dict[str, np.ndarray]:
        """The logged rows as equal-length float64 arrays, one per column."""
        return {
            name: np.asarray([row.get(name, math.nan) for row in self.history], dtype=np.float64)
            for name in LOG_COLUMNS
        }


def representation_info(representation: Any) -> dict[str, Any]:
    """``{"kind", "grid", "field_config"}`` of a representation (primitives only); a
    `recon.support.SupportedField` is described by the model it wraps."""
    while isinstance(representation, SupportedField):
        representation = representation.field
    grid = getattr(representation, "grid", None)
    config = getattr(representation, "config", None)
    info: dict[str, Any] = {
        "kind": type(representation).__name__,
        "grid": None,
        "field_config": None,
    }
    if grid is not None and hasattr(grid, "shape"):
        info["grid"] = grid_to_dict(grid)
    if config is not None and hasattr(config, "to_dict"):
        info["field_config"] = dict(config.to_dict())
    return info


# ----------------------------------------------------------------------------------------------


def fit(
    representation: Any,
    study: Study,
    config: TrainConfig | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    callback: StepCallback | None = None,
    activity_supervision: torch.Tensor | np.ndarray | None = None,
    device: torch.device | str = "cpu",
    init_scale: bool = True,
    support: torch.Tensor | np.ndarray | None = None,
    collimator: CollimatorResponse | str | None = "study",
) -> FitResult:
    """Fit ``representation`` to the projections of ``study``.

    Parameters
    ----------
    representation:
        A `torch.nn.Module` mapping points ``[N, 3]`` (x, y, z mm) to activity ``[N]`` >= 0,
        e.g. `recon.nerf.field.EmissionField` or `recon.nerf.representations.VoxelActivity`.
        It is moved to ``device`` and trained in place. A ``penalty()`` method returning a
        scalar tensor (the model's own prior) is added to the loss and logged as
        ``model_prior``.
    study:
        Counts ``[V, rows, bins]``, optional background, μ and the count scale.
    config:
        Training settings (default ``TrainConfig()``).
    out_dir:
        Folder for logs, previews and checkpoints (created if missing); ``None``: none written.
    resume:
        A checkpoint to continue from (same study, architecture, optimiser, seed and holdout;
        the other settings, e.g. ``steps``, come from ``config``).
    callback:
        `StepCallback` after every step (e.g. a progress bar).
    activity_supervision:
        ``[Z, Y, X]`` activity on the study grid for the ``l1_activity`` regulariser (3D
        supervision; the result records ``used_3d_supervision``).
    device:
        ``"cpu"``, ``"cuda"``, ... (``amp`` is used on CUDA only; ``cpu_bf16`` on the CPU only).
    init_scale:
        On a fresh start, set the representation's ``scale`` buffer (if it has one) to the
        data's activity level `RayData.activity_level` (a unit activity inside ``support``
        when given).
    support:
        ``[Z, Y, X]`` (bool or 0..1) on the study grid, e.g. `recon.support.resolve_support`:
        the activity is the representation times the support (`recon.support.SupportedField`,
        trilinear); ``None``: none. The result's ``representation`` is then the wrapper.
    collimator:
        The depth-dependent blur to model: ``"study"`` (default; `Study.collimator_response`,
        i.e. the blur the study names, if it has a radius), a `spectproj.CollimatorResponse`,
        or ``None`` (no blur). The blur needs whole views: with ``TrainConfig.render`` ``"auto"``
        it selects ``"views"``; ``"lines"`` cannot apply it (the study's blur is then not
        modelled, as the result records; an explicit response raises).

    Returns
    -------
    FitResult

    Raises
    ------
    TrainingDiverged
        The loss or gradients became NaN/Inf (the last good checkpoint is kept).
    TrainingInterrupted
        ``KeyboardInterrupt`` during training (a checkpoint was written first, with
        ``out_dir``).
    ValueError
        Bad settings, a study without counts, a checkpoint that does not match, CUDA missing,
        a support of another shape, a collimator with ``render="lines"``.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    dev = _device(device)
    if not isinstance(representation, nn.Module):
        raise TypeError(
            "representation must be a torch.nn.Module mapping points [N, 3] to activity [N], "
            f"got {type(representation).__name__}"
        )
    representation.to(dev)
    if not any(p.requires_grad for p in representation.parameters()):
        raise ValueError("the representation has no trainable parameters")
    supervision = _supervision(activity_supervision, study, config, dev)
    physics = study_physics(study, config, collimator)
    model: nn.Module = representation
    support_note = None
    if support is not None:
        model = SupportedField(representation, support).to(dev)
        share = float(model.support.mean()) * 100.0
        support_note = f"applied, trilinear ({share:.1f} % of the grid)"

    trainer, objective = _trainer(
        model, study, config, dev, supervision, out_dir, physics, representation
    )
    if resume is None:
        objective.start(init_scale)
    else:
        payload = load_checkpoint(resume)
        objective.check_resume(payload, Path(resume))
        trainer.restore(payload)
        objective.restore(payload)
    trainer.run(callback)
    if math.isnan(objective.latest["val_psnr"]):  # no step ran: validate the model as it is
        objective.validate()
    return objective.result(trainer, support_note)


# ----------------------------------------------------------------------------------------------


def _trainer(
    model: nn.Module,
    study: Study,
    config: TrainConfig,
    dev: torch.device,
    supervision: torch.Tensor | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    physics: StudyPhysics | None = None,
    representation: nn.Module | None = None,
) -> tuple[Trainer, _StudyObjective]:
    """The `Trainer` of a fit and its objective (`fit`; the benchmarks time its steps)."""
    physics = StudyPhysics("lines", None, "not modelled") if physics is None else physics
    objective = _StudyObjective(
        model, model if representation is None else representation, study, config, dev,
        supervision, physics,
    )  # fmt: skip
    if config.optimizer == "lbfgs":
        optimizer: torch.optim.Optimizer = torch.optim.LBFGS(
            objective.params, lr=config.lr, max_iter=1, history_size=20,
            line_search_fn="strong_wolfe",
        )  # fmt: skip
    else:
        optimizer = torch.optim.Adam(objective.params, lr=config.lr)
    return Trainer(objective, config, optimizer, dev, out_dir), objective


class _StudyObjective:
    """The `recon.training.loop.Objective` of one study: lines or whole views, support,
    supervision, regularisers."""

    def __init__(
        self,
        model: nn.Module,
        representation: nn.Module,
        study: Study,
        config: TrainConfig,
        dev: torch.device,
        supervision: torch.Tensor | None,
        physics: StudyPhysics,
    ) -> None:
        self.model, self.representation = model, representation
        self.study, self.config, self.dev, self.physics = study, config, dev, physics
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.supervision = supervision
        self.columns = LOG_COLUMNS
        self.latest = {"val_deviance": math.nan, "val_psnr": math.nan}
        self.data = RayData(
            study, holdout_fraction=config.holdout_fraction, seed=config.seed, device=dev,
            collimator=physics.response,
        )  # fmt: skip
        if len(self.data.train_lines) == 0:
            raise ValueError("no training pixels (holdout_fraction leaves none)")
        self.views = physics.render == "views"
        self.amp = amp_mode(config, dev)
        self.sampler = torch.Generator().manual_seed(config.seed + SAMPLER_SEED_OFFSET)
        self.reg_offset = config.reg_offset_mm or float(min(study.grid.spacing_mm))
        self.level = 1.0
        self.count_level = 1.0
        self.digest = study_digest(study)

    # -- start and resume --------------------------------------------------------------------
    def start(self, init_scale: bool) -> None:
        """A fresh start: seed the global RNGs, derive the data's levels, set the scale."""
        c = self.config
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        np.random.seed(c.seed % 2**32)  # noqa: NPY002 - seeds the legacy global RNG
        support = self.model.support if isinstance(self.model, SupportedField) else None
        self.level = self.data.activity_level(support)
        self.count_level = self.data.count_level()
        if init_scale:
            set_activity_scale(self.model, self.level)

    def check_resume(self, payload: Mapping[str, Any], path: Path) -> None:
        if payload["data"]["digest"] != self.digest:
            raise ValueError(f"{path}: the checkpoint was made from another study")
        info = representation_info(self.model)
        saved = payload["representation"]
        if saved["kind"] != info["kind"] or saved["field_config"] != info["field_config"]:
            raise ValueError(
                f"{path}: the checkpoint holds a {saved['kind']} with architecture "
                f"{saved['field_config']}, not this {info['kind']} ({info['field_config']})"
            )
        require_same(
            path, payload["config"], self.config, ("optimizer", "seed", "holdout_fraction")
        )

    def restore(self, payload: Mapping[str, Any]) -> None:
        restore_rng(payload["rng"], self.sampler)
        self.level = float(payload["data"]["activity_level"])
        self.count_level = float(payload["data"]["count_level"])

    def rng_state(self) -> dict[str, Any]:
        return capture_rng(self.sampler)

    def set_rng_state(self, state: dict[str, Any]) -> None:
        restore_rng(state, self.sampler)

    # -- a step ------------------------------------------------------------------------------
    def draw(self, step: int) -> dict[str, torch.Tensor]:
        """Random lines and regulariser points of one step (CPU generator, then the device)."""
        c, g = self.config, self.sampler
        batch: dict[str, torch.Tensor] = {}
        if self.views:
            pass  # every view, whole: nothing to draw
        elif c.optimizer == "lbfgs":
            batch["lines"] = self.data.train_lines
        else:
            batch["lines"] = self.data.sample_lines(c.rays_per_step, g)
        if c.tv_3d > 0 or c.ct_smoothness > 0:
            u, d = terms.draw_pairs(c.reg_points, g)
            p, q = terms.pairs_in_grid(self.study.grid, u, d, self.reg_offset, self.dev)
            batch["reg_p"], batch["reg_q"] = p, q
        if c.l1_activity > 0 and self.supervision is not None:
            n_vox = self.supervision.numel()
            batch["l1_index"] = torch.randint(n_vox, (c.reg_points,), generator=g).to(self.dev)
        return batch

    def loss(
        self, batch: dict[str, torch.Tensor], autocast: Callable[[], Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        jitter = c.jitter and c.optimizer == "adam"
        if self.views:
            rendered = self.data.render_views(
                self._view_target(autocast, for_training=True), c.n_samples, jitter=jitter,
                generator=self.sampler, record=c.tv_ray > 0,
            )  # fmt: skip
        else:
            with autocast():
                rendered = self.data.render_lines(
                    self.model, batch["lines"], n_samples=c.n_samples, jitter=jitter,
                    generator=self.sampler, record=c.tv_ray > 0,
                )  # fmt: skip
        expected, counts = rendered.expected.float(), rendered.counts.float()
        loss, nll = terms.data_term(expected, counts, self.count_level)
        parts: dict[str, torch.Tensor] = {"nll": nll.detach()}
        supervision = None
        if "l1_index" in batch:
            idx = batch["l1_index"]
            target = self.supervision.reshape(-1)[idx]  # type: ignore[union-attr]  # l1_index is drawn only with supervision
            supervision = (voxel_points(self.study.grid, idx), target)
        regs = terms.field_regularisers(
            self.model, c, self.level, latent=getattr(self.model, "latent", None),
            ray_samples=rendered.samples,
            pairs=(batch["reg_p"], batch["reg_q"]) if "reg_p" in batch else None,
            mu_at=self.data.mu_at, supervision=supervision, autocast=autocast,
        )  # fmt: skip
        for name, value in regs.items():
            loss = loss + getattr(c, name) * value
            parts[name] = value.detach()
        return loss, parts

    def _view_target(self, autocast: Callable[[], Any] | None, for_training: bool) -> Any:
        """What whole-view rendering projects: the representation's volume (voxel path) when it
        has one (and no per-ray regulariser needs field samples), else the field itself (under
        autocast when mixed precision is on)."""
        if not (for_training and self.config.tv_ray > 0):
            volume = representation_volume(self.model)
            if volume is not None and tuple(volume.shape) == self.study.grid.shape:
                return volume.to(self.data.dtype)
        if self.amp == "off" or autocast is None:
            return self.model
        return AutocastField(self.model, autocast)

    # -- validation and outputs --------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        c = self.config
        self.model.eval()
        if not self.views:
            deviance, psnr = self.data.validate(self.model, c.n_samples)
        else:
            with torch.no_grad():
                target = self._view_target(None, for_training=False)
            deviance, psnr = self.data.validate(target, c.n_samples, render="views")
        self.model.train()
        self.latest = {"val_deviance": deviance, "val_psnr": psnr}
        return dict(self.latest)

    @property
    def used_3d_supervision(self) -> bool:
        return self.supervision is not None and self.config.l1_activity > 0

    def checkpoint_extras(self) -> dict[str, Any]:
        return {
            "representation": representation_info(self.model),
            "config": self.config.to_dict(),
            "rng": capture_rng(self.sampler),
            "data": {
                "render": self.physics.render,
                "collimator": self.physics.note,
                "digest": self.digest,
                "count_scale": self.data.count_scale,
                "activity_level": self.level,
                "count_level": self.count_level,
                "used_3d_supervision": self.used_3d_supervision,
            },
        }

    def previews(self, step: int, out_dir: Path) -> None:
        self.model.eval()
        write_previews(
            out_dir, step, self.data, self.model, self.config.n_samples, self.study.activity_unit
        )
        self.model.train()

    def result(self, trainer: Trainer, support_note: str | None) -> FitResult:
        return FitResult(
            representation=self.model,
            config=self.config,
            history=trainer.history,
            losses=trainer.losses,
            steps_done=trainer.step,
            activity_level=self.level,
            count_scale=self.data.count_scale,
            count_level=self.count_level,
            device=str(self.dev),
            amp=trainer.amp,
            used_3d_supervision=self.used_3d_supervision,
            val_deviance=float(self.latest["val_deviance"]),
            val_psnr=float(self.latest["val_psnr"]),
            elapsed_s=trainer.elapsed_before + trainer.run_time_s,
            checkpoint=trainer.checkpoint,
            out_dir=trainer.out_dir,
            train_mask=self.data.train_mask.cpu().numpy(),
            representation_info=representation_info(self.model),
            render=self.physics.render,
            collimator=self.physics.note,
            collimator_response=self.physics.response,
            support=support_note,
            selected_step=trainer.selected_step,
        )


# ----------------------------------------------------------------------------------------------
# Physics


@dataclass(frozen=True)
class StudyPhysics:
    """How a study is rendered in training (`study_physics`): ``render`` (``"lines"`` or
    ``"views"``), the collimator ``response`` modelled (``None``: none) and a one-line ``note``."""

    render: str
    response: CollimatorResponse | None
    note: str


def study_physics(
    study: Study, config: TrainConfig, collimator: CollimatorResponse | str | None
) -> StudyPhysics:
    """Resolve ``collimator`` (as `fit` takes it) and ``config.render`` against ``study``."""
    acq = study.acquisition
    if isinstance(collimator, str):
        if collimator != "study":
            raise ValueError(
                f"collimator must be 'study', a CollimatorResponse or None, got {collimator!r}"
            )
        try:
            response = study.collimator_response()
        except ValueError as error:
            raise ValueError(
                f"{error}; pass collimator=None (spect recon nerf --no-collimator) to fit "
                "without collimator blur"
            ) from None
        if response is None:
            note = (
                f"none ({acq.collimator} named, but the study has no radius_mm)"
                if acq.collimator
                else "none (the study names no collimator)"
            )
        else:
            note = _blur_note(acq.collimator or "", response, acq.energy_keV, acq.radius_mm)
    elif collimator is None:
        response, note = None, "off (collimator=None)"
    elif isinstance(collimator, CollimatorResponse):
        if acq.radius_mm is None:
            raise ValueError("a collimator blur needs the study's radius_mm (mm), got None")
        response = collimator
        note = _blur_note("", response, acq.energy_keV, acq.radius_mm)
    else:
        raise TypeError(
            "collimator must be 'study', a CollimatorResponse or None, got "
            f"{type(collimator).__name__}"
        )
    render = config.render
    if render == "auto":
        render = "views" if response is not None else "lines"
    if render == "lines" and response is not None:
        if not isinstance(collimator, str):
            raise ValueError(
                "render 'lines' cannot apply the collimator blur (it mixes neighbouring rays); "
                "use render 'views' or 'auto', or collimator=None"
            )
        return StudyPhysics(
            "lines",
            None,
            f"not modelled ({(acq.collimator or '').upper()} named, but render 'lines' cannot "
            "apply the blur; use render 'views' or 'auto')",
        )
    return StudyPhysics(render, response, note)


def _blur_note(
    name: str, response: CollimatorResponse, energy_keV: float, radius_mm: float | None
) -> str:
    what = f"{name} at {energy_keV:g} keV" if name else "a given response"
    return f"{what}, radius {radius_mm:g} mm ({response.summary()}), whole views"


def rendered_counts(fit_result: FitResult, study: Study) -> torch.Tensor:
    """Expected counts ``[V, rows, bins]`` (CPU, no grad) of a fit's representation for
    ``study``'s views, with the physics the fit modelled (the collimator blur included when it
    was): ``count_scale · A e + background``, whole views, ``config.n_samples`` per ray."""
    rep = fit_result.representation
    dev = next((t.device for t in (*rep.parameters(), *rep.buffers())), torch.device("cpu"))
    data = RayData(
        study, holdout_fraction=0.0, device=dev, collimator=fit_result.collimator_response
    )
    was_training = rep.training
    rep.eval()
    try:
        with torch.no_grad():
            volume = representation_volume(rep)
            on_grid = volume is not None and tuple(volume.shape) == study.grid.shape
            target = volume.to(data.dtype) if volume is not None and on_grid else rep
            return data.expected_views(target, fit_result.config.n_samples).cpu()
    finally:
        rep.train(was_training)


# ----------------------------------------------------------------------------------------------
# Helpers


def _device(device: torch.device | str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"bad device {device!r}: {error}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available (torch {torch.__version__})")
    return dev


def _supervision(
    activity: torch.Tensor | np.ndarray | None, study: Study, config: TrainConfig, dev: torch.device
) -> torch.Tensor | None:
    if config.l1_activity > 0 and activity is None:
        raise ValueError("l1_activity > 0 needs an activity volume (activity_supervision)")
    if activity is None:
        return None
    a = torch.as_tensor(
        np.asarray(activity) if not isinstance(activity, torch.Tensor) else activity
    )
    if tuple(a.shape) != study.grid.shape:
        raise ValueError(
            f"activity_supervision must have the study grid's shape {list(study.grid.shape)}, "
            f"got {list(a.shape)}"
        )
    return a.detach().to(device=dev, dtype=torch.float32)
