"""A study whose projections are the noise-free expected counts of an activity (``spect project``).

`expected_counts_study` forward-projects the study's truth activity, or a reconstruction on the
study's grid, with the study's geometry, μ and collimator (`recon.reconstruct.resolve_collimator`)
and returns a copy of the study whose projections are
``count_scale · A(activity) + background`` (clipped at 0, float32), with provenance entries that
say so.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from recon.io import Result, Study
from recon.reconstruct import resolve_collimator

__all__ = ["expected_counts_study"]


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
    from spectproj import SPECTProjector

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
    mu = None if study.mu_per_mm is None else torch.as_tensor(study.mu_per_mm)
    with torch.no_grad():
        projector = SPECTProjector(study.geometry(), mu=mu, collimator=response)
        line_integrals = projector(torch.as_tensor(volume)).double().numpy()
    expected = study.acquisition.count_scale * line_integrals
    if study.background is not None:
        expected = expected + study.background
    expected = np.clip(expected, 0.0, None).astype(np.float32)
    provenance = dict(study.provenance)
    provenance.update(
        {
            "noise": "none (expected counts)",
            "projected_from": source,
            "projected_study": "" if study_file is None else os.fspath(study_file),
            "projection": "count_scale × A(activity) + background (spect project)",
            "projection_collimator": collimator_note,
            "projection_attenuation": "study μ" if mu is not None else "none (no μ in the study)",
        }
    )
    return dataclasses.replace(study, projections=expected, provenance=provenance)
