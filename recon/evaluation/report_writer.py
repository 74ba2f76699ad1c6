"""The files of a comparison report: figures, summaries and the HTML page (a jinja2 template).

`write_report` turns a `recon.evaluation.scoring.Comparison` into a folder::

    report.html        one self-contained page (CSS inline, every image embedded as a
                       data: URI, relative links to the files below; no external assets)
    comparison.png     truth and each method: coronal MIP and three slices, one colour scale
    profiles.png       line profiles through one point (left-right, front-back, head-feet)
    organs.png         organ-activity errors of every method (bar chart)
    projections.png    measured counts and each method's expected counts along one detector row
    convergence.png    log-likelihood / loss curves from the results' histories (if any)
    summary.json       every number of the report
    summary.md         the headline and organ tables in Markdown

The page is rendered from ``recon/templates/report.html.j2`` (package data, found with
`importlib.resources`) with autoescaping: every value it shows is plain text. Nothing here prints;
the files are written into a hidden staging folder and moved into place together
(`recon.io.atomic.staged_folder`).
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recon.evaluation.figures import save_png
from recon.evaluation.report_figures import (
    comparison_figure,
    convergence_figure,
    detector_row,
    organ_figure,
    profiles_figure,
    projection_profiles_figure,
    report_point,
)
from recon.evaluation.scoring import SETTINGS, json_safe, method_settings
from recon.io.atomic import staged_folder, write_text
from recon.io.hdf5 import software_version

if TYPE_CHECKING:
    import jinja2
    from matplotlib.figure import Figure

    from recon.evaluation.scoring import Comparison

__all__ = [
    "FIGURES",
    "HEADLINE_COLUMNS",
    "REPORT_HTML",
    "REPORT_TEMPLATE",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "ReportFiles",
    "headline_cells",
    "render_report_html",
    "report_template",
    "summary_markdown",
    "write_report",
]

#: The PNG files of a report, by role (``convergence`` only when a method has a history).
FIGURES = {
    "comparison": "comparison.png",
    "profiles": "profiles.png",
    "organs": "organs.png",
    "projections": "projections.png",
    "convergence": "convergence.png",
}
REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
#: The page's template: a file of the ``recon`` package (package data, see pyproject.toml).
REPORT_TEMPLATE = "templates/report.html.j2"


@dataclass(frozen=True)
class ReportFiles:
    """The files `write_report` wrote (absolute paths)."""

    folder: Path
    html: Path
    summary_json: Path
    summary_md: Path
    figures: dict[str, Path]


# -- writing -------------------------------------------------------------------------------------


def write_report(
    folder: str | os.PathLike[str],
    comparison: Comparison,
    *,
    title: str = "Reconstruction comparison",
    intro: str | None = None,
    extra: Mapping[str, Any] | None = None,
    extra_rows: Sequence[tuple[str, str]] = (),
    overwrite: bool = False,
    dpi: int = 100,
) -> ReportFiles:
    """Write the report of ``comparison`` into ``folder`` (created if missing).

    Parameters
    ----------
    folder : path
        Output folder.
    comparison : Comparison
        What `compare` returned.
    title : str
        Page and figure title.
    intro : str, optional
        A paragraph of plain text under the title.
    extra : mapping, optional
        More entries for ``summary.json`` (e.g. the demo's timings).
    extra_rows : sequence of (str, str)
        More rows for the page's "About" table (plain text).
    overwrite : bool
        Replace existing report files; without it any existing one is refused (before any
        file is written) with `FileExistsError`.
    dpi : int
        Resolution of the PNG files.

    Returns
    -------
    ReportFiles
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    names = [REPORT_HTML, SUMMARY_JSON, SUMMARY_MD, *FIGURES.values()]
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)

    study = comparison.study
    truth = np.asarray(study.truth_activity)
    point = report_point(study)
    unit = study.activity_unit
    figures: dict[str, Figure] = {
        "comparison": comparison_figure(
            truth, comparison.methods, study.grid, point=point, unit=unit, title=title
        ),
        "profiles": profiles_figure(truth, comparison.methods, study.grid, point=point, unit=unit),
        "organs": organ_figure(comparison),
        "projections": projection_profiles_figure(
            study, comparison, row=detector_row(study, point)
        ),
    }
    curves = convergence_figure(comparison.methods)
    if curves is not None:
        figures["convergence"] = curves

    summary = comparison.to_dict()
    summary["title"] = title
    summary["created_utc"] = _now()
    summary["software"] = f"spect {software_version()}"
    summary["slice_point_voxel"] = list(point)
    summary["figures"] = {k: FIGURES[k] for k in figures}
    if extra:
        summary.update(json_safe(dict(extra)))
    # Every file is written into a hidden staging folder and moved into place as a whole: an
    # interrupted report leaves nothing (and no half set of figures that refuses the rerun).
    with staged_folder(out, names, overwrite=overwrite) as stage:
        staged: dict[str, Path] = {}
        for key, fig in figures.items():
            staged[key] = stage / FIGURES[key]
            save_png(fig, staged[key], overwrite=True, dpi=dpi)
        write_text(stage / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n", overwrite=True)
        write_text(stage / SUMMARY_MD, summary_markdown(comparison, title=title), overwrite=True)
        page = render_report_html(
            comparison,
            staged,
            folder=out,
            title=title,
            software=str(summary["software"]),
            created_utc=str(summary["created_utc"]),
            point=point,
            intro=intro,
            extra_rows=extra_rows,
        )
        write_text(stage / REPORT_HTML, page, overwrite=True)
    if curves is None and overwrite and os.path.lexists(out / FIGURES["convergence"]):
        (out / FIGURES["convergence"]).unlink()  # a previous report's, not this one's
    paths = {key: out / FIGURES[key] for key in figures}
    json_path, md_path, html_path = out / SUMMARY_JSON, out / SUMMARY_MD, out / REPORT_HTML
    return ReportFiles(
        folder=out.resolve(),
        html=html_path.resolve(),
        summary_json=json_path.resolve(),
        summary_md=md_path.resolve(),
        figures={k: p.resolve() for k, p in paths.items()},
    )


# -- text ----------------------------------------------------------------------------------------


def _pct(value: object, digits: int = 1) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{100.0 * value:+.{digits}f} %"


def _num(value: object, fmt: str = ".3f") -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return format(value, fmt)


def headline_cells(row: Mapping[str, Any]) -> list[str]:
    """The headline row as text cells, in the order of `HEADLINE_COLUMNS`."""
    outside = row.get("activity_outside_fraction")
    return [
        str(row["method"]),
        _num(row.get("nrmse_body")),
        _num(row.get("psnr_db"), ".2f"),
        _num(row.get("ssim")),
        _pct(row.get("total_activity_error")),
        "–" if outside is None else f"{100.0 * outside:.1f} %",
        "–"
        if row.get("mean_abs_organ_error") is None
        else f"{100.0 * row['mean_abs_organ_error']:.1f} %",
        _num(row.get("deviance_per_pixel"), ".3g"),
    ]


#: Column titles of the headline table.
HEADLINE_COLUMNS = (
    "method",
    "NRMSE (body)",
    "PSNR (dB)",
    "SSIM",
    "total activity error",
    "activity outside body",
    "mean abs. organ error",
    "projection deviance / pixel",
)


def summary_markdown(comparison: Comparison, *, title: str) -> str:
    """The headline and organ tables as Markdown (what ``summary.md`` holds)."""
    lines = [f"# {title}", "", "| " + " | ".join(HEADLINE_COLUMNS) + " |"]
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(HEADLINE_COLUMNS) - 1)) + "|")
    for row in comparison.headline():
        lines.append("| " + " | ".join(headline_cells(row)) + " |")
    columns = comparison.columns()
    lines += ["", "Organ activities (MBq) and errors:", ""]
    lines.append("| organ | truth (MBq) | " + " | ".join(columns) + " |")
    lines.append("|" + "|".join([" --- ", " ---: "] + [" ---: "] * len(columns)) + "|")
    for row in comparison.organ_table():
        cells = [str(row["name"]), _num(row["true_mbq"], ".3g")]
        for column in columns:
            est = row["estimates"].get(column)
            cells.append(
                "–"
                if est is None
                else f"{_num(est['mbq'], '.3g')} ({_pct(est['relative_error'], 0)})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "NRMSE = ‖x − t‖/‖t‖ inside the body; PSNR with the truth's maximum as peak; SSIM in 3D; "
        "mean abs. organ error = mean |error| over the organs (lesions excluded); deviance "
        "per pixel ≈ 1 for a model that explains Poisson data.",
    ]
    for note in comparison.notes:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


# -- the page ------------------------------------------------------------------------------------


def report_template() -> jinja2.Template:
    """The page's template (`REPORT_TEMPLATE` in the installed ``recon`` package), autoescaped.

    Raises
    ------
    FileNotFoundError
        The package lacks the template (an installation without its package data).
    """
    import jinja2

    source = resources.files(__package__ or "recon.evaluation").joinpath(REPORT_TEMPLATE)
    if not source.is_file():
        raise FileNotFoundError(
            f"{source}: the report template is missing from the installed recon package "
            "(package data templates/*.j2)"
        )
    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.from_string(source.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class _Cell:
    """One row of the "About" table: its label and a text, a relative link or a path."""

    label: str
    text: str
    href: str | None = None
    code: bool = False


def _file_cell(label: str, path: str | None, folder: Path) -> _Cell:
    """A relative link when ``path`` is a file in ``folder``, the path as code otherwise."""
    if not path:
        return _Cell(label, "–")
    p = Path(path)
    try:
        rel = p.resolve().relative_to(folder.resolve())
    except ValueError:
        return _Cell(label, str(path), code=True)
    if not p.exists():
        return _Cell(label, str(path), code=True)
    return _Cell(label, rel.as_posix(), href=rel.as_posix())


def render_report_html(
    comparison: Comparison,
    figures: Mapping[str, Path],
    *,
    folder: str | os.PathLike[str],
    title: str,
    software: str,
    created_utc: str,
    point: tuple[int, int, int],
    intro: str | None = None,
    extra_rows: Sequence[tuple[str, str]] = (),
) -> str:
    """The report page of ``comparison`` (`report_template`), every value escaped.

    Parameters
    ----------
    comparison : Comparison
        What `recon.evaluation.scoring.compare` returned.
    figures : mapping of str to path
        PNG files by role (the keys of `FIGURES`; all but ``convergence`` required), embedded
        in the page as data: URIs and linked by file name.
    folder : path
        The report folder: result and study files inside it are linked, others shown as paths.
    title, software, created_utc : str
        Page title, software version and creation time (plain text).
    point : (int, int, int)
        Voxel ``(k, j, i)`` of the slices and profiles.
    intro : str, optional
        A paragraph of plain text under the title.
    extra_rows : sequence of (str, str)
        More rows for the "About" table (plain text).

    Raises
    ------
    ValueError
        A required figure is missing from ``figures``.
    """
    required = [k for k in FIGURES if k != "convergence"]
    missing = [k for k in required if k not in figures]
    if missing:
        raise ValueError(f"figures must hold {required}, got {sorted(figures)} (missing {missing})")
    base = Path(folder)
    study = comparison.study
    acq = study.acquisition
    pngs = {
        key: {
            "name": Path(path).name,
            "data": base64.b64encode(Path(path).read_bytes()).decode("ascii"),
        }
        for key, path in figures.items()
    }
    columns = comparison.columns()
    organ_rows = []
    for row in comparison.organ_table():
        cells = [str(row["name"]), _num(row["true_mbq"], ".4g")]
        for column in columns:
            est = row["estimates"].get(column)
            cells.append(
                "–" if est is None else f"{_num(est['mbq'], '.4g')} ({_pct(est['relative_error'])})"
            )
        organ_rows.append(cells)
    settings = [[m.name, *method_settings(m.result).values()] for m in comparison.methods]
    fit_rows = []
    for m in comparison.methods:
        fit = comparison.projection_fit.get(m.name) or {}
        fit_rows.append(
            [
                m.name,
                _num(fit.get("deviance"), ".6g"),
                _num(fit.get("deviance_per_pixel"), ".4g"),
                _num(fit.get("heldout_deviance_per_pixel"), ".4g"),
                _num(fit.get("psnr"), ".2f"),
                str(fit.get("n_pixels", "–")),
            ]
        )
    counts = float(np.asarray(study.projections, dtype=np.float64).sum())
    about = [
        _file_cell("study", comparison.study_file, base),
        _Cell("views (β)", ", ".join(f"{a:g}°" for a in acq.angles_deg)),
        _Cell("nuclide", f"{acq.isotope or '?'} at {acq.energy_keV:g} keV"),
        _Cell("counts", f"{counts:.4g}"),
        _Cell(
            "grid",
            "×".join(str(n) for n in study.grid.shape)
            + " voxels of "
            + "×".join(f"{d:g}" for d in study.grid.spacing_mm)
            + " mm",
        ),
        _Cell("slice point (voxel k, j, i)", str(tuple(point))),
    ]
    for m in comparison.methods:
        method = "" if m.result is None else f" ({m.result.method})"
        about.append(_file_cell(m.name + method, m.file, base))
    if comparison.conjugate_view:
        about.append(_Cell("conjugate view background", str(comparison.conjugate_background)))
    about += [_Cell(str(key), str(value)) for key, value in extra_rows]
    return report_template().render(
        title=title,
        software=software,
        created_utc=created_utc,
        intro=intro,
        headline={
            "header": HEADLINE_COLUMNS,
            "rows": [headline_cells(r) for r in comparison.headline()],
        },
        organs={
            "header": ["organ", "truth (MBq)"] + [f"{c} (MBq, error)" for c in columns],
            "rows": organ_rows,
        },
        settings={"header": ["method", *(label for label, _ in SETTINGS)], "rows": settings},
        projection_fit={
            "header": [
                "method",
                "Poisson deviance",
                "deviance / pixel",
                "held-out deviance / pixel",
                "PSNR (dB)",
                "pixels",
            ],
            "rows": fit_rows,
        },
        figures=pngs,
        about=about,
        notes=list(comparison.notes),
        summary_json=SUMMARY_JSON,
        summary_md=SUMMARY_MD,
    )


# -- helpers -------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
