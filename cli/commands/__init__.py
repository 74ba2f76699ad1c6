"""The ``spect`` sub-commands, and what they share.

Each command is a thin layer over the library: it parses options into the library's
configuration, calls the library, and writes its outputs atomically, never over an existing file
without ``--force``. Heavy imports (torch, h5py, matplotlib) happen inside the commands, so
``spect --help`` and ``spect --version`` stay fast.

Modules
-------
data
    ``spect phantom``, ``spect simulate``, ``spect project``, ``spect info``.
show
    ``spect show``: PNG figures of projections and volumes (`recon.figures`).
recon
    ``spect recon mlem``.
cohort
    ``spect train-cohort`` and ``spect recon batch``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from recon.io import Study
    from spectproj import CollimatorResponse

__all__ = [
    "check_output",
    "help_text",
    "json_text",
    "positive",
    "register",
    "study_collimator",
]

#: Help text of every ``--force`` option.
FORCE_HELP = "Overwrite the output file if it exists."


def register(app: typer.Typer) -> None:
    """Add the sub-commands to the top-level ``spect`` app."""
    from cli.commands import cohort, convert, data, recon, show

    for name, function in (
        ("phantom", data.phantom),
        ("simulate", data.simulate),
        ("project", data.project),
        ("info", data.info),
        ("show", show.show),
        ("train-cohort", cohort.train_cohort),
    ):
        app.command(name, help=help_text(function))(function)
    recon.app.command("batch", help=help_text(cohort.batch))(cohort.batch)
    app.add_typer(recon.app, name="recon")
    app.add_typer(convert.app, name="convert")


def help_text(function: Any) -> str:
    """The docstring of a command as ``--help`` text: paragraphs kept, lines within a paragraph
    joined (the installed Typer keeps single line breaks of the docstring), ``literals`` plain."""
    import inspect

    doc = inspect.cleandoc(function.__doc__ or "")
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p).replace("``", "'")


def check_output(path: Path, force: bool) -> None:
    """Refuse an output path early, before any work: it exists (without ``--force``), it is a
    folder, or its folder does not exist.

    The write itself (`recon.io.atomic_output`) checks again, atomically.

    Raises
    ------
    FileExistsError, IsADirectoryError, FileNotFoundError
        Reported by the CLI as a one-line ``Error: ...``.
    """
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a file")
    if not force and os.path.lexists(path):
        raise FileExistsError(f"{path}: already exists; use --force to overwrite it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")


def positive(value: float | None) -> float | None:
    """Option callback: a number > 0 (or no value); a usage error otherwise."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value:g}")
    return value


def json_text(values: Mapping[str, Any]) -> str:
    """``values`` as compact JSON (paths as strings, enums as their values), for provenance."""

    def default(value: object) -> object:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if hasattr(value, "value"):
            return value.value
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable")

    return json.dumps(dict(values), default=default, sort_keys=True)


def study_collimator(study: Study, enabled: bool = True) -> tuple[CollimatorResponse | None, str]:
    """The collimator blur of a study, and a one-line note on where it came from.

    The study's ``acquisition.collimator`` name (``LEHR``, ``MEGP``, ``HE``, ...) is turned into
    ``CollimatorResponse.preset(name, energy_keV)`` when the name is known and the acquisition
    has a radius (distance from the rotation axis to the collimator face); otherwise there is no
    blur.

    Raises
    ------
    ValueError
        The name is not a known collimator preset (the message suggests ``--no-collimator``).
    """
    from spectproj import CollimatorResponse

    acq = study.acquisition
    if not enabled:
        return None, "off (--no-collimator)"
    if not acq.collimator:
        return None, "none (the study names no collimator)"
    if acq.radius_mm is None:
        return None, f"none ({acq.collimator} named, but the study has no radius_mm)"
    try:
        response = CollimatorResponse.preset(acq.collimator, acq.energy_keV)
    except ValueError as error:
        raise ValueError(f"{error}; use --no-collimator to go without collimator blur") from None
    note = (
        f"{acq.collimator.upper()} at {acq.energy_keV:g} keV, radius {acq.radius_mm:g} mm "
        f"(σ = {response.sigma0_mm:.3g} mm + {response.slope:.3g}·d)"
    )
    return response, note


def train_overrides(
    steps: int | None, rays_per_step: int | None, samples: int | None, seed: int | None
) -> dict[str, object]:
    """``TrainConfig`` fields set on the command line (``--samples 0``: one per voxel)."""
    changes: dict[str, object] = {}
    if steps is not None:
        changes["steps"] = steps
    if rays_per_step is not None:
        changes["rays_per_step"] = rays_per_step
    if samples is not None:
        changes["n_samples"] = None if samples == 0 else samples
    if seed is not None:
        changes["seed"] = seed
    return changes
