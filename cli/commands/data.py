"""Data commands: ``spect phantom``, ``spect simulate``, ``spect project`` and ``spect info``.

``phantom`` and ``simulate`` build the torso phantom (`recon.phantoms.make_torso`) and an
acquisition of it (`recon.simulate.simulate_acquisition`) and write a study file
(`recon.io.write_study`); ``project`` replaces a study's projections by the noise-free expected
counts of its truth (or of a reconstruction); ``info`` lists what a study or result file holds.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.commands import FORCE_HELP, check_output, json_text, positive, study_collimator
from cli.progress import status
from recon.io.summary import views_text

if TYPE_CHECKING:
    from rich.console import Console

    from recon.io import Study
    from recon.phantoms import Phantom

__all__ = [
    "DEFAULT_RADIUS_MM",
    "DEFAULT_TOTAL_COUNTS",
    "PHANTOM_DURATION_S",
    "CollimatorChoice",
    "NuclideChoice",
    "PresetChoice",
    "info",
    "parse_views",
    "phantom",
    "project",
    "simulate",
]

#: Acquisition time per view (s) of the nominal count scale of ``spect phantom``.
PHANTOM_DURATION_S = 300.0
#: Expected total counts of ``spect simulate`` when neither --counts nor --duration-s is given.
DEFAULT_TOTAL_COUNTS = 1e6
#: Default distance (mm) from the rotation axis to the collimator face.
DEFAULT_RADIUS_MM = 250.0


class NuclideChoice(str, Enum):
    """Nuclides of `recon.phantoms.NUCLIDES` (the photopeak sets μ and the energy window)."""

    TC99M = "Tc-99m"
    LU177 = "Lu-177"
    I131 = "I-131"


class PresetChoice(str, Enum):
    """Activity concentrations of the torso: a `TorsoPhantom` preset, or chosen by nuclide."""

    AUTO = "auto"
    TC99M = "tc99m"
    LU177_DOTATATE = "lu177-dotatate"


class CollimatorChoice(str, Enum):
    """Collimator blur of a simulation: none, the nuclide's usual one, or a named preset."""

    NONE = "none"
    AUTO = "auto"
    LEHR = "LEHR"
    MEGP = "MEGP"
    HE = "HE"


# -- shared options ------------------------------------------------------------------------------

OutputOption = Annotated[Path, typer.Option("-o", "--output", help="Study file to write (.h5).")]
ForceOption = Annotated[bool, typer.Option("--force", help=FORCE_HELP)]
SizeOption = Annotated[
    int,
    typer.Option("--size", min=4, max=512, help="Voxels per axis of the cubic grid."),
]
FovOption = Annotated[
    float,
    typer.Option("--fov-mm", min=1.0, help="Edge of the cubic field of view (mm)."),
]
NuclideOption = Annotated[
    NuclideChoice,
    typer.Option(
        "--nuclide",
        case_sensitive=False,
        help="Radionuclide: its photopeak sets μ, the energy window and the usual collimator.",
    ),
]
PresetOption = Annotated[
    PresetChoice,
    typer.Option(
        "--preset",
        case_sensitive=False,
        help="Activity concentrations; auto: lu177-dotatate for Lu-177, tc99m otherwise.",
    ),
]


def parse_views(text: str) -> str | int:
    """``"ap-pa"`` or a number of views N >= 1 (equally spaced over 360°, from β = 0)."""
    key = text.strip().lower().replace("/", "-").replace("_", "-")
    if key in ("ap-pa", "appa"):
        return "ap-pa"
    try:
        n = int(key)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither 'ap-pa' nor a number of views", param_hint="'--views'"
        ) from None
    if n < 1:
        raise typer.BadParameter(f"needs at least one view, got {n}", param_hint="'--views'")
    return n


def _preset_config(preset: PresetChoice, nuclide: NuclideChoice) -> tuple[Any, str]:
    from recon.phantoms import TorsoPhantom

    if preset is PresetChoice.AUTO:
        preset = (
            PresetChoice.LU177_DOTATATE if nuclide is NuclideChoice.LU177 else PresetChoice.TC99M
        )
    if preset is PresetChoice.LU177_DOTATATE:
        return TorsoPhantom.lu177_dotatate(), preset.value
    return TorsoPhantom.tc99m(), preset.value


def _make_phantom(
    size: int, fov_mm: float, nuclide: NuclideChoice, preset: PresetChoice
) -> tuple[Phantom, str]:
    from recon.phantoms import NUCLIDES, default_grid, make_torso

    config, preset_name = _preset_config(preset, nuclide)
    grid = default_grid(size, fov_mm)
    with status(f"Building the {size}³ torso phantom..."):
        phantom = make_torso(grid, NUCLIDES[nuclide.value], config)
    return phantom, preset_name


def _add_provenance(study: Study, command: str, parameters: dict[str, Any]) -> Study:
    provenance = dict(study.provenance)
    provenance["cli_command"] = f"spect {command}"
    provenance["cli_parameters"] = json_text(parameters)
    return dataclasses.replace(study, provenance=provenance)


def _study_table(study: Study, phantom: Phantom, title: str) -> Any:
    from rich.table import Table

    acq = study.acquisition
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value")
    rows, bins = acq.detector_shape
    table.add_row("views (β)", views_text(acq.angles_deg))
    table.add_row(
        "detector",
        f"{rows}×{bins} pixels of {acq.pixel_size_mm[0]:g}×{acq.pixel_size_mm[1]:g} mm",
    )
    table.add_row("nuclide", f"{acq.isotope or '?'} at {acq.energy_keV:g} keV")
    table.add_row("collimator", acq.collimator or "none")
    table.add_row("total counts", f"{float(study.projections.sum(dtype='float64')):.6g}")
    if study.background is not None:
        table.add_row("of which scatter (expected)", f"{float(study.background.sum()):.6g}")
    table.add_row("count scale", f"{acq.count_scale:.6g} counts per (Bq/mL)·mm per pixel")
    if acq.duration_s is not None:
        table.add_row("duration per view", f"{acq.duration_s:.6g} s")
    if acq.sensitivity_cps_per_mbq is not None:
        table.add_row("sensitivity", f"{acq.sensitivity_cps_per_mbq:.6g} cps/MBq")
    table.add_row("activity in phantom", f"{phantom.total_activity_mbq:.6g} MBq")
    return table


def _print_written(console: Console, path: Path) -> None:
    console.print(f"wrote {path}", highlight=False, markup=False)


def _run_simulation(
    *,
    command: str,
    output: Path,
    force: bool,
    size: int,
    fov_mm: float,
    nuclide: NuclideChoice,
    preset: PresetChoice,
    views: str | int,
    collimator: CollimatorChoice,
    radius_mm: float | None,
    scatter_fraction: float,
    total_counts: float | None,
    duration_s: float | None,
    sensitivity: float | None,
    seed: int,
    noise: bool,
    title: str,
) -> Study:
    from rich.console import Console

    from recon.io import write_study
    from recon.phantoms import COLLIMATORS
    from recon.simulate import simulate_acquisition
    from spectproj import ParallelGeometry

    check_output(output, force)
    collimator_name: str | None
    if collimator is CollimatorChoice.NONE:
        collimator_name = None
    elif collimator is CollimatorChoice.AUTO:
        collimator_name = COLLIMATORS[nuclide.value]
    else:
        collimator_name = collimator.value
    phantom, preset_name = _make_phantom(size, fov_mm, nuclide, preset)
    if views == "ap-pa":
        geometry = ParallelGeometry.ap_pa(phantom.grid, radius_mm=radius_mm)
    else:
        geometry = ParallelGeometry.full_circle(phantom.grid, int(views), radius_mm=radius_mm)
    with status(f"Simulating {geometry.n_views} view(s)..."):
        study = simulate_acquisition(
            phantom,
            geometry,
            collimator=collimator_name,
            scatter_fraction=scatter_fraction,
            total_counts=total_counts,
            sensitivity_cps_per_mbq=sensitivity,
            duration_s=duration_s,
            isotope=nuclide.value,
            seed=seed,
            noise=noise,
        )
    parameters = {
        "size": size,
        "fov_mm": fov_mm,
        "nuclide": nuclide.value,
        "preset": preset_name,
        "views": views,
        "collimator": collimator_name,
        "radius_mm": radius_mm,
        "scatter_fraction": scatter_fraction,
        "counts": total_counts,
        "duration_s": duration_s,
        "sensitivity_cps_per_mbq": sensitivity,
        "seed": seed,
        "noise": noise,
    }
    study = _add_provenance(study, command, parameters)
    with status(f"Writing {output}..."):
        write_study(output, study, overwrite=force)
    console = Console()
    console.print(_study_table(study, phantom, title))
    _print_written(console, output)
    return study


# -- spect phantom -------------------------------------------------------------------------------


def phantom(
    output: OutputOption,
    size: SizeOption = 64,
    fov_mm: FovOption = 400.0,
    nuclide: NuclideOption = NuclideChoice.TC99M,
    preset: PresetOption = PresetChoice.AUTO,
    force: ForceOption = False,
) -> None:
    """Make the torso phantom and write it as a study file.

    A study file needs projections, so the file holds the noise-free AP and PA expected counts
    (no collimator blur, no scatter) at a nominal count scale (the nuclide's typical sensitivity
    and 300 s per view), besides the truth activity (Bq/mL), the organ labels and μ (1/mm at the
    nuclide's photopeak). Use ``spect simulate`` for a realistic acquisition.
    """
    _run_simulation(
        command="phantom",
        output=output,
        force=force,
        size=size,
        fov_mm=fov_mm,
        nuclide=nuclide,
        preset=preset,
        views="ap-pa",
        collimator=CollimatorChoice.NONE,
        radius_mm=None,
        scatter_fraction=0.0,
        total_counts=None,
        duration_s=PHANTOM_DURATION_S,
        sensitivity=None,
        seed=0,
        noise=False,
        title=f"Torso phantom ({size}³ voxels), noise-free AP/PA",
    )


# -- spect simulate ------------------------------------------------------------------------------


def simulate(
    output: OutputOption,
    size: SizeOption = 64,
    fov_mm: FovOption = 400.0,
    views: Annotated[
        str,
        typer.Option(
            "--views",
            metavar="ap-pa|N",
            help="ap-pa (planar AP and PA) or N views equally spaced over 360° from β = 0.",
        ),
    ] = "ap-pa",
    counts: Annotated[
        float | None,
        typer.Option(
            "--counts",
            callback=positive,
            help=(
                "Expected total counts over all views (primary + scatter); the default is "
                f"{DEFAULT_TOTAL_COUNTS:g} unless --duration-s is given."
            ),
        ),
    ] = None,
    duration_s: Annotated[
        float | None,
        typer.Option(
            "--duration-s",
            callback=positive,
            help="Acquisition time per view (s): with --sensitivity, sets the count scale.",
        ),
    ] = None,
    sensitivity: Annotated[
        float | None,
        typer.Option(
            "--sensitivity",
            callback=positive,
            help="Planar sensitivity (cps/MBq); default the nuclide's typical value.",
        ),
    ] = None,
    nuclide: NuclideOption = NuclideChoice.TC99M,
    preset: PresetOption = PresetChoice.AUTO,
    collimator: Annotated[
        CollimatorChoice,
        typer.Option(
            "--collimator",
            case_sensitive=False,
            help="Collimator blur; auto: the nuclide's usual one (LEHR, MEGP, HE).",
        ),
    ] = CollimatorChoice.AUTO,
    radius_mm: Annotated[
        float,
        typer.Option(
            "--radius-mm",
            callback=positive,
            help="Distance from the rotation axis to the collimator face (mm).",
        ),
    ] = DEFAULT_RADIUS_MM,
    scatter_fraction: Annotated[
        float,
        typer.Option(
            "--scatter-fraction",
            min=0.0,
            help="Scatter-to-primary ratio of a smooth scatter term (stored as background).",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the Poisson noise.")] = 0,
    noise: Annotated[
        bool,
        typer.Option("--noise/--no-noise", help="Draw Poisson counts, or keep expected counts."),
    ] = True,
    force: ForceOption = False,
) -> None:
    """Simulate an acquisition of the torso phantom and write it as a study file.

    The count scale (expected counts per (Bq/mL)·mm in one pixel, one number for every view)
    comes from --counts (the expected total over all views), or from --duration-s × --sensitivity.
    With --counts, at most one of --duration-s and --sensitivity may be given; the other is
    derived. The file also holds the truth activity, labels, μ and, with --scatter-fraction, the
    expected scatter as background.
    """
    parsed_views = parse_views(views)
    if counts is not None and duration_s is not None and sensitivity is not None:
        raise ValueError(
            "--counts fixes the count scale: give at most one of --duration-s and --sensitivity "
            "with it"
        )
    if counts is None and duration_s is None:
        if sensitivity is not None:
            raise ValueError("--sensitivity needs --duration-s (or use --counts)")
        counts = DEFAULT_TOTAL_COUNTS
    n_text = "AP/PA" if parsed_views == "ap-pa" else f"{parsed_views}-view"
    _run_simulation(
        command="simulate",
        output=output,
        force=force,
        size=size,
        fov_mm=fov_mm,
        nuclide=nuclide,
        preset=preset,
        views=parsed_views,
        collimator=collimator,
        radius_mm=radius_mm,
        scatter_fraction=scatter_fraction,
        total_counts=counts,
        duration_s=duration_s,
        sensitivity=sensitivity,
        seed=seed,
        noise=noise,
        title=f"Simulated {n_text} acquisition of the torso phantom ({size}³ voxels)",
    )


# -- spect project -------------------------------------------------------------------------------


def project(
    study_file: Annotated[
        Path, typer.Argument(metavar="STUDY.h5", help="Study file whose geometry, μ etc. to use.")
    ],
    output: OutputOption,
    activity: Annotated[
        Path | None,
        typer.Option(
            "--activity",
            help="Result file to project instead of the study's truth activity.",
        ),
    ] = None,
    force: ForceOption = False,
) -> None:
    """Replace a study's projections by the noise-free expected counts of an activity.

    Forward-projects the study's truth activity (or, with --activity, a reconstruction on the
    study's grid) with the study's geometry, μ and collimator (when the study names one and
    has a radius), and writes a copy of the study whose projections are
    count_scale × projection + background. Compare it with the measured projections, e.g. with
    ``spect show``.
    """
    import numpy as np
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from recon.io import read_result, read_study, write_study
    from spectproj import SPECTProjector

    check_output(output, force)
    study = read_study(study_file)
    if activity is not None:
        result = read_result(activity)
        if result.grid != study.grid:
            raise ValueError(
                f"{activity}: its grid {result.grid.shape} of {result.grid.spacing_mm} mm "
                f"(offset {result.grid.offset_mm}) differs from the study's {study.grid.shape} of "
                f"{study.grid.spacing_mm} mm (offset {study.grid.offset_mm})"
            )
        if result.activity_unit != study.activity_unit:
            raise ValueError(
                f"{activity}: activity unit {result.activity_unit!r} differs from the study's "
                f"{study.activity_unit!r}"
            )
        volume, source = result.activity, f"reconstruction {activity}"
    else:
        if study.truth_activity is None:
            raise ValueError(
                f"{study_file}: has no truth activity (/truth/activity); use --activity "
                "RESULT.h5 to project a reconstruction"
            )
        volume, source = study.truth_activity, "truth activity"

    response, collimator_note = study_collimator(study)
    acq = study.acquisition
    mu = None if study.mu_per_mm is None else torch.as_tensor(study.mu_per_mm)
    with status("Projecting..."), torch.no_grad():
        projector = SPECTProjector(study.geometry(), mu=mu, collimator=response)
        line_integrals = projector(torch.as_tensor(volume)).double().numpy()
    expected = acq.count_scale * line_integrals
    if study.background is not None:
        expected = expected + study.background
    expected = np.clip(expected, 0.0, None).astype(np.float32)

    provenance = dict(study.provenance)
    provenance.update(
        {
            "noise": "none (expected counts)",
            "projected_from": source,
            "projected_study": str(study_file),
            "projection": "count_scale × A(activity) + background (spect project)",
            "projection_collimator": collimator_note,
            "projection_attenuation": "study μ" if mu is not None else "none (no μ in the study)",
        }
    )
    parameters = {"study_file": study_file, "activity": activity, "output": output}
    new = dataclasses.replace(study, projections=expected, provenance=provenance)
    new = _add_provenance(new, "project", parameters)
    with status(f"Writing {output}..."):
        write_study(output, new, overwrite=force)

    table = Table(title=escape(f"Expected counts of the {source}"), title_justify="left")
    table.add_column("view (β)")
    table.add_column("measured counts", justify="right")
    table.add_column("expected counts", justify="right")
    table.add_column("expected/measured", justify="right")
    measured_v = study.projections.sum(axis=(1, 2), dtype=np.float64)
    expected_v = expected.sum(axis=(1, 2), dtype=np.float64)
    shown = list(range(len(acq.angles_deg)))
    if len(shown) > 8:
        shown = [round(float(k)) for k in np.linspace(0, len(shown) - 1, 8)]
    for v in shown:
        table.add_row(
            f"{v} ({acq.angles_deg[v]:g}°)",
            f"{measured_v[v]:.6g}",
            f"{expected_v[v]:.6g}",
            _ratio(expected_v[v], measured_v[v]),
        )
    total_m, total_e = float(measured_v.sum()), float(expected_v.sum())
    table.add_row("all", f"{total_m:.6g}", f"{total_e:.6g}", _ratio(total_e, total_m))
    console = Console()
    console.print(table)
    console.print(f"collimator: {collimator_note}", highlight=False, markup=False)
    _print_written(console, output)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.4f}" if b > 0 else "–"


# -- spect info ----------------------------------------------------------------------------------


def info(
    file: Annotated[Path, typer.Argument(metavar="FILE.h5", help="Study or result file.")],
) -> None:
    """Show what a study or result file holds: a summary, then every dataset and attribute.

    Works on damaged or invalid files too: the summary's "check" line says what is wrong.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from recon.io import describe
    from recon.io.summary import summarize

    rows = describe(file)  # StudyFileError if not HDF5 at all
    summary = summarize(file)
    console = Console()
    head = Table(title=escape(str(file)), show_header=False, title_justify="left")
    head.add_column("field", style="bold")
    head.add_column("value", overflow="fold")
    for name, value in summary:
        head.add_row(name, Text(value))
    console.print(head)
    table = Table(title="Contents", title_justify="left")
    for column in ("path", "shape", "dtype", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)
