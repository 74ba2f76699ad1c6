"""Half-lives of the radionuclides of nuclear-medicine imaging, with their source.

Values are the evaluated half-lives of the ENSDF as published by the National Nuclear Data Center,
NuDat 3 (https://www.nndc.bnl.gov/nudat3/), in seconds. A DICOM file's RadionuclideHalfLife
(0018,1075), when present, is used instead (`recon.io.dicom_nm`), and a user can always
give ``--half-life-h``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["HALF_LIFE_SOURCE", "HALF_LIVES_S", "half_life_s"]

_HOUR = 3600.0
_DAY = 86400.0

#: Where the half-lives of `HALF_LIVES_S` come from.
HALF_LIFE_SOURCE = "NNDC NuDat 3 (ENSDF), https://www.nndc.bnl.gov/nudat3/"

#: Physical half-life (s) per nuclide, spelled as `recon.io.dicom_nm.parse_isotope` does.
HALF_LIVES_S: Mapping[str, float] = MappingProxyType(
    {
        "Tc-99m": 6.0067 * _HOUR,
        "Lu-177": 6.647 * _DAY,
        "I-131": 8.0252 * _DAY,
        "I-123": 13.2235 * _HOUR,
        "In-111": 2.8047 * _DAY,
        "Ga-67": 3.2617 * _DAY,
        "Tl-201": 3.0421 * _DAY,
        "Y-90": 64.05 * _HOUR,
        "Ho-166": 26.824 * _HOUR,
        "Re-188": 17.005 * _HOUR,
        "Sm-153": 46.284 * _HOUR,
        "Tb-161": 6.953 * _DAY,
    }
)


def half_life_s(nuclide: str) -> float:
    """The half-life (s) of ``nuclide`` (``"Lu-177"``, ``"lu177"``, ``"177Lu"``...).

    Raises
    ------
    ValueError
        The nuclide is not in `HALF_LIVES_S` (the message lists them).
    """
    from recon.io.dicom_nm import parse_isotope

    name = parse_isotope(nuclide) or ""
    for key, value in HALF_LIVES_S.items():
        if key.lower() == name.lower():
            return value
    raise ValueError(
        f"no half-life known for nuclide {nuclide!r}; known: {', '.join(HALF_LIVES_S)} "
        "(give the half-life explicitly)"
    )
