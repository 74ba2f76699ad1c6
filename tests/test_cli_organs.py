"""``spect recon organs``, ``spect recon conjugate`` and ``spect quantify``, end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from recon.anatomy import OrgansConfig, reconstruct_organs
from recon.anatomy.quantify import quantify, structure_truth_mbq
from recon.anatomy.reconstruct import COARSE_VOXEL_MM
from recon.data.phantoms import PhantomVariant, TorsoPhantom, simulate_variant
from recon.io import read_result, read_study, write_study
from recon.io.segmentation_threshold import THRESHOLD_CLASSES, anatomy_from_threshold
from tests.helpers import assert_ok, assert_one_line_error, invoke


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("organs")


@pytest.fixture(scope="module")
def study_file(folder: Path) -> Path:
    """A 24³ Lu-177 torso with an anatomy (organs, not the lesions), MEGP blur, AP/PA."""
    study = simulate_variant(TorsoPhantom.lu177_dotatate(), PhantomVariant(seed=2), size=24)
    path = folder / "study.h5"
    write_study(path, study)
    return path


@pytest.fixture(scope="module")
def results(folder: Path, study_file: Path) -> dict[str, Path]:
    paths = {name: folder / f"{name}.h5" for name in ("organs", "qplanar", "conjugate")}
    assert_ok(invoke("recon", "organs", study_file, "-o", paths["organs"], "--steps", "15"))
    assert_ok(invoke("recon", "organs", study_file, "-o", paths["qplanar"], "--no-residual"))
    assert_ok(invoke("recon", "conjugate", study_file, "-o", paths["conjugate"]))
    return paths


def test_recon_organs_writes_the_table_and_its_settings(study_file: Path, results) -> None:
    study = read_study(study_file)
    organs = read_result(results["organs"])
    assert organs.method == "organs+residual"
    table = {row["name"]: row for row in organs.parameters["organ_table"]}
    assert set(study.anatomy.names.values()) <= set(table)  # type: ignore[union-attr]
    liver = table["liver"]
    assert liver["activity_mbq"] > 0 and 0 < liver["activity_sd_mbq"] < liver["activity_mbq"]
    assert "MEGP" in organs.parameters["collimator"]
    assert organs.parameters["support"].startswith("body")
    # the activity volume holds the organ activities (and the sources)
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    total = float(organs.activity.sum()) * voxel_ml * 1e-6
    listed = sum(r["activity_mbq"] for r in table.values())
    listed += sum(s["activity_mbq"] for s in organs.parameters["sources"])
    assert total == pytest.approx(listed, rel=1e-3)
    qplanar = read_result(results["qplanar"])
    assert qplanar.method == "organs" and qplanar.parameters["sources"] == []
    conjugate = read_result(results["conjugate"])
    assert conjugate.method == "conjugate-view"
    assert {r["name"] for r in conjugate.parameters["organ_table"]} >= {"liver", "spleen"}


def test_quantify_prints_and_writes_csv_and_json(
    folder: Path, study_file: Path, results, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv_path, json_path = folder / "table.csv", folder / "table.json"
    files = [results[n] for n in ("organs", "qplanar", "conjugate")]
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal
    run = invoke("quantify", study_file, *files, "--csv", csv_path, "--json", json_path)
    assert_ok(run)
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # Every method and region is printed whole on its row (never cut, wrapped or elided).
    printed = [line.split("│") for line in run.stdout.splitlines() if line.startswith("│")]
    cells = {(cell[1].strip(), cell[2].strip()) for cell in printed}
    assert len(printed) == len(rows) and "…" not in run.stdout
    assert {(r["method"], r["region"]) for r in rows if r["kind"] != "lesion"} <= cells
    assert any(r["kind"] == "lesion" for r in rows)
    liver = [r for r in rows if r["region"] == "liver"]
    assert {r["method"] for r in liver} == {"organs+residual", "organs", "conjugate-view"}
    assert all(float(r["activity_mbq"]) > 0 for r in liver)
    assert all(r["truth_mbq"] for r in liver)  # a phantom: the truth is there
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert len(data) == len(rows)
    # refuses to overwrite without --force, in one line
    assert_one_line_error(
        invoke("quantify", study_file, *files, "--csv", csv_path), "already exists"
    )


def test_quantify_on_a_patient_study_needs_no_truth(folder: Path, study_file: Path) -> None:
    study = read_study(study_file)
    patient = dataclasses.replace(study, truth_activity=None, labels=None, label_names={})
    path = folder / "patient.h5"
    write_study(path, patient)
    result = folder / "patient-organs.h5"
    assert_ok(invoke("recon", "organs", path, "-o", result, "--no-residual"))
    run = invoke("quantify", path, result, "--json", folder / "patient.json")
    assert_ok(run)
    rows = json.loads((folder / "patient.json").read_text(encoding="utf-8"))
    assert rows and all(r["truth_mbq"] is None for r in rows)
    assert "truth" not in run.stdout


def test_quantify_takes_each_structures_exact_truth(study_file: Path, results) -> None:
    """A phantom records every structure's own activity: that is the truth of its row, not the
    truth volume inside the (imperfect, coarse) segment; without the record, the mask sum."""
    study = read_study(study_file)
    exact = structure_truth_mbq(study)
    organs = read_result(results["organs"])
    rows = {(r.region, r.kind): r for r in quantify(study, [organs])}
    assert rows[("liver", "organ")].truth_mbq == pytest.approx(exact["liver"], rel=1e-12)
    lesion = next(name for name in exact if name.startswith("lesion"))
    assert rows[(lesion, "lesion")].truth_mbq == pytest.approx(exact[lesion], rel=1e-12)
    # The mask sum differs (partial volumes on a 24³ grid): the fallback when nothing is recorded.
    anatomy = study.anatomy
    assert anatomy is not None
    value = next(v for v, n in anatomy.names.items() if n == "spleen")
    voxel_ml = study.grid.voxel_volume_mm3 * 1e-3
    masked = float(np.asarray(study.truth_activity, np.float64)[anatomy.labels == value].sum())
    masked *= voxel_ml * 1e-6  # Bq/mL · mL → MBq
    assert abs(masked / exact["spleen"] - 1.0) > 0.01
    bare = dataclasses.replace(
        study, provenance={k: v for k, v in study.provenance.items() if k != "truth_activity_mbq"}
    )
    assert structure_truth_mbq(bare) == {}
    spleen = next(r for r in quantify(bare, [organs]) if r.region == "spleen")
    assert spleen.truth_mbq == pytest.approx(masked, rel=1e-9)
    broken = dataclasses.replace(study, provenance={**study.provenance, "truth_activity_mbq": "["})
    with pytest.raises(ValueError, match="truth_activity_mbq"):
        quantify(broken, [organs])


def test_a_lesion_the_anatomy_segments_is_its_segments_row(study_file: Path) -> None:
    """A lesion the segmentation contains (here under another name) is a segment: its row has
    the lesion's exact truth, and it gets no "not found" lesion row; unsegmented lesions do."""
    study = read_study(study_file)
    anatomy = study.anatomy
    assert anatomy is not None and study.labels is not None
    exact = structure_truth_mbq(study)
    lesion = "lesion_liver_30mm"
    value = next(v for v, n in study.label_names.items() if n == lesion)
    labels = np.asarray(anatomy.labels).copy()
    labels[np.asarray(study.labels) == value] = 99
    names = {**anatomy.names, 99: "tumour 1"}
    segmented = dataclasses.replace(
        study, anatomy=dataclasses.replace(anatomy, labels=labels, names=names)
    )
    fit = reconstruct_organs(segmented, config=OrgansConfig(residual=False)).result
    rows = quantify(segmented, [fit])
    tumour = next(r for r in rows if r.region == "tumour 1")
    assert tumour.kind == "organ" and tumour.truth_mbq == pytest.approx(exact[lesion], rel=1e-12)
    assert not any(r.region == lesion for r in rows)
    others = {r.region for r in rows if r.kind == "lesion"}
    assert others and lesion not in others  # the other lesions keep their rows
    # A segment that holds a lesion among much else (the liver) is not that lesion.
    liver = next(r for r in quantify(study, [fit]) if r.region == "liver")
    assert liver.truth_mbq == pytest.approx(exact["liver"], rel=1e-12)


def test_residual_sources_on_a_coarse_grid_warn(study_file: Path, tmp_path: Path) -> None:
    """Voxels coarser than `COARSE_VOXEL_MM` (this study: 400/24 = 16.7 mm): organs + residual
    warns that its lesions are not to be trusted; the organ fit alone does not."""
    study = read_study(study_file)
    assert max(study.grid.spacing_mm) > COARSE_VOXEL_MM
    with pytest.warns(UserWarning, match=r"voxels of 16\.7 mm"):
        reconstruct_organs(study, config=OrgansConfig(steps=1, rounds=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reconstruct_organs(study, config=OrgansConfig(residual=False))
    # The command prints it as one line after the table.
    run = invoke("recon", "organs", study_file, "-o", tmp_path / "o.h5", "--steps", "1")
    assert_ok(run)
    lines = [ln for ln in run.output.splitlines() if "voxels of 16.7 mm" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: ")


def test_an_anatomy_without_organs_warns(study_file: Path, tmp_path: Path) -> None:
    """A CT-threshold anatomy (lungs, bone, gas, body) holds no organ: the organ fit and organs +
    residual say so, and the command prints it as one line; an organ segmentation does not."""
    study = read_study(study_file)
    thresholded = dataclasses.replace(study, anatomy=anatomy_from_threshold(study))
    assert set(thresholded.anatomy.names.values()) <= set(THRESHOLD_CLASSES)  # type: ignore[union-attr]
    with pytest.warns(UserWarning, match="no organ segments") as caught:
        reconstruct_organs(thresholded, config=OrgansConfig(residual=False))
    assert "residual sources" not in str(caught[0].message)
    with warnings.catch_warnings(record=True) as both:  # this 24³ grid is coarse too
        warnings.simplefilter("always")
        reconstruct_organs(thresholded, config=OrgansConfig(steps=1, rounds=1))
    assert any("and to residual sources reported as lesions" in str(w.message) for w in both)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reconstruct_organs(study, config=OrgansConfig(residual=False))  # liver, spleen, ...
    path = tmp_path / "thresholded.h5"
    write_study(path, thresholded)
    run = invoke("recon", "organs", path, "-o", tmp_path / "o.h5", "--steps", "1")
    assert_ok(run)
    lines = [ln for ln in run.output.splitlines() if "no organ segments" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: ")


def test_organ_commands_refuse_bad_input_in_one_line(folder: Path, study_file: Path) -> None:
    study = read_study(study_file)
    bare = folder / "bare.h5"
    write_study(bare, dataclasses.replace(study, anatomy=None))
    assert_one_line_error(
        invoke("recon", "organs", bare, "-o", folder / "x.h5"), "needs an anatomy"
    )
    assert not (folder / "x.h5").exists()
    other = folder / "other.h5"
    small = simulate_variant(TorsoPhantom.lu177_dotatate(), PhantomVariant(), size=16)
    write_study(other, small)
    assert_one_line_error(
        invoke("recon", "organs", study_file, "-o", folder / "y.h5", "--anatomy", other),
        "other.h5",
    )
    assert_one_line_error(invoke("quantify", study_file, folder / "missing.h5"), "missing.h5")
    assert np.isfinite(study.projections).all()


def test_ctrl_c_is_one_line_and_exit_130(
    folder: Path, study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recon.io

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(recon.io, "read_study", interrupted)
    run = invoke("recon", "organs", study_file, "-o", folder / "never.h5")
    assert run.exit_code == 130
    assert run.stderr.strip().splitlines() == [
        "Error: interrupted by SIGINT; no output was left half-written"
    ]
    assert not (folder / "never.h5").exists()
