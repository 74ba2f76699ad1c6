"""One reconstruction of a study into a `recon.io.Result`, per method.

The CLI (``spect recon mlem`` / ``spect recon nerf``), `recon.batch` and `recon.demo` all call
these, so a study reconstructed by any of them gives the same activity and the same parameter
record:

- `reconstruct_mlem`: MLEM, OSEM or one-step-late MAP-EM (`recon.algorithms.mlem.em_reconstruct`)
  with the
  study's geometry, μ, collimator, background and count scale;
- `reconstruct_nerf`: a neural field fitted to the counts (`recon.nerf.training.fit`, or
  `recon.cohort.prior.fit_with_prior` with a cohort model), sampled on the study's grid
  (`recon.nerf.export.to_result`).

Also here: `resolve_collimator` (the collimator of a study with a one-line note, for the result's
parameters) and `check_nerf_folder` (refuse to start a NeRF fit over a previous run's files).
Nothing here prints; errors are ``ValueError``/``OSError`` with one clear message.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from recon.io import Result, Study
from recon.support import resolve_support

if TYPE_CHECKING:
    from recon.algorithms.mlem import EMConfig, IterationCallback
    from recon.nerf.config import TrainConfig
    from recon.nerf.training import StepCallback
    from spectproj import CollimatorResponse

__all__ = [
    "REPRESENTATIONS",
    "check_nerf_folder",
    "reconstruct_mlem",
    "reconstruct_nerf",
    "resolve_collimator",
    "study_support",
]

#: What `reconstruct_nerf` fits: the emission field, or the field with the anatomy at each point.
REPRESENTATIONS = ("field", "anatomy-field")
#: ``support_note`` of a NeRF fitted with a cohort prior (which takes no support yet).
_PRIOR_SUPPORT_NOTE = "none (not yet with a cohort prior)"


def resolve_collimator(study: Study, enabled: bool = True) -> tuple[CollimatorResponse | None, str]:
    """The collimator blur of a study (`recon.io.Study.collimator_response`) and a note on it.

    Parameters
    ----------
    study:
        The study (its ``acquisition.collimator``, ``energy_keV`` and ``radius_mm``).
    enabled:
        ``False``: no blur whatever the study names.

    Returns
    -------
    (response, note):
        ``response`` or ``None``; ``note`` one line, e.g. ``"LEHR at 140.5 keV, radius 250 mm
        (σ = 0.5 mm + 0.02·d)"`` or ``"none (the study names no collimator)"``.

    Raises
    ------
    ValueError
        The name is not a known collimator preset (the message suggests ``--no-collimator``).
    """
    acq = study.acquisition
    if not enabled:
        return None, "off (--no-collimator)"
    if not acq.collimator:
        return None, "none (the study names no collimator)"
    if acq.radius_mm is None:
        return None, f"none ({acq.collimator} named, but the study has no radius_mm)"
    try:
        response = study.collimator_response()
    except ValueError as error:
        raise ValueError(f"{error}; use --no-collimator to go without collimator blur") from None
    assert response is not None  # a name and a radius: a response or the error above
    note = (
        f"{acq.collimator} at {acq.energy_keV:g} keV, radius {acq.radius_mm:g} mm "
        f"({response.summary()})"
    )
    return response, note


def study_support(study: Study, support: str | None) -> tuple[np.ndarray | None, str, str]:
    """``(mask [Z, Y, X] bool or None, kind, note)`` of a support request.

    ``support`` is ``"body"``, ``"anatomy"``, ``"none"`` or ``None`` (the body when the study has
    μ, a CT or an anatomy, else none): `recon.support.resolve_support`, with the kind used
    (``"body"``, ``"anatomy"`` or ``"none"``) for the result's ``support`` parameter.
    """
    mask, note = resolve_support(study, support)
    kind = support if support is not None else ("body" if mask is not None else "none")
    if support == "none":
        note = "none (--support none)"
    return mask, kind, note


def _device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r}: CUDA is not available (torch {torch.__version__})"
        )
    return dev


def _check_study(study: object) -> None:
    if not isinstance(study, Study):
        raise TypeError(f"study must be a recon.io.Study, got {type(study).__name__}")


def reconstruct_mlem(
    study: Study,
    config: EMConfig,
    *,
    support: str | None = None,
    attenuation: bool = True,
    collimator: bool = True,
    device: torch.device | str = "cpu",
    callback: IterationCallback | None = None,
    study_file: str | os.PathLike[str] | None = None,
    extra_parameters: Mapping[str, object] | None = None,
) -> Result:
    """Reconstruct ``study`` by MLEM, OSEM or one-step-late MAP-EM (``config``).

    The model is counts ~ Poisson(count_scale · A(activity) + background) with the study's
    geometry, μ (``attenuation``), collimator blur (``collimator``: `resolve_collimator`),
    background and count scale, so the activity is a concentration in the study's unit. Voxels
    outside the support (`study_support`) are held at 0.

    Parameters
    ----------
    study:
        The study.
    config:
        `recon.algorithms.mlem.EMConfig` (iterations, subsets, prior, post-filter).
    support:
        ``"body"``, ``"anatomy"``, ``"none"`` or ``None`` (body when possible).
    attenuation, collimator:
        Model the study's μ / named collimator (when it has them).
    device:
        Where it runs (float32).
    callback:
        ``callback(iteration, activity, log_likelihood)`` after each iteration.
    study_file:
        The study's path, recorded in the result.
    extra_parameters:
        More entries for the result's parameters (e.g. ``{"batch": True}``).

    Returns
    -------
    recon.io.Result
        ``activity`` ``[Z, Y, X]`` float32 (study unit); ``parameters``: the `EMConfig` fields,
        ``method``, ``study_file``, ``device``, ``dtype``, ``count_scale``, ``attenuation``,
        ``attenuation_note``, ``collimator``, ``collimator_sigma0_mm``, ``collimator_slope``,
        ``collimator_parameters`` (the `spectproj.CollimatorSpec` as a dict),
        ``collimator_note``, ``support``, ``support_note``, ``radius_mm``, ``background``,
        ``n_views``, ``initial``; ``history``: ``log_likelihood`` and ``log_prior`` per
        iteration; ``extras``: ``unfiltered_activity`` with a post-filter.

    Raises
    ------
    ValueError
        More subsets than views, an unknown collimator, a support the study cannot give, CUDA
        asked for but absent.
    """
    from recon.algorithms.mlem import em_reconstruct

    _check_study(study)
    dev = _device(device)
    acq = study.acquisition
    geometry = study.geometry()
    if config.subsets > geometry.n_views:
        raise ValueError(
            f"--subsets {config.subsets} exceeds the study's {geometry.n_views} view(s)"
        )
    response, collimator_note = resolve_collimator(study, collimator)
    mask, support_kind, support_note = study_support(study, support)
    use_mu = attenuation and study.mu_per_mm is not None
    if not attenuation:
        attenuation_note = "off (--no-attenuation)"
    elif use_mu:
        attenuation_note = f"study μ at {acq.energy_keV:g} keV"
    else:
        attenuation_note = "none (the study has no μ)"

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=dev)

    em = em_reconstruct(
        tensor(study.projections),
        geometry,
        config,
        mu=tensor(study.mu_per_mm) if use_mu and study.mu_per_mm is not None else None,
        collimator=response,
        background=None if study.background is None else tensor(study.background),
        count_scale=acq.count_scale,
        mask=None if mask is None else torch.as_tensor(mask, device=dev),
        callback=callback,
    )
    parameters: dict[str, Any] = dataclasses.asdict(config)
    parameters.update(
        {
            "method": config.method,
            "study_file": None if study_file is None else os.fspath(study_file),
            "device": str(dev),
            "dtype": "float32",
            "count_scale": acq.count_scale,
            "attenuation": use_mu,
            "attenuation_note": attenuation_note,
            "collimator": None if response is None else (acq.collimator or "").upper(),
            "collimator_sigma0_mm": None if response is None else response.sigma0_mm,
            "collimator_slope": None if response is None else response.slope,
            "collimator_parameters": (
                None
                if response is None or acq.collimator_spec is None
                else acq.collimator_spec.to_dict()
            ),
            "collimator_note": collimator_note,
            "support": support_kind,
            "support_note": support_note,
            "radius_mm": acq.radius_mm,
            "background": study.background is not None,
            **study.counts_model(),
            "n_views": geometry.n_views,
            "initial": "uniform, projection matches the measured total",
        }
    )
    parameters.update(extra_parameters or {})
    extras: dict[str, np.ndarray] = {}
    if config.filter_fwhm_mm > 0 and em.unfiltered is not None:
        extras["unfiltered_activity"] = em.unfiltered.detach().cpu().numpy().astype(np.float32)
    return Result(
        activity=em.activity.detach().cpu().numpy().astype(np.float32),
        grid=study.grid,
        method=config.method,
        parameters=parameters,
        history={
            "log_likelihood": np.asarray(em.log_likelihood, dtype=np.float64),
            "log_prior": np.asarray(em.log_prior, dtype=np.float64),
        },
        activity_unit=study.activity_unit,
        extras=extras,
        study_file=None if study_file is None else os.fspath(study_file),
    )


def nerf_checkpoint_names(with_prior: bool) -> tuple[str, ...]:
    """The files of a NeRF run folder that mark a previous run (relative paths)."""
    from recon.nerf.checkpoint import LAST_CHECKPOINT

    if with_prior:  # a fit with a cohort prior keeps each phase in a sub-folder
        return (f"fine-tune/{LAST_CHECKPOINT}", f"code/{LAST_CHECKPOINT}")
    return (LAST_CHECKPOINT, "log.csv")


def check_nerf_folder(
    folder: str | os.PathLike[str],
    *,
    with_prior: bool = False,
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> None:
    """Refuse to start a NeRF fit in ``folder`` over a previous run (unless resuming or
    ``overwrite``), and a ``resume`` checkpoint that is not a file.

    Raises
    ------
    FileNotFoundError
        ``resume`` is not a file.
    FileExistsError
        ``folder`` holds a previous run's checkpoint or log.
    """
    from recon.nerf.checkpoint import LAST_CHECKPOINT

    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    path = Path(folder)
    names = nerf_checkpoint_names(with_prior)
    previous = [n for n in names if (path / n).exists()]
    if previous and resume is None and not overwrite:
        last = path / (previous[0] if with_prior else LAST_CHECKPOINT)
        raise FileExistsError(
            f"{path}: holds a previous run ({', '.join(previous)}); use --resume "
            f"{last} to continue it or --force to start over"
        )


def reconstruct_nerf(
    study: Study,
    config: TrainConfig,
    *,
    representation: str = "field",
    support: str | None = None,
    collimator: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    prior: str | os.PathLike[str] | None = None,
    fine_tune: bool = False,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
    study_file: str | os.PathLike[str] | None = None,
    extra_parameters: Mapping[str, object] | None = None,
) -> Result:
    """Reconstruct ``study`` with a neural emission field (pieNeRF-style, exact physics).

    The field's initial weights follow ``config.seed`` (without touching the caller's random
    state); it is fitted by `recon.nerf.training.fit` (or, with ``prior``, by
    `recon.cohort.prior.fit_with_prior`) and sampled on the study's grid by
    `recon.nerf.export.to_result`.

    Parameters
    ----------
    study:
        The study.
    config:
        `recon.nerf.config.TrainConfig`.
    representation:
        ``"field"`` (`recon.nerf.field.EmissionField`) or ``"anatomy-field"`` (the anatomy at each
        point is an input too: `recon.nerf.anatomy_field.anatomy_field_for_study`).
    support:
        ``"body"``, ``"anatomy"``, ``"none"`` or ``None`` (body when possible; none with a prior,
        which takes no support yet).
    collimator:
        Model the collimator blur the study names (whole views per step).
    out_dir:
        Folder of logs, previews and checkpoints (``None``: none written).
    resume:
        Checkpoint to continue from.
    prior:
        A cohort model (``spect train-cohort``): fit only this study's latent code.
    fine_tune:
        With ``prior``: then fine-tune every weight.
    device:
        Where it runs.
    callback:
        ``callback(step, total, metrics)`` after each step.
    study_file:
        The study's path, recorded in the result.
    extra_parameters:
        More entries for the result's parameters (e.g. ``{"batch": True}``).

    Returns
    -------
    recon.io.Result
        `recon.nerf.export.to_result`'s, with ``study_file``, ``out_dir``, ``render``,
        ``collimator``, ``support``, ``support_note``, ``anatomy`` (and ``prior``) added.

    Raises
    ------
    ValueError
        Bad combinations (``fine_tune`` without ``prior``; ``prior`` with an anatomy field, a
        support, or without collimator and ``render="views"``), an unknown representation or
        support, CUDA asked for but absent.
    FileNotFoundError
        ``resume`` is not a file.
    recon.nerf.training.TrainingInterrupted, recon.nerf.training.TrainingDiverged
        From the fit, for the caller to report.
    """
    from recon.nerf.export import to_result

    _check_study(study)
    if representation not in REPRESENTATIONS:
        raise ValueError(
            f"representation must be one of {list(REPRESENTATIONS)}, got {representation!r}"
        )
    if fine_tune and prior is None:
        raise ValueError("--fine-tune needs --prior MODEL (a model from spect train-cohort)")
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    if prior is not None and representation != "field":
        raise ValueError("--representation anatomy-field cannot be used with --prior yet")
    dev = _device(device)
    if prior is not None:
        if support not in (None, "none"):
            raise ValueError("--support cannot be used with --prior yet; use --support none")
        mask, support_kind, support_note = None, "none", _PRIOR_SUPPORT_NOTE
        if not collimator:
            if config.render == "views":
                raise ValueError("--no-collimator with --prior needs render 'auto' or 'lines'")
            config = dataclasses.replace(config, render="lines")  # lines never blur
    else:
        mask, support_kind, support_note = study_support(study, support)

    extra: dict[str, object] = {
        "study_file": None if study_file is None else os.fspath(study_file),
        "out_dir": None if out_dir is None else os.fspath(out_dir),
    }
    if prior is not None:
        from recon.cohort.prior import fit_with_prior

        trained: Any = fit_with_prior(
            study, prior, fine_tune, config, out_dir=out_dir, resume=resume,
            callback=callback, device=dev,
        )  # fmt: skip
    else:
        from recon.nerf.training import fit

        field = _representation(study, config, representation)
        trained = fit(
            field, study, config, out_dir=out_dir, resume=resume, callback=callback,
            device=dev, support=mask, collimator="study" if collimator else None,
        )  # fmt: skip
    extra.update(trained.physics)
    extra.update(
        support=support_kind,
        support_note=support_note,
        anatomy=None if study.anatomy is None else study.anatomy.source,
    )
    if prior is not None:
        extra["prior"] = trained.prior
    extra.update(extra_parameters or {})
    return to_result(trained, study, study_file=study_file, extra_parameters=extra)


def _representation(study: Study, config: TrainConfig, representation: str) -> Any:
    """A fresh representation whose initial weights follow ``config.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if representation == "anatomy-field":
            from recon.nerf.anatomy_field import AnatomyFieldConfig, anatomy_field_for_study

            return anatomy_field_for_study(study, AnatomyFieldConfig(field=config.field))
        from recon.nerf.field import EmissionField

        return EmissionField(study.grid, config.field)
