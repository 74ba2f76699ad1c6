"""The SPECT projector: forward projection and its exact adjoint, for voxel grids and fields.

Pipeline per view (see ``docs/projector.md``)::

    activity (grid or field) ──sample on the view lattice──▶ [V, S, R, B, Z]
    μ (grid or field)        ──sample, midpoint rule─────▶ weights [V, S, R, Z]   (cached)
    integrate over depth (optional collimator blur per plane) ──▶ native [V, R, B, Z]
    rebin lattice bins/slices to detector pixels ──▶ projections [B, V, rows, bins]

Axis-aligned views of a voxel grid take a fast path (a weighted sum over the volume's own y or x
axis, no copies); ``reference=True`` sends them through the general lattice path instead, which
the tests compare it with.

Volumes are projected view by view through ``_forward_views`` / ``_adjoint_views``: all views
for the projector, some for ``subset(views)`` (``projector_subset.py``), which applies slices of
the same cached tensors. Oblique views are cached in chunks (one sparse matrix each); a subset
uses whole chunks where it can and the rows of a chunk (``csr_rows.py``) where it splits one.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch import nn

from spectproj._validate import check_mu_values, check_volume
from spectproj.attenuation import depth_weights
from spectproj.collimator import CollimatorResponse
from spectproj.csr_rows import RowBlockApply, row_block
from spectproj.detector import rebin_matrix
from spectproj.geometry import ParallelGeometry
from spectproj.integration import integrate, integrate_adjoint
from spectproj.lattice import (
    ViewLattice,
    detector_lattice,
    from_lattice,
    quadrant_axes,
    to_lattice,
    view_lattice,
)
from spectproj.operator import check_views
from spectproj.projector_subset import ProjectorSubset
from spectproj.sampling import CsrParts, GridField, SparseApply, bilinear_matrix

Field = Callable[[torch.Tensor], torch.Tensor]
VolumeOrField = Union[torch.Tensor, Field]  # noqa: UP007 - a runtime alias

DEFAULT_CHUNK_ELEMENTS = 2**25
#: On the CPU smaller chunks keep each view's lattice tensors in cache: at 64³ with 120 views,
#: chunks of ~5 views project and back-project about 3× faster than chunks of 63.
DEFAULT_CPU_CHUNK_ELEMENTS = 2**21
DEFAULT_CHUNK_POINTS = 2**20


class SPECTProjector(nn.Module):
    """Forward projector ``A`` and back-projector ``Aᵀ`` for one geometry and attenuation map.

    Parameters
    ----------
    geometry:
        Grid, angles and detector (``ParallelGeometry``).
    mu:
        Attenuation map in 1/mm: a tensor ``[Z, Y, X]`` on ``geometry.grid``, a callable mapping
        points ``[..., 3]`` (x, y, z mm) to ``[...]``, or ``None`` (no attenuation).
    collimator:
        Depth-dependent blur (``CollimatorResponse``) or ``None``
        (default, no blur). Needs ``geometry.radius_mm``.
    dtype, device:
        Of the cached attenuation weights; inputs must match (``.to()`` moves the projector).
    max_chunk_elements:
        Oblique views are processed in chunks of at most this many lattice samples per batch item
        (at least one view each). ``None`` (default): ``DEFAULT_CPU_CHUNK_ELEMENTS`` (2²¹) when
        the projector is built on the CPU, ``DEFAULT_CHUNK_ELEMENTS`` (2²⁵) on other devices.
    view_groups:
        Optional partition of the view indices (for example the subsets of OSEM): oblique views
        are chunked within each group, so that ``subset(group)`` covers whole chunks and runs at
        the full operator's speed. ``None`` (default): one group of all views. The projections
        do not depend on it.

    Notes
    -----
    The attenuation weights are computed once, here. If ``mu`` requires grad they carry its graph:
    build a new projector (or call ``project``) for each step that differentiates through μ.
    """

    # Buffers registered in ``__init__``, declared for the type checker (``nn.Module.__getattr__``
    # would type them ``Tensor | Module``). ``None`` when there is nothing to cache.
    _probe: torch.Tensor
    aligned_weights: torch.Tensor | None
    rebin_rows: torch.Tensor | None

    def __init__(
        self,
        geometry: ParallelGeometry,
        mu: VolumeOrField | None = None,
        collimator: CollimatorResponse | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        max_chunk_elements: int | None = None,
        view_groups: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(geometry, ParallelGeometry):
            raise TypeError(f"geometry must be a ParallelGeometry, got {type(geometry).__name__}")
        if collimator is not None and not isinstance(collimator, CollimatorResponse):
            raise TypeError(
                f"collimator must be a CollimatorResponse or None, got {type(collimator).__name__}"
            )
        if collimator is not None and geometry.radius_mm is None:
            raise ValueError(
                "geometry.radius_mm (mm) is required for the collimator blur, got None"
            )
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        self.geometry = geometry
        self.collimator = collimator
        # An empty tensor that follows .to(): it tells the projector's dtype and device.
        self.register_buffer("_probe", torch.zeros(0, dtype=dtype, device=device), persistent=False)
        self.lattices = [view_lattice(geometry, v) for v in range(geometry.n_views)]
        self.field_lattices = [detector_lattice(geometry, v) for v in range(geometry.n_views)]
        self._field_on_voxel_lattice = [
            _same_comb(f.r_mm, v.r_mm) and _same_comb(f.z_mm, v.z_mm)
            for f, v in zip(self.field_lattices, self.lattices, strict=True)
        ]
        grid = geometry.grid
        mu_t = _prepare_mu(mu, grid.shape, dtype, device)
        # ``_prepare_mu`` accepted ``mu``: anything but None or a tensor is a callable field.
        self._mu_field: Field | None = None if mu is None or isinstance(mu, torch.Tensor) else mu
        self._mu_grid = mu_t

        # Axis-aligned views: weights in the volume's own orientation, [Va, Z, Y, X].
        self.aligned_views = [
            v for v in range(geometry.n_views) if self.lattices[v].quadrant is not None
        ]
        aligned_w = [self._aligned_lattice_weights(v) for v in self.aligned_views]
        if mu is not None and aligned_w:
            volumes = []
            for v, w in zip(self.aligned_views, aligned_w, strict=True):
                q = self.lattices[v].quadrant
                # With μ given every view has weights, and aligned views have a quadrant.
                assert w is not None and q is not None
                volumes.append(from_lattice(w, q))
            self.register_buffer("aligned_weights", torch.stack(volumes), persistent=False)
        else:
            self.aligned_weights = None

        # Oblique views: chunks sharing one lattice shape, each with its sparse sampling matrix.
        if max_chunk_elements is None:
            on_cpu = self._probe.device.type == "cpu"
            max_chunk_elements = DEFAULT_CPU_CHUNK_ELEMENTS if on_cpu else DEFAULT_CHUNK_ELEMENTS
        self.oblique_chunks: list[list[int]] = []
        for group in _check_view_groups(view_groups, geometry.n_views):
            oblique = [v for v in group if self.lattices[v].quadrant is None]
            if oblique:
                s, r = self.lattices[oblique[0]].shape
                per_view = max(1, s * r * grid.shape[0])
                size = max(1, int(max_chunk_elements) // per_view)
                self.oblique_chunks += [oblique[i : i + size] for i in range(0, len(oblique), size)]
        # view -> (chunk, position in the chunk) of every oblique view
        self._oblique_position = {
            v: (c, k) for c, views in enumerate(self.oblique_chunks) for k, v in enumerate(views)
        }
        for c, views in enumerate(self.oblique_chunks):
            points = torch.cat([self.lattices[v].inplane_points_mm().reshape(-1, 2) for v in views])
            (crow, col, val), (crow_t, col_t, val_t), _ = bilinear_matrix(grid, points)
            self.register_buffer(f"_obl{c}_crow", crow.to(device), persistent=False)
            self.register_buffer(f"_obl{c}_col", col.to(device), persistent=False)
            self.register_buffer(
                f"_obl{c}_val", val.to(dtype=dtype, device=device), persistent=False
            )
            self.register_buffer(f"_obl{c}_crow_t", crow_t.to(device), persistent=False)
            self.register_buffer(f"_obl{c}_col_t", col_t.to(device), persistent=False)
            self.register_buffer(
                f"_obl{c}_val_t", val_t.to(dtype=dtype, device=device), persistent=False
            )
            if mu is not None:
                w = self._oblique_weights(c)
                self.register_buffer(f"_obl{c}_weights", w, persistent=False)  # [Vc, S, R, Z]

        # Detector rebinning: rows (common) and bins (per view); None = identity.
        rows = rebin_matrix(
            grid.centres_mm(0),
            grid.spacing_mm[0],
            geometry.detector_centres_mm(0),
            geometry.pixel_size_mm[0],
        )
        self.register_buffer(
            "rebin_rows",
            None if rows is None else rows.to(dtype=dtype, device=device),
            persistent=False,
        )
        self._rebin_bins: dict[int, str] = {}
        for v, lat in enumerate(self.lattices):
            m = rebin_matrix(
                torch.tensor(lat.r_mm, dtype=torch.float64), lat.step_r_mm,
                geometry.detector_centres_mm(1), geometry.pixel_size_mm[1],
            )  # fmt: skip
            if m is not None:
                self._rebin_bins[v] = f"_rebin_bins{v}"
                self.register_buffer(
                    f"_rebin_bins{v}", m.to(dtype=dtype, device=device), persistent=False
                )
        self._blur_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # Room for one entry per aligned view and per chunk (the most the volumes need, when the
        # depth combs differ from view to view) and a few more for fields' sample counts.
        self._blur_cache_size = 8 + len(self.aligned_views) + len(self.oblique_chunks)

    # -- public API ------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of the cached weights and matrices (inputs must match)."""
        return self._probe.dtype

    @property
    def device(self) -> torch.device:
        """Device of the cached weights and matrices (inputs must match)."""
        return self._probe.device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``: the shape of one activity volume (the grid's)."""
        z, y, x = self.geometry.grid.shape
        return (z, y, x)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(V, rows, bins)``: the shape of one set of projections."""
        rows, bins = self.geometry.detector_shape
        return (self.geometry.n_views, rows, bins)

    def subset(self, views: Sequence[int]) -> ProjectorSubset:
        """The operator of the views ``views`` only (rows of ``A``), sharing this one's cache.

        ``subset(views).forward(x)`` equals ``forward(x)[..., views, :, :]`` and its adjoint is
        the back-projection of those views; no weight or matrix is computed or copied (see
        ``ProjectorSubset``). Subsets that are groups of ``view_groups`` run fastest.
        """
        return ProjectorSubset(self, check_views(views, self.geometry.n_views))

    def cached_tensors(self) -> dict[str, torch.Tensor]:
        """The cached weights and matrices by name: buffers and the collimator blur cache.

        What ``sum(t.nbytes for t in ...values())`` counts as the projector's memory.
        """
        out = {name: b for name, b in self.named_buffers() if name != "_probe"}
        for i, (blur_r, blur_z) in enumerate(self._blur_cache.values()):
            out[f"blur{i}_r"], out[f"blur{i}_z"] = blur_r, blur_z
        return out

    def _view_tensors(self, views: Sequence[int]) -> dict[str, torch.Tensor]:
        """The cached tensors that projecting ``views`` applies, by name (views of the cache)."""
        buffers = dict(self.named_buffers())
        out: dict[str, torch.Tensor] = {}
        if "rebin_rows" in buffers:
            out["rebin_rows"] = buffers["rebin_rows"]
        aligned = buffers.get("aligned_weights")
        for v in views:
            if v in self._rebin_bins:
                out[self._rebin_bins[v]] = buffers[self._rebin_bins[v]]
            if self.lattices[v].quadrant is not None and aligned is not None:
                out[f"aligned_weights[{v}]"] = aligned[self.aligned_views.index(v)]
        for c, start, stop in self._runs(views):
            run = f"[{start}:{stop}]"
            weights = self._run_weights(c, start, stop)
            if weights is not None:
                out[f"_obl{c}_weights{run}"] = weights
            (_, col, val), _ = self._run_parts(c, start, stop)
            out[f"_obl{c}_col{run}"], out[f"_obl{c}_val{run}"] = col, val
            if self._is_whole(c, start, stop):
                _, (_, col_t, val_t), _ = self._chunk_parts(c)
                out[f"_obl{c}_col_t"], out[f"_obl{c}_val_t"] = col_t, val_t
            blur_r, blur_z = self._run_blur(c, start, stop)
            if blur_r is not None:
                out[f"_obl{c}_blur_r{run}"] = blur_r
            if blur_z is not None:
                out[f"_obl{c}_blur_z{run}"] = blur_z
        return out

    def forward(
        self,
        activity: VolumeOrField,
        *,
        reference: bool = False,
        n_samples: int | None = None,
        jitter: bool = False,
        generator: torch.Generator | None = None,
        chunk_points: int = DEFAULT_CHUNK_POINTS,
    ) -> torch.Tensor:
        """Project ``activity`` to ``[B?, V, rows, bins]`` (line integrals, activity·mm).

        ``activity`` is a volume ``[Z, Y, X]`` / ``[B, Z, Y, X]`` on the grid, or a field (a
        callable mapping points ``[..., 3]`` (x, y, z mm) to activity ``[...]``).

        Field options: ``n_samples`` depth samples per ray (default: the lattice's, one per voxel
        for axis-aligned views), ``jitter`` shifts each ray's samples by a random fraction of a step
        (stratified sampling for training; uses ``generator``), and ``chunk_points`` bounds how
        many points the field sees per call. ``reference=True`` disables the axis-aligned fast
        path for volumes (for tests).
        """
        if isinstance(activity, torch.Tensor):
            return self._project_volume(activity, reference=reference)
        if callable(activity):
            return self._project_field(activity, n_samples, jitter, generator, chunk_points)
        raise TypeError(
            f"activity must be a torch.Tensor or a callable, got {type(activity).__name__}"
        )

    def adjoint(self, projections: torch.Tensor, *, reference: bool = False) -> torch.Tensor:
        """Back-project ``[B?, V, rows, bins]`` to ``[B?, Z, Y, X]``: the transpose of forward."""
        views = tuple(range(self.geometry.n_views))
        p = self._check_projections(projections, len(views))
        volume = self._adjoint_views(p, views, reference)
        return volume if projections.dim() == 4 else volume[0]

    # -- volumes ---------------------------------------------------------------------------------
    def _project_volume(self, activity: torch.Tensor, *, reference: bool) -> torch.Tensor:
        a = check_volume("activity", activity, self.geometry.grid.shape)
        self._check_tensor(a, "activity")
        proj = self._forward_views(a, tuple(range(self.geometry.n_views)), reference)
        return proj if activity.dim() == 4 else proj[0]

    def _check_projections(self, projections: torch.Tensor, n_views: int) -> torch.Tensor:
        """Check ``projections`` ``[B?, n_views, rows, bins]``; return ``[B, n_views, ...]``."""
        rows, bins = self.geometry.detector_shape
        if not isinstance(projections, torch.Tensor) or not projections.is_floating_point():
            raise TypeError("projections must be a floating-point torch.Tensor")
        expected = [n_views, rows, bins]
        if projections.dim() not in (3, 4) or list(projections.shape[-3:]) != expected:
            raise ValueError(
                f"projections must have shape [V, rows, bins] = {expected} or [B, V, rows, bins], "
                f"got {list(projections.shape)}"
            )
        self._check_tensor(projections, "projections")
        return projections if projections.dim() == 4 else projections.unsqueeze(0)

    def _forward_views(
        self, a: torch.Tensor, views: Sequence[int], reference: bool
    ) -> torch.Tensor:
        """Projections ``[B, len(views), rows, bins]`` of ``a`` ``[B, Z, Y, X]`` in ``views``."""
        per_view: dict[int, torch.Tensor] = {}
        for v in views:
            if self.lattices[v].quadrant is not None:
                native = self._aligned_forward(a, v, reference).unsqueeze(1)  # [B, 1, Z, R]
                per_view[v] = self._rebin(native, [v])[:, 0]
        for c, start, stop in self._runs(views):
            run = self.oblique_chunks[c][start:stop]
            samples = self._sample_run(a, c, start, stop)
            weights = self._run_weights(c, start, stop)
            native = self._integrate_chunk(
                samples, run, weights, blur=self._run_blur(c, start, stop)
            )
            out = self._rebin(native, run)
            for k, v in enumerate(run):
                per_view[v] = out[:, k]
        return torch.stack([per_view[v] for v in views], dim=1)

    def _adjoint_views(
        self, p: torch.Tensor, views: Sequence[int], reference: bool
    ) -> torch.Tensor:
        """Transpose of ``_forward_views``: ``[B, len(views), rows, bins] → [B, Z, Y, X]``."""
        index = {v: i for i, v in enumerate(views)}
        nb = p.shape[0]
        parts = []
        for v in self.aligned_views:
            if v in index:
                i = index[v]
                native = self._rebin_adjoint(p[:, i : i + 1], [v])[:, 0]  # [B, Z, R]
                parts.append(self._aligned_adjoint(native, v, reference))
        for c, start, stop in self._runs(views):
            run = self.oblique_chunks[c][start:stop]
            native = self._rebin_adjoint(p[:, [index[v] for v in run]], run)  # [B, Vc, Z, R]
            weights = self._run_weights(c, start, stop)
            lattice = self._integrate_adjoint_chunk(
                native, run, weights, blur=self._run_blur(c, start, stop)
            )
            parts.append(self._unsample_run(lattice, c, start, stop, nb))
        volume = parts[0]
        for part in parts[1:]:
            volume = volume + part
        return volume

    def _runs(self, views: Sequence[int]) -> list[tuple[int, int, int]]:
        """``(chunk, start, stop)``: the oblique views among ``views`` as runs of consecutive
        positions in their chunks (a whole chunk is the run ``(c, 0, len(chunk))``)."""
        positions: dict[int, list[int]] = {}
        for v in views:
            if v in self._oblique_position:
                c, k = self._oblique_position[v]
                positions.setdefault(c, []).append(k)
        runs = []
        for c in sorted(positions):
            ks = sorted(positions[c])
            start = ks[0]
            for prev, k in itertools.pairwise(ks):
                if k != prev + 1:
                    runs.append((c, start, prev + 1))
                    start = k
            runs.append((c, start, ks[-1] + 1))
        return runs

    def _is_whole(self, c: int, start: int, stop: int) -> bool:
        return start == 0 and stop == len(self.oblique_chunks[c])

    def _run_weights(self, c: int, start: int, stop: int) -> torch.Tensor | None:
        """The chunk's attenuation weights of a run, ``[stop - start, S, R, Z]`` (a view)."""
        w = self._chunk_weights(c)
        return w if w is None or self._is_whole(c, start, stop) else w[start:stop]

    def _run_blur(
        self, c: int, start: int, stop: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The chunk's cached blur matrices, restricted to a run (views, not copies)."""
        chunk = self.oblique_chunks[c]
        lats = [self.lattices[v] for v in chunk]
        blur_r, blur_z = self._blur_matrices(lats, lats[0].shape[1])
        if blur_r is None or blur_r.shape[0] == 1 or self._is_whole(c, start, stop):
            return blur_r, blur_z
        return blur_r[start:stop], None if blur_z is None else blur_z[start:stop]

    def _run_parts(self, c: int, start: int, stop: int) -> tuple[CsrParts, tuple[int, int]]:
        """The rows of a run in the chunk's sampling matrix: CSR parts (views) and shape."""
        parts, _, (_, n_cols) = self._chunk_parts(c)
        s, r = self.lattices[self.oblique_chunks[c][0]].shape
        return row_block(parts, start * s * r, stop * s * r, n_cols)

    def _sample_run(self, a: torch.Tensor, c: int, start: int, stop: int) -> torch.Tensor:
        """``[B, Z, Y, X] → [stop - start, S, R, B, Z]``: the run's rows of the chunk's matrix."""
        if self._is_whole(c, start, stop):
            return self._sample_oblique(a, c, stop - start)
        parts, shape = self._run_parts(c, start, stop)
        nb, z, y, x = a.shape
        cols = a.reshape(nb * z, y * x).t()
        s, r = self.lattices[self.oblique_chunks[c][0]].shape
        out = RowBlockApply.apply(cols, parts, shape, False)
        return out.reshape(stop - start, s, r, nb, z)

    def _unsample_run(
        self, lattice: torch.Tensor, c: int, start: int, stop: int, nb: int
    ) -> torch.Tensor:
        """Transpose of ``_sample_run``: ``[stop - start, S, R, B, Z] → [B, Z, Y, X]``."""
        if self._is_whole(c, start, stop):
            return self._unsample_oblique(lattice, c, nb)
        parts, shape = self._run_parts(c, start, stop)
        z, y, x = self.geometry.grid.shape
        cols = RowBlockApply.apply(lattice.reshape(shape[0], nb * z), parts, shape, True)
        return cols.t().reshape(nb, z, y, x)

    def _aligned_forward(self, a: torch.Tensor, v: int, reference: bool) -> torch.Tensor:
        """Native projection ``[B, Z, R]`` of axis-aligned view ``v``."""
        lat = self.lattices[v]
        q = lat.quadrant
        assert q is not None  # only the axis-aligned views (those with a quadrant) come here
        k = self.aligned_views.index(v)
        w_vol = None if self.aligned_weights is None else self.aligned_weights[k]
        if reference or self.collimator is not None:
            if reference:
                samples = self._reference_samples(a, v)
            else:
                samples = to_lattice(a, q).permute(2, 3, 0, 1).unsqueeze(0)
            w = None if w_vol is None else to_lattice(w_vol, q).permute(1, 2, 0).unsqueeze(0)
            native = self._integrate_chunk(samples, [v], w)  # [B, 1, Z, R]
            return native[:, 0]
        depth_dim, _, _, bins_rev = quadrant_axes(q)
        summed = (
            (a * w_vol).sum(dim=depth_dim)
            if w_vol is not None
            else a.sum(dim=depth_dim) * lat.step_s_mm
        )
        return torch.flip(summed, (-1,)) if bins_rev else summed

    def _aligned_adjoint(self, native: torch.Tensor, v: int, reference: bool) -> torch.Tensor:
        """Transpose of ``_aligned_forward``: ``[B, Z, R] → [B, Z, Y, X]``."""
        lat = self.lattices[v]
        q = lat.quadrant
        assert q is not None  # only the axis-aligned views (those with a quadrant) come here
        k = self.aligned_views.index(v)
        w_vol = None if self.aligned_weights is None else self.aligned_weights[k]
        if reference or self.collimator is not None:
            w = None if w_vol is None else to_lattice(w_vol, q).permute(1, 2, 0).unsqueeze(0)
            lattice = self._integrate_adjoint_chunk(native.unsqueeze(1), [v], w)  # [1, S, R, B, Z]
            if reference:
                return self._reference_unsample(lattice, v)
            return from_lattice(lattice[0].permute(2, 3, 0, 1), q)
        depth_dim, _, _, bins_rev = quadrant_axes(q)
        n = torch.flip(native, (-1,)) if bins_rev else native
        spread = n.unsqueeze(depth_dim)
        return (
            spread * w_vol
            if w_vol is not None
            else spread.expand(-1, *self.geometry.grid.shape) * lat.step_s_mm
        )

    def _reference_matrix(self, v: int) -> tuple[tuple, tuple, tuple[int, int]]:
        points = self.lattices[v].inplane_points_mm().reshape(-1, 2)
        parts, parts_t, shape = bilinear_matrix(self.geometry.grid, points)
        dev, dt = self.device, self.dtype
        parts = (parts[0].to(dev), parts[1].to(dev), parts[2].to(dtype=dt, device=dev))
        parts_t = (parts_t[0].to(dev), parts_t[1].to(dev), parts_t[2].to(dtype=dt, device=dev))
        return parts, parts_t, shape

    def _reference_samples(self, a: torch.Tensor, v: int) -> torch.Tensor:
        """Bilinear samples of ``a`` on view ``v``'s lattice, ``[1, S, R, B, Z]`` (plain twin)."""
        parts, parts_t, shape = self._reference_matrix(v)
        nb, z, y, x = a.shape
        cols = a.reshape(nb * z, y * x).t()
        s, r = self.lattices[v].shape
        return SparseApply.apply(cols, parts, parts_t, shape).reshape(1, s, r, nb, z)

    def _reference_unsample(self, lattice: torch.Tensor, v: int) -> torch.Tensor:
        parts, parts_t, shape = self._reference_matrix(v)
        _, s, r, nb, z = lattice.shape
        _, y, x = self.geometry.grid.shape
        cols = SparseApply.apply(
            lattice.reshape(s * r, nb * z), parts_t, parts, (shape[1], shape[0])
        )
        return cols.t().reshape(nb, z, y, x)

    def _chunk_parts(self, c: int) -> tuple[tuple, tuple, tuple[int, int]]:
        parts = tuple(getattr(self, f"_obl{c}_{n}") for n in ("crow", "col", "val"))
        parts_t = tuple(getattr(self, f"_obl{c}_{n}") for n in ("crow_t", "col_t", "val_t"))
        views = self.oblique_chunks[c]
        s, r = self.lattices[views[0]].shape
        _, y, x = self.geometry.grid.shape
        return parts, parts_t, (len(views) * s * r, y * x)

    def _sample_oblique(self, a: torch.Tensor, c: int, n_views: int) -> torch.Tensor:
        """``[B, Z, Y, X] → [Vc, S, R, B, Z]`` by the chunk's bilinear matrix."""
        parts, parts_t, shape = self._chunk_parts(c)
        nb, z, y, x = a.shape
        cols = a.reshape(nb * z, y * x).t()
        s, r = self.lattices[self.oblique_chunks[c][0]].shape
        return SparseApply.apply(cols, parts, parts_t, shape).reshape(n_views, s, r, nb, z)

    def _unsample_oblique(self, lattice: torch.Tensor, c: int, nb: int) -> torch.Tensor:
        """Transpose of ``_sample_oblique``: ``[Vc, S, R, B, Z] → [B, Z, Y, X]``."""
        parts, parts_t, shape = self._chunk_parts(c)
        z, y, x = self.geometry.grid.shape
        cols = SparseApply.apply(
            lattice.reshape(shape[0], nb * z), parts_t, parts, (shape[1], shape[0])
        )
        return cols.t().reshape(nb, z, y, x)

    def _chunk_weights(self, c: int) -> torch.Tensor | None:
        return getattr(self, f"_obl{c}_weights", None)

    # -- the shared integration ----------------------------------------------------------------
    def _integrate_chunk(
        self,
        samples: torch.Tensor,
        views: list[int],
        weights: torch.Tensor | None,
        lattices: list[ViewLattice] | None = None,
        blur: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """``[Vc, S, R, B, Z]`` samples → native ``[B, Vc, Z, R]``.

        ``blur``: the views' blur matrices if already known (else from the cache by lattice).
        """
        lats = lattices or [self.lattices[v] for v in views]
        blur_r, blur_z = blur if blur is not None else self._blur_matrices(lats, samples.shape[2])
        native = integrate(samples, weights, lats[0].step_s_mm, blur_r, blur_z)  # [Vc, R, B, Z]
        return native.permute(2, 0, 3, 1)

    def _integrate_adjoint_chunk(
        self,
        native: torch.Tensor,
        views: list[int],
        weights: torch.Tensor | None,
        blur: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Transpose of ``_integrate_chunk``: ``[B, Vc, Z, R]`` → ``[Vc, S, R, B, Z]``."""
        lats = [self.lattices[v] for v in views]
        s, r = lats[0].shape
        blur_r, blur_z = blur if blur is not None else self._blur_matrices(lats, r)
        return integrate_adjoint(
            native.permute(1, 3, 0, 2), weights, lats[0].step_s_mm, s, blur_r, blur_z
        )

    def _blur_matrices(
        self, lattices: list[ViewLattice], n_bins: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.collimator is None:
            return None, None
        combs = {lat.s_mm for lat in lattices}
        per_view = [lattices[0].s_mm] if len(combs) == 1 else [lat.s_mm for lat in lattices]
        lat0 = lattices[0]
        key = (
            tuple(per_view),
            n_bins,
            lat0.step_r_mm,
            lat0.z_mm,
            lat0.step_z_mm,
            self.dtype,
            self.device,
        )
        if key not in self._blur_cache:
            radius = self.geometry.radius_mm
            assert radius is not None  # __init__ refuses a collimator without geometry.radius_mm
            s = torch.tensor(per_view, dtype=torch.float64, device=self.device)  # [V|1, S]
            distance = radius - s
            lat = lattices[0]
            blur_r = self.collimator.line_spread_matrices(distance, n_bins, lat.step_r_mm)
            blur_z = self.collimator.line_spread_matrices(distance, len(lat.z_mm), lat.step_z_mm)
            if len(self._blur_cache) >= self._blur_cache_size:
                self._blur_cache.clear()
            self._blur_cache[key] = (blur_r.to(self.dtype), blur_z.to(self.dtype))
        return self._blur_cache[key]

    # -- detector --------------------------------------------------------------------------------
    def _rebin(self, native: torch.Tensor, views: list[int]) -> torch.Tensor:
        """Native ``[B, Vc, Z, R]`` → detector ``[B, Vc, rows, bins]``."""
        out = native if self.rebin_rows is None else torch.matmul(self.rebin_rows, native)
        mats = [self._rebin_bins.get(v) for v in views]
        if all(m is None for m in mats):
            return out
        cols = []
        for k, name in enumerate(mats):
            view = out[:, k]
            cols.append(view if name is None else view @ getattr(self, name).t())
        return torch.stack(cols, dim=1)

    def _rebin_adjoint(self, p: torch.Tensor, views: list[int]) -> torch.Tensor:
        """Transpose of ``_rebin``: ``[B, Vc, rows, bins]`` → native ``[B, Vc, Z, R]``."""
        mats = [self._rebin_bins.get(v) for v in views]
        if not all(m is None for m in mats):
            p = torch.stack(
                [
                    p[:, k] if name is None else p[:, k] @ getattr(self, name)
                    for k, name in enumerate(mats)
                ],
                dim=1,
            )
        return p if self.rebin_rows is None else torch.matmul(self.rebin_rows.t(), p)

    # -- fields ----------------------------------------------------------------------------------
    def _project_field(
        self,
        field: Field,
        n_samples: int | None,
        jitter: bool,
        generator: torch.Generator | None,
        chunk_points: int,
    ) -> torch.Tensor:
        if n_samples is not None and (
            isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1
        ):
            raise ValueError(f"n_samples must be a positive integer or None, got {n_samples!r}")
        if not isinstance(chunk_points, int) or chunk_points < 1:
            raise ValueError(f"chunk_points must be a positive integer, got {chunk_points!r}")
        g = self.geometry
        dt, dev = self.dtype, self.device
        per_view: dict[int, torch.Tensor] = {}
        for v in range(g.n_views):
            if v in per_view:
                continue
            lat = _resampled(self.field_lattices[v], n_samples)
            shift = None
            if jitter:
                r_count = lat.shape[1]
                shift = torch.rand(r_count, len(lat.z_mm), generator=generator, dtype=torch.float64)
                shift = (shift - 0.5).to(dev) * lat.step_s_mm  # [R, Z] per-ray shift (mm)
            points = _lattice_points(lat, shift, dt, dev)  # [S, R, Z, 3]
            act = _evaluate(field, points, chunk_points, "activity field")
            cached = n_samples is None and shift is None and self._field_on_voxel_lattice[v]
            has_mu = self._mu_grid is not None or self._mu_field is not None
            mu_samples = self._mu_at(points) if has_mu and not cached else None
            todo = [(v, act, mu_samples, lat)]
            opposed = g.opposed_view(v)
            if opposed is not None and opposed != v:  # the same lines, seen from the other side
                mu_o = None if mu_samples is None else torch.flip(mu_samples, (0, 1))
                lat_o = _resampled(self.field_lattices[opposed], n_samples)
                todo.append((opposed, torch.flip(act, (0, 1)), mu_o, lat_o))
            for view, a_s, mu_s, view_lat in todo:
                weights: torch.Tensor | None
                if mu_s is not None:
                    weights = depth_weights(mu_s, view_lat.step_s_mm, dim=0).unsqueeze(0)
                else:
                    weights = self._cached_lattice_weights(view) if cached else None
                samples = a_s.unsqueeze(0).unsqueeze(3)  # [1, S, R, 1, Z]
                native = self._integrate_chunk(samples, [view], weights, [view_lat])
                per_view[view] = native[0, 0]  # the field lattice is the detector: no rebinning
        return torch.stack([per_view[v] for v in range(g.n_views)])

    def render_rays(
        self,
        field: Field,
        views: torch.Tensor,
        rows: torch.Tensor,
        bins: torch.Tensor,
        *,
        n_samples: int | None = None,
        jitter: bool = False,
        generator: torch.Generator | None = None,
        with_opposed: bool = False,
        chunk_points: int = DEFAULT_CHUNK_POINTS,
    ) -> torch.Tensor:
        """Line integrals of ``field`` along chosen detector pixels' rays (no collimator blur).

        Parameters
        ----------
        field: callable mapping points ``[N, 3]`` (x, y, z mm) to values ``[N]``.
        views, rows, bins: integer tensors ``[N]``: view index, detector row and bin of each ray.
        n_samples: samples per ray (default: the view's lattice, one per voxel along the ray).
        jitter: shift each ray's samples by a random fraction of a step (uses ``generator``).
        with_opposed: also return the conjugate view's value for the same line (views at β and
            β + 180°, bin ``bins - 1 - b`` for a centred detector), from the same field samples.

        Returns
        -------
        ``[N]`` values in activity·mm, or ``[N, 2]`` (this view, its opposed view) with
        ``with_opposed``. Equals the matching pixels of ``forward(field)`` without blur.
        """
        if self.collimator is not None:
            raise ValueError(
                "render_rays cannot apply the collimator blur (it mixes neighbouring "
                "rays); project whole views with forward() instead"
            )
        g = self.geometry
        dt, dev = self.dtype, self.device
        views, rows, bins = (
            _as_index(t, n, dev)
            for t, n in (
                (views, g.n_views),
                (rows, g.detector_shape[0]),
                (bins, g.detector_shape[1]),
            )
        )
        if not (views.shape == rows.shape == bins.shape) or views.dim() != 1:
            raise ValueError(
                f"views, rows and bins must be 1D integer tensors of one length, got shapes "
                f"{list(views.shape)}, {list(rows.shape)}, {list(bins.shape)}"
            )
        lats = [_resampled(lat, n_samples) for lat in self.field_lattices]
        used = sorted(set(views.tolist()))
        counts = {lats[v].shape[0] for v in used}
        if len(counts) > 1:
            raise ValueError(f"views with different sample counts {sorted(counts)}; set n_samples")
        n_s = counts.pop() if counts else 1
        per_view = torch.tensor([[*lat.directions()[0], *lat.directions()[1],
                                  0.5 * (lat.s_mm[0] + lat.s_mm[-1]), lat.step_s_mm]
                                 for lat in lats], dtype=torch.float64, device=dev)  # fmt: skip
        ux, uy, nx, ny, s_c, step = per_view[views].unbind(-1)  # each [N]
        r = g.detector_centres_mm(1, device=dev)[bins]
        z = g.detector_centres_mm(0, device=dev)[rows]
        k = torch.arange(n_s, dtype=torch.float64, device=dev) - (n_s - 1) / 2
        s = s_c[:, None] + k[None, :] * step[:, None]  # [N, S]
        if jitter:
            u = torch.rand(s.shape[0], 1, generator=generator, dtype=torch.float64).to(dev)
            s = s + (u - 0.5) * step[:, None]
        x = r[:, None] * ux[:, None] + s * nx[:, None]
        y = r[:, None] * uy[:, None] + s * ny[:, None]
        points = torch.stack([x, y, z[:, None].expand_as(x)], dim=-1).to(dt)  # [N, S, 3]
        act = _evaluate(field, points, chunk_points, "activity field")  # [N, S]
        has_mu = self._mu_grid is not None or self._mu_field is not None
        mu = self._mu_at(points) if has_mu else None
        step_t = step.to(dt)[:, None]
        weights = step_t if mu is None else depth_weights(mu, step_t, dim=1)
        value = (act * weights).sum(dim=1)
        if not with_opposed:
            return value
        if any(g.opposed_view(v) is None for v in used):
            raise ValueError("with_opposed needs the view at β + 180° of every requested view")
        w_opp = (
            step_t
            if mu is None
            else torch.flip(depth_weights(torch.flip(mu, (1,)), step_t, dim=1), (1,))
        )
        return torch.stack([value, (act * w_opp).sum(dim=1)], dim=1)

    def _cached_lattice_weights(self, v: int) -> torch.Tensor | None:
        """Cached weights of view ``v`` on its own lattice, ``[1, S, R, Z]`` (None: no μ)."""
        lat = self.lattices[v]
        if lat.quadrant is not None:
            if self.aligned_weights is None:
                return None
            w_vol = self.aligned_weights[self.aligned_views.index(v)]
            return to_lattice(w_vol, lat.quadrant).permute(1, 2, 0).unsqueeze(0)
        for c, views in enumerate(self.oblique_chunks):
            if v in views:
                w = self._chunk_weights(c)
                return None if w is None else w[views.index(v)].unsqueeze(0)
        raise AssertionError("unreachable: every view is aligned or in an oblique chunk")

    def _mu_at(self, points: torch.Tensor) -> torch.Tensor:
        if self._mu_field is not None:
            return _evaluate(self._mu_field, points, DEFAULT_CHUNK_POINTS, "mu field")
        assert self._mu_grid is not None  # callers ask only when there is a μ (grid or field)
        return GridField(self._mu_grid, self.geometry.grid)(points)

    # -- helpers ---------------------------------------------------------------------------------
    def _aligned_lattice_weights(self, v: int) -> torch.Tensor | None:
        """Attenuation weights ``[Z, S, R]`` of axis-aligned view ``v`` on its lattice."""
        lat = self.lattices[v]
        if self._mu_grid is not None:
            assert lat.quadrant is not None  # called for the axis-aligned views only
            return depth_weights(to_lattice(self._mu_grid, lat.quadrant), lat.step_s_mm, dim=1)
        if self._mu_field is None:
            return None
        points = _lattice_points(lat, None, self.dtype, self.device)  # [S, R, Z, 3]
        mu_s = _evaluate(self._mu_field, points, DEFAULT_CHUNK_POINTS, "mu field")
        return depth_weights(mu_s, lat.step_s_mm, dim=0).permute(2, 0, 1)

    def _oblique_weights(self, c: int) -> torch.Tensor:
        """Attenuation weights ``[Vc, S, R, Z]`` of oblique chunk ``c`` (μ sampled as activity)."""
        views = self.oblique_chunks[c]
        lats = [self.lattices[v] for v in views]
        if self._mu_grid is not None:
            mu_s = self._sample_oblique(self._mu_grid.unsqueeze(0), c, len(views))[..., 0, :]
        else:
            # Called only when μ is given: not a grid, so a field.
            assert self._mu_field is not None
            pts = torch.stack([_lattice_points(lat, None, self.dtype, self.device) for lat in lats])
            mu_s = _evaluate(self._mu_field, pts, DEFAULT_CHUNK_POINTS, "mu field")
        return depth_weights(mu_s, lats[0].step_s_mm, dim=1)

    def _check_tensor(self, t: torch.Tensor, name: str) -> None:
        if t.dtype != self.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but the projector uses {self.dtype}; "
                f"call .to({t.dtype})"
            )
        if t.device != self.device:
            raise ValueError(
                f"{name} is on {t.device} but the projector is on {self.device}; call .to()"
            )


def _check_view_groups(
    view_groups: Sequence[Sequence[int]] | None, n_views: int
) -> list[tuple[int, ...]]:
    """``view_groups`` checked to be a partition of ``range(n_views)`` (``None``: one group)."""
    if view_groups is None:
        return [tuple(range(n_views))]
    if isinstance(view_groups, (str, bytes)) or not isinstance(view_groups, Sequence):
        raise TypeError(
            f"view_groups must be a sequence of view sequences or None, "
            f"got {type(view_groups).__name__}"
        )
    groups = [check_views(g, n_views) for g in view_groups]
    seen = sorted(v for g in groups for v in g)
    if seen != list(range(n_views)):
        raise ValueError(
            f"view_groups must hold each view 0..{n_views - 1} exactly once, got {seen}"
        )
    return groups


def _prepare_mu(
    mu: VolumeOrField | None,
    shape: tuple[int, int, int],
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor | None:
    if mu is None:
        return None
    if isinstance(mu, torch.Tensor):
        m = check_volume("mu", mu, shape)
        if m.shape[0] != 1:
            raise ValueError(f"mu must be one [Z, Y, X] volume, got shape {list(mu.shape)}")
        check_mu_values("mu", m)
        return m[0].to(dtype=dtype, device=device)
    if callable(mu):
        return None
    raise TypeError(f"mu must be a torch.Tensor, a callable or None, got {type(mu).__name__}")


def _resampled(lat: ViewLattice, n_samples: int | None) -> ViewLattice:
    """``lat`` with ``n_samples`` depth samples over the same depth range (or ``lat`` itself)."""
    s = len(lat.s_mm)
    if n_samples is None or n_samples == s:
        return lat
    length = s * lat.step_s_mm
    centre = 0.5 * (lat.s_mm[0] + lat.s_mm[-1])
    step = length / n_samples
    comb = tuple(centre + (k - (n_samples - 1) / 2) * step for k in range(n_samples))
    return dataclasses.replace(lat, s_mm=comb, step_s_mm=step)


def _lattice_points(
    lat: ViewLattice,
    shift_mm: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    """``[S, R, Z, 3]`` (x, y, z) positions in mm; ``shift_mm`` ``[R, Z]`` moves each ray's comb."""
    (ux, uy), (nx, ny) = lat.directions()
    f64: dict[str, Any] = {"dtype": torch.float64, "device": device}
    r = torch.tensor(lat.r_mm, **f64)[None, :, None]
    s = torch.tensor(lat.s_mm, **f64)[:, None, None]
    if shift_mm is not None:
        s = s + shift_mm.to(**f64)[None]
    z = torch.tensor(lat.z_mm, **f64)[None, None, :]
    x = r * ux + s * nx
    y = r * uy + s * ny
    shape = torch.broadcast_shapes(x.shape, z.shape)
    return torch.stack([x.expand(shape), y.expand(shape), z.expand(shape)], dim=-1).to(dtype)


def _same_comb(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(
        abs(p - q) <= 1e-9 * (1.0 + abs(q)) for p, q in zip(a, b, strict=True)
    )


def _as_index(t: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"ray indices must be integer tensors, got dtype {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
        raise ValueError(
            f"ray indices must be within [0, {size}), got {int(t.min())}..{int(t.max())}"
        )
    return t.long()


def _evaluate(field: Field, points: torch.Tensor, chunk_points: int, name: str) -> torch.Tensor:
    """Evaluate ``field`` on ``points [..., 3]`` in chunks; returns ``[...]``."""
    flat = points.reshape(-1, 3)
    outs = []
    for start in range(0, flat.shape[0], chunk_points):
        chunk = flat[start : start + chunk_points]
        val = field(chunk)
        if not isinstance(val, torch.Tensor):
            raise TypeError(f"{name} must return a torch.Tensor, got {type(val).__name__}")
        if tuple(val.shape) != (chunk.shape[0],):
            raise ValueError(
                f"{name} must map points [N, 3] to values [N]; for N = {chunk.shape[0]} "
                "it returned "
                f"shape {list(val.shape)}"
            )
        outs.append(val)
    return torch.cat(outs).reshape(points.shape[:-1]).to(points.dtype)


def project(
    activity: VolumeOrField,
    geometry: ParallelGeometry,
    mu: VolumeOrField | None = None,
    collimator: CollimatorResponse | None = None,
    **field_options: object,
) -> torch.Tensor:
    """Forward-project ``activity`` (volume ``[B?, Z, Y, X]`` or field) to ``[B?, V, rows, bins]``.

    Values are line integrals in activity·mm. ``mu`` (1/mm) is a volume on the grid, a field or
    ``None``. Builds a ``SPECTProjector`` (so attenuation is recomputed, and differentiable
    with respect to ``mu``); reuse a ``SPECTProjector`` for repeated projections.
    Field options (``n_samples``, ``jitter``, ``generator``, ``chunk_points``) as in
    ``forward``.
    """
    dtype, device = _dtype_device(activity, mu)
    op = SPECTProjector(geometry, mu, collimator, dtype=dtype, device=device)
    return op(activity, **field_options)


def backproject(
    projections: torch.Tensor,
    geometry: ParallelGeometry,
    mu: VolumeOrField | None = None,
    collimator: CollimatorResponse | None = None,
) -> torch.Tensor:
    """Back-project ``[B?, V, rows, bins]`` to ``[B?, Z, Y, X]``, the transpose of ``project``.

    ``mu`` and ``collimator`` as in ``project``; dtype and device follow ``projections``.
    """
    if not isinstance(projections, torch.Tensor):
        raise TypeError(f"projections must be a torch.Tensor, got {type(projections).__name__}")
    op = SPECTProjector(
        geometry, mu, collimator, dtype=projections.dtype, device=projections.device
    )
    return op.adjoint(projections)


def _dtype_device(*candidates: object) -> tuple[torch.dtype, torch.device]:
    for c in candidates:
        if isinstance(c, torch.Tensor) and c.is_floating_point():
            return c.dtype, c.device
    return torch.float32, torch.device("cpu")


__all__ = ["SPECTProjector", "backproject", "project"]
