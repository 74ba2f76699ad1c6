"""A report for a study without truth (a patient): organ table, data fit, counts model, images.

`spect compare` and `spect quantify --report` write it when the study holds no truth activity
(`recon.evaluation.report` needs a truth for its errors). Nothing here is compared with a truth:

- the organ and lesion table of every result (`recon.anatomy.quantify`: MBq, ± sd, Bq/mL, % of
  the total, volume), without error columns;
- how well each result explains the measured counts under the study's model (Poisson deviance
  per pixel and PSNR of ``count_scale · A x + b`` against the counts,
  `recon.evaluation.projection_metrics.projection_fit`): ≈ 1 per pixel is a fit to the noise;
- the study's counts model: sensitivity, duration, decay and dead-time factors, count scale,
  scatter background and its method (`recon.io.summary.study_rows`);
- ``patient.png``: the measured anterior view and each result's coronal maximum-intensity
  projection.

Files: ``report.md``, ``report.html`` (self-contained: the image embedded), ``summary.json`` and
``patient.png``, written atomically.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.io.study import Result, Study

__all__ = ["PatientReport", "patient_report", "write_patient_report"]

REPORT_HTML, REPORT_MD, SUMMARY_JSON, FIGURE_PNG = (
    "report.html", "report.md", "summary.json", "patient.png",
)  # fmt: skip


@dataclass(frozen=True)
class PatientReport:
    """The numbers of a patient report.

    Attributes
    ----------
    rows: the organ table (`recon.anatomy.quantify.QuantRow` per method and region).
    fits: per method name, the projection fit (``deviance_per_pixel``, ``psnr``...) or ``None``
        when the study's model cannot be evaluated.
    study_rows: ``(field, value)`` facts of the study (counts model included).
    names: the methods' names, in order.
    """

    rows: list[Any]
    fits: dict[str, dict[str, float] | None]
    study_rows: list[tuple[str, str]]
    names: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become ``None``)."""
        from recon.evaluation.scoring import json_safe

        return json_safe(
            {
                "methods": self.names,
                "organ_table": [r.to_dict() for r in self.rows],
                "projection_fit": self.fits,
                "study": dict(self.study_rows),
            }
        )


def patient_report(study: Study, results: Sequence[Result], names: Sequence[str]) -> PatientReport:
    """Organ table, projection fits and study facts of ``results`` (no truth used).

    Raises
    ------
    ValueError
        As `recon.anatomy.quantify.quantify` (grid, regions, unit, names).
    """
    from recon.anatomy.quantify import quantify
    from recon.evaluation.projection_metrics import projection_fit
    from recon.evaluation.scoring import expected_counts
    from recon.io.summary import study_rows

    rows = quantify(study, results, names)
    fits: dict[str, dict[str, float] | None] = {}
    for name, result in zip(names, results, strict=True):
        try:
            fits[name] = projection_fit(expected_counts(study, result.activity), study.projections)
        except ValueError:
            fits[name] = None
    return PatientReport(rows, fits, study_rows(study), list(names))


def _figure(study: Study, results: Sequence[Result], names: Sequence[str]) -> Any:
    from recon.evaluation.figures import new_figure

    n = len(results) + 1
    fig = new_figure(2.6 * n, 3.2)
    axes = fig.subplots(1, n, squeeze=False)[0]
    (dz, _, dx) = study.grid.spacing_mm
    nz, _, nx = study.grid.shape
    extent = (-nx * dx / 2, nx * dx / 2, -nz * dz / 2, nz * dz / 2)
    axes[0].imshow(study.projections[0][::-1], cmap="gray_r", extent=extent, aspect="equal")
    axes[0].set_title("measured, view 1", fontsize=9)
    for ax, name, result in zip(axes[1:], names, results, strict=True):
        mip = np.asarray(result.activity, dtype=np.float64).max(axis=1)  # [Z, X], coronal
        ax.imshow(mip[::-1], cmap="inferno", extent=extent, aspect="equal")
        ax.set_title(f"{name}: coronal MIP", fontsize=9)
    for ax in axes:
        ax.set_xlabel("x (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("z (mm)", fontsize=8)
    return fig


def _fmt(value: object, spec: str = ".4g") -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return format(value, spec)


def _tables(report: PatientReport) -> tuple[list[str], list[list[str]], list[list[str]]]:
    header = ["method", "region", "MBq", "± sd", "Bq/mL", "% total", "volume (mL)"]
    organ_rows = [
        [
            r.method,
            r.region if r.kind != "lesion" else f"{r.region} (lesion)",
            _fmt(r.activity_mbq),
            _fmt(r.activity_sd_mbq),
            _fmt(r.concentration_bq_per_ml),
            _fmt(r.percent_of_total, ".1f"),
            _fmt(r.volume_ml),
        ]
        for r in report.rows
    ]
    fit_rows = [
        [
            name,
            _fmt((fit or {}).get("deviance_per_pixel"), ".3f"),
            _fmt((fit or {}).get("psnr"), ".2f"),
        ]
        for name, fit in report.fits.items()
    ]
    return header, organ_rows, fit_rows


def _markdown(report: PatientReport, title: str) -> str:
    header, organ_rows, fit_rows = _tables(report)

    def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return lines + ["| " + " | ".join(row) + " |" for row in rows]

    lines = [f"# {title}", "", "The study holds no truth: estimates only.", ""]
    lines += ["## Organ and lesion activities", "", *table(header, organ_rows), ""]
    lines += ["## Fit to the measured counts", ""]
    lines += table(["method", "deviance / pixel", "PSNR (dB)"], fit_rows)
    lines += ["", "## Study", "", *table(["quantity", "value"], report.study_rows), ""]
    lines += [f"![images]({FIGURE_PNG})", ""]
    return "\n".join(lines)


def _html(report: PatientReport, title: str, png: bytes) -> str:
    header, organ_rows, fit_rows = _tables(report)
    esc = html.escape

    def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
        cells = "".join(f"<th>{esc(h)}</th>" for h in head)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows
        )
        return f"<table><tr>{cells}</tr>{body}</table>"

    image = base64.b64encode(png).decode("ascii")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>body{{font-family:sans-serif;max-width:60em;"
        "margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:right}</style></head><body>"
        f"<h1>{esc(title)}</h1><p>The study holds no truth: estimates only.</p>"
        f"<h2>Organ and lesion activities</h2>{table(header, organ_rows)}"
        "<h2>Fit to the measured counts</h2>"
        f"{table(['method', 'deviance / pixel', 'PSNR (dB)'], fit_rows)}"
        f"<h2>Study</h2>{table(['quantity', 'value'], report.study_rows)}"
        f"<h2>Images</h2><img alt='images' src='data:image/png;base64,{image}'>"
        "</body></html>\n"
    )


def write_patient_report(
    folder: str | os.PathLike[str],
    study: Study,
    results: Sequence[Result],
    names: Sequence[str],
    *,
    title: str = "Patient report",
    overwrite: bool = False,
) -> tuple[PatientReport, Path]:
    """Write the report of ``results`` of a study without truth into ``folder``.

    Returns
    -------
    (PatientReport, Path)
        The numbers and the path of ``report.html``.

    Raises
    ------
    FileExistsError
        ``folder`` is a file, or a report file exists and ``overwrite`` is false (before any
        file is written).
    ValueError
        As `patient_report`.
    """
    from recon.evaluation.figures import save_png
    from recon.io.atomic import atomic_output

    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    names_ = [REPORT_HTML, REPORT_MD, SUMMARY_JSON, FIGURE_PNG]
    existing = [str(out / n) for n in names_ if os.path.lexists(out / n)]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)}: already exist(s); use --force to replace")
    report = patient_report(study, results, names)
    out.mkdir(parents=True, exist_ok=True)
    save_png(_figure(study, results, names), out / FIGURE_PNG, overwrite=overwrite)
    png = (out / FIGURE_PNG).read_bytes()
    for name, text in (
        (SUMMARY_JSON, json.dumps({"title": title, **report.to_dict()}, indent=2) + "\n"),
        (REPORT_MD, _markdown(report, title)),
        (REPORT_HTML, _html(report, title, png)),
    ):
        with atomic_output(out / name, overwrite=overwrite) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return report, out / REPORT_HTML
