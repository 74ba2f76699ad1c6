"""Products with a block of rows of a cached CSR matrix, without copying the matrix.

A subset of a projector's views samples with some rows of a chunk's sampling matrix ``A``: those
rows are a slice of the CSR parts (columns and values are views; only the row pointers are
shifted to start at 0). ``Aᵀ`` of such a block is not a slice of the cached transpose (its
entries are spread over all rows of ``Aᵀ``), so the block's ``Aᵀ x`` is a scatter-add over its
entries instead. ``RowBlockApply`` wraps both for autograd, each being the other's gradient.
"""

from __future__ import annotations

import warnings

import torch

from spectproj.sampling import CsrParts

#: Bound on the ``entries × columns`` gathered at once by the transposed product.
SCATTER_ELEMENTS = 2**22


def row_block(
    parts: CsrParts, first_row: int, stop_row: int, n_cols: int
) -> tuple[CsrParts, tuple[int, int]]:
    """Rows ``first_row:stop_row`` of the CSR matrix ``parts``: their parts and shape.

    Columns and values are views of ``parts``'; the row pointers (``rows + 1`` entries) are
    shifted to start at 0.
    """
    crow, col, val = parts
    first, last = int(crow[first_row]), int(crow[stop_row])
    block = (crow[first_row : stop_row + 1] - first, col[first:last], val[first:last])
    return block, (stop_row - first_row, n_cols)


def csr_rows_apply(
    x: torch.Tensor, parts: CsrParts, shape: tuple[int, int], transpose: bool
) -> torch.Tensor:
    """``A @ x`` (``x`` ``[shape[1], N]``) or ``Aᵀ @ x`` (``x`` ``[shape[0], N]``) for the CSR
    matrix ``A`` of ``shape`` given by ``parts``; the result is ``[shape[0], N]`` or
    ``[shape[1], N]``."""
    crow, col, val = parts
    if not transpose:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sparse CSR is flagged as beta
            a = torch.sparse_csr_tensor(
                crow, col, val, size=shape, dtype=x.dtype, device=x.device, check_invariants=False
            )
            return torch.sparse.mm(a, x)
    out = x.new_zeros(shape[1], x.shape[1])
    per_row = max(1, -(-col.numel() // max(1, shape[0])))  # mean entries per row, rounded up
    step = max(1, SCATTER_ELEMENTS // (per_row * max(1, x.shape[1])))
    for lo in range(0, shape[0], step):
        hi = min(shape[0], lo + step)
        first, last = int(crow[lo]), int(crow[hi])
        rows = torch.repeat_interleave(
            torch.arange(lo, hi, device=x.device), crow[lo + 1 : hi + 1] - crow[lo:hi],
            output_size=last - first,
        )  # fmt: skip
        out.index_add_(0, col[first:last], x[rows] * val[first:last].unsqueeze(1))
    return out


class RowBlockApply(torch.autograd.Function):
    """``A @ x`` (``transpose=False``) or ``Aᵀ @ x`` by ``csr_rows_apply``; the gradient applies
    the other one.

    Call as ``RowBlockApply.apply(x, parts_of_A, shape_of_A, transpose)``.
    """

    @staticmethod
    def forward(ctx, x, parts, shape, transpose):
        ctx.parts, ctx.shape, ctx.transpose = parts, shape, transpose
        return csr_rows_apply(x, parts, shape, transpose)

    @staticmethod
    def backward(ctx, grad):
        return RowBlockApply.apply(grad, ctx.parts, ctx.shape, not ctx.transpose), None, None, None
