"""The benchmarks' shared reporting (benchmarks/_report.py) and the tables of docs/performance.md.

Every table between ``<!-- bench-NAME:begin/end -->`` markers in docs/performance.md must be
exactly what its script renders from the record in benchmarks/results/ (so no table there is
edited by hand, and a script's renderer cannot drift from the published page unnoticed).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PAGE = ROOT / "docs" / "performance.md"

sys.path.insert(0, str(BENCHMARKS))
import _report  # noqa: E402  (benchmarks are scripts: their folder is their import root)

#: record file -> (script module, the blocks it fills in the page)
RECORDS = {
    "projector.json": ("bench_projector", ["projector", "projector-targets",
                                           "projector-cross-check"]),
    "mlem.json": ("bench_mlem", ["mlem", "mlem-one-off", "mlem-targets", "mlem-cross-check"]),
    "nerf-speed.json": ("bench_nerf", ["nerf-speed"]),
    "nerf-quality.json": ("bench_nerf", ["nerf-fits", "nerf-quality", "nerf-organs"]),
    "cohort.json": ("bench_cohort", ["cohort-throughput", "cohort-prior"]),
}  # fmt: skip


def test_markdown_table_layout() -> None:
    lines = _report.markdown_table(["a", "b"], [["x", 1.5], ["y", None]], "lr")
    assert lines == ["| a | b |", "| --- | ---: |", "| x | 1.5 |", "| y | None |"]


@pytest.mark.parametrize(
    ("header", "rows", "align", "message"),
    [
        (["a", "b"], [], "l", "expected 2 letters"),
        (["a", "b"], [], "lc", "expected 2 letters"),
        (["a", "b"], [["x"]], "lr", "expected 2 cells, got 1"),
    ],
)
def test_markdown_table_rejects(header: list[str], rows: list, align: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _report.markdown_table(header, rows, align)


def test_block_replace_and_read_round_trip() -> None:
    text = "intro\n<!-- bench-x:begin -->\nold\n<!-- bench-x:end -->\ntail\n"
    new = _report.replace_block(text, "x", "| new |\n")
    assert new == "intro\n<!-- bench-x:begin -->\n| new |\n<!-- bench-x:end -->\ntail\n"
    assert _report.read_block(new, "x") == "| new |"
    assert _report.replace_block(new, "x", "| new |") == new  # idempotent
    readme = "<!-- demo:begin -->\nold\n<!-- demo:end -->"  # update_readme_demo.py's markers
    assert _report.replace_block(readme, "demo", "new", prefix="") == readme.replace("old", "new")


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("no markers", "x", "found 0"),
        ("<!-- bench-x:begin -->a<!-- bench-x:end -->" * 2, "x", "found 2"),
        ("", "Bad Name", "lower-case"),
    ],
)
def test_block_errors_name_the_block(text: str, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _report.replace_block(text, name, "body")


def test_record_round_trip_and_checks(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class Timing:
        median_ms: float

    record = {
        "benchmark": "demo",
        "machine": {"date": "2026-12-07"},
        "rows": [Timing(1.5), (np.float32(2.0), np.arange(2)), math.nan, Path("a/b")],
    }
    path = tmp_path / "sub" / "run.json"
    _report.write_record(path, record)
    rows = _report.read_record(path, "demo")["rows"]
    assert rows == [{"median_ms": 1.5}, [2.0, [0, 1]], None, "a/b"]
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temporary file left
    with pytest.raises(FileExistsError, match="pass --force"):
        _report.write_record(path, {"benchmark": "demo", "machine": {}})
    _report.write_record(path, {"benchmark": "demo", "machine": {}, "rows": []}, overwrite=True)
    assert _report.read_record(path, "demo")["rows"] == []
    with pytest.raises(ValueError, match="expected a record of benchmark 'mlem', got 'demo'"):
        _report.read_record(path, "mlem")
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"run\.json: not valid JSON"):
        _report.read_record(path, "demo")
    with pytest.raises(OSError):
        _report.read_record(tmp_path / "missing.json", "demo")


def test_common_options() -> None:
    parser = argparse.ArgumentParser()
    _report.add_common_options(parser, reference=True, repeats_default=4)
    args = parser.parse_args(["--threads", "1,2", "--no-reference"])
    got = (args.threads, args.repeats, args.no_reference, args.max_quiet_wait)
    assert got == ([1, 2], 4, True, 30.0)
    for bad in (["--threads", "0"], ["--threads", "x"], ["--device", "tpu"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    taken = str(Path(__file__))  # an existing file: --json needs --force to replace it
    for bad in (["--repeats", "0"], ["--write-docs"], ["--json", taken]):
        with pytest.raises(SystemExit):
            _report.check_common_options(parser, parser.parse_args(bad))


def test_every_marked_table_has_a_record() -> None:
    names = re.findall(r"<!-- bench-([a-z0-9-]+):begin -->", PAGE.read_text(encoding="utf-8"))
    assert sorted(names) == sorted(n for _, blocks in RECORDS.values() for n in blocks)


@pytest.mark.parametrize("record_name", sorted(RECORDS))
def test_docs_tables_are_rendered_from_their_records(record_name: str) -> None:
    module_name, names = RECORDS[record_name]
    module = importlib.import_module(module_name)
    path = BENCHMARKS / "results" / record_name
    record = _report.read_record(path, json.loads(path.read_text(encoding="utf-8"))["benchmark"])
    tables = module.render(record)
    assert list(tables) == names
    page = PAGE.read_text(encoding="utf-8")
    for name, body in _report.docs_blocks(record, tables, path).items():
        assert _report.read_block(page, name) == body, (
            f"docs/performance.md block {name!r} differs from {record_name}: run "
            f"benchmarks/{module_name}.py --from-json benchmarks/results/{record_name} --write-docs"
        )
