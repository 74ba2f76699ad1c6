"""``spect show``: a PNG figure of a study's projections or volumes, or of a reconstruction."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, cast

import typer

from cli.commands import ForceOption, check_output, json_text
from cli.progress import status

__all__ = ["ShowKind", "SliceChoice", "show"]


class ShowKind(str, Enum):
    """What to draw: auto (projections of a study, activity of a result), or a given part."""

    AUTO = "auto"
    PROJECTIONS = "projections"
    VOLUME = "volume"
    BOTH = "both"


class SliceChoice(str, Enum):
    """Where the orthogonal slices of a volume cross."""

    HOTTEST = "hottest"
    CENTRE = "centre"


def show(
    file: Annotated[Path, typer.Argument(metavar="FILE.h5", help="Study or result file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG file to write.")],
    kind: Annotated[
        ShowKind,
        typer.Option(
            "--kind",
            case_sensitive=False,
            help=(
                "auto: a study's projections, a result's activity; projections; volume "
                "(truth activity and μ of a study); both."
            ),
        ),
    ] = ShowKind.AUTO,
    slice_at: Annotated[
        SliceChoice,
        typer.Option(
            "--slice-at",
            case_sensitive=False,
            help="Slices through the hottest voxel (of the truth activity) or the centre.",
        ),
    ] = SliceChoice.HOTTEST,
    max_views: Annotated[
        int, typer.Option("--max-views", min=1, max=16, help="Most views of a study to show.")
    ] = 4,
    contours: Annotated[
        bool,
        typer.Option(
            "--contours/--no-contours",
            help="Outline a study's anatomy (segments, body outline) on its volume panels.",
        ),
    ] = True,
    force: ForceOption = False,
) -> None:
    """Draw a study or result file as a PNG figure.

    Studies: the views side by side as a nuclear-medicine viewer shows them (AP/PA, or up to
    --max-views views nearest 0, 90, 180, 270°), one colour scale in counts, axes in mm. Volumes
    (a study's truth activity and μ, a result's activity): coronal, sagittal and transverse
    maximum-intensity projections and orthogonal slices, with colour bars in their units; a
    study's anatomy (spect convert anatomy) is outlined on them unless --no-contours.
    """
    from recon.evaluation import figures
    from recon.io import read_result, read_study
    from recon.io.hdf5 import file_kind

    check_output(output, force)
    is_result = file_kind(file) == "result"
    with status(f"Drawing {file}..."):
        if is_result:
            if kind in (ShowKind.PROJECTIONS, ShowKind.BOTH):
                raise ValueError(
                    f"{file}: a result file holds no projections; use --kind volume, or "
                    "'spect project STUDY --activity RESULT' to make some"
                )
            result = read_result(file)
            fig = figures.result_figure(result, slice_at=slice_at.value)
            what = "volume"
        else:
            study = read_study(file)  # also reports files that are neither kind
            # ShowKind's values other than "auto" are exactly figures.StudyKind's
            what = cast("figures.StudyKind", "projections" if kind is ShowKind.AUTO else kind.value)
            fig = figures.study_figure(
                study, what, slice_at=slice_at.value, max_views=max_views, contours=contours
            )
        parameters = {"file": file, "kind": what, "slice_at": slice_at, "max_views": max_views}
        if not is_result:
            parameters["contours"] = contours
        metadata = {"Source": str(file), "Description": json_text(parameters)}
        figures.save_png(fig, output, overwrite=force, metadata=metadata)
    typer.echo(f"wrote {output}")
