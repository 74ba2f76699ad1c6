"""Input encodings of 3D points for neural fields (pure torch: they run on any device).

Both map points already normalised to the unit cube ``[-1, 1]³`` to feature vectors.

- ``FrequencyEncoding``: NeRF's positional encoding, ``[p, sin(2^k π p), cos(2^k π p)]``.
- ``HashGridEncoding``: a multi-resolution hash grid (Müller et al., Instant-NGP, 2022): at each of
  L levels, trilinear interpolation of trainable feature vectors stored at the corners of a grid,
  hashed into a table of ``2^log2_size`` entries when the grid has more corners than that.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_PRIMES = (1, 2654435761, 805459861)


class FrequencyEncoding(nn.Module):
    """``[..., 3] → [..., 3·(2·n_frequencies + 1)]`` (input included)."""

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
    """

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
        self.resolutions = resolutions
        self.sizes = sizes
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        self.offsets = offsets
        table = torch.empty(offsets[-1], features).uniform_(-1e-4, 1e-4)
        self.table = nn.Parameter(table)
        corners = torch.tensor(
            [[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.int64
        )
        self.register_buffer("corners", corners, persistent=False)

    @property
    def out_features(self) -> int:
        return self.levels * self.features

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        batch = p.shape[:-1]
        unit = ((p.reshape(-1, 3).float() + 1.0) * 0.5).clamp(0.0, 1.0)  # [N, 3] in [0, 1]
        outs = []
        for res, size, start in zip(self.resolutions, self.sizes, self.offsets, strict=False):
            pos = unit * res
            base = torch.floor(pos).clamp_max(res - 1).long()  # [N, 3]
            frac = pos - base  # [N, 3]
            idx = base[:, None, :] + self.corners[None]  # [N, 8, 3]
            if (res + 1) ** 3 <= size:  # dense level: exact indexing
                flat = idx[..., 0] + (res + 1) * (idx[..., 1] + (res + 1) * idx[..., 2])
            else:
                flat = (
                    (idx[..., 0] * _PRIMES[0])
                    ^ (idx[..., 1] * _PRIMES[1])
                    ^ (idx[..., 2] * _PRIMES[2])
                )
                flat = flat % size
            feats = self.table[start + flat]  # [N, 8, F]
            w = torch.where(self.corners[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :])
            outs.append((feats * w.prod(-1, keepdim=True)).sum(1))
        return torch.cat(outs, dim=-1).reshape(*batch, -1).to(p.dtype)
