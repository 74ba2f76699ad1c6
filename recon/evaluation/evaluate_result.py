"""One reconstruction scored against the truth of its study (``spect eval``).

- `check_comparable`: the result is on the study's grid, in its unit, and the study has a truth.
- `evaluate_result`: the JSON-ready report: image metrics
  (`recon.evaluation.metrics.evaluate_volume`:
  NRMSE, PSNR, SSIM, total activity, activity outside the body, organs, lesion recovery) and the
  projection-domain fit of the result's expected counts
  (`recon.evaluation.projection_metrics.projection_fit`
  of `recon.evaluation.report.expected_counts`, ``None`` where the study's model cannot be
  evaluated).
- `evaluation_rows` / `evaluation_csv`: that report as ``(section, name, metric, value)`` rows and
  as CSV text.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from typing import Any

from recon.io import Result, Study

__all__ = [
    "CSV_COLUMNS",
    "check_comparable",
    "evaluate_result",
    "evaluation_csv",
    "evaluation_rows",
]

#: Columns of `evaluation_csv`.
CSV_COLUMNS = ("section", "name", "metric", "value")


def check_comparable(
    study: Study,
    result: Result,
    result_file: str | os.PathLike[str] = "result",
    study_file: str | os.PathLike[str] = "study",
) -> None:
    """Refuse a result that is not on the study's grid, or a study without a truth.

    Raises
    ------
    ValueError
        The grids differ, or the study holds no truth activity (messages name the files).
    """
    if result.grid != study.grid:
        raise ValueError(
            f"{os.fspath(result_file)}: its grid {tuple(result.grid.shape)} voxels of "
            f"{tuple(result.grid.spacing_mm)} mm is not the grid of {os.fspath(study_file)} "
            f"({tuple(study.grid.shape)} voxels of {tuple(study.grid.spacing_mm)} mm)"
        )
    if study.truth_activity is None:
        raise ValueError(f"{os.fspath(study_file)}: holds no truth activity to compare with")


def evaluate_result(
    study: Study,
    result: Result,
    *,
    study_file: str | os.PathLike[str] = "study",
    result_file: str | os.PathLike[str] = "result",
) -> dict[str, Any]:
    """Score ``result`` against the truth of ``study``.

    Returns
    -------
    dict
        JSON-safe: ``result_file``, ``study_file``, ``method``, ``metrics``
        (`recon.evaluation.metrics.evaluate_volume`'s dict) and ``projection_fit`` (deviance per
        pixel,
        PSNR, ...; ``None`` when the forward model cannot be evaluated).

    Raises
    ------
    ValueError
        `check_comparable`'s errors; the result's unit differs from the study's.
    """
    from recon.evaluation.metrics import evaluate_volume
    from recon.evaluation.projection_metrics import projection_fit
    from recon.evaluation.report import expected_counts, json_safe

    check_comparable(study, result, result_file, study_file)
    truth = study.truth_activity
    assert truth is not None  # check_comparable refused a study without one
    unit = result.activity_unit
    if unit != study.activity_unit:
        raise ValueError(
            f"{os.fspath(result_file)} is in {unit}, the truth of {os.fspath(study_file)} in "
            f"{study.activity_unit}"
        )
    metrics = evaluate_volume(
        result.activity, truth, study.labels, study.label_names, study.grid,
        unit=unit,
    )  # fmt: skip
    fit: dict[str, Any] | None
    try:
        fit = projection_fit(expected_counts(study, result.activity), study.projections)
    except ValueError:
        fit = None
    report: dict[str, Any] = json_safe(
        {
            "result_file": os.fspath(result_file),
            "study_file": os.fspath(study_file),
            "method": result.method,
            "metrics": metrics,
            "projection_fit": fit,
        }
    )
    return report


def evaluation_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, object]]:
    """The numbers of an `evaluate_result` report as ``(section, name, metric, value)`` rows.

    Sections: ``volume`` (nrmse, nrmse_body, psnr_db, ssim), ``total_activity``,
    ``activity_outside``, ``projection_fit``, ``organ`` (one block per organ) and
    ``recovery`` (lesions).
    """
    metrics = report["metrics"]
    rows: list[tuple[str, str, str, object]] = []
    for key in ("nrmse", "nrmse_body", "psnr_db", "ssim"):
        rows.append(("volume", "", key, metrics.get(key)))
    for key, value in metrics["total_activity"].items():
        rows.append(("total_activity", "", key, value))
    for key, value in (metrics.get("activity_outside") or {}).items():
        rows.append(("activity_outside", "", key, value))
    for key, value in (report.get("projection_fit") or {}).items():
        rows.append(("projection_fit", "", key, value))
    for organ in metrics.get("organs", []):
        for key in ("label", "n_voxels", "true_mbq", "estimated_mbq", "relative_error", "cov"):
            rows.append(("organ", str(organ["name"]), key, organ.get(key)))
    for name, value in metrics.get("recovery_coefficients", {}).items():
        rows.append(("recovery", str(name), "recovery_coefficient", value))
    return rows


def evaluation_csv(report: Mapping[str, Any]) -> str:
    """`evaluation_rows` as CSV text with the header `CSV_COLUMNS` (floats to 9 digits, empty
    cells for missing or non-finite values)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for section, name, metric, value in evaluation_rows(report):
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            cell = ""
        elif isinstance(value, float):
            cell = f"{value:.9g}"
        else:
            cell = str(value)
        writer.writerow([section, name, metric, cell])
    return text.getvalue()
