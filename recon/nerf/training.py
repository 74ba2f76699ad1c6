"""`fit`: fit a differentiable activity representation to a study's projections.

The model of the counts is exact physics (`recon.nerf.rays`): ``ŷ = count_scale · A e + b`` with
the study's attenuation, one count scale for all views and the study's background. Each step
draws random training lines (uniform over the primary view's training pixels; with AP and PA each
line is rendered in both views from the same field samples), computes

    loss = (poisson_nll(ŷ, y) − poisson_nll_saturated(y)) / count_level + Σ_k w_k · R_k

(half the mean Poisson deviance per pixel, divided by the mean count so that the loss, its
gradients and hence the whole fit are unchanged when the data are scaled), and takes an Adam (or
L-BFGS) step with the learning-rate schedule and gradient clipping of the `TrainConfig`.

Outputs in ``out_dir`` (optional): ``log.csv`` and ``log.json`` (one row per logged step),
``checkpoint-XXXXXX.pt`` and ``checkpoint-last.pt`` (`recon.nerf.checkpoint`),
``preview-XXXXXX-projections.png`` and ``preview-XXXXXX-depth.png`` (`recon.nerf.previews`).

Interruptions: Ctrl-C (``KeyboardInterrupt``) writes a checkpoint of the last completed step
and raises `TrainingInterrupted` (a ``KeyboardInterrupt``) naming it; resuming from it continues
exactly. A non-finite loss or gradient raises `TrainingDiverged` without writing a checkpoint, so
the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recon.io.study import Study
from recon.nerf import losses
from recon.nerf.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    LAST_CHECKPOINT,
    capture_rng,
    checkpoint_name,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from recon.nerf.config import REGULARISERS, TrainConfig
from recon.nerf.logs import write_step_logs
from recon.nerf.previews import depth_preview, projection_preview
from recon.nerf.rays import RayData, RecordingField, study_digest
from recon.nerf.representations import set_activity_scale

__all__ = [
    "LOG_COLUMNS",
    "FitResult",
    "StepCallback",
    "TrainingDiverged",
    "TrainingInterrupted",
    "fit",
    "lr_at",
    "representation_info",
]

#: Columns of ``log.csv`` / ``log.json`` (regulariser values are unweighted).
LOG_COLUMNS = ("step", "loss", "nll", *REGULARISERS, "lr", "val_deviance", "val_psnr", "time_s")

#: ``callback(step, total_steps, metrics)`` after every step; ``metrics`` has ``loss``, ``nll``,
#: ``lr`` and the latest ``val_psnr`` / ``val_deviance`` (NaN before the first validation).
StepCallback = Callable[[int, int, Mapping[str, float]], None]

#: Seed offset of the ray sampler's generator (the global torch seed uses ``seed`` itself).
SAMPLER_SEED_OFFSET = 1


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/Inf. ``step``: where; ``checkpoint``: the last good
    checkpoint on disk (``None`` if none was written)."""

    def __init__(self, message: str, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C) after ``step`` completed steps; ``checkpoint`` is the
    checkpoint written for it (``None`` without an output folder)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        where = f"; resume from {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"training interrupted after step {step}{where}")
        self.step = step
        self.checkpoint = checkpoint


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
        The last validation (mean deviance per held-out pixel, PSNR in dB); NaN if none.
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

    def history_arrays(self) -> dict[str, np.ndarray]:
        """The logged rows as equal-length float64 arrays, one per column."""
        return {
            name: np.asarray([row.get(name, math.nan) for row in self.history], dtype=np.float64)
            for name in LOG_COLUMNS
        }


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of (1-based) ``step`` under ``config``'s schedule."""
    if config.lr_schedule == "cosine":
        t = min(max(step - 1, 0) / max(config.steps - 1, 1), 1.0)
        return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1.0 + math.cos(math.pi * t))
    if config.lr_schedule == "step":
        passed = sum(1 for m in config.lr_milestones if step > m)
        return config.lr * config.lr_gamma**passed
    return config.lr


def representation_info(representation: Any) -> dict[str, Any]:
    """``{"kind", "grid", "field_config"}`` of a representation (primitives only)."""
    grid = getattr(representation, "grid", None)
    config = getattr(representation, "config", None)
    info: dict[str, Any] = {
        "kind": type(representation).__name__,
        "grid": None,
        "field_config": None,
    }
    if grid is not None and hasattr(grid, "shape"):
        info["grid"] = {
            "shape": [int(n) for n in grid.shape],
            "spacing_mm": [float(d) for d in grid.spacing_mm],
            "offset_mm": [float(o) for o in grid.offset_mm],
        }
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
) -> FitResult:
    """Fit ``representation`` to the projections of ``study``.

    Parameters
    ----------
    representation:
        A `torch.nn.Module` mapping points ``[N, 3]`` (x, y, z mm) to activity ``[N]`` >= 0,
        e.g. `recon.nerf.field.EmissionField` or `recon.nerf.representations.VoxelActivity`.
        It is moved to ``device`` and trained in place.
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
        data's activity level `RayData.activity_level`.

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
        Bad settings, a study without counts, a checkpoint that does not match, CUDA missing.
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
    params = [p for p in representation.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the representation has no trainable parameters")
    supervision = _supervision(activity_supervision, study, config, dev)

    with _deterministic(config.deterministic):
        trainer = _Trainer(representation, study, config, dev, params, supervision, out_dir)
        trainer.start(resume, init_scale)
        return trainer.run(callback)


# ----------------------------------------------------------------------------------------------


class _Trainer:
    """The state of one fit; `fit` is its only user."""

    def __init__(
        self,
        rep: nn.Module,
        study: Study,
        config: TrainConfig,
        dev: torch.device,
        params: list[nn.Parameter],
        supervision: torch.Tensor | None,
        out_dir: str | os.PathLike[str] | None,
    ) -> None:
        self.rep, self.study, self.config, self.dev = rep, study, config, dev
        self.params = params
        self.supervision = supervision
        self.out_dir = None if out_dir is None else Path(out_dir)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.data = RayData(
            study, holdout_fraction=config.holdout_fraction, seed=config.seed, device=dev
        )
        if len(self.data.train_lines) == 0:
            raise ValueError("no training pixels (holdout_fraction leaves none)")
        self.amp = _amp_mode(config, dev)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.optimizer = _optimizer(config, params)
        self.sampler = torch.Generator().manual_seed(config.seed + SAMPLER_SEED_OFFSET)
        grid = study.grid
        self.reg_offset = config.reg_offset_mm or float(min(grid.spacing_mm))
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.losses: list[float] = []
        self.elapsed_before = 0.0
        self.level = 1.0
        self.count_level = 1.0
        self.val = (math.nan, math.nan)
        self.checkpoint: Path | None = None
        self.ctrl_c_pending = False
        self.digest = study_digest(study)
        self.preview_lines = _preview_lines(self.data)

    # -- start -------------------------------------------------------------------------------
    def start(self, resume: str | os.PathLike[str] | None, init_scale: bool) -> None:
        c = self.config
        if resume is None:
            torch.manual_seed(c.seed)
            random.seed(c.seed)
            np.random.seed(c.seed % 2**32)  # noqa: NPY002 - seeds the legacy global RNG
            self.level = self.data.activity_level()
            self.count_level = self.data.count_level()
            if init_scale:
                set_activity_scale(self.rep, self.level)
            return
        payload = load_checkpoint(resume)
        self._check_resume(payload, Path(resume))
        self.rep.load_state_dict(payload["model"])
        self.rep.to(self.dev)
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        restore_rng(payload["rng"], self.sampler)
        self.step = int(payload["step"])
        self.history = [dict(row) for row in payload["history"]]
        self.losses = [float(v) for v in payload["losses"]]
        self.elapsed_before = float(payload["elapsed_s"])
        data = payload["data"]
        self.level = float(data["activity_level"])
        self.count_level = float(data["count_level"])
        for row in reversed(self.history):
            if not math.isnan(row.get("val_psnr", math.nan)):
                self.val = (row["val_deviance"], row["val_psnr"])
                break

    def _check_resume(self, payload: Mapping[str, Any], path: Path) -> None:
        if payload["data"]["digest"] != self.digest:
            raise ValueError(f"{path}: the checkpoint was made from another study")
        info = representation_info(self.rep)
        saved = payload["representation"]
        if saved["kind"] != info["kind"] or saved["field_config"] != info["field_config"]:
            raise ValueError(
                f"{path}: the checkpoint holds a {saved['kind']} with architecture "
                f"{saved['field_config']}, not this {info['kind']} ({info['field_config']})"
            )
        old = payload["config"]
        for name in ("optimizer", "seed", "holdout_fraction"):
            if old.get(name) != getattr(self.config, name):
                raise ValueError(
                    f"{path}: the checkpoint used {name} = {old.get(name)!r}, this run "
                    f"{getattr(self.config, name)!r}; they must match to resume"
                )

    # -- the loop ----------------------------------------------------------------------------
    def run(self, callback: StepCallback | None) -> FitResult:
        c = self.config
        t0 = time.perf_counter()
        self.t0 = t0
        rng_done = capture_rng(self.sampler)
        try:
            while self.step < c.steps:
                step = self.step + 1
                loss, terms = self._train_step(step)
                self.step = step
                rng_done = capture_rng(self.sampler)
                self.losses.append(loss)
                if self.ctrl_c_pending:
                    raise KeyboardInterrupt
                self._after_step(step, loss, terms, callback)
        except KeyboardInterrupt as interrupt:
            if isinstance(interrupt, TrainingInterrupted):
                raise
            restore_rng(rng_done, self.sampler)  # the state after the last completed step
            path = self._write_checkpoint() if self.out_dir is not None else None
            self._write_logs()
            raise TrainingInterrupted(self.step, path) from interrupt
        if self.step == 0 or (self.checkpoint is None and self.out_dir is not None):
            self._finish_without_steps()
        return self._result()

    def _finish_without_steps(self) -> None:
        if math.isnan(self.val[1]):
            self.val = self.data.validate(self.rep, self.config.n_samples)
        if self.out_dir is not None:
            self._write_checkpoint()
            self._write_logs()

    def _after_step(
        self, step: int, loss: float, terms: dict[str, float], callback: StepCallback | None
    ) -> None:
        c = self.config
        last = step == c.steps
        validated = _due(step, c.val_every) or last
        if validated:
            self.rep.eval()
            self.val = self.data.validate(self.rep, c.n_samples)
            self.rep.train()
        if _due(step, c.log_every) or validated:
            row = {"step": float(step), "loss": loss, **terms, "lr": lr_at(c, step)}
            row["val_deviance"] = self.val[0] if validated else math.nan
            row["val_psnr"] = self.val[1] if validated else math.nan
            row["time_s"] = self.elapsed()
            self.history.append({k: float(row.get(k, math.nan)) for k in LOG_COLUMNS})
            if self.out_dir is not None:
                self._write_logs()
        if self.out_dir is not None and (_due(step, c.preview_every) or (last and c.preview_every)):
            self._write_previews(step)
        if self.out_dir is not None and (_due(step, c.checkpoint_every) or last):
            self._write_checkpoint()
        if callback is not None:
            metrics = {"loss": loss, "nll": terms["nll"], "lr": lr_at(c, step),
                       "val_deviance": self.val[0], "val_psnr": self.val[1]}  # fmt: skip
            callback(step, c.steps, metrics)

    @contextlib.contextmanager
    def _hold_ctrl_c(self) -> Iterator[None]:
        """Defer Ctrl-C (SIGINT) over the body: it is raised once the step is recorded.

        Only in the main thread and only while Python's default handler is installed.
        """
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield
            return

        def hold(signum: int, frame: object) -> None:
            self.ctrl_c_pending = True

        signal.signal(signal.SIGINT, hold)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    # -- one step ----------------------------------------------------------------------------
    def _train_step(self, step: int) -> tuple[float, dict[str, float]]:
        c = self.config
        lr = lr_at(c, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self._draw_batch()
        record: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss, parts = self._objective(batch)
            record.update(parts)
            record["loss"] = loss.detach()
            self._check_finite(loss, step, "loss")
            self.scaler.scale(loss).backward()
            return loss

        if c.optimizer == "lbfgs":
            with self._hold_ctrl_c():  # the line search moves the parameters: finish it
                self.optimizer.step(closure)  # type: ignore[arg-type]
            self._check_finite(record["loss"], step, "loss")
        else:
            closure()
            self.scaler.unscale_(self.optimizer)
            if c.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
            else:
                norm = _grad_norm(self.params)
            if not self.scaler.is_enabled():
                self._check_finite(norm, step, "gradient norm")
            with self._hold_ctrl_c():  # never leave the parameters half updated
                self.scaler.step(self.optimizer)
                self.scaler.update()
        values = {k: float(v) for k, v in record.items()}
        loss_value = values.pop("loss")
        return loss_value, values

    def _draw_batch(self) -> dict[str, torch.Tensor]:
        """Random lines and regulariser points of one step (CPU generator, then the device)."""
        c, g = self.config, self.sampler
        batch: dict[str, torch.Tensor] = {}
        if c.optimizer == "lbfgs":
            batch["lines"] = self.data.train_lines
        else:
            batch["lines"] = self.data.sample_lines(c.rays_per_step, g)
        if c.tv_3d > 0 or c.ct_smoothness > 0:
            centre = torch.tensor(self.study.grid.offset_mm[::-1], dtype=torch.float64)  # x, y, z
            size = torch.tensor(self.study.grid.extent_mm[::-1], dtype=torch.float64)
            u = torch.rand(c.reg_points, 3, generator=g, dtype=torch.float64)
            p = centre + (u - 0.5) * size
            d = torch.randn(c.reg_points, 3, generator=g, dtype=torch.float64)
            d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
            batch["reg_p"] = p.float().to(self.dev)
            batch["reg_q"] = (p + self.reg_offset * d).float().to(self.dev)
        if c.l1_activity > 0 and self.supervision is not None:
            n_vox = self.supervision.numel()
            batch["l1_index"] = torch.randint(n_vox, (c.reg_points,), generator=g).to(self.dev)
        return batch

    def _objective(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        jitter = c.jitter and c.optimizer == "adam"
        with self._autocast():
            lines = self.data.render_lines(
                self.rep, batch["lines"], n_samples=c.n_samples, jitter=jitter,
                generator=self.sampler, record=c.tv_ray > 0,
            )  # fmt: skip
        expected, counts = lines.expected.float(), lines.counts.float()
        nll = losses.poisson_nll(expected, counts, self.count_level)
        loss = (nll - losses.poisson_nll_saturated(counts)) / self.count_level
        parts: dict[str, torch.Tensor] = {"nll": nll.detach()}
        terms = self._regularisers(batch, lines.samples)
        for name, value in terms.items():
            loss = loss + getattr(c, name) * value
            parts[name] = value.detach()
        return loss, parts

    def _regularisers(
        self, batch: dict[str, torch.Tensor], samples: tuple[torch.Tensor, ...]
    ) -> dict[str, torch.Tensor]:
        c, level = self.config, self.level
        out: dict[str, torch.Tensor] = {}
        if c.latent_l2 > 0:
            latent = getattr(self.rep, "latent", None)
            if isinstance(latent, torch.Tensor):
                out["latent_l2"] = losses.latent_l2(latent)
        if c.tv_ray > 0 and samples:
            n = sum(s.shape[0] for s in samples)
            out["tv_ray"] = sum(losses.tv_ray(s.float(), level) * (s.shape[0] / n) for s in samples)  # type: ignore[assignment]
        if "reg_p" in batch:
            p, q = batch["reg_p"], batch["reg_q"]
            with self._autocast():
                values = self.rep(torch.cat([p, q])).float()
            e_p, e_q = values[: len(p)], values[len(p) :]
            if c.tv_3d > 0:
                out["tv_3d"] = losses.tv_3d(e_p, e_q, level)
            if c.ct_smoothness > 0:
                mu_p, mu_q = self.data.mu_at(p), self.data.mu_at(q)
                out["ct_smoothness"] = losses.ct_smoothness(
                    e_p, e_q, mu_p, mu_q, level, c.ct_threshold_per_mm
                )
        if "l1_index" in batch:
            idx = batch["l1_index"]
            points = _voxel_points(self.study.grid, idx, self.dev)
            with self._autocast():
                values = self.rep(points).float()
            out["l1_activity"] = losses.l1_activity(
                values, self.supervision.reshape(-1)[idx], level
            )  # type: ignore[union-attr]
        return out

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.dev.type, dtype=dtype)

    def _check_finite(self, value: torch.Tensor, step: int, what: str) -> None:
        if not bool(torch.isfinite(value).all()):
            where = (
                f"the last good checkpoint is {self.checkpoint}"
                if self.checkpoint is not None
                else "no checkpoint was written"
            )
            raise TrainingDiverged(
                f"training diverged at step {step}: the {what} is {float(value.detach())} "
                f"(lr {lr_at(self.config, step):.3g}); {where}. Lower the learning rate or "
                "raise grad clipping",
                step,
                self.checkpoint,
            )

    # -- outputs -----------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": int(self.step),
            "representation": representation_info(self.rep),
            "model": {k: v.detach().cpu() for k, v in self.rep.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "config": self.config.to_dict(),
            "rng": capture_rng(self.sampler),
            "data": {
                "digest": self.digest,
                "count_scale": self.data.count_scale,
                "activity_level": self.level,
                "count_level": self.count_level,
                "used_3d_supervision": self.used_3d_supervision,
            },
            "history": [dict(row) for row in self.history],
            "losses": list(self.losses),
            "elapsed_s": self.elapsed(),
        }

    @property
    def used_3d_supervision(self) -> bool:
        return self.supervision is not None and self.config.l1_activity > 0

    def _write_checkpoint(self) -> Path:
        assert self.out_dir is not None
        for name, p in self.rep.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise TrainingDiverged(
                    f"training diverged by step {self.step}: parameter {name} holds NaN/Inf; "
                    f"the last good checkpoint is {self.checkpoint}",
                    self.step,
                    self.checkpoint,
                )
        numbered = self.out_dir / checkpoint_name(self.step)
        save_checkpoint(self._payload(), numbered, self.out_dir / LAST_CHECKPOINT)
        self.checkpoint = numbered
        return numbered

    def _write_logs(self) -> None:
        if self.out_dir is None:
            return
        write_step_logs(self.out_dir, self.history, LOG_COLUMNS)

    def _write_previews(self, step: int) -> None:
        assert self.out_dir is not None
        c, data = self.config, self.data
        self.rep.eval()
        with torch.no_grad():
            expected = data.expected_views(self.rep, c.n_samples).cpu().numpy()
            depth, act, mu = _line_profiles(data, self.rep, self.preview_lines, c.n_samples)
        self.rep.train()
        views = _preview_views(data)
        names = [_view_label(data.geometry.angles_deg[v]) for v in views]
        counts = data.counts.cpu().numpy()
        projection_preview(
            self.out_dir / f"preview-{step:06d}-projections.png",
            counts[views], expected[views], names, title=f"step {step}",
        )  # fmt: skip
        labels = [
            f"{_view_label(data.geometry.angles_deg[int(data.view[k])])} row {int(data.row[k])} "
            f"bin {int(data.bin[k])}"
            for k in self.preview_lines.tolist()
        ]
        depth_preview(
            self.out_dir / f"preview-{step:06d}-depth.png", depth, act, mu, labels,
            activity_unit=self.study.activity_unit, title=f"step {step}",
        )  # fmt: skip

    def _result(self) -> FitResult:
        return FitResult(
            representation=self.rep,
            config=self.config,
            history=self.history,
            losses=self.losses,
            steps_done=self.step,
            activity_level=self.level,
            count_scale=self.data.count_scale,
            count_level=self.count_level,
            device=str(self.dev),
            amp=self.amp,
            used_3d_supervision=self.used_3d_supervision,
            val_deviance=float(self.val[0]),
            val_psnr=float(self.val[1]),
            elapsed_s=self.elapsed() if hasattr(self, "t0") else self.elapsed_before,
            checkpoint=self.checkpoint,
            out_dir=self.out_dir,
            train_mask=self.data.train_mask.cpu().numpy(),
            representation_info=representation_info(self.rep),
        )


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


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_before = torch.backends.cudnn.deterministic
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)
        torch.backends.cudnn.deterministic = cudnn_before


def _amp_mode(config: TrainConfig, dev: torch.device) -> str:
    """The mixed precision a fit uses: ``config.amp`` on CUDA, ``"bf16"`` on the CPU with
    ``cpu_bf16``, else ``"off"`` (and always ``"off"`` with L-BFGS)."""
    if config.optimizer != "adam":
        return "off"
    if dev.type == "cuda":
        return config.amp
    return "bf16" if dev.type == "cpu" and config.cpu_bf16 else "off"


def _optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "lbfgs":
        return torch.optim.LBFGS(
            params, lr=config.lr, max_iter=1, history_size=20, line_search_fn="strong_wolfe"
        )
    return torch.optim.Adam(params, lr=config.lr)


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


def _voxel_points(grid: Any, flat_index: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """Centres ``[N, 3]`` (x, y, z mm) of the voxels with flat indices into ``[Z, Y, X]``."""
    _, ny, nx = grid.shape
    k = flat_index // (ny * nx)
    j = (flat_index // nx) % ny
    i = flat_index % nx
    cz, cy, cx = (grid.centres_mm(a, dtype=torch.float32, device=dev) for a in range(3))
    return torch.stack([cx[i], cy[j], cz[k]], dim=1)


def _grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _fmt(name: str, value: float) -> str:
    return str(int(value)) if name == "step" else f"{value:.9g}"


def _view_label(beta: float) -> str:
    names = {0: "AP", 180: "PA", 90: "RL", 270: "LL"}
    b = round(beta % 360.0, 6)
    return names.get(int(b), f"β={b:g}°") if float(b).is_integer() else f"β={b:g}°"


def _preview_views(data: RayData) -> list[int]:
    first = int(data.view[0])
    opposed = data.geometry.opposed_view(first)
    return [first] if opposed is None or opposed == first else [first, opposed]


def _preview_lines(data: RayData) -> torch.Tensor:
    """Three lines of the first view: its brightest pixel, its centre, its 75th-percentile pixel."""
    first = int(data.view[0])
    on_view = torch.nonzero(data.view == first).squeeze(1)
    counts = data.counts[first].reshape(-1).cpu()
    _, n_rows, n_bins = data.shape
    brightest = int(torch.argmax(counts))
    centre = (n_rows // 2) * n_bins + n_bins // 2
    q = torch.quantile(counts.double(), 0.75)
    quartile = int(torch.argmin((counts.double() - q).abs()))
    picks = list(dict.fromkeys([brightest, centre, quartile]))
    return on_view[torch.tensor(picks)]


def _line_profiles(
    data: RayData, field: Any, lines: torch.Tensor, n_samples: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth (mm), activity and μ at the samples of ``lines``, each ``[K, S]``."""
    recorder = RecordingField(field)
    v, r, b = (t[lines].to(data.device) for t in (data.view, data.row, data.bin))
    data.projector.render_rays(recorder, v, r, b, n_samples=n_samples)
    points, values = recorder.samples(len(lines))
    beta = torch.tensor([math.radians(data.geometry.angles_deg[int(k)]) for k in v.cpu()])
    x, y = points[..., 0].cpu().double(), points[..., 1].cpu().double()
    depth = -x * torch.sin(beta)[:, None] - y * torch.cos(beta)[:, None]
    mu = data.mu_at(points)
    return depth.numpy(), values.double().cpu().numpy(), mu.double().cpu().numpy()
