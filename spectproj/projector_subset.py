"""A view subset of a ``SPECTProjector``: the rows of ``A`` of some views, sharing its cache.

OSEM needs one operator per subset of views. Building a projector per subset would compute and
hold the attenuation weights (the projector's largest cache) once more; a ``ProjectorSubset``
instead applies slices of its parent's cached tensors, through the parent's own per-view code
(``SPECTProjector._forward_views`` / ``_adjoint_views``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from spectproj._validate import check_volume
from spectproj.operator import check_views

if TYPE_CHECKING:
    from spectproj.projector import SPECTProjector


@dataclass(frozen=True, eq=False)
class ProjectorSubset:
    """The views ``views`` of a ``SPECTProjector``: the rows of ``A`` that belong to them.

    Made by ``SPECTProjector.subset``. It holds no tensor of its own: the attenuation weights,
    sampling, rebinning and blur matrices it applies are the parent's (slices of them, listed by
    ``cached_tensors``), so making it computes and copies nothing, and it follows ``parent.to()``.

    ``forward(x)`` (``x`` ``[B?, Z, Y, X]``) equals ``parent.forward(x)[..., views, :, :]``,
    ``[B?, len(views), rows, bins]``; ``adjoint(y)`` equals the parent's back-projection of ``y``
    placed at ``views`` (zeros elsewhere). Views are projected in the order given. Volumes only:
    project fields with the parent.
    """

    parent: SPECTProjector
    views: tuple[int, ...]

    def __post_init__(self) -> None:
        from spectproj.projector import SPECTProjector  # here: projector.py imports this module

        if not isinstance(self.parent, SPECTProjector):
            raise TypeError(f"parent must be a SPECTProjector, got {type(self.parent).__name__}")
        object.__setattr__(self, "views", check_views(self.views, self.parent.geometry.n_views))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``, the parent's."""
        return self.parent.input_shape

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(len(views), rows, bins)``."""
        _, rows, bins = self.parent.output_shape
        return (len(self.views), rows, bins)

    @property
    def dtype(self) -> torch.dtype:
        """The parent's dtype (inputs must match)."""
        return self.parent.dtype

    @property
    def device(self) -> torch.device:
        """The parent's device (inputs must match)."""
        return self.parent.device

    def forward(self, activity: torch.Tensor, *, reference: bool = False) -> torch.Tensor:
        """Project a volume ``[B?, Z, Y, X]`` to ``[B?, len(views), rows, bins]`` (activity·mm)."""
        if not isinstance(activity, torch.Tensor):
            raise TypeError(
                f"activity must be a torch.Tensor (a subset projects volumes only), "
                f"got {type(activity).__name__}"
            )
        a = check_volume("activity", activity, self.parent.geometry.grid.shape)
        self.parent._check_tensor(a, "activity")
        proj = self.parent._forward_views(a, self.views, reference)
        return proj if activity.dim() == 4 else proj[0]

    __call__ = forward

    def adjoint(self, projections: torch.Tensor, *, reference: bool = False) -> torch.Tensor:
        """Back-project ``[B?, len(views), rows, bins]`` to ``[B?, Z, Y, X]`` (transpose)."""
        p = self.parent._check_projections(projections, len(self.views))
        volume = self.parent._adjoint_views(p, self.views, reference)
        return volume if projections.dim() == 4 else volume[0]

    def subset(self, views: Sequence[int]) -> ProjectorSubset:
        """The subset of this subset's views at positions ``views`` (still sharing the parent)."""
        positions = check_views(views, len(self.views))
        return ProjectorSubset(self.parent, tuple(self.views[k] for k in positions))

    def cached_tensors(self) -> dict[str, torch.Tensor]:
        """The parent's cached tensors this subset applies, by name: views of the parent's."""
        return self.parent._view_tensors(self.views)


__all__ = ["ProjectorSubset"]
