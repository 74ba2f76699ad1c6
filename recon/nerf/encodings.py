"""Input encodings of 3D points for neural fields (pure torch: they run on any device).

Both map points already normalised to the unit cube ``[-1, 1]³`` to feature vectors.

- ``FrequencyEncoding``: NeRF's positional encoding, ``[p, sin(2^k π p), cos(2^k π p)]``.
- ``HashGridEncoding``: a multi-resolution hash grid (Müller et al., Instant-NGP, 2022): at each of
  L levels, trilinear interpolation of trainable feature vectors stored at the corners of a grid,
  hashed into a table of ``2^log2_size`` entries when the grid has more corners than that.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

_PRIMES = (1, 2654435761, 805459861)

#: The hash grid is evaluated in chunks of points. On the CPU a chunk holds this many corner
#: entries (``[L, 8, n]``: 8 MB per float temporary), so that its temporaries mostly stay in the
#: caches while the number of tensor operations stays small (measured best on a 2-core EPYC at
#: 16 384 points for 16 levels and 32 768–65 536 for 6 levels); elsewhere a chunk has
#: `_CHUNK_POINTS` points, to keep kernel launches few.
_CPU_CHUNK_ENTRIES = 2**21
_CHUNK_POINTS = 2**18


class FrequencyEncoding(nn.Module):
    """``[..., 3] → [..., 3·(2·n_frequencies + 1)]`` (input included)."""

    bands: torch.Tensor  # buffer (registered in __init__)

    def __init__(self, n_frequencies: int = 10) -> None:
        super().__init__()
        if n_frequencies < 0:
            raise ValueError(f"n_frequencies must be >= 0, got {n_frequencies}")
        self.n_frequencies = n_frequencies
        self.register_buffer(
            "bands",
            math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32),
            persistent=False,
        )

    @property
    def out_features(self) -> int:
        return 3 * (2 * self.n_frequencies + 1)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        scaled = (p[..., None, :] * self.bands.to(p.dtype)[:, None]).flatten(-2)  # [..., 3F]
        return torch.cat([p, torch.sin(scaled), torch.cos(scaled)], dim=-1)


class HashGridEncoding(nn.Module):
    """``[..., 3] → [..., levels·features]`` multi-resolution hash-grid features.

    Parameters
    ----------
    levels: number of resolution levels L.
    features: features per level F.
    log2_size: log2 of the hash-table size T per level.
    base_resolution: grid cells per axis at the coarsest level.
    finest_resolution: grid cells per axis at the finest level.

    The table is one parameter ``[Σ_l T_l, F]`` (``offsets[l]`` is the first row of level l). A
    level with at most T corners, ``(R + 1)³ ≤ T``, is *dense*: corner ``(x, y, z)`` is row
    ``x + (R + 1)·(y + (R + 1)·z)``; a finer level is hashed into ``T = 2^log2_size`` rows,
    ``(x·1 ⊕ y·2654435761 ⊕ z·805459861) mod T``. `corner_indices` returns these rows.

    The evaluation is vectorised over all levels at once, chunked over the points (so that its
    temporaries stay in the CPU's caches) and differentiated by a hand-written backward pass that
    recomputes the corners instead of storing them; when the points themselves need a gradient,
    plain autograd is used instead (same values).
    """

    # buffers (registered in __init__)
    _res: torch.Tensor
    _last_cell: torch.Tensor
    _dense_y: torch.Tensor
    _dense_z: torch.Tensor
    _dense_start: torch.Tensor
    _hash_block: torch.Tensor
    _corner01: torch.Tensor

    def __init__(
        self,
        levels: int = 16,
        features: int = 2,
        log2_size: int = 19,
        base_resolution: int = 16,
        finest_resolution: int = 512,
    ) -> None:
        super().__init__()
        if levels < 1 or features < 1 or not 4 <= log2_size <= 26:
            raise ValueError(
                f"need levels >= 1, features >= 1, 4 <= log2_size <= 26; got {levels}, {features}, "
                f"{log2_size}"
            )
        if not 1 <= base_resolution <= finest_resolution:
            raise ValueError(
                f"need 1 <= base_resolution <= finest_resolution, got {base_resolution}, "
                f"{finest_resolution}"
            )
        growth = math.exp(math.log(finest_resolution / base_resolution) / max(levels - 1, 1))
        resolutions = [math.floor(base_resolution * growth**k) for k in range(levels)]
        sizes = [min((r + 1) ** 3, 2**log2_size) for r in resolutions]
        self.levels, self.features = levels, features
        self.log2_size = log2_size
        self.resolutions = resolutions
        self.sizes = sizes
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        self.offsets = offsets
        table = torch.empty(offsets[-1], features).uniform_(-1e-4, 1e-4)
        self.table = nn.Parameter(table)
        # Resolutions never decrease, so the dense levels come first.
        self.n_dense = sum(1 for r, s in zip(resolutions, sizes, strict=True) if (r + 1) ** 3 <= s)
        self._index_dtype = torch.int32 if offsets[-1] < 2**31 else torch.int64
        self._register_constants()

    def _register_constants(self) -> None:
        nd, res = self.n_dense, self.resolutions
        r1 = torch.tensor(res[:nd], dtype=torch.int64) + 1
        hashed = self.levels - nd
        constants = {
            # [L, 1, 1]: cells per axis as float, and the last cell's lower corner
            "_res": torch.tensor(res, dtype=torch.float32)[:, None, None],
            "_last_cell": torch.tensor(res, dtype=torch.float32)[:, None, None] - 1.0,
            # dense levels [Ld, 1, 1]: row strides of y and z, and the level's first row
            "_dense_y": r1[:, None, None],
            "_dense_z": (r1 * r1)[:, None, None],
            "_dense_start": torch.tensor(self.offsets[:nd], dtype=torch.int64)[:, None, None],
            # hashed levels [Lh, 1, 1]: row of the level's block within table[hash_start:]
            "_hash_block": (torch.arange(hashed, dtype=torch.int64) << self.log2_size)[
                :, None, None
            ],
            "_corner01": torch.tensor([0, 1], dtype=torch.int64)[None, :, None],
        }
        for name, value in constants.items():
            self.register_buffer(name, value, persistent=False)

    @property
    def out_features(self) -> int:
        return self.levels * self.features

    @property
    def hash_start(self) -> int:
        """First table row of the hashed levels (``offsets[n_dense]``)."""
        return self.offsets[self.n_dense]

    # -- corners -----------------------------------------------------------------------------
    def _corners(self, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and trilinear weights of the 8 corners of every level, ``[L, 8, n]`` each.

        ``unit``: ``[3, n]`` points in ``[0, 1]``. Corner ``c`` has offsets ``(c & 1, c >> 1 & 1,
        c >> 2 & 1)`` along (x, y, z). Rows of dense levels index ``table``; rows of hashed
        levels index ``table[hash_start:]`` (level block ``l·T`` plus the hash).
        """
        levels, nd, n = self.levels, self.n_dense, unit.shape[1]
        pos = unit[:, None, None, :] * self._res.float()  # [3, L, 1, n]
        cell = torch.minimum(torch.floor(pos), self._last_cell.float())
        frac = pos - cell  # [3, L, 1, n]
        corner = cell.long() + self._corner01  # [3, L, 2, n]: lower and upper corner per axis
        idx = torch.empty((levels, 8, n), dtype=self._index_dtype, device=unit.device)
        # Per-axis terms first (6 per level and point), then the 8 combinations of the three.
        if nd:
            x, y, z = corner[:, :nd]
            hx = x.to(self._index_dtype)
            hy = (y * self._dense_y).to(self._index_dtype)
            hz = (z * self._dense_z + self._dense_start).to(self._index_dtype)
            zy = hz[:, :, None] + hy[:, None, :]  # [Ld, 2(z), 2(y), n]
            torch.add(zy[:, :, :, None], hx[:, None, None], out=idx[:nd].view(nd, 2, 2, 2, n))
        if nd < levels:
            x, y, z = corner[:, nd:]
            mask = (1 << self.log2_size) - 1
            # (a ⊕ b ⊕ c) mod 2^k = (a mod 2^k) ⊕ (b mod 2^k) ⊕ (c mod 2^k); int64 products
            # never overflow here (coordinates <= 2^k-ish times primes < 2^32).
            hx = (x * _PRIMES[0] & mask).to(self._index_dtype)
            hy = (y * _PRIMES[1] & mask).to(self._index_dtype)
            hz = ((z * _PRIMES[2] & mask) | self._hash_block).to(self._index_dtype)
            zy = hz[:, :, None] ^ hy[:, None, :]
            torch.bitwise_xor(
                zy[:, :, :, None], hx[:, None, None], out=idx[nd:].view(levels - nd, 2, 2, 2, n)
            )
        wx = torch.cat([1.0 - frac[0], frac[0]], dim=1)  # [L, 2, n]
        wy = torch.cat([1.0 - frac[1], frac[1]], dim=1)
        wz = torch.cat([1.0 - frac[2], frac[2]], dim=1)
        wxy = wy[:, :, None] * wx[:, None, :]  # [L, 2(y), 2(x), n]
        w = (wz[:, :, None, None] * wxy[:, None]).reshape(levels, 8, n)
        return idx, w

    def corner_indices(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows ``[N, L, 8]`` (int64) and trilinear weights ``[N, L, 8]`` of points
        ``[..., 3]`` in ``[-1, 1]³`` (corner ``c`` = offsets ``(c & 1, c >> 1 & 1, c >> 2 & 1)``
        along x, y, z). The encoding is ``Σ_c weight · table[row]`` per level."""
        with torch.no_grad():
            idx, w = self._corners(_unit(p).t())
        idx = idx.long()
        idx[self.n_dense :] += self.hash_start
        return idx.permute(2, 0, 1), w.permute(2, 0, 1)

    # -- evaluation --------------------------------------------------------------------------
    def forward(self, p: torch.Tensor) -> torch.Tensor:
        batch = p.shape[:-1]
        unit = _unit(p).t()  # [3, N]
        if torch.is_grad_enabled() and unit.requires_grad:
            out = self._forward_autograd(unit)
        else:
            chunk = (
                max(1, _CPU_CHUNK_ENTRIES // (8 * self.levels))
                if unit.device.type == "cpu"
                else _CHUNK_POINTS
            )
            out = _HashGridInterpolation.apply(self.table, unit.contiguous(), self, chunk)
        # out: [L·F, N] (level-major features) -> [N, L·F]
        return out.t().reshape(*batch, self.out_features).to(p.dtype)

    def _gather(self, table_f: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> None:
        """``out[l, c, n] = table_f[row of (l, c, n)]`` for one feature column ``table_f``."""
        nd = self.n_dense
        if nd:
            torch.index_select(table_f, 0, idx[:nd].reshape(-1), out=out[:nd].view(-1))
        if nd < self.levels:
            torch.index_select(
                table_f[self.hash_start :], 0, idx[nd:].reshape(-1), out=out[nd:].view(-1)
            )

    def _scatter_add(self, grad_f: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
        """``grad_f[row of (l, c, n)] += src[l, c, n]`` (the transpose of `_gather`)."""
        nd = self.n_dense
        deterministic = grad_f.device.type != "cpu" and torch.are_deterministic_algorithms_enabled()
        for part, target in ((slice(0, nd), grad_f), (slice(nd, None), grad_f[self.hash_start :])):
            rows, values = idx[part].reshape(-1), src[part].reshape(-1)
            if rows.numel() == 0:
                continue
            if deterministic:  # CUDA's index_add_ uses atomics; index_put_ sorts instead
                target.index_put_((rows.long(),), values, accumulate=True)
            else:
                target.index_add_(0, rows, values)

    def _forward_autograd(self, unit: torch.Tensor) -> torch.Tensor:
        """The same values through autograd (used when the points need a gradient)."""
        idx, w = self._corners(unit)
        nd, table_t = self.n_dense, self.table.t()
        outs = []
        for f in range(self.features):
            parts = []
            if nd:
                parts.append(table_t[f].index_select(0, idx[:nd].reshape(-1)))
            if nd < self.levels:
                parts.append(table_t[f, self.hash_start :].index_select(0, idx[nd:].reshape(-1)))
            values = torch.cat(parts).view(idx.shape)
            outs.append((values * w).sum(1))  # [L, N]
        return torch.stack(outs, dim=1).reshape(self.levels * self.features, -1)


def _unit(p: torch.Tensor) -> torch.Tensor:
    """Points ``[..., 3]`` in ``[-1, 1]³`` → ``[N, 3]`` float32 in ``[0, 1]`` (clamped)."""
    return ((p.reshape(-1, 3).float() + 1.0) * 0.5).clamp(0.0, 1.0)


class _HashGridInterpolation(torch.autograd.Function):
    """``table, unit [3, N] → [L·F, N]``: the weighted corner sums, in chunks of points.

    The backward pass recomputes each chunk's corners (cheap) rather than keeping ``[L, 8, N]``
    rows and weights alive between the passes, and scatters ``weight · grad`` into the table's
    gradient with ``index_add_``.
    """

    @staticmethod
    def forward(
        ctx: Any, table: torch.Tensor, unit: torch.Tensor, enc: HashGridEncoding, chunk: int
    ) -> torch.Tensor:
        levels, features, n_points = enc.levels, enc.features, unit.shape[1]
        columns = table.detach().t().contiguous()  # [F, T]: one contiguous column per feature
        out = torch.empty((levels, features, n_points), dtype=columns.dtype, device=unit.device)
        with torch.no_grad():
            for start in range(0, n_points, chunk):
                u = unit[:, start : start + chunk]
                idx, w = enc._corners(u)
                values = torch.empty(w.shape, dtype=columns.dtype, device=w.device)
                for f in range(features):
                    enc._gather(columns[f], idx, values)
                    torch.sum(values.mul_(w), dim=1, out=out[:, f, start : start + u.shape[1]])
        ctx.save_for_backward(unit)
        ctx.enc, ctx.chunk = enc, chunk
        return out.view(levels * features, n_points)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (unit,) = ctx.saved_tensors
        enc, chunk = ctx.enc, ctx.chunk
        levels, features, n_points = enc.levels, enc.features, unit.shape[1]
        g = grad.reshape(levels, features, n_points)
        columns = torch.zeros(
            (features, enc.table.shape[0]), dtype=enc.table.dtype, device=unit.device
        )
        for start in range(0, n_points, chunk):
            u = unit[:, start : start + chunk]
            idx, w = enc._corners(u)
            for f in range(features):
                src = w * g[:, f, None, start : start + u.shape[1]]
                enc._scatter_add(columns[f], idx, src)
        return columns.t(), None, None, None
