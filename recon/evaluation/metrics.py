"""Image-domain figures of merit: whole-volume errors, SSIM, region and organ quantification.

Every function takes NumPy arrays or torch tensors (any float dtype, any device; computed in
float64 on the CPU) and returns Python floats (or dicts/rows of them). Volumes are ``[Z, Y, X]``
activity concentrations in one unit (``Bq/mL`` unless a ``unit`` says otherwise); masks are
boolean (or 0/1) arrays of the same shape; ``labels`` are integer structure labels named by
``label_names`` (label value → name), as in `recon.io.study.Study`.

Notation: x = estimate, t = truth, R = a set of voxels (a mask or a label), N_R its size,
v = voxel volume in mL, mean_R(x) = Σ_R x / N_R.

Formulas (units on the right)::

    nrmse                  ‖x − t‖₂ / ‖t‖₂ over R                                     1
    psnr                   10·log10(max_R(t)² / mean_R((x − t)²))                     dB
    ssim3d                 mean over voxels of the local SSIM (Wang et al. 2004)      1
    region_bias            (mean_R(x) − mean_R(t)) / mean_R(t)                        1
    region_cov             std_R(x) / mean_R(x)   (population std, ddof = 0)          1
    total_activity_error   (Σ x − Σ t) / Σ t, and both totals Σ · v · k · 1e-6        1, MBq
    activity_outside       Σ_{not body} x · v · k · 1e-6  and  Σ_{not body} x / Σ x   MBq, 1
    region_activity        Σ_R x · v · k · 1e-6   (k: the unit in Bq/mL)              MBq
    recovery_coefficients  mean_R(x) / mean_R(t) for each lesion R                    1
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from spectproj import ImageGrid

ArrayLike = np.ndarray | torch.Tensor

__all__ = [
    "SSIM_K1",
    "SSIM_K2",
    "OrganError",
    "activity_outside",
    "evaluate_volume",
    "nrmse",
    "organ_errors",
    "psnr",
    "recovery_coefficients",
    "region_activity",
    "region_bias",
    "region_cov",
    "ssim3d",
    "total_activity_error",
    "unit_to_bq_per_ml",
]

#: SSIM stabilising constants of Wang et al. (2004): C1 = (K1·L)², C2 = (K2·L)².
SSIM_K1 = 0.01
SSIM_K2 = 0.03

MBQ_PER_BQ = 1e-6

_UNIT_FACTORS = {"bq/ml": 1.0, "kbq/ml": 1e3, "mbq/ml": 1e6}


# -- helpers ---------------------------------------------------------------------------------


def _array(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a float64 NumPy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a numeric array or tensor, got {type(x).__name__}"
        ) from None


def _mask(mask: ArrayLike | None, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A boolean mask of ``shape`` (all True when ``mask`` is None)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"{name} has shape {m.shape}, expected {shape}")
    return m.astype(bool)


def _labels(labels: ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.shape != shape:
        raise ValueError(f"labels has shape {lab.shape}, expected {shape}")
    return lab.astype(np.int64)


def _pair(estimate: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, t = _array(estimate, "estimate"), _array(truth, "truth")
    if x.shape != t.shape:
        raise ValueError(f"estimate has shape {x.shape} but truth has shape {t.shape}")
    return x, t


def _nonempty(m: np.ndarray, name: str) -> None:
    if not m.any():
        raise ValueError(f"{name} selects no voxel")


def _positive_volume(voxel_volume_ml: float) -> float:
    v = float(voxel_volume_ml)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"voxel_volume_ml must be a positive volume (mL), got {voxel_volume_ml!r}")
    return v


def unit_to_bq_per_ml(unit: str) -> float:
    """Factor k with 1 ``unit`` = k Bq/mL, for ``"Bq/mL"``, ``"kBq/mL"`` and ``"MBq/mL"``.

    ``mL`` may also be written ``ml``, ``cc`` or ``cm3`` (case-insensitive).

    Raises
    ------
    ValueError
        For any other unit (activities in MBq cannot be derived from it).
    """
    key = str(unit).strip().lower().replace(" ", "")
    for alias in ("/cc", "/cm3", "/cm^3"):
        if key.endswith(alias):
            key = key[: -len(alias)] + "/ml"
    if key not in _UNIT_FACTORS:
        raise ValueError(
            f"cannot convert activity unit {unit!r} to Bq/mL; expected Bq/mL, kBq/mL or MBq/mL"
        )
    return _UNIT_FACTORS[key]


# -- whole-volume errors ---------------------------------------------------------------------


def nrmse(estimate: ArrayLike, truth: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Normalised root-mean-square error ‖x − t‖₂ / ‖t‖₂ over the voxels of ``mask``.

    Parameters
    ----------
    estimate, truth : array or tensor
        Volumes of one shape (any unit, the same for both).
    mask : array or tensor of bool, optional
        Voxels to include (all by default).

    Returns
    -------
    float
        sqrt(Σ_R (x − t)²) / sqrt(Σ_R t²), dimensionless (0 for a perfect estimate).
        Equivalently RMSE / RMS(truth) over R.

    Raises
    ------
    ValueError
        If the mask is empty or the truth is zero on it.
    """
    x, t = _pair(estimate, truth)
    m = _mask(mask, x.shape, "mask")
    _nonempty(m, "mask")
    norm = float(np.sqrt(np.sum(t[m] ** 2)))
    if norm == 0:
        raise ValueError("the truth is zero on the mask; NRMSE is undefined")
    return float(np.sqrt(np.sum((x[m] - t[m]) ** 2))) / norm


def psnr(estimate: ArrayLike, truth: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Peak signal-to-noise ratio in dB, with the peak taken as the truth's maximum.

    PSNR = 10·log10(peak² / MSE), peak = max_R(t), MSE = mean_R((x − t)²) over the voxels R of
    ``mask`` (all by default). ``inf`` when x = t on R.

    Parameters
    ----------
    estimate, truth : array or tensor
        Volumes of one shape, one unit.
    mask : array or tensor of bool, optional
        Voxels to include.

    Returns
    -------
    float
        PSNR in dB.

    Raises
    ------
    ValueError
        If the mask is empty or max_R(t) <= 0.
    """
    x, t = _pair(estimate, truth)
    m = _mask(mask, x.shape, "mask")
    _nonempty(m, "mask")
    peak = float(t[m].max())
    if peak <= 0:
        raise ValueError("the truth's maximum on the mask is <= 0; PSNR is undefined")
    mse = float(np.mean((x[m] - t[m]) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(peak**2 / mse)


def ssim3d(
    estimate: ArrayLike,
    truth: ArrayLike,
    data_range: float | None = None,
    window: int = 7,
    *,
    kernel: Literal["gaussian", "uniform"] = "gaussian",
    sigma: float = 1.5,
) -> float:
    """Mean structural similarity of two 3D volumes (Wang et al., IEEE TIP 13:600, 2004).

    Local weighted statistics over a ``window``³ neighbourhood w (normalised weights),
    computed with `scipy.ndimage` filters (``mode="reflect"``)::

        μx = w * x,   μt = w * t,
        σx² = w * x² − μx²,   σt² = w * t² − μt²,   σxt = w * (x·t) − μx·μt,
        SSIM = (2 μx μt + C1)(2 σxt + C2) / ((μx² + μt² + C1)(σx² + σt² + C2)),
        C1 = (K1·L)², C2 = (K2·L)²,  K1 = 0.01, K2 = 0.03,  L = data_range,

    and the result is the mean of the SSIM map over the voxels at least ``(window − 1)/2`` from
    every face (where the window lies inside the volume, as in scikit-image). The moments are the
    weighted population moments (no N/(N−1) correction).

    Parameters
    ----------
    estimate, truth : array or tensor
        ``[Z, Y, X]`` volumes of one shape, each axis at least ``window`` long.
    data_range : float, optional
        L, the dynamic range of the data; ``max(truth) − min(truth)`` by default. With the
        default, ``ssim3d(a, b)`` and ``ssim3d(b, a)`` differ (L is taken from the second
        argument); the formula itself is symmetric for a given L.
    window : int
        Odd window edge in voxels (7).
    kernel : {"gaussian", "uniform"}
        ``"gaussian"`` (default): Gaussian weights of standard deviation ``sigma`` voxels
        truncated to the window (``scipy.ndimage.gaussian_filter`` with
        ``truncate = (window − 1) / (2 σ)``); ``"uniform"``: equal weights 1/window³.
    sigma : float
        Standard deviation of the Gaussian window in voxels (1.5).

    Returns
    -------
    float
        Mean SSIM in [−1, 1]; 1 for identical volumes.
    """
    x, t = _pair(estimate, truth)
    if x.ndim != 3:
        raise ValueError(f"ssim3d needs [Z, Y, X] volumes, got shape {x.shape}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd positive integer (voxels), got {window!r}")
    if min(x.shape) < window:
        raise ValueError(f"volume shape {x.shape} is smaller than the {window}-voxel window")
    if kernel not in ("gaussian", "uniform"):
        raise ValueError(f"kernel must be 'gaussian' or 'uniform', got {kernel!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number of voxels, got {sigma!r}")
    if data_range is None:
        data_range = float(t.max() - t.min())
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be positive, got {data_range!r}")

    radius = (window - 1) // 2
    if kernel == "gaussian":

        def filt(a: np.ndarray) -> np.ndarray:
            return ndimage.gaussian_filter(a, sigma=sigma, truncate=radius / sigma, mode="reflect")

    else:

        def filt(a: np.ndarray) -> np.ndarray:
            return ndimage.uniform_filter(a, size=window, mode="reflect")

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mx, mt = filt(x), filt(t)
    vx = filt(x * x) - mx * mx
    vt = filt(t * t) - mt * mt
    cxt = filt(x * t) - mx * mt
    ssim_map = ((2 * mx * mt + c1) * (2 * cxt + c2)) / ((mx**2 + mt**2 + c1) * (vx + vt + c2))
    inner = tuple(slice(radius, n - radius) for n in x.shape)
    return float(ssim_map[inner].mean())


# -- regions ---------------------------------------------------------------------------------


def region_bias(estimate: ArrayLike, truth: ArrayLike, region_mask: ArrayLike) -> float:
    """Relative bias of the region's mean: (mean_R(x) − mean_R(t)) / mean_R(t).

    Dimensionless (−0.1 = the region's mean is 10 % low). Equals the relative error of the
    region's total activity.

    Raises
    ------
    ValueError
        If the region is empty or its true mean is 0.
    """
    x, t = _pair(estimate, truth)
    m = _mask(region_mask, x.shape, "region_mask")
    _nonempty(m, "region_mask")
    mean_t = float(t[m].mean())
    if mean_t == 0:
        raise ValueError("the truth's mean on the region is 0; relative bias is undefined")
    return (float(x[m].mean()) - mean_t) / mean_t


def region_cov(estimate: ArrayLike, region_mask: ArrayLike) -> float:
    """Coefficient of variation inside a region: std_R(x) / mean_R(x).

    std is the population standard deviation (ddof = 0) of the region's voxels. Dimensionless;
    for a uniform true region it measures noise and artefacts.

    Raises
    ------
    ValueError
        If the region is empty or the mean is 0.
    """
    x = _array(estimate, "estimate")
    m = _mask(region_mask, x.shape, "region_mask")
    _nonempty(m, "region_mask")
    mean = float(x[m].mean())
    if mean == 0:
        raise ValueError("the estimate's mean on the region is 0; CoV is undefined")
    return float(x[m].std()) / mean


def total_activity_error(
    estimate: ArrayLike,
    truth: ArrayLike,
    voxel_volume_ml: float,
    unit: str = "Bq/mL",
) -> dict[str, float]:
    """Total activities and the relative error of the estimate's total.

    Parameters
    ----------
    estimate, truth : array or tensor
        Activity concentrations in ``unit``.
    voxel_volume_ml : float
        Volume of one voxel in mL.
    unit : str
        Concentration unit (see `unit_to_bq_per_ml`).

    Returns
    -------
    dict
        ``estimate_mbq`` = Σ x · v · k_unit · 1e-6, ``truth_mbq`` likewise (MBq), and
        ``relative_error`` = (Σ x − Σ t) / Σ t (dimensionless; independent of v).
    """
    x, t = _pair(estimate, truth)
    scale = _positive_volume(voxel_volume_ml) * unit_to_bq_per_ml(unit) * MBQ_PER_BQ
    sx, st = float(x.sum()), float(t.sum())
    if st == 0:
        raise ValueError("the true total activity is 0; relative error is undefined")
    return {
        "estimate_mbq": sx * scale,
        "truth_mbq": st * scale,
        "relative_error": (sx - st) / st,
    }


def activity_outside(
    estimate: ArrayLike,
    body_mask: ArrayLike,
    voxel_volume_ml: float,
    unit: str = "Bq/mL",
) -> dict[str, float]:
    """Activity the estimate puts outside the body.

    Returns
    -------
    dict
        ``mbq`` = Σ_{not body} x · v · k_unit · 1e-6 (MBq) and ``fraction`` =
        Σ_{not body} x / Σ x (dimensionless; 0 when Σ x = 0).
    """
    x = _array(estimate, "estimate")
    body = _mask(body_mask, x.shape, "body_mask")
    scale = _positive_volume(voxel_volume_ml) * unit_to_bq_per_ml(unit) * MBQ_PER_BQ
    outside = float(x[~body].sum())
    total = float(x.sum())
    return {"mbq": outside * scale, "fraction": outside / total if total != 0 else 0.0}


# -- organs and lesions ----------------------------------------------------------------------


@dataclass(frozen=True)
class OrganError:
    """One row of `organ_errors`.

    Attributes
    ----------
    name : str
        Structure name.
    label : int
        Label value.
    n_voxels : int
        Voxels with this label.
    true_mbq, estimated_mbq : float
        Σ over the label's voxels of the truth / estimate × voxel volume, in MBq.
    relative_error : float or None
        (estimated − true) / true; ``None`` where the true activity is 0 (or the label is
        absent).
    """

    name: str
    label: int
    n_voxels: int
    true_mbq: float
    estimated_mbq: float
    relative_error: float | None

    def to_dict(self) -> dict[str, object]:
        """The row as a JSON-serialisable dict."""
        return asdict(self)


def region_activity(
    volume: ArrayLike,
    labels: ArrayLike,
    label_names: Mapping[int, str],
    voxel_volume_ml: float,
    unit: str = "Bq/mL",
) -> dict[str, float]:
    """Total activity in MBq of each named label: Σ_{labels = l} c · v · k_unit · 1e-6.

    Parameters
    ----------
    volume : array or tensor
        ``[Z, Y, X]`` activity concentration in ``unit``.
    labels : array or tensor
        ``[Z, Y, X]`` integer labels.
    label_names : mapping
        Label value → name; one entry of the result per item (0 MBq for an absent label).
    voxel_volume_ml : float
        Volume of one voxel in mL.
    unit : str
        Concentration unit (see `unit_to_bq_per_ml`).

    Returns
    -------
    dict
        name → activity in MBq.
    """
    c = _array(volume, "volume")
    lab = _labels(labels, c.shape)
    scale = _positive_volume(voxel_volume_ml) * unit_to_bq_per_ml(unit) * MBQ_PER_BQ
    return {
        str(name): float(c[lab == int(value)].sum()) * scale for value, name in label_names.items()
    }


def organ_errors(
    estimate: ArrayLike,
    truth: ArrayLike,
    labels: ArrayLike,
    label_names: Mapping[int, str],
    voxel_volume_ml: float,
    unit: str = "Bq/mL",
) -> list[OrganError]:
    """True and estimated activity (MBq) of each named label, and the relative error.

    Parameters
    ----------
    estimate, truth : array or tensor
        ``[Z, Y, X]`` activity concentrations in ``unit``.
    labels, label_names, voxel_volume_ml, unit
        As in `region_activity`.

    Returns
    -------
    list of OrganError
        One row per ``label_names`` item, in its order.
    """
    x, t = _pair(estimate, truth)
    lab = _labels(labels, x.shape)
    scale = _positive_volume(voxel_volume_ml) * unit_to_bq_per_ml(unit) * MBQ_PER_BQ
    rows = []
    for value, name in label_names.items():
        m = lab == int(value)
        true_mbq = float(t[m].sum()) * scale
        est_mbq = float(x[m].sum()) * scale
        rel = (est_mbq - true_mbq) / true_mbq if true_mbq != 0 else None
        rows.append(OrganError(str(name), int(value), int(m.sum()), true_mbq, est_mbq, rel))
    return rows


def recovery_coefficients(
    estimate: ArrayLike,
    truth: ArrayLike,
    labels: ArrayLike,
    lesion_labels: Mapping[int, str] | Iterable[int],
) -> dict[str, float | None]:
    """Recovery coefficient of each lesion: RC = mean_R(x) / mean_R(t) over its label's voxels.

    Parameters
    ----------
    estimate, truth : array or tensor
        ``[Z, Y, X]`` activity concentrations (one unit).
    labels : array or tensor
        ``[Z, Y, X]`` integer labels.
    lesion_labels : mapping or iterable
        Label value → name, or label values (then named ``str(value)``).

    Returns
    -------
    dict
        name → RC (1 = fully recovered); ``None`` for a lesion with no voxel or zero truth.
    """
    x, t = _pair(estimate, truth)
    lab = _labels(labels, x.shape)
    if isinstance(lesion_labels, Mapping):
        items = [(int(v), str(n)) for v, n in lesion_labels.items()]
    else:
        items = [(int(v), str(int(v))) for v in lesion_labels]
    out: dict[str, float | None] = {}
    for value, name in items:
        m = lab == value
        mean_t = float(t[m].mean()) if m.any() else 0.0
        out[name] = float(x[m].mean()) / mean_t if mean_t != 0 else None
    return out


# -- everything ------------------------------------------------------------------------------


def evaluate_volume(
    estimate: ArrayLike,
    truth: ArrayLike,
    labels: ArrayLike | None,
    label_names: Mapping[int, str],
    grid: ImageGrid,
    body_mask: ArrayLike | None = None,
    *,
    unit: str = "Bq/mL",
    lesion_prefix: str = "lesion",
) -> dict[str, object]:
    """All volume metrics of an estimate against the truth, as a JSON-serialisable dict.

    Parameters
    ----------
    estimate, truth : array or tensor
        ``[Z, Y, X]`` activity concentrations in ``unit`` on ``grid``.
    labels : array or tensor, optional
        ``[Z, Y, X]`` integer labels named by ``label_names``.
    label_names : mapping
        Label value → name.
    grid : spectproj.ImageGrid
        The grid (for the voxel volume).
    body_mask : array or tensor of bool, optional
        The body; ``labels > 0`` by default when labels are given.
    unit : str
        Concentration unit (see `unit_to_bq_per_ml`).
    lesion_prefix : str
        Labels whose name starts with it are lesions (their recovery coefficients are reported).

    Returns
    -------
    dict
        ``nrmse`` (whole volume), ``nrmse_body`` (inside the body), ``psnr_db`` (peak =
        max(truth)), ``ssim`` (`ssim3d` defaults; ``None`` if the volume is smaller than the
        window), ``total_activity`` (`total_activity_error`), ``activity_outside``
        (`activity_outside`, when a body is known), ``organs`` (rows of `organ_errors` plus
        ``cov`` = `region_cov` of the estimate, ``None`` where undefined) and
        ``recovery_coefficients`` (lesions).
    """
    x, t = _pair(estimate, truth)
    if tuple(x.shape) != tuple(grid.shape):
        raise ValueError(f"volumes have shape {x.shape}, the grid {grid.shape}")
    voxel_ml = grid.voxel_volume_mm3 * 1e-3
    lab = None if labels is None else _labels(labels, x.shape)
    body = None
    if body_mask is not None:
        body = _mask(body_mask, x.shape, "body_mask")
    elif lab is not None:
        body = lab > 0

    out: dict[str, object] = {
        "unit": unit,
        "voxel_volume_ml": voxel_ml,
        "nrmse": nrmse(x, t),
        "nrmse_body": nrmse(x, t, body) if body is not None and body.any() else None,
        "psnr_db": psnr(x, t),
        "ssim": ssim3d(x, t) if min(x.shape) >= 7 else None,
        "total_activity": total_activity_error(x, t, voxel_ml, unit),
    }
    if body is not None:
        out["activity_outside"] = activity_outside(x, body, voxel_ml, unit)
    organs: list[dict[str, object]] = []
    recovery: dict[str, float | None] = {}
    if lab is not None:
        for row in organ_errors(x, t, lab, label_names, voxel_ml, unit):
            d = row.to_dict()
            m = lab == row.label
            d["cov"] = region_cov(x, m) if m.any() and float(x[m].mean()) != 0 else None
            organs.append(d)
        lesions = {v: n for v, n in label_names.items() if str(n).startswith(lesion_prefix)}
        recovery = recovery_coefficients(x, t, lab, lesions)
    out["organs"] = organs
    out["recovery_coefficients"] = recovery
    return out
