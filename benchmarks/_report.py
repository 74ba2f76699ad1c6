"""Reporting shared by the benchmark scripts in this folder: options, tables, records, docs.

A benchmark script measures, builds a JSON-ready **record** (a dict with ``benchmark``,
``machine`` and ``settings`` plus its results), renders its Markdown tables from that record
alone, prints them, and optionally

* writes the record (``--json PATH``, atomically),
* re-renders a saved record instead of measuring (``--from-json FILE``),
* replaces its marked blocks in ``docs/performance.md`` (``--write-docs``): the text between
  ``<!-- bench-NAME:begin -->`` and ``<!-- bench-NAME:end -->``, so no table there is typed by
  hand (the pattern of ``update_readme_demo.py``).

To adopt it, a script calls ``add_common_options`` (and ``check_common_options``) on its parser,
writes ``measure(args) -> record`` and ``render(record) -> {block name: Markdown}``, and its
``main`` returns ``run_benchmark(args, "NAME", measure, render)``.

The benchmarks are run as scripts (``python benchmarks/bench_*.py``), so this module is imported
as a top-level module from the script's folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The page whose marked blocks ``--write-docs`` replaces.
DOCS_PAGE = ROOT / "docs" / "performance.md"

_BLOCK_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


# -- options ------------------------------------------------------------------------------------


def thread_counts(text: str) -> list[int]:
    """``"1,2"`` → ``[1, 2]`` (argparse type of ``--threads``)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--threads: expected comma-separated integers like 1,2, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--threads: expected counts >= 1, got {text!r}")
    return counts


def add_common_options(
    parser: argparse.ArgumentParser,
    *,
    repeats_default: int | None = None,
    repeats_help: str = "timed repeats per case (overrides the defaults)",
    quiet_wait_default_s: float = 30.0,
    devices: Sequence[str] | None = ("cpu", "cuda"),
    reference: bool = False,
) -> None:
    """The options every benchmark script shares.

    ``--quick``, ``--threads``, ``--device``, ``--repeats``, ``--max-quiet-wait``, ``--json``,
    ``--force``, ``--from-json``, ``--write-docs``, and with ``reference=True`` also
    ``--no-reference`` (time spect alone, without the reference package).
    """
    parser.add_argument("--quick", action="store_true", help="smoke run (see the script's doc)")
    parser.add_argument(
        "--threads",
        type=thread_counts,
        default=None,
        metavar="N[,N...]",
        help="torch thread count(s) (default: the script's; usually all usable cores)",
    )
    parser.add_argument("--device", default="cpu", choices=devices, help="torch device")
    parser.add_argument("--repeats", type=int, default=repeats_default, help=repeats_help)
    parser.add_argument(
        "--max-quiet-wait",
        type=float,
        default=quiet_wait_default_s,
        metavar="S",
        help="before each timed round wait up to S seconds for other processes to go idle "
        f"(default {quiet_wait_default_s:g}; 0 = never wait)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the run's record here")
    parser.add_argument("--force", action="store_true", help="let --json replace an existing file")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="render a saved record instead of measuring",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help=f"replace this script's marked tables in {DOCS_PAGE.relative_to(ROOT)}",
    )
    if reference:
        parser.add_argument(
            "--no-reference",
            action="store_true",
            help="time spect alone; the reference package (PyTomography) is not imported",
        )


def check_common_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option combinations that cannot work (exits through ``parser.error``)."""
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.write_docs and args.from_json is None and args.json is None:
        parser.error("--write-docs of a new run needs --json PATH: the page cites the record")
    if args.from_json is None and args.json is not None and args.json.exists() and not args.force:
        # checked before measuring, so that a long run is not lost at the end
        parser.error(f"--json: {args.json} exists; pass --force to replace it")


# -- records ------------------------------------------------------------------------------------


def json_ready(value: Any) -> Any:
    """``value`` with dataclasses, paths, tuples and numpy scalars/arrays made JSON-ready."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_ready(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        return json_ready(value.tolist())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_record(path: Path, record: Mapping[str, Any], overwrite: bool = False) -> None:
    """Write ``record`` as indented JSON to ``path``, atomically (temporary file, rename);
    an existing file is replaced only with ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_ready(record), indent=1, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path, benchmark: str) -> dict[str, Any]:
    """The record saved at ``path``; it must be a JSON object of benchmark ``benchmark``."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or "machine" not in record:
        raise ValueError(f"{path}: expected a benchmark record (an object with 'machine')")
    if record.get("benchmark") != benchmark:
        raise ValueError(
            f"{path}: expected a record of benchmark {benchmark!r}, got {record.get('benchmark')!r}"
        )
    return record


# -- rendering ----------------------------------------------------------------------------------


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], align: str
) -> list[str]:
    """A Markdown table: ``align`` has one letter per column, ``l`` (left) or ``r`` (right)."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(
            f"align: expected {len(header)} letters of 'l'/'r' for {len(header)} columns, "
            f"got {align!r}"
        )
    rule = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule[a] for a in align) + " |"]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"table row: expected {len(header)} cells, got {len(cells)}: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def fmt_ratio(value: float | None) -> str:
    """A speed-up such as ``47.3×``; ``—`` when unknown (e.g. no reference in the run)."""
    return "—" if value is None or not math.isfinite(value) else f"{value:.1f}×"


def fmt_ms(value: float | None) -> str:
    """Milliseconds: 1 decimal from 10 ms up, 2 below; ``—`` when unknown."""
    if value is None:
        return "—"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def fmt_met(met: bool | None) -> str:
    return "—" if met is None else ("**met**" if met else "**NOT met**")


def machine_summary(machine: Mapping[str, Any]) -> str:
    """One line on where a run was made, from ``_timing.machine_info``'s dict."""
    text = f"{machine.get('cpu_model', 'unknown CPU')}, {machine.get('cores', '?')} cores"
    if machine.get("gpu"):
        text += f", {machine['gpu']}"
    text += f"; torch {machine.get('torch', '?')} with {machine.get('torch_threads', '?')} threads"
    text += f"; Python {machine.get('python', '?')}"
    if machine.get("pytomography"):
        text += f"; PyTomography {machine['pytomography']}, kornia {machine.get('kornia')}"
    if machine.get("spect_revision"):
        text += f"; spect at {machine['spect_revision']}"
    return text


def shown_path(path: Path) -> Path:
    """``path`` relative to the repository when inside it (as the docs cite it)."""
    resolved = Path(path).resolve()
    return resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved


def provenance(record: Mapping[str, Any], source: Path | None) -> str:
    """The sentence under a docs table: which script, which run (date, machine), which record."""
    script = record.get("script", "benchmarks/")
    machine = record["machine"]
    text = f"Made by `{script}` from the run of {machine.get('date', 'an unknown date')} on "
    text += machine_summary(machine) + "."
    if source is not None:
        text += f" Record: `{shown_path(source)}`."
    if record.get("note"):
        text += f" {record['note']}"
    return text


def make_record(
    benchmark: str,
    script: str,
    report: Any,
    rows: Sequence[Any] = (),
    properties: Sequence[str] = (),
) -> dict[str, Any]:
    """A run's record: ``benchmark`` and ``script`` (as the docs cite it, e.g.
    ``benchmarks/bench_mlem.py``) plus the JSON-ready fields of ``report`` (a dataclass or dict);
    the record's ``rows`` also get the named ``properties`` of the matching objects of ``rows``
    (figures computed from the samples, such as a speed-up)."""
    record: dict[str, Any] = {"benchmark": benchmark, "script": script, **json_ready(report)}
    for row, saved in zip(rows, record.get("rows", []), strict=True):
        saved.update({name: json_ready(getattr(row, name)) for name in properties})
    return record


# -- docs blocks --------------------------------------------------------------------------------


def markers(name: str, prefix: str = "bench-") -> tuple[str, str]:
    """The begin and end markers of block ``name`` (lower case letters, digits, hyphens):
    ``<!-- bench-NAME:begin -->`` and ``<!-- bench-NAME:end -->`` (another ``prefix`` for other
    generated blocks, e.g. ``""`` for the README's ``<!-- demo:begin -->``)."""
    if not _BLOCK_NAME.fullmatch(name):
        raise ValueError(f"block name: expected lower-case letters, digits and '-', got {name!r}")
    return f"<!-- {prefix}{name}:begin -->", f"<!-- {prefix}{name}:end -->"


def _block_pattern(text: str, name: str, prefix: str) -> re.Pattern[str]:
    begin, end = markers(name, prefix)
    pattern = re.compile(re.escape(begin) + r"\n?(.*?)\n?" + re.escape(end), re.S)
    found = len(pattern.findall(text))
    if found != 1:
        raise ValueError(f"block {name!r}: expected one {begin} … {end} pair, found {found}")
    return pattern


def read_block(text: str, name: str, prefix: str = "bench-") -> str:
    """The content between block ``name``'s markers in ``text`` (without the marker lines)."""
    match = _block_pattern(text, name, prefix).search(text)
    assert match is not None  # _block_pattern found exactly one
    return match.group(1)


def replace_block(text: str, name: str, body: str, prefix: str = "bench-") -> str:
    """``text`` with the content between block ``name``'s markers replaced by ``body``."""
    begin, end = markers(name, prefix)
    pattern = _block_pattern(text, name, prefix)
    return pattern.sub(lambda _: f"{begin}\n{body.strip()}\n{end}", text, count=1)


def write_docs(blocks: Mapping[str, str], page: Path = DOCS_PAGE) -> None:
    """Replace every named block of ``page`` (all or none: the page is written once)."""
    text = page.read_text(encoding="utf-8")
    for name, body in blocks.items():
        text = replace_block(text, name, body)
    fd, tmp = tempfile.mkstemp(dir=page.parent, prefix=f".{page.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, page)


# -- the end of every script's main ------------------------------------------------------------


def log(message: str) -> None:
    """Progress messages go to stderr, so stdout carries only the report."""
    print(f"# {message}", file=sys.stderr, flush=True)


def docs_blocks(
    record: Mapping[str, Any], tables: Mapping[str, str], source: Path | None
) -> dict[str, str]:
    """Each table with a line on its run under it: the first names the script, the date and the
    machine (``provenance``), the others refer to that run."""
    again = f"From the same run ({record['machine'].get('date')})"
    again += "." if source is None else f", record `{shown_path(source)}`."
    notes = [provenance(record, source)] + [again] * (len(tables) - 1)
    pairs = zip(tables.items(), notes, strict=True)
    return {name: f"{body}\n\n{note}" for (name, body), note in pairs}


def finish(
    args: argparse.Namespace,
    record: Mapping[str, Any],
    render: Callable[[Mapping[str, Any]], dict[str, str]],
) -> int:
    """Print the rendered tables, write the record (``--json``) and the docs (``--write-docs``).

    The docs blocks are made by ``docs_blocks``.
    """
    if args.from_json is None and args.json is not None:
        write_record(args.json, record, overwrite=args.force)
        log(f"wrote {args.json}")
    # A record rendered from JSON again, so that a fresh run and a saved one print alike.
    saved = json.loads(json.dumps(json_ready(record)))
    blocks = render(saved)
    for name, body in blocks.items():
        print(f"\n<!-- {name} -->\n{body}")
    if args.write_docs:
        source = args.from_json if args.from_json is not None else args.json
        write_docs(docs_blocks(saved, blocks, source))
        log(f"updated {len(blocks)} block(s) of {DOCS_PAGE.relative_to(ROOT)}: {', '.join(blocks)}")
    return 0


def run_benchmark(
    args: argparse.Namespace,
    benchmark: str,
    measure: Callable[[argparse.Namespace], Mapping[str, Any]],
    render: Callable[[Mapping[str, Any]], dict[str, str]],
) -> int:
    """A script's whole ``main`` after parsing: measure (or read ``--from-json``), then ``finish``.

    A bad record or docs page ends the script with a one-line ``Error: ...`` and exit status 1.
    """
    try:
        record = read_record(args.from_json, benchmark) if args.from_json else measure(args)
        return finish(args, record, render)
    except (OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
