"""Rerun the console transcripts of a docs page and write their real output into it.

Usage (from the repository root)::

    .venv/bin/python benchmarks/update_console_transcripts.py docs/tutorial-patient.md [--check]

Every ```` ```console ```` block of the page that is not marked ``<!-- not-run: ... -->`` is run
in order, in one temporary folder (a later block uses the files of an earlier one), the way
`tests/test_docs_blocks.py` runs them: each ``$ `` line (with backslash continuations) in bash,
with ``COLUMNS=100`` and no progress bars. Each block is rewritten as its commands, each followed
by what it printed (stdout and stderr). A command that fails stops the run and changes nothing.
``--check`` writes nothing and exits 1 when a transcript differs from its page.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from recon.io.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]

_BLOCK = re.compile(r"(?P<head>^```console\n)(?P<body>.*?)(?P<tail>^```$)", re.M | re.S)
_NOT_RUN = "<!-- not-run:"


def commands(body: str) -> list[str]:
    """The commands of a transcript: its ``$ `` lines, each with its continuation lines."""
    out: list[str] = []
    continued = False
    for line in body.splitlines():
        if continued:
            out[-1] += "\n" + line
        elif line.startswith("$ "):
            out.append(line[2:])
        else:
            continue
        continued = line.rstrip().endswith("\\")
    return out


def run(command: str, folder: Path) -> str:
    """What ``command`` prints in ``folder`` (stdout and stderr, in order)."""
    env = dict(os.environ, COLUMNS="100", SPECT_PROGRESS="0", MPLBACKEND="Agg")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{command!r} failed ({done.returncode}):\n{done.stdout}")
    return done.stdout


def rerun(text: str, folder: Path) -> str:
    """``text`` with each runnable console block's output replaced by a fresh run's."""
    pieces: list[str] = []
    last = 0
    for match in _BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        if before and before[-1].lstrip().startswith(_NOT_RUN):
            continue
        body = "".join(f"$ {c}\n{run(c, folder)}" for c in commands(match.group("body")))
        pieces += [text[last : match.start("body")], body]
        last = match.start("tail")
    return "".join(pieces) + text[last:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("page", type=Path, help="markdown page (e.g. docs/tutorial-patient.md)")
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args()
    page = args.page if args.page.is_absolute() else ROOT / args.page
    text = page.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as folder:
        new = rerun(text, Path(folder))
    if args.check:
        print("same" if new == text else f"{page}: transcripts differ from a fresh run")
        raise SystemExit(0 if new == text else 1)
    write_text(page, new, overwrite=True)
    print(f"wrote {page}")


if __name__ == "__main__":
    main()
