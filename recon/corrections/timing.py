"""Radioactive decay and detector dead time: the time factors of the count scale.

Pure functions of numbers (no study, no arrays), used by `recon.io.study.Acquisition.count_scale`
so that every method (MLEM, NeRF, organ fits, conjugate view) applies them the same way.

Decay: an activity ``A_ref`` at the reference time ``t_ref`` gives, over an acquisition that
starts ``Δt = t_start − t_ref`` later and lasts ``T``, the counts of a constant activity
``A_ref · f_decay`` with::

    f_decay = exp(−λ Δt) · (1 − exp(−λ T)) / (λ T),      λ = ln 2 / T½

(the second factor is the mean of the decay over the frame; it is 1 for T → 0).

Dead time (Knoll, *Radiation Detection and Measurement*, 4th ed., ch. 4.VII): a true rate ``n``
is observed as ``m = n / (1 + n τ)`` (non-paralyzable) or ``m = n · exp(−n τ)`` (paralyzable).
Given the observed rate ``m`` the true rate is ``n = m / (1 − m τ)`` (non-paralyzable) or
``n = −W₀(−m τ) / τ`` (paralyzable, lower branch: the camera below its maximum rate ``1/(e τ)``),
and the expected observed counts are the true ones times ``f_dead = m / n``.
"""

from __future__ import annotations

import math
from datetime import datetime

__all__ = [
    "DEAD_TIME_MODELS",
    "REFERENCE_CHOICES",
    "dead_time_factor",
    "decay_factor",
    "parse_time",
    "reference_time_of",
    "seconds_between",
    "true_rate_cps",
]

#: Dead-time models: ``paralyzable`` or ``non-paralyzable``.
DEAD_TIME_MODELS = ("paralyzable", "non-paralyzable")


def parse_time(text: str, name: str = "time") -> datetime:
    """An ISO 8601 date-time (``"2024-05-02T10:30:00"``; a time zone is allowed).

    Raises
    ------
    ValueError
        Not an ISO 8601 date-time (the message names ``name``).
    """
    try:
        return datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise ValueError(
            f"{name} must be an ISO 8601 date-time like 2024-05-02T10:30:00, got {text!r}"
        ) from None


def seconds_between(start: str, end: str) -> float:
    """``end − start`` in seconds, both ISO 8601 (both with a time zone, or both without)."""
    a, b = parse_time(start, "start"), parse_time(end, "end")
    if (a.tzinfo is None) != (b.tzinfo is None):
        raise ValueError(f"times {start!r} and {end!r}: give both with a time zone or both without")
    return (b - a).total_seconds()


def decay_factor(half_life_s: float, elapsed_s: float, duration_s: float | None = None) -> float:
    """Mean fraction of the reference activity present during an acquisition.

    Parameters
    ----------
    half_life_s:
        Physical half-life T½ (s), > 0.
    elapsed_s:
        Acquisition start minus the reference time (s); negative when the reference is later.
    duration_s:
        Acquisition time T (s); ``None`` or 0: the fraction at the start, ``exp(−λ Δt)``.

    Returns
    -------
    float
        ``exp(−λ Δt) · (1 − exp(−λ T)) / (λ T)``, λ = ln 2 / T½.
    """
    if not (math.isfinite(half_life_s) and half_life_s > 0):
        raise ValueError(f"half_life_s must be a positive time (s), got {half_life_s!r}")
    if not math.isfinite(elapsed_s):
        raise ValueError(f"elapsed_s must be finite, got {elapsed_s!r}")
    lam = math.log(2.0) / half_life_s
    factor = math.exp(-lam * elapsed_s)
    if duration_s:
        x = lam * duration_s
        factor *= -math.expm1(-x) / x
    return factor


def _check_dead_time(observed_cps: float, tau_s: float, model: str) -> None:
    if model not in DEAD_TIME_MODELS:
        raise ValueError(f"dead-time model must be one of {list(DEAD_TIME_MODELS)}, got {model!r}")
    if not (math.isfinite(tau_s) and tau_s > 0):
        raise ValueError(f"dead time τ must be a positive time (s), got {tau_s!r}")
    if not (math.isfinite(observed_cps) and observed_cps >= 0):
        raise ValueError(f"observed count rate must be >= 0 (cps), got {observed_cps!r}")
    limit = 1.0 / (math.e * tau_s) if model == "paralyzable" else 1.0 / tau_s
    if observed_cps >= limit:
        raise ValueError(
            f"observed rate {observed_cps:.6g} cps is at or above the {model} camera's maximum "
            f"{limit:.6g} cps for τ = {tau_s:.6g} s: the dead time cannot be corrected"
        )


def true_rate_cps(observed_cps: float, tau_s: float, model: str) -> float:
    """The true count rate ``n`` (cps) that the camera observes as ``observed_cps``.

    Raises
    ------
    ValueError
        An unknown model, τ <= 0, a negative rate, or an observed rate at or above the model's
        maximum (``1/τ`` non-paralyzable, ``1/(e τ)`` paralyzable).
    """
    _check_dead_time(observed_cps, tau_s, model)
    m = float(observed_cps)
    if m == 0:
        return 0.0
    if model == "non-paralyzable":
        return m / (1.0 - m * tau_s)
    # paralyzable: n τ exp(−n τ) = m τ, lower branch (n τ < 1), by Newton's method on
    # g(x) = x exp(−x) − m τ from x = m τ (g is increasing and concave on [0, 1]).
    target = m * tau_s
    x = target
    for _ in range(100):
        g = x * math.exp(-x) - target
        step = g / ((1.0 - x) * math.exp(-x))
        x -= step
        if abs(step) <= 1e-15 * max(x, 1e-300):
            break
    return x / tau_s


def dead_time_factor(observed_cps: float, tau_s: float, model: str) -> float:
    """Observed / true counts, ``m / n`` (<= 1), for an observed rate ``observed_cps``."""
    n = true_rate_cps(observed_cps, tau_s, model)
    return 1.0 if n == 0 else float(observed_cps) / n


#: Choices of a study's reference time besides an ISO 8601 date-time.
REFERENCE_CHOICES = ("none", "acquisition", "injection")


def reference_time_of(
    choice: str | None, *, acquisition_start: str | None, injection_time: str | None
) -> str | None:
    """The reference time (ISO 8601) a ``--reference-time`` choice names.

    ``None``/``"none"``: no decay correction (``None``); ``"acquisition"``: the acquisition start;
    ``"injection"``: the injection time; anything else must be an ISO 8601 date-time.

    Raises
    ------
    ValueError
        The named time is not recorded, or the text is not a date-time.
    """
    key = "none" if choice is None else str(choice).strip()
    if key.lower() == "none":
        return None
    if key.lower() == "acquisition":
        if acquisition_start is None:
            raise ValueError(
                "reference time 'acquisition': the file records no AcquisitionDate/Time; give "
                "an ISO 8601 date-time"
            )
        return acquisition_start
    if key.lower() == "injection":
        if injection_time is None:
            raise ValueError(
                "reference time 'injection': the file records no RadiopharmaceuticalStartDateTime;"
                " give an ISO 8601 date-time"
            )
        return injection_time
    return parse_time(key, "reference time").isoformat()
