"""Per-step training logs written as CSV and JSON (shared by single-study and cohort training)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recon.io import atomic_output


def write_step_logs(
    out_dir: Path, history: Sequence[Mapping[str, float]], columns: Sequence[str]
) -> None:
    """Write ``out_dir/log.csv`` and ``out_dir/log.json`` atomically; NaN becomes empty/null."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        writer.writerow(["" if math.isnan(row[k]) else _fmt(k, row[k]) for k in columns])
    with atomic_output(out_dir / "log.csv", overwrite=True) as tmp:
        Path(tmp).write_text(text.getvalue(), encoding="utf-8")
    rows: list[dict[str, Any]] = [
        {k: (None if math.isnan(v) else v) for k, v in row.items()} for row in history
    ]
    for row in rows:
        row["step"] = int(row["step"])
    with atomic_output(out_dir / "log.json", overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps({"columns": list(columns), "rows": rows}), encoding="utf-8")


def _fmt(name: str, value: float) -> str:
    return str(int(value)) if name == "step" else f"{value:.9g}"
