"""Speed of the ``spectproj`` SPECT projector vs PyTomography 3.4.0, with a physics cross-check.

What it measures, in one run, float32, torch threads = all usable cores:

* AP/PA (β = 0 and 180) of a 64³ volume with attenuation, no PSF: forward and back-projection;
* AP/PA of a 128³ volume, forward and back-projection;
* 120 views over 360° (β = 0, 3, …, 357) of a 64³ volume, forward and back-projection.

For each, the median wall time (after a warm-up) of PyTomography's ``SPECTSystemMatrix.forward`` /
``.backward`` (which recompute the attenuation factors on every call) and of ``spectproj``'s
``SPECTProjector`` call / ``.adjoint`` (attenuation factors computed once, when the operator is
built, as in iterative reconstruction), and the ratio PyTomography / spect. An extra row per
configuration times the functional ``spectproj.project`` / ``backproject``, which build the
attenuation factors on every call, as PyTomography does. The calls of both projectors are
interleaved round by round, and each timed round first waits (``--max-quiet-wait``, default 30 s)
until other processes on the machine are idle, since a shared machine's bursts of other work slow
torch's thread pool down by an order of magnitude.

The cross-check column is the relative L2 difference ‖spect − PyTomography‖ / ‖PyTomography‖ of
the two projectors' outputs on one smooth phantom (ellipsoids of activity inside a water ellipse
of μ), after converting PyTomography's layout and units to ours:
object ``[x, y, z]`` → volume ``[z, y, x]``; projection ``[view, bin, z]`` → ``[view, row=z, bin]``;
values × the step length in mm (PyTomography's forward sum has no step-length factor; ours is a
line integral in activity·mm). A point-source probe at the four axis-aligned angles also prints
where each projector puts the point, to show whether any bin or row flip separates them.

Run it with the reference environment's Python (``bash benchmarks/setup_reference_env.sh``
builds it)::

    benchmarks/.env-pytomography/bin/python benchmarks/bench_projector.py
    benchmarks/.env-pytomography/bin/python benchmarks/bench_projector.py --quick   # smoke run
    benchmarks/.env-pytomography/bin/python benchmarks/bench_projector.py --json out.json

``--pytomography-only`` measures PyTomography alone and never imports ``spectproj``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from _report import (
    add_common_options,
    check_common_options,
    fmt_met,
    fmt_ms,
    fmt_ratio,
    log,
    machine_summary,
    make_record,
    markdown_table,
    run_benchmark,
)
from _timing import (
    QuietGate,
    Timing,
    load_average,
    machine_info,
    package_version,
    time_interleaved,
    usable_cores,
)

# Water at 140 keV (Tc-99m): 0.1537 1/cm.
MU_WATER_PER_MM = 0.01537

# Speed-up targets from the issue: (configuration, operation) -> minimum PyTomography/spect ratio.
TARGETS: dict[tuple[str, str], float] = {
    ("AP/PA 128³", "forward"): 10.0,
    ("AP/PA 128³", "back-projection"): 10.0,
    ("120 views 64³", "forward"): 3.0,
    ("120 views 64³", "back-projection"): 3.0,
}


@dataclass(frozen=True)
class Config:
    """One benchmark case: a cubic volume of ``n`` voxels of ``voxel_mm`` and a set of angles."""

    name: str
    n: int
    voxel_mm: float
    angles_deg: tuple[float, ...]
    kind: str  # "ap_pa" or "full_circle"


CONFIGS: tuple[Config, ...] = (
    Config("AP/PA 64³", 64, 4.8, (0.0, 180.0), "ap_pa"),
    Config("AP/PA 128³", 128, 2.4, (0.0, 180.0), "ap_pa"),
    Config("120 views 64³", 64, 4.8, tuple(3.0 * k for k in range(120)), "full_circle"),
)


@dataclass
class Row:
    """One line of the results table."""

    config: str
    operation: str
    pytomography: Timing | None
    spect: Timing | None
    rel_diff: float | None
    note: str = ""
    target: float | None = None

    @property
    def speedup(self) -> float | None:
        if self.pytomography is None or self.spect is None:
            return None
        return self.pytomography.median_ms / self.spect.median_ms

    @property
    def speedup_of_minima(self) -> float | None:
        if self.pytomography is None or self.spect is None:
            return None
        return self.pytomography.min_ms / self.spect.min_ms

    @property
    def target_met(self) -> bool | None:
        if self.target is None or self.speedup is None:
            return None
        return self.speedup >= self.target


@dataclass
class Report:
    """Everything the run found; written by ``--json``."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    cross_check: list[dict[str, Any]] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Phantom and cross-check
# --------------------------------------------------------------------------------------------


def make_phantom(n: int, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A smooth phantom on an ``n³`` grid of ``voxel_mm`` voxels, in our layout ``[Z, Y, X]``.

    Returns ``(activity, mu)``: activity (arbitrary units) is a uniform body background plus a
    few ellipsoids; μ (1/mm) is water inside an elliptic cylinder (the body). Both are smoothed
    with a Gaussian of one voxel so that interpolation differences between the two projectors
    stay small at oblique angles.
    """
    from scipy.ndimage import gaussian_filter

    half = (n - 1) / 2.0
    c = (np.arange(n, dtype=np.float64) - half) * voxel_mm
    fov = n * voxel_mm
    z, y, x = np.meshgrid(c, c, c, indexing="ij")

    def ellipsoid(cx: float, cy: float, cz: float, ax: float, ay: float, az: float) -> np.ndarray:
        # Centres and semi-axes as fractions of the field of view.
        r2 = ((x - cx * fov) / (ax * fov)) ** 2 + ((y - cy * fov) / (ay * fov)) ** 2
        return (r2 + ((z - cz * fov) / (az * fov)) ** 2 <= 1.0).astype(np.float64)

    body = ellipsoid(0.0, 0.0, 0.0, 0.40, 0.28, 0.45)
    activity = 1.0 * body
    activity += 4.0 * ellipsoid(-0.14, -0.03, 0.10, 0.12, 0.10, 0.12)  # liver-like, patient right
    activity += 8.0 * ellipsoid(0.16, 0.06, -0.12, 0.05, 0.05, 0.06)  # kidney-like, left, posterior
    activity += 12.0 * ellipsoid(0.05, -0.15, 0.02, 0.03, 0.03, 0.03)  # small anterior lesion
    mu = MU_WATER_PER_MM * body
    activity = gaussian_filter(activity, sigma=1.0, mode="constant")
    mu = gaussian_filter(mu, sigma=1.0, mode="constant")
    return activity.astype(np.float32), mu.astype(np.float32)


def rel_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """‖ours − reference‖₂ / ‖reference‖₂, in float64."""
    a = ours.detach().to("cpu", torch.float64)
    b = reference.detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch in cross-check: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# --------------------------------------------------------------------------------------------
# PyTomography side (never imports spectproj)
# --------------------------------------------------------------------------------------------


class PyTomographyCase:
    """PyTomography 3.4.0's ``SPECTSystemMatrix`` with attenuation, no PSF, for one config.

    Takes and returns tensors in *our* layout and units so the two sides can be compared:
    volume ``[Z, Y, X]``, μ in 1/mm, projections ``[V, rows=Z, bins]`` in activity·mm.
    """

    def __init__(
        self,
        mu_zyx_per_mm: torch.Tensor,
        voxel_mm: float,
        angles_deg: tuple[float, ...],
        device: torch.device,
    ) -> None:
        # PyTomography prints a note on stdout when it finds no GPU: keep stdout a clean table.
        with contextlib.redirect_stdout(sys.stderr):
            import pytomography
            from pytomography.metadata.SPECT import SPECTObjectMeta, SPECTProjMeta
            from pytomography.projectors.SPECT import SPECTSystemMatrix
            from pytomography.transforms.SPECT import SPECTAttenuationTransform

        pytomography.set_device(device)
        nz, ny, nx = mu_zyx_per_mm.shape
        self.device = device
        self.voxel_mm = voxel_mm
        d_cm = voxel_mm / 10.0
        object_meta = SPECTObjectMeta(dr=[d_cm, d_cm, d_cm], shape=(nx, ny, nz))
        proj_meta = SPECTProjMeta(
            projection_shape=(nx, nz), dr=[d_cm, d_cm], angles=list(angles_deg)
        )
        mu_xyz_per_cm = self.to_object(mu_zyx_per_mm) * 10.0
        attenuation = SPECTAttenuationTransform(attenuation_map=mu_xyz_per_cm)
        self.system_matrix = SPECTSystemMatrix(
            obj2obj_transforms=[attenuation],
            proj2proj_transforms=[],
            object_meta=object_meta,
            proj_meta=proj_meta,
        )

    # Layout and unit conversions (ours <-> PyTomography's).
    def to_object(self, volume_zyx: torch.Tensor) -> torch.Tensor:
        return volume_zyx.permute(2, 1, 0).contiguous().to(self.device)

    @staticmethod
    def from_object(object_xyz: torch.Tensor) -> torch.Tensor:
        return object_xyz.permute(2, 1, 0)

    def to_projection(self, proj_vzb: torch.Tensor) -> torch.Tensor:
        """Ours ``[V, Z, bins]`` in activity·mm → PyTomography ``[V, bins, Z]``, no scaling.

        Only the layout changes: the back-projection is linear, so the unit factor is applied
        to its result instead (see ``back_projection_in_our_units``).
        """
        return proj_vzb.permute(0, 2, 1).contiguous().to(self.device)

    def from_projection(self, proj_vbz: torch.Tensor) -> torch.Tensor:
        """PyTomography ``[V, bins, Z]`` (sum of voxel values) → ours (line integral, ×mm)."""
        return proj_vbz.permute(0, 2, 1) * self.voxel_mm

    # The operations that are timed (in PyTomography's own layout).
    def forward(self, object_xyz: torch.Tensor) -> torch.Tensor:
        return self.system_matrix.forward(object_xyz)

    def backward(self, proj_vbz: torch.Tensor) -> torch.Tensor:
        return self.system_matrix.backward(proj_vbz)

    # Results in our layout and units, for the cross-check.
    def projection_in_our_units(self, activity_zyx: torch.Tensor) -> torch.Tensor:
        return self.from_projection(self.forward(self.to_object(activity_zyx)))

    def back_projection_in_our_units(self, proj_vzb: torch.Tensor) -> torch.Tensor:
        # Our operator is voxel_mm · (PyTomography's), so its adjoint is voxel_mm · Hᵀ too.
        return self.from_object(self.backward(self.to_projection(proj_vzb))) * self.voxel_mm


# --------------------------------------------------------------------------------------------
# spect side (imports spectproj lazily)
# --------------------------------------------------------------------------------------------


class SpectCase:
    """``spectproj.SPECTProjector`` with attenuation for one config, in our own layout."""

    def __init__(
        self,
        mu_zyx_per_mm: torch.Tensor,
        voxel_mm: float,
        angles_deg: tuple[float, ...],
        kind: str,
        device: torch.device,
    ) -> None:
        from spectproj import ImageGrid, ParallelGeometry, SPECTProjector

        grid = ImageGrid(shape=tuple(mu_zyx_per_mm.shape), spacing_mm=(voxel_mm,) * 3)
        if kind == "ap_pa":
            geometry = ParallelGeometry.ap_pa(grid)
        elif kind == "full_circle":
            geometry = ParallelGeometry.full_circle(grid, len(angles_deg))
        else:
            geometry = ParallelGeometry(grid, angles_deg=list(angles_deg))
        got = [float(a) for a in geometry.angles_deg]
        if not np.allclose(got, angles_deg, atol=1e-6):
            raise RuntimeError(
                f"spectproj geometry angles {got[:4]}… differ from {list(angles_deg[:4])}…"
            )
        self.geometry = geometry
        self.device = device
        self.mu = mu_zyx_per_mm.to(device)
        self.operator = SPECTProjector(geometry, mu=self.mu).to(device)

    def forward(self, activity_zyx: torch.Tensor) -> torch.Tensor:
        return self.operator(activity_zyx)

    def backward(self, proj_vzb: torch.Tensor) -> torch.Tensor:
        return self.operator.adjoint(proj_vzb)

    def forward_functional(self, activity_zyx: torch.Tensor) -> torch.Tensor:
        from spectproj import project

        return project(activity_zyx, self.geometry, mu=self.mu)

    def backward_functional(self, proj_vzb: torch.Tensor) -> torch.Tensor:
        from spectproj import backproject

        return backproject(proj_vzb, self.geometry, mu=self.mu)


# --------------------------------------------------------------------------------------------
# Point-source probe: where each projector puts one voxel, at 0/90/180/270 degrees
# --------------------------------------------------------------------------------------------

PROBE_N = 32
PROBE_VOXEL_MM = 4.0
PROBE_POINT_ZYX = (5, 10, 24)  # off-centre in every axis, so any flip shows
PROBE_ANGLES = (0.0, 90.0, 180.0, 270.0)


def expected_probe_position(beta: float, k: int, j: int, i: int, n: int) -> tuple[int, int]:
    """(row, bin) that docs/conventions.md gives a point at voxel (k, j, i) on a centred n³ grid."""
    bins = {0.0: i, 90.0: n - 1 - j, 180.0: n - 1 - i, 270.0: j}
    return k, bins[beta]


def run_probe(device: torch.device, with_spect: bool, with_reference: bool) -> dict[str, Any]:
    """Project one voxel (μ = 0) with each projector; report peak (row, bin) and peak value."""
    n, d = PROBE_N, PROBE_VOXEL_MM
    k, j, i = PROBE_POINT_ZYX
    point = torch.zeros((n, n, n), dtype=torch.float32)
    point[k, j, i] = 1.0
    mu = torch.zeros_like(point)

    def peaks(proj_vzb: torch.Tensor) -> list[dict[str, Any]]:
        out = []
        for v, beta in enumerate(PROBE_ANGLES):
            img = proj_vzb[v].detach().to("cpu", torch.float64)
            row, col = divmod(int(torch.argmax(img)), img.shape[1])
            out.append(
                {
                    "beta": beta,
                    "row": row,
                    "bin": col,
                    "peak": float(img[row, col]),
                    "sum": float(img.sum()),
                }
            )
        return out

    result: dict[str, Any] = {
        "grid": f"{n}³, {d} mm voxels, μ = 0",
        "point_zyx": list(PROBE_POINT_ZYX),
        "expected": [
            {"beta": b, "row": pos[0], "bin": pos[1]}
            for b in PROBE_ANGLES
            for pos in [expected_probe_position(b, k, j, i, n)]
        ],
    }
    if with_reference:
        pyt = PyTomographyCase(mu, d, PROBE_ANGLES, device)
        with torch.no_grad():
            result["pytomography"] = peaks(pyt.projection_in_our_units(point.to(device)))
    if with_spect:
        sp = SpectCase(mu, d, PROBE_ANGLES, "angles", device)
        with torch.no_grad():
            result["spect"] = peaks(sp.forward(point.to(device)))
    return result


def format_probe(probe: dict[str, Any]) -> list[str]:
    def cells(side: str, idx: int) -> tuple[str, str]:
        found = probe.get(side)
        if not found:
            return "—", "—"
        return f"({found[idx]['row']}, {found[idx]['bin']})", f"{found[idx]['peak']:.4g}"

    rows = []
    for idx, exp in enumerate(probe["expected"]):
        (pyt_pos, pyt_peak), (sp_pos, sp_peak) = cells("pytomography", idx), cells("spect", idx)
        rows.append(
            [f"{exp['beta']:.0f}", f"({exp['row']}, {exp['bin']})", pyt_pos, sp_pos, pyt_peak,
             sp_peak]
        )  # fmt: skip
    return [
        f"Point-source probe ({probe['grid']}, voxel (z, y, x) = {tuple(probe['point_zyx'])}); "
        "peak (row, bin) in our layout; PyTomography values × voxel mm:",
        "",
        *markdown_table(
            ["β", "expected (docs)", "PyTomography", "spect", "PyTomography peak", "spect peak"],
            rows,
            "rlllrr",
        ),
    ]


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def repeats_for(config: Config, quick: bool, repeats: int | None) -> tuple[int, int]:
    """(repeats, warm-up calls) for one config."""
    if repeats is not None:
        return repeats, 1
    if quick:
        return 2, 1
    return (7, 2) if config.kind == "full_circle" else (15, 3)


def smoothed(volume: torch.Tensor, sigma_voxels: float) -> torch.Tensor:
    """A 3-D Gaussian smoothing of a volume (for comparing back-projections at low frequency)."""
    from scipy.ndimage import gaussian_filter

    data = volume.detach().to("cpu", torch.float64).numpy()
    return torch.from_numpy(gaussian_filter(data, sigma=sigma_voxels, mode="nearest"))


@torch.no_grad()
def cross_check(
    sp: SpectCase,
    pyt: PyTomographyCase,
    activity: torch.Tensor,
    our_proj: torch.Tensor,
    pyt_proj: torch.Tensor,
    diffs: dict[str, float | None],
) -> dict[str, float]:
    """Compare both projectors in our units; fills ``diffs`` and returns the details."""
    if tuple(our_proj.shape) != tuple(pyt_proj.shape):
        raise RuntimeError(
            f"spect projection shape {tuple(our_proj.shape)} != expected "
            f"{tuple(pyt_proj.shape)} [V, rows=Z, bins=X]"
        )
    # Both back-project the same projections (ours); values compared in our units.
    our_bp = sp.backward(our_proj)
    pyt_bp = pyt.back_projection_in_our_units(our_proj)
    diffs.update(
        fwd=rel_diff(our_proj, pyt_proj),
        bwd=rel_diff(our_bp, pyt_bp),
        ffun=rel_diff(sp.forward_functional(activity), pyt_proj),
        bfun=rel_diff(sp.backward_functional(our_proj), pyt_bp),
    )
    return {
        "forward_rel_diff": diffs["fwd"],
        "forward_sum_ratio": float(our_proj.double().sum() / pyt_proj.double().sum()),
        "back_rel_diff": diffs["bwd"],
        "back_rel_diff_smoothed_1voxel": rel_diff(smoothed(our_bp, 1.0), smoothed(pyt_bp, 1.0)),
        "back_sum_ratio": float(our_bp.double().sum() / pyt_bp.double().sum()),
    }


def bench_config(
    config: Config, args: argparse.Namespace, log: Callable[[str], None]
) -> tuple[list[Row], dict[str, Any]]:
    """Time and cross-check one configuration; returns the table rows and cross-check details."""
    device = torch.device(args.device)
    with_spect = not args.pytomography_only
    n_rep, warmup = repeats_for(config, args.quick, args.repeats)
    activity_np, mu_np = make_phantom(config.n, config.voxel_mm)
    activity = torch.from_numpy(activity_np).to(device)
    mu = torch.from_numpy(mu_np).to(device)

    fns: dict[str, Callable[[], Any]] = {}
    pyt = None
    if not args.no_reference:
        pyt = PyTomographyCase(mu, config.voxel_mm, config.angles_deg, device)
        obj = pyt.to_object(activity)
        with torch.no_grad():
            pyt_proj_native = pyt.forward(obj)
        pyt_proj = pyt.from_projection(pyt_proj_native)
        fns["pyt_fwd"] = lambda: pyt.forward(obj)
        fns["pyt_bwd"] = lambda: pyt.backward(pyt_proj_native)

    details: dict[str, Any] = {
        "config": config.name,
        "n": config.n,
        "voxel_mm": config.voxel_mm,
        "views": len(config.angles_deg),
        "repeats": n_rep,
        "warmup": warmup,
    }
    diffs: dict[str, float | None] = {"fwd": None, "bwd": None, "ffun": None, "bfun": None}
    if with_spect:
        sp = SpectCase(mu, config.voxel_mm, config.angles_deg, config.kind, device)
        with torch.no_grad():
            our_proj = sp.forward(activity)
        if pyt is not None:
            details.update(cross_check(sp, pyt, activity, our_proj, pyt_proj, diffs))
        fns.update(
            spect_fwd=lambda: sp.forward(activity),
            spect_bwd=lambda: sp.backward(our_proj),
            spect_ffun=lambda: sp.forward_functional(activity),
            spect_bfun=lambda: sp.backward_functional(our_proj),
        )

    who = {True: "PyTomography and spect, interleaved", False: "PyTomography"}[with_spect]
    if pyt is None:
        who = "spect alone (no reference)"
    log(f"{config.name}: timing {who} ({n_rep} repeats after {warmup} warm-up)")
    with torch.no_grad():
        gate = QuietGate(max_wait_s=args.max_quiet_wait)
        t = time_interleaved(fns, device, n_rep, warmup, gate)
    details.update(
        quiet_wait_s=round(gate.waited_s, 1),
        rounds=gate.rounds,
        rounds_started_busy=gate.rounds_busy if args.max_quiet_wait > 0 else None,
    )

    specs = [
        ("forward", "pyt_fwd", "spect_fwd", "fwd", "SPECTProjector(x), attenuation cached"),
        (
            "back-projection",
            "pyt_bwd",
            "spect_bwd",
            "bwd",
            "SPECTProjector.adjoint(p), attenuation cached",
        ),
        (
            "forward, functional",
            "pyt_fwd",
            "spect_ffun",
            "ffun",
            "project(x, geom, mu): attenuation computed per call",
        ),
        (
            "back-projection, functional",
            "pyt_bwd",
            "spect_bfun",
            "bfun",
            "backproject(p, geom, mu): attenuation computed per call",
        ),
    ]
    if not with_spect:
        specs = specs[:2]
    rows = [
        Row(config.name, op, t.get(kp), t.get(ks), diffs[kd], note, TARGETS.get((config.name, op)))
        for op, kp, ks, kd, note in specs
    ]
    return rows, details


def fmt_diff(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def _ms(timing: dict[str, Any] | None) -> float | None:
    return None if timing is None else timing["median_ms"]


def render(record: Mapping[str, Any]) -> dict[str, str]:
    """The docs blocks of one record: results, targets and (with both packages) cross-check."""
    rows = record["rows"]
    table = markdown_table(
        ["config", "operation", "PyTomography ms", "spect ms", "speed-up", "(of minima)",
         "rel. diff"],
        (
            [r["config"], r["operation"], fmt_ms(_ms(r["pytomography"])), fmt_ms(_ms(r["spect"])),
             fmt_ratio(r["speedup"]), fmt_ratio(r["speedup_of_minima"]), fmt_diff(r["rel_diff"])]
            for r in rows
        ),
        "llrrrrr",
    )  # fmt: skip
    blocks = {"projector": "\n".join(table)}
    with_targets = [r for r in rows if r.get("target") is not None and r["speedup"] is not None]
    if with_targets:
        targets = markdown_table(
            ["target", "measured", "met?"],
            (
                [f"{r['config']} with attenuation, {r['operation']}: ≥ {r['target']:g}× faster "
                 "than PyTomography",
                 f"{fmt_ratio(r['speedup'])} ({fmt_ms(_ms(r['pytomography']))} → "
                 f"{fmt_ms(_ms(r['spect']))} ms)",
                 fmt_met(r["target_met"])]
                for r in with_targets
            ),
            "lll",
        )  # fmt: skip
        blocks["projector-targets"] = "\n".join(targets)
    checks = [d for d in record.get("cross_check", []) if d.get("forward_rel_diff") is not None]
    if checks:
        cross = markdown_table(
            ["config", "forward rel. diff", "forward sum ratio", "back-proj. rel. diff",
             "… after 1-voxel smoothing", "back-proj. sum ratio"],
            (
                [d["config"], fmt_diff(d["forward_rel_diff"]), f"{d['forward_sum_ratio']:.6f}",
                 fmt_diff(d["back_rel_diff"]), fmt_diff(d["back_rel_diff_smoothed_1voxel"]),
                 f"{d['back_sum_ratio']:.6f}"]
                for d in checks
            ),
            "lrrrrr",
        )  # fmt: skip
        blocks["projector-cross-check"] = "\n".join(cross)
    return blocks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(p, reference=True)
    p.add_argument(
        "--pytomography-only",
        action="store_true",
        help="time PyTomography alone; spectproj is not imported",
    )
    p.add_argument("--no-probe", action="store_true", help="skip the point-source probe")
    args = p.parse_args(argv)
    check_common_options(p, args)
    if args.pytomography_only and args.no_reference:
        p.error("--pytomography-only and --no-reference leave nothing to time")
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every configuration (and the probe); the run's record."""
    device = torch.device(args.device)
    threads = args.threads[-1] if args.threads else usable_cores()
    torch.set_num_threads(threads)
    torch.set_default_dtype(torch.float32)
    with_spect = not args.pytomography_only
    machine = machine_info(device)
    machine["load_average_start"] = load_average()
    if with_spect:
        machine["spect"] = package_version("spect")
    log(f"projector benchmark on {machine_summary(machine)}")
    report = Report(
        machine=machine,
        settings={
            "quick": args.quick,
            "repeats": args.repeats,
            "dtype": "float32",
            "statistic": "median wall time after warm-up, calls interleaved",
            "with_spect": with_spect,
            "with_reference": not args.no_reference,
            "max_quiet_wait_s": args.max_quiet_wait,
        },
    )
    for config in CONFIGS:
        rows, det = bench_config(config, args, log)
        report.rows.extend(rows)
        report.cross_check.append(det)
    busy = [
        f"{d['config']}: {d['rounds_started_busy']} of {d['rounds']}"
        for d in report.cross_check
        if d.get("rounds_started_busy")
    ]
    log("timed rounds that started while other processes were busy: " + ("; ".join(busy) or "none"))
    if not args.no_probe:
        log("point-source probe")
        report.probe = run_probe(device, with_spect, not args.no_reference)
        print("\n".join(format_probe(report.probe)))
    machine["load_average_end"] = load_average()
    properties = ("speedup", "speedup_of_minima", "target_met")
    script = "benchmarks/bench_projector.py"
    return make_record("projector", script, report, report.rows, properties)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark(args, "projector", measure, render)


if __name__ == "__main__":
    raise SystemExit(main())
