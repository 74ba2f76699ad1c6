"""`Trainer`: the one run loop of single-study fitting and cohort training.

It owns what every run has: the learning-rate schedule, the optimiser step (Adam, with AMP and
its gradient scaler, or L-BFGS), gradient clipping, the NaN/Inf guard, the representation's own
``penalty()`` (logged as ``model_prior``), logs, previews, checkpoints with exact resume and
stopping. What a step sees and how it is scored comes from an `Objective`
(`recon.nerf.training`: one study; `recon.cohort.training`: a cohort, data-parallel).

Stopping: a signal or `recon.training.runtime.request_stop` ends the run after the step in
progress, whose checkpoint is written (rank 0), and `TrainingInterrupted` is raised on every
rank. A ``KeyboardInterrupt`` inside a step (one process) abandons it: the objective's random
state goes back to the end of the last completed step, whose checkpoint is written, so a resume
continues exactly. A second signal interrupts at once and writes nothing (it may come in the
middle of the update). A non-finite loss or gradient raises `TrainingDiverged`, writing nothing.

Model selection (``TrainConfig.select = "best_holdout"``): the state at the start of a run (step
0, or the step a resume starts from when its checkpoint holds no choice yet) and the state at
each validation are candidates; the trainer keeps a copy of the one with the lowest held-out
deviance (``val_deviance``, ties: the earliest) and loads it into the model when the run ends.
Checkpoints hold the last step's state (to continue training) and the kept one (``selection``),
so a resume continues the same choice.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from recon.algorithms.numerics import NonFiniteError
from recon.nerf.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    LAST_CHECKPOINT,
    checkpoint_name,
    save_checkpoint,
)
from recon.nerf.config import TrainConfig
from recon.nerf.logs import write_step_logs
from recon.training import runtime
from recon.training.runtime import deterministic, due, to_cpu

if TYPE_CHECKING:
    from recon.cohort.distributed import DistInfo

__all__ = [
    "Callback",
    "Objective",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "lr_at",
    "require_same",
]

#: ``callback(step, total_steps, metrics)`` after every step (on every rank); ``metrics``:
#: ``loss``, ``lr``, ``rank``, ``world_size``, the logged parts of the loss and the objective's
#: latest validation (`Objective.latest`; NaN before the first).
Callback = Callable[[int, int, Mapping[str, float]], None]


class TrainingDiverged(NonFiniteError):
    """The loss or the gradients became NaN/Inf. ``step``: where; ``checkpoint``: the last good
    checkpoint on disk (``None`` if none was written). A `recon.algorithms.numerics.NonFiniteError`
    (a ``ValueError``), like MLEM's and the organ fit's."""

    def __init__(self, message: str, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted after ``step`` completed steps; ``checkpoint`` is the checkpoint
    written for it (``None`` without an output folder)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        where = f"; resume from {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"training interrupted after step {step}{where}")
        self.step = step
        self.checkpoint = checkpoint


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of (1-based) ``step`` under ``config``'s schedule."""
    if config.lr_schedule == "cosine":
        t = min(max(step - 1, 0) / max(config.steps - 1, 1), 1.0)
        return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1.0 + math.cos(math.pi * t))
    if config.lr_schedule == "step":
        passed = sum(1 for m in config.lr_milestones if step > m)
        return config.lr * config.lr_gamma**passed
    return config.lr


def require_same(path: Path, saved: Mapping[str, Any], config: Any, names: tuple[str, ...]) -> None:
    """Raise a ValueError naming ``path`` unless the checkpoint's settings ``saved`` (a
    ``to_dict``) and ``config`` agree on ``names`` (those a resume cannot change)."""
    for name in names:
        if saved.get(name) != getattr(config, name):
            raise ValueError(
                f"{path}: the checkpoint used {name} = {saved.get(name)!r}, this run "
                f"{getattr(config, name)!r}; they must match to resume"
            )


class Objective(Protocol):
    """What a `Trainer` trains. ``model`` is checkpointed; ``representation`` may have a
    ``penalty()``; ``params`` are clipped and checked; ``columns`` are the log columns;
    ``latest``: the latest validation values (for callbacks; `Trainer.restore` sets them from
    the history)."""

    @property
    def model(self) -> nn.Module: ...
    @property
    def representation(self) -> nn.Module: ...
    @property
    def params(self) -> Sequence[torch.Tensor]: ...
    @property
    def columns(self) -> tuple[str, ...]: ...
    @property
    def latest(self) -> dict[str, float]: ...

    def draw(self, step: int) -> Any:
        """This rank's batch of (1-based) ``step``."""

    def loss(self, batch: Any, autocast: Callable[[], Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(loss, parts)`` of ``batch``: a scalar and the scalar tensors to log (the same keys
        on every rank); ``autocast()`` is the AMP context."""

    def validate(self) -> dict[str, float]:
        """Validation values to log (called on every rank at once)."""

    def rng_state(self) -> Any:
        """The random state a step consumes (to abandon a step exactly), or ``None``."""

    def set_rng_state(self, state: Any) -> None:
        """Undo `rng_state`."""

    def checkpoint_extras(self) -> dict[str, Any]:
        """What the objective adds to a checkpoint."""

    def previews(self, step: int, out_dir: Path) -> None:
        """Write preview images of ``step`` (may do nothing)."""


class Trainer:
    """One training run of an `Objective` (on one rank of ``info``; ``None``: one process).

    Parameters
    ----------
    objective:
        The `Objective`.
    config:
        Schedule, optimiser, AMP, clipping and the ``*_every`` intervals (`TrainConfig`).
    optimizer:
        Over ``objective.params``; a param group's learning rate is ``lr_at(config, step)``
        times its ratio at construction to ``config.lr``.
    device:
        Where the model computes (AMP is used on CUDA only, ``cpu_bf16`` on the CPU only).
    out_dir:
        Folder of logs, previews and checkpoints (``None``: nothing written); rank 0 creates it.
    info:
        A `recon.cohort.distributed.DistInfo` (``None``: one process). The step's logged values
        and the stop flag are summed over the ranks.
    """

    def __init__(
        self,
        objective: Objective,
        config: TrainConfig,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        out_dir: str | os.PathLike[str] | None = None,
        info: DistInfo | None = None,
    ) -> None:
        self.objective, self.config, self.optimizer, self.dev = objective, config, optimizer, device
        self.info = info
        self.rank = 0 if info is None else info.rank
        self.world_size = 1 if info is None else info.world_size
        self.is_main = self.rank == 0
        self.out_dir = None if out_dir is None else Path(out_dir)
        if self.out_dir is not None and self.is_main:
            for folder in (self.out_dir, *self.out_dir.parents):
                if folder.exists() and not folder.is_dir():
                    raise ValueError(
                        f"out_dir {self.out_dir}: {folder} is a file, not a folder; name a "
                        "folder for the logs and checkpoints"
                    )
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.lr_ratio = [group["lr"] / config.lr for group in optimizer.param_groups]
        self.amp = runtime.amp_mode(config, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        penalty = getattr(objective.representation, "penalty", None)
        self.penalty = penalty if callable(penalty) else None
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.losses: list[float] = []
        self.elapsed_before = 0.0
        self.t0 = time.perf_counter()
        self.checkpoint: Path | None = None
        self.checkpoint_step = -1
        self.steps_run = 0
        self.outermost = True
        self.run_time_s = 0.0
        self.select = config.select == "best_holdout"
        if self.select and "val_deviance" not in objective.columns:
            raise ValueError(
                "select 'best_holdout' needs an objective that scores held-out pixels "
                "(val_deviance): single-study fits only, not cohort training"
            )
        #: With ``select``: the kept state, ``{"step", "val_deviance", "val_psnr", "model"}``.
        self.best: dict[str, Any] | None = None

    def autocast(self) -> Any:
        """The AMP context of this run (a null context when AMP is off)."""
        return runtime.autocast(self.amp, self.dev)

    def elapsed(self) -> float:
        """Training time (s), including the time before a resume."""
        return self.elapsed_before + time.perf_counter() - self.t0

    # -- resume ------------------------------------------------------------------------------
    def restore(self, payload: Mapping[str, Any]) -> None:
        """Continue from a checkpoint ``payload`` (checked by the objective beforehand)."""
        self.objective.model.load_state_dict(payload["model"])
        self.objective.model.to(self.dev)
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(payload["scaler"])
        self.step = int(payload["step"])
        self.history = [dict(row) for row in payload["history"]]
        self.losses = [float(v) for v in payload["losses"]]
        self.elapsed_before = float(payload["elapsed_s"])
        latest = self.objective.latest  # the last logged validation, for callbacks and results
        for name in latest:
            logged = (row.get(name, math.nan) for row in reversed(self.history))
            latest[name] = next((v for v in logged if not math.isnan(v)), latest[name])
        kept = payload.get("selection")
        self.best = None
        if self.select and kept is not None:
            model = {k: v.to(self.dev) for k, v in kept["model"].items()}
            self.best = {**kept, "model": model}

    # -- model selection ---------------------------------------------------------------------
    @property
    def selected_step(self) -> int:
        """The step whose state the model holds after `run`: the kept one with ``select``, else
        the last."""
        return self.step if self.best is None else int(self.best["step"])

    def _consider(self, step: int, values: Mapping[str, float]) -> None:
        """With ``select``: keep the model's state if its held-out deviance is the lowest yet."""
        deviance = float(values.get("val_deviance", math.nan))
        if not self.select or math.isnan(deviance):
            return
        if self.best is not None and not deviance < self.best["val_deviance"]:
            return
        state = self.objective.model.state_dict()
        self.best = {
            "step": int(step),
            "val_deviance": deviance,
            "val_psnr": float(values.get("val_psnr", math.nan)),
            "model": {k: v.detach().clone() for k, v in state.items()},
        }

    def _restore_selected(self) -> None:
        """Load the kept state into the model (and its validation into ``objective.latest``)."""
        if self.best is None or self.best["step"] == self.step:
            return
        self.objective.model.load_state_dict(self.best["model"])
        latest = self.objective.latest
        for name in ("val_deviance", "val_psnr"):
            if name in latest:
                latest[name] = float(self.best[name])

    # -- the loop ----------------------------------------------------------------------------
    def run(self, callback: Callback | None = None) -> None:
        """Train to ``config.steps``; raises `TrainingInterrupted` or `TrainingDiverged`."""
        c = self.config
        self.t0 = time.perf_counter()
        first = self.step
        self.last_row = (self.step, self.elapsed())
        with deterministic(c.deterministic), runtime.stop_signals() as self.outermost:
            if self.select and self.best is None:  # the starting state is a candidate
                self._consider(self.step, self.objective.validate())
            rng_done = self.objective.rng_state()
            try:
                while self.step < c.steps:
                    step = self.step + 1
                    loss, parts, stop = self._train_step(step)
                    self.step = step
                    rng_done = self.objective.rng_state()
                    self.losses.append(loss)
                    self._after_step(step, loss, parts, callback)
                    if stop and step < c.steps:
                        self._interrupt(None)
            except KeyboardInterrupt as interrupt:
                if isinstance(interrupt, TrainingInterrupted):
                    raise
                self.objective.set_rng_state(rng_done)  # the end of the last completed step
                self._interrupt(interrupt)
        self.steps_run = self.step - first
        self.run_time_s = time.perf_counter() - self.t0
        if self.out_dir is not None and self.checkpoint_step != self.step:
            self.write_checkpoint()
            self.write_logs()
        self._restore_selected()  # after the last checkpoint, which holds the last state

    def _interrupt(self, cause: KeyboardInterrupt | None) -> None:
        path = None
        # A stop all ranks agreed on, or an interrupt inside a step of one process (abandoned
        # whole); not a second signal, which may have come in the middle of the update.
        if cause is None or (self.world_size == 1 and not runtime.stop_forced()):
            if self.out_dir is not None:
                path = self.checkpoint if self.checkpoint_step == self.step else None
                path = path or self.write_checkpoint()
                self.write_logs()
            self._barrier()
        raise TrainingInterrupted(self.step, path) from cause

    def _train_step(self, step: int) -> tuple[float, dict[str, float], bool]:
        c, obj = self.config, self.objective
        lr = lr_at(c, step)
        for group, ratio in zip(self.optimizer.param_groups, self.lr_ratio, strict=True):
            group["lr"] = lr * ratio
        batch = obj.draw(step)
        record: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss, parts = obj.loss(batch, self.autocast)
            if self.penalty is not None:
                prior = self.penalty().float()
                loss = loss + prior
                parts["model_prior"] = prior.detach()
            record.update(parts)
            record["loss"] = loss.detach()
            if self.world_size == 1:  # with several ranks the averaged gradients are checked
                self._check_finite(loss, step, "loss")
            self.scaler.scale(loss).backward()
            return loss

        if c.optimizer == "lbfgs":
            self.optimizer.step(closure)  # type: ignore[arg-type]  # L-BFGS takes a closure returning the loss
            self._check_finite(record["loss"], step, "loss")
        else:
            closure()
            self.scaler.unscale_(self.optimizer)
            params = obj.params
            if c.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
            else:
                norms = [p.grad.detach().norm() for p in params if p.grad is not None]
                norm = torch.stack(norms).norm() if norms else torch.zeros(())
            if not self.scaler.is_enabled():
                self._check_finite(norm, step, "gradient norm")
            self.scaler.step(self.optimizer)
            self.scaler.update()
        names = sorted(record)
        local = [record[k].detach().double().reshape(()).cpu() for k in names]
        stop = self.outermost and runtime.stop_requested()
        values = torch.stack([*local, torch.tensor(float(stop), dtype=torch.float64)])
        if self.world_size > 1:
            from recon.cohort.distributed import all_reduce_sum

            values = all_reduce_sum(self.info, values)  # type: ignore[arg-type]  # info is set when world_size > 1
        mean = {k: float(v) / self.world_size for k, v in zip(names, values[:-1], strict=True)}
        return mean.pop("loss"), mean, bool(values[-1] > 0)

    def _after_step(
        self, step: int, loss: float, parts: dict[str, float], callback: Callback | None
    ) -> None:
        c, obj = self.config, self.objective
        last = step == c.steps
        validated = due(step, c.val_every) or last
        val = obj.validate() if validated else {}
        if validated:
            self._consider(step, val)
        if due(step, c.log_every) or validated:
            now = self.elapsed()
            done, before = step - self.last_row[0], now - self.last_row[1]
            row = {"step": float(step), "loss": loss, **parts, "lr": lr_at(c, step), **val}
            row["samples_per_s"] = done * c.rays_per_step / before if before > 0 else math.nan
            row["time_s"] = now
            self.last_row = (step, now)
            self.history.append({k: float(row.get(k, math.nan)) for k in obj.columns})
            self.write_logs()
        if self.out_dir is not None and self.is_main and c.preview_every:
            if due(step, c.preview_every) or last:
                obj.previews(step, self.out_dir)
        if self.out_dir is not None and (due(step, c.checkpoint_every) or last):
            self.write_checkpoint()
        if callback is not None:
            metrics = {"loss": loss, "lr": lr_at(c, step), "rank": float(self.rank),
                       "world_size": float(self.world_size), **parts, **obj.latest}  # fmt: skip
            callback(step, c.steps, metrics)

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

    # -- outputs (rank 0) --------------------------------------------------------------------
    def payload(self, with_optimizer: bool = True) -> dict[str, Any]:
        """The checkpoint of the current step (``with_optimizer=False``: a model file)."""
        payload: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": int(self.step),
            "model": {k: v.detach().cpu() for k, v in self.objective.model.state_dict().items()},
            **self.objective.checkpoint_extras(),
            "history": [dict(row) for row in self.history],
            "losses": list(self.losses),
            "elapsed_s": self.elapsed(),
        }
        if self.best is not None:
            model = {k: v.detach().cpu() for k, v in self.best["model"].items()}
            payload["selection"] = {**self.best, "model": model}
        if with_optimizer:
            payload["optimizer"] = to_cpu(self.optimizer.state_dict())
            payload["scaler"] = self.scaler.state_dict() if self.scaler.is_enabled() else {}
        return payload

    def save(self, payload: Mapping[str, Any], *paths: Path) -> None:
        """`recon.nerf.checkpoint.save_checkpoint` on rank 0 (other ranks write nothing)."""
        if self.is_main:
            save_checkpoint(payload, *paths)

    def write_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>.pt`` and ``checkpoint-last.pt`` (rank 0); the path."""
        assert self.out_dir is not None
        for name, p in self.objective.model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise TrainingDiverged(
                    f"training diverged by step {self.step}: parameter {name} holds NaN/Inf; "
                    f"the last good checkpoint is {self.checkpoint}",
                    self.step,
                    self.checkpoint,
                )
        numbered = self.out_dir / checkpoint_name(self.step)
        self.save(self.payload(), numbered, self.out_dir / LAST_CHECKPOINT)
        self.checkpoint, self.checkpoint_step = numbered, self.step
        return numbered

    def write_logs(self) -> None:
        """``log.csv`` and ``log.json`` of the history so far (rank 0, with ``out_dir``)."""
        if self.out_dir is not None and self.is_main:
            write_step_logs(self.out_dir, self.history, self.objective.columns)

    def _barrier(self) -> None:
        if self.world_size > 1:
            from recon.cohort.distributed import barrier

            barrier(self.info)  # type: ignore[arg-type]  # info is set when world_size > 1
