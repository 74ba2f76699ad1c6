"""Interfile 3.3 reading and writing, and the shared patient-15 phantom built on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from recon.io.interfile import (
    InterfileError,
    parse_interfile_header,
    read_interfile,
    reorient_from_zyx,
    reorient_to_zyx,
    write_interfile,
)
from spectproj import ImageGrid, ParallelGeometry, project, water_mu_per_mm

SHAPE = (4, 5, 6)  # Z, Y, X: all different so that a wrong axis cannot pass
SPACING = (4.5, 3.0, 2.0)
PATIENT15 = "data/lu177_dotatate_patient15"


def marked_volume(dtype: type = np.float32) -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=dtype).reshape(SHAPE)


def write_raw_pair(folder: Path, header: str, data: np.ndarray, name: str = "img") -> Path:
    """A header written by hand (another tool's style) plus its raw data file."""
    (folder / f"{name}.i33").write_bytes(data.tobytes())
    path = folder / f"{name}.h33"
    path.write_text(header.replace("DATAFILE", f"{name}.i33"))
    return path


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int16, np.uint8])
@pytest.mark.parametrize("orientation", ["LAI", "LPI", "LPS", "RAS"])
def test_volume_round_trip(tmp_path, dtype, orientation):
    volume = marked_volume(dtype)
    write_interfile(tmp_path / "v.h33", volume, SPACING, orientation=orientation)
    image = read_interfile(tmp_path / "v.h33", orientation=orientation)
    assert image.kind == "volume"
    assert image.data.dtype == dtype
    np.testing.assert_array_equal(image.data, volume)
    assert image.spacing_mm == SPACING
    assert image.grid() == ImageGrid(SHAPE, SPACING)
    assert image.data_path == tmp_path / "v.i33"


def test_volume_file_layout_is_lai_by_default(tmp_path):
    """Default: the file's columns run toward the left, rows anterior, slices toward the feet."""
    volume = marked_volume()
    write_interfile(tmp_path / "v.hv", volume, SPACING)
    header = parse_interfile_header(tmp_path / "v.hv")
    assert (header["matrix size [1]"], header["matrix size [2]"], header["matrix size [3]"]) == (
        "6",
        "5",
        "4",
    )
    raw = np.fromfile(tmp_path / "v.v", dtype="<f4").reshape(4, 5, 6)
    np.testing.assert_array_equal(raw, volume[::-1, ::-1, :])


def test_projection_round_trip_and_angles(tmp_path):
    projections = np.random.default_rng(0).random((3, 5, 7)).astype(np.float32)
    angles = (10.0, 130.0, 250.0)
    write_interfile(tmp_path / "p.hs", projections, (4.0, 3.5), angles_deg=angles, radius_mm=250)
    image = read_interfile(tmp_path / "p.hs")
    assert image.kind == "projections"
    np.testing.assert_array_equal(image.data, projections)
    assert image.spacing_mm == (4.0, 3.5)
    assert image.angles_deg == pytest.approx(angles)
    assert (image.n_projections, image.direction_of_rotation) == (3, "CCW")
    assert (image.start_angle_deg, image.extent_of_rotation_deg) == (10.0, 360.0)
    assert image.radius_mm == 250.0
    # file row 0 is the head end: our last row
    raw = np.fromfile(tmp_path / "p.s", dtype="<f4").reshape(3, 5, 7)
    np.testing.assert_array_equal(raw, projections[:, ::-1, :])


def test_projection_round_trip_clockwise_ap_pa_and_offset(tmp_path):
    projections = np.ones((4, 2, 3), dtype=np.float32)
    angles = (0.0, 270.0, 180.0, 90.0)  # decreasing β: clockwise in Interfile terms
    write_interfile(
        tmp_path / "p.h33", projections, (1.0, 1.0), angles_deg=angles, angle_offset_deg=180.0
    )
    header = parse_interfile_header(tmp_path / "p.h33")
    assert header["direction of rotation"] == "CW"
    assert float(header["start angle"]) == 180.0
    image = read_interfile(tmp_path / "p.h33", angle_offset_deg=180.0)
    assert image.angles_deg == pytest.approx(angles)


def test_write_refuses_unequal_angle_steps(tmp_path):
    with pytest.raises(ValueError, match="equally spaced"):
        write_interfile(tmp_path / "p.h33", np.ones((3, 2, 2)), (1, 1), angles_deg=(0, 90, 200))


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path):
    volume = marked_volume()
    write_interfile(tmp_path / "v.h33", volume, SPACING)
    with pytest.raises(FileExistsError):
        write_interfile(tmp_path / "v.h33", volume * 2, SPACING)
    (tmp_path / "v.h33").unlink()
    with pytest.raises(FileExistsError):  # the data file alone is protected too
        write_interfile(tmp_path / "v.h33", volume * 2, SPACING)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.i33"]  # no temporary left over
    write_interfile(tmp_path / "v.h33", volume * 2, SPACING, overwrite=True)
    np.testing.assert_array_equal(read_interfile(tmp_path / "v.h33").data, volume * 2)


# -- headers in other tools' styles -------------------------------------------------------------
GATE_VOLUME = """!INTERFILE :=
!imaging modality := nucmed
!data offset in bytes := 0
!name of data file := DATAFILE
imagedata byte order := LITTLEENDIAN
!total number of images := 4
!matrix size [1] := 6
!matrix size [2] := 5
!number format := unsigned integer
!number of bytes per pixel := 2
scaling factor (mm/pixel) [1] := 2.0
scaling factor (mm/pixel) [2] := 3.0
!number of slices := 4
slice thickness (pixels) := THICKNESS
slice orientation := Transverse
!END OF INTERFILE :=
"""


@pytest.mark.parametrize(
    ("thickness", "dz"),
    [("4.5", 4.5), ("4", 4.0), ("1", 2.0), ("1.0", 2.0), ("2.0", 2.0)],
    ids=["mm", "integer-mm", "one-pixel", "one-pixel-float", "two-mm"],
)
def test_gate_style_slice_thickness_heuristic(tmp_path, thickness, dz):
    """Without scaling factor [3]: a value within 0.001 of 1 is pixels (× dx), otherwise mm."""
    raw = np.arange(120, dtype="<u2").reshape(4, 5, 6)
    path = write_raw_pair(tmp_path, GATE_VOLUME.replace("THICKNESS", thickness), raw)
    image = read_interfile(path)
    assert image.spacing_mm == (dz, 3.0, 2.0)
    np.testing.assert_array_equal(image.data, raw[::-1, ::-1, :])


def test_scaling_factor_3_wins_over_slice_thickness(tmp_path):
    header = GATE_VOLUME.replace("THICKNESS", "7").replace(
        "!number of slices := 4", "!matrix size [3] := 4\nscaling factor (mm/pixel) [3] := 4.25"
    )
    image = read_interfile(write_raw_pair(tmp_path, header, np.zeros((4, 5, 6), "<u2")))
    assert image.spacing_mm == (4.25, 3.0, 2.0)


STIR_VOLUME = """!INTERFILE  :=
!imaging modality := nucmed
!version of keys := STIR4.0
name of data file := DATAFILE
!GENERAL DATA :=
!GENERAL IMAGE DATA :=
!type of data := Tomographic
imagedata byte order := BIGENDIAN
!PET STUDY (General) :=
!process status := Reconstructed
!number format := float
!number of bytes per pixel := 4
number of dimensions := 3
matrix axis label [1] := x
!matrix size [1] := 6
scaling factor (mm/pixel) [1] := 2
matrix axis label [2] := y
!matrix size [2] := 5
scaling factor (mm/pixel) [2] := 3
matrix axis label [3] := z
!matrix size [3] := 4
scaling factor (mm/pixel) [3] := 4.5
first pixel offset (mm) [1] := -5
number of time frames := 1
!END OF INTERFILE :=
"""


def test_stir_style_volume_big_endian_lpi(tmp_path):
    """STIR, head-first supine: x toward the left, y posterior, z toward the feet ("LPI")."""
    volume = marked_volume()
    raw = volume[::-1].astype(">f4")  # slices toward the feet
    path = write_raw_pair(tmp_path, STIR_VOLUME, raw)
    image = read_interfile(path, orientation="LPI")
    np.testing.assert_array_equal(image.data, volume)
    assert image.data.dtype == np.float32 and image.data.dtype.isnative
    assert image.spacing_mm == SPACING
    assert image.header["first pixel offset (mm) [1]"] == "-5"


SIMIND_PROJECTIONS = """!INTERFILE :=
!imaging modality := nucmed
!version of keys := 3.3
!GENERAL DATA :=
!data starting block := 1
!name of data file := DATAFILE
!GENERAL IMAGE DATA :=
!type of data := Tomographic
imagedata byte order := LITTLEENDIAN
;!total number of images := 99
!SPECT STUDY (General) :=
;number of detector heads := 1
!matrix size[1] := 3
!matrix size[2] := 2
!number format := short float
!number of bytes per pixel := 4
scaling factor (mm/pixel) [1] := 4.42
scaling factor (mm/pixel) [2] := 4.42
!extent of rotation := 360
!process status := acquired
!number of projections := 4
!SPECT STUDY (acquired data) :=
orbit := circular
Radius := 25
!direction of rotation := DIRECTION
start angle := START
!END OF INTERFILE :=
"""


@pytest.mark.parametrize(
    ("direction", "start", "betas"),
    [
        ("CCW", "0", (0.0, 90.0, 180.0, 270.0)),
        ("CW", "0", (0.0, 270.0, 180.0, 90.0)),
        ("CW", "180", (180.0, 90.0, 0.0, 270.0)),
    ],
)
def test_interfile_angle_to_beta(tmp_path, direction, start, betas):
    """Stated convention: β_k = (start + s·k·extent/N) mod 360, s = +1 for CCW and −1 for CW.

    The Interfile camera angle is taken as our β directly (angle 0 = anterior, CCW = increasing
    β), as PyTomography's SIMIND reader does; ``angle_offset_deg`` adds a constant.
    """
    raw = np.arange(24, dtype="<f4").reshape(4, 2, 3)
    header = SIMIND_PROJECTIONS.replace("DIRECTION", direction).replace("START", start)
    (tmp_path / "p.a00").write_bytes(b"\0" * 2048 + raw.tobytes())  # data starting block 1
    path = tmp_path / "p.h00"
    path.write_text(header.replace("DATAFILE", "p.a00"))
    image = read_interfile(path, radius_unit="cm")
    assert image.kind == "projections"
    assert image.angles_deg == pytest.approx(betas)
    assert image.radius_mm == 250.0
    assert image.spacing_mm == (4.42, 4.42)
    np.testing.assert_array_equal(image.data, raw[:, ::-1, :])  # rows: head end first in file
    shifted = read_interfile(path, angle_offset_deg=180.0)
    assert shifted.angles_deg == pytest.approx(tuple((b + 180.0) % 360.0 for b in betas))


def test_kind_override_and_flags(tmp_path):
    raw = np.arange(24, dtype="<f4").reshape(4, 2, 3)
    header = SIMIND_PROJECTIONS.replace("DIRECTION", "CCW").replace("START", "0")
    header = header.replace("!data starting block := 1", "!data offset in bytes := 0")
    path = write_raw_pair(tmp_path, header, raw)
    image = read_interfile(path, flip_rows=False, flip_bins=True)
    np.testing.assert_array_equal(image.data, raw[:, :, ::-1])
    volume = read_interfile(path, kind="volume", orientation="LPS")
    np.testing.assert_array_equal(volume.data, raw)


# -- broken headers ----------------------------------------------------------------------------
GOOD = """!INTERFILE :=
!name of data file := DATAFILE
imagedata byte order := LITTLEENDIAN
!number format := float
!number of bytes per pixel := 4
!matrix size [1] := 3
!matrix size [2] := 2
!matrix size [3] := 2
scaling factor (mm/pixel) [1] := 1
scaling factor (mm/pixel) [2] := 1
scaling factor (mm/pixel) [3] := 1
!END OF INTERFILE :=
"""

BROKEN = [
    (("!matrix size [1] := 3\n", ""), r"matrix size \[1\]: missing"),
    (("!matrix size [2] := 2", "!matrix size [2] := two"), r"matrix size \[2\]: not a number"),
    (("!matrix size [3] := 2", "!matrix size [3] := 2.5"), r"matrix size \[3\]: must be a pos"),
    (("!matrix size [3] := 2", "!matrix size [3] := 3"), r"data file: .* has 48 bytes"),
    (("!number format := float", "!number format := ascii"), "number format: unsupported"),
    (("!number of bytes per pixel := 4", "!number of bytes per pixel := 2"), "does not fit"),
    (("!number format := float", "!number format := short float"), None),  # fine
    (("LITTLEENDIAN", "MIDDLEENDIAN"), "imagedata byte order: expected"),
    (("scaling factor (mm/pixel) [1] := 1", "scaling factor (mm/pixel) [1] := -1"), "positive"),
    (("scaling factor (mm/pixel) [2] := 1\n", ""), r"scaling factor \(mm/pixel\) \[2\]: missing"),
    (("!name of data file := DATAFILE", "!name of data file := nope.i33"), "nope.i33 not found"),
    (("!name of data file := DATAFILE\n", ""), "name of data file: missing"),
    (("!END OF", "!data offset in bytes := -4\n!END OF"), "data offset in bytes: must be a non"),
    (
        ("!END OF", "!data offset in bytes := 8\n!END OF"),
        r"48 bytes, the header describes 8 \+ 2×2×3×4 = 56",
    ),
]


@pytest.mark.parametrize(("edit", "message"), BROKEN)
def test_broken_headers_name_the_file_and_key(tmp_path, edit, message):
    path = write_raw_pair(tmp_path, GOOD.replace(*edit), np.zeros((2, 2, 3), "<f4"))
    if message is None:
        assert read_interfile(path).data.shape == (2, 2, 3)
        return
    with pytest.raises(InterfileError, match=message) as info:
        read_interfile(path)
    assert str(info.value).startswith(str(path))
    assert isinstance(info.value, ValueError)


def test_not_an_interfile_header(tmp_path):
    path = tmp_path / "empty.h33"
    path.write_text("hello\n")
    with pytest.raises(InterfileError, match="not an Interfile header"):
        read_interfile(path)


def test_bad_orientation_and_direction(tmp_path):
    path = write_raw_pair(tmp_path, GOOD, np.zeros((2, 2, 3), "<f4"))
    with pytest.raises(ValueError, match="orientation must be three letters"):
        read_interfile(path, orientation="LAX")
    with pytest.raises(ValueError, match="orientation must be three letters"):
        read_interfile(path, orientation="LLI")
    header = SIMIND_PROJECTIONS.replace("DIRECTION", "sideways").replace("START", "0")
    header = header.replace("!data starting block := 1", "")
    bad = write_raw_pair(tmp_path, header, np.zeros((4, 2, 3), "<f4"), name="p")
    with pytest.raises(InterfileError, match="direction of rotation: expected CW or CCW"):
        read_interfile(bad)


def test_reorient_round_trip_every_orientation():
    volume = marked_volume()
    for code in ("SPL", "IAR", "PIL", "LPS", "RAS", "ASL"):
        np.testing.assert_array_equal(
            reorient_to_zyx(reorient_from_zyx(volume, code), code), volume
        )
    np.testing.assert_array_equal(reorient_to_zyx(volume, "SPL"), volume)


# -- the shared patient phantom ----------------------------------------------------------------
def centroid_mm(grid: ImageGrid, mask: np.ndarray) -> np.ndarray:
    """``(z, y, x)`` centroid in mm (LPS) of a ``[Z, Y, X]`` mask."""
    idx = np.argwhere(mask).mean(axis=0)
    return np.array([(idx[a] - (grid.shape[a] - 1) / 2) * grid.spacing_mm[a] for a in range(3)])


@pytest.mark.shared
def test_patient15_orientation_matches_anatomy(shared_dir):
    """The files are "LAI"; after import the anatomy sits where LPS says it must.

    Evidence: the liver lies on the patient's right (x < 0), the spleen on the left (x > 0); the
    kidneys are posterior to the liver (larger y) and lower (smaller z); the lungs are in the
    top slices; the spine and the curved couch are at the back.
    """
    from recon.io.patient15 import load_patient15

    p = load_patient15(shared_dir / PATIENT15)
    assert p.grid.shape == (90, 70, 108)
    assert p.grid.spacing_mm == (4.4196, 3.9063, 3.9063)
    c = {name: centroid_mm(p.grid, p.labels == label) for label, name in p.label_names.items()}
    kidneys = centroid_mm(p.grid, (p.labels == 3) | (p.labels == 4))
    assert c["liver"][2] < 0 < c["spleen"][2]  # liver right, spleen left
    assert kidneys[1] > c["liver"][1]  # kidneys posterior to the liver
    assert c["liver"][0] > kidneys[0]  # liver above (toward the head of) the kidneys
    assert c["kidney_left"][2] > 0 > c["kidney_right"][2]
    assert c["kidney_left"][0] > c["kidney_right"][0]  # the left kidney usually sits higher
    inside = np.stack([ndimage.binary_fill_holes(s) for s in p.body])
    lungs = inside & (p.ct_hu < -500)  # air enclosed by the body in its slice
    assert centroid_mm(p.grid, lungs)[0] > c["liver"][0]  # lungs at the top
    couch = p.ct_hu > 300
    couch[inside] = False  # dense material outside the body: the curved couch
    assert centroid_mm(p.grid, couch)[1] > centroid_mm(p.grid, inside)[1]  # under the back


@pytest.mark.shared
def test_patient15_values(shared_dir):
    from recon.io.patient15 import DEFAULT_CONCENTRATIONS_BQ_PER_ML, load_patient15

    p = load_patient15(shared_dir / PATIENT15, {"liver": 12.5, "background": 0.0})
    counts = {name: int((p.labels == label).sum()) for label, name in p.label_names.items()}
    assert counts == {
        "liver": 15381,
        "spleen": 1535,
        "kidney_left": 2052,
        "kidney_right": 2493,
        "tumour_1": 93,
        "tumour_2": 55,
        "tumour_3": 90,
    }
    assert np.all(p.activity[p.labels == 1] == 12.5)
    assert np.all(p.activity[p.labels == 5] == DEFAULT_CONCENTRATIONS_BQ_PER_ML["tumour_1"])
    assert np.all(p.activity[p.labels == 0] == 0.0)
    assert p.ct_hu.min() == -1000 and p.ct_hu.max() == 2000
    soft = (p.ct_hu > -20) & (p.ct_hu < 20)
    assert np.median(p.mu_per_mm[soft]) == pytest.approx(water_mu_per_mm(208.0), rel=0.02)
    assert not p.body[:, :3, :].any()  # the couch under the back is not body
    with pytest.raises(ValueError, match="unknown region 'heart'"):
        load_patient15(shared_dir / PATIENT15, {"heart": 1.0})


@pytest.mark.shared
def test_patient15_study(shared_dir):
    from recon.io.patient15 import patient15_study

    study = patient15_study(shared_dir / PATIENT15)
    a = study.acquisition
    assert study.projections.shape == (2, 90, 108)
    assert (a.angles_deg, a.isotope, a.energy_keV) == ((0.0, 180.0), "Lu-177", 208.0)
    assert "MIT" in study.provenance["licence"]
    assert "BenAuer2021" in study.provenance["source"]
    expected = project(
        torch.from_numpy(study.truth_activity.astype(np.float64)),
        ParallelGeometry.ap_pa(study.grid),
        mu=torch.from_numpy(study.mu_per_mm.astype(np.float64)),
    ).numpy()
    np.testing.assert_allclose(study.projections, expected, rtol=1e-4, atol=1e-3)
    # The hottest AP pixel row should be where the tumours, liver and kidneys are, not the feet.
    assert study.labels is not None and study.label_names[3] == "kidney_left"
    ap, pa = study.projections
    assert ap.sum() > 0 and pa.sum() > 0
    # Kidneys are posterior: the kidney rows/bins are brighter in PA than in AP.
    kidney_rows = np.unique(np.nonzero(study.labels == 4)[0])
    kidney_bins = np.unique(np.nonzero(study.labels == 4)[2])
    pa_bins = study.grid.shape[2] - 1 - kidney_bins
    ap_k = ap[np.ix_(kidney_rows, kidney_bins)].sum()
    pa_k = pa[np.ix_(kidney_rows, pa_bins)].sum()
    assert pa_k > ap_k
    scaled = patient15_study(shared_dir / PATIENT15, sensitivity_cps_per_mbq=10.0, duration_s=600.0)
    np.testing.assert_allclose(
        scaled.projections, study.projections * scaled.acquisition.count_scale, rtol=1e-6
    )
