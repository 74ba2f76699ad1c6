"""``spect eval`` and ``spect compare`` on a tiny simulated AP/PA study and MLEM results."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from recon.data.phantoms import default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.evaluation.metrics import evaluate_volume
from recon.evaluation.report import MethodResult, compare
from recon.io import read_result, read_study, write_result, write_study
from spectproj import ParallelGeometry
from tests.test_demo import check_report_references

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evaluate")


@pytest.fixture(scope="module")
def study_file(folder: Path) -> Path:
    """An AP/PA Tc-99m study of the torso on 20³ voxels (μ, labels, truth)."""
    phantom = make_torso(default_grid(20), 140.5)
    geometry = ParallelGeometry.ap_pa(phantom.grid, radius_mm=250.0)
    study = simulate_acquisition(phantom, geometry, total_counts=5e5, seed=3)
    path = folder / "study.h5"
    write_study(path, study)
    return path


@pytest.fixture(scope="module")
def mlem_files(folder: Path, study_file: Path) -> tuple[Path, Path]:
    paths = []
    for iterations in (5, 20):
        path = folder / f"mlem{iterations}.h5"
        assert_ok(invoke("recon", "mlem", study_file, "-o", path, "--iterations", iterations))
        paths.append(path)
    return paths[0], paths[1]


# -- spect eval ----------------------------------------------------------------------------------


def test_eval_prints_writes_json_and_csv(folder: Path, study_file: Path, mlem_files) -> None:
    result_file = mlem_files[1]
    out_json, out_csv = folder / "eval.json", folder / "eval.csv"
    run = invoke("eval", result_file, "--truth", study_file, "-o", out_json, "--csv", out_csv)
    assert_ok(run)
    text = " ".join(run.stdout.split())
    for fragment in ("NRMSE (body)", "PSNR", "SSIM", "total activity", "liver", "wrote"):
        assert fragment in text, fragment

    report = json.loads(out_json.read_text())
    assert report["method"] == "mlem" and report["result_file"] == str(result_file)
    m = report["metrics"]
    assert 0.05 < m["nrmse"] < 2.0 and 0.05 < m["nrmse_body"] < 2.0
    assert 5.0 < m["psnr_db"] < 60.0 and -1.0 <= m["ssim"] <= 1.0
    assert abs(m["total_activity"]["relative_error"]) < 1.0
    assert m["total_activity"]["truth_mbq"] > 0
    names = [row["name"] for row in m["organs"]]
    assert "liver" in names and "body" in names
    assert report["projection_fit"]["n_pixels"] == 2 * 20 * 20
    assert report["projection_fit"]["deviance_per_pixel"] > 0

    # the JSON equals the library's numbers
    study, result = read_study(study_file), read_result(result_file)
    direct = evaluate_volume(
        result.activity, study.truth_activity, study.labels, study.label_names, study.grid
    )
    assert math.isclose(m["nrmse_body"], direct["nrmse_body"], rel_tol=1e-12)
    assert math.isclose(m["ssim"], direct["ssim"], rel_tol=1e-12)

    with out_csv.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["section", "name", "metric", "value"]
    lookup = {(r[0], r[1], r[2]): r[3] for r in rows[1:]}
    assert math.isclose(float(lookup[("volume", "", "nrmse")]), m["nrmse"], rel_tol=1e-8)
    liver = next(o for o in m["organs"] if o["name"] == "liver")
    assert math.isclose(
        float(lookup[("organ", "liver", "relative_error")]), liver["relative_error"], rel_tol=1e-8
    )
    assert ("projection_fit", "", "deviance_per_pixel") in lookup


def test_eval_refuses_to_overwrite_then_force(folder: Path, study_file: Path, mlem_files) -> None:
    out_json = folder / "again.json"
    out_json.write_text("old")
    run = invoke("eval", mlem_files[0], "--truth", study_file, "-o", out_json)
    assert_one_line_error(run, "--force")
    assert out_json.read_text() == "old"
    assert_ok(invoke("eval", mlem_files[0], "--truth", study_file, "-o", out_json, "--force"))
    assert json.loads(out_json.read_text())["method"] == "mlem"


def test_eval_rejects_other_grids_and_scores_a_study_without_truth(
    folder: Path, study_file: Path, mlem_files
) -> None:
    result = read_result(mlem_files[0])
    other = dataclasses.replace(
        result, activity=np.zeros((10, 10, 10), np.float32), grid=default_grid(10)
    )
    other_file = folder / "other-grid.h5"
    write_result(other_file, other)
    assert_one_line_error(invoke("eval", other_file, "--truth", study_file), "grid")

    study = read_study(study_file)
    no_truth = folder / "no-truth.h5"
    write_study(no_truth, dataclasses.replace(study, truth_activity=None))
    patient = invoke("eval", mlem_files[0], "--truth", no_truth, "--csv", folder / "p.csv")
    assert_ok(patient)  # a study without truth: the organ table and the fit, no errors
    assert "holds no truth" in patient.stdout and "liver" in patient.stdout
    assert "error" not in patient.stdout.split("note:")[0]
    assert "truth_mbq" in (folder / "p.csv").read_text()
    assert_one_line_error(invoke("eval", other_file, "--truth", no_truth), "grid")
    run = invoke("eval", mlem_files[0])  # --truth is required
    assert run.exit_code == 2 and run.stderr.startswith("Error: ")


# -- spect compare -------------------------------------------------------------------------------


def test_compare_writes_a_report(folder: Path, study_file: Path, mlem_files) -> None:
    out = folder / "report"
    run = invoke("compare", study_file, *mlem_files, "-o", out)
    assert_ok(run)
    text = " ".join(run.stdout.split())
    assert "MLEM (mlem5.h5)" in text and "MLEM (mlem20.h5)" in text
    assert "conjugate view" in text and "report.html" in text

    page = (out / "report.html").read_text(encoding="utf-8")
    refs = check_report_references(out, page)
    assert all(src.startswith("data:image/png;base64,") for src in refs.images)
    linked = {Path(h).name for h in refs.links}
    assert {"comparison.png", "profiles.png", "organs.png", "projections.png"} <= linked
    assert "convergence.png" in linked  # MLEM has a log-likelihood history

    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["headline"]] == [
        "MLEM (mlem5.h5)",
        "MLEM (mlem20.h5)",
        "conjugate view",
    ]
    # More iterations fit the data better.
    dev5, dev20 = (r["deviance_per_pixel"] for r in summary["headline"][:2])
    assert dev20 < dev5
    assert summary["conjugate_view"]["rows"]

    # Existing report: refused, then replaced with --force.
    assert_one_line_error(invoke("compare", study_file, mlem_files[0], "-o", out), "--force")
    assert_ok(invoke("compare", study_file, mlem_files[0], "-o", out, "--force"))
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["headline"]] == ["MLEM", "conjugate view"]


def test_compare_without_conjugate_view(folder: Path, study_file: Path, mlem_files) -> None:
    """A study without labels: volume metrics only, and a note that the conjugate view is
    skipped."""
    study = read_study(study_file)
    result = read_result(mlem_files[0])
    bare = dataclasses.replace(study, labels=None, label_names={})
    comparison = compare(bare, [MethodResult.from_result(result)])
    assert comparison.conjugate_view is None
    assert any("conjugate view skipped" in n for n in comparison.notes)
    assert comparison.metrics["MLEM"]["organs"] == []
    assert comparison.headline()[0]["mean_abs_organ_error"] is None
    with pytest.raises(ValueError, match="unique"):
        compare(study, [MethodResult.from_result(result), MethodResult.from_result(result)])
    with pytest.raises(ValueError, match="truth"):
        compare(dataclasses.replace(study, truth_activity=None), [MethodResult.from_result(result)])


def test_compare_rejects_a_missing_result(folder: Path, study_file: Path) -> None:
    run = invoke("compare", study_file, folder / "missing.h5", "-o", folder / "r2")
    assert run.exit_code != 0 and run.stderr.startswith("Error: ")
    assert not (folder / "r2" / "report.html").exists()
