"""Segmentations onto a study (`recon.io.segmentation*`): NIfTI label maps and masks, DICOM SEG,
RTSTRUCT, CT/μ thresholds."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from recon.io import Acquisition, Study
from recon.io.segmentation import (
    TOTALSEGMENTATOR_TOTAL,
    anatomy_from_nifti,
    anatomy_from_nifti_folder,
    import_anatomy,
    read_names,
)
from recon.io.segmentation_dicom import anatomy_from_dicom, anatomy_from_rtstruct
from recon.io.segmentation_threshold import anatomy_from_threshold, body_from_threshold
from spectproj import ImageGrid, hu_to_mu_per_mm, water_mu_per_mm

# Study grid: x centres −8..10 (edges odd), y centres −13.5..7.5 (edges multiples of 3),
# z centres −8..12 (edges −10, −6, ..., 14).
GRID = ImageGrid((6, 8, 10), (4.0, 3.0, 2.0), (2.0, -3.0, 1.0))
ENERGY = 140.5


def make_study(mu: np.ndarray | None = None, ct: np.ndarray | None = None) -> Study:
    acq = Acquisition(
        angles_deg=(0.0,), detector_shape=(6, 10), pixel_size_mm=(4.0, 2.0), energy_keV=ENERGY
    )
    return Study(
        projections=np.zeros((1, 6, 10), np.float32),
        acquisition=acq,
        grid=GRID,
        mu_per_mm=mu,
        ct_hu=ct,
    )


def centres(grid: ImageGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS ``(x, y, z)`` of every voxel centre, each ``[Z, Y, X]``."""
    axes = [
        (np.arange(n) - (n - 1) / 2) * d + o
        for n, d, o in zip(grid.shape, grid.spacing_mm, grid.offset_mm, strict=True)
    ]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return x, y, z


def l_block(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """An asymmetric L on the patient's right (x < 0), edges on the study grid's voxel edges."""
    stem = (x > -9) & (x < -3) & (y > -12) & (y < -3) & (z > -6) & (z < 2)
    foot = (x > -9) & (x < -5) & (y > -3) & (y < 6) & (z > -6) & (z < -2)
    return stem | foot


def bar(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return (x > 3) & (x < 9) & (y > -6) & (y < 0) & (z > 2) & (z < 10)


def write_label_nifti(path: Path, columns: np.ndarray, values, *, shape=(33, 33, 33)) -> Path:
    """A NIfTI whose voxel (i, j, k) holds ``values(x, y, z)`` at its LPS centre.

    ``columns`` [3, 3]: RAS direction × spacing of i, j, k; the volume centre is at RAS
    (0.3, 0.2, 0.1) so that no study voxel centre falls halfway between two source voxels.
    """
    affine = np.eye(4)
    affine[:3, :3] = columns
    half = (np.asarray(shape) - 1) / 2
    affine[:3, 3] = np.array([0.3, 0.2, 0.1]) - columns @ half
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ras = np.einsum("ab,bijk->aijk", columns, np.stack([i, j, k])) + affine[:3, 3, None, None, None]
    data = values(-ras[0], -ras[1], ras[2]).astype(np.int16)
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(None, code=0)
    nib.save(image, path)
    return path


# i along S (1.5 mm), j toward the patient's left (RAS −x, 1.25 mm), k anterior (RAS +y, 1 mm).
PERMUTED = np.array([[0.0, -1.25, 0.0], [0.0, 0.0, 1.0], [1.5, 0.0, 0.0]])
# i toward the patient's right (RAS +x), j posterior (RAS −y), k inferior (RAS −z).
FLIPPED = np.diag([1.1, -0.9, -1.7])


@pytest.mark.parametrize("columns", [PERMUTED, FLIPPED], ids=["permuted", "flipped"])
def test_nifti_label_map_lands_on_the_right_study_voxels(tmp_path: Path, columns) -> None:
    path = write_label_nifti(
        tmp_path / "seg.nii.gz", columns, lambda x, y, z: 5 * l_block(x, y, z) + bar(x, y, z)
    )
    anatomy = anatomy_from_nifti(make_study(), path)  # TotalSegmentator: 5 liver, 1 spleen
    x, y, z = centres(GRID)
    assert sorted(anatomy.names.values()) == ["liver", "spleen"]
    np.testing.assert_array_equal(anatomy.mask("liver"), l_block(x, y, z))
    np.testing.assert_array_equal(anatomy.mask("spleen"), bar(x, y, z))
    assert int(anatomy.mask("liver").sum()) == 3 * 3 * 2 + 2 * 3 * 1  # stem + foot voxels
    assert anatomy.body is None  # no CT, no μ, no body class
    assert "TotalSegmentator" in anatomy.source


def test_names_from_a_file_and_renaming(tmp_path: Path) -> None:
    path = write_label_nifti(
        tmp_path / "seg.nii", FLIPPED, lambda x, y, z: 3 * l_block(x, y, z) + 8 * bar(x, y, z)
    )
    names = tmp_path / "names.txt"
    names.write_text("# mine\n3: urinary_bladder\n8 = my bar\n")
    got = anatomy_from_nifti(make_study(), path, names)
    assert dict(got.names) == {1: "bladder", 2: "my bar"}
    kept = anatomy_from_nifti(make_study(), path, {3: "urinary_bladder", 8: "bar"}, rename=False)
    assert sorted(kept.names.values()) == ["bar", "urinary_bladder"]


def test_read_names_formats(tmp_path: Path) -> None:
    (tmp_path / "n.json").write_text('{"1": "liver", "2": "spleen"}')
    (tmp_path / "n.toml").write_text('1 = "liver"\n"2" = "spleen"\n')
    (tmp_path / "n.txt").write_text("1: liver\n\n2 spleen  # comment\n")
    for name in ("n.json", "n.toml", "n.txt"):
        assert read_names(tmp_path / name) == {1: "liver", 2: "spleen"}
    (tmp_path / "bad.txt").write_text("1: liver\nspleen\n")
    with pytest.raises(ValueError, match=r"bad.txt: line 2: expected 'value: name'"):
        read_names(tmp_path / "bad.txt")
    (tmp_path / "zero.json").write_text('{"0": "none"}')
    with pytest.raises(ValueError, match=r"zero.json: key '0': label value 0 must be > 0"):
        read_names(tmp_path / "zero.json")


def test_totalsegmentator_class_map() -> None:
    assert len(TOTALSEGMENTATOR_TOTAL) == 117
    expected = {
        1: "spleen",
        2: "kidney_right",
        3: "kidney_left",
        5: "liver",
        10: "lung_upper_lobe_left",
        14: "lung_lower_lobe_right",
        21: "urinary_bladder",
        27: "vertebrae_L5",
        43: "vertebrae_T1",
        50: "vertebrae_C1",
        51: "heart",
        92: "rib_left_1",
        115: "rib_right_12",
        117: "costal_cartilages",
    }
    assert {k: TOTALSEGMENTATOR_TOTAL[k] for k in expected} == expected


def write_mask(path: Path, values) -> Path:
    return write_label_nifti(path, FLIPPED, lambda x, y, z: values(x, y, z).astype(np.int16))


def test_mask_folder_overlap_merge_and_body(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    folder.mkdir()
    x, y, z = centres(GRID)
    write_mask(folder / "liver.nii.gz", l_block)
    write_mask(folder / "tumour.nii.gz", lambda x, y, z: (x > -9) & (x < -7) & l_block(x, y, z))
    write_mask(folder / "lung_upper_lobe_left.nii.gz", lambda x, y, z: bar(x, y, z) & (z > 6))
    write_mask(folder / "lung_lower_lobe_left.nii.gz", lambda x, y, z: bar(x, y, z) & (z < 6))
    write_mask(folder / "body.nii.gz", lambda x, y, z: (x > -11) & (x < 11))
    with pytest.warns(UserWarning, match=r"liver.nii.gz and tumour.nii.gz overlap in 9 voxel"):
        anatomy = anatomy_from_nifti_folder(make_study(), folder)
    assert sorted(anatomy.names.values()) == ["liver", "lungs", "tumour"]
    tumour = (x > -9) & (x < -7) & l_block(x, y, z)
    np.testing.assert_array_equal(anatomy.mask("tumour"), tumour)
    np.testing.assert_array_equal(anatomy.mask("liver"), l_block(x, y, z) & ~tumour)
    np.testing.assert_array_equal(anatomy.mask("lungs"), bar(x, y, z))
    assert anatomy.body is not None
    np.testing.assert_array_equal(anatomy.body, np.ones(GRID.shape, bool))


def _body_mu() -> np.ndarray:
    """μ: water everywhere except air at x = 8 and 10 (outside the body)."""
    x, _, _ = centres(GRID)
    return np.where(x > 7, 0.0, water_mu_per_mm(ENERGY)).astype(np.float32)


def _write_affine(path: Path, affine: np.ndarray, *, sform: int = 1, qform: int = 0) -> Path:
    image = nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4))
    image.set_qform(affine if qform else None, code=qform)
    image.set_sform(affine, code=sform)
    nib.save(image, path)
    return path


BAD_INPUTS = [
    (
        "singular",
        lambda p: _write_affine(p, np.diag([1.0, 0.0, 1.0, 1.0])),
        None,
        "orientation unknown: the affine is singular",
    ),
    (
        "no-orientation",
        lambda p: _write_affine(p, np.diag([2.0, 2.0, 2.0, 1.0]), sform=0, qform=0),
        None,
        "orientation unknown: neither sform nor qform is set",
    ),
    (
        "unnamed-values",
        lambda p: write_label_nifti(p, FLIPPED, lambda x, y, z: 7 * l_block(x, y, z)),
        {1: "liver"},
        r"label values \[7\] have no name",
    ),
    (
        "not-integers",
        lambda p: nib.save(nib.Nifti1Image(np.full((3, 3, 3), 0.5, np.float32), np.eye(4)), p),
        None,
        "not a label map: values are not integers",
    ),
    (
        "4d",
        lambda p: nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.int16), np.eye(4)), p),
        None,
        r"expected a 3D label map, got shape \(3, 3, 3, 2\)",
    ),
    (
        "not-nifti",
        lambda p: p.write_bytes(b"not a nifti file at all" * 20),
        None,
        "not a readable NIfTI file",
    ),
]


@pytest.mark.parametrize(
    ("write", "names", "problem"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_segmentations_are_refused_in_one_line(tmp_path: Path, write, names, problem) -> None:
    path = tmp_path / "seg.nii"
    write(path)
    with pytest.raises(ValueError) as info:
        anatomy_from_nifti(make_study(), path, names)
    message = str(info.value)
    assert "\n" not in message
    assert re.match(rf"{re.escape(str(path))}: .*{problem}", message), message


def test_far_away_affine_does_not_overlap(tmp_path: Path) -> None:
    affine = np.eye(4)
    affine[:3, 3] = (500.0, 0.0, 0.0)
    path = _write_affine(tmp_path / "far.nii", affine)
    with pytest.raises(ValueError, match=r"far\.nii: the segmentation does not overlap"):
        anatomy_from_nifti(make_study(), path)


REPAIRED = [
    # (what is written, names, warning, expected segment names)
    (
        "partial-coverage",
        lambda x, y, z: 5 * l_block(x, y, z),
        (15, 15, 15),  # ±7.7 mm in x: the L's column at x = −8 is outside
        {5: "liver"},
        r"covers \d+ of 480 study voxels",
    ),
    (
        "empty-label",
        lambda x, y, z: 5 * l_block(x, y, z),
        (33, 33, 33),
        {5: "liver", 6: "spleen"},
        r"segment\(s\) \['spleen'\] have no voxel on the study grid; dropped",
    ),
    (
        "outside-body",
        lambda x, y, z: 5 * l_block(x, y, z) + 6 * bar(x, y, z),
        (33, 33, 33),
        {5: "liver", 6: "spleen"},
        r"4 labelled voxel\(s\) lie outside the body outline; dropped",
    ),
]


@pytest.mark.parametrize(
    ("values", "shape", "names", "warning"),
    [case[1:] for case in REPAIRED],
    ids=[case[0] for case in REPAIRED],
)
def test_repairable_problems_warn_and_repair(tmp_path: Path, values, shape, names, warning) -> None:
    path = write_label_nifti(tmp_path / "seg.nii.gz", FLIPPED, values, shape=shape)
    study = make_study(mu=_body_mu())
    with pytest.warns(UserWarning, match=warning):
        anatomy = anatomy_from_nifti(study, path, names)
    assert anatomy.body is not None
    assert not np.any((anatomy.labels > 0) & ~anatomy.body)  # nothing left outside the body


def test_outside_body_drops_exactly_those_voxels(tmp_path: Path) -> None:
    path = write_label_nifti(tmp_path / "s.nii.gz", FLIPPED, lambda x, y, z: 6 * bar(x, y, z))
    with pytest.warns(UserWarning, match=r"4 labelled voxel"):
        anatomy = anatomy_from_nifti(make_study(mu=_body_mu()), path, {6: "spleen"})
    x, y, z = centres(GRID)
    np.testing.assert_array_equal(anatomy.mask("spleen"), bar(x, y, z) & (x < 7))
    assert int(bar(x, y, z).sum()) - int(anatomy.mask("spleen").sum()) == 4


# -- thresholds ---------------------------------------------------------------------------------


def test_threshold_segmentation_of_mu_and_ct() -> None:
    x, y, z = centres(GRID)
    hu = np.full(GRID.shape, -1000.0)
    body = (np.abs(x) < 8) & (y > -12) & (y < 6)
    hu[body] = 0.0
    lungs = body & (x < -1) & (x > -5) & (y > -9) & (y < 0)
    hu[lungs] = -700.0
    gas = body & (x > 1) & (x < 5) & (y > 0) & (y < 4) & (z < 0)
    hu[gas] = -1000.0
    bone = body & (np.abs(x) < 2) & (y > 2) & (y < 6)  # touches the back: still in the body
    hu[bone] = 1000.0
    hu[0, 0, 0] = 0.0  # a speck of "tissue" outside: not the largest component
    for study in (
        make_study(ct=hu.astype(np.float32)),
        make_study(mu=hu_to_mu_per_mm(hu, ENERGY).astype(np.float32)),
    ):
        anatomy = anatomy_from_threshold(study)
        assert list(anatomy.names.values()) == ["lungs", "bone", "gas"]
        np.testing.assert_array_equal(anatomy.mask("lungs"), lungs)
        np.testing.assert_array_equal(anatomy.mask("gas"), gas)
        np.testing.assert_array_equal(anatomy.mask("bone"), bone)
        np.testing.assert_array_equal(anatomy.body, body)
        np.testing.assert_array_equal(body_from_threshold(study), body)
    with pytest.raises(ValueError, match="neither a CT"):
        anatomy_from_threshold(make_study())
    assert import_anatomy(make_study(ct=hu.astype(np.float32)), None, threshold=True).body.sum()


# -- DICOM --------------------------------------------------------------------------------------


def _new(path: Path, sop_class: str, modality: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = "1.2.3"
    return ds


def _save(ds: FileDataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _item(**kw) -> Dataset:
    item = Dataset()
    for k, v in kw.items():
        setattr(item, k, v)
    return item


# The CT / SEG lattice: 1 mm pixels, x from −10.5, y from −15.5 (rows), slices every 4 mm from
# z = −8 (the study's z centres): 21 × 24 pixels, 6 slices.
LAT_X0, LAT_Y0, NX, NY = -10.5, -15.5, 22, 24
LAT_Z = [-8.0 + 4.0 * k for k in range(6)]


def _lattice_xy() -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(LAT_X0 + np.arange(NX), LAT_Y0 + np.arange(NY))  # [rows, cols]


def write_seg(path: Path) -> Path:
    ds = _new(path, "1.2.840.10008.5.1.4.1.1.66.4", "SEG")
    ds.SegmentationType = "BINARY"
    ds.SegmentSequence = [
        _item(SegmentNumber=1, SegmentLabel="liver"),
        _item(SegmentNumber=2, SegmentLabel="spleen"),
    ]
    ds.SharedFunctionalGroupsSequence = [
        _item(
            PlaneOrientationSequence=[_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])],
            PixelMeasuresSequence=[_item(PixelSpacing=[1.0, 1.0], SliceThickness=4.0)],
        )
    ]
    x, y = _lattice_xy()
    frames, per_frame = [], []
    for number, shape in ((1, l_block), (2, bar)):
        for z in LAT_Z:
            mask = shape(x, y, np.full_like(x, z))
            if not mask.any():
                continue  # SEG leaves empty frames out
            frames.append(mask)
            per_frame.append(
                _item(
                    PlanePositionSequence=[_item(ImagePositionPatient=[LAT_X0, LAT_Y0, z])],
                    SegmentIdentificationSequence=[_item(ReferencedSegmentNumber=number)],
                )
            )
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = NY, NX
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    bits = np.packbits(np.stack(frames).reshape(-1), bitorder="little")
    ds.PixelData = bits.tobytes() + (b"\0" if bits.size % 2 else b"")
    return _save(ds, path)


def test_dicom_seg_lands_on_the_right_study_voxels(tmp_path: Path) -> None:
    path = write_seg(tmp_path / "seg.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # frames cover z = −4..8 only: empty ones are left out
        anatomy = anatomy_from_dicom(make_study(), path)
    x, y, z = centres(GRID)
    np.testing.assert_array_equal(anatomy.mask("liver"), l_block(x, y, z))
    np.testing.assert_array_equal(anatomy.mask("spleen"), bar(x, y, z))
    assert anatomy.source.startswith("DICOM SEG")


def write_ct_series(folder: Path) -> Path:
    folder.mkdir()
    series = generate_uid()
    for k, z in enumerate(LAT_Z):
        ds = _new(folder / f"ct{k}.dcm", CTImageStorage, "CT")
        ds.SeriesInstanceUID = series
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [LAT_X0, LAT_Y0, z]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 4.0
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.Rows, ds.Columns = NY, NX
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.full((NY, NX), 1024, np.uint16).tobytes()
        _save(ds, folder / f"ct{k}.dcm")
    return folder


def _contour(z: float, corners: list[tuple[float, float]]) -> Dataset:
    data = [v for cx, cy in corners for v in (cx, cy, z)]
    return _item(ContourGeometricType="CLOSED_PLANAR", ContourData=data)


def write_rtstruct(path: Path) -> Path:
    ds = _new(path, "1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT")
    ds.StructureSetROISequence = [
        _item(ROINumber=1, ROIName="liver"),
        _item(ROINumber=2, ROIName="External"),
    ]
    ds.RTROIObservationsSequence = [
        _item(ReferencedROINumber=2, RTROIInterpretedType="EXTERNAL"),
    ]
    liver = []
    for z in LAT_Z:
        if -6 < z < 2:  # the L's stem, with its foot on the two lower slices
            liver.append(_contour(z, [(-9, -12), (-3, -12), (-3, -3), (-9, -3)]))
            if z < -2:
                liver.append(_contour(z, [(-9, -3.2), (-5, -3.2), (-5, 6), (-9, 6)]))
    outside = [_contour(z, [(-10, -15), (10, -15), (10, 9), (-10, 9)]) for z in LAT_Z]
    ds.ROIContourSequence = [
        _item(ReferencedROINumber=1, ContourSequence=liver),
        _item(ReferencedROINumber=2, ContourSequence=outside),
    ]
    return _save(ds, path)


def test_rtstruct_rasterised_on_the_ct_slices(tmp_path: Path) -> None:
    ct = write_ct_series(tmp_path / "ct")
    path = write_rtstruct(tmp_path / "rt.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact fit: no warning expected
        anatomy = anatomy_from_rtstruct(make_study(), path, ct)
    x, y, z = centres(GRID)
    np.testing.assert_array_equal(anatomy.mask("liver"), l_block(x, y, z))
    assert list(anatomy.names.values()) == ["liver"]
    assert anatomy.body is not None
    np.testing.assert_array_equal(anatomy.body, (x > -10) & (x < 10))
    with pytest.raises(ValueError, match=r"rt.dcm: an RTSTRUCT needs the CT series"):
        anatomy_from_dicom(make_study(), path)


def test_round_trip_with_the_projects_nifti_writer(tmp_path: Path) -> None:
    """`spect convert to-nifti`'s writer and this reader agree on LPS ↔ RAS."""
    from recon.io.nifti import write_nifti

    x, y, z = centres(GRID)
    labels = (3 * l_block(x, y, z) + 8 * bar(x, y, z)).astype(np.int16)
    path = write_nifti(tmp_path / "labels.nii.gz", labels, GRID)
    anatomy = anatomy_from_nifti(make_study(), path, {3: "liver", 8: "spleen"})
    np.testing.assert_array_equal(anatomy.mask("liver"), labels == 3)
    np.testing.assert_array_equal(anatomy.mask("spleen"), labels == 8)


def test_load_anatomy_from_a_study_file_or_a_segmentation(tmp_path: Path) -> None:
    from recon.io import Anatomy, write_study
    from recon.io.segmentation import load_anatomy

    x, y, z = centres(GRID)
    study = make_study()
    anatomy = Anatomy(l_block(x, y, z).astype(np.int32), {1: "liver"}, None, "hand")
    write_study(tmp_path / "a.h5", Study(**{**study.__dict__, "anatomy": anatomy}))
    np.testing.assert_array_equal(load_anatomy(study, tmp_path / "a.h5").labels, anatomy.labels)
    write_study(tmp_path / "none.h5", study)
    with pytest.raises(ValueError, match=r"none\.h5: the study file holds no anatomy"):
        load_anatomy(study, tmp_path / "none.h5")
    other = Study(**{**study.__dict__, "grid": ImageGrid((6, 8, 10), (4.0, 3.0, 2.0))})
    with pytest.raises(ValueError, match=r"a\.h5: its anatomy is on grid"):
        load_anatomy(other, tmp_path / "a.h5")
    path = write_label_nifti(tmp_path / "s.nii.gz", FLIPPED, lambda x, y, z: 5 * l_block(x, y, z))
    np.testing.assert_array_equal(load_anatomy(study, path).mask("liver"), l_block(x, y, z))
