"""DICOM import (`recon.io.dicom_nm`, `recon.io.dicom_ct`), checked with synthetic pydicom files.

Orientation is checked two ways: (1) point sources placed in the stored pixel grid from the DICOM
definitions alone (ImagePositionPatient/ImageOrientationPatient, or the DICOM angle definition:
0° = detector behind the patient, increasing counter-clockwise seen from the feet toward the
patient's left) must land where ``docs/conventions.md`` says; (2) projections made with our
projector and stored in the standard display must read back unchanged.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    NuclearMedicineImageStorage,
    generate_uid,
)

from recon.io.dicom_ct import CtGeometry, ct_to_mu_on_grid, read_ct_series, resample_to_grid
from recon.io.dicom_nm import (
    dicom_angle_to_beta,
    nm_planar_study,
    parse_isotope,
    read_nm_planar,
    read_nm_tomo,
    read_nm_tomo_details,
)
from spectproj import ImageGrid, ParallelGeometry, hu_to_mu_per_mm, project, water_mu_per_mm
from spectproj.display import to_viewer

STUDY_UID = generate_uid()

# -- writing synthetic DICOM --------------------------------------------------------------------


def new_file(path: Path, sop_class: str, modality: str, series_uid: str | None = None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "SYNTH"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = "1.2.3.4"
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray, *, signed: bool = False, frames: bool = True):
    arr = np.asarray(pixels)
    arr = arr[None] if arr.ndim == 2 else arr
    ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if frames:
        ds.NumberOfFrames = arr.shape[0]
    ds.PixelData = np.ascontiguousarray(arr.astype(np.int16 if signed else np.uint16)).tobytes()


def save(ds: FileDataset, path: Path) -> Path:
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.save_as(path, write_like_original=False)
    return path


def code(meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = meaning.upper()[:16]
    item.CodingSchemeDesignator = "99TEST"
    item.CodeMeaning = meaning
    return item


def detector_item(view=None, iop=None, start=None, radius=None) -> Dataset:
    item = Dataset()
    if iop is not None:
        item.ImageOrientationPatient = [float(v) for v in iop]
    if view is not None:
        item.ViewCodeSequence = [code(view)]
    if start is not None:
        item.StartAngle = start
    if radius is not None:
        item.RadialPosition = radius
    return item


def nm_header(ds: Dataset, *, nuclide: str | None, window: tuple[float, float] | None) -> None:
    if window is not None:
        rng = Dataset()
        rng.EnergyWindowLowerLimit, rng.EnergyWindowUpperLimit = window
        win = Dataset()
        win.EnergyWindowRangeSequence = [rng]
        win.EnergyWindowName = "PEAK"
        ds.EnergyWindowInformationSequence = [win]
        ds.NumberOfEnergyWindows = 1
    if nuclide is not None:
        radio = Dataset()
        radio.RadionuclideCodeSequence = [code(nuclide)]
        ds.RadiopharmaceuticalInformationSequence = [radio]


# -- angles and isotopes ------------------------------------------------------------------------


def beta_from_dicom_definition(theta_deg: float) -> float:
    """β of a DICOM NM angle from the definitions, not from the +180 formula.

    DICOM: 0° = detector at the patient's back (+y), increasing counter-clockwise seen from the
    feet, i.e. toward the patient's left (+x): n = (sin θ, cos θ). Ours: n(β) = (−sin β, −cos β).
    """
    nx, ny = math.sin(math.radians(theta_deg)), math.cos(math.radians(theta_deg))
    return round(math.degrees(math.atan2(-nx, -ny)), 9) % 360.0


@pytest.mark.parametrize("theta", [0.0, 45.0, 90.0, 180.0, 270.0, 359.0, -90.0, 726.0])
def test_dicom_angle_to_beta_matches_the_dicom_definition(theta):
    assert dicom_angle_to_beta(theta) == pytest.approx(beta_from_dicom_definition(theta) % 360)
    named = {0.0: 180.0, 90.0: 270.0, 180.0: 0.0, 270.0: 90.0}  # back, left, front, right
    if theta in named:
        assert dicom_angle_to_beta(theta) == named[theta]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("^99m^Technetium", "Tc-99m"),
        ("Technetium Tc-99m", "Tc-99m"),
        ("Tc99m", "Tc-99m"),
        ("99mTc", "Tc-99m"),
        ("^177^Lutetium", "Lu-177"),
        ("Lutetium-177", "Lu-177"),
        ("177Lu", "Lu-177"),
        ("Iodine^131^", "I-131"),
        ("^111^Indium", "In-111"),
        ("Unobtainium", "Unobtainium"),
        ("", None),
    ],
)
def test_parse_isotope(text, expected):
    assert parse_isotope(text) == expected


# -- NM planar ----------------------------------------------------------------------------------

R, C = 16, 20  # our rows (z) and bins (x) of the planar detector
DZ, DX = 4.0, 3.0  # row height, bin width (mm): unequal, so a swap cannot pass
POINT_XZ = ((15 - (C - 1) / 2) * DX, (11 - (R - 1) / 2) * DZ)  # x = 16.5 (left), z = 14 (head)
EXPECTED_AP, EXPECTED_PA = (11, 15), (11, 4)  # from docs/conventions.md: AP r = x, PA r = −x

ANT, POST = [1, 0, 0, 0, 0, -1], [-1, 0, 0, 0, 0, -1]  # standard display, head at the top
IOP_CASES = {
    "standard": (ANT, POST, True),
    "absent": (ANT, POST, False),
    "head at bottom": ([1, 0, 0, 0, 0, 1], [-1, 0, 0, 0, 0, 1], True),
    "posterior stored as seen from the front": (ANT, [1, 0, 0, 0, 0, -1], True),
    "transposed": ([0, 0, -1, 1, 0, 0], [0, 0, 1, -1, 0, 0], True),
    "axial IOP is ignored": ([1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 1, 0], "axial"),
}


def planar_frame(iop: list[float], standard: list[float], value: float = 1000.0):
    """A stored frame with one hot pixel at POINT_XZ, placed by ImagePositionPatient/Orientation.

    Columns run along iop[:3], rows along iop[3:]; the detector centre is at x = z = 0. An axial
    (meaningless) IOP is stored, but the pixel is placed by the view's ``standard`` display.
    """
    rowcos, colcos = np.array(iop[:3], float), np.array(iop[3:], float)
    if abs(colcos[1]) > 0.5:
        rowcos, colcos = np.array(standard[:3], float), np.array(standard[3:], float)

    def size(v):
        return (C, DX) if abs(v[0]) > 0.5 else (R, DZ)

    (n_cols, d_col), (n_rows, d_row) = size(rowcos), size(colcos)
    ipp = -((n_cols - 1) / 2 * d_col * rowcos + (n_rows - 1) / 2 * d_row * colcos)
    p = np.array([POINT_XZ[0], 0.0, POINT_XZ[1]])
    col, row = (p - ipp) @ rowcos / d_col, (p - ipp) @ colcos / d_row
    assert col == round(col) and row == round(row)
    img = np.zeros((n_rows, n_cols))
    img[round(row), round(col)] = value
    return img, (d_row, d_col), ipp


def write_planar(tmp_path: Path, iops, write_iop, *, multiframe: bool, views=True):
    """AP and PA frames as two single-frame files or one two-detector file."""
    frames, items = [], []
    spacing = None
    for view, iop, standard in zip(("ANTERIOR", "POSTERIOR"), iops, (ANT, POST), strict=True):
        img, spacing, ipp = planar_frame(iop, standard)
        frames.append(img)
        item = detector_item(view=view if views else None, iop=iop if write_iop else None)
        if write_iop:
            item.ImagePositionPatient = [float(v) for v in ipp]
        items.append(item)

    def fill(ds, n):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
        ds.PixelSpacing = list(spacing)
        ds.ActualFrameDuration = 300000
        nm_header(ds, nuclide="^99m^Technetium", window=(126.0, 154.0))
        ds.DetectorVector = list(range(1, n + 1))
        ds.EnergyWindowVector = [1] * n

    if multiframe:
        ds = new_file(tmp_path / "planar.dcm", NuclearMedicineImageStorage, "NM")
        fill(ds, 2)
        ds.NumberOfDetectors = 2
        ds.DetectorInformationSequence = items
        set_pixels(ds, np.stack(frames))
        return [save(ds, tmp_path / "planar.dcm")]
    paths = []
    for name, img, item in zip(("ant.dcm", "post.dcm"), frames, items, strict=True):
        ds = new_file(tmp_path / name, NuclearMedicineImageStorage, "NM")
        fill(ds, 1)
        ds.NumberOfDetectors = 1
        ds.DetectorInformationSequence = [item]
        set_pixels(ds, img)
        paths.append(save(ds, tmp_path / name))
    return paths


def test_expected_planar_pixels_are_those_of_our_projector():
    grid = ImageGrid((R, 10, C), (DZ, 5.0, DX))
    a = torch.zeros(grid.shape, dtype=torch.float64)
    k, i = (round(v) for v in grid.index_of((POINT_XZ[1], 0.0, POINT_XZ[0]))[::2])
    a[k, 4, i] = 1.0
    ap, pa = project(a, ParallelGeometry.ap_pa(grid))
    assert [tuple(t) for t in torch.nonzero(ap).tolist()] == [EXPECTED_AP]
    assert [tuple(t) for t in torch.nonzero(pa).tolist()] == [EXPECTED_PA]


@pytest.mark.parametrize("multiframe", [False, True], ids=["two files", "one 2-detector file"])
@pytest.mark.parametrize("case", list(IOP_CASES))
def test_planar_point_source_lands_where_conventions_say(tmp_path, case, multiframe):
    ant_iop, post_iop, write_iop = IOP_CASES[case]
    paths = write_planar(tmp_path, (ant_iop, post_iop), bool(write_iop), multiframe=multiframe)
    images = read_nm_planar(paths if len(paths) > 1 else paths[0])
    assert images.images.shape == (2, R, C) and images.images.dtype == np.float32
    assert images.pixel_size_mm == (DZ, DX)
    assert [tuple(t) for t in np.argwhere(images.anterior)] == [EXPECTED_AP]
    assert [tuple(t) for t in np.argwhere(images.posterior)] == [EXPECTED_PA]
    assert images.anterior[EXPECTED_AP] == 1000.0
    if write_iop is True:
        assert images.orientation[0].startswith("ImageOrientationPatient")
    else:
        assert images.orientation[0].startswith("standard display")
    assert images.isotope == "Tc-99m" and images.energy_keV == 140.5
    assert images.energy_window_keV == (126.0, 154.0)
    assert images.duration_s == (300.0, 300.0)


def test_planar_reads_a_folder_and_needs_views_without_view_codes(tmp_path):
    write_planar(tmp_path, (ANT, POST), False, multiframe=False, views=False)
    with pytest.raises(ValueError, match=r"ant\.dcm: .*ViewCodeSequence \(0054,0220\)"):
        read_nm_planar(tmp_path)
    images = read_nm_planar(tmp_path, views=["anterior", "posterior"])
    assert [tuple(t) for t in np.argwhere(images.posterior)] == [EXPECTED_PA]
    swapped = read_nm_planar(tmp_path, views=["posterior", "anterior"])
    assert not np.array_equal(swapped.images, images.images)


def test_whole_body_projector_round_trip_and_study(tmp_path):
    """Our AP/PA projections, stored head-up as a viewer shows them, read back unchanged."""
    grid = ImageGrid((24, 12, 14), (4.0, 4.0, 4.0))
    gen = torch.Generator().manual_seed(1)
    activity = torch.rand(grid.shape, generator=gen, dtype=torch.float64) ** 8
    mu = torch.zeros(grid.shape, dtype=torch.float64)
    mu[:, :, 7:] = 0.015  # attenuation on the patient's left only
    proj = project(activity, ParallelGeometry.ap_pa(grid), mu=mu).numpy()
    counts = np.round(proj * 500.0)
    ds = new_file(tmp_path / "wb.dcm", NuclearMedicineImageStorage, "NM")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.PixelSpacing = [4.0, 4.0]
    ds.ActualFrameDuration = 600000
    ds.ScanVelocity = 150.0
    ds.ScanLength = 1800.0
    ds.NumberOfDetectors = 2
    ds.DetectorVector = [2, 1]  # posterior stored first
    ds.EnergyWindowVector = [1, 1]
    ds.DetectorInformationSequence = [
        detector_item("anterior", ANT, radius=120.0),
        detector_item("posterior", POST, radius=140.0),
    ]
    nm_header(ds, nuclide="^177^Lutetium", window=(187.2, 228.8))
    set_pixels(ds, np.stack([to_viewer(counts[1]), to_viewer(counts[0])]))
    save(ds, tmp_path / "wb.dcm")

    images = read_nm_planar(tmp_path / "wb.dcm")
    np.testing.assert_array_equal(images.images, counts.astype(np.float32))
    assert images.whole_body and images.scan_velocity_mm_per_s == 150.0
    assert images.scan_length_mm == 1800.0 and images.radius_mm == (120.0, 140.0)
    assert images.isotope == "Lu-177" and images.energy_keV == 208.4

    mu_np = mu.numpy()
    study = nm_planar_study(images, grid, mu=mu_np, sensitivity_cps_per_mbq=10.0)
    acq = study.acquisition
    assert acq.angles_deg == (0.0, 180.0) and acq.detector_shape == (24, 14)
    assert acq.pixel_size_mm == (4.0, 4.0) and acq.energy_keV == 208.4
    assert acq.duration_s is None  # whole body: the frame time is not the dwell time
    assert acq.radius_mm == 130.0 and acq.energy_window_keV == (187.2, 228.8)
    assert study.mu_per_mm.dtype == np.float32 and study.projections.shape == (2, 24, 14)
    assert nm_planar_study(images, grid, duration_s=20.0).acquisition.duration_s == 20.0
    with pytest.raises(ValueError, match="mu has shape"):
        nm_planar_study(images, grid, mu=mu_np[1:])


# -- NM tomographic -----------------------------------------------------------------------------


def write_tomo(
    path: Path,
    frames_by_detector: list[np.ndarray],
    starts: list[float | None],
    step: float,
    direction: str,
    *,
    angular_view_vector: bool = True,
    radii=(None, None),
    nuclide: str | None = "^177^Lutetium",
    window: tuple[float, float] | None = (187.2, 228.8),
    image_type: str = "TOMO",
    rotation_start: float | None = 0.0,
    pixel_spacing=(4.0, 4.0),
) -> Path:
    """A multi-frame NM TOMO file, frames ordered by detector then angle (stored head-up)."""
    n = frames_by_detector[0].shape[0]
    n_det = len(frames_by_detector)
    ds = new_file(path, NuclearMedicineImageStorage, "NM")
    ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "EMISSION"]
    ds.PixelSpacing = list(pixel_spacing)
    ds.NumberOfDetectors = n_det
    ds.NumberOfRotations = 1
    ds.DetectorVector = [d + 1 for d in range(n_det) for _ in range(n)]
    ds.RotationVector = [1] * (n * n_det)
    ds.EnergyWindowVector = [1] * (n * n_det)
    if angular_view_vector:
        ds.AngularViewVector = list(range(1, n + 1)) * n_det
    rot = Dataset()
    if rotation_start is not None:
        rot.StartAngle = rotation_start
    rot.AngularStep = step
    if direction:
        rot.RotationDirection = direction
    rot.ScanArc = step * n
    rot.NumberOfFramesInRotation = n
    rot.ActualFrameDuration = 20000
    ds.RotationInformationSequence = [rot]
    ds.DetectorInformationSequence = [
        detector_item(start=starts[d], radius=radii[d]) for d in range(n_det)
    ]
    nm_header(ds, nuclide=nuclide, window=window)
    set_pixels(ds, np.concatenate(frames_by_detector))
    return save(ds, path)


def dicom_angles(start: float, step: float, direction: str, n: int) -> list[float]:
    """Frame angles from the DICOM definition: CW = decreasing angle, CC = increasing."""
    sign = -1.0 if direction == "CW" else 1.0
    return [start + sign * k * step for k in range(n)]


TOMO_GRID = ImageGrid((10, 16, 16), (4.0, 4.0, 4.0))


@pytest.mark.parametrize("angular_view_vector", [True, False])
@pytest.mark.parametrize("direction", ["CW", "CC"])
def test_tomo_projector_round_trip(tmp_path, direction, angular_view_vector):
    """Frames made by our projector at β = f(DICOM angle), stored head-up, read back sorted."""
    gen = torch.Generator().manual_seed(2)
    activity = torch.rand(TOMO_GRID.shape, generator=gen, dtype=torch.float64) ** 6
    mu = torch.zeros(TOMO_GRID.shape, dtype=torch.float64)
    mu[:, 8:, :] = 0.012  # posterior half attenuates
    n, step, starts = 30, 6.0, [0.0, 180.0]
    thetas = [dicom_angles(s, step, direction, n) for s in starts]
    betas = [[beta_from_dicom_definition(t) for t in th] for th in thetas]
    counts = []
    for b in betas:
        proj = project(activity, ParallelGeometry(TOMO_GRID, b), mu=mu).numpy()
        counts.append(np.round(proj * 800.0))
    per_view = [250.0 + k for k in range(n)]
    path = write_tomo(
        tmp_path / "tomo.dcm",
        [to_viewer(c) for c in counts],
        starts,
        step,
        direction,
        angular_view_vector=angular_view_vector,
        radii=(per_view, 260.0),
    )
    projections, acq = read_nm_tomo(path)
    all_betas = np.concatenate(betas)
    order = np.argsort(all_betas, kind="stable")
    np.testing.assert_array_equal(projections, np.concatenate(counts)[order].astype(np.float32))
    np.testing.assert_allclose(acq.angles_deg, all_betas[order], atol=1e-9)
    assert np.all(np.diff(acq.angles_deg) > 0) and len(acq.angles_deg) == 2 * n
    assert acq.detector_shape == (10, 16) and acq.pixel_size_mm == (4.0, 4.0)
    assert acq.energy_keV == 208.4 and acq.isotope == "Lu-177"
    assert acq.energy_window_keV == (187.2, 228.8) and acq.duration_s == 20.0
    details = read_nm_tomo_details(path)
    radii = np.concatenate([per_view, [260.0] * n])[order]
    np.testing.assert_allclose(details.radii_mm, radii)
    assert acq.radius_mm == pytest.approx(radii.mean())
    np.testing.assert_allclose(details.dicom_angles_deg, np.concatenate(thetas)[order])
    assert details.detectors.tolist() == (np.repeat([1, 2], n)[order]).tolist()


@pytest.mark.parametrize("direction", ["CW", "CC"])
def test_tomo_point_source_placed_from_dicom_definitions(tmp_path, direction):
    """Hot pixels placed as a viewer behind each detector sees them (head up, patient beyond the
    detector), at the DICOM angles of a CW/CC two-detector orbit, must match our projector."""
    grid = TOMO_GRID
    rows, bins = grid.shape[0], grid.shape[2]
    k, j, i = 7, 3, 12  # superior, anterior, patient-left voxel
    z, y, x = (float(grid.centres_mm(a)[v]) for a, v in zip(range(3), (k, j, i), strict=True))
    starts, step, n = [0.0, 180.0], 90.0, 2
    frames_by_det = []
    for s in starts:
        stack = np.zeros((n, rows, bins))
        for v, theta in enumerate(dicom_angles(s, step, direction, n)):
            t = math.radians(theta)
            towards_detector = np.array([math.sin(t), math.cos(t), 0.0])
            right = np.cross(-towards_detector, [0.0, 0.0, 1.0])  # viewer's right, head up
            col = float(np.dot([x, y, z], right)) / 4.0 + (bins - 1) / 2
            row = (rows - 1) / 2 - z / 4.0
            stack[v, round(row), round(col)] = 100.0
        frames_by_det.append(stack)
    path = write_tomo(tmp_path / "pt.dcm", frames_by_det, starts, step, direction)
    projections, acq = read_nm_tomo(path)
    assert acq.angles_deg == (0.0, 90.0, 180.0, 270.0)
    point = torch.zeros(grid.shape, dtype=torch.float64)
    point[k, j, i] = 1.0
    expected = project(point, ParallelGeometry(grid, acq.angles_deg)).numpy()
    for v in range(4):
        assert np.argwhere(projections[v]).tolist() == np.argwhere(expected[v]).tolist(), v


def test_tomo_energy_from_window_centre_and_override(tmp_path):
    frames = [np.ones((4, 6, 8))]
    path = write_tomo(
        tmp_path / "t.dcm", frames, [None], 90.0, "CC", nuclide=None, window=(100.0, 120.0)
    )
    _, acq = read_nm_tomo(path)
    assert acq.energy_keV == 110.0 and acq.isotope is None
    assert acq.angles_deg == (0.0, 90.0, 180.0, 270.0)  # single detector: rotation StartAngle 0
    assert read_nm_tomo(path, energy_keV=140.5)[1].energy_keV == 140.5
    nowin = write_tomo(tmp_path / "n.dcm", frames, [None], 90.0, "CC", nuclide=None, window=None)
    with pytest.raises(ValueError, match=r"n\.dcm: the photon energy is unknown"):
        read_nm_tomo(nowin)


# -- error messages -----------------------------------------------------------------------------


def _tomo(tmp_path, name, **kw):
    frames = [np.ones((2, 4, 4)), np.ones((2, 4, 4))]
    args = {"starts": [0.0, 180.0], "step": 90.0, "direction": "CW"}
    args.update(kw)
    return write_tomo(tmp_path / name, frames, **args)


NM_ERRORS = [
    ("no_direction.dcm", {"direction": ""}, r"RotationDirection \(0018,1140\) is missing"),
    ("bad_direction.dcm", {"direction": "UP"}, r"RotationDirection \(0018,1140\) = 'UP'"),
    ("no_start.dcm", {"starts": [None, None]}, r"StartAngle \(0054,0200\) is missing"),
    ("gated.dcm", {"image_type": "GATED TOMO"}, r"ImageType \(0008,0008\)"),
]


@pytest.mark.parametrize(("name", "kwargs", "message"), NM_ERRORS)
def test_tomo_errors_name_the_file_and_attribute(tmp_path, name, kwargs, message):
    path = _tomo(tmp_path, name, **kwargs)
    with pytest.raises(ValueError, match=message) as info:
        read_nm_tomo(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_planar_rejects_tomo_and_tomo_rejects_planar(tmp_path):
    tomo = _tomo(tmp_path, "tomo.dcm")
    with pytest.raises(ValueError, match=r"tomo\.dcm: ImageType \(0008,0008\).*read_nm_tomo"):
        read_nm_planar(tomo)
    planar = write_planar(tmp_path, (ANT, POST), True, multiframe=True)[0]
    with pytest.raises(ValueError, match=r"planar\.dcm: ImageType .* must be TOMO"):
        read_nm_tomo(planar)


# -- CT -----------------------------------------------------------------------------------------

CT_Z, CT_Y, CT_X = 20, 28, 24  # slices, rows (y), columns (x) in LPS order
CT_D = (3.0, 4.0, 5.0)  # dz, dy, dx (mm)
CT_LO = tuple(-(n - 1) / 2 * d for n, d in zip((CT_Z, CT_Y, CT_X), CT_D, strict=True))
ROD = (17.5, 12.5, 10.0)  # x (patient left), y (posterior), radius (mm); only at z >= 0
BODY_RADIUS = 50.0


def phantom_hu(x, y, z):
    """Water cylinder along z with a bone rod on the patient's left, posterior, superior side."""
    hu = np.where(x**2 + y**2 <= BODY_RADIUS**2, 0.0, -1000.0)
    rod = ((x - ROD[0]) ** 2 + (y - ROD[1]) ** 2 <= ROD[2] ** 2) & (z >= 0)
    return np.where(rod, 1000.0, hu)


CT_IOPS = {
    "axial": [1, 0, 0, 0, 1, 0],
    "x flipped": [-1, 0, 0, 0, 1, 0],
    "y flipped (normal −z)": [1, 0, 0, 0, -1, 0],
    "transposed": [0, 1, 0, 1, 0, 0],
}


def write_ct(folder: Path, iop, *, slope=0.5, intercept=-1024.0, drop=None, series=None):
    folder.mkdir(parents=True, exist_ok=True)
    rowcos, colcos = np.array(iop[:3], float), np.array(iop[3:], float)
    n_of = {0: CT_X, 1: CT_Y}
    d_of = {0: CT_D[2], 1: CT_D[1]}
    lo_of = {0: CT_LO[2], 1: CT_LO[1]}
    ca, ra = int(np.argmax(np.abs(rowcos))), int(np.argmax(np.abs(colcos)))
    n_cols, n_rows = n_of[ca], n_of[ra]
    series = series or generate_uid()
    zs = [CT_LO[0] + CT_D[0] * s for s in range(CT_Z) if s != drop]
    order = list(range(len(zs)))
    random.Random(3).shuffle(order)
    for n, s in enumerate(order):
        ipp = np.zeros(3)
        for axis, cos in ((ca, rowcos), (ra, colcos)):
            ipp[axis] = lo_of[axis] if cos[axis] > 0 else -lo_of[axis]
        ipp[2] = zs[s]
        r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        pos = ipp + c[..., None] * d_of[ca] * rowcos + r[..., None] * d_of[ra] * colcos
        hu = phantom_hu(pos[..., 0], pos[..., 1], pos[..., 2])
        ds = new_file(folder / f"ct{n:03d}.dcm", CTImageStorage, "CT", series)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in ipp]
        ds.PixelSpacing = [d_of[ra], d_of[ca]]
        ds.SliceThickness = CT_D[0]
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.InstanceNumber = n + 1
        set_pixels(ds, np.round((hu - intercept) / slope)[None], signed=True, frames=False)
        save(ds, folder / f"ct{n:03d}.dcm")
    return folder


def ct_truth(geometry: CtGeometry) -> np.ndarray:
    z, y, x = np.meshgrid(*(geometry.centres_mm(a) for a in range(3)), indexing="ij")
    return phantom_hu(x, y, z)


@pytest.mark.parametrize("case", list(CT_IOPS))
def test_ct_series_is_sorted_and_oriented_in_lps(tmp_path, case):
    folder = write_ct(tmp_path / "ct", CT_IOPS[case])
    (folder / "notes.txt").write_text("not DICOM")
    hu, geometry = read_ct_series(folder)
    assert hu.shape == (CT_Z, CT_Y, CT_X) and hu.dtype == np.float32
    assert geometry.spacing_mm == CT_D
    np.testing.assert_allclose(geometry.origin_mm, CT_LO)
    assert geometry.frame_of_reference_uid == "1.2.3.4"
    np.testing.assert_array_equal(hu, ct_truth(geometry))
    # the rod: patient left (+x), posterior (+y), superior (+z) → high indices on all axes
    assert hu[-1, 17, 15] == 1000.0 and hu[0, 17, 15] == 0.0
    assert hu[-1, 17, 8] == 0.0 and hu[-1, 10, 15] == 0.0
    grid = geometry.to_image_grid()
    np.testing.assert_allclose(grid.centres_mm(2).numpy(), geometry.centres_mm(2))


def test_ct_to_mu_on_a_coarser_spect_grid(tmp_path):
    hu, geometry = read_ct_series(write_ct(tmp_path / "ct", CT_IOPS["y flipped (normal −z)"]))
    grid = ImageGrid((12, 32, 32), (6.0, 5.0, 5.0))  # covers the CT with margin
    energy = 140.5
    mu = ct_to_mu_on_grid(hu, geometry, grid, energy)
    assert mu.shape == grid.shape and mu.dtype == np.float32 and mu.min() >= 0
    mu_w = water_mu_per_mm(energy)
    mu_rod = float(hu_to_mu_per_mm(np.array(1000.0), energy))

    def at(z, y, x):
        k, j, i = (round(v) for v in grid.index_of((z, y, x)))
        assert grid.index_of((z, y, x)) == (k, j, i)
        return float(mu[k, j, i])

    assert at(21.0, ROD[1], ROD[0]) == pytest.approx(mu_rod, rel=1e-5)
    for z, y, x in [(21.0, ROD[1], -ROD[0]), (21.0, -ROD[1], ROD[0]), (-21.0, ROD[1], ROD[0])]:
        assert at(z, y, x) == pytest.approx(mu_w, rel=1e-5)  # mirrored positions are water
    assert at(3.0, -2.5, -2.5) == pytest.approx(mu_w, rel=1e-5)
    assert np.all(mu[:, 0, :] == 0) and np.all(mu[:, :, -1] == 0)  # air outside the CT
    mu_ct = hu_to_mu_per_mm(hu, energy)
    total_ct = mu_ct.sum() * math.prod(CT_D)
    assert mu.sum(dtype=np.float64) * grid.voxel_volume_mm3 == pytest.approx(total_ct, rel=1e-5)
    shifted = ct_to_mu_on_grid(hu, geometry, grid, energy, axis_position_lps_mm=(0.0, 0.0, 20.0))
    np.testing.assert_allclose(shifted[:, :, :-4], mu[:, :, 4:], atol=1e-7)


def test_resampling_identity_block_mean_and_linear_interpolation():
    geometry = CtGeometry((6, 8, 10), (3.0, 2.0, 2.5), (-7.5, -7.0, -11.25))
    vol = np.random.default_rng(4).random(geometry.shape).astype(np.float32)
    same = resample_to_grid(vol, geometry, geometry.to_image_grid())
    np.testing.assert_allclose(same, vol, atol=1e-6)
    coarse = ImageGrid((3, 4, 5), (6.0, 4.0, 5.0), geometry.to_image_grid().offset_mm)
    blocks = vol.reshape(3, 2, 4, 2, 5, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(resample_to_grid(vol, geometry, coarse), blocks, atol=1e-6)
    fine = ImageGrid((7, 9, 11), (1.1, 0.9, 1.3), (0.2, -0.3, 0.4))  # inside the CT
    idx = [
        (fine.centres_mm(a).numpy() - geometry.origin_mm[a]) / geometry.spacing_mm[a]
        for a in range(3)
    ]
    coords = np.stack(np.meshgrid(*idx, indexing="ij"))
    linear = scipy.ndimage.map_coordinates(vol.astype(np.float64), coords, order=1)
    np.testing.assert_allclose(resample_to_grid(vol, geometry, fine), linear, atol=1e-5)
    hu_out = resample_to_grid(
        vol, geometry, ImageGrid((2, 2, 2), (1.0,) * 3, (100.0,) * 3), fill=-1000.0
    )
    assert np.all(hu_out == -1000.0)


def test_ct_errors_name_the_file_and_attribute(tmp_path):
    oblique = [1.0, 0.0, 0.0, 0.0, math.cos(0.3), math.sin(0.3)]
    folder = write_ct(tmp_path / "oblique", CT_IOPS["axial"])
    for f in folder.iterdir():
        ds = dcmread(f)
        ds.ImageOrientationPatient = oblique
        save(ds, f)
    with pytest.raises(
        ValueError, match=r"ct\d+\.dcm: ImageOrientationPatient \(0020,0037\).*oblique"
    ):
        read_ct_series(folder)
    gap = write_ct(tmp_path / "gap", CT_IOPS["axial"], drop=7)
    with pytest.raises(ValueError, match=r"ImagePositionPatient \(0020,0032\).*missing slices"):
        read_ct_series(gap)
    two = write_ct(tmp_path / "two", CT_IOPS["axial"], series="1.2.3.1")
    write_ct(tmp_path / "two" / "sub", CT_IOPS["axial"])
    for f in (tmp_path / "two" / "sub").iterdir():
        f.rename(tmp_path / "two" / f"b_{f.name}")
    with pytest.raises(ValueError, match="several CT series"):
        read_ct_series(two)
    hu, _ = read_ct_series(two, series_uid="1.2.3.1")
    assert hu.shape == (CT_Z, CT_Y, CT_X)
    missing = write_ct(tmp_path / "missing", CT_IOPS["axial"])
    victim = sorted(missing.iterdir())[5]
    ds = dcmread(victim)
    del ds.ImagePositionPatient
    save(ds, victim)
    with pytest.raises(
        ValueError, match=rf"{victim.name}: ImagePositionPatient \(0020,0032\) is missing"
    ):
        read_ct_series(missing)
