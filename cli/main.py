"""Entry point of the ``spect`` command (console script ``spect = cli.main:app``).

User errors never print a traceback: a bad option, an existing output file, or a
``ValueError``/``TypeError``/``OSError`` (e.g. ``FileExistsError``) raised below becomes a one-line
``Error: <message>`` on stderr and a non-zero exit code (2 for command-line usage errors,
1 otherwise). Set ``SPECT_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli.commands import ForceOption, output_option
from cli.commands import evaluate as _evaluate
from cli.commands import help_text as _help_text
from cli.commands import register as _register_commands

__all__ = ["app", "package_version"]

#: Exceptions reported as ``Error: <message>`` (exit code 1) instead of a traceback
#: (OSError covers FileExistsError, PermissionError, a full disk, ...).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError)


def package_version() -> str:
    """Version of the installed ``spect`` distribution (``"unknown"`` if not installed)."""
    try:
        return version("spect")
    except PackageNotFoundError:
        return "unknown"


# Recent Typer versions vendor click (typer._click), older ones use click itself; either way
# typer.BadParameter derives from the ClickException used for command-line usage errors.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def _one_line(message: str) -> str:
    return " ".join(str(message).split()) or "unknown error"


def _fail(message: str, code: int) -> None:
    typer.echo(f"Error: {_one_line(message)}", err=True)
    sys.exit(code)


def _interrupted(stop: BaseException | None) -> int:
    """Report a stop signal in one line; the exit code ``128 + signal`` (130, 143, 129)."""
    from recon.io.signals import exit_code, signal_name

    code = exit_code(stop)
    typer.echo(
        f"Error: interrupted by {signal_name(code - 128)}; no output was left half-written",
        err=True,
    )
    return code


class SpectGroup(TyperGroup):
    """Top-level command group that turns user errors into one-line messages."""

    def invoke(self, ctx: Any) -> Any:
        """Run the command; a stop signal (Ctrl-C, SIGTERM, SIGHUP) becomes one line on stderr
        and exit code 128 + signal (outputs are written atomically, so an interrupted command
        leaves none half-written and no temporary behind)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as stop:
            raise typer.Exit(_interrupted(stop)) from None
        except EOFError as error:  # click would turn it into a bare "Aborted!"
            raise ValueError(f"unexpected end of a file (truncated?): {error}") from None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        extra["windows_expand_args"] = windows_expand_args
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from recon.io.signals import install_handlers

        debug = os.environ.get("SPECT_DEBUG", "") not in ("", "0")
        restore = install_handlers()  # SIGINT, SIGTERM, SIGHUP -> one exception, once
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except KeyboardInterrupt as stop:  # outside a command (while parsing, importing)
            sys.exit(_interrupted(stop))
        except _ClickException as e:  # bad option, missing value, ...
            _fail(e.format_message(), getattr(e, "exit_code", 2))  # type: ignore[attr-defined]  # a ClickException
        except typer.Abort as e:  # click's wrapper of a KeyboardInterrupt outside the command
            if isinstance(e.__cause__, KeyboardInterrupt):
                sys.exit(_interrupted(e.__cause__))
            _fail("aborted", 1)
        except USER_ERRORS as e:
            if debug:
                raise
            _fail(str(e), 1)
        finally:
            restore()
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=SpectGroup,
    name="spect",
    help="Quantitative SPECT: phantoms, simulation, reconstruction, figures and demos.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"spect {package_version()}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Show the version and exit.",
            callback=_version_callback,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Quantitative SPECT: projector, reconstruction and demos."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


class QualityChoice(str, Enum):
    """How big the demo is: ``fast`` (minutes on a CPU) or ``full`` (pieNeRF's size, a GPU)."""

    FAST = "fast"
    FULL = "full"


class DemoDevice(str, Enum):
    """Where the demo's reconstructions run (``auto``: CUDA when available)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


@app.command()
def demo(
    output: Annotated[Path, output_option("Folder for the report, figures and data files.")] = Path(
        "spect-demo"
    ),
    device: Annotated[
        DemoDevice,
        typer.Option(
            "--device", case_sensitive=False, help="Compute device (auto: CUDA when available)."
        ),
    ] = DemoDevice.AUTO,
    quality: Annotated[
        QualityChoice | None,
        typer.Option(
            "--quality",
            case_sensitive=False,
            help="fast: 64³, a few minutes on a CPU; full: 128³ and pieNeRF's network, for a GPU. "
            "Default: full on CUDA, fast otherwise.",
            show_default=False,
        ),
    ] = None,
    force: ForceOption = False,
    size: Annotated[
        int | None,
        typer.Option("--size", hidden=True, min=8, max=512, help="Voxels per axis (tests)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", hidden=True, min=1, help="NeRF steps (tests)."),
    ] = None,
) -> None:
    """Simulate a study of the built-in torso, reconstruct it three ways, and report.

    With no input at all: builds the torso phantom, simulates a noisy anterior/posterior
    acquisition with attenuation, reconstructs it with a neural field (NeRF), with 2-view MLEM
    and with the clinical conjugate-view method, scores all three against the truth, and writes
    FOLDER/report.html (open it in a browser) with its PNG figures, summary.json and
    summary.md, plus the data: study.h5, nerf.h5 and mlem.h5. Prints the headline numbers.
    """
    from cli._demo import run  # heavy imports (torch, matplotlib) only when needed

    run(
        output,
        device=device.value,
        quality=None if quality is None else quality.value,
        force=force,
        size=size,
        steps=steps,
    )


# phantom, simulate, project, info, show and the `recon` group (cli/commands/).
_register_commands(app)
# eval and compare (cli/commands/evaluate.py).
app.command("eval", help=_help_text(_evaluate.evaluate))(_evaluate.evaluate)
app.command("compare", help=_help_text(_evaluate.compare))(_evaluate.compare)


if __name__ == "__main__":  # pragma: no cover
    app()
