"""Comparison reports: several reconstructions of one study scored against its truth.

One name for the three modules of a report, each with one job:

- `recon.evaluation.scoring`: `compare` scores every reconstruction (`MethodResult`) into a
  `Comparison` (volume metrics, the projection-domain fit of its `expected_counts`, the
  conjugate-view organ activities of an AP/PA study);
- `recon.evaluation.report_figures`: the report's figures (`comparison_figure`, `profiles_figure`,
  `organ_figure`, `projection_profiles_figure`, `convergence_figure`);
- `recon.evaluation.report_writer`: `write_report` writes the folder (``report.html`` rendered from
  the
  jinja2 template ``recon/templates/report.html.j2``, the PNGs, ``summary.json``,
  ``summary.md``).

Nothing here prints; every file is written atomically (`recon.io.atomic_output`).
"""

from __future__ import annotations

from recon.evaluation.report_figures import (
    comparison_figure,
    convergence_figure,
    organ_figure,
    profiles_figure,
    projection_profiles_figure,
    report_point,
)
from recon.evaluation.report_writer import (
    FIGURES,
    HEADLINE_COLUMNS,
    REPORT_HTML,
    SUMMARY_JSON,
    SUMMARY_MD,
    ReportFiles,
    headline_cells,
    render_report_html,
    summary_markdown,
    write_report,
)
from recon.evaluation.scoring import (
    CONJUGATE_VIEW,
    SETTINGS,
    Comparison,
    MethodResult,
    compare,
    expected_counts,
    heldout_mask,
    json_safe,
    method_label,
    method_settings,
    study_collimator_response,
)

__all__ = [
    "CONJUGATE_VIEW",
    "FIGURES",
    "HEADLINE_COLUMNS",
    "REPORT_HTML",
    "SETTINGS",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "Comparison",
    "MethodResult",
    "ReportFiles",
    "compare",
    "comparison_figure",
    "convergence_figure",
    "expected_counts",
    "headline_cells",
    "heldout_mask",
    "json_safe",
    "method_label",
    "method_settings",
    "organ_figure",
    "profiles_figure",
    "projection_profiles_figure",
    "render_report_html",
    "report_point",
    "study_collimator_response",
    "summary_markdown",
    "write_report",
]
