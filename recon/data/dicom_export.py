"""DICOM files as cameras and PACS write them, from simulated studies (tests, tutorial, demos).

- `write_nm_planar`: an AP/PA study as one multi-frame NM image (Static), frames ordered by
  energy window then detector, with EnergyWindowVector / DetectorVector, the energy windows
  (EnergyWindowInformationSequence), the views (ViewCodeSequence), the times
  (AcquisitionDate/Time, RadiopharmaceuticalStartDateTime) and the radionuclide.
- `write_ct_series`: a CT volume on a study grid as one axial file per slice (LPS, HU).
- `write_seg`: a segmentation (`recon.io.study.Anatomy`) as a DICOM SEG (binary, one frame per
  segment and slice, empty frames left out).
- `write_patient_folder`: the torso phantom as a folder of a Lu-177 "patient" (planar NM with
  triple-energy windows, CT, SEG) and a calibration source image: the data of
  ``docs/tutorial-patient.md``.

The files follow the NM, CT and Segmentation IODs as far as the project's readers need them
(`recon.io.dicom_nm`, `recon.io.dicom_ct`, `recon.io.segmentation_dicom`); they are not meant to
pass a full DICOM validator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset

from recon.io.atomic import atomic_output
from recon.io.study import Anatomy, Study
from spectproj import ImageGrid, hu_to_mu_per_mm, water_mu_per_mm

__all__ = [
    "PatientFolder",
    "mu_to_hu",
    "write_ct_series",
    "write_nm_planar",
    "write_patient_folder",
    "write_seg",
]

PathLike = str | os.PathLike[str]

_NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: RadionuclideCodeSequence meanings (SNOMED-style, as cameras write them).
_NUCLIDE_CODES = {
    "Tc-99m": ("C-163A8", "^99m^Technetium"),
    "Lu-177": ("C-145A4", "^177^Lutetium"),
    "I-131": ("C-B1318", "^131^Iodine"),
}


def _dicom_dt(iso: str) -> tuple[str, str]:
    """``(DA, TM)`` of an ISO 8601 date-time (no time zone)."""
    t = datetime.fromisoformat(iso)
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S") + (
        f".{t.microsecond:06d}" if t.microsecond else ""
    )


def _new(sop_class: str, modality: str, ids: Mapping[str, str]) -> FileDataset:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = ids.get("patient_name", "PHANTOM^TORSO")
    ds.PatientID = ids.get("patient_id", "PHANTOM")
    ds.StudyInstanceUID = ids["study_uid"]
    ds.FrameOfReferenceUID = ids["frame_uid"]
    ds.Manufacturer = "spect (simulated)"
    return ds


def _ids(ids: Mapping[str, str] | None) -> dict[str, str]:
    from pydicom.uid import generate_uid

    out = dict(ids or {})
    out.setdefault("study_uid", str(generate_uid()))
    out.setdefault("frame_uid", str(generate_uid()))
    return out


def _pixels(ds: Dataset, frames: np.ndarray, *, signed: bool = False, bits: int = 16) -> None:
    arr = np.asarray(frames)
    ds.Rows, ds.Columns = int(arr.shape[-2]), int(arr.shape[-1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    if bits == 1:
        packed = np.packbits(arr.astype(bool).reshape(-1), bitorder="little").tobytes()
        ds.PixelData = packed + (b"\0" if len(packed) % 2 else b"")
    else:
        dtype = np.int16 if signed else np.uint16
        ds.PixelData = np.ascontiguousarray(arr.astype(dtype)).tobytes()


def _save(ds: FileDataset, path: PathLike, overwrite: bool) -> Path:
    with atomic_output(path, overwrite=overwrite) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)


def _item(**values: object) -> Dataset:
    item = Dataset()
    for key, value in values.items():
        setattr(item, key, value)
    return item


def _counts_uint16(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.size and (a.min() < 0 or a.max() > 65535 or not np.all(a == np.round(a))):
        raise ValueError(
            f"{name}: NM pixels are whole counts 0..65535, got values in "
            f"[{a.min():.6g}, {a.max():.6g}] (use Poisson counts, fewer counts per pixel)"
        )
    return a.astype(np.uint16)


def write_nm_planar(
    path: PathLike,
    study: Study,
    *,
    acquisition_start: str | None = None,
    injection_time: str | None = None,
    injected_mbq: float | None = None,
    ids: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an AP/PA study as a multi-frame NM planar file, the way dual-head cameras do.

    Frames are ordered by energy window, then detector (1 anterior, 2 posterior): the photopeak
    window (the study's projections, window 1) then each of ``study.windows``; each frame is
    stored in the standard display (head at the top, seen from the detector), i.e. the rows of
    our projections flipped.

    Parameters
    ----------
    path:
        The file to write (atomically).
    study:
        Views β = 0 and 180 of whole counts (0..65535) with ``energy_window_keV``,
        ``duration_s``, ``isotope`` and the pixel size; its ``windows`` are written too.
    acquisition_start, injection_time:
        ISO 8601 (no time zone) AcquisitionDate/Time and RadiopharmaceuticalStartDateTime.
    injected_mbq:
        RadionuclideTotalDose (MBq).
    ids:
        ``study_uid``, ``frame_uid``, ``patient_id``, ``patient_name`` shared with the CT/SEG.

    Raises
    ------
    ValueError
        Not an AP/PA study, no photopeak window or duration, counts that are not 16-bit integers.
    """
    from recon.corrections.nuclides import HALF_LIVES_S

    acq = study.acquisition
    if [a % 360.0 for a in acq.angles_deg] != [0.0, 180.0]:
        raise ValueError(f"write_nm_planar needs views β = 0, 180; got {acq.angles_deg}")
    if acq.energy_window_keV is None or acq.duration_s is None:
        raise ValueError("write_nm_planar needs the study's energy_window_keV and duration_s")
    windows = [("PEAK", acq.energy_window_keV, study.projections)]
    windows += [(w.name, (w.low_keV, w.high_keV), w.counts) for w in study.windows]
    frames, detector_vector, window_vector, window_items = [], [], [], []
    for k, (name, (low, high), counts) in enumerate(windows):
        pixels = _counts_uint16(f"window {name}", counts)
        for detector in (1, 2):
            frames.append(pixels[detector - 1, ::-1, :])  # standard display: head at the top
            detector_vector.append(detector)
            window_vector.append(k + 1)
        window_items.append(
            _item(
                EnergyWindowName=name.upper()[:16],
                EnergyWindowRangeSequence=[
                    _item(EnergyWindowLowerLimit=float(low), EnergyWindowUpperLimit=float(high))
                ],
            )
        )
    ids = _ids(ids)
    ds = _new(_NM_STORAGE, "NM", ids)
    from pydicom.uid import generate_uid

    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = "Planar AP/PA, triple energy window"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    ds.PixelSpacing = [float(acq.pixel_size_mm[0]), float(acq.pixel_size_mm[1])]
    ds.ActualFrameDuration = round(acq.duration_s * 1000.0)
    ds.NumberOfEnergyWindows = len(windows)
    ds.EnergyWindowInformationSequence = window_items
    ds.NumberOfDetectors = 2
    ds.EnergyWindowVector = window_vector
    ds.DetectorVector = detector_vector
    ds.NumberOfFrames = len(frames)
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]  # window, detector
    detectors = []
    for view in ("ANTERIOR", "POSTERIOR"):
        item = _item(
            ViewCodeSequence=[
                _item(
                    CodeValue="R-10B1E" if view == "ANTERIOR" else "R-10B1F",
                    CodingSchemeDesignator="SRT",
                    CodeMeaning=view.lower(),
                )
            ]
        )
        if acq.radius_mm is not None:
            item.RadialPosition = float(acq.radius_mm)
        if acq.collimator:
            item.CollimatorGridName = acq.collimator
        detectors.append(item)
    ds.DetectorInformationSequence = detectors
    if acquisition_start is not None:
        date, time = _dicom_dt(acquisition_start)
        ds.AcquisitionDate = ds.SeriesDate = ds.StudyDate = date
        ds.AcquisitionTime = ds.SeriesTime = ds.StudyTime = time
    if acq.isotope is not None:
        code = _NUCLIDE_CODES.get(acq.isotope, ("99SPECT", acq.isotope))
        radio = _item(
            RadionuclideCodeSequence=[
                _item(CodeValue=code[0], CodingSchemeDesignator="SRT", CodeMeaning=code[1])
            ]
        )
        if acq.isotope in HALF_LIVES_S:
            radio.RadionuclideHalfLife = round(HALF_LIVES_S[acq.isotope], 1)
        if injection_time is not None:
            date, time = _dicom_dt(injection_time)
            radio.RadiopharmaceuticalStartDateTime = date + time
            radio.RadiopharmaceuticalStartTime = time
        if injected_mbq is not None:
            radio.RadionuclideTotalDose = float(injected_mbq)
        ds.RadiopharmaceuticalInformationSequence = [radio]
    _pixels(ds, np.stack(frames))
    return _save(ds, path, overwrite)


def mu_to_hu(mu_per_mm: np.ndarray, energy_keV: float) -> np.ndarray:
    """The HU that `spectproj.hu_to_mu_per_mm` maps to ``mu_per_mm`` at ``energy_keV`` (its
    bilinear model inverted; μ = 0 gives −1000 HU)."""
    mu = np.asarray(mu_per_mm, dtype=np.float64)
    mu_w = water_mu_per_mm(energy_keV)
    slope_bone = (float(hu_to_mu_per_mm(np.asarray(1000.0), energy_keV)) - mu_w) / 1000.0
    return np.where(mu <= mu_w, 1000.0 * (mu / mu_w - 1.0), (mu - mu_w) / slope_bone)


def _plane(grid: ImageGrid, k: int) -> tuple[list[float], float]:
    """``(ImagePositionPatient of slice k's first voxel, its z)`` in LPS mm."""
    (dz, dy, dx), (oz, oy, ox) = grid.spacing_mm, grid.offset_mm
    nz, ny, nx = grid.shape
    z = oz + (k - (nz - 1) / 2.0) * dz
    return [ox - (nx - 1) / 2.0 * dx, oy - (ny - 1) / 2.0 * dy, z], z


def write_ct_series(
    folder: PathLike,
    hu: np.ndarray,
    grid: ImageGrid,
    *,
    ids: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write a CT ``[Z, Y, X]`` (HU) on ``grid`` as axial slices ``folder/CT0001.dcm``...

    The grid's coordinates are taken as LPS (mm), as everywhere in the project; pixels are
    ``HU + 1024`` with RescaleIntercept −1024 (rounded to 1 HU).
    """
    from pydicom.uid import generate_uid

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ids = _ids(ids)
    series = generate_uid()
    values = np.clip(np.round(np.asarray(hu, dtype=np.float64)) + 1024.0, 0, 65535)
    paths = []
    for k in range(grid.shape[0]):
        ds = _new(_CT_STORAGE, "CT", ids)
        ipp, z = _plane(grid, k)
        ds.SeriesInstanceUID = series
        ds.SeriesDescription = "CT for attenuation correction"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = ipp
        ds.SliceLocation = z
        ds.PixelSpacing = [float(grid.spacing_mm[1]), float(grid.spacing_mm[2])]
        ds.SliceThickness = float(grid.spacing_mm[0])
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        _pixels(ds, values[k])
        paths.append(_save(ds, out / f"CT{k + 1:04d}.dcm", overwrite))
    return paths


def write_seg(
    path: PathLike,
    anatomy: Anatomy,
    grid: ImageGrid,
    *,
    ids: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a segmentation on ``grid`` as a binary DICOM SEG (one frame per segment and
    non-empty slice, placed by ImagePositionPatient; ``anatomy.body``, if any, as a segment
    ``body``)."""
    ids = _ids(ids)
    ds = _new(_SEG_STORAGE, "SEG", ids)
    from pydicom.uid import generate_uid

    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = "Organ segmentation"
    ds.SegmentationType = "BINARY"
    masks: list[tuple[str, np.ndarray]] = [
        (name, anatomy.labels == value) for value, name in sorted(anatomy.names.items())
    ]
    if anatomy.body is not None:
        masks.append(("body", np.asarray(anatomy.body, dtype=bool)))
    ds.SegmentSequence = [
        _item(SegmentNumber=n + 1, SegmentLabel=name, SegmentAlgorithmType="MANUAL")
        for n, (name, _) in enumerate(masks)
    ]
    ds.SharedFunctionalGroupsSequence = [
        _item(
            PlaneOrientationSequence=[_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])],
            PixelMeasuresSequence=[
                _item(
                    PixelSpacing=[float(grid.spacing_mm[1]), float(grid.spacing_mm[2])],
                    SliceThickness=float(grid.spacing_mm[0]),
                    SpacingBetweenSlices=float(grid.spacing_mm[0]),
                )
            ],
        )
    ]
    frames, per_frame = [], []
    for n, (_, mask) in enumerate(masks):
        for k in range(grid.shape[0]):
            if not mask[k].any():
                continue
            frames.append(mask[k])
            per_frame.append(
                _item(
                    PlanePositionSequence=[_item(ImagePositionPatient=_plane(grid, k)[0])],
                    SegmentIdentificationSequence=[_item(ReferencedSegmentNumber=n + 1)],
                )
            )
    if not frames:
        raise ValueError("write_seg: the segmentation is empty")
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.NumberOfFrames = len(frames)
    _pixels(ds, np.stack(frames), bits=1)
    return _save(ds, path, overwrite)


@dataclass(frozen=True)
class PatientFolder:
    """What `write_patient_folder` wrote, and the numbers a tutorial compares with.

    Attributes
    ----------
    folder: the top folder.
    nm: the planar NM file; ct: the CT folder; seg: the SEG file; calibration: the calibration
        source's planar file.
    calibration_mbq, calibration_time: the source's activity (MBq) at its reference time.
    sensitivity_cps_per_mbq: the camera's sensitivity used in the simulation.
    organ_mbq: each structure's true activity (MBq) at the acquisition start: its own activity
        (sub-voxel, `recon.data.simulate`), not the activity in its labelled voxels, which
        partial volumes at the boundaries change (−16 % for the kidneys at 32³, −7 % at 64³).
    """

    folder: Path
    nm: Path
    ct: Path
    seg: Path
    calibration: Path
    calibration_mbq: float
    calibration_time: str
    sensitivity_cps_per_mbq: float
    organ_mbq: Mapping[str, float]


def _decayed_sensitivity(
    sensitivity: float, half_life_s: float, elapsed_s: float, duration_s: float
) -> float:
    """The sensitivity that gives a study the counts of an activity known at ``elapsed_s``
    before the acquisition start (decay before and during the frame)."""
    from recon.corrections.timing import decay_factor

    return sensitivity * decay_factor(half_life_s, elapsed_s, duration_s)


def write_patient_folder(
    folder: PathLike,
    *,
    size: int = 64,
    fov_mm: float = 400.0,
    duration_s: float = 900.0,
    scatter_fraction: float = 0.3,
    sensitivity_cps_per_mbq: float = 10.0,
    acquisition_start: str = "2024-05-02T10:00:00",
    injection_time: str = "2024-05-01T10:00:00",
    calibration_mbq: float = 20.0,
    seed: int = 0,
    overwrite: bool = False,
) -> PatientFolder:
    """The torso phantom (Lu-177 DOTATATE uptake) as a patient's DICOM folder.

    Writes ``folder/NM/planar.dcm`` (AP/PA, photopeak 187.6–229.2 keV and the lower and upper
    scatter windows, MEGP collimator blur, Poisson counts; `recon.data.simulate`),
    ``folder/CT/CT0001.dcm``... (the phantom's μ as HU, `mu_to_hu`), ``folder/SEG/organs.dcm``
    (the phantom's organs, lesions unsegmented, with the body outline) and
    ``folder/CALIBRATION/source.dcm`` (a point source of ``calibration_mbq`` in air, measured
    one hour before its 120 s acquisition, an hour before the patient's).

    Parameters
    ----------
    folder:
        Created if needed; existing files are refused unless ``overwrite``.
    size, fov_mm:
        Voxels per axis and edge (mm) of the phantom's cubic grid (the detector's pixels). The
        default, 64³ voxels of 6.25 mm, is fine enough for the lesions' activities
        (`recon.anatomy.reconstruct.COARSE_VOXEL_MM`).
    duration_s:
        Time per view (s).
    scatter_fraction:
        Scatter / (primary + scatter) in the photopeak window (0 ≤ f < 1).
    sensitivity_cps_per_mbq:
        The simulated camera's planar sensitivity.
    acquisition_start, injection_time:
        ISO 8601 times written to the files; the phantom's activity is the activity at
        ``acquisition_start``.
    calibration_mbq:
        Activity of the calibration source at its reference time.
    seed:
        Seed of the Poisson noise.
    """
    import torch

    from recon.corrections.nuclides import HALF_LIVES_S
    from recon.corrections.timing import seconds_between
    from recon.data.phantoms import (
        COLLIMATORS,
        NUCLIDES,
        Phantom,
        TorsoPhantom,
        default_grid,
        make_torso,
        segmentation_from_phantom,
    )
    from recon.data.simulate import simulate_acquisition
    from spectproj import ParallelGeometry

    if not 0 <= scatter_fraction < 1:
        raise ValueError(f"scatter_fraction must be in [0, 1), got {scatter_fraction!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    nuclide = "Lu-177"
    half_life = HALF_LIVES_S[nuclide]
    phantom = make_torso(
        default_grid(size, fov_mm), NUCLIDES[nuclide], TorsoPhantom.lu177_dotatate()
    )
    geometry = ParallelGeometry.ap_pa(phantom.grid, radius_mm=250.0)
    # The phantom's activity is at the acquisition start: the counts carry the decay during the
    # frame, as a camera's do.
    patient_sensitivity = _decayed_sensitivity(sensitivity_cps_per_mbq, half_life, 0.0, duration_s)
    study = simulate_acquisition(
        phantom,
        geometry,
        collimator=COLLIMATORS[nuclide],
        scatter_fraction=scatter_fraction / (1.0 - scatter_fraction),
        scatter_windows=True,
        sensitivity_cps_per_mbq=patient_sensitivity,
        duration_s=duration_s,
        isotope=nuclide,
        seed=seed,
    )
    ids = _ids({"patient_id": "TORSO-LU177", "patient_name": "PHANTOM^TORSO"})
    for sub in ("NM", "SEG", "CALIBRATION"):
        (out / sub).mkdir(exist_ok=True)
    nm = write_nm_planar(
        out / "NM" / "planar.dcm",
        study,
        acquisition_start=acquisition_start,
        injection_time=injection_time,
        injected_mbq=7400.0,
        ids=ids,
        overwrite=overwrite,
    )
    hu = mu_to_hu(phantom.mu.numpy(), phantom.energy_keV)
    write_ct_series(out / "CT", hu, phantom.grid, ids=ids, overwrite=overwrite)
    seg = segmentation_from_phantom(phantom)
    seg_path = write_seg(
        out / "SEG" / "organs.dcm", seg, phantom.grid, ids=ids, overwrite=overwrite
    )

    # Calibration: a one-voxel source in air at the centre, measured an hour before its scan.
    start = datetime.fromisoformat(acquisition_start)
    cal_start = (start - timedelta(hours=1)).isoformat()
    cal_time = (start - timedelta(hours=2)).isoformat()
    cal_duration = 120.0
    activity = torch.zeros(phantom.grid.shape, dtype=torch.float64)
    voxel_ml = math.prod(phantom.grid.spacing_mm) * 1e-3
    centre = tuple(n // 2 for n in phantom.grid.shape)
    activity[centre] = calibration_mbq * 1e6 / voxel_ml  # Bq/mL
    source = Phantom(
        activity=activity,
        mu=torch.zeros_like(activity),
        labels=torch.zeros(phantom.grid.shape, dtype=torch.int64),
        label_names={},
        grid=phantom.grid,
        energy_keV=phantom.energy_keV,
    )
    cal_study = simulate_acquisition(
        source,
        geometry,
        collimator=COLLIMATORS[nuclide],
        sensitivity_cps_per_mbq=_decayed_sensitivity(
            sensitivity_cps_per_mbq,
            half_life,
            seconds_between(cal_time, cal_start),
            cal_duration,
        ),
        duration_s=cal_duration,
        isotope=nuclide,
        seed=seed + 1,
    )
    cal = write_nm_planar(
        out / "CALIBRATION" / "source.dcm",
        cal_study,
        acquisition_start=cal_start,
        ids=_ids({"patient_id": "CALIBRATION", "patient_name": "CALIBRATION^SOURCE"}),
        overwrite=overwrite,
    )
    organ_mbq = {
        phantom.label_names[value]: mbq for value, mbq in sorted(phantom.activities_mbq.items())
    }
    return PatientFolder(
        folder=out,
        nm=nm,
        ct=out / "CT",
        seg=seg_path,
        calibration=cal,
        calibration_mbq=float(calibration_mbq),
        calibration_time=cal_time,
        sensitivity_cps_per_mbq=float(sensitivity_cps_per_mbq),
        organ_mbq=organ_mbq,
    )
