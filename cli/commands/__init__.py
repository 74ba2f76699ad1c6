"""The ``spect`` sub-commands, and what they share.

Each command is a thin layer over the library: it parses its options, calls one library function
(docs/architecture.md has the table), and prints; its outputs are written atomically, never over
an existing file without ``--force``. Heavy imports (torch, h5py, matplotlib) happen inside the
commands, so ``spect --help`` and ``spect --version`` stay fast.

Shared here: the ``--force`` option (`ForceOption`), the ``-o/--output`` options
(`StudyOutput`, `ResultOutput`, `output_option`), the one early output check (`check_output`),
the provenance of a command's bound options (`add_provenance`), the two-column table of
summary rows (`print_rows`) and the collimator options (`CollimatorOption`,
`NoCollimatorOption`, `study_with_collimator`).

Modules
-------
data
    ``spect phantom``, ``spect simulate``, ``spect project``, ``spect info``.
show
    ``spect show``: PNG figures of projections and volumes (`recon.evaluation.figures`).
recon
    ``spect recon mlem``, ``spect recon nerf`` (`recon.reconstruct`).
cohort
    ``spect cohort make``, ``spect train-cohort`` and ``spect recon batch``.
anatomy
    ``spect recon organs``, ``spect recon conjugate``, ``spect quantify``.
convert
    ``spect convert ...``.
evaluate
    ``spect eval``, ``spect compare``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from recon.io import Study

__all__ = [
    "COLLIMATOR_HELP",
    "FORCE_HELP",
    "SUPPORT_HELP",
    "CollimatorOption",
    "ForceOption",
    "NoCollimatorOption",
    "ResultOutput",
    "StudyOutput",
    "SupportChoice",
    "SupportOption",
    "add_provenance",
    "bound_options",
    "check_output",
    "help_text",
    "json_text",
    "output_option",
    "positive",
    "print_rows",
    "provenance",
    "register",
    "resolve_device",
    "study_with_collimator",
]

#: Help text of the ``--force`` option.
FORCE_HELP = "Overwrite existing output files (and start over in a used output folder)."

#: ``--force`` of every command.
ForceOption = Annotated[bool, typer.Option("--force", help=FORCE_HELP)]


def output_option(help: str, *, metavar: str | None = None) -> Any:
    """The ``-o/--output`` option with ``help``: ``output: Annotated[Path, output_option(...)]``.

    `StudyOutput` and `ResultOutput` are the two common ones; commands that write something else
    (a folder, a NIfTI file, a model, a JSON file) use this with their own help.
    """
    return typer.Option("-o", "--output", metavar=metavar, help=help)


#: ``-o/--output`` of the commands that write a study file.
StudyOutput = Annotated[Path, output_option("Study file to write (.h5).")]
#: ``-o/--output`` of the commands that write a result file.
ResultOutput = Annotated[Path, output_option("Result file to write (.h5).")]

#: Help text of every ``--collimator NAME|FILE.toml`` option.
COLLIMATOR_HELP = (
    "Collimator to model instead of the one the study (or file) names: a name of the collimator "
    "table (e.g. SY-ME, GI-MEGP, LEHR; docs/collimators.md) or a TOML file describing your own."
)

#: ``--collimator NAME|FILE.toml`` of the reconstructions and the DICOM conversions.
CollimatorOption = Annotated[
    str | None,
    typer.Option("--collimator", metavar="NAME|FILE.toml", help=COLLIMATOR_HELP),
]

#: ``--no-collimator`` of the reconstructions.
NoCollimatorOption = Annotated[
    bool,
    typer.Option(
        "--no-collimator",
        help="Model no collimator blur (default: the blur of the study's collimator, when it "
        "names one and has a radius).",
    ),
]


def study_with_collimator(study: Study, collimator: str | None, no_collimator: bool) -> Study:
    """``study`` with the collimator of ``--collimator NAME|FILE.toml`` (unchanged without one).

    ``--collimator`` together with ``--no-collimator`` is an error.
    """
    if collimator is None:
        return study
    if no_collimator:
        raise ValueError("--collimator and --no-collimator contradict each other; give one")
    from recon.io import with_collimator
    from spectproj.collimator_table import collimator_spec

    return with_collimator(study, collimator_spec(collimator))


class SupportChoice(str, Enum):
    """Where activity may be (`recon.support`)."""

    BODY = "body"
    ANATOMY = "anatomy"
    NONE = "none"


#: Help text of every ``--support`` option.
SUPPORT_HELP = (
    "Keep the activity inside the body (outline of the study's anatomy, else μ, else the CT), "
    "inside the anatomy's segments, or nowhere in particular (default: body when the study has "
    "μ, a CT or an anatomy, else none)."
)

#: ``--support`` of the reconstructions.
SupportOption = Annotated[
    SupportChoice | None, typer.Option("--support", case_sensitive=False, help=SUPPORT_HELP)
]


def register(app: typer.Typer) -> None:
    """Add the sub-commands to the top-level ``spect`` app."""
    from cli.commands import anatomy, cohort, convert, corrections, data, recon, show

    for name, function in (
        ("phantom", data.phantom),
        ("simulate", data.simulate),
        ("project", data.project),
        ("info", data.info),
        ("show", show.show),
        ("train-cohort", cohort.train_cohort),
        ("quantify", anatomy.quantify),
        ("calibrate", corrections.calibrate),
        ("scatter", corrections.scatter),
    ):
        app.command(name, help=help_text(function))(function)
    recon.app.command("batch", help=help_text(cohort.batch))(cohort.batch)
    recon.app.command("organs", help=help_text(anatomy.organs))(anatomy.organs)
    recon.app.command("conjugate", help=help_text(anatomy.conjugate))(anatomy.conjugate)
    app.add_typer(recon.app, name="recon")
    app.add_typer(convert.app, name="convert")
    cohort.app.command("make", help=help_text(cohort.make))(cohort.make)
    app.add_typer(cohort.app, name="cohort")
    app.add_typer(corrections.demo_app, name="demo-data")


def help_text(function: Any) -> str:
    """The docstring of a command as ``--help`` text: paragraphs kept, lines within a paragraph
    joined (the installed Typer keeps single line breaks of the docstring), ``literals`` plain."""
    import inspect

    doc = inspect.cleandoc(function.__doc__ or "")
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p).replace("``", "'")


def check_output(path: Path, force: bool, outputs: tuple[str, ...] = ("output",)) -> None:
    """Refuse an output path early, before any work: it exists (without ``--force``), it is a
    folder, or its folder does not exist.

    The write itself (`recon.io.atomic_output`) checks again, atomically. An output that is
    one of the command's input files (the same file by path, link or inode) is refused even
    with ``--force``: the measured study must never be replaced by a result. ``outputs`` names
    the command's output options (not inputs).

    Raises
    ------
    FileExistsError, IsADirectoryError, FileNotFoundError, NotADirectoryError
        Reported by the CLI as a one-line ``Error: ...``.
    ValueError
        The output is also an input.
    """
    for name, value in bound_options().items():
        if name in outputs:
            continue
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, os.PathLike) and _same_file(item, path):
                raise ValueError(
                    f"{path}: is also the input {name.replace('_', '-')} ({item}); write the "
                    "output to another file"
                )
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a file")
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"{path}: {path.parent} is a file, not a folder")
    if not force and os.path.lexists(path):
        raise FileExistsError(f"{path}: already exists; use --force to overwrite it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")


def _same_file(a: os.PathLike[str], b: os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one existing file (same device and inode)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def resolve_device(choice: str) -> Any:
    """The `torch.device` of a ``--device`` choice (``auto``: CUDA when available, else the CPU);
    a clear error when CUDA is asked for but absent."""
    import torch

    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        build = torch.version.cuda
        why = "no CUDA device is visible" if build else "this PyTorch is a CPU-only build"
        raise ValueError(
            f"--device {choice}: CUDA is not available ({why}; torch {torch.__version__}); "
            "use --device cpu"
        )
    return torch.device(choice)


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


def _click_globals() -> Any:
    """``click.globals`` of the click typer uses (recent typers vendor it as ``typer._click``)."""
    base = next(c for c in typer.Context.__mro__[1:] if c.__name__ == "Context")
    return importlib.import_module(base.__module__.rsplit(".", 1)[0] + ".globals")


def bound_options() -> dict[str, Any]:
    """The bound parameters of the command now running (``{name: value}``, as parsed), or an
    empty dict outside a command (a direct call in a test)."""
    ctx = _click_globals().get_current_context(silent=True)
    return {} if ctx is None else dict(ctx.params)


#: Bound parameters that are not part of a provenance record.
_NOT_PROVENANCE = ("force",)


def provenance(command: str, **derived: Any) -> dict[str, str]:
    """The provenance of the running command: ``cli_command`` (``"spect <command>"``),
    ``cli_parameters`` (JSON of its bound options, ``--force`` left out, updated with
    ``derived`` values such as a resolved preset), ``cli_inputs`` (JSON list of the options, but
    ``--output``, that name existing files or folders) and ``software`` (``spect <version>``)."""
    from recon.io.hdf5 import software_version

    options = {k: v for k, v in bound_options().items() if k not in _NOT_PROVENANCE}
    options.update(derived)
    inputs: list[str] = []
    for key, value in options.items():
        if key == "output":
            continue
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, os.PathLike) and os.path.exists(item):
                inputs.append(os.fspath(item))
    return {
        "cli_command": f"spect {command}",
        "cli_parameters": json_text(options),
        "cli_inputs": json.dumps(inputs),
        "software": f"spect {software_version()}",
    }


def add_provenance(study: Study, command: str, **derived: Any) -> Study:
    """``study`` with the running command's `provenance` added to its own (the study's own
    ``software`` entry, when it has one, is kept)."""
    new = provenance(command, **derived)
    if "software" in study.provenance:
        del new["software"]
    return dataclasses.replace(study, provenance={**study.provenance, **new})


def print_rows(title: str, rows: Iterable[tuple[str, str]], output: Path | None = None) -> None:
    """``rows`` (`recon.io.summary`'s ``(field, value)`` rows) as a two-column table titled
    ``title``; then ``wrote OUTPUT`` when given."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    console = Console()
    console.print(table)
    if output is not None:
        console.print(f"wrote {output}", highlight=False, markup=False)


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
