"""``spect convert``: other tools' files into study and result files, and volumes out to NIfTI.

Sub-commands: ``pienerf`` (a CSV manifest of ``.npy`` files, one study per row), ``interfile``
(projections + a μ or CT volume), ``patient15`` (the shared Lu-177 patient phantom),
``dicom-planar`` and ``dicom-tomo`` (NM projections + a CT series), ``to-nifti`` (a volume of a
study or result file, for 3D Slicer) and ``nifti-to-result`` (another tool's volume as a result
file). The work is done by `recon.importers` and assembled by `recon.convert`; this module parses
options and prints.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.commands import FORCE_HELP, check_output, help_text, json_text, positive
from cli.progress import status

if TYPE_CHECKING:
    from recon.io import Study

__all__ = [
    "DatasetChoice",
    "MuUnitChoice",
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


class DatasetChoice(str, Enum):
    """Volume written by ``spect convert to-nifti``."""

    ACTIVITY = "activity"
    TRUTH = "truth"
    MU = "mu"
    CT = "ct"
    LABELS = "labels"


#: Errors of one pieNeRF row that are reported while the other rows go on.
_ROW_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, EOFError)

# -- shared options ------------------------------------------------------------------------------

StudyOutput = Annotated[Path, typer.Option("-o", "--output", help="Study file to write (.h5).")]
ForceOption = Annotated[bool, typer.Option("--force", help=FORCE_HELP)]
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


def _add_provenance(study: Study, command: str, parameters: dict[str, Any]) -> Study:
    provenance = dict(study.provenance)
    provenance["cli_command"] = f"spect convert {command}"
    provenance["cli_parameters"] = json_text(parameters)
    return dataclasses.replace(study, provenance=provenance)


def _range(values: Any, unit: str) -> str:
    import numpy as np

    a = np.asarray(values)
    return f"{float(a.min()):.4g} – {float(a.max()):.4g} {unit}".rstrip()


def _grid_text(grid: Any) -> str:
    shape = "×".join(str(n) for n in grid.shape)
    spacing = "×".join(f"{d:g}" for d in grid.spacing_mm)
    text = f"{shape} voxels (z, y, x) of {spacing} mm"
    if any(grid.offset_mm):
        text += f", offset ({', '.join(f'{o:g}' for o in grid.offset_mm)}) mm"
    return text


def _views_text(angles: tuple[float, ...]) -> str:
    n = len(angles)
    if n <= 4:
        return f"{n}: " + ", ".join(f"{a:g}°" for a in angles)
    return f"{n}: {angles[0]:g}°–{angles[-1]:g}°"


def _print_study(study: Study, title: str, output: Path) -> None:
    """A summary table of a converted study, then ``wrote OUTPUT``."""
    import numpy as np
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    acq = study.acquisition
    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value", overflow="fold")
    rows, bins = acq.detector_shape
    table.add_row("views (β)", _views_text(acq.angles_deg))
    table.add_row(
        "detector",
        f"{rows}×{bins} pixels of {acq.pixel_size_mm[0]:g}×{acq.pixel_size_mm[1]:g} mm",
    )
    table.add_row("grid", _grid_text(study.grid))
    energy = f"{acq.energy_keV:g} keV"
    if acq.energy_window_keV is not None:
        energy += f", window {acq.energy_window_keV[0]:g}–{acq.energy_window_keV[1]:g} keV"
    table.add_row("isotope, energy", f"{acq.isotope or '?'}, {energy}")
    if acq.radius_mm is not None:
        table.add_row("radius", f"{acq.radius_mm:g} mm")
    if acq.duration_s is not None:
        table.add_row("duration per view", f"{acq.duration_s:.6g} s")
    if acq.sensitivity_cps_per_mbq is not None:
        table.add_row("sensitivity", f"{acq.sensitivity_cps_per_mbq:.6g} cps/MBq")
    table.add_row("count scale", f"{acq.count_scale:.6g}")
    table.add_row("total counts", f"{float(study.projections.sum(dtype=np.float64)):.6g}")
    table.add_row("μ", _range(study.mu_per_mm, "1/mm") if study.mu_per_mm is not None else "none")
    if study.ct_hu is not None:
        table.add_row("CT", _range(study.ct_hu, "HU"))
    if study.truth_activity is not None:
        table.add_row("truth activity", _range(study.truth_activity, study.activity_unit))
    if study.labels is not None:
        table.add_row("labels", ", ".join(f"{k} {v}" for k, v in study.label_names.items()))
    console = Console()
    console.print(table)
    if study.mu_per_mm is not None and float(study.mu_per_mm.max()) > 0.1:
        console.print(
            "warning: μ above 0.1 /mm (bone is about 0.03 /mm): is the μ volume in 1/cm?",
            highlight=False,
            markup=False,
        )
    if study.mu_per_mm is not None and not float(study.mu_per_mm.max()) > 0:
        console.print(
            "warning: μ is 0 everywhere: the grid may not overlap the CT (--axis-position-mm)",
            highlight=False,
            markup=False,
        )
    console.print(f"wrote {output}", highlight=False, markup=False)


def _print_facts(title: str, rows: list[tuple[str, str]], output: Path) -> None:
    """A two-column table of ``rows``, then ``wrote OUTPUT``."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(name, Text(value))
    console = Console()
    console.print(table)
    console.print(f"wrote {output}", highlight=False, markup=False)


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
    output: Annotated[
        Path,
        typer.Option("-o", "--output", metavar="OUTDIR", help="Folder for OUTDIR/<patient_id>.h5."),
    ],
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
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite existing study files in OUTDIR.")
    ] = False,
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

    from recon.convert import (
        canonical_isotope,
        pienerf_study_file_name,
        read_pienerf_entries,
        spacing_to_array_order,
    )
    from recon.importers import pienerf_row_to_study

    array_spacing = spacing_to_array_order(spacing_mm, ct_orientation)  # checks the orientation
    entries = read_pienerf_entries(manifest)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"{output}: is a file, not a folder")
    output.mkdir(parents=True, exist_ok=True)
    parameters = {
        "manifest": manifest,
        "spacing_mm_zyx": list(spacing_mm),
        "energy_keV": energy_kev,
        "ct_orientation": ct_orientation.strip().upper(),
        "pa_mirrored": pa_mirrored,
        "ct_is_mu": ct_is_mu,
        "ct_mu_unit": ct_mu_unit.value,
        "isotope": canonical_isotope(isotope),
    }
    table = Table(title=escape(f"pieNeRF manifest {manifest}"), title_justify="left")
    for column in ("patient", "status", "grid (z×y×x)", "total counts", "file"):
        table.add_column(column, overflow="fold")
    failed = 0
    for entry in entries:
        try:
            if entry.error is not None:
                raise ValueError(entry.error)
            assert entry.row is not None
            target = output / pienerf_study_file_name(entry.patient_id)
            check_output(target, force)
            with status(f"Converting {entry.label}..."):
                study = pienerf_row_to_study(
                    entry.row,
                    spacing_mm=array_spacing,
                    energy_keV=energy_kev,
                    ct_orientation=ct_orientation,
                    pa_mirrored=pa_mirrored,
                    ct_is_mu=ct_is_mu,
                    ct_mu_unit=ct_mu_unit.value,  # type: ignore[arg-type]
                    isotope=canonical_isotope(isotope),
                )
            study = _add_provenance(study, "pienerf", parameters)
            _write(study, target, force)
        except _ROW_ERRORS as error:
            failed += 1
            message = " ".join(str(error).split()) or type(error).__name__
            typer.echo(f"Error: {entry.label}: {message}", err=True)
            table.add_row(escape(entry.label), "failed", "–", "–", "–")
            continue
        total = float(study.projections.sum(dtype="float64"))
        grid = "×".join(str(n) for n in study.grid.shape)
        table.add_row(escape(entry.label), "ok", grid, f"{total:.6g}", escape(str(target)))
    console = Console()
    console.print(table)
    done = len(entries) - failed
    console.print(
        f"converted {done} of {len(entries)} row(s) into {output}", highlight=False, markup=False
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
    force: ForceOption = False,
) -> None:
    """Convert Interfile projections and an attenuation volume (GATE, SIMIND, STIR) to a study.

    The acquisition (views, angles, pixel size, radius) comes from the projections; the image
    grid, centred on the rotation axis, from the --mu or --ct volume (CT: μ = hu_to_mu_per_mm at
    --energy-kev, and the CT is kept). Without a volume the grid covers the detector and the study
    has no μ.
    """
    from recon.convert import interfile_study

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
            mu_unit=mu_unit.value,  # type: ignore[arg-type]
            orientation=orientation,
            isotope=isotope,
            radius_mm=radius_mm,
        )
    parameters = {
        "projections": projections,
        "energy_keV": energy_kev,
        "mu": mu,
        "ct": ct,
        "ct_offset": ct_offset,
        "mu_unit": mu_unit.value,
        "orientation": orientation.strip().upper(),
        "isotope": study.acquisition.isotope,
        "radius_mm": radius_mm,
    }
    study = _add_provenance(study, "interfile", parameters)
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
    blur (recon.importers.patient15_study). With --duration-s and --sensitivity the projections
    are expected counts; otherwise the count scale is 1. For demos and benchmarks.
    """
    from recon.convert import find_patient15_folder
    from recon.importers import patient15_study

    check_output(output, force)
    if (duration_s is None) != (sensitivity is None):
        raise ValueError("give both --duration-s and --sensitivity (or neither)")
    source = find_patient15_folder(folder)
    with status("Building and projecting the patient-15 phantom..."):
        study = patient15_study(
            source,
            energy_keV=energy_kev,
            sensitivity_cps_per_mbq=sensitivity,
            duration_s=duration_s,
        )
    parameters = {
        "folder": source,
        "energy_keV": energy_kev,
        "duration_s": duration_s,
        "sensitivity_cps_per_mbq": sensitivity,
    }
    study = _add_provenance(study, "patient15", parameters)
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
    axis_position_mm: AxisOption = None,
    force: ForceOption = False,
) -> None:
    """Convert DICOM NM planar anterior/posterior images (+ a CT) to an AP/PA study.

    The image grid is centred on the rotation axis and the detector's centre row; it covers the
    detector height (z) and, across y and x, the detector width (or --grid-size voxels), with
    voxels of the detector's row height and bin width (or --spacing-mm). With --ct, μ at the photon
    energy and the CT in HU are averaged onto that grid, the CT centred in it unless
    --axis-position-mm says where. Duration: the files' static frame time unless --duration-s.
    """
    from recon.convert import dicom_planar_study

    check_output(output, force)
    with status("Reading the NM images" + (" and the CT..." if ct else "...")):
        study = dicom_planar_study(
            sources,
            ct=ct,
            grid_size=grid_size,
            spacing_mm=spacing_mm,
            energy_keV=energy_kev,
            duration_s=duration_s,
            sensitivity_cps_per_mbq=sensitivity,
            axis_position_mm=axis_position_mm,
        )
    parameters = {
        "sources": [str(s) for s in sources],
        "ct": ct,
        "grid_size": grid_size,
        "spacing_mm": spacing_mm,
        "energy_keV": energy_kev,
        "duration_s": duration_s,
        "sensitivity_cps_per_mbq": sensitivity,
        "axis_position_mm": None if axis_position_mm is None else list(axis_position_mm),
    }
    study = _add_provenance(study, "dicom-planar", parameters)
    _write(study, output, force)
    _print_study(study, "DICOM NM planar " + ", ".join(str(s) for s in sources), output)


def dicom_tomo(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="NM TOMO file (projections).")],
    output: StudyOutput,
    ct: CtFolderOption = None,
    grid_size: GridSizeOption = None,
    spacing_mm: SpacingOption = None,
    energy_kev: DicomEnergyOption = None,
    duration_s: DurationOption = None,
    sensitivity: SensitivityOption = None,
    axis_position_mm: AxisOption = None,
    force: ForceOption = False,
) -> None:
    """Convert DICOM NM tomographic projections (+ a CT) to a study.

    Views, angles (β from the DICOM angles, sorted), radius, energy and frame time come from the
    file (docs/dicom.md). The grid and the CT are handled as by 'spect convert dicom-planar'.
    """
    from recon.convert import dicom_tomo_study

    check_output(output, force)
    with status("Reading the NM projections" + (" and the CT..." if ct else "...")):
        study = dicom_tomo_study(
            file,
            ct=ct,
            grid_size=grid_size,
            spacing_mm=spacing_mm,
            energy_keV=energy_kev,
            duration_s=duration_s,
            sensitivity_cps_per_mbq=sensitivity,
            axis_position_mm=axis_position_mm,
        )
    parameters = {
        "file": file,
        "ct": ct,
        "grid_size": grid_size,
        "spacing_mm": spacing_mm,
        "energy_keV": energy_kev,
        "duration_s": duration_s,
        "sensitivity_cps_per_mbq": sensitivity,
        "axis_position_mm": None if axis_position_mm is None else list(axis_position_mm),
    }
    study = _add_provenance(study, "dicom-tomo", parameters)
    _write(study, output, force)
    _print_study(study, f"DICOM NM tomographic {file}", output)


# -- spect convert to-nifti / nifti-to-result ----------------------------------------------------


def to_nifti(
    file: Annotated[Path, typer.Argument(metavar="FILE.h5", help="Study or result file.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="NIfTI file to write (.nii or .nii.gz).")
    ],
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
    from recon.convert import nifti_volume
    from recon.importers import write_nifti

    check_output(output, force)
    if not output.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{output}: a NIfTI file name ends with .nii or .nii.gz")
    volume, grid, what = nifti_volume(file, dataset.value)
    with status(f"Writing {output}..."):
        write_nifti(output, volume, grid, overwrite=force)
    _print_facts(
        f"NIfTI of {file}",
        [("volume", what), ("grid", _grid_text(grid)), ("values", _range(volume, ""))],
        output,
    )


def nifti_to_result(
    volume: Annotated[
        Path, typer.Argument(metavar="VOLUME.nii[.gz]", help="NIfTI volume (activity).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Result file to write (.h5).")],
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
    from recon.convert import nifti_result
    from recon.io import write_result

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
    rows = [
        ("method", result.method),
        ("grid", _grid_text(result.grid)),
        ("values", _range(result.activity, result.activity_unit)),
    ]
    clipped = result.parameters.get("negative_values_clipped")
    if clipped:
        rows.append(("clipped", f"{clipped} negative value(s) set to 0"))
    if study is not None:
        rows.append(("study", f"{study} (its grid and unit)"))
    _print_facts(f"Result from {volume}", rows, output)


for _name, _function in (
    ("pienerf", pienerf),
    ("interfile", interfile),
    ("patient15", patient15),
    ("dicom-planar", dicom_planar),
    ("dicom-tomo", dicom_tomo),
    ("to-nifti", to_nifti),
    ("nifti-to-result", nifti_to_result),
):
    app.command(_name, help=help_text(_function))(_function)
