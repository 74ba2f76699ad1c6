"""Collimators as data: the shipped table, the response built from it, septal penetration,
the TOML file of a user's own collimator, DICOM name matching, the study file and the CLI."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
import torch

from recon.data.phantoms import default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.io import (
    FORMAT_VERSION,
    read_result,
    read_study,
    with_collimator,
    write_study,
)
from spectproj import (
    CollimatorResponse,
    CollimatorSpec,
    ImageGrid,
    ParallelGeometry,
    SPECTProjector,
    project,
)
from spectproj.collimator import FWHM_PER_SIGMA
from spectproj.collimator_table import (
    collimator_spec,
    load_spec_file,
    lookup,
    match_dicom_collimator,
    parse_table,
    table,
    table_markdown,
)
from spectproj.physics import lead_mu_per_mm
from tests.helpers import assert_ok, assert_one_line_error, invoke

REPO = Path(__file__).resolve().parents[1]
# NIST XCOM, lead, total with coherent (cm²/g) at 200 and 300 keV; ρ = 11.35 g/cm³.
LEAD_200, LEAD_300 = 0.9985, 0.4031


def lead_mu_208() -> float:
    """μ_lead at 208 keV (1/mm), log-log between the two XCOM points, by hand."""
    t = math.log(208.0 / 200.0) / math.log(300.0 / 200.0)
    return math.exp(math.log(LEAD_200) + t * math.log(LEAD_300 / LEAD_200)) * 11.35 / 10.0


# -- the table ----------------------------------------------------------------------------------


def test_table_loads_and_every_row_validates_and_is_cited():
    t = table()
    assert len(t.rows) >= 40
    vendors = {row.vendor for row in t.rows}
    assert {"Siemens", "GE", "Philips", "Mediso"} <= vendors
    for row in t.rows:
        assert dataclasses.replace(row) == row  # validates again
        assert row.hole_diameter_mm > 0 and row.hole_length_mm > row.hole_diameter_mm
        assert 0 < row.septal_thickness_mm < row.hole_diameter_mm
        assert t.row_sources[row.name]["source"] in t.sources
        assert t.find(row.name) is row and t.find(row.name.lower().replace("-", " ")) is row
        if row.intrinsic_fwhm_mm > 0:
            assert t.row_sources[row.name]["intrinsic_source"] in t.sources
    for source in t.sources.values():
        assert source["title"] and source["url"].startswith("https://")
    # the presets of spect 0.1 are rows with the holes they always had
    for name, (d, length) in {
        "LEHR": (1.11, 24.05),
        "LEAP": (1.45, 24.05),
        "MELP": (2.94, 40.64),
        "HE": (4.00, 59.70),
    }.items():
        row = lookup(name)
        assert (row.hole_diameter_mm, row.hole_length_mm, row.intrinsic_fwhm_mm) == (d, length, 0)
        assert CollimatorResponse.preset(name, 140.5) == CollimatorResponse.from_holes(
            d, length, 140.5
        )
    assert lookup("megp") is lookup("MELP") and lookup("LEGP") is lookup("LEAP")


BASE_ROW = (
    '[sources.s]\ntitle = "t"\nurl = "https://x"\n[[collimator]]\nname = "A"\n'
    'hole_diameter_mm = 1.0\nhole_length_mm = 20.0\nseptal_thickness_mm = 0.2\nsource = "s"\n'
)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("hole_shape = 'oval'\n", "key 'hole_shape': expected one of ['hex', 'round', 'square']"),
        ("intrinsic_fwhm_mm = 3.0\n", "key 'intrinsic_source'"),
        ("pitch_mm = 3.0\n", "unknown key 'pitch_mm'"),
        ('aliases = ["a"]\n', "name or alias 'a' is already used by A"),
    ],
)
def test_bad_table_rows_are_refused(extra: str, message: str):
    parse_table(BASE_ROW)  # the base is good
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_table(BASE_ROW + extra, "t.toml")
    with pytest.raises(ValueError, match="key 'source'"):
        parse_table(BASE_ROW.replace('source = "s"', 'source = "nowhere"'))


def test_docs_page_shows_the_table_rendered_from_the_data_file():
    page = (REPO / "docs" / "collimators.md").read_text(encoding="utf-8")
    begin, end = "<!-- collimator-table:begin -->\n", "<!-- collimator-table:end -->"
    block = page[page.index(begin) + len(begin) : page.index(end)]
    assert block == table_markdown(), (
        "docs/collimators.md is out of date: run python benchmarks/update_collimator_docs.py"
    )


# -- the response ---------------------------------------------------------------------------------


def test_response_of_a_row_is_the_analytic_fwhm():
    spec = lookup("SY-ME")  # D 2.94, L 40.64, intrinsic 3.8 mm at 140 keV
    mu = lead_mu_208()
    assert lead_mu_per_mm(208.0) == pytest.approx(mu, rel=1e-12)
    l_eff = 40.64 - 2.0 / mu
    d = 150.0
    geometric = 2.94 * (l_eff + d) / l_eff
    intrinsic = 3.8 * math.sqrt(140.0 / 208.0)
    assert spec.geometric_fwhm_mm(d, 208.0) == pytest.approx(geometric, rel=1e-12)
    assert geometric == pytest.approx(14.33, abs=0.01)  # a MELP at 15 cm: about 14 mm
    response = CollimatorResponse.from_table("sy-me", 208.0)
    fwhm = float(response.sigma_mm(torch.tensor(d, dtype=torch.float64))) * FWHM_PER_SIGMA
    assert fwhm == pytest.approx(math.hypot(geometric, intrinsic), rel=1e-12)
    # b, the back face to the image plane, adds to the distance
    shifted = dataclasses.replace(spec, back_distance_mm=10.0, intrinsic_fwhm_mm=0.0)
    sigma = shifted.response(208.0).sigma_mm(torch.tensor(d, dtype=torch.float64))
    assert float(sigma) * FWHM_PER_SIGMA == pytest.approx(2.94 * (l_eff + d + 10) / l_eff)
    with pytest.raises(ValueError, match=r"thin: a 5 mm hole is transparent at 364\.5 keV"):
        CollimatorSpec("thin", 1.0, 5.0, 0.1).response(364.5)


def test_projected_point_has_the_variance_of_the_response():
    """Through the projector: a point source's bin profile has variance σ(d)² + Δ²/12."""
    step, radius = 2.0, 200.0
    grid = ImageGrid((1, 41, 61), (step, step, step))
    geometry = ParallelGeometry(grid, [0.0], radius_mm=radius)
    response = lookup("SY-LEHR").response(140.5)
    a = torch.zeros(grid.shape, dtype=torch.float64)
    a[0, 20, 30] = 1.0  # y = 0: 200 mm from the AP detector's face
    profile = project(a, geometry, collimator=response)[0].sum(0)
    centres = geometry.detector_centres_mm(1)
    mean = (profile * centres).sum() / profile.sum()
    var = float((profile * (centres - mean) ** 2).sum() / profile.sum())
    sigma = float(response.sigma_mm(torch.tensor(radius, dtype=torch.float64)))
    assert var == pytest.approx(sigma**2 + step**2 / 12, rel=0.01)


# -- septal penetration ---------------------------------------------------------------------------


def test_geometric_penetration_fraction_is_the_shortest_septal_path():
    spec = lookup("LEHR").with_penetration("geometric")  # a LEHR at 208 keV: it leaks
    w = 0.16 * 24.05 / (2 * 1.11 + 0.16)
    assert spec.penetration_fraction(208.0) == pytest.approx(math.exp(-lead_mu_208() * w))
    assert 0.1 < spec.penetration_fraction(208.0) < 0.3
    melp = lookup("MELP").with_penetration("geometric")
    assert melp.penetration_fraction(208.0) < 0.01 < melp.penetration_fraction(364.5)
    assert lookup("MELP").penetration_fraction(208.0) == 0.0
    response = spec.response(208.0)
    wide = 2 * 1.11 + 0.16
    assert response.tail_slope == pytest.approx(wide / 24.05 / FWHM_PER_SIGMA)
    with pytest.raises(ValueError, match="septal_thickness_mm"):
        dataclasses.replace(spec, septal_thickness_mm=0.0)


def test_penetration_keeps_the_exact_adjoint_and_the_total():
    grid = ImageGrid((9, 11, 11), (3.0, 3.0, 3.0))
    geometry = ParallelGeometry(grid, [0.0, 50.0, 180.0], radius_mm=120.0)
    response = lookup("LEHR").with_penetration("geometric").response(208.0)
    assert response.tail_fraction > 0.1
    mu = torch.full(grid.shape, 0.0135, dtype=torch.float64)
    op = SPECTProjector(geometry, mu, response, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(grid.shape, generator=gen, dtype=torch.float64)
    y = torch.rand(op.output_shape, generator=gen, dtype=torch.float64)
    lhs, rhs = torch.sum(op(x) * y), torch.sum(x * op.adjoint(y))
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)
    # the total is conserved: a central point, a detector wide enough for the tail
    wide = ImageGrid((61, 3, 61), (2.0, 2.0, 2.0))
    g = ParallelGeometry(wide, [0.0], radius_mm=120.0)
    point = torch.zeros(wide.shape, dtype=torch.float64)
    point[30, 1, 30] = 1.0
    sharp = project(point, g)
    blurred = project(point, g, collimator=response)
    assert float(blurred.sum()) == pytest.approx(float(sharp.sum()), rel=1e-9)
    # each axis's line-spread function is (1 − f)·G(σ) + f·G(σ_t): its variance says so
    profile = blurred[0].sum(0)
    centres = g.detector_centres_mm(1)
    var = float((profile * centres**2).sum() / profile.sum())
    d = torch.tensor(120.0, dtype=torch.float64)
    f = response.tail_fraction
    expected = (1 - f) * float(response.sigma_mm(d)) ** 2 + f * float(
        response.tail_sigma_mm(d)
    ) ** 2
    assert var == pytest.approx(expected + 4.0 / 12, rel=0.01)


# -- a user's TOML file ---------------------------------------------------------------------------

GOOD_TOML = """\
name = "my-MEGP"
vendor = "Acme"
hole_diameter_mm = 3.0
hole_length_mm = 58.0
septal_thickness_mm = 1.05
hole_shape = "round"
intrinsic_fwhm_mm = 3.9
penetration = "geometric"
"""


def test_a_users_toml_file(tmp_path: Path):
    path = tmp_path / "mine.toml"
    path.write_text(GOOD_TOML)
    spec = load_spec_file(path)
    assert spec == CollimatorSpec(
        "my-MEGP", 3.0, 58.0, 1.05, "round", 3.9, 140.0, 0.0, "geometric", "Acme"
    )
    assert collimator_spec(str(path)) == spec and collimator_spec("sy-me") is lookup("SY-ME")
    assert collimator_spec(spec) is spec


BAD_TOMLS = [
    ("name = 'x'\nhole_diameter_mm = [", "not valid TOML"),
    (GOOD_TOML + "hole_pitch_mm = 4.0\n", "unknown key 'hole_pitch_mm': expected one of"),
    (GOOD_TOML.replace("3.0\n", "-3.0\n", 1), "key 'hole_diameter_mm': expected a positive"),
    (GOOD_TOML.replace("= 1.05", '= "thick"'), "key 'septal_thickness_mm': expected a number"),
    (GOOD_TOML.replace('"round"', '"oval"'), "key 'hole_shape': expected one of"),
    (GOOD_TOML.replace('"geometric"', '"monte carlo"'), "key 'penetration': expected one of"),
    (GOOD_TOML.replace("hole_length_mm = 58.0\n", ""), "key 'hole_length_mm': expected a value"),
    (GOOD_TOML.replace('"my-MEGP"', '""'), "key 'name': expected a non-empty name"),
]


@pytest.mark.parametrize(("text", "message"), BAD_TOMLS)
def test_bad_toml_files_are_one_line_errors(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load_spec_file(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_missing_file_and_unknown_name():
    with pytest.raises(ValueError, match=r"nowhere\.toml: cannot read"):
        collimator_spec("nowhere.toml")
    with pytest.raises(ValueError, match=r"unknown collimator 'PINHOLE'.*SY-ME"):
        collimator_spec("PINHOLE")


# -- DICOM names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "row"),
    [
        ("MEGP", "PARA", "MELP"),
        (" me gp ", None, "MELP"),
        ("Low Energy High Resolution", "UNKN", "LEHR"),
        ("sy_me", "PARA", "SY-ME"),
        ("GI-MEGP", None, "GI-MEGP"),
        ("VPC-123", "PARA", None),
        ("LEHR", "FANB", None),
        (None, "PARA", None),
    ],
)
def test_dicom_collimator_names_match_the_table(name, kind, row):
    spec, note = match_dicom_collimator(name, kind)
    assert (None if spec is None else spec.name) == row, note
    if row is None:
        assert ("FANB" in note) if kind == "FANB" else ("CollimatorGridName" in note)


def _set_collimator(files: list[Path], name: str) -> None:
    for path in files:
        ds = pydicom.dcmread(path)
        for item in ds.DetectorInformationSequence:
            item.CollimatorGridName = name
            item.CollimatorType = "PARA"
        ds.save_as(path)


def test_convert_reads_the_dicom_collimator(tmp_path: Path):
    from tests.test_io_dicom import ANT, POST, write_planar

    files = write_planar(tmp_path, (ANT, POST), True, multiframe=False)
    _set_collimator(files, "megp")
    out = tmp_path / "named.h5"
    assert_ok(invoke("convert", "dicom-planar", *files, "-o", out))
    study = read_study(out)
    assert study.acquisition.collimator_spec == lookup("MELP")
    assert "matched table row MELP" in study.provenance["collimator"]

    _set_collimator(files, "VPC-123")
    out = tmp_path / "unknown.h5"
    run = invoke("convert", "dicom-planar", *files, "-o", out)
    assert_ok(run)
    assert "warning: " in run.stdout and "'VPC-123' is not in the collimator table" in run.stdout
    assert "--collimator NAME|FILE.toml" in run.stdout
    study = read_study(out)
    assert study.acquisition.collimator is None and study.acquisition.collimator_spec is None

    toml = tmp_path / "mine.toml"
    toml.write_text(GOOD_TOML)
    out = tmp_path / "override.h5"
    run = invoke("convert", "dicom-planar", *files, "-o", out, "--collimator", toml)
    assert_ok(run)
    assert "warning" not in run.stdout
    assert read_study(out).acquisition.collimator_spec == load_spec_file(toml)


# -- the study file -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    phantom = make_torso(default_grid(12), 208.0)
    geometry = ParallelGeometry.ap_pa(phantom.grid, radius_mm=250.0)
    study = simulate_acquisition(
        phantom, geometry, collimator="SY-ME", total_counts=1e5, seed=2, noise=False
    )
    path = tmp_path_factory.mktemp("collimator") / "study.h5"
    write_study(path, study)
    return path


def test_study_file_stores_the_parameters_and_old_files_still_read(
    tmp_path: Path, small_study: Path
):
    study = read_study(small_study)
    assert study.acquisition.collimator_spec == lookup("SY-ME")
    with h5py.File(small_study) as f:
        assert f.attrs["format_version"] == FORMAT_VERSION >= 3
        assert f["collimator"].attrs["hole_length_mm"] == 40.64
        assert f["collimator"].attrs["intrinsic_fwhm_mm"] == 3.8
    # a user's collimator round-trips, every parameter
    own = CollimatorSpec("mine", 2.5, 35.0, 1.2, "square", 3.6, 122.0, 4.0, "geometric", "V", "C")
    path = tmp_path / "own.h5"
    write_study(path, with_collimator(study, own))
    back = read_study(path)
    assert back.acquisition.collimator == "mine" and back.acquisition.collimator_spec == own
    assert back.collimator_response() == own.response(208.0)
    # a version-2 file: a name only, resolved from the table
    old = tmp_path / "v2.h5"
    write_study(old, study)
    with h5py.File(old, "r+") as f:
        del f["collimator"]
        f.attrs["format_version"] = np.int64(2)
    v2 = read_study(old)
    assert v2.acquisition.collimator == "SY-ME" and v2.acquisition.collimator_spec == lookup(
        "SY-ME"
    )
    # a bad stored parameter is a one-line file error
    with h5py.File(path, "r+") as f:
        f["collimator"].attrs["hole_diameter_mm"] = -1.0
    with pytest.raises(ValueError, match=r"own\.h5: /collimator: key 'hole_diameter_mm'"):
        read_study(path)


def test_name_and_parameters_go_together():
    study_acq = simulate_acquisition(
        make_torso(default_grid(8), 140.5),
        ParallelGeometry.ap_pa(default_grid(8), radius_mm=200.0),
        collimator="LEHR",
        total_counts=1e3,
    ).acquisition
    renamed = dataclasses.replace(study_acq, collimator="HE")  # a table row: the name picks it
    assert renamed.collimator_spec == lookup("HE")
    own = CollimatorSpec("mine", 2.5, 35.0, 1.2)
    mine = dataclasses.replace(study_acq, collimator=None, collimator_spec=own)
    assert mine.collimator == "mine"
    with pytest.raises(ValueError, match="'HE' is not the name of collimator_spec 'mine'"):
        dataclasses.replace(mine, collimator="HE")


# -- the command line -----------------------------------------------------------------------------


def test_recon_collimator_option(tmp_path: Path, small_study: Path):
    out = tmp_path / "r.h5"
    run = invoke("recon", "mlem", small_study, "-o", out, "--iterations", 1)
    assert_ok(run)
    assert "SY-ME at 208 keV" in run.stdout and "⊕" in run.stdout
    assert read_result(out).parameters["collimator_parameters"] == lookup("SY-ME").to_dict()

    toml = tmp_path / "mine.toml"
    toml.write_text(GOOD_TOML)
    out = tmp_path / "toml.h5"
    assert_ok(
        invoke("recon", "mlem", small_study, "-o", out, "--iterations", 1, "--collimator", toml)
    )
    p = read_result(out).parameters
    assert p["collimator_parameters"]["name"] == "my-MEGP"
    assert "penetration tail" in p["collimator_note"]

    out = tmp_path / "x.h5"
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD_TOML.replace("3.0\n", "-3.0\n", 1))
    for args, fragments in [
        (["--collimator", bad], (str(bad), "hole_diameter_mm", "positive", "-3.0")),
        (["--collimator", "PINHOLE"], ("unknown collimator 'PINHOLE'",)),
        (["--collimator", "HE", "--no-collimator"], ("contradict",)),
    ]:
        run = invoke("recon", "mlem", small_study, "-o", out, "--iterations", 1, *args)
        assert_one_line_error(run, *fragments)
    assert not out.exists()
