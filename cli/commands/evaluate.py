"""``spect eval`` (one result against the truth) and ``spect compare`` (several results, a report).

Both read the truth from a study file (a simulated study holds ``truth_activity``, labels and
μ); the numbers come from `recon.evaluation.evaluate_result.evaluate_result` (``eval``) and
`recon.evaluation.report.compare` (``compare``, which also adds the conjugate-view organ activities
of an
AP/PA study); this module parses, calls and prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.commands import ForceOption, check_output, output_option
from cli.progress import status

if TYPE_CHECKING:
    from rich.table import Table

    from recon.io import Result

__all__ = ["compare", "evaluate", "headline_table", "organ_table"]


# -- tables shared with `spect demo` -------------------------------------------------------------


def headline_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """A rich table of `recon.evaluation.report.Comparison.headline` rows, one column per method
    (so that
    it fits a terminal of 80 columns)."""
    from rich.markup import escape
    from rich.table import Table

    from recon.evaluation.report import HEADLINE_COLUMNS, headline_cells

    table = Table(title=escape(title), title_justify="left")
    table.add_column("metric", style="bold")
    cells = [headline_cells(row) for row in rows]
    for column in cells:
        table.add_column(escape(column[0]), justify="right")
    for k, name in enumerate(HEADLINE_COLUMNS[1:], start=1):
        table.add_row(escape(name), *(escape(column[k]) for column in cells))
    return table


def organ_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str) -> Table:
    """A rich table of `recon.evaluation.report.Comparison.organ_table` rows: the true activity
    (MBq) and
    every column's relative error (the estimates in MBq are in the report and summary.json)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    table.add_column("organ")
    table.add_column("truth (MBq)", justify="right")
    for column in columns:
        table.add_column(escape(f"{column} error"), justify="right")
    for row in rows:
        cells = [str(row["name"]), _fmt(row["true_mbq"], ".4g")]
        for column in columns:
            est = row["estimates"].get(column)
            cells.append("–" if est is None else _pct(est["relative_error"]))
        table.add_row(*(escape(c) for c in cells))
    return table


def _fmt(value: object, spec: str = ".4g") -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return format(value, spec)


def _pct(value: object) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{100.0 * value:+.1f} %"


# -- spect eval ----------------------------------------------------------------------------------


def evaluate(
    result_file: Annotated[
        Path, typer.Argument(metavar="RESULT.h5", help="Result file to evaluate.")
    ],
    truth: Annotated[
        Path,
        typer.Option(
            "--truth",
            metavar="STUDY.h5",
            help="Study file holding the truth activity (and labels, μ, counts).",
        ),
    ],
    output: Annotated[
        Path | None, output_option("Write every number as JSON.", metavar="OUT.json")
    ] = None,
    csv_file: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            metavar="OUT.csv",
            help="Write every number as CSV (section,name,metric,value).",
        ),
    ] = None,
    force: ForceOption = False,
) -> None:
    """Score a reconstruction against the truth of its study.

    A study without truth (a patient) gets the organ table (no errors) and the result's fit to
    the measured counts instead; --output and --csv write those.

    Prints the volume metrics (NRMSE over the whole volume and inside the body, PSNR, 3D SSIM,
    total activity and activity outside the body), the projection-domain fit of the result's
    expected counts (the study's forward model) and one row per organ (true and estimated
    activity in MBq, relative error, coefficient of variation), plus lesion recovery
    coefficients. --output and --csv write the same numbers to files.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from recon.evaluation.evaluate_result import evaluate_result, evaluation_csv
    from recon.evaluation.report import method_label
    from recon.io import read_result, read_study

    for path in (output, csv_file):
        if path is not None:
            check_output(path, force, outputs=("output", "csv_file"))
    if output is not None and csv_file is not None and output.resolve() == csv_file.resolve():
        raise ValueError("--output and --csv name the same file")
    with status(f"Reading {truth} and {result_file}..."):
        study = read_study(truth)
        result = read_result(result_file)
    if study.truth_activity is None:  # a patient: the organ table and the fit, no errors
        _evaluate_patient(study, result, result_file, truth, output, csv_file, force)
        return
    with status("Evaluating..."):
        report = evaluate_result(study, result, study_file=truth, result_file=result_file)
    metrics, fit = report["metrics"], report["projection_fit"]

    console = Console()
    overall = Table(
        title=escape(f"{method_label(result.method)} result {result_file} vs the truth of {truth}"),
        show_header=False,
        title_justify="left",
    )
    overall.add_column("metric", style="bold")
    overall.add_column("value", justify="right")
    overall.add_row("NRMSE (whole volume)", _fmt(metrics["nrmse"]))
    overall.add_row("NRMSE (body)", _fmt(metrics["nrmse_body"]))
    overall.add_row("PSNR", f"{_fmt(metrics['psnr_db'], '.2f')} dB")
    overall.add_row("SSIM (3D)", _fmt(metrics["ssim"]))
    total = metrics["total_activity"]
    overall.add_row(
        "total activity",
        f"{_fmt(total['estimate_mbq'])} MBq (truth {_fmt(total['truth_mbq'])} MBq, "
        f"{_pct(total['relative_error'])})",
    )
    outside = metrics.get("activity_outside")
    if outside:
        overall.add_row(
            "activity outside the body",
            f"{_fmt(outside['mbq'])} MBq ({100.0 * outside['fraction']:.1f} % of the total)",
        )
    if fit is not None:
        overall.add_row(
            "projection fit",
            f"deviance / pixel {_fmt(fit['deviance_per_pixel'])}, "
            f"PSNR {_fmt(fit['psnr'], '.2f')} dB",
        )
    console.print(overall)

    if metrics["organs"]:
        organs = Table(title="Organs", title_justify="left")
        for name in ("organ", "voxels", "truth (MBq)", "estimate (MBq)", "error", "CoV"):
            organs.add_column(name, justify="left" if name == "organ" else "right")
        recovery = metrics.get("recovery_coefficients", {})
        if recovery:
            organs.add_column("recovery", justify="right")
        for row in metrics["organs"]:
            cells = [
                str(row["name"]),
                str(row["n_voxels"]),
                _fmt(row["true_mbq"]),
                _fmt(row["estimated_mbq"]),
                _pct(row["relative_error"]),
                _fmt(row["cov"], ".3f"),
            ]
            if recovery:
                cells.append(_fmt(recovery.get(row["name"]), ".3f"))
            organs.add_row(*(escape(c) for c in cells))
        console.print(organs)

    if output is not None:
        from recon.io.atomic import write_text

        write_text(output, json.dumps(report, indent=2) + "\n", overwrite=force)
        console.print(f"wrote {output}", highlight=False, markup=False)
    if csv_file is not None:
        from recon.io.atomic import write_text

        write_text(csv_file, evaluation_csv(report), overwrite=force)
        console.print(f"wrote {csv_file}", highlight=False, markup=False)


def _evaluate_patient(
    study: Any,
    result: Result,
    result_file: Path,
    study_file: Path,
    output: Path | None,
    csv_file: Path | None,
    force: bool,
) -> None:
    """``spect eval`` of a study without truth: the organ table and the fit to the counts."""
    from cli.commands.anatomy import _print_rows
    from recon.anatomy.quantify import rows_to_csv
    from recon.evaluation.patient_report import patient_report
    from recon.io import atomic_output

    done = patient_report(study, [result], [result.method])
    _print_rows(done.rows)
    fit = done.fits[result.method]
    if fit is not None:
        typer.echo(
            f"fit to the counts: deviance / pixel {fit['deviance_per_pixel']:.3f}, "
            f"PSNR {fit['psnr']:.2f} dB"
        )
    typer.echo(f"note: {study_file} holds no truth: estimates only, no errors")
    if output is not None:
        payload = {"result_file": str(result_file), "study_file": str(study_file)}
        payload.update(done.to_dict())
        with atomic_output(output, overwrite=force) as tmp:
            tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        typer.echo(f"wrote {output}")
    if csv_file is not None:
        with atomic_output(csv_file, overwrite=force) as tmp:
            tmp.write_text(rows_to_csv(done.rows), encoding="utf-8")
        typer.echo(f"wrote {csv_file}")


# -- spect compare -------------------------------------------------------------------------------


def _method_names(results: Sequence[Result], files: Sequence[Path]) -> list[str]:
    """Display names: the method (``MLEM``, ``NeRF``...), with the file name where two share it."""
    from recon.evaluation.report import method_label

    base = [method_label(r.method) for r in results]
    names = []
    for name, path in zip(base, files, strict=True):
        names.append(name if base.count(name) == 1 else f"{name} ({path.name})")
    if len(set(names)) != len(names):  # the same file name twice, in different folders
        names = [f"{n} [{k + 1}]" for k, n in enumerate(names)]
    return names


def compare(
    study_file: Annotated[
        Path, typer.Argument(metavar="STUDY.h5", help="Study file holding the truth.")
    ],
    result_files: Annotated[
        list[Path],
        typer.Argument(metavar="RESULT.h5...", help="Result files to compare (one or more)."),
    ],
    output: Annotated[Path, output_option("Folder for the report.")],
    force: ForceOption = False,
) -> None:
    """Compare reconstructions of a study side by side, in a report folder.

    For a study without truth (a patient) the report has the organ table (no errors), each
    result's fit to the measured counts, the study's counts model and images, as
    'spect quantify --report'.

    Writes FOLDER/report.html (one self-contained page: images embedded, opens in any
    browser), the PNG figures (slices and MIPs of the truth and every result on one colour
    scale, line profiles, organ-activity errors, the projection-domain fit, convergence
    curves), summary.json and summary.md. For an AP/PA study with μ and organ labels the
    conjugate-view organ activities are added as an extra column. Prints the headline numbers.
    """
    from rich.console import Console

    from recon.evaluation.evaluate_result import check_comparable
    from recon.evaluation.report import MethodResult, write_report
    from recon.evaluation.report import compare as compare_results
    from recon.io import read_result, read_study

    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output}: exists and is not a folder")
    with status(f"Reading {study_file} and {len(result_files)} result(s)..."):
        study = read_study(study_file)
        results = [read_result(path) for path in result_files]
    if study.truth_activity is None:  # a patient: organ table and fit, no errors
        from cli.commands.anatomy import _labels, _print_rows, print_patient_report
        from recon.anatomy.quantify import quantify

        labels = _labels(results, result_files)
        _print_rows(quantify(study, results, labels))
        typer.echo(f"note: {study_file} holds no truth: estimates only, no errors")
        print_patient_report(
            study, results, labels, output, force, f"Report of {study_file.name} (no truth)"
        )
        return
    for path, result in zip(result_files, results, strict=True):
        check_comparable(study, result, path, study_file)
    names = _method_names(results, result_files)
    methods = [
        MethodResult.from_result(r, name, str(path))
        for r, name, path in zip(results, names, result_files, strict=True)
    ]
    with status("Evaluating..."):
        comparison = compare_results(study, methods, study_file=study_file)
    with status(f"Writing the report into {output}..."):
        files = write_report(
            output,
            comparison,
            title=f"Comparison of {len(methods)} reconstruction(s) of {study_file.name}",
            overwrite=force,
        )
    console = Console()
    console.print(headline_table(comparison.headline(), "Headline numbers"))
    console.print(organ_table(comparison.organ_table(), comparison.columns(), "Organ activities"))
    for note in comparison.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print(f"wrote {files.html}", highlight=False, markup=False)
