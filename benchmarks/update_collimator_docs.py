"""Render the collimator table (``spectproj/data/collimators.toml``) into docs/collimators.md.

Usage (from the repository root)::

    .venv/bin/python benchmarks/update_collimator_docs.py

It replaces the text between ``<!-- collimator-table:begin -->`` and
``<!-- collimator-table:end -->`` in ``docs/collimators.md`` with
`spectproj.collimator_table.table_markdown`, so no row of that page is typed by hand;
tests/test_collimator_table.py fails when the page and the data file disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _report import replace_block

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "collimators.md"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from recon.io.atomic import atomic_output
    from spectproj.collimator_table import table_markdown

    text = replace_block(PAGE.read_text(encoding="utf-8"), "collimator-table", table_markdown(), "")
    with atomic_output(PAGE, overwrite=True) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
