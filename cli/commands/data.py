"""Data commands: ``spect phantom``, ``spect simulate``, ``spect project`` and ``spect info``.

Each parses, calls one library function and prints: ``phantom`` and ``simulate`` call
`recon.data.torso_study.torso_study` (the torso phantom and an acquisition of it) and write the
study;
``project`` calls `recon.evaluation.expected_counts.expected_counts_study` (the noise-free expected
counts of
the study's truth or of a reconstruction); ``info`` calls `recon.io.summary.summarize` (and
`recon.io.describe` for the list of datasets).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.commands import (
    ForceOption,
    StudyOutput,
    add_provenance,
    check_output,
    positive,
    print_rows,
)
from cli.progress import status

if TYPE_CHECKING:
    from recon.io import Study

__all__ = [
    "DEFAULT_RADIUS_MM",
    "DEFAULT_TOTAL_COUNTS",
    "PHANTOM_DURATION_S",
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
    """Nuclides of `recon.data.phantoms.NUCLIDES` (the photopeak sets μ and the energy window)."""

    TC99M = "Tc-99m"
    LU177 = "Lu-177"
    I131 = "I-131"


class PresetChoice(str, Enum):
    """Activity concentrations of the torso: a `TorsoPhantom` preset, or chosen by nuclide."""

    AUTO = "auto"
    TC99M = "tc99m"
    LU177_DOTATATE = "lu177-dotatate"


def _known_collimator(value: str) -> str:
    """``--collimator`` of a simulation: none, auto, a table name or a TOML file (a usage error
    naming the option otherwise)."""
    from spectproj.collimator_table import collimator_spec

    if value in ("none", "auto"):
        return value
    try:
        collimator_spec(value)
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


# -- shared options ------------------------------------------------------------------------------

OutputOption = StudyOutput
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
    collimator: str,
    radius_mm: float | None,
    scatter_fraction: float,
    total_counts: float | None,
    duration_s: float | None,
    sensitivity: float | None,
    seed: int,
    noise: bool,
    title: str,
    scatter_windows: bool = False,
) -> Study:
    """``spect phantom`` and ``spect simulate``: `recon.data.torso_study.torso_study`, written, and
    its
    summary printed."""
    from recon.data.torso_study import torso_study
    from recon.io import write_study
    from recon.io.summary import study_rows

    check_output(output, force)
    with status(f"Building the {size}³ torso phantom and simulating..."):
        made = torso_study(
            size=size,
            fov_mm=fov_mm,
            nuclide=nuclide.value,
            preset=preset.value,
            views=views,
            collimator=collimator,
            radius_mm=radius_mm,
            scatter_fraction=scatter_fraction,
            scatter_windows=scatter_windows,
            total_counts=total_counts,
            duration_s=duration_s,
            sensitivity_cps_per_mbq=sensitivity,
            seed=seed,
            noise=noise,
        )
    study = add_provenance(
        made.study,
        command,
        size=size,
        fov_mm=fov_mm,
        nuclide=nuclide.value,
        preset=made.preset,
        views=views,
        collimator=made.collimator,
        radius_mm=radius_mm,
        scatter_fraction=scatter_fraction,
        scatter_windows=scatter_windows,
        counts=total_counts,
        duration_s=duration_s,
        sensitivity_cps_per_mbq=sensitivity,
        seed=seed,
        noise=noise,
    )
    with status(f"Writing {output}..."):
        write_study(output, study, overwrite=force)
    rows = [*study_rows(study), ("activity in phantom", f"{made.phantom_mbq:.6g} MBq")]
    print_rows(title, rows, output)
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
        collimator="none",
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
        str,
        typer.Option(
            "--collimator",
            metavar="none|auto|NAME|FILE.toml",
            callback=_known_collimator,
            help="Collimator blur: none; auto, the nuclide's usual one (LEHR, MEGP, HE); a name "
            "of the collimator table (docs/collimators.md); or a FILE.toml describing one.",
        ),
    ] = "auto",
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
    scatter_windows: Annotated[
        bool,
        typer.Option(
            "--scatter-windows",
            help="Also simulate lower and upper scatter windows (for 'spect scatter').",
        ),
    ] = False,
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
        scatter_windows=scatter_windows,
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
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from recon.evaluation.expected_counts import expected_counts_study
    from recon.io import read_result, read_study, write_study

    check_output(output, force)
    study = read_study(study_file)
    result = None if activity is None else read_result(activity)
    with status("Projecting..."):
        new = expected_counts_study(study, result, study_file=study_file, result_file=activity)
    new = add_provenance(new, "project")
    with status(f"Writing {output}..."):
        write_study(output, new, overwrite=force)

    acq, expected = study.acquisition, new.projections
    source = new.provenance["projected_from"]
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
    console.print(
        f"collimator: {new.provenance['projection_collimator']}", highlight=False, markup=False
    )
    console.print(f"wrote {output}", highlight=False, markup=False)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.4f}" if b > 0 else "–"


# -- spect info ----------------------------------------------------------------------------------


def info(
    file: Annotated[Path, typer.Argument(metavar="FILE.h5", help="Study or result file.")],
) -> None:
    """Show what a study or result file holds: a summary, then every dataset and attribute.

    Works on damaged or invalid files too: the summary's "check" line says what is wrong, and
    the command then ends with that error (exit code 1) after listing the file.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from recon.io import describe
    from recon.io.summary import summarize

    rows = describe(file)  # StudyFileError if not HDF5 at all
    summary = summarize(file)
    print_rows(str(file), summary)
    table = Table(title="Contents", title_justify="left")
    for column in ("path", "shape", "dtype", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    Console().print(table)
    check = dict(summary).get("check", "")
    if check.startswith("FAILED: "):  # listed above; the exit code says it is not valid
        raise ValueError(check.removeprefix("FAILED: "))
