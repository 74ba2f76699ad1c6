"""``spect demo`` end to end (a tiny configuration), and its report opened in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from recon.demo import DEMO_FILES, demo_settings, run_demo
from recon.io import read_result, read_study

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEMO_TITLE = "spect demo: NeRF vs MLEM vs conjugate view from two views"
# A grid of 16³ voxels and 4 NeRF steps: the whole pipeline in seconds.
TINY = ("--size", "16", "--steps", "4")


class _References(HTMLParser):
    """Collects the src of every <img> and the href of every <a> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        elif tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def html_references(text: str) -> _References:
    parser = _References()
    parser.feed(text)
    return parser


def check_report_references(folder: Path, text: str) -> _References:
    """Every <img> is an embedded PNG (data URI) or an existing file; every link is relative and
    names an existing file of the folder; no external asset (http, //, file:)."""
    refs = html_references(text)
    assert refs.images, "the report holds no image"
    for src in refs.images:
        if src.startswith("data:"):
            assert src.startswith("data:image/png;base64,"), src[:40]
            continue
        assert "://" not in src and not src.startswith("//"), src
        assert (folder / src).is_file(), src
    for href in refs.links:
        if href.startswith("#"):
            continue
        assert "://" not in href and not href.startswith(("//", "/")), href
        assert (folder / href).is_file(), href
    for marker in ("http://", "https://", "<script src", "<link "):
        assert marker not in text
    return refs


def test_settings() -> None:
    fast, full = demo_settings("fast"), demo_settings("full")
    assert (fast.size, full.size) == (64, 128)
    assert fast.nerf.steps < full.nerf.steps and full.nerf.field.encoding == "frequency"
    tiny = demo_settings("fast", size=16, steps=3)
    assert tiny.size == 16 and tiny.nerf.steps == 3 and tiny.nerf.val_every <= 3
    with pytest.raises(ValueError, match="quality"):
        demo_settings("slow")
    with pytest.raises(ValueError, match="size"):
        demo_settings("fast", size=4)
    with pytest.raises(ValueError, match="steps"):
        demo_settings("fast", steps=0)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("demo") / "out"
    result = runner.invoke(app, ["demo", "-o", str(folder), "--device", "cpu", *TINY])
    assert result.exit_code == 0, result.output
    return folder, result


def test_demo_writes_everything(demo_run) -> None:
    folder, result = demo_run
    for name in DEMO_FILES:
        assert (folder / name).is_file(), name
    for png in folder.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert not list(folder.glob(".*tmp*"))  # no temporary files left behind

    study = read_study(folder / "study.h5")
    assert study.acquisition.angles_deg == (0.0, 180.0)
    assert study.truth_activity is not None and study.mu_per_mm is not None
    assert study.grid.shape == (16, 16, 16)
    assert abs(float(study.projections.sum()) / 1.5e6 - 1.0) < 0.01  # Poisson around 1.5 M
    nerf, mlem = read_result(folder / "nerf.h5"), read_result(folder / "mlem.h5")
    assert nerf.method == "nerf" and mlem.method == "mlem"
    assert nerf.parameters["steps_done"] == 4
    assert len(mlem.history["log_likelihood"]) == demo_settings("fast").mlem_iterations
    # both keep activity inside the body (μ > 0)
    outside = study.mu_per_mm <= 0
    assert float(mlem.activity[outside].max()) == 0.0
    assert float(nerf.activity[outside].sum()) < 1e-3 * float(nerf.activity.sum())

    # the printed headline: all four methods, where the report is
    out = " ".join(result.stdout.split())
    for name in ("NeRF", "MLEM", "organs + residual", "conjugate view", "NRMSE", "report.html"):
        assert name in out


def test_demo_summary(demo_run) -> None:
    folder, _ = demo_run
    summary = json.loads((folder / "summary.json").read_text())
    methods = [row["method"] for row in summary["headline"]]
    assert methods == ["NeRF", "MLEM", "organs + residual", "conjugate view"]
    for row in summary["headline"][:3]:
        assert 0.0 < row["nrmse_body"] < 2.0
        assert 0.0 < row["ssim"] <= 1.0
        assert row["deviance_per_pixel"] > 0
    assert summary["conjugate_view"]["background"] == "body"
    assert summary["organs"] and all("conjugate view" in r["estimates"] for r in summary["organs"])
    assert set(summary["demo"]["timings_s"]) >= {
        "phantom", "simulate", "mlem", "nerf", "organs", "report"
    }  # fmt: skip
    assert summary["demo"]["settings"]["nerf"]["steps"] == 4
    md = (folder / "summary.md").read_text()
    assert "| NeRF |" in md and "| MLEM |" in md and "| conjugate view |" in md
    assert "| organs + residual |" in md
    # the study file carries the anatomy the organ fit used (organs, not the lesions)
    study = read_study(folder / "study.h5")
    assert study.anatomy is not None and "liver" in study.anatomy.names.values()
    assert not any(n.startswith("lesion") for n in study.anatomy.names.values())


def test_demo_report_references_existing_files(demo_run) -> None:
    folder, _ = demo_run
    text = (folder / "report.html").read_text(encoding="utf-8")
    refs = check_report_references(folder, text)
    assert refs.title == DEMO_TITLE
    assert all(src.startswith("data:image/png;base64,") for src in refs.images)  # embedded
    linked = {Path(h).name for h in refs.links}
    assert {"comparison.png", "organs.png", "study.h5", "nerf.h5", "mlem.h5", "organs.h5"} <= linked
    assert 'id="headline"' in text and 'id="organs"' in text


def test_demo_refuses_to_overwrite_then_force(demo_run) -> None:
    folder, _ = demo_run
    before = (folder / "study.h5").stat().st_mtime_ns
    result = runner.invoke(app, ["demo", "-o", str(folder), "--device", "cpu", *TINY])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--force" in lines[0]
    assert (folder / "study.h5").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError):
        run_demo(folder, size=16, steps=1)


def test_demo_output_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    result = runner.invoke(app, ["demo", "-o", str(target), *TINY])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "not a folder" in result.stderr


def test_demo_options() -> None:
    text = runner.invoke(app, ["demo", "--help"]).stdout
    for option in ("--output", "--device", "--quality", "--force"):
        assert option in text
    assert "--size" not in text and "--steps" not in text  # hidden, for tests
    result = runner.invoke(app, ["demo", "--quality", "slow"])
    assert result.exit_code == 2 and result.stderr.startswith("Error: ")


# -- a real browser ------------------------------------------------------------------------------


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_browser() is None, reason="no chromium browser installed")
def test_report_opens_in_headless_chromium(demo_run, tmp_path: Path) -> None:
    folder, _ = demo_run
    page = (folder / "report.html").resolve()
    command = [
        str(_browser()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        page.as_uri(),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    refs = check_report_references(folder, dom)
    assert refs.title == DEMO_TITLE
    assert 'id="headline"' in dom and "conjugate view" in dom
    assert len(refs.images) >= 4
