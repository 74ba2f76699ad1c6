"""Expected counts of an activity under a study's model: ``count_scale · A(activity) + b``.

`expected_counts` is the one forward model of a study's counts for scoring and projection (the
report's projection fit, ``spect project``, the organ fit's residuals): the study's geometry, μ,
a collimator blur and background, on any device. `expected_counts_study` (``spect project``)
forward-projects the study's truth activity, or a reconstruction on the
study's grid, with the study's geometry, μ and collimator (`recon.reconstruct.resolve_collimator`)
and returns a copy of the study whose projections are
``count_scale · A(activity) + background`` (clipped at 0, float32), with provenance entries that
say so.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch

from recon.io import Result, Study
from spectproj import CollimatorResponse

__all__ = ["expected_counts", "expected_counts_study"]


def expected_counts(
    study: Study,
    activity: np.ndarray | torch.Tensor,
    *,
    collimator: CollimatorResponse | None,
    device: Any = None,
) -> np.ndarray:
    """Expected counts ``[V, rows, bins]`` (float32) of ``activity`` under the study's model.

    ``count_scale · A(max(activity, 0)) + background`` with the study's geometry, μ (if any), the
    given collimator blur and the study's background (if any); clipped at 0.

    Parameters
    ----------
    study:
        Geometry, μ, count scale, background.
    activity:
        ``[Z, Y, X]`` on the study's grid, in its activity unit.
    collimator:
        The blur to model (normally ``study.collimator_response()``), or ``None``.
    device:
        Where to project (default CPU).
    """
    from spectproj import SPECTProjector

    dev = torch.device("cpu") if device is None else torch.device(device)
    x = torch.as_tensor(activity).detach().to(device=dev, dtype=torch.float32)
    if tuple(x.shape) != tuple(study.grid.shape):
        raise ValueError(
            f"activity has shape {tuple(x.shape)}, the study's grid {tuple(study.grid.shape)}"
        )
    mu = None
    if study.mu_per_mm is not None:
        mu = torch.as_tensor(np.ascontiguousarray(study.mu_per_mm, dtype=np.float32), device=dev)
    projector = SPECTProjector(study.geometry(), mu, collimator, dtype=torch.float32, device=dev)
    with torch.no_grad():
        y = study.acquisition.count_scale * projector(x.clamp_min(0.0))
        if study.background is not None:
            y = y + torch.as_tensor(np.asarray(study.background, dtype=np.float32), device=dev)
    return y.clamp_min(0.0).cpu().numpy().astype(np.float32)


def expected_counts_study(
    study: Study,
    result: Result | None = None,
    *,
    study_file: str | os.PathLike[str] | None = None,
    result_file: str | os.PathLike[str] | None = None,
) -> Study:
    """``study`` with its projections replaced by the expected counts of an activity.

    Parameters
    ----------
    study:
        The study (geometry, μ, collimator, background, count scale; and its truth when
        ``result`` is ``None``).
    result:
        A reconstruction on the study's grid and in its unit to project instead of the truth.
    study_file, result_file:
        Paths, for the provenance (``projected_study``, ``projected_from``).

    Returns
    -------
    Study
        ``projections`` ``[V, rows, bins]`` float32 expected counts; provenance adds ``noise``,
        ``projected_from``, ``projected_study``, ``projection``, ``projection_collimator`` and
        ``projection_attenuation``.

    Raises
    ------
    ValueError
        ``result``'s grid or unit differs from the study's; no ``result`` and no truth; an
        unknown collimator name.
    """
    from recon.reconstruct import resolve_collimator

    if result is not None:
        name = "result" if result_file is None else os.fspath(result_file)
        if result.grid != study.grid:
            raise ValueError(
                f"{name}: its grid {result.grid.shape} of {result.grid.spacing_mm} mm "
                f"(offset {result.grid.offset_mm}) differs from the study's {study.grid.shape} of "
                f"{study.grid.spacing_mm} mm (offset {study.grid.offset_mm})"
            )
        if result.activity_unit != study.activity_unit:
            raise ValueError(
                f"{name}: activity unit {result.activity_unit!r} differs from the study's "
                f"{study.activity_unit!r}"
            )
        volume, source = result.activity, f"reconstruction {name}"
    else:
        if study.truth_activity is None:
            where = "study" if study_file is None else os.fspath(study_file)
            raise ValueError(
                f"{where}: has no truth activity (/truth/activity); use --activity "
                "RESULT.h5 to project a reconstruction"
            )
        volume, source = study.truth_activity, "truth activity"

    response, collimator_note = resolve_collimator(study)
    expected = expected_counts(study, np.asarray(volume), collimator=response)
    provenance = dict(study.provenance)
    provenance.update(
        {
            "noise": "none (expected counts)",
            "projected_from": source,
            "projected_study": "" if study_file is None else os.fspath(study_file),
            "projection": "count_scale × A(activity) + background (spect project)",
            "projection_collimator": collimator_note,
            "projection_attenuation": (
                "study μ" if study.mu_per_mm is not None else "none (no μ in the study)"
            ),
        }
    )
    return dataclasses.replace(study, projections=expected, provenance=provenance)
