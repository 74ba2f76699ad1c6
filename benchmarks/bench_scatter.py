"""Total and organ activity with and without a triple-energy-window scatter estimate (Lu-177).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_scatter.py [--size 64] [--seeds 3] [--quick] [--write-docs]

Each case is the Lu-177 DOTATATE torso (`recon.data.phantoms.make_torso`), AP/PA, 2e6 counts
per view, attenuation and the MEGP collimator blur, with scatter making 30 % of the photopeak
window (scatter / (primary + scatter)) and the lower and upper scatter windows of the model of
`recon.data.simulate` (Poisson counts). Every reconstruction models the matched collimator
(MEGP) and the attenuation; only the background changes:

- **ignored**: no background (what a user gets without a scatter estimate);
- **TEW**: the triple-energy-window estimate from the simulated windows
  (`recon.corrections.scatter.estimate_scatter`), unsmoothed and smoothed (FWHM 30 mm);
- **true expected scatter**: the simulation's own expected scatter (the reference, an oracle).

Methods: MLEM in the body (50 iterations) and the organ fit (QPlanar: one concentration per
segment, `recon.anatomy.reconstruct_organs` without the residual). Columns: the error of the
total activity (the result's sum over the volume against the phantom's) and of the liver, spleen
and kidneys (each segment's MBq against the true activity inside the same segment, as
`recon.anatomy.quantify` reports it), mean ± sd over ``--seeds`` noise seeds. The
phantom is simulated on the grid it is reconstructed on (the scatter model, not the
discretisation, is what is measured here). This is a model of scatter, not a Monte Carlo: see
``docs/scatter-calibration.md``.

``--write-docs`` puts the table into ``docs/scatter-calibration.md`` between
``<!-- bench-scatter:begin -->`` and ``<!-- bench-scatter:end -->``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon.algorithms.mlem import EMConfig  # noqa: E402
from recon.anatomy import OrgansConfig, reconstruct_organs  # noqa: E402
from recon.anatomy.quantify import quantify  # noqa: E402
from recon.corrections.scatter import estimate_scatter  # noqa: E402
from recon.data.phantoms import (  # noqa: E402
    NUCLIDES,
    TorsoPhantom,
    default_grid,
    make_torso,
    segmentation_from_phantom,
)
from recon.data.simulate import simulate_acquisition  # noqa: E402
from recon.io import Result, Study  # noqa: E402
from recon.reconstruct import reconstruct_mlem  # noqa: E402
from spectproj import ParallelGeometry  # noqa: E402

BEGIN, END = "<!-- bench-scatter:begin -->", "<!-- bench-scatter:end -->"
PAGE = ROOT / "docs" / "scatter-calibration.md"
ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")
SCATTER_SHARE = 0.30
COUNTS_PER_VIEW = 2e6
BACKGROUNDS = ("ignored", "TEW", "TEW, smoothed 30 mm", "true expected scatter")


def case(size: int, seed: int) -> tuple[Study, float]:
    """The study (with the phantom's organs as its anatomy) and the true total MBq."""
    phantom = make_torso(default_grid(size), NUCLIDES["Lu-177"], TorsoPhantom.lu177_dotatate())
    study = simulate_acquisition(
        phantom,
        ParallelGeometry.ap_pa(phantom.grid, radius_mm=250.0),
        collimator="MEGP",
        scatter_fraction=SCATTER_SHARE / (1.0 - SCATTER_SHARE),
        scatter_windows=True,
        total_counts=2 * COUNTS_PER_VIEW,
        isotope="Lu-177",
        seed=seed,
    )
    study = dataclasses.replace(study, anatomy=segmentation_from_phantom(phantom))
    return study, phantom.total_activity_mbq


def with_background(study: Study, which: str) -> Study:
    if which == "ignored":
        return dataclasses.replace(study, background=None, background_source=None)
    if which == "TEW":
        return estimate_scatter(study, "tew")
    if which.startswith("TEW, smoothed"):
        return estimate_scatter(study, "tew", smoothing_fwhm_mm=30.0)
    return study  # the simulation's expected scatter


def scores(study: Study, result: Result, total: float) -> list[float]:
    """Errors (%) of the total activity and of each organ of `ORGANS` (the truth inside the
    segment, `recon.anatomy.quantify`)."""
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    estimate_total = float(np.asarray(result.activity, dtype=np.float64).sum()) * voxel_ml * 1e-6
    rows = {r.region: r.error_percent for r in quantify(study, [result]) if r.kind == "organ"}
    return [100.0 * (estimate_total - total) / total, *(rows[name] for name in ORGANS)]


def measure(size: int, seeds: int) -> dict[str, dict[str, list[list[float]]]]:
    """``{method: {background: [per seed: [total error %, organ errors %...]]}}``."""
    out: dict[str, dict[str, list[list[float]]]] = {"MLEM (body)": {}, "organ fit": {}}
    fractions = []
    for seed in range(seeds):
        study, total = case(size, seed)
        assert study.background is not None
        fractions.append(float(study.background.sum() / study.projections.sum()))
        for which in BACKGROUNDS:
            s = with_background(study, which)
            mlem = reconstruct_mlem(s, EMConfig(iterations=50), support="body")
            out["MLEM (body)"].setdefault(which, []).append(scores(s, mlem, total))
            organs = reconstruct_organs(s, config=OrgansConfig(residual=False)).result
            out["organ fit"].setdefault(which, []).append(scores(s, organs, total))
    out["_fraction"] = {"mean": [[float(np.mean(fractions))]]}
    return out


def _cell(values: list[float]) -> str:
    a = np.asarray(values)
    if a.size == 1:
        return f"{a[0]:+.1f} %"
    return f"{a.mean():+.1f} ± {a.std(ddof=1):.1f} %"


def table(record: dict[str, dict[str, list[list[float]]]], size: int, seeds: int) -> str:
    fraction = record["_fraction"]["mean"][0][0]
    header = ["method", "background", "total activity", *ORGANS]
    lines = [
        f"Lu-177 torso, {size}³ voxels of {400 / size:g} mm, AP/PA, 2e6 counts per view, MEGP "
        f"collimator (modelled), scatter {100 * fraction:.1f} % of the photopeak window; error of "
        f"the estimate, mean ± sd over {seeds} noise seed(s).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":--", ":--", *["--:"] * (len(header) - 2)]) + "|",
    ]
    for method, by_background in record.items():
        if method.startswith("_"):
            continue
        for which in BACKGROUNDS:
            runs = np.asarray(by_background[which])  # [seeds, 1 + organs]
            cells = [_cell(list(runs[:, k])) for k in range(runs.shape[1])]
            lines.append(f"| {method} | {which} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="voxels per axis (default 64)")
    parser.add_argument("--seeds", type=int, default=3, help="noise seeds (default 3)")
    parser.add_argument("--quick", action="store_true", help="32³, one seed (smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--write-docs", action="store_true", help=f"update {PAGE.name}")
    args = parser.parse_args()
    size, seeds = (32, 1) if args.quick else (args.size, args.seeds)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    record = measure(size, seeds)
    block = table(record, size, seeds)
    print(block)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.write_docs:
        text = PAGE.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if not pattern.search(text):
            raise SystemExit(f"{PAGE}: markers {BEGIN} ... {END} not found")
        PAGE.write_text(pattern.sub(lambda _: f"{BEGIN}\n{block}{END}", text), encoding="utf-8")
        print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
