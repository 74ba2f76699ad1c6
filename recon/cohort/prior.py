"""Reconstruct a new study with a trained cohort model as a prior.

`fit_with_prior` builds an ordinary single-study field from the cohort's shared network
(`recon.cohort.model.CohortModel.prior_field`: an `recon.nerf.field.EmissionField`, an
`recon.nerf.anatomy_field.AnatomyField` for an anatomy-conditioned cohort, an
`recon.nerf.organ_field.OrganAnchoredField` for an organ-code cohort), starting from the mean
training code (and, with organ codes, from the new study's own organ fit), and fits it to the new
study with the single-study trainer `recon.nerf.training.fit`:

1. **code fit**: only the study's code is trained, the latent z and with organ codes the
   log-concentrations of its compartments (the network is frozen);
2. **fine-tune** (optional): then every weight is trained, at a lower learning rate.

With ``config.select = "best_holdout"`` each phase returns its state with the lowest held-out
deviance, its starting state included (`recon.training.loop`): the code fit can return the
prior's own start (the mean code on the study's anchor), the fine-tune the code fit's result, so
neither phase returns what the held-out pixels say is worse than where it began.

The step budget ``config.steps`` is shared: without fine-tuning every step fits z; with it the
first ``steps − round(fine_tune_fraction · steps)`` fit z and the rest fine-tune. The result is a
`PriorFitResult` (a `recon.nerf.training.FitResult`), so `recon.nerf.export.to_result` and
`recon.nerf.export.load_field` work on it as on any NeRF fit; the model in the result is a
self-contained single-study field (the cohort file is not needed to read it back).

With an output folder the two phases write their logs and checkpoints to ``OUT/code`` and
``OUT/fine-tune``; ``resume`` accepts a checkpoint of either phase.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon.cohort.model import CohortModel, LoadedCohortModel, load_cohort_model
from recon.evaluation.metrics import organ_errors
from recon.io.study import Study
from recon.nerf.checkpoint import LAST_CHECKPOINT, load_checkpoint
from recon.nerf.config import TrainConfig
from recon.nerf.training import FitResult, StepCallback, fit

__all__ = [
    "PHASES",
    "PriorFitResult",
    "fit_with_prior",
    "organ_activity_error",
    "prior_config",
]

#: Names of the phases (and of their sub-folders of the output folder).
PHASES = ("code", "fine-tune")


@dataclass
class PriorFitResult(FitResult):
    """A `FitResult` of both phases together, plus what the prior was.

    ``losses`` and ``history`` run over both phases (fine-tune steps numbered after the code
    steps), ``steps_done`` and ``elapsed_s`` are totals. ``prior`` holds ``model`` (the cohort
    file), ``model_step``, ``code_steps``, ``fine_tune_steps``, ``fine_tune_lr``,
    ``n_training_studies``, ``anatomy_conditioned``, ``organ_code`` (the organ code's settings,
    ``None`` without), ``cohort_used_3d_supervision`` and ``selected_steps`` (the step each
    phase's returned state is from, counted over both phases; `recon.nerf.config.TrainConfig`
    ``select``), for the result's parameters.
    """

    prior: dict[str, Any] = field(default_factory=dict)


def prior_config(config: TrainConfig, model: CohortModel) -> TrainConfig:
    """``config`` with the cohort network's architecture (the only one its weights fit)."""
    return dataclasses.replace(config, field=model.field_config)


def fit_with_prior(
    study: Study,
    model_path: str | os.PathLike[str] | LoadedCohortModel,
    fine_tune: bool = False,
    config: TrainConfig | None = None,
    *,
    fine_tune_fraction: float = 0.5,
    fine_tune_lr_scale: float = 0.1,
    out_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    callback: StepCallback | None = None,
    device: torch.device | str = "cpu",
) -> PriorFitResult:
    """Reconstruct ``study`` by fitting a new latent code of a trained cohort model.

    Parameters
    ----------
    study:
        The new study (it need not have the cohort's grid: points are normalised to the
        cohort's frame).
    model_path:
        A cohort model file or cohort training checkpoint (`recon.cohort.model`), or one
        already loaded.
    fine_tune:
        After the code fit, train every weight too (see the module notes).
    config:
        Training settings (default ``TrainConfig.cpu_default()``); its ``field`` is replaced by
        the cohort's architecture, ``steps`` is the budget of both phases together.
    fine_tune_fraction:
        Share of the steps spent fine-tuning, in (0, 1).
    fine_tune_lr_scale:
        Learning rate of the fine-tuning (and its ``lr_min``) relative to ``config.lr``.
    out_dir:
        Folder for the phases' logs and checkpoints (``OUT/code``, ``OUT/fine-tune``).
    resume:
        A checkpoint of either phase to continue from.
    callback:
        ``callback(step, total_steps, metrics)`` after every step of both phases (steps counted
        over both).
    device:
        Where to fit.

    Returns
    -------
    PriorFitResult

    Raises
    ------
    ValueError
        Not a cohort model, bad settings, a checkpoint that does not belong to this fit.
    """
    config = TrainConfig.cpu_default() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if config.optimizer != "adam":
        raise ValueError("a fit with a cohort prior uses the adam optimizer")
    if not 0 < fine_tune_fraction < 1:
        raise ValueError(f"fine_tune_fraction must be in (0, 1), got {fine_tune_fraction!r}")
    if not (math.isfinite(fine_tune_lr_scale) and fine_tune_lr_scale > 0):
        raise ValueError(f"fine_tune_lr_scale must be > 0, got {fine_tune_lr_scale!r}")
    loaded = (
        model_path if isinstance(model_path, LoadedCohortModel) else load_cohort_model(model_path)
    )
    model = loaded.model
    config = prior_config(config, model)
    n_tune = round(fine_tune_fraction * config.steps) if fine_tune else 0
    if fine_tune and config.steps >= 2:
        n_tune = min(max(n_tune, 1), config.steps - 1)
    elif fine_tune:
        raise ValueError("fine-tuning needs at least 2 steps (one per phase)")
    n_code = config.steps - n_tune
    code_cfg = dataclasses.replace(config, steps=n_code)
    tune_cfg = dataclasses.replace(
        config,
        steps=max(n_tune, 1),
        lr=config.lr * fine_tune_lr_scale,
        lr_min=config.lr_min * fine_tune_lr_scale,
    )
    folder = None if out_dir is None else Path(out_dir)
    phase = "code"

    def wrap(offset: int) -> StepCallback | None:
        if callback is None:
            return None

        def inner(step: int, total: int, metrics: Mapping[str, float]) -> None:
            callback(offset + step, config.steps, metrics)

        return inner

    field_ = model.prior_field(study=study)
    n_code_tensors = sum(1 for p in field_.parameters() if p.requires_grad)
    if resume is not None:
        phase = _checkpoint_phase(load_checkpoint(resume), n_code_tensors)
        if phase == "fine-tune" and not fine_tune:
            raise ValueError(
                f"{resume}: a checkpoint of the fine-tuning phase; resume it with fine-tuning on"
            )
    if phase == "fine-tune":
        for p in field_.parameters():
            p.requires_grad_(True)
    first: FitResult | None
    if phase == "code":
        first = fit(
            field_, study, code_cfg, out_dir=_sub(folder, "code"), resume=resume,
            callback=wrap(0), device=device,
        )  # fmt: skip
    else:
        # phase is "fine-tune" only when resuming, so resume is set here
        code_dir = Path(resume).parent.parent / "code"  # type: ignore[arg-type]  # see above
        first = _earlier_phase(code_dir / LAST_CHECKPOINT, code_cfg)
    second: FitResult | None = None
    if fine_tune:
        for p in field_.parameters():
            p.requires_grad_(True)
        second = fit(
            field_, study, tune_cfg, out_dir=_sub(folder, "fine-tune"),
            resume=resume if phase == "fine-tune" else None, callback=wrap(n_code),
            device=device, init_scale=phase != "fine-tune",
        )  # fmt: skip
    for p in field_.parameters():
        p.requires_grad_(True)
    prior = {
        "model": None if loaded.path is None else os.fspath(loaded.path),
        "model_step": loaded.step,
        "n_training_studies": model.n_codes,
        "anatomy_conditioned": model.anatomy is not None,
        "organ_code": None if model.organ_code is None else model.organ_code.to_dict(),
        "cohort_used_3d_supervision": bool(
            loaded.payload.get("cohort", {}).get("used_3d_supervision", False)
        ),
        "code_steps": n_code,
        "fine_tune_steps": n_tune,
        "fine_tune_lr": tune_cfg.lr if fine_tune else None,
    }
    return _combine(config, first, second, n_code, prior)


def _sub(folder: Path | None, name: str) -> Path | None:
    return None if folder is None else folder / name


def _checkpoint_phase(payload: Mapping[str, Any], n_code_tensors: int) -> str:
    """``"code"`` if the checkpoint's optimiser trained only the code's ``n_code_tensors``
    tensors (the latent, and with organ codes the log-concentrations), else ``"fine-tune"``."""
    groups = payload.get("optimizer", {}).get("param_groups", [])
    n = sum(len(g.get("params", [])) for g in groups)
    return "code" if n <= n_code_tensors else "fine-tune"


def _earlier_phase(path: Path, config: TrainConfig) -> FitResult | None:
    """The code phase's losses and history from its last checkpoint, if it is there."""
    if not path.is_file():
        return None
    payload = load_checkpoint(path)
    return FitResult(
        representation=None, config=config,
        history=[dict(r) for r in payload["history"]],
        losses=[float(v) for v in payload["losses"]], steps_done=int(payload["step"]),
        activity_level=float(payload["data"]["activity_level"]),
        count_scale=float(payload["data"]["count_scale"]),
        count_level=float(payload["data"]["count_level"]), device="cpu", amp="off",
        used_3d_supervision=bool(payload["data"]["used_3d_supervision"]),
        val_deviance=math.nan, val_psnr=math.nan, elapsed_s=float(payload["elapsed_s"]),
        checkpoint=path, out_dir=path.parent, train_mask=np.zeros(0, dtype=bool),
    )  # fmt: skip


def _combine(
    config: TrainConfig,
    first: FitResult | None,
    second: FitResult | None,
    n_code: int,
    prior: dict[str, Any],
) -> PriorFitResult:
    last = second if second is not None else first
    assert last is not None
    history: list[dict[str, float]] = [] if first is None else [dict(r) for r in first.history]
    losses: list[float] = [] if first is None else list(first.losses)
    elapsed = 0.0 if first is None else first.elapsed_s
    steps = 0 if first is None else first.steps_done
    if second is not None:
        offset = n_code if first is None else first.steps_done
        for row in second.history:
            shifted = dict(row)
            shifted["step"] = float(row["step"]) + offset
            history.append(shifted)
        losses += list(second.losses)
        elapsed += second.elapsed_s
        steps = offset + second.steps_done
    selected = last.selected_step
    if second is not None and selected is not None:
        selected += n_code if first is None else first.steps_done
    prior["selected_steps"] = {
        "code": None if first is None else first.selected_step,
        "fine-tune": None if second is None else selected,
    }
    values = {f.name: getattr(last, f.name) for f in dataclasses.fields(FitResult)}
    values.update(
        config=config, history=history, losses=losses, steps_done=steps, elapsed_s=elapsed,
        selected_step=selected,
    )  # fmt: skip
    return PriorFitResult(**values, prior=prior)


def organ_activity_error(activity: np.ndarray | torch.Tensor, study: Study) -> float | None:
    """Mean absolute relative error of the activity (MBq) in the study's labelled structures.

    ``mean_k |A_est,k − A_true,k| / A_true,k`` over the labels of ``study.label_names`` with
    true activity > 0 (`recon.evaluation.metrics.organ_errors`); ``None`` when the study has no
    truth or no
    labels (real data).
    """
    if study.truth_activity is None or study.labels is None or not study.label_names:
        return None
    rows = organ_errors(
        activity, study.truth_activity, study.labels, study.label_names,
        study.grid.voxel_volume_mm3 * 1e-3, study.activity_unit,
    )  # fmt: skip
    errors = [abs(r.relative_error) for r in rows if r.relative_error is not None]
    return float(np.mean(errors)) if errors else None
