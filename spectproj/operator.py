"""Linear operators ``A``: volumes ``[Z, Y, X]`` → projections ``[V, rows, bins]``, and back.

Reconstruction code (``recon.algorithms.mlem``) takes any object with the ``LinearOperator`` shape:
``SPECTProjector`` and its view subsets (``SPECTProjector.subset``), ``MatrixOperator`` (a plain
dense or sparse matrix, the reference twin of the tests), or your own. ``subset_operator`` gives
the operator of some views (the rows of ``A`` that belong to them): the operator's own ``subset``
when it has one (which shares its cache), else ``ViewSubset``, which selects rows of the full
projection.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class LinearOperator(Protocol):
    """A linear map from volumes to projections with its transpose.

    ``forward(x)``: ``x`` ``[Z, Y, X]`` (``input_shape``) or ``[B, Z, Y, X]`` → ``[V, rows, bins]``
    (``output_shape``) or ``[B, V, rows, bins]``. ``adjoint(y)``: the transpose, back to the
    volume's shape. Inputs must have the operator's ``dtype`` and ``device``.
    """

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def output_shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def adjoint(self, y: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class MatrixOperator:
    """A matrix ``M`` ``[prod(output_shape), prod(input_shape)]`` (dense, or sparse COO/CSR)
    seen as an operator between volumes ``input_shape`` and projections ``output_shape``.

    Both are C-ordered flattenings: entry ``M[i, j]`` maps voxel ``j`` of ``x.reshape(-1)`` to bin
    ``i`` of ``y.reshape(-1)``. Its dtype and device are the matrix's.
    """

    matrix: torch.Tensor
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        m = self.matrix
        if not isinstance(m, torch.Tensor) or not m.is_floating_point():
            raise TypeError(f"matrix must be a floating-point torch.Tensor, got {_describe(m)}")
        for name in ("input_shape", "output_shape"):
            shape = getattr(self, name)
            if (
                not isinstance(shape, (tuple, list))
                or not shape
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape)
            ):
                raise ValueError(f"{name} must be a tuple of positive integers, got {shape!r}")
            object.__setattr__(self, name, tuple(shape))
        expected = [math.prod(self.output_shape), math.prod(self.input_shape)]
        if m.dim() != 2 or list(m.shape) != expected:
            raise ValueError(
                f"matrix must have shape [prod(output_shape), prod(input_shape)] = {expected}, "
                f"got {list(m.shape)}"
            )

    @property
    def dtype(self) -> torch.dtype:
        """The matrix's dtype."""
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        """The matrix's device."""
        return self.matrix.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``M x``: ``[B?, *input_shape] → [B?, *output_shape]``."""
        cols, batch = _columns(x, self.input_shape, "x", self.dtype, self.device)
        return (self.matrix @ cols).t().reshape(*batch, *self.output_shape)

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Mᵀ y``: ``[B?, *output_shape] → [B?, *input_shape]``."""
        cols, batch = _columns(y, self.output_shape, "y", self.dtype, self.device)
        return (self.matrix.t() @ cols).t().reshape(*batch, *self.input_shape)


@dataclass(frozen=True, eq=False)
class ViewSubset:
    """The views ``views`` of any ``LinearOperator`` (rows of ``A``, first output axis).

    ``forward(x) = operator.forward(x)[..., views, :, :]`` (``[B?, len(views), rows, bins]``,
    in the order given); ``adjoint(y)`` places ``y`` at
    ``views`` in a zero projection and back-projects it with the whole operator. The generic
    fallback of ``subset_operator``: it costs a full projection per call, where an operator's own
    ``subset`` (e.g. ``SPECTProjector.subset``) projects only the views it needs.
    """

    operator: LinearOperator
    views: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.operator, LinearOperator):
            raise TypeError(
                "operator must be a LinearOperator (input_shape, output_shape, dtype, device, "
                f"forward, adjoint), got {type(self.operator).__name__}"
            )
        n_views = self.operator.output_shape[0]
        object.__setattr__(self, "views", check_views(self.views, n_views))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The operator's."""
        return tuple(self.operator.input_shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """``(len(views), *operator.output_shape[1:])``."""
        return (len(self.views), *self.operator.output_shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        """The operator's."""
        return self.operator.dtype

    @property
    def device(self) -> torch.device:
        """The operator's."""
        return self.operator.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The selected views of ``operator.forward(x)``."""
        y = self.operator.forward(x)
        axis = y.dim() - len(self.operator.output_shape)  # the views' axis (after any batch)
        return y.index_select(axis, self._index(y.device))

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``operator.adjoint`` of ``y`` ``[B?, len(views), ...]`` placed at ``views``."""
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        n_out = len(self.output_shape)
        if y.dim() not in (n_out, n_out + 1) or tuple(y.shape[-n_out:]) != self.output_shape:
            raise ValueError(
                f"y must have shape {list(self.output_shape)} or [B, *that], got {list(y.shape)}"
            )
        full = y.new_zeros(*y.shape[:-n_out], *self.operator.output_shape)
        full.index_copy_(y.dim() - n_out, self._index(y.device), y)
        return self.operator.adjoint(full)

    def _index(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.views, dtype=torch.int64, device=device)


def subset_operator(operator: LinearOperator, views: Sequence[int]) -> LinearOperator:
    """The operator of ``views`` (rows of ``A``): ``operator.subset(views)`` if it has one,
    else ``ViewSubset(operator, views)``."""
    subset = getattr(operator, "subset", None)
    if callable(subset):
        return subset(views)
    return ViewSubset(operator, tuple(views))


def check_views(views: object, n_views: int) -> tuple[int, ...]:
    """``views`` as a tuple of distinct view indices in ``[0, n_views)`` (at least one)."""
    if isinstance(views, torch.Tensor):
        if views.dim() != 1 or views.dtype not in (torch.int32, torch.int64):
            raise TypeError(
                f"views must be a 1D integer tensor, got {views.dtype} {list(views.shape)}"
            )
        views = views.tolist()
    if isinstance(views, (str, bytes)) or not isinstance(views, Sequence):
        raise TypeError(f"views must be a sequence of view indices, got {type(views).__name__}")
    out = tuple(views)
    bad = [v for v in out if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if bad:
        raise TypeError(f"views must be integers, got {bad[0]!r}")
    out = tuple(int(v) for v in out)
    if not out:
        raise ValueError("views must name at least one view, got none")
    if min(out) < 0 or max(out) >= n_views:
        raise ValueError(f"views must be within [0, {n_views}), got {min(out)}..{max(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"views must be distinct, got {list(out)}")
    return out


def _columns(
    t: object, shape: tuple[int, ...], name: str, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``t`` ``[B?, *shape]`` as columns ``[prod(shape), B]`` and its batch shape."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in (len(shape), len(shape) + 1) or tuple(t.shape[-len(shape) :]) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} or [B, *that], got {list(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have the operator's dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on the operator's device {device}, got {t.device}")
    batch = tuple(t.shape[: t.dim() - len(shape)])
    return t.reshape(-1, math.prod(shape)).t(), batch


def _describe(obj: object) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a {obj.dtype} tensor"
    return type(obj).__name__


__all__ = ["LinearOperator", "MatrixOperator", "ViewSubset", "subset_operator"]
