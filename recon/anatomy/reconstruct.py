"""Anatomy-guided reconstruction of a study: the organ fit, and organs + residual, as `Result`s.

`reconstruct_organs` is what ``spect recon organs`` calls:

1. resolve the study's physics once: its anatomy (or one given), the support
   (`recon.support.resolve_support`) and the collimator (`Study.collimator_response`); the
   background compartments hold activity in proportion to the tissue in each voxel
   (`recon.anatomy.compartments.tissue_fraction` of μ: partial volume at the body's surface,
   none in gas);
2. fit one concentration per compartment (`recon.anatomy.organ_fit.fit_organs`): QPlanar;
3. with ``residual=True``: train `OrganResidualModel` with the project's one training loop
   (`recon.nerf.training.fit`, whole views through the projector with the collimator blur),
   first the organs alone (registration shift, boundary offset and uptake modulation of each
   segment), then, round by round, with residual sources seeded where counts stay unexplained
   (`recon.anatomy.sources.find_sources`);
4. attach the per-compartment table (and the sources found) to the `Result`'s parameters
   under ``"organ_table"`` and ``"sources"``. Each source's activity is measured by the
   geometric mean of its two views' excess
   (`recon.anatomy.sources.conjugate_activity`: independent of the depth the fit gave it). A
   source whose peak concentration is less than `LESION_CONTRAST` times that of the compartment
   it lies in, or of a segment within `SPILL_MARGIN_VOXELS` of it, is that compartment's uneven
   uptake or the part of it the segmentation misses: its activity is added to the compartment's
   (it is listed under ``"uptake_sources"``); the others are the lesions the anatomy misses.
   Each sd is the count sd (Cramér–Rao) combined with the method's measured model sd
   (`recon.anatomy.uncertainty`; `OrgansConfig.model_error`).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recon.anatomy.compartments import Compartments, compartments_from_anatomy, tissue_fraction
from recon.anatomy.organ_fit import (
    OrganFit,
    OrganFitConfig,
    basis_projections,
    fisher_information,
    fit_organs,
    mbq_per_unit_ml,
    study_projector,
)
from recon.anatomy.residual import OrganResidualModel, ResidualSource
from recon.anatomy.sources import (
    conjugate_activity,
    find_sources,
    nearest_voxel,
    opposed_pair,
    search_depths,
)
from recon.anatomy.uncertainty import (
    ORGAN_FIT_MODEL_ERROR,
    RESIDUAL_MODEL_ERROR,
    ModelError,
    combined_sd,
)
from recon.io.hdf5 import software_version
from recon.io.segmentation_threshold import THRESHOLD_CLASSES
from recon.io.study import Anatomy, Result, Study

__all__ = ["OrgansConfig", "OrgansOutcome", "reconstruct_conjugate", "reconstruct_organs"]

#: Voxel size (mm) above which residual sources are not to be trusted: measured well at 3.125 and
#: 6.25 mm voxels, with lesion errors of +100 % and more at 12.5 and 16.7 mm (docs/anatomy.md).
COARSE_VOXEL_MM = 8.0

#: A residual source whose peak concentration is below this multiple of the concentration of the
#: compartment it lies in is counted in that compartment (uneven uptake, not a lesion).
LESION_CONTRAST = 3.0

#: A residual source whose centre lies within this many voxels of a segment (a one-voxel
#: segmentation error, plus one voxel of the source's own extent) may be that segment's activity
#: outside its outline; `LESION_CONTRAST` decides.
SPILL_MARGIN_VOXELS = 2.0

#: The first round of the residual model seeds only sources this many times more significant
#: than `OrgansConfig.source_threshold`: the organs' shifts, boundaries and modulation settle
#: with only the unmistakable lesions in the model, and the later rounds seed the others at the
#: depth the refined organs leave them. Chosen on development phantom cases (seeds 31–42, not
#: those of benchmarks/bench_anatomy.py): lesions within ±30 % 23/30 at 3, 26–27/30 from 4.5
#: to 6, 21/30 at 12.
FIRST_ROUND_FACTOR = 5.0

#: ``callback(step, total_steps, metrics)`` of the residual training (`recon.nerf.training`).
StepCallback = Callable[[int, int, Mapping[str, float]], None]


@dataclass(frozen=True)
class OrgansConfig:
    """Settings of `reconstruct_organs`.

    Parameters
    ----------
    background_regions:
        Background compartments (bands along z) for the support outside the segments (>= 0).
    residual:
        Fit organs + residual (registration, modulation, sources) after the organ fit.
    modulation:
        Fit the smooth within-organ modulation of the uptake (residual model only).
    register:
        Fit a registration shift of each segment (residual model only).
    boundary:
        Fit a boundary offset (dilation/erosion) of each segment (residual model only).
    depth_search:
        After each training round, move every source to the depth along its ray that explains
        the counts best (`recon.anatomy.sources.search_depths`), and refit when one moved.
    max_sources:
        At most this many residual sources per detection round.
    source_threshold:
        Significance (Poisson standard deviations) a source must reach to be seeded.
    source_prior:
        Weight of the L1 prior on source activities (0: only the few seeded sources).
    rounds:
        Training rounds of the residual model (>= 1): the first refines the organs alone, each
        later one first seeds sources where counts stay unexplained (it stops early when none).
    steps:
        Optimiser steps of each training round.
    lr:
        Learning rate (all parameters are of order one).
    optimizer:
        ``"lbfgs"`` (default: the model has few, smooth parameters) or ``"adam"``.
    seed:
        Seed of the training (the fit itself is deterministic on the CPU).
    organ_fit:
        `OrganFitConfig` of the organ fit.
    model_error:
        The method's relative model sd, added to the count sd of every organ and lesion in the
        table (`recon.anatomy.uncertainty`). ``None``: the value measured for the method
        (`RESIDUAL_MODEL_ERROR`, or `ORGAN_FIT_MODEL_ERROR` with ``residual=False``);
        ``ModelError()``: count statistics only.
    """

    background_regions: int = 1
    residual: bool = True
    modulation: bool = True
    register: bool = True
    boundary: bool = True
    depth_search: bool = True
    max_sources: int = 8
    source_threshold: float = 5.0
    source_prior: float = 0.0
    rounds: int = 3
    steps: int = 20
    lr: float = 1.0
    optimizer: str = "lbfgs"
    seed: int = 0
    organ_fit: OrganFitConfig = dataclasses.field(default_factory=OrganFitConfig)
    model_error: ModelError | None = None

    def __post_init__(self) -> None:
        for name in ("background_regions", "max_sources", "rounds", "steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        for name in ("source_threshold", "source_prior", "lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.model_error is not None and not isinstance(self.model_error, ModelError):
            raise ValueError(f"model_error must be a ModelError or None, got {self.model_error!r}")

    def method_model_error(self) -> ModelError:
        """`model_error`, or the one measured for the method when it is ``None``."""
        if self.model_error is not None:
            return self.model_error
        return RESIDUAL_MODEL_ERROR if self.residual else ORGAN_FIT_MODEL_ERROR

    def to_dict(self) -> dict[str, Any]:
        """Primitives only (for a result's parameters)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class OrgansOutcome:
    """What `reconstruct_organs` returns: the result, and the fits behind it.

    ``source_activities``: the activity of each of the model's sources (activity unit · mL,
    in the model's order) as the result's table measures it and its volume holds it; empty
    without the residual model."""

    result: Result
    organ_fit: OrganFit
    model: OrganResidualModel | None
    source_activities: tuple[float, ...] = ()


def reconstruct_organs(
    study: Study,
    *,
    anatomy: Anatomy | None = None,
    support: str | None = None,
    config: OrgansConfig | None = None,
    use_collimator: bool = True,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
    study_file: str | None = None,
) -> OrgansOutcome:
    """Organ activities (and residual sources) of ``study`` from its anatomy.

    Parameters
    ----------
    study:
        Counts, μ, count scale, background; its ``anatomy`` unless ``anatomy`` is given.
    anatomy:
        A segmentation on ``study.grid`` to use instead of the study's own.
    support:
        ``"body"``, ``"anatomy"`` or ``"none"``; ``None``: the body when the study allows it
        (`recon.support.resolve_support`).
    config:
        `OrgansConfig`.
    use_collimator:
        Model the collimator blur the study names (`Study.collimator_response`).
    device:
        Where projections and training run.
    callback:
        Progress of the residual training, ``(step, total, metrics)``.
    study_file:
        Recorded in the result.

    Raises
    ------
    ValueError
        No anatomy (neither in the study nor given), an anatomy on another grid.

    Warns
    -----
    UserWarning
        Residual sources on voxels coarser than `COARSE_VOXEL_MM`: their activities are not to be
        trusted there (docs/anatomy.md, Limits). An anatomy without organ segments (only the
        classes of a CT threshold, `recon.io.segmentation_threshold.THRESHOLD_CLASSES`): no
        organ activity can come out of it.
    """
    from recon.reconstruct import resolve_collimator
    from recon.support import resolve_support

    config = OrgansConfig() if config is None else config
    t0 = time.perf_counter()
    anatomy = study.anatomy if anatomy is None else anatomy
    if anatomy is None:
        raise ValueError(
            "the organ fit needs an anatomy (segmentation): the study has none; add one with "
            "'spect convert anatomy' or give --anatomy FILE"
        )
    if anatomy.shape != tuple(study.grid.shape):
        raise ValueError(
            f"the anatomy has shape {list(anatomy.shape)}, the study grid "
            f"{list(study.grid.shape)}; resample it onto the study grid first"
        )
    if set(anatomy.names.values()) <= set(THRESHOLD_CLASSES):
        warnings.warn(
            f"the anatomy has no organ segments, only {sorted(anatomy.names.values())} (what a CT "
            "threshold gives): the organs' activity goes to the background"
            + (" and to residual sources reported as lesions" if config.residual else "")
            + "; give an organ segmentation (e.g. TotalSegmentator's) for organ activities",
            stacklevel=2,
        )
    with_anatomy = dataclasses.replace(study, anatomy=anatomy)
    mask, support_note = resolve_support(with_anatomy, support)
    collimator, collimator_note = resolve_collimator(study, use_collimator)
    weight = None
    if study.mu_per_mm is not None:
        weight = tissue_fraction(study.mu_per_mm, study.acquisition.energy_keV)
    compartments = compartments_from_anatomy(
        anatomy, mask, background_regions=config.background_regions, background_weight=weight
    )
    organ_fit = fit_organs(
        study, compartments, collimator=collimator, config=config.organ_fit, device=device
    )
    model = None
    history: dict[str, np.ndarray] = {}
    if config.residual:
        voxel_mm = max(study.grid.spacing_mm)
        if voxel_mm > COARSE_VOXEL_MM:
            warnings.warn(
                f"voxels of {voxel_mm:.1f} mm: the residual sources' (lesions') activities were "
                "within ±30 % on voxels of 6.25 mm and finer, but +100 % and more at 12.5 mm; "
                f"use voxels of {COARSE_VOXEL_MM:g} mm or finer for lesions (docs/anatomy.md, "
                "Limits)",
                stacklevel=2,
            )
        model, history = _train_residual(study, organ_fit, mask, config, device, callback)
    table = _table(
        study, compartments, organ_fit, model, collimator, device, config.method_model_error()
    )
    if model is None:
        activity = organ_fit.activity_volume()
    else:  # the sources at the activities the table gives them
        activity = _volume(model, table["source_activities"])
    parameters: dict[str, Any] = {
        "representation": "organs+residual" if model is not None else "organs",
        "support": support_note,
        "collimator": collimator_note,
        "anatomy": anatomy.source or "study anatomy",
        "compartments": list(compartments.names),
        "config": config.to_dict(),
        "organ_table": table["organs"],
        "sources": table["sources"],
        "uptake_sources": table.get("uptake_sources", []),
        "deviance_per_pixel": table["deviance_per_pixel"],
        "elapsed_s": time.perf_counter() - t0,
        **study.counts_model(),
    }
    result = Result(
        activity=activity,
        grid=study.grid,
        method="organs+residual" if model is not None else "organs",
        parameters=parameters,
        history=history,
        activity_unit=study.activity_unit,
        software_version=software_version(),
        study_file=study_file,
    )
    return OrgansOutcome(
        result=result,
        organ_fit=organ_fit,
        model=model,
        source_activities=tuple(table.get("source_activities", ())),
    )


def reconstruct_conjugate(
    study: Study, *, anatomy: Anatomy | None = None, study_file: str | None = None
) -> Result:
    """Organ activities by the conjugate-view method (`recon.algorithms.conjugate_view`), as a
    `Result`.

    The regions are the anatomy's segments (the study's, or ``anatomy``; for a phantom without
    one, its truth labels). The result's activity paints each segment at its mean concentration
    (activity / volume); its parameters hold the ``organ_table`` (no uncertainty: the method
    gives none).
    """
    from recon.algorithms.conjugate_view import conjugate_view_quantification

    anatomy = study.anatomy if anatomy is None else anatomy
    if anatomy is not None:
        labels, names = anatomy.labels, dict(anatomy.names)
        source = anatomy.source or "study anatomy"
    elif study.labels is not None:
        labels = np.asarray(study.labels)
        names = {k: v for k, v in study.label_names.items() if not str(v).startswith("lesion")}
        source = "truth labels (the study has no anatomy)"
    else:
        raise ValueError(
            "the conjugate-view method needs organ regions: the study has no anatomy and no "
            "labels; add one with 'spect convert anatomy'"
        )
    rows = conjugate_view_quantification(study, labels, names)
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    to_mbq = mbq_per_unit_ml(study.activity_unit)
    activity = np.zeros(study.grid.shape, dtype=np.float32)
    table = []
    for row in rows:
        mask = np.isin(labels, row.labels)
        volume = float(mask.sum()) * voxel_ml
        concentration = row.activity_mbq / (volume * to_mbq) if volume else 0.0
        activity[mask] = concentration
        table.append(
            {
                "name": row.name,
                "background": False,
                "volume_ml": volume,
                "concentration": concentration,
                "concentration_sd": None,
                "activity_mbq": row.activity_mbq,
                "activity_sd_mbq": None,
                "at_bound": False,
            }
        )
    return Result(
        activity=activity,
        grid=study.grid,
        method="conjugate-view",
        parameters={
            "anatomy": source,
            "organ_table": table,
            "sources": [],
            **study.counts_model(),
        },
        activity_unit=study.activity_unit,
        software_version=software_version(),
        study_file=study_file,
    )


def _train_residual(
    study: Study,
    organ_fit: OrganFit,
    support: np.ndarray | None,
    config: OrgansConfig,
    device: torch.device | str,
    callback: StepCallback | None,
) -> tuple[OrganResidualModel, dict[str, np.ndarray]]:
    from recon.nerf.config import TrainConfig
    from recon.nerf.training import fit

    train = TrainConfig(
        steps=config.steps,
        render="views",
        optimizer=config.optimizer,
        lr=config.lr,
        holdout_fraction=0.0,
        jitter=False,
        seed=config.seed,
        val_every=0,
        log_every=max(1, config.steps // 20),
        preview_every=0,
        checkpoint_every=0,
    )
    expected = organ_fit.expected
    concentrations = organ_fit.concentrations
    sources: tuple[ResidualSource, ...] = ()
    model: OrganResidualModel | None = None
    data_counts = float(np.sum(study.projections))
    losses: list[float] = []
    for round_ in range(config.rounds):
        # Round 0 seeds only the strongest sources (what the organ fit clearly cannot explain,
        # so the registration does not move organs onto a lesion) and refines the organs; later
        # rounds add sources where the refined model still leaves significant counts.
        threshold = config.source_threshold * (FIRST_ROUND_FACTOR if round_ == 0 else 1.0)
        new = find_sources(
            study,
            expected,
            support,
            collimator=organ_fit.collimator,
            max_sources=config.max_sources,
            threshold=threshold,
            exclude=sources,
        )
        if round_ > 0 and not new:
            break
        previous = model
        sources = (*sources, *new)
        model = OrganResidualModel(
            study.grid,
            organ_fit.compartments,
            concentrations,
            sources,
            support,
            modulation=config.modulation,
            register=config.register,
            boundary=config.boundary,
            source_prior=config.source_prior,
            data_counts=data_counts,
        )
        if previous is not None:
            with torch.no_grad():
                model.modulation.copy_(previous.modulation)
                model.registration.copy_(previous.registration)
                model.boundary.copy_(previous.boundary)
        for refit in (False, True):
            outcome = fit(
                model,
                study,
                train,
                device=device,
                callback=callback,
                init_scale=False,
                collimator=organ_fit.collimator,  # the blur the organ fit modelled (maybe none)
            )
            losses.extend(outcome.losses)
            # A source stuck at a wrong depth (the likelihood along a ray can have several
            # minima) moves to the best one; the model is then refitted once around it.
            if refit or not config.depth_search:
                break
            if not search_depths(study, model, collimator=organ_fit.collimator, device=device):
                break
        expected = _expected(study, model, organ_fit.collimator, device)
        concentrations = model.concentrations().detach().cpu().numpy().astype(np.float64)
        sources = model.sources()
    assert model is not None
    return model, {"loss": np.asarray(losses, dtype=np.float64)}


def _expected(
    study: Study, model: OrganResidualModel, collimator: Any, device: torch.device | str
) -> np.ndarray:
    from recon.evaluation.expected_counts import expected_counts

    with torch.no_grad():
        volume = model.volume()
    return expected_counts(study, volume, collimator=collimator, device=device)


def _volume(model: OrganResidualModel, source_activities: list[float]) -> np.ndarray:
    """The model's activity volume with its sources at ``source_activities`` (unit · mL)."""
    with torch.no_grad():
        sources = torch.as_tensor(source_activities, dtype=torch.float32)
        volume = model.organ_volume() + model.source_volume(sources.to(model.support.device))
        return volume.detach().cpu().numpy().astype(np.float32)


def _table(
    study: Study,
    compartments: Compartments,
    organ_fit: OrganFit,
    model: OrganResidualModel | None,
    collimator: Any,
    device: torch.device | str,
    model_error: ModelError,
) -> dict[str, Any]:
    """The per-compartment and per-source table; each sd is the count sd (Cramér–Rao, or a
    source's two-view Poisson spread) combined with ``model_error`` (`with_model_error`)."""
    if model is None:
        organs = [
            with_model_error(dataclasses.asdict(e), 0.0 if e.background else model_error.organ)
            for e in organ_fit.estimates
        ]
        return {"organs": organs, "sources": [], "deviance_per_pixel": organ_fit.deviance_per_pixel}
    # Fisher information of the model's linear amplitudes (compartment concentrations with their
    # fitted shifts and modulations, source activities) at the fitted model.
    projector = study_projector(study, collimator, device=device)
    scale = study.acquisition.count_scale
    with torch.no_grad():
        c = model.concentrations()
        organ_parts = model.unit_volumes()  # [K, Z, Y, X] per unit concentration
        source_parts = _source_unit_volumes(model)  # [J, Z, Y, X] per unit activity
        parts = torch.cat([organ_parts, source_parts]).to(projector.device)
        basis = basis_projections(projector, parts, scale).double().cpu()
        amplitudes = torch.cat([c, model.source_activities()]).double().cpu()
    expected = amplitudes @ basis
    if study.background is not None:
        expected = expected + torch.as_tensor(np.asarray(study.background, np.float64)).reshape(-1)
    fisher = fisher_information(basis, expected).numpy()
    try:
        covariance = np.linalg.inv(fisher)
    except np.linalg.LinAlgError:
        covariance = np.linalg.pinv(fisher)
    sd = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    y = torch.as_tensor(np.asarray(study.projections, dtype=np.float64)).reshape(-1)
    from recon.algorithms.poisson import poisson_deviance

    deviance = float(poisson_deviance(y, expected)) / max(int(y.numel()), 1)
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    to_mbq = mbq_per_unit_ml(study.activity_unit)
    organs = []
    k = len(compartments)
    with torch.no_grad():
        totals = organ_parts.sum(dim=(1, 2, 3)).double().cpu().numpy() * voxel_ml  # mL per unit
    activity = (c.double().cpu().numpy() * totals).tolist()  # activity unit · mL
    variance = ((sd[:k] * totals) ** 2).tolist()
    # A source that is not clearly hotter than the compartment it lies in, or than a segment whose
    # boundary is within `SPILL_MARGIN_VOXELS` of it, is that compartment's own activity (uneven
    # uptake, or the part of an organ its segmentation misses): counted there, not as a lesion.
    # A source's activity is measured by the geometric mean of its excess counts in the opposed
    # views (`conjugate_activity`: independent of the depth the fit gave it).
    lesions = []
    source_activities = []
    distances = _segment_distances(study, compartments) if model.sources() else {}
    pair = opposed_pair(study.acquisition.angles_deg)
    views = y.reshape(study.projections.shape[0], -1)
    for j, s in enumerate(model.sources()):
        source_activity, source_sd = s.activity, float(sd[k + j])
        if pair is not None:
            unit = basis[k + j].reshape(views.shape)
            rest = expected.reshape(views.shape) - amplitudes[k + j] * unit
            source_activity, source_sd = conjugate_activity(views, rest, unit, pair)
        source_activities.append(source_activity)
        peak = source_activity * float(source_parts[j].max())  # activity unit (per mL)
        voxel = nearest_voxel(study, s.centre_mm)
        inside = int(compartments.index[voxel])
        host, contrast = _host(inside, voxel, peak, c, distances)
        row: dict[str, Any] = {
            "name": f"source_{j + 1}",
            "centre_mm": list(s.centre_mm),
            "sigma_mm": s.sigma_mm,
            "activity_mbq": source_activity * to_mbq,
            "activity_sd_mbq": source_sd * to_mbq,
            "model_activity_mbq": s.activity * to_mbq,
            "contrast": contrast,
            "in": compartments.names[inside] if inside >= 0 else None,
        }
        if host >= 0 and contrast < LESION_CONTRAST:
            activity[host] += source_activity
            variance[host] += source_sd**2
            row["counted_in"] = compartments.names[host]
        lesions.append(row)
    for i, name in enumerate(compartments.names):
        volume = float(compartments.voxel_counts[i]) * voxel_ml
        organs.append(
            {
                "name": name,
                "background": compartments.background[i],
                "volume_ml": volume,
                "concentration": activity[i] / volume,
                "concentration_sd": math.sqrt(variance[i]) / volume,
                "activity_mbq": activity[i] * to_mbq,
                "activity_sd_mbq": math.sqrt(variance[i]) * to_mbq,
                "at_bound": float(c[i]) <= 0,
            }
        )
    organs = [
        with_model_error(row, 0.0 if row["background"] else model_error.organ) for row in organs
    ]
    sources = [
        with_model_error(row, model_error.lesion) for row in lesions if "counted_in" not in row
    ]
    merged = [row for row in lesions if "counted_in" in row]
    return {
        "organs": organs,
        "sources": sources,
        "uptake_sources": merged,
        "deviance_per_pixel": deviance,
        "source_activities": source_activities,
    }


def with_model_error(row: dict[str, Any], relative: float) -> dict[str, Any]:
    """``row`` (a table row with ``activity_mbq`` and its count sd ``activity_sd_mbq``, and
    maybe ``concentration``/``concentration_sd``) with the model sd ``relative · activity``
    combined in (`recon.anatomy.uncertainty.combined_sd`); the count and model parts are kept
    as ``activity_sd_counts_mbq`` and ``activity_sd_model_mbq``."""
    counts_sd = float(row["activity_sd_mbq"])
    total, model = combined_sd(counts_sd, float(row["activity_mbq"]), relative)
    out = {**row, "activity_sd_mbq": total}
    if "concentration_sd" in row:
        out["concentration_sd"] = math.hypot(
            float(row["concentration_sd"]), relative * abs(float(row["concentration"]))
        )
    return {**out, "activity_sd_counts_mbq": counts_sd, "activity_sd_model_mbq": model}


def _segment_distances(study: Study, compartments: Compartments) -> dict[int, np.ndarray]:
    """Distance (voxels, ``[Z, Y, X]``) to each segment (not the background regions)."""
    from scipy import ndimage

    spacing = np.asarray(study.grid.spacing_mm, dtype=np.float64)
    sampling = spacing / spacing.max()
    return {
        i: ndimage.distance_transform_edt(compartments.index != i, sampling=sampling)
        for i, background in enumerate(compartments.background)
        if not background
    }


def _host(
    inside: int,
    voxel: tuple[int, int, int],
    peak: float,
    concentrations: torch.Tensor,
    distances: Mapping[int, np.ndarray],
) -> tuple[int, float]:
    """The compartment a source belongs to, and its contrast against it.

    The candidates are the compartment the source's centre lies in (``inside``, −1: none) and
    every segment within `SPILL_MARGIN_VOXELS` of that centre; the host is the candidate with
    the lowest contrast ``peak / concentration`` (the most likely origin of the activity).
    Returns ``(-1, inf)`` when no candidate holds activity.
    """
    candidates = {inside} if inside >= 0 else set()
    candidates |= {i for i, d in distances.items() if d[voxel] <= SPILL_MARGIN_VOXELS}
    best, best_contrast = -1, math.inf
    for i in sorted(candidates):
        level = float(concentrations[i])
        if level > 0 and peak / level < best_contrast:
            best, best_contrast = i, peak / level
    return best, best_contrast


def _source_unit_volumes(model: OrganResidualModel) -> torch.Tensor:
    """``[J, Z, Y, X]``: each source's part of the model per unit of its activity."""
    n = int(model.p0.shape[0])
    if n == 0:
        return torch.zeros((0, *model.index.shape), dtype=torch.float32, device=model.index.device)
    return torch.stack([model.source_unit_volume(j) for j in range(n)])
