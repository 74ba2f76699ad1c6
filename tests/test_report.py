"""The report's page: its jinja2 template shipped as package data, and every value escaped."""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import tomllib
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from recon.data.phantoms import default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.evaluation import report_writer
from recon.evaluation.figures import voxel_centre_mm, voxel_edges_mm
from recon.evaluation.report import HEADLINE_COLUMNS, MethodResult, compare, render_report_html
from spectproj import ImageGrid, ParallelGeometry

ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>alert(1)</script>"


class _Tables(HTMLParser):
    """Text of every cell of every ``<table id=...>``, and every ``<script>`` tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.scripts = 0
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        elif tag == "table":
            self._table = dict(attrs).get("id") or "?"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def comparison():
    """A 12³ torso AP/PA study; one method is the truth, one half of it, named with a script."""
    phantom = make_torso(default_grid(12), 140.5)
    geometry = ParallelGeometry.ap_pa(phantom.grid, radius_mm=250.0)
    study = simulate_acquisition(phantom, geometry, total_counts=1e5, seed=1)
    truth = np.asarray(study.truth_activity)
    return compare(study, [MethodResult(EVIL, 0.5 * truth), MethodResult("exact", truth)])


@pytest.fixture()
def pngs(tmp_path: Path) -> dict[str, Path]:
    """Stand-in PNG files (the page embeds their bytes as they are)."""
    out = {}
    for key, name in report_writer.FIGURES.items():
        if key != "convergence":
            out[key] = tmp_path / name
            out[key].write_bytes(f"png of {key}".encode())
    return out


def _render(comparison, pngs: dict[str, Path], folder: Path, **kw) -> str:
    return render_report_html(
        comparison,
        pngs,
        folder=folder,
        title=kw.pop("title", "t"),
        software="spect test",
        created_utc="2026-01-01T00:00:00Z",
        point=(6, 6, 6),
        **kw,
    )


def test_template_is_package_data_of_the_installed_recon() -> None:
    template = resources.files("recon.evaluation").joinpath(report_writer.REPORT_TEMPLATE)
    assert template.is_file()
    assert "<!DOCTYPE html>" in template.read_text(encoding="utf-8")
    assert report_writer.report_template().environment.autoescape is True
    # pyproject ships it (and every other template) in a wheel, and the core needs jinja2.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["recon.evaluation"]
    package = ROOT / "recon" / "evaluation"
    files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.j2"))
    assert "templates/report.html.j2" in files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), (name, patterns)
    assert any(d.lower().startswith("jinja2") for d in config["project"]["dependencies"])


def test_missing_template_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_writer, "REPORT_TEMPLATE", "templates/missing.html.j2")
    with pytest.raises(FileNotFoundError, match=r"missing\.html\.j2: the report template"):
        report_writer.report_template()


def test_every_value_is_escaped(comparison, pngs: dict[str, Path], tmp_path: Path) -> None:
    page = _render(
        comparison,
        pngs,
        tmp_path,
        title=f"title {EVIL}",
        intro=f"intro & {EVIL}",
        extra_rows=[(f"key {EVIL}", f"value {EVIL}")],
    )
    assert "<script" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 8
    parsed = _Tables()
    parsed.feed(page)
    assert parsed.scripts == 0
    # The escaped name reads back as the name itself, in every table that lists the methods.
    headline = parsed.tables["headline"]
    assert headline[0] == list(HEADLINE_COLUMNS)
    assert [row[0] for row in headline[1:]] == [EVIL, "exact", "conjugate view"]
    assert parsed.tables["organs"][0][2] == f"{EVIL} (MBq, error)"
    assert [row[0] for row in parsed.tables["settings"][1:]] == [EVIL, "exact"]
    assert [row[0] for row in parsed.tables["projection-fit"][1:]] == [EVIL, "exact"]
    assert [f"key {EVIL}", f"value {EVIL}"] in parsed.tables["about"]
    # Real numbers: half the truth loses half the activity; the truth itself has NRMSE 0.
    assert headline[1][4] == "-50.0 %"
    assert headline[2][1] == "0.000" and headline[2][4] == "+0.0 %"
    # Self-contained: the figures' bytes are embedded as data: URIs.
    for key, path in pngs.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        assert f'<figure id="fig-{key}"><a href="{path.name}">' in page
        assert f'src="data:image/png;base64,{data}"' in page
    assert 'id="fig-convergence"' not in page


def test_study_and_result_files_link_only_inside_the_folder(
    comparison, pngs: dict[str, Path], tmp_path: Path
) -> None:
    inside = tmp_path / "results" / "exact.h5"
    inside.parent.mkdir()
    inside.write_bytes(b"")
    methods = [MethodResult(m.name, m.activity, file=str(inside)) for m in comparison.methods[1:]]
    methods.insert(0, MethodResult(EVIL, comparison.methods[0].activity, file=f"/elsewhere/{EVIL}"))
    other = dataclasses.replace(comparison, methods=methods)
    parsed = _Tables()
    page = _render(other, pngs, tmp_path)
    parsed.feed(page)
    assert '<a href="results/exact.h5">results/exact.h5</a>' in page
    assert f"<code>/elsewhere/{EVIL.replace('<', '&lt;').replace('>', '&gt;')}</code>" in page
    assert ["study", "–"] in parsed.tables["about"]


def test_a_missing_figure_is_refused(comparison, pngs: dict[str, Path], tmp_path: Path) -> None:
    del pngs["organs"]
    with pytest.raises(ValueError, match=r"figures must hold .*missing \['organs'\]"):
        _render(comparison, pngs, tmp_path)


def test_voxel_positions_of_a_grid() -> None:
    grid = ImageGrid(shape=(4, 3, 2), spacing_mm=(2.0, 1.0, 5.0), offset_mm=(1.0, 0.0, -2.5))
    assert voxel_edges_mm(grid, 0) == (-3.0, 5.0)
    assert voxel_edges_mm(grid, 2) == (-7.5, 2.5)
    assert [voxel_centre_mm(grid, 0, k) for k in range(4)] == [-2.0, 0.0, 2.0, 4.0]
    assert [voxel_centre_mm(grid, 1, j) for j in range(3)] == [-1.0, 0.0, 1.0]


def test_settings_and_heldout_deviance_of_each_method(tmp_path: Path, pngs) -> None:
    """The report shows each method's settings, and for a fit that held pixels out (a NeRF's
    ``train_mask``) the deviance over those pixels beside the one over all pixels."""
    from recon.evaluation.projection_metrics import projection_fit
    from recon.evaluation.report import expected_counts, method_settings
    from recon.io import Result

    phantom = make_torso(default_grid(12), 140.5)
    geometry = ParallelGeometry.ap_pa(phantom.grid, radius_mm=250.0)
    study = simulate_acquisition(phantom, geometry, total_counts=1e5, seed=2)
    truth = np.asarray(study.truth_activity, dtype=np.float32)
    held = np.zeros(study.projections.shape, dtype=np.uint8)  # 0 = held out
    held[:, ::2] = 1  # train on the even rows
    nerf = Result(
        truth, study.grid, "nerf",
        parameters={"steps_done": 7, "support_note": "body (test)", "collimator": "LEHR (test)"},
        extras={"train_mask": held},
    )  # fmt: skip
    mlem = Result(truth, study.grid, "mlem", parameters={"iterations": 3, "support": "none"})
    comparison = compare(
        study, [MethodResult.from_result(nerf, "NeRF"), MethodResult.from_result(mlem, "MLEM")]
    )
    fits = comparison.projection_fit
    counts = np.asarray(study.projections)
    by_hand = projection_fit(expected_counts(study, truth), counts, held == 0)
    assert fits["NeRF"]["heldout_deviance_per_pixel"] == pytest.approx(
        by_hand["deviance_per_pixel"], rel=1e-9
    )
    assert "heldout_deviance_per_pixel" not in fits["MLEM"]  # MLEM holds nothing out
    assert method_settings(nerf)["iterations / steps"] == "7"
    assert method_settings(nerf)["support"] == "body (test)"
    assert method_settings(mlem)["iterations / steps"] == "3"
    assert method_settings(mlem)["anatomy"] == "–"
    parsed = _Tables()
    parsed.feed(_render(comparison, pngs, tmp_path))
    settings = {row[0]: row[1:] for row in parsed.tables["settings"][1:]}
    assert settings["NeRF"][:3] == ["7", "–", "body (test)"]
    fit_rows = {row[0]: row for row in parsed.tables["projection-fit"][1:]}
    assert fit_rows["NeRF"][3] != "–" and fit_rows["MLEM"][3] == "–"
