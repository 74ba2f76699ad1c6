"""Threshold segmentation of a study's CT (HU) or μ map: body outline, lungs, bone, gas.

Used when no segmentation is given, and for the body outline of a segmentation without a body
class. Thresholds are in Hounsfield units; on a μ map they are the μ that
`spectproj.hu_to_mu_per_mm` gives those HU at the study's energy (so one set of numbers serves
both; e.g. −500 HU is half of water's μ):

=========  ================================================================================
class      rule
=========  ================================================================================
body       largest connected (6-neighbour) region of HU > −500, holes filled slice by slice
lungs      inside the body and −950 < HU ≤ −500
gas        inside the body and HU ≤ −950 (bowel gas, trachea)
bone       inside the body and HU ≥ 200
=========  ================================================================================
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from recon.io.study import Anatomy, Study
from spectproj import hu_to_mu_per_mm

__all__ = [
    "BODY_HU",
    "BONE_HU",
    "GAS_HU",
    "THRESHOLD_CLASSES",
    "anatomy_from_threshold",
    "body_from_threshold",
    "threshold_classes",
]

BODY_HU = -500.0
"""Tissue above this CT number (HU) is body; air and lung below it."""
GAS_HU = -950.0
"""Air inside the body at or below this CT number (HU) is gas, above it (up to BODY_HU) lung."""
BONE_HU = 200.0
"""Bone at or above this CT number (HU)."""
THRESHOLD_CLASSES = ("lungs", "bone", "gas")
"""The classes a threshold gives besides the body (`threshold_classes`): no organ among them."""


def _values_and_thresholds(study: Study) -> tuple[np.ndarray, dict[str, float], str] | None:
    """The volume to threshold and the three thresholds in its unit, or None without CT/μ."""
    hu = {"body": BODY_HU, "gas": GAS_HU, "bone": BONE_HU}
    if study.ct_hu is not None:
        return np.asarray(study.ct_hu, dtype=np.float32), hu, "CT (HU)"
    if study.mu_per_mm is not None:
        energy = study.acquisition.energy_keV
        mu = {
            k: float(hu_to_mu_per_mm(np.asarray(v, dtype=np.float64), energy))
            for k, v in hu.items()
        }
        return np.asarray(study.mu_per_mm, dtype=np.float32), mu, f"μ at {energy:g} keV"
    return None


def _body(volume: np.ndarray, threshold: float) -> np.ndarray:
    raw = volume > threshold
    components, n = ndimage.label(raw)
    if n == 0:
        return raw
    sizes = np.bincount(components.reshape(-1))[1:]
    body = components == (int(np.argmax(sizes)) + 1)
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def body_from_threshold(study: Study) -> np.ndarray | None:
    """``[Z, Y, X]`` bool body outline from the study's CT or μ, or ``None`` with neither."""
    found = _values_and_thresholds(study)
    if found is None:
        return None
    volume, thresholds, _ = found
    return _body(volume, thresholds["body"])


def threshold_classes(study: Study) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """``({"lungs", "bone", "gas"} → bool [Z, Y, X], body [Z, Y, X], what was thresholded)``.

    Raises
    ------
    ValueError
        The study has neither a CT nor a μ map.
    """
    found = _values_and_thresholds(study)
    if found is None:
        raise ValueError("study: has neither a CT (ct_hu) nor a μ map to threshold")
    volume, t, what = found
    body = _body(volume, t["body"])
    classes = {
        "lungs": body & (volume > t["gas"]) & (volume <= t["body"]),
        "bone": body & (volume >= t["bone"]),
        "gas": body & (volume <= t["gas"]),
    }
    return classes, body, what


def anatomy_from_threshold(study: Study) -> Anatomy:
    """Threshold segmentation of the study's CT (preferred) or μ: lungs, bone, gas and the body.

    Classes with no voxel are left out (label values 1, 2, 3 in the order lungs, bone, gas
    among those present).

    Raises
    ------
    ValueError
        The study has neither a CT nor a μ map.
    """
    classes, body, what = threshold_classes(study)
    labels = np.zeros(study.grid.shape, dtype=np.int32)
    names: dict[int, str] = {}
    for name, mask in classes.items():
        if mask.any():
            value = len(names) + 1
            names[value] = name
            labels[mask] = value
    source = (
        f"threshold of the {what}: body > {BODY_HU:g} HU, lungs ({GAS_HU:g}, {BODY_HU:g}] HU, "
        f"gas <= {GAS_HU:g} HU, bone >= {BONE_HU:g} HU"
    )
    return Anatomy(labels=labels, names=names, body=body, source=source)
