"""The measured pixels of a study as detector lines, and the expected counts of a representation.

The expected counts of pixel i are (exactly, ``docs/conventions.md``)::

    ŷ_i = count_scale · (A e)_i + b_i

with ``A`` the attenuated ray transform of `spectproj.SPECTProjector` (the study's μ, midpoint
rule), ``e`` the activity representation,
``count_scale`` the study's one count scale for every view (``Acquisition.count_scale``) and
``b`` its background (scatter) counts. No view is normalised on its own: the ratio of opposed
views is the only depth information two views carry.

**Two renderings.** *Lines* (`RayData.render_lines`): chosen detector pixels, each the line
integral along its own ray (`SPECTProjector.render_rays`); cheap per pixel, but it cannot apply
the collimator blur, which mixes neighbouring rays. *Views* (`RayData.expected_views`): whole
views through `SPECTProjector.forward`, with the depth-dependent collimator blur when the
`RayData` has a ``collimator``: a field is evaluated on the projector's sampling lattice and each
depth plane blurred exactly as the projector does for volumes; a volume ``[Z, Y, X]`` takes the
voxel path. `RayData.validate` scores held-out pixels with either.

**Lines.** A view whose opposed view (β + 180°) is also present shares its lines with it: pixel
``(row, bin)`` of the *primary* view (the lower index of the pair, e.g. AP) and pixel
``(row, bins − 1 − bin)`` of the opposed view (PA) see the same line, and `render_rays` computes
both from one set of field samples. Views without an opposed view have lines of their own.

**Split.** For every primary view a fixed, seeded ``holdout_fraction`` of its pixels is held out
for validation, and the opposed view holds out the conjugate pixels, so a held-out pixel's line is
never rendered during training (no leakage through the shared samples). The split depends only on
the seed, the fraction and the detector size.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from recon.algorithms.poisson import poisson_deviance
from recon.io.study import Study
from spectproj import CollimatorResponse, GridField, SPECTProjector

__all__ = ["LineBatch", "RayData", "RecordingField", "study_digest"]

Field = Callable[[torch.Tensor], torch.Tensor]

#: Offset between the training seed and the seed of the train/validation split.
SPLIT_SEED_OFFSET = 7919


def study_digest(study: Study) -> str:
    """SHA-256 of the counts, background and μ of a study (to match checkpoints to data)."""
    h = hashlib.sha256()
    for a in (study.projections, study.background, study.mu_per_mm):
        if a is None:
            h.update(b"none")
        else:
            arr = np.ascontiguousarray(a, dtype=np.float32)
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
    h.update(repr(study.acquisition.count_scale).encode())
    return h.hexdigest()


class RecordingField:
    """Wraps a field and keeps what it was asked and answered (for per-ray regularisers).

    ``points`` and ``values`` are the lists of ``[N, 3]`` and ``[N]`` tensors of each call.
    """

    def __init__(self, field: Field) -> None:
        self.field = field
        self.points: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __call__(self, points_mm: torch.Tensor) -> torch.Tensor:
        values = self.field(points_mm)
        self.points.append(points_mm)
        self.values.append(values)
        return values

    def samples(self, n_rays: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``([n_rays, S, 3], [n_rays, S])``: the recorded points and values, ray by ray."""
        pts = torch.cat(self.points)
        vals = torch.cat(self.values)
        return pts.reshape(n_rays, -1, 3), vals.reshape(n_rays, -1)


@dataclass(frozen=True)
class LineBatch:
    """Expected and measured counts of rendered lines.

    Attributes
    ----------
    expected:
        ``[M]`` expected counts ``count_scale · render + background`` of every rendered pixel
        (two per line of an opposed pair, one otherwise).
    counts:
        ``[M]`` measured counts of the same pixels.
    samples:
        Per group of lines rendered together, the activity samples ``[N, S]`` along each line
        (only when recorded, else empty).
    """

    expected: torch.Tensor
    counts: torch.Tensor
    samples: tuple[torch.Tensor, ...] = ()


class RayData:
    """A study's counts, background, projector and train/validation split, on one device.

    Parameters
    ----------
    study:
        The projections (counts ``[V, rows, bins]``), background, μ and count scale.
    holdout_fraction:
        Fraction of each primary view's pixels held out (see the module notes).
    seed:
        Seed of the split (offset by `SPLIT_SEED_OFFSET` from the training seed's stream).
    device, dtype:
        Of the projector and the count tensors.
    collimator:
        Depth-dependent collimator blur of the whole-view rendering (`expected_views`,
        `validate` with ``render="views"``), or ``None`` (default: no blur). Needs the study's
        ``radius_mm``. Line rendering (`render_lines`) never blurs.

    Attributes
    ----------
    projector:
        `spectproj.SPECTProjector` of the study's geometry and μ, without blur (built once;
        `render_lines` uses it).
    view_projector:
        The same with ``collimator`` (the same object when there is none): `expected_views`.
    counts, background:
        ``[V, rows, bins]`` tensors (background ``None`` when the study has none).
    train_mask:
        ``[V, rows, bins]`` bool, the pixels used for training.
    view, row, bin, opposed:
        ``[L]`` long tensors on the CPU describing every line (``opposed`` −1 for unpaired).
    train_lines, holdout_lines:
        ``[Lt]``, ``[Lh]`` indices into the lines.
    """

    def __init__(
        self,
        study: Study,
        *,
        holdout_fraction: float = 0.2,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        collimator: CollimatorResponse | None = None,
    ) -> None:
        if not isinstance(study, Study):
            raise TypeError(f"study must be a recon.io.Study, got {type(study).__name__}")
        self.study = study
        self.device = torch.device(device)
        self.dtype = dtype
        self.geometry = study.geometry()
        g = self.geometry
        self.count_scale = float(study.acquisition.count_scale)
        if not (math.isfinite(self.count_scale) and self.count_scale > 0):
            raise ValueError(f"the study's count scale must be > 0, got {self.count_scale!r}")

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=self.device)

        self.mu = None if study.mu_per_mm is None else tensor(study.mu_per_mm)
        self.projector = SPECTProjector(g, mu=self.mu, dtype=dtype, device=self.device)
        self.collimator = collimator
        self.view_projector = (
            self.projector
            if collimator is None
            else SPECTProjector(
                g, mu=self.mu, collimator=collimator, dtype=dtype, device=self.device
            )
        )
        self.counts = tensor(study.projections)
        self.background = None if study.background is None else tensor(study.background)
        n_views, n_rows, n_bins = self.counts.shape
        self.shape = (n_views, n_rows, n_bins)
        self._build_lines(holdout_fraction, seed)
        self.samples_per_view = [len(lat.s_mm) for lat in self.projector.field_lattices]

    # -- lines and split ---------------------------------------------------------------------
    def _build_lines(self, holdout_fraction: float, seed: int) -> None:
        g = self.geometry
        n_views, n_rows, n_bins = self.shape
        split = torch.Generator().manual_seed(int(seed) + SPLIT_SEED_OFFSET)
        n_pix = n_rows * n_bins
        n_hold = round(holdout_fraction * n_pix)
        views, rows, bins, opposed, holdout = [], [], [], [], []
        train_mask = torch.ones(self.shape, dtype=torch.bool)
        pix_rows = torch.arange(n_pix) // n_bins
        pix_bins = torch.arange(n_pix) % n_bins
        for v in range(n_views):
            o = g.opposed_view(v)
            if o is not None and o < v:
                continue  # covered by the lines of view o
            o = -1 if o is None or o == v else o
            held = torch.zeros(n_pix, dtype=torch.bool)
            held[torch.randperm(n_pix, generator=split)[:n_hold]] = True
            views.append(torch.full((n_pix,), v))
            rows.append(pix_rows)
            bins.append(pix_bins)
            opposed.append(torch.full((n_pix,), o))
            holdout.append(held)
            held_img = held.reshape(n_rows, n_bins)
            train_mask[v] = ~held_img
            if o >= 0:
                train_mask[o] = ~torch.flip(held_img, (1,))
        self.view = torch.cat(views)
        self.row = torch.cat(rows)
        self.bin = torch.cat(bins)
        self.opposed = torch.cat(opposed)
        held_all = torch.cat(holdout)
        self.train_lines = torch.nonzero(~held_all).squeeze(1)
        self.holdout_lines = torch.nonzero(held_all).squeeze(1)
        self.train_mask = train_mask.to(self.device)

    @property
    def n_lines(self) -> int:
        """Number of lines (pixels of the primary and unpaired views)."""
        return int(self.view.numel())

    def sample_lines(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n]`` random training lines, uniform with replacement (CPU ``generator``)."""
        k = torch.randint(len(self.train_lines), (n,), generator=generator)
        return self.train_lines[k]

    # -- rendering ---------------------------------------------------------------------------
    def render_lines(
        self,
        field: Field,
        lines: torch.Tensor,
        *,
        n_samples: int | None = None,
        jitter: bool = False,
        generator: torch.Generator | None = None,
        record: bool = False,
    ) -> LineBatch:
        """Expected and measured counts of the pixels of ``lines`` (indices ``[N]``).

        Lines with an opposed view are rendered in both views from the same samples
        (``with_opposed=True``). Lines are grouped by pairing and samples per ray (one group for
        AP/PA); each group is one `SPECTProjector.render_rays` call.
        """
        lines = lines.to(torch.long).cpu()
        paired = self.opposed[lines] >= 0
        if n_samples is None:
            per_line = torch.tensor(self.samples_per_view)[self.view[lines]]
        else:
            per_line = torch.full_like(lines, int(n_samples))
        keys = torch.stack([paired.long(), per_line], dim=1)
        groups = torch.unique(keys, dim=0)
        expected, counts, samples = [], [], []
        for key in groups:
            sel = lines[(keys == key).all(dim=1)]
            is_paired = bool(key[0])
            f = RecordingField(field) if record else field
            v, r, b = (t[sel].to(self.device) for t in (self.view, self.row, self.bin))
            value = self.projector.render_rays(
                f, v, r, b, n_samples=n_samples, jitter=jitter, generator=generator,
                with_opposed=is_paired,
            )  # fmt: skip
            if is_paired:
                o = self.opposed[sel].to(self.device)
                b_o = self.shape[2] - 1 - b
                idx = (torch.cat([v, o]), torch.cat([r, r]), torch.cat([b, b_o]))
                value = torch.cat([value[:, 0], value[:, 1]])
            else:
                idx = (v, r, b)
            exp = self.count_scale * value
            if self.background is not None:
                exp = exp + self.background[idx]
            expected.append(exp)
            counts.append(self.counts[idx])
            if record and isinstance(f, RecordingField):
                samples.append(f.samples(len(sel))[1])
        return LineBatch(torch.cat(expected), torch.cat(counts), tuple(samples))

    def expected_views(
        self,
        field: Field | torch.Tensor,
        n_samples: int | None = None,
        *,
        jitter: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Expected counts ``[V, rows, bins]`` of whole views: ``count_scale · A e + background``.

        ``field`` is a field (evaluated on the projector's lattice, ``n_samples`` per ray,
        optionally ``jitter``-ed with ``generator`` as in `SPECTProjector.forward`) or a volume
        ``[Z, Y, X]`` on the study grid (the voxel path; ``n_samples`` and ``jitter`` do not
        apply). With a ``collimator`` every depth plane is blurred exactly as in
        `SPECTProjector.forward`.
        """
        if isinstance(field, torch.Tensor):
            proj = self.view_projector(field)
        else:
            proj = self.view_projector(
                field, n_samples=n_samples, jitter=jitter, generator=generator
            )
        out = self.count_scale * proj
        return out if self.background is None else out + self.background

    def render_views(
        self,
        field: Field | torch.Tensor,
        n_samples: int | None = None,
        *,
        jitter: bool = False,
        generator: torch.Generator | None = None,
        record: bool = False,
    ) -> LineBatch:
        """Expected and measured counts ``[M]`` of the training pixels (``train_mask``) of whole
        views (`expected_views`, with the collimator blur), and with ``record`` (a field only)
        the field's samples along each lattice ray ``[rays, S]``, one group per opposed pair or
        unpaired view."""
        recorder = RecordingField(field) if record and not isinstance(field, torch.Tensor) else None
        expected = self.expected_views(
            field if recorder is None else recorder, n_samples, jitter=jitter, generator=generator
        )
        samples: tuple[torch.Tensor, ...] = ()
        if recorder is not None:  # one lattice [S, bins, rows] per field call: rays are columns
            _, rows, bins = self.shape
            depths = [
                self.samples_per_view[v] if n_samples is None else n_samples
                for v in range(self.geometry.n_views)
                if (o := self.geometry.opposed_view(v)) is None or o >= v
            ]
            flat = torch.cat(recorder.values).split([n_s * rows * bins for n_s in depths])
            samples = tuple(v.reshape(n_s, -1).t() for v, n_s in zip(flat, depths, strict=True))
        mask = self.train_mask
        return LineBatch(expected[mask].float(), self.counts[mask].float(), samples)

    def validate(
        self,
        field: Field | torch.Tensor,
        n_samples: int | None = None,
        chunk_lines: int = 8192,
        *,
        render: str = "lines",
    ) -> tuple[float, float]:
        """``(mean Poisson deviance per pixel, PSNR in dB)`` on the held-out pixels.

        ``render="lines"`` renders the held-out lines only (no blur; ``field`` must be a
        field); ``"views"`` renders whole views by `expected_views` (with the collimator blur,
        ``field`` a field or a volume) and scores the held-out pixels (``~train_mask``), the
        same pixels. The PSNR compares expected and measured counts on one scale, with the peak
        the largest held-out count of any view: ``10·log10(peak² / mean((ŷ − y)²))``. Both are
        NaN when nothing is held out.
        """
        if render not in ("lines", "views"):
            raise ValueError(f"render must be 'lines' or 'views', got {render!r}")
        if len(self.holdout_lines) == 0:
            return math.nan, math.nan
        if render == "views":
            with torch.no_grad():
                expected = self.expected_views(field, n_samples)
            held = ~self.train_mask
            return _scores(expected[held].double(), self.counts[held].double())
        if isinstance(field, torch.Tensor):
            raise TypeError("validate(render='lines') needs a field, not a volume")
        dev_sum, sq_sum, n, peak = 0.0, 0.0, 0, 0.0
        with torch.no_grad():
            for start in range(0, len(self.holdout_lines), chunk_lines):
                batch = self.render_lines(
                    field, self.holdout_lines[start : start + chunk_lines], n_samples=n_samples
                )
                e, y = batch.expected.double(), batch.counts.double()
                dev_sum += float(poisson_deviance(y, e))
                sq_sum += float(((e - y) ** 2).sum())
                n += y.numel()
                peak = max(peak, float(y.max()))
        mse = sq_sum / n
        psnr = math.inf if mse == 0 else 10.0 * math.log10(max(peak, 1e-30) ** 2 / mse)
        return dev_sum / n, psnr

    # -- data-derived levels -----------------------------------------------------------------
    def count_level(self) -> float:
        """Mean measured count of the training pixels (counts)."""
        return float(self.counts[self.train_mask].double().mean())

    def activity_level(self, support: torch.Tensor | np.ndarray | None = None) -> float:
        """The uniform activity that explains the training counts above background.

        ``(Σ y − Σ b) / (count_scale · Σ A u)`` over the training pixels, with ``u`` a unit
        activity inside ``support`` (``[Z, Y, X]``, bool or 0..1) when given, else inside the
        body (μ > 0), or in the whole field of view without μ. Scaling the counts and background
        by k scales it by k.

        Raises
        ------
        ValueError
            No counts above the background, or the body projects to nothing.
        """
        if support is not None:
            unit = torch.as_tensor(support).to(dtype=self.dtype, device=self.device)
        elif self.mu is not None and bool((self.mu > 0).any()):
            unit = (self.mu > 0).to(self.dtype)
        else:
            unit = torch.ones(self.geometry.grid.shape, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            proj = self.projector(unit)
        mask = self.train_mask
        signal = float(self.counts[mask].double().sum())
        if self.background is not None:
            signal -= float(self.background[mask].double().sum())
        denominator = self.count_scale * float(proj[mask].double().sum())
        if not signal > 0:
            raise ValueError(
                "the study has no counts above its background in the training pixels; "
                "nothing to reconstruct"
            )
        if not denominator > 0:
            raise ValueError("the body (μ > 0) projects to no training pixel")
        return signal / denominator

    def mu_at(self, points_mm: torch.Tensor) -> torch.Tensor:
        """μ (1/mm) at points ``[..., 3]`` (zeros without μ)."""
        if self.mu is None:
            return torch.zeros(points_mm.shape[:-1], dtype=self.dtype, device=points_mm.device)
        return GridField(self.mu, self.geometry.grid)(points_mm)


def _scores(expected: torch.Tensor, counts: torch.Tensor) -> tuple[float, float]:
    """``(mean deviance per pixel, PSNR dB)`` of expected against measured counts ``[N]``."""
    n = counts.numel()
    mse = float(((expected - counts) ** 2).sum()) / n
    peak = float(counts.max())
    psnr = math.inf if mse == 0 else 10.0 * math.log10(max(peak, 1e-30) ** 2 / mse)
    return float(poisson_deviance(counts, expected)) / n, psnr
