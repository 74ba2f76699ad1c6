"""Run the fault and bad-input table (tests/fault_cases.py) and print what each case gives.

    python benchmarks/fault_table.py              # print the table (Markdown)
    python benchmarks/fault_table.py --write-docs # also replace the table in docs/faults.md

Every case runs the ``spect`` command in-process with its fault (a full disk, a signal at a
chosen step of a write, an oversized header, a corrupt file, ...) and is checked as
tests/test_faults.py checks it. The table in ``docs/faults.md`` (between
``<!-- fault-table:begin -->`` and ``<!-- fault-table:end -->``) and its summary by category
come from here, not typed by hand.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS_PAGE = ROOT / "docs" / "faults.md"
BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(outcomes: list) -> str:
    """The summary by category, then one row per case."""
    by_category: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for o in outcomes:
        by_category[o.case.category][0] += 1
        by_category[o.case.category][1] += not o.problems
    lines = ["| category | cases tried | passing |", "|---|---:|---:|"]
    for category, (tried, passed) in by_category.items():
        lines.append(f"| {category} | {tried} | {passed} |")
    total = sum(t for t, _ in by_category.values())
    passing = sum(p for _, p in by_category.values())
    lines += [f"| **all** | **{total}** | **{passing}** |", ""]
    lines += ["| case | what was tried | exit code | message (stderr) |", "|---|---|---:|---|"]
    for o in outcomes:
        flag = "" if not o.problems else " **FAILS: " + _cell("; ".join(o.problems)) + "**"
        message = re.sub(r"/\S*/work/", "", o.message)  # the case's temporary folder
        lines.append(
            f"| `{o.case.id}` | {_cell(o.case.tried)} | {o.exit_code} | `{_cell(message)}`{flag} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help=f"update {DOCS_PAGE.name}")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tests.fault_cases import CASES, run_case

    with tempfile.TemporaryDirectory(prefix="spect-fault-table-") as tmp:
        outcomes = [run_case(case, Path(tmp) / case.id / "work") for case in CASES]
    table = render(outcomes)
    print(table)
    if args.write_docs:
        page = DOCS_PAGE.read_text(encoding="utf-8")
        start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
        DOCS_PAGE.write_text(page[:start] + "\n" + table + "\n" + page[end:], encoding="utf-8")
        print(f"wrote {DOCS_PAGE}", file=sys.stderr)
    return 0 if all(not o.problems for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
