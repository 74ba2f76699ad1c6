"""The shared Lu-177 DOTATATE patient phantom (patient 15) as volumes or as an AP/PA study.

Source: BenAuer2021/Phantoms-For-Nuclear-Medicine-Imaging-Simulation (MIT licence), two Interfile
volumes of 90 slices × 70 rows × 108 columns: ``attn`` (CT stored as HU + 1000) and ``src`` (the
same CT with organ and tumour labels 15000–21000). The files are stored "LAI" (columns toward the
patient's left, rows toward anterior, slices toward the feet), established from the anatomy and
checked by ``tests/test_io_interfile.py``: the liver lies on the patient's right, the
kidneys posterior to it and below it, the lungs in the first slices, the spine and the curved
couch at the lowest row numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from recon.io.interfile import read_interfile
from recon.io.study import Acquisition, Study
from spectproj import ImageGrid, ParallelGeometry, hu_to_mu_per_mm, project

__all__ = [
    "DEFAULT_CONCENTRATIONS_BQ_PER_ML",
    "PATIENT15_LABELS",
    "Patient15",
    "find_patient15_folder",
    "load_patient15",
    "patient15_study",
]

PathLike = str | os.PathLike[str]

ATTN_HEADER = "patient15_LuDOTATATE_attn.h33"
SRC_HEADER = "patient15_LuDOTATATE_src.h33"
#: Orientation of the files' (column, row, slice) indices (see the module docstring).
PATIENT15_ORIENTATION = "LAI"
SOURCE = (
    "BenAuer2021/Phantoms-For-Nuclear-Medicine-Imaging-Simulation "
    "(commit 3fed323deb67fa9eff25c0cd2d6d77a2834aa185), patient_LuDOTATATE_phantoms.zip, patient 15"
)
LICENCE = "MIT License, Copyright (c) 2023 BenAuer2021"

#: Our label → (name, value in the ``src`` file). 17000 lies on the patient's left (larger x)
#: and higher than 18000, as the left kidney usually does.
PATIENT15_LABELS: Mapping[int, tuple[str, int]] = {
    1: ("liver", 15000),
    2: ("spleen", 16000),
    3: ("kidney_left", 17000),
    4: ("kidney_right", 18000),
    5: ("tumour_1", 19000),
    6: ("tumour_2", 20000),
    7: ("tumour_3", 21000),
}

#: Illustrative Lu-177 DOTATATE concentrations (Bq/mL) about a day after 7.4 GBq: tumours
#: highest, then spleen and kidneys, liver moderate, a low background in the rest of the body.
DEFAULT_CONCENTRATIONS_BQ_PER_ML: Mapping[str, float] = {
    "liver": 30e3,
    "spleen": 80e3,
    "kidney_left": 60e3,
    "kidney_right": 60e3,
    "tumour_1": 200e3,
    "tumour_2": 200e3,
    "tumour_3": 200e3,
    "background": 3e3,
}

#: Where the phantom lies in the shared data folder (``../shared``).
PATIENT15_SUBFOLDER = Path("data") / "lu177_dotatate_patient15"

#: CT numbers above this (HU) belong to the body outline (largest connected region).
BODY_THRESHOLD_HU = -500.0


@dataclass(frozen=True)
class Patient15:
    """The phantom on its grid, all arrays ``[Z, Y, X]`` in the LPS frame of the conventions.

    Attributes
    ----------
    grid
        90 × 70 × 108 voxels of 4.4196 × 3.9063 × 3.9063 mm, centred on the rotation axis.
    activity
        Activity concentration (Bq/mL), float32.
    mu_per_mm
        Linear attenuation coefficient at ``energy_keV`` (1/mm), float32.
    ct_hu
        CT in Hounsfield units, float32.
    labels
        Organ labels (uint8, 0 = none), named by ``label_names``.
    label_names
        ``{label: name}``: 1 liver, 2 spleen, 3 left kidney, 4 right kidney, 5–7 tumours.
    body
        Body outline (bool): the largest connected region with HU > −500 (the couch excluded).
    concentrations_bq_per_ml
        The concentration used for each name (and ``"background"``).
    energy_keV
        Photon energy of ``mu_per_mm`` (keV).
    """

    grid: ImageGrid
    activity: np.ndarray
    mu_per_mm: np.ndarray
    ct_hu: np.ndarray
    labels: np.ndarray
    label_names: Mapping[int, str]
    body: np.ndarray
    concentrations_bq_per_ml: Mapping[str, float]
    energy_keV: float


def _concentrations(overrides: Mapping[str, float] | None) -> dict[str, float]:
    values = dict(DEFAULT_CONCENTRATIONS_BQ_PER_ML)
    for name, value in (overrides or {}).items():
        if name not in values:
            raise ValueError(
                f"unknown region {name!r} in concentrations_bq_per_ml; expected some of "
                f"{sorted(values)}"
            )
        v = float(value)
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"concentration of {name!r} must be >= 0 (Bq/mL), got {value!r}")
        values[name] = v
    return values


def find_patient15_folder(folder: PathLike) -> Path:
    """The folder holding ``patient15_LuDOTATATE_{attn,src}.h33``: ``folder`` itself, or its
    ``lu177_dotatate_patient15`` or ``data/lu177_dotatate_patient15`` subfolder (so the shared
    data folder works too).

    Raises
    ------
    FileNotFoundError
        None of them holds the two headers.
    """
    base = Path(folder)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such folder")
    for candidate in (base, base / PATIENT15_SUBFOLDER.name, base / PATIENT15_SUBFOLDER):
        if (candidate / ATTN_HEADER).is_file() and (candidate / SRC_HEADER).is_file():
            return candidate
    raise FileNotFoundError(
        f"{base}: holds neither {ATTN_HEADER} and {SRC_HEADER} nor a "
        f"{PATIENT15_SUBFOLDER} folder with them"
    )


def load_patient15(
    folder: PathLike,
    concentrations_bq_per_ml: Mapping[str, float] | None = None,
    energy_keV: float = 208.0,
) -> Patient15:
    """Load the patient-15 phantom and build activity, μ and labels on our grid.

    Parameters
    ----------
    folder
        The folder holding ``patient15_LuDOTATATE_{attn,src}.{h33,i33}``, or a folder above it
        (`find_patient15_folder`: the shared data folder works too).
    concentrations_bq_per_ml
        Concentrations (Bq/mL) by region name (``liver``, ``spleen``, ``kidney_left``,
        ``kidney_right``, ``tumour_1``..``tumour_3``, ``background``), overriding
        :data:`DEFAULT_CONCENTRATIONS_BQ_PER_ML`. The background fills the body outside the
        labelled regions.
    energy_keV
        Photon energy for μ (keV); 208 for Lu-177.

    Returns
    -------
    Patient15
        Volumes ``[Z, Y, X]`` = ``[90, 70, 108]`` in the LPS frame.

    Raises
    ------
    FileNotFoundError
        Neither ``folder`` nor its phantom subfolder holds the two headers.
    ValueError
        The files do not match each other, or a concentration is invalid.
    """
    folder = find_patient15_folder(folder)
    concentrations = _concentrations(concentrations_bq_per_ml)
    attn = read_interfile(folder / ATTN_HEADER, orientation=PATIENT15_ORIENTATION)
    src = read_interfile(folder / SRC_HEADER, orientation=PATIENT15_ORIENTATION)
    if attn.data.shape != src.data.shape or attn.spacing_mm != src.spacing_mm:
        raise ValueError(f"{folder}: attn and src volumes differ in shape or voxel size")
    grid = attn.grid()
    ct_hu = attn.data.astype(np.float32) - np.float32(1000.0)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    names: dict[int, str] = {}
    activity = np.zeros(grid.shape, dtype=np.float32)
    for label, (name, value) in PATIENT15_LABELS.items():
        region = src.data == value
        labels[region] = label
        names[label] = name
        activity[region] = concentrations[name]
    components, _ = ndimage.label(ct_hu > BODY_THRESHOLD_HU)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    activity[body & (labels == 0)] = concentrations["background"]
    mu = hu_to_mu_per_mm(ct_hu, energy_keV).astype(np.float32)
    return Patient15(grid, activity, mu, ct_hu, labels, names, body, concentrations, energy_keV)


def patient15_study(
    folder: PathLike,
    concentrations_bq_per_ml: Mapping[str, float] | None = None,
    energy_keV: float = 208.0,
    *,
    sensitivity_cps_per_mbq: float | None = None,
    duration_s: float | None = None,
) -> Study:
    """A noise-free anterior/posterior study of the patient-15 phantom.

    Projections are ``count_scale × spectproj.project(activity, ParallelGeometry.ap_pa(grid),
    mu=mu)`` with attenuation and no collimator blur; ``count_scale`` is 1 unless both the
    sensitivity and the duration are given (``recon.io.study.Acquisition.count_scale``).

    Parameters
    ----------
    folder, concentrations_bq_per_ml, energy_keV
        As in :func:`load_patient15`.
    sensitivity_cps_per_mbq, duration_s
        Planar sensitivity (cps/MBq) and time per view (s), if the counts should be realistic.

    Returns
    -------
    Study
        ``projections [2, 90, 108]`` (AP at β = 0, PA at β = 180), μ, CT, truth activity and
        labels on the grid, isotope Lu-177, provenance naming the source and its licence.
    """
    folder = find_patient15_folder(folder)
    phantom = load_patient15(folder, concentrations_bq_per_ml, energy_keV)
    geometry = ParallelGeometry.ap_pa(phantom.grid)
    acquisition = Acquisition(
        angles_deg=geometry.angles_deg,
        detector_shape=geometry.detector_shape,
        pixel_size_mm=geometry.pixel_size_mm,
        energy_keV=energy_keV,
        isotope="Lu-177",
        duration_s=duration_s,
        sensitivity_cps_per_mbq=sensitivity_cps_per_mbq,
    )
    with torch.no_grad():
        line_integrals = project(
            torch.from_numpy(phantom.activity), geometry, mu=torch.from_numpy(phantom.mu_per_mm)
        )
    projections = (line_integrals.numpy() * acquisition.count_scale).astype(np.float32)
    provenance = {
        "source": SOURCE,
        "licence": LICENCE,
        "files": f"{ATTN_HEADER}, {SRC_HEADER} (+ .i33)",
        "folder": str(folder),
        "generator": "recon.io.patient15.patient15_study: noise-free spectproj.project, "
        "attenuation, no collimator blur",
        "concentrations_bq_per_ml": json.dumps(phantom.concentrations_bq_per_ml, sort_keys=True),
    }
    return Study(
        projections=np.maximum(projections, 0.0),
        acquisition=acquisition,
        grid=phantom.grid,
        mu_per_mm=phantom.mu_per_mm,
        ct_hu=phantom.ct_hu,
        truth_activity=phantom.activity,
        labels=phantom.labels,
        label_names=dict(phantom.label_names),
        activity_unit="Bq/mL",
        provenance=provenance,
    )
