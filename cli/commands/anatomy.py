"""Anatomy-guided commands: ``spect recon organs``, ``spect recon conjugate``, ``spect quantify``.

Each parses its options, calls one library function (`recon.anatomy.reconstruct_organs`,
`recon.anatomy.reconstruct.reconstruct_conjugate`, `recon.anatomy.quantify.quantify`) and prints.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.commands import (
    CollimatorOption,
    ForceOption,
    NoCollimatorOption,
    ResultOutput,
    SupportOption,
    check_output,
    study_with_collimator,
)

if TYPE_CHECKING:
    from recon.io import Anatomy, Result, Study

__all__ = ["ANATOMY_HELP", "conjugate", "load_study_anatomy", "organs", "quantify"]

#: Help text of every ``--anatomy`` option.
ANATOMY_HELP = (
    "A segmentation to use instead of the study's own anatomy: a NIfTI label map, a folder of "
    "NIfTI masks (TotalSegmentator), or a study file holding an anatomy on the same grid."
)


def organs(
    study_file: Annotated[Path, typer.Argument(metavar="STUDY.h5", help="Study file.")],
    output: ResultOutput,
    anatomy_file: Annotated[
        Path | None, typer.Option("--anatomy", metavar="FILE", help=ANATOMY_HELP)
    ] = None,
    residual: Annotated[
        bool,
        typer.Option(
            "--residual/--no-residual",
            help="Fit organs + residual (organ shifts and boundaries, within-organ modulation, "
            "sources the anatomy misses) after the organ fit; --no-residual: the organ fit alone "
            "(QPlanar).",
        ),
    ] = True,
    background_regions: Annotated[
        int,
        typer.Option("--background-regions", min=0, help="Background bands along z."),
    ] = 1,
    max_sources: Annotated[
        int, typer.Option("--max-sources", min=0, help="At most this many residual sources.")
    ] = 8,
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="Training steps of each residual round.")
    ] = 20,
    support: SupportOption = None,
    collimator: CollimatorOption = None,
    no_collimator: NoCollimatorOption = False,
    force: ForceOption = False,
) -> None:
    """Organ activities from the study's anatomy: one concentration per segment (Poisson ML
    through the full projector, with a Cramér–Rao uncertainty), then organs + residual.

    Writes a result file whose activity is the fitted model and whose parameters hold the
    organ table and the residual sources; prints the table.
    """
    from recon.anatomy import OrgansConfig, reconstruct_organs
    from recon.io import read_study, write_result

    check_output(output, force)
    study = study_with_collimator(read_study(study_file), collimator, no_collimator)
    anatomy = _anatomy(study, anatomy_file)
    config = OrgansConfig(
        residual=residual,
        background_regions=background_regions,
        max_sources=max_sources,
        steps=steps,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = reconstruct_organs(
            study,
            anatomy=anatomy,
            support=None if support is None else support.value,
            config=config,
            use_collimator=not no_collimator,
            study_file=str(study_file),
        )
    write_result(output, outcome.result, overwrite=force)
    _print_quantities(study, [outcome.result], [outcome.result.method])
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    typer.echo(f"wrote {output}")


def conjugate(
    study_file: Annotated[Path, typer.Argument(metavar="STUDY.h5", help="Study file.")],
    output: ResultOutput,
    anatomy_file: Annotated[
        Path | None, typer.Option("--anatomy", metavar="FILE", help=ANATOMY_HELP)
    ] = None,
    force: ForceOption = False,
) -> None:
    """Organ activities by the conjugate-view method (geometric mean of AP and PA with the
    transmission from μ), over the segments of the study's anatomy.

    Writes a result file (each segment painted at its concentration, the organ table in its
    parameters) and prints the table.
    """
    from recon.anatomy.reconstruct import reconstruct_conjugate
    from recon.io import read_study, write_result

    check_output(output, force)
    study = read_study(study_file)
    anatomy = _anatomy(study, anatomy_file)
    result = reconstruct_conjugate(study, anatomy=anatomy, study_file=str(study_file))
    write_result(output, result, overwrite=force)
    _print_quantities(study, [result], [result.method])
    typer.echo(f"wrote {output}")


def quantify(
    study_file: Annotated[Path, typer.Argument(metavar="STUDY.h5", help="Study file.")],
    result_files: Annotated[
        list[Path], typer.Argument(metavar="RESULT.h5...", help="Results of the study.")
    ],
    csv: Annotated[Path | None, typer.Option("--csv", help="Write the table as CSV.")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write it as JSON.")] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            metavar="FOLDER",
            help="Also write a report (organ table, fit to the counts, study, images).",
        ),
    ] = None,
    force: ForceOption = False,
) -> None:
    """The organ and lesion table of one or more results of a study: MBq, concentration,
    % of the total and uncertainty per segment of the study's anatomy, and the truth and error
    when the study has a truth (phantoms). Works on patient studies (no truth needed); --report
    writes FOLDER/report.html, report.md, summary.json and patient.png with the table, each
    result's fit to the measured counts and the study's counts model (calibration, decay,
    scatter).
    """
    import json

    from recon.anatomy.quantify import quantify as table_of
    from recon.anatomy.quantify import rows_to_csv
    from recon.io import read_result, read_study
    from recon.io.atomic import write_text

    for path in (csv, json_file):
        if path is not None:
            check_output(path, force, outputs=("csv", "json_file"))
    study = read_study(study_file)
    results = [read_result(p) for p in result_files]
    names = _labels(results, result_files)
    rows = table_of(study, results, names)
    _print_rows(rows)
    if report is not None:
        print_patient_report(study, results, names, report, force, f"Report of {study_file.name}")
    if csv is not None:
        write_text(csv, rows_to_csv(rows), overwrite=force)
        typer.echo(f"wrote {csv}")
    if json_file is not None:
        write_text(json_file, json.dumps([r.to_dict() for r in rows], indent=1), overwrite=force)
        typer.echo(f"wrote {json_file}")


# ----------------------------------------------------------------------------------------------


def print_patient_report(
    study: Study, results: list[Result], names: list[str], folder: Path, force: bool, title: str
) -> None:
    """Write `recon.evaluation.patient_report.write_patient_report` into ``folder`` and print
    each result's fit to the measured counts and ``wrote FOLDER/report.html``."""
    from recon.evaluation.patient_report import write_patient_report

    done, html = write_patient_report(folder, study, results, names, title=title, overwrite=force)
    for name, fit in done.fits.items():
        text = (
            "not computable"
            if fit is None
            else (f"deviance / pixel {fit['deviance_per_pixel']:.3f}, PSNR {fit['psnr']:.2f} dB")
        )
        typer.echo(f"fit to the counts, {name}: {text}")
    typer.echo(f"wrote {html}")


def load_study_anatomy(study: Study, path: Path) -> Anatomy:
    """An ``--anatomy FILE`` segmentation on the study's grid
    (`recon.io.segmentation.load_anatomy`)."""
    from recon.io.segmentation import load_anatomy

    return load_anatomy(study, path)


def _anatomy(study: Study, path: Path | None) -> Anatomy | None:
    """The ``--anatomy`` segmentation, or ``None`` for the study's own."""
    return None if path is None else load_study_anatomy(study, path)


def _labels(results: list[Result], files: list[Path]) -> list[str]:
    """One label per result: its method, or its file stem when methods repeat."""
    methods = [r.method for r in results]
    if len(set(methods)) == len(methods):
        return methods
    return [f"{m} ({f.stem})" for m, f in zip(methods, files, strict=True)]


def _print_quantities(study: Study, results: list[Result], names: list[str]) -> None:
    from recon.anatomy.quantify import quantify as table_of

    _print_rows(table_of(study, results, names))


def _print_rows(rows: list) -> None:  # QuantRow, imported lazily
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    has_truth = any(r.truth_mbq == r.truth_mbq for r in rows)  # not NaN
    table = Table(title="Organ and lesion activities")
    for column in ("method", "region", "MBq", "± sd", "Bq/mL", "% total"):
        table.add_column(column, justify="left" if column in ("method", "region") else "right")
    if has_truth:
        table.add_column("truth MBq", justify="right")
        table.add_column("error", justify="right")
    for r in rows:
        region = r.region + (" not found" if r.kind == "lesion" and r.found is False else "")
        cells = [
            r.method,
            region,
            _num(r.activity_mbq),
            _num(r.activity_sd_mbq),
            _num(r.concentration_bq_per_ml),
            _num(r.percent_of_total, ".1f"),
        ]
        if has_truth:
            cells += [_num(r.truth_mbq), _pct(r.error_percent)]
        table.add_row(*cells)
    # As wide as the table needs (names and numbers are never cut): a terminal narrower than
    # that wraps the lines rather than losing a region's name or a digit.
    console = Console()
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    Console(width=max(console.width, natural)).print(table)


def _num(value: float, spec: str = ".4g") -> str:
    return "–" if value != value else format(value, spec)  # NaN → dash


def _pct(value: float) -> str:
    return "–" if value != value else f"{value:+.1f} %"
