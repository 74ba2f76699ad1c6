"""The latent-conditioned emission field: activity concentration at points in mm.

``e(x) = scale · softplus(MLP([encoding(x̂), z]))`` where x̂ is the point normalised to the field of
view's bounding box ``[-1, 1]³``, z a trainable latent code of the study (auto-decoder style) and
``scale`` (Bq/mL, a buffer) sets the physical unit, chosen from the data before training so that
the network's outputs are of order one.

Optionally the input also holds point features from another module (``features``, e.g.
`recon.nerf.anatomy_field.AnatomyFeatures`: μ, a segment embedding, a body indicator), concatenated
after the encoding: ``MLP([encoding(x̂), features(x), z])``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from recon.nerf.encodings import FrequencyEncoding, HashGridEncoding
from spectproj import ImageGrid

ENCODINGS = ("frequency", "hashgrid")


@dataclass(frozen=True)
class FieldConfig:
    """Architecture of an ``EmissionField``.

    ``encoding="frequency"`` with the defaults is pieNeRF's network (10 frequencies, a 256-d latent
    code, 8×256 ReLU layers, the input re-injected at layer 4, one output). ``"hashgrid"`` uses a
    multi-resolution hash grid and a small MLP (``hash_mlp_depth`` × ``hash_mlp_width``).
    """

    encoding: str = "frequency"
    n_frequencies: int = 10
    latent_dim: int = 256
    depth: int = 8
    width: int = 256
    skip_layer: int = 4
    hash_levels: int = 16
    hash_features: int = 2
    hash_log2_size: int = 19
    hash_base_resolution: int = 16
    hash_finest_resolution: int = 512
    hash_mlp_depth: int = 2
    hash_mlp_width: int = 64

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {list(ENCODINGS)}, got {self.encoding!r}")
        for name in ("latent_dim", "n_frequencies"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("depth", "width", "hash_mlp_depth", "hash_mlp_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class EmissionField(nn.Module):
    """Activity concentration ``[N]`` (>= 0, unit of ``scale``) at points ``[N, 3]`` (x, y, z mm).

    Parameters
    ----------
    grid: the field of view; points are normalised to its bounding box.
    config: the architecture.
    scale: activity concentration of a unit network output (Bq/mL).
    features: optional module mapping points ``[N, 3]`` (x, y, z mm, not normalised) to features
        ``[N, F]``, with an ``out_features`` attribute F; its output joins the network's input
        between the encoding and the latent code (and is re-injected with them at the skip layer).
        It is a submodule: its parameters are trained and its tensors saved with the field's.
    outputs: number of network outputs (>= 1). The activity (``forward``) is the first one
        through the softplus; models that use more (e.g. `recon.nerf.organ_field`) read all of
        them, before any activation, with `raw`.
    """

    # buffers (registered in __init__)
    centre_xyz: torch.Tensor
    half_extent_xyz: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        grid: ImageGrid,
        config: FieldConfig = FieldConfig(),
        scale: float = 1.0,
        *,
        features: nn.Module | None = None,
        outputs: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 1:
            raise ValueError(f"outputs must be an integer >= 1, got {outputs!r}")
        n_features = 0
        if features is not None:
            out_features = getattr(features, "out_features", None)
            if not isinstance(features, nn.Module) or not isinstance(out_features, int):
                raise TypeError(
                    "features must be a torch.nn.Module with an int out_features, got "
                    f"{type(features).__name__}"
                )
            n_features = out_features
        self.config = config
        self.grid = grid
        z, y, x = grid.extent_mm
        oz, oy, ox = grid.offset_mm
        self.register_buffer("centre_xyz", torch.tensor([ox, oy, oz]), persistent=True)
        self.register_buffer("half_extent_xyz", torch.tensor([x, y, z]) / 2, persistent=True)
        self.register_buffer("scale", torch.tensor(float(scale)), persistent=True)
        self.latent = nn.Parameter(torch.zeros(config.latent_dim))
        if config.encoding == "frequency":
            self.encoding: nn.Module = FrequencyEncoding(config.n_frequencies)
            depth, width, skip = config.depth, config.width, config.skip_layer
        else:
            self.encoding = HashGridEncoding(
                config.hash_levels, config.hash_features, config.hash_log2_size,
                config.hash_base_resolution, config.hash_finest_resolution,
            )  # fmt: skip
            depth, width, skip = config.hash_mlp_depth, config.hash_mlp_width, -1
        self.features = features
        n_in = self.encoding.out_features + n_features + config.latent_dim
        self.skip_layer = skip
        layers = []
        for k in range(depth):
            fan_in = n_in if k == 0 else width + (n_in if k == skip else 0)
            layers.append(nn.Linear(fan_in, width))
        self.layers = nn.ModuleList(layers)
        self.output = nn.Linear(width, outputs)

    def normalise(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Points ``[..., 3]`` in mm → the field of view's unit cube ``[-1, 1]³``."""
        return (points_mm - self.centre_xyz.to(points_mm.dtype)) / self.half_extent_xyz.to(
            points_mm.dtype
        )

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        raw = self.raw(points_mm)[..., 0]
        return (nn.functional.softplus(raw) * self.scale.to(raw.dtype)).to(points_mm.dtype)

    def raw(self, points_mm: torch.Tensor, latent: torch.Tensor | None = None) -> torch.Tensor:
        """The network's outputs ``[..., outputs]`` before any activation (the network's dtype)
        at points ``[..., 3]`` (x, y, z mm), with the field's own ``latent`` or the code
        ``latent`` ``[latent_dim]`` given (e.g. one study's code of a cohort)."""
        if points_mm.shape[-1] != 3:
            raise ValueError(
                f"points_mm must have shape [..., 3] (x, y, z mm), got {list(points_mm.shape)}"
            )
        batch = points_mm.shape[:-1]
        dtype = self.output.weight.dtype
        p = self.normalise(points_mm.reshape(-1, 3).to(dtype))
        h0 = self.encoding(p)
        if self.features is not None:
            extra = self.features(points_mm.reshape(-1, 3)).to(dtype)
            h0 = torch.cat([h0, extra], dim=-1)
        if self.config.latent_dim:
            code = self.latent if latent is None else latent
            h0 = torch.cat([h0, code.to(dtype).expand(h0.shape[0], -1)], dim=-1)
        h = h0
        for k, layer in enumerate(self.layers):
            if k == self.skip_layer:
                h = torch.cat([h, h0], dim=-1)
            h = torch.relu(layer(h))
        return self.output(h).reshape(*batch, self.output.out_features)
