"""``spect convert``: other tools' files into study and result files, and volumes out to NIfTI.

Sub-commands: ``anatomy`` (a segmentation added to a study: NIfTI, DICOM SEG/RTSTRUCT, or a
CT/μ threshold), ``pienerf`` (a CSV manifest of ``.npy`` files, one study per row), ``interfile``
(projections + a μ or CT volume), ``patient15`` (the shared Lu-177 patient phantom),
``dicom-planar`` and ``dicom-tomo`` (NM projections + a CT series), ``to-nifti`` (a volume of a
study or result file, for 3D Slicer) and ``nifti-to-result`` (another tool's volume as a result
file). Each command calls one function of the format's module in `recon.io` (`recon.io.pienerf`,
`interfile`, `patient15`, `dicom_nm`, `nifti`, `segmentation`); this module parses options and
prints.
"""

from __future__ import annotations

import dataclasses
import warnings
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.commands import (
    CollimatorOption,
    ForceOption,
    ResultOutput,
    StudyOutput,
    add_provenance,
    check_output,
    help_text,
    output_option,
    positive,
    print_rows,
    provenance,
)
from cli.progress import status

if TYPE_CHECKING:
    from recon.io import Study

__all__ = [
    "DatasetChoice",
    "DeadTimeChoice",
    "MuUnitChoice",
    "ScatterChoice",
    "anatomy",
    "app",
    "dicom_planar",
    "dicom_tomo",
    "interfile",
    "nifti_to_result",
    "patient15",
    "pienerf",
    "to_nifti",
]

app = typer.Typer(
    name="convert",
    help="Convert other tools' files into study and result files, and volumes to NIfTI.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _group(ctx: typer.Context) -> None:
    """Convert other tools' files into study and result files, and volumes to NIfTI."""
    if ctx.invoked_subcommand is None:  # plain `spect convert`: its help, exit code 0
        typer.echo(ctx.get_help())
        raise typer.Exit()


class MuUnitChoice(str, Enum):
    """Unit of a volume that holds μ."""

    PER_MM = "1/mm"
    PER_CM = "1/cm"


class ScatterChoice(str, Enum):
    """Scatter estimate of ``spect convert dicom-planar``."""

    AUTO = "auto"
    TEW = "tew"
    TEW_LOWER = "tew-lower"
    DEW = "dew"
    NONE = "none"


class DeadTimeChoice(str, Enum):
    """Dead-time model."""

    PARALYZABLE = "paralyzable"
    NON_PARALYZABLE = "non-paralyzable"


class DatasetChoice(str, Enum):
    """Volume written by ``spect convert to-nifti``."""

    ACTIVITY = "activity"
    TRUTH = "truth"
    MU = "mu"
    CT = "ct"
    LABELS = "labels"


# -- shared options ------------------------------------------------------------------------------

IsotopeOption = Annotated[
    str | None,
    typer.Option("--isotope", metavar="NAME", help="Isotope to record, e.g. Lu-177."),
]
CtFolderOption = Annotated[
    Path | None,
    typer.Option(
        "--ct", metavar="CT_FOLDER", help="DICOM CT series (folder of slices) for μ and HU."
    ),
]
GridSizeOption = Annotated[
    int | None,
    typer.Option(
        "--grid-size",
        min=1,
        help="Voxels along y and x of the grid; default: enough to cover the detector width.",
    ),
]
SpacingOption = Annotated[
    float | None,
    typer.Option(
        "--spacing-mm",
        callback=positive,
        help="Isotropic voxel size (mm); default the detector's row height and bin width.",
    ),
]
DicomEnergyOption = Annotated[
    float | None,
    typer.Option(
        "--energy-kev",
        callback=positive,
        help="Photon energy (keV); default the isotope's photopeak in the window, or its centre.",
    ),
]
DurationOption = Annotated[
    float | None,
    typer.Option("--duration-s", callback=positive, help="Acquisition time per view (s)."),
]
SensitivityOption = Annotated[
    float | None,
    typer.Option(
        "--sensitivity",
        metavar="CPS_PER_MBQ",
        callback=positive,
        help="Planar sensitivity (cps/MBq); with the duration it sets the count scale.",
    ),
]
AxisOption = Annotated[
    tuple[float, float, float] | None,
    typer.Option(
        "--axis-position-mm",
        metavar="Z Y X",
        help=(
            "LPS position (mm) in the CT of the rotation axis at the detector's centre row; "
            "default the CT's centre."
        ),
    ),
]


ScatterOption = Annotated[
    ScatterChoice,
    typer.Option(
        "--scatter",
        case_sensitive=False,
        help=(
            "Scatter background from the energy windows: auto (TEW when the file has windows "
            "on both sides of the photopeak), tew, tew-lower (lower window only), dew (needs "
            "--dew-k) or none."
        ),
    ),
]
ScatterSmoothingOption = Annotated[
    float,
    typer.Option(
        "--scatter-smoothing-mm", min=0.0, help="Gaussian FWHM (mm) smoothing the scatter."
    ),
]
DewKOption = Annotated[
    float | None,
    typer.Option("--dew-k", callback=positive, help="The DEW factor k (S = k · lower window)."),
]
CalibrationOption = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        metavar="CALIBRATION.json",
        help="Sensitivity from 'spect calibrate' (instead of --sensitivity).",
    ),
]
ReferenceTimeOption = Annotated[
    str,
    typer.Option(
        "--reference-time",
        metavar="acquisition|injection|none|ISO",
        help=(
            "Decay-correct the activities to this time: the acquisition start (default; "
            "corrects the decay during the frame), the injection, none, or an ISO 8601 "
            "date-time."
        ),
    ),
]
HalfLifeOption = Annotated[
    float | None,
    typer.Option(
        "--half-life-h",
        callback=positive,
        help="Half-life (h); default the file's, else the nuclide table's.",
    ),
]
DeadTimeOption = Annotated[
    float | None,
    typer.Option(
        "--dead-time-us",
        callback=positive,
        help="Dead time τ of the camera (µs): turns on the dead-time correction.",
    ),
]
DeadTimeModelOption = Annotated[
    DeadTimeChoice,
    typer.Option("--dead-time-model", case_sensitive=False, help="Dead-time model."),
]
CountRateOption = Annotated[
    float | None,
    typer.Option(
        "--count-rate-cps",
        callback=positive,
        help="Observed count rate (cps) for the dead time; default all windows' counts / time.",
    ),
]


def _sensitivity(sensitivity: float | None, calibration: Path | None) -> float | None:
    """The sensitivity of --sensitivity or of a --calibration file (not both)."""
    if calibration is None:
        return sensitivity
    if sensitivity is not None:
        raise ValueError("give --sensitivity or --calibration, not both")
    from recon.corrections.calibration import read_calibration

    return read_calibration(calibration).sensitivity_cps_per_mbq


def _print_study(
    study: Study, title: str, output: Path, warnings_: list[str] | tuple[str, ...] = ()
) -> None:
    """The summary rows of a converted study (`recon.io.summary.study_rows`), its warnings
    (``warnings_``: the importer's, then the checks below), then ``wrote OUTPUT``."""
    from recon.io.summary import study_rows

    print_rows(title, study_rows(study))
    for text in warnings_:
        typer.echo(f"warning: {text}")
    if study.mu_per_mm is not None and float(study.mu_per_mm.max()) > 0.1:
        typer.echo("warning: μ above 0.1 /mm (bone is about 0.03 /mm): is the μ volume in 1/cm?")
    if study.mu_per_mm is not None and not float(study.mu_per_mm.max()) > 0:
        typer.echo(
            "warning: μ is 0 everywhere: the grid may not overlap the CT (--axis-position-mm)"
        )
    typer.echo(f"wrote {output}")


def _write(study: Study, output: Path, force: bool) -> None:
    from recon.io import write_study

    with status(f"Writing {output}..."):
        write_study(output, study, overwrite=force)


# -- spect convert pienerf -----------------------------------------------------------------------


def pienerf(
    manifest: Annotated[
        Path,
        typer.Argument(
            metavar="MANIFEST.csv",
            help="CSV with patient_id, ap_path, pa_path, ct_path[, act_path].",
        ),
    ],
    output: Annotated[Path, output_option("Folder for OUTDIR/<patient_id>.h5.", metavar="OUTDIR")],
    spacing_mm: Annotated[
        tuple[float, float, float],
        typer.Option(
            "--spacing-mm",
            metavar="DZ DY DX",
            help="CT voxel size (mm) along z (head–feet), y (front–back), x (right–left).",
        ),
    ],
    energy_kev: Annotated[
        float,
        typer.Option("--energy-kev", callback=positive, help="Photon energy of the images (keV)."),
    ],
    ct_orientation: Annotated[
        str,
        typer.Option(
            "--ct-orientation",
            help="Patient direction of increasing index of each CT array axis, in array order.",
        ),
    ] = "PIL",
    pa_mirrored: Annotated[
        bool,
        typer.Option(
            "--pa-mirrored/--no-pa-mirrored",
            help="pa.npy is stored mirrored, in ap.npy's left–right orientation.",
        ),
    ] = True,
    ct_is_mu: Annotated[
        bool, typer.Option("--ct-is-mu", help="ct.npy holds μ (see --ct-mu-unit), not HU.")
    ] = False,
    ct_mu_unit: Annotated[
        MuUnitChoice, typer.Option("--ct-mu-unit", help="Unit of μ with --ct-is-mu.")
    ] = MuUnitChoice.PER_MM,
    isotope: IsotopeOption = None,
    force: ForceOption = False,
) -> None:
    """Convert a pieNeRF manifest: one AP/PA study file per row, OUTDIR/<patient_id>.h5.

    Each row's ap.npy and pa.npy (counts), ct.npy (HU, or μ with --ct-is-mu) and optional act.npy
    (truth) become a study in our axes (docs/importers.md explains --ct-orientation and
    --pa-mirrored). A row that fails is reported on one line and the others still convert; the
    exit code is 1 if any row failed. OUTDIR is created if needed.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from recon.io.pienerf import convert_pienerf_manifest

    record = provenance(
        "convert pienerf",
        spacing_mm_zyx=list(spacing_mm),
        ct_orientation=ct_orientation.strip().upper(),
    )
    with status(f"Converting {manifest}...") as spinner:
        outcomes = convert_pienerf_manifest(
            manifest, output, spacing_mm=spacing_mm, energy_keV=energy_kev,
            ct_orientation=ct_orientation, pa_mirrored=pa_mirrored, ct_is_mu=ct_is_mu,
            ct_mu_unit=ct_mu_unit.value,
            isotope=isotope, overwrite=force, provenance=record, progress=spinner,
        )  # fmt: skip
    table = Table(title=escape(f"pieNeRF manifest {manifest}"), title_justify="left")
    for column in ("patient", "status", "grid (z×y×x)", "total counts", "file"):
        table.add_column(column, overflow="fold")
    for row in outcomes:
        if row.error is not None:
            typer.echo(f"Error: {row.label}: {row.error}", err=True)
            table.add_row(escape(row.label), "failed", "–", "–", "–")
        else:
            grid = "×".join(str(n) for n in row.grid_shape or ())
            table.add_row(
                escape(row.label), "ok", grid, f"{row.total_counts:.6g}", escape(str(row.output))
            )
    console = Console()
    console.print(table)
    failed = sum(not row.ok for row in outcomes)
    console.print(
        f"converted {len(outcomes) - failed} of {len(outcomes)} row(s) into {output}",
        highlight=False,
        markup=False,
    )
    if failed:
        raise typer.Exit(code=1)


# -- spect convert interfile ---------------------------------------------------------------------


def interfile(
    projections: Annotated[
        Path, typer.Argument(metavar="PROJECTIONS.h33", help="Interfile projections header.")
    ],
    output: StudyOutput,
    energy_kev: Annotated[
        float,
        typer.Option("--energy-kev", callback=positive, help="Photon energy (keV); μ is at it."),
    ],
    mu: Annotated[
        Path | None,
        typer.Option("--mu", metavar="MU.h33", help="μ volume (Interfile) on the image grid."),
    ] = None,
    ct: Annotated[
        Path | None,
        typer.Option("--ct", metavar="CT.h33", help="CT volume (Interfile) in HU (+ --ct-offset)."),
    ] = None,
    ct_offset: Annotated[
        float,
        typer.Option("--ct-offset", help="Offset of the CT's values: HU = value − offset."),
    ] = 0.0,
    mu_unit: Annotated[
        MuUnitChoice, typer.Option("--mu-unit", help="Unit of the --mu volume.")
    ] = MuUnitChoice.PER_MM,
    orientation: Annotated[
        str,
        typer.Option(
            "--orientation",
            help="Patient direction of the volume's column, row and slice indices (LAI: GATE).",
        ),
    ] = "LAI",
    isotope: IsotopeOption = None,
    radius_mm: Annotated[
        float | None,
        typer.Option(
            "--radius-mm",
            callback=positive,
            help="Rotation radius (mm); default the projections' Radius.",
        ),
    ] = None,
    allow_outside_data: Annotated[
        bool,
        typer.Option(
            "--allow-outside-data",
            help="Let a header name a data file outside its own folder (refused by default).",
        ),
    ] = False,
    force: ForceOption = False,
) -> None:
    """Convert Interfile projections and an attenuation volume (GATE, SIMIND, STIR) to a study.

    The acquisition (views, angles, pixel size, radius) comes from the projections; the image
    grid, centred on the rotation axis, from the --mu or --ct volume (CT: μ = hu_to_mu_per_mm at
    --energy-kev, and the CT is kept). Without a volume the grid covers the detector and the study
    has no μ. A header's data file must sit in or under the header's folder unless
    --allow-outside-data is given.
    """
    from recon.io.interfile import interfile_study

    check_output(output, force)
    if mu is not None and ct is not None:
        raise ValueError("give either --mu or --ct, not both")
    with status(f"Reading {projections}..."):
        study = interfile_study(
            projections,
            energy_keV=energy_kev,
            mu_header=mu,
            ct_header=ct,
            ct_offset_hu=ct_offset,
            mu_unit=mu_unit.value,
            orientation=orientation,
            isotope=isotope,
            radius_mm=radius_mm,
            allow_outside_data=allow_outside_data,
        )
    study = add_provenance(
        study,
        "convert interfile",
        orientation=orientation.strip().upper(),
        isotope=study.acquisition.isotope,
    )
    _write(study, output, force)
    _print_study(study, f"Interfile {projections}", output)


# -- spect convert patient15 ---------------------------------------------------------------------


def patient15(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="FOLDER",
            help="Folder of patient15_LuDOTATATE_{attn,src}.h33 (or the shared data folder).",
        ),
    ],
    output: StudyOutput,
    energy_kev: Annotated[
        float, typer.Option("--energy-kev", callback=positive, help="Photon energy of μ (keV).")
    ] = 208.0,
    duration_s: DurationOption = None,
    sensitivity: SensitivityOption = None,
    force: ForceOption = False,
) -> None:
    """Make the shared Lu-177 DOTATATE patient phantom into a noise-free AP/PA study with truth.

    Reads the two Interfile volumes (CT as HU + 1000, organ labels), fills illustrative
    concentrations (Bq/mL), computes μ, and projects AP and PA with attenuation, no collimator
    blur (recon.io.patient15.patient15_study). With --duration-s and --sensitivity the projections
    are expected counts; otherwise the count scale is 1. For demos and benchmarks.
    """
    from recon.io.patient15 import patient15_study

    check_output(output, force)
    if (duration_s is None) != (sensitivity is None):
        raise ValueError("give both --duration-s and --sensitivity (or neither)")
    with status("Building and projecting the patient-15 phantom..."):
        study = patient15_study(
            folder,
            energy_keV=energy_kev,
            sensitivity_cps_per_mbq=sensitivity,
            duration_s=duration_s,
        )
    study = add_provenance(study, "convert patient15")
    _write(study, output, force)
    _print_study(study, "Patient-15 Lu-177 DOTATATE phantom, noise-free AP/PA", output)


# -- spect convert dicom-planar / dicom-tomo -----------------------------------------------------


def dicom_planar(
    sources: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE_OR_FOLDER",
            help="NM planar file(s): one two-detector file, two files, or a folder.",
        ),
    ],
    output: StudyOutput,
    ct: CtFolderOption = None,
    grid_size: GridSizeOption = None,
    spacing_mm: SpacingOption = None,
    energy_kev: DicomEnergyOption = None,
    duration_s: DurationOption = None,
    sensitivity: SensitivityOption = None,
    calibration: CalibrationOption = None,
    axis_position_mm: AxisOption = None,
    collimator: CollimatorOption = None,
    scatter: ScatterOption = ScatterChoice.AUTO,
    scatter_smoothing_mm: ScatterSmoothingOption = 0.0,
    dew_k: DewKOption = None,
    reference_time: ReferenceTimeOption = "acquisition",
    half_life_h: HalfLifeOption = None,
    dead_time_us: DeadTimeOption = None,
    dead_time_model: DeadTimeModelOption = DeadTimeChoice.PARALYZABLE,
    count_rate_cps: CountRateOption = None,
    force: ForceOption = False,
) -> None:
    """Convert DICOM NM planar anterior/posterior images (+ a CT) to an AP/PA study.

    Every energy window of the file is read: the photopeak window (the one holding the
    isotope's main photopeak) gives the projections, the others are kept in the study, and a
    triple- (or dual-) energy-window scatter estimate from them becomes the background
    (--scatter). The activities are decay-corrected to --reference-time with the file's
    half-life (or the nuclide table's), and optionally corrected for dead time (--dead-time-us).
    See docs/scatter-calibration.md.

    The image grid is centred on the rotation axis and the detector's centre row; it covers the
    detector height (z) and, across y and x, the detector width (or --grid-size voxels), with
    voxels of the detector's row height and bin width (or --spacing-mm). With --ct, μ at the photon
    energy and the CT in HU are averaged onto that grid, the CT centred in it unless
    --axis-position-mm says where. Duration: the files' static frame time unless --duration-s.
    The collimator: the files' CollimatorGridName matched to the collimator table (a name it
    does not know is a warning, and no blur is modelled), unless --collimator NAME|FILE.toml.
    """
    from recon.io.dicom_nm import dicom_planar_study

    check_output(output, force)
    with (
        status("Reading the NM images" + (" and the CT..." if ct else "...")),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        study = dicom_planar_study(
            sources,
            ct=ct,
            grid_size=grid_size,
            spacing_mm=spacing_mm,
            energy_keV=energy_kev,
            duration_s=duration_s,
            sensitivity_cps_per_mbq=_sensitivity(sensitivity, calibration),
            axis_position_mm=axis_position_mm,
            collimator=collimator,
            scatter=scatter.value,
            scatter_smoothing_mm=scatter_smoothing_mm,
            dew_k=dew_k,
            reference_time=reference_time,
            half_life_s=None if half_life_h is None else half_life_h * 3600.0,
            dead_time_s=None if dead_time_us is None else dead_time_us * 1e-6,
            dead_time_model=dead_time_model.value,
            count_rate_cps=count_rate_cps,
        )
    study = add_provenance(study, "convert dicom-planar")
    _write(study, output, force)
    title = "DICOM NM planar " + ", ".join(str(s) for s in sources)
    _print_study(study, title, output, [str(w.message) for w in caught])


def dicom_tomo(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="NM TOMO file (projections).")],
    output: StudyOutput,
    ct: CtFolderOption = None,
    grid_size: GridSizeOption = None,
    spacing_mm: SpacingOption = None,
    energy_kev: DicomEnergyOption = None,
    duration_s: DurationOption = None,
    sensitivity: SensitivityOption = None,
    calibration: CalibrationOption = None,
    axis_position_mm: AxisOption = None,
    collimator: CollimatorOption = None,
    force: ForceOption = False,
) -> None:
    """Convert DICOM NM tomographic projections (+ a CT) to a study.

    Views, angles (β from the DICOM angles, sorted), radius, energy, frame time and collimator
    come from the file (docs/dicom.md). The grid, the CT and the collimator are handled as by
    'spect convert dicom-planar'.
    """
    from recon.io.dicom_nm import dicom_tomo_study

    check_output(output, force)
    with (
        status("Reading the NM projections" + (" and the CT..." if ct else "...")),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        study = dicom_tomo_study(
            file,
            ct=ct,
            grid_size=grid_size,
            spacing_mm=spacing_mm,
            energy_keV=energy_kev,
            duration_s=duration_s,
            sensitivity_cps_per_mbq=_sensitivity(sensitivity, calibration),
            axis_position_mm=axis_position_mm,
            collimator=collimator,
        )
    study = add_provenance(study, "convert dicom-tomo")
    _write(study, output, force)
    _print_study(study, f"DICOM NM tomographic {file}", output, [str(w.message) for w in caught])


# -- spect convert to-nifti / nifti-to-result ----------------------------------------------------


def to_nifti(
    file: Annotated[Path, typer.Argument(metavar="FILE.h5", help="Study or result file.")],
    output: Annotated[Path, output_option("NIfTI file to write (.nii or .nii.gz).")],
    dataset: Annotated[
        DatasetChoice,
        typer.Option(
            "--dataset",
            case_sensitive=False,
            help=(
                "activity: a result's activity, a study's truth; truth, mu, ct, labels: "
                "a study's volumes."
            ),
        ),
    ] = DatasetChoice.ACTIVITY,
    force: ForceOption = False,
) -> None:
    """Write a volume of a study or result file as NIfTI, e.g. for 3D Slicer.

    The affine places the volume in RAS+ world coordinates (docs/importers.md), so viewers show
    the patient the right way round. Default: a result's activity, a study's truth activity.
    """
    from recon.io.nifti import volume_to_nifti
    from recon.io.summary import grid_text, range_text

    check_output(output, force)
    with status(f"Writing {output}..."):
        volume, grid, what = volume_to_nifti(file, output, dataset.value, overwrite=force)
    print_rows(
        f"NIfTI of {file}",
        [("volume", what), ("grid", grid_text(grid)), ("values", range_text(volume, ""))],
        output,
    )


def nifti_to_result(
    volume: Annotated[
        Path, typer.Argument(metavar="VOLUME.nii[.gz]", help="NIfTI volume (activity).")
    ],
    output: ResultOutput,
    method: Annotated[
        str, typer.Option("--method", metavar="NAME", help="Method name to record.")
    ] = "external",
    unit: Annotated[
        str | None,
        typer.Option("--unit", help="Unit of the values; default the --study's, else Bq/mL."),
    ] = None,
    study: Annotated[
        Path | None,
        typer.Option(
            "--study",
            metavar="STUDY.h5",
            help="Study whose grid the volume is on: checked (0.01 mm), recorded, used exactly.",
        ),
    ] = None,
    clip_negative: Annotated[
        bool,
        typer.Option("--clip-negative", help="Set negative values to 0 instead of refusing them."),
    ] = False,
    force: ForceOption = False,
) -> None:
    """Wrap a volume from another tool as a result file, for spect eval and spect compare.

    The grid comes from the NIfTI affine (any axis-aligned orientation is turned into ours); its
    float32 rounding is undone (spacings to their shortest decimals, offsets to 0.001 mm). With
    --study the grid must be the study's and the study's exact grid and unit are used.
    """
    from recon.io import write_result
    from recon.io.nifti import nifti_result
    from recon.io.summary import result_rows

    check_output(output, force)
    if not method.strip():
        raise ValueError("--method must not be empty")
    result = nifti_result(
        volume,
        method=method.strip(),
        activity_unit=unit,
        study_file=study,
        clip_negative=clip_negative,
    )
    with status(f"Writing {output}..."):
        write_result(output, result, overwrite=force)
    rows = [r for r in result_rows(result) if r[0] in ("method", "grid", "values")]
    clipped = result.parameters.get("negative_values_clipped")
    if clipped:
        rows.append(("clipped", f"{clipped} negative value(s) set to 0"))
    if study is not None:
        rows.append(("study", f"{study} (its grid and unit)"))
    print_rows(f"Result from {volume}", rows, output)


# -- spect convert anatomy -----------------------------------------------------------------------


def anatomy(
    study_file: Annotated[Path, typer.Argument(metavar="STUDY.h5", help="Study file.")],
    segmentation: Annotated[
        Path | None,
        typer.Argument(
            metavar="[SEG]",
            help=(
                "NIfTI label map, folder of NIfTI masks (one per structure), or DICOM SEG / "
                "RTSTRUCT file; leave out with --threshold."
            ),
        ),
    ] = None,
    output: StudyOutput = ...,  # type: ignore[assignment]  # typer: ... marks it required
    names: Annotated[
        Path | None,
        typer.Option(
            "--names",
            metavar="FILE",
            help=(
                "Label names of a NIfTI label map (JSON, TOML or 'value: name' lines); "
                "default TotalSegmentator's 'total' classes."
            ),
        ),
    ] = None,
    ct_dir: Annotated[
        Path | None,
        typer.Option(
            "--ct-dir", metavar="CT_FOLDER", help="CT series an RTSTRUCT (or DICOM SEG) refers to."
        ),
    ] = None,
    threshold: Annotated[
        bool,
        typer.Option("--threshold", help="Segment the study's CT (or μ): body, lungs, bone, gas."),
    ] = False,
    keep_names: Annotated[
        bool,
        typer.Option(
            "--keep-names",
            help="Keep TotalSegmentator's names (no renaming to liver, lungs, spine, bladder ...).",
        ),
    ] = False,
    force: ForceOption = False,
) -> None:
    """Add a segmentation to a study as its anatomy, writing a copy of the study.

    The segmentation is resampled onto the study's grid (nearest neighbour, through the file's
    orientation) and stored under /anatomy, apart from the phantom truth. The body outline comes
    from a body class of the segmentation, else from the study's CT or μ. Repairs (empty
    segments, voxels outside the body, overlaps, partial coverage) are reported as warnings.
    See docs/importers.md, "Segmentations".
    """

    from recon.io import read_study
    from recon.io.segmentation import import_anatomy

    check_output(output, force)
    if segmentation is None and not threshold:
        raise ValueError("give a segmentation SEG, or --threshold to segment the study's CT/μ")
    if names is not None and (
        segmentation is None or not segmentation.name.endswith((".nii", ".nii.gz"))
    ):
        raise ValueError("--names applies to a NIfTI label map (SEG ending .nii or .nii.gz)")
    study = read_study(study_file)
    with (
        status(f"Reading {segmentation or 'thresholds'}..."),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        result = import_anatomy(
            study,
            segmentation,
            names=names,
            ct_dir=ct_dir,
            threshold=threshold,
            rename=not keep_names,
        )
    study = add_provenance(dataclasses.replace(study, anatomy=result), "convert anatomy")
    _write(study, output, force)
    _print_anatomy(result, study, [str(w.message) for w in caught], output)


def _print_anatomy(result: Any, study: Study, warnings_: list[str], output: Path) -> None:
    """Segments with voxels and mL, the body outline, the warnings, then ``wrote OUTPUT``."""
    import math

    import numpy as np

    from recon.io.summary import grid_text

    voxel_ml = math.prod(study.grid.spacing_mm) * 1e-3
    rows = [("source", result.source), ("grid", grid_text(study.grid))]
    counts = np.bincount(result.labels.reshape(-1), minlength=max(result.names, default=0) + 1)
    for value, name in sorted(result.names.items()):
        n = int(counts[value])
        rows.append((f"{value} {name}", f"{n} voxels, {n * voxel_ml:.4g} mL"))
    if result.body is None:
        rows.append(("body outline", "unknown (no body class, CT or μ)"))
    else:
        n = int(np.count_nonzero(result.body))
        rows.append(("body outline", f"{n} voxels, {n * voxel_ml:.4g} mL"))
    for message in warnings_:  # one line each, unwrapped, on stderr
        typer.echo(f"warning: {' '.join(message.split())}", err=True)
    print_rows(f"Anatomy of {output}", rows, output)


for _name, _function in (
    ("anatomy", anatomy),
    ("pienerf", pienerf),
    ("interfile", interfile),
    ("patient15", patient15),
    ("dicom-planar", dicom_planar),
    ("dicom-tomo", dicom_tomo),
    ("to-nifti", to_nifti),
    ("nifti-to-result", nifti_to_result),
):
    app.command(_name, help=help_text(_function))(_function)
