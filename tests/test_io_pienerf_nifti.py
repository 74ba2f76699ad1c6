"""pieNeRF manifests (orientation checked with point sources and our projector) and NIfTI files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from recon.io.nifti import grid_affine_ras, read_nifti, write_nifti
from recon.io.pienerf import pienerf_row_to_study, read_pienerf_manifest
from spectproj import ImageGrid, ParallelGeometry, hu_to_mu_per_mm, project

SHAPE = (5, 7, 9)  # our Z, Y, X: all different so that a wrong axis cannot pass
SPACING = (2.0, 3.0, 2.5)  # dz, dy, dx (mm)
ENERGY = 140.5


# -- pieNeRF -----------------------------------------------------------------------------------
def to_pil(volume_zyx: np.ndarray) -> np.ndarray:
    """Our [Z, Y, X] as the prototype's default CT layout "PIL", written out by hand:
    axis 0 = y (anterior → posterior), axis 1 = z reversed (head → feet), axis 2 = x (→ left)."""
    return np.transpose(volume_zyx, (1, 0, 2))[:, ::-1, :]


def generator_views(act: np.ndarray, mu: np.ndarray, step_mm: float) -> tuple[np.ndarray, ...]:
    """The data generator as documented: sum along the depth axis 0 with the midpoint rule; AP is
    attenuated from index 0 (anterior), PA from the last index; both keep the (axis 1, axis 2)
    layout, so PA is "mirror-corrected" (shares AP's orientation)."""
    cum = np.cumsum(mu, axis=0) * step_mm
    half = mu * step_mm / 2
    ap = (act * step_mm * np.exp(-(cum - half))).sum(axis=0)
    rev = np.cumsum(mu[::-1], axis=0)[::-1] * step_mm
    pa = (act * step_mm * np.exp(-(rev - half))).sum(axis=0)
    return ap, pa


def write_case(
    folder: Path, voxel: tuple[int, int, int], *, act_file: bool = True, hu: float = 0.0
) -> Path:
    """Files for one case with a point source at our voxel (k, j, i), in a uniform HU body."""
    act = np.zeros(SHAPE)
    act[voxel] = 1000.0
    hu_zyx = np.full(SHAPE, hu)
    ct_file = to_pil(hu_zyx)
    act_file_array = to_pil(act)
    ap, pa = generator_views(act_file_array, hu_to_mu_per_mm(ct_file, ENERGY), SPACING[1])
    np.save(folder / "ap.npy", ap.astype(np.float32))
    np.save(folder / "pa.npy", pa.astype(np.float32))
    np.save(folder / "ct.npy", ct_file.astype(np.float32))
    np.save(folder / "act.npy", act_file_array.astype(np.float32))
    csv = folder / "manifest.csv"
    act_cell = "act.npy" if act_file else ""
    csv.write_text(
        f"patient_id,ap_path,pa_path,ct_path,act_path\ncase1,ap.npy,pa.npy,ct.npy,{act_cell}\n"
    )
    return csv


PIL_SPACING = (SPACING[1], SPACING[0], SPACING[2])  # the CT file's axis order: y, z, x


@pytest.mark.parametrize("voxel", [(1, 1, 6), (3, 5, 2), (0, 0, 0), (4, 6, 8)])
def test_point_source_lands_where_our_convention_says(tmp_path, voxel):
    csv = write_case(tmp_path, voxel)
    (row,) = read_pienerf_manifest(csv)
    study = pienerf_row_to_study(row, spacing_mm=PIL_SPACING, energy_keV=ENERGY)
    assert study.grid == ImageGrid(SHAPE, SPACING)
    assert study.acquisition.angles_deg == (0.0, 180.0)
    k, j, i = voxel
    truth = np.zeros(SHAPE)
    truth[voxel] = 1000.0
    np.testing.assert_array_equal(study.truth_activity, truth)
    ap, pa = study.projections
    assert np.argwhere(ap > 0).tolist() == [[k, i]]  # AP: row = slice, bin = column
    assert np.argwhere(pa > 0).tolist() == [[k, SHAPE[2] - 1 - i]]  # PA: bin = X−1−i
    # Our projector on the imported volumes reproduces the imported images: the orientation
    # of the CT, the images and the end each view is attenuated from all agree.
    expected = project(
        torch.from_numpy(study.truth_activity.astype(np.float64)),
        ParallelGeometry.ap_pa(study.grid),
        mu=torch.from_numpy(study.mu_per_mm.astype(np.float64)),
    ).numpy()
    np.testing.assert_allclose(study.projections, expected, rtol=1e-5)
    # Depth: an anterior source (small j) is brighter in AP than in PA, and vice versa.
    ratio = ap.sum() / pa.sum()
    assert ratio > 1 if j < (SHAPE[1] - 1) / 2 else ratio <= 1


def test_pienerf_options(tmp_path):
    csv = write_case(tmp_path, (2, 1, 3), act_file=False)
    (row,) = read_pienerf_manifest(csv)
    assert row.act_path is None
    base = pienerf_row_to_study(row, spacing_mm=PIL_SPACING, energy_keV=ENERGY)
    assert base.truth_activity is None
    np.testing.assert_array_equal(base.ct_hu, np.zeros(SHAPE))
    # the raw (not mirror-corrected) PA stays as stored
    raw = pienerf_row_to_study(row, spacing_mm=PIL_SPACING, energy_keV=ENERGY, pa_mirrored=False)
    np.testing.assert_array_equal(raw.projections[1], base.projections[1][:, ::-1])
    # a CT holding μ in 1/cm
    mu_cm = to_pil(np.full(SHAPE, 0.15))
    np.save(tmp_path / "ct.npy", mu_cm)
    mu = pienerf_row_to_study(
        row, spacing_mm=PIL_SPACING, energy_keV=ENERGY, ct_is_mu=True, ct_mu_unit="1/cm"
    )
    assert mu.ct_hu is None
    np.testing.assert_allclose(mu.mu_per_mm, 0.015, rtol=1e-6)
    # a CT stored as our own [Z, Y, X] ("SPL"): images are then [z, x], rows toward the head
    act = np.zeros(SHAPE)
    act[2, 1, 3] = 1.0
    np.save(tmp_path / "ct.npy", np.zeros(SHAPE, np.float32))
    np.save(tmp_path / "ap.npy", act.sum(axis=1))
    np.save(tmp_path / "pa.npy", act.sum(axis=1))
    spl = pienerf_row_to_study(row, spacing_mm=SPACING, energy_keV=ENERGY, ct_orientation="SPL")
    assert np.argwhere(spl.projections[0]).tolist() == [[2, 3]]
    assert np.argwhere(spl.projections[1]).tolist() == [[2, SHAPE[2] - 1 - 3]]


def test_pienerf_bad_inputs(tmp_path):
    csv = write_case(tmp_path, (2, 1, 3))
    (row,) = read_pienerf_manifest(csv)
    kwargs = {"spacing_mm": PIL_SPACING, "energy_keV": ENERGY}
    with pytest.raises(ValueError, match=r"image shape .* does not match the CT"):
        pienerf_row_to_study(row, **kwargs, ct_orientation="SPL")
    with pytest.raises(ValueError, match="orientation must be three letters"):
        pienerf_row_to_study(row, **kwargs, ct_orientation="PIX")
    with pytest.raises(ValueError, match="spacing_mm"):
        pienerf_row_to_study(row, spacing_mm=(1.0, -1.0, 1.0), energy_keV=ENERGY)
    with pytest.raises(ValueError, match="ct_mu_unit"):
        pienerf_row_to_study(row, **kwargs, ct_is_mu=True, ct_mu_unit="1/m")  # type: ignore[arg-type]
    np.save(tmp_path / "ap.npy", -np.ones((5, 9)))  # PIL: images are [z, x] = (5, 9)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        pienerf_row_to_study(row, **kwargs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("patient_id,ap_path,pa_path\na,ap.npy,pa.npy\n", "missing column.*ct_path"),
        ("patient_id,ap_path,pa_path,ct_path\na,ap.npy,,ct.npy\n", "line 2: empty pa_path"),
        (
            "patient_id,ap_path,pa_path,ct_path\na,ap.npy,pa.npy,ct.npy\na,ap.npy,pa.npy,ct.npy\n",
            "line 3: patient_id 'a' repeats",
        ),
        ("patient_id,ap_path,pa_path,ct_path\na,ap.npy,pa.npy,nope.npy\n", "line 2: ct_path"),
    ],
)
def test_manifest_errors(tmp_path, text, message):
    write_case(tmp_path, (0, 0, 0))
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_pienerf_manifest(csv)


def test_manifest_paths_are_relative_to_the_csv(tmp_path):
    (tmp_path / "cases").mkdir()
    write_case(tmp_path / "cases", (0, 0, 0))
    csv = tmp_path / "all.csv"
    csv.write_text(
        "patient_id, ap_path, pa_path, ct_path\n"
        "p1, cases/ap.npy, cases/pa.npy, cases/ct.npy\n\n"
        f"p2,{tmp_path / 'cases/ap.npy'},cases/pa.npy,cases/ct.npy\n"
    )
    rows = read_pienerf_manifest(csv)
    assert [r.patient_id for r in rows] == ["p1", "p2"]
    assert rows[0].ap_path == tmp_path / "cases" / "ap.npy"
    assert rows[1].ap_path == tmp_path / "cases" / "ap.npy"
    assert rows[0].act_path is None


# -- NIfTI -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16, np.float64])
def test_nifti_round_trip(tmp_path, name, dtype):
    grid = ImageGrid(SHAPE, SPACING, offset_mm=(10.0, -7.5, 3.25))
    volume = np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(dtype)
    write_nifti(tmp_path / name, volume, grid)
    back, back_grid = read_nifti(tmp_path / name)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, volume)
    assert back_grid.shape == grid.shape
    # NIfTI-1 stores the affine in float32: equal to that precision
    assert back_grid.spacing_mm == pytest.approx(grid.spacing_mm, rel=1e-7)
    assert back_grid.offset_mm == pytest.approx(grid.offset_mm, rel=1e-6, abs=1e-5)


def test_nifti_orientation_is_lps_in_ras_world(tmp_path):
    """Voxel (k, j, i) at LPS (x, y, z) maps through the affine to RAS (−x, −y, z)."""
    grid = ImageGrid(SHAPE, SPACING, offset_mm=(10.0, -7.5, 3.25))
    volume = np.zeros(SHAPE, np.float32)
    k, j, i = 1, 5, 7
    volume[k, j, i] = 1.0
    write_nifti(tmp_path / "v.nii", volume, grid)
    image = nib.load(tmp_path / "v.nii")
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # i → left, j → posterior, k → head
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    data = np.asanyarray(image.dataobj)
    assert np.argwhere(data).tolist() == [[i, j, k]]  # stored (x, y, z)
    x, y, z = (float(grid.centres_mm(a)[n]) for a, n in (("x", i), ("y", j), ("z", k)))
    ras = image.affine @ np.array([i, j, k, 1.0])
    np.testing.assert_allclose(ras[:3], (-x, -y, z), atol=1e-5)
    np.testing.assert_allclose(grid_affine_ras(grid) @ [i, j, k, 1.0], (-x, -y, z, 1.0))


def test_read_nifti_reorients_other_layouts(tmp_path):
    """A file stored RAS (i → right, j → anterior) reads back as the same [Z, Y, X] volume."""
    grid = ImageGrid(SHAPE, SPACING)
    volume = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    ours = grid_affine_ras(grid)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = SHAPE[2] - 1, SHAPE[1] - 1  # index i' = X−1−i, j' = Y−1−j
    ras_data = volume.transpose(2, 1, 0)[::-1, ::-1, :]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ras_data), ours @ flip), tmp_path / "r.nii")
    back, back_grid = read_nifti(tmp_path / "r.nii")
    np.testing.assert_array_equal(back, volume)
    assert back_grid.spacing_mm == pytest.approx(SPACING)
    assert back_grid.offset_mm == pytest.approx((0.0, 0.0, 0.0), abs=1e-5)


def test_nifti_errors(tmp_path):
    grid = ImageGrid(SHAPE, SPACING)
    volume = np.zeros(SHAPE, np.float32)
    write_nifti(tmp_path / "v.nii.gz", volume, grid)
    with pytest.raises(FileExistsError):
        write_nifti(tmp_path / "v.nii.gz", volume, grid)
    write_nifti(tmp_path / "v.nii.gz", volume + 1, grid, overwrite=True)
    assert read_nifti(tmp_path / "v.nii.gz")[0].max() == 1.0
    with pytest.raises(ValueError, match="does not match grid shape"):
        write_nifti(tmp_path / "w.nii", np.zeros((2, 2, 2)), grid)
    with pytest.raises(ValueError, match=r"ends with \.nii"):
        write_nifti(tmp_path / "w.img", volume, grid)
    rotation = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    rotation[:2, :2] = [[c, -s], [s, c]]
    nib.save(nib.Nifti1Image(volume, rotation), tmp_path / "oblique.nii")
    with pytest.raises(ValueError, match="oblique"):
        read_nifti(tmp_path / "oblique.nii")
    nib.save(nib.Nifti1Image(np.zeros((2, 2)), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(ValueError, match="3D"):
        read_nifti(tmp_path / "flat.nii")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
