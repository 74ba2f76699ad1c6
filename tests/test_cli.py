"""The ``spect`` command line: version, help and one-line errors."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from cli.main import app, package_version

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"spect {package_version()}"
    assert re.fullmatch(r"spect \d+\.\d+\.\d+\S*", result.stdout.strip())


def test_help_lists_demo() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "demo" in result.stdout
    assert "--size" not in runner.invoke(app, ["demo", "--help"]).stdout  # hidden


def test_bad_option_is_one_line_error() -> None:
    result = runner.invoke(app, ["demo", "--no-such-option"])
    assert result.exit_code != 0
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


# `spect demo` itself: tests/test_demo.py.
