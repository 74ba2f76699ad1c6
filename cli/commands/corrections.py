"""``spect calibrate`` (a planar sensitivity), ``spect scatter`` (a study's scatter background from
its energy windows) and ``spect demo-data dicom`` (a patient's DICOM folder from the torso phantom).

The work is done by `recon.corrections` and `recon.data.dicom_export`; this module parses options
and prints (``docs/scatter-calibration.md``, ``docs/tutorial-patient.md``).
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cli.commands import (
    ForceOption,
    StudyOutput,
    add_provenance,
    check_output,
    help_text,
    output_option,
    positive,
    print_rows,
)
from cli.progress import status

__all__ = ["calibrate", "demo_app", "demo_dicom", "scatter"]


class CalibrationScatter(str, Enum):
    """Scatter subtracted from a calibration image."""

    AUTO = "auto"
    TEW = "tew"
    NONE = "none"


class ScatterMethod(str, Enum):
    """Scatter estimate of ``spect scatter``."""

    TEW = "tew"
    TEW_LOWER = "tew-lower"
    DEW = "dew"
    NONE = "none"


def calibrate(
    source: Annotated[
        Path | None,
        typer.Argument(
            metavar="[FILE_OR_FOLDER]",
            help="DICOM NM planar image (AP/PA) of the calibration source.",
        ),
    ] = None,
    output: Annotated[
        Path, output_option("Calibration file to write (JSON).", metavar="CALIBRATION.json")
    ] = ...,  # type: ignore[assignment]  # typer: ... marks it required
    activity_mbq: Annotated[
        float | None,
        typer.Option("--activity-mbq", callback=positive, help="The source's activity (MBq)."),
    ] = None,
    activity_time: Annotated[
        str | None,
        typer.Option(
            "--activity-time",
            metavar="ISO",
            help="When the activity was measured (ISO 8601); default the acquisition start.",
        ),
    ] = None,
    half_life_h: Annotated[
        float | None,
        typer.Option("--half-life-h", callback=positive, help="Half-life (h); default the file's."),
    ] = None,
    duration_s: Annotated[
        float | None,
        typer.Option("--duration-s", callback=positive, help="Acquisition time (s) per view."),
    ] = None,
    scatter_choice: Annotated[
        CalibrationScatter,
        typer.Option(
            "--scatter",
            case_sensitive=False,
            help="Subtract a TEW scatter estimate (auto: when the file has the windows).",
        ),
    ] = CalibrationScatter.AUTO,
    sensitivity: Annotated[
        float | None,
        typer.Option(
            "--sensitivity",
            metavar="CPS_PER_MBQ",
            callback=positive,
            help="A known sensitivity to record instead of measuring one.",
        ),
    ] = None,
    isotope: Annotated[
        str | None, typer.Option("--isotope", help="Isotope of a --sensitivity.")
    ] = None,
    force: ForceOption = False,
) -> None:
    """Measure the planar sensitivity (cps/MBq) from an image of a known source, or record one.

    The photopeak counts of each view (minus a TEW scatter estimate when the file has scatter
    windows), divided by the activity decayed from --activity-time over the frame and by the
    duration, give one sensitivity per view; their mean is written to CALIBRATION.json, for
    'spect convert dicom-planar --calibration'. With --sensitivity (and no image) the number is
    recorded as given.
    """
    from recon.corrections.calibration import Calibration, calibrate_planar, write_calibration

    check_output(output, force)
    if (source is None) == (sensitivity is None):
        raise ValueError("give a calibration image FILE_OR_FOLDER, or --sensitivity (not both)")
    if source is not None:
        if activity_mbq is None:
            raise ValueError("--activity-mbq is needed with a calibration image")
        with status(f"Reading {source}..."):
            calibration = calibrate_planar(
                source,
                activity_mbq=activity_mbq,
                activity_time=activity_time,
                half_life_s=None if half_life_h is None else half_life_h * 3600.0,
                duration_s=duration_s,
                scatter=scatter_choice.value,
            )
    else:
        assert sensitivity is not None
        calibration = Calibration(sensitivity, isotope=isotope, method="given")
    write_calibration(output, calibration, overwrite=force)
    rows = [("sensitivity", f"{calibration.sensitivity_cps_per_mbq:.5g} cps/MBq")]
    details = calibration.details
    if details:
        per_view = list(details.get("sensitivity_per_view_cps_per_mbq") or [])  # type: ignore[call-overload]  # a list in the JSON
        counts = list(details.get("counts") or [])  # type: ignore[call-overload]  # a list in the JSON
        rows += [
            ("isotope, window", f"{calibration.isotope}, {_window(calibration.energy_window_keV)}"),
            ("source", f"{details['activity_mbq']:g} MBq at {details['activity_time'] or 'start'}"),
            ("acquisition", f"{details['acquisition_start']}, {details['duration_s']:g} s"),
            ("decay factor", f"{details['decay_factor']:.6g}"),
            ("scatter subtracted", str(details["scatter"])),
        ]
        for view, c, s in zip(("anterior", "posterior"), counts, per_view, strict=False):
            rows.append((view, f"{c:.6g} counts, {s:.5g} cps/MBq"))
    print_rows(f"Calibration ({calibration.method})", rows, output)


def _window(window: tuple[float, float] | None) -> str:
    return "?" if window is None else f"{window[0]:g}–{window[1]:g} keV"


def scatter(
    study_file: Annotated[Path, typer.Argument(metavar="STUDY.h5", help="Study file.")],
    output: StudyOutput,
    method: Annotated[
        ScatterMethod,
        typer.Option(
            "--method",
            case_sensitive=False,
            help="tew, tew-lower (lower window only), dew (needs --dew-k) or none (remove).",
        ),
    ] = ScatterMethod.TEW,
    smoothing_mm: Annotated[
        float,
        typer.Option("--smoothing-mm", min=0.0, help="Gaussian FWHM (mm) smoothing the estimate."),
    ] = 0.0,
    dew_k: Annotated[
        float | None,
        typer.Option("--dew-k", callback=positive, help="The DEW factor k."),
    ] = None,
    lower: Annotated[
        str | None,
        typer.Option("--lower", metavar="NAME", help="Lower window; default the adjacent one."),
    ] = None,
    upper: Annotated[
        str | None,
        typer.Option("--upper", metavar="NAME", help="Upper window; default the adjacent one."),
    ] = None,
    force: ForceOption = False,
) -> None:
    """Replace a study's background by a scatter estimate from its energy windows.

    TEW: S = (C_lower/W_lower + C_upper/W_upper) · W_peak / 2 per pixel; DEW: S = k · C_lower.
    The windows are the study's (from 'spect convert dicom-planar' or 'spect simulate
    --scatter-windows'); the estimate and how it was made are written to a copy of the study.
    """
    from recon.corrections.scatter import estimate_scatter
    from recon.io import read_study, write_study
    from recon.io.summary import study_rows

    check_output(output, force)
    study = read_study(study_file)
    if method is ScatterMethod.NONE:
        study = dataclasses.replace(study, background=None, background_source=None)
    else:
        study = estimate_scatter(
            study,
            "dew" if method is ScatterMethod.DEW else "tew",
            lower=lower,
            upper=upper,
            k=dew_k,
            smoothing_fwhm_mm=smoothing_mm,
            use_upper=method is not ScatterMethod.TEW_LOWER,
        )
    study = add_provenance(study, "scatter")
    write_study(output, study, overwrite=force)
    rows = [r for r in study_rows(study) if r[0].startswith(("total counts", "of which", "window"))]
    print_rows(f"Scatter of {study_file} ({method.value})", rows, output)


demo_app = typer.Typer(
    name="demo-data",
    help="Write demonstration data: a patient's DICOM folder.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@demo_app.callback(invoke_without_command=True)
def _demo_group(ctx: typer.Context) -> None:
    """Write demonstration data: a patient's DICOM folder."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def demo_dicom(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Folder to write.")],
    size: Annotated[int, typer.Option("--size", min=8, max=256, help="Voxels per axis.")] = 64,
    duration_s: Annotated[
        float, typer.Option("--duration-s", callback=positive, help="Time per view (s).")
    ] = 900.0,
    scatter_fraction: Annotated[
        float,
        typer.Option(
            "--scatter-fraction", min=0.0, max=0.9, help="Scatter share of the photopeak window."
        ),
    ] = 0.3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the Poisson noise.")] = 0,
    force: ForceOption = False,
) -> None:
    """Write the torso phantom as a Lu-177 patient's DICOM folder: NM/planar.dcm (AP/PA with a
    photopeak and two scatter windows), CT/ (one file per slice), SEG/organs.dcm (a DICOM SEG of
    the organs) and CALIBRATION/source.dcm (a 20 MBq source in air) — the data of
    docs/tutorial-patient.md.
    """
    from recon.data.dicom_export import write_patient_folder

    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: exists and is not a folder")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise FileExistsError(f"{folder}: exists and is not empty; use --force to overwrite")
    with status(f"Writing {folder}..."):
        written = write_patient_folder(
            folder,
            size=size,
            duration_s=duration_s,
            scatter_fraction=scatter_fraction,
            seed=seed,
            overwrite=force,
        )
    n_ct = len(list(written.ct.glob("*.dcm")))
    rows = [
        ("NM", f"{written.nm} (AP/PA, 3 energy windows)"),
        ("CT", f"{written.ct}/ ({n_ct} slices)"),
        ("SEG", str(written.seg)),
        (
            "calibration",
            f"{written.calibration} ({written.calibration_mbq:g} MBq at "
            f"{written.calibration_time})",
        ),
        ("true sensitivity", f"{written.sensitivity_cps_per_mbq:g} cps/MBq"),
    ]
    total = sum(written.organ_mbq.values())
    rows.append(("true activity", f"{total:.4g} MBq in the phantom"))
    print_rows(f"Patient DICOM folder {folder}", rows)
    truth = [(name, f"{mbq:.4g} MBq") for name, mbq in written.organ_mbq.items()]
    print_rows("True activity of each structure", truth)


demo_app.command("dicom", help=help_text(demo_dicom))(demo_dicom)
