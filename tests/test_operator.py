"""The projector as a linear operator: the protocol, view subsets that share the cache, matrices."""

from __future__ import annotations

import pytest
import torch

from spectproj import (
    CollimatorResponse,
    ImageGrid,
    LinearOperator,
    MatrixOperator,
    ParallelGeometry,
    ProjectorSubset,
    SPECTProjector,
    ViewSubset,
    subset_operator,
)
from spectproj.lattice import view_lattice

from .helpers import random_volume

SHAPE = (4, 6, 5)
SPACING = (2.0, 2.5, 2.5)
ANGLES = (0.0, 20.0, 45.0, 90.0, 110.0, 135.0, 180.0, 200.0, 250.0, 270.0, 300.0, 333.0)
GROUPS = [list(range(m, len(ANGLES), 3)) for m in range(3)]  # interleaved, as OSEM's subsets
COL = CollimatorResponse(sigma0_mm=1.0, slope=0.05)


def _geometry(name: str) -> ParallelGeometry:
    if name == "blur":
        return ParallelGeometry(ImageGrid(SHAPE, SPACING), ANGLES, radius_mm=30.0)
    if name == "offset_blur":  # per-view depth combs: per-view blur matrices
        grid = ImageGrid(SHAPE, SPACING, offset_mm=(1.0, -3.3, 2.1))
        return ParallelGeometry(grid, ANGLES, radius_mm=30.0)
    return ParallelGeometry(  # "rebinned": detector pixels differ from the lattice
        ImageGrid(SHAPE, SPACING), ANGLES, detector_shape=(3, 7), pixel_size_mm=(2.7, 2.1)
    )


def _projector(
    name: str, view_groups=None, dtype=torch.float64, views_per_chunk: int = 3
) -> SPECTProjector:
    geom = _geometry(name)
    mu = random_volume(SHAPE, seed=1) * 0.05
    col = None if name == "rebinned" else COL
    # small chunks (3 oblique views each), so subsets hit whole chunks and parts of chunks
    s, r = view_lattice(geom, 1).shape
    size = views_per_chunk * SHAPE[0] * s * r
    return SPECTProjector(
        geom, mu, col, dtype=dtype, max_chunk_elements=size, view_groups=view_groups
    )


def _projections(op, n_views: int, seed: int) -> torch.Tensor:
    _, rows, bins = op.output_shape
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n_views, rows, bins), generator=gen, dtype=torch.float64)


SELECTIONS = [[0, 3, 6, 9], [7, 2, 5], [4], [1, 2, 4, 5, 8, 10, 11], list(range(12))]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("name", ["blur", "offset_blur", "rebinned"])
def test_subset_is_the_rows_of_the_full_operator(name, grouped):
    op = _projector(name, GROUPS if grouped else None)
    assert len(op.oblique_chunks) > 2
    x = torch.stack([random_volume(SHAPE, seed=s) for s in (2, 3)])
    full = op(x)
    for views in SELECTIONS:
        sub = op.subset(views)
        torch.testing.assert_close(sub.forward(x), full[:, views], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sub(x[0]), full[0, views], rtol=1e-12, atol=1e-12)
        y = _projections(op, len(views), seed=len(views))
        placed = torch.zeros(op.output_shape, dtype=torch.float64)
        placed[views] = y
        torch.testing.assert_close(sub.adjoint(y), op.adjoint(placed), rtol=1e-12, atol=1e-12)


def test_view_groups_do_not_change_the_projections():
    plain, grouped = _projector("offset_blur"), _projector("offset_blur", GROUPS)
    assert plain.oblique_chunks != grouped.oblique_chunks
    x, y = random_volume(SHAPE, seed=4), _projections(plain, len(ANGLES), seed=5)
    torch.testing.assert_close(grouped(x), plain(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grouped.adjoint(y), plain.adjoint(y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("views_per_chunk", [3, 1])
@pytest.mark.parametrize("views", [GROUPS[1], [0, 3, 6, 9, 1]])
def test_subset_shares_the_parent_cache(views, views_per_chunk):
    op = _projector("offset_blur", GROUPS, views_per_chunk=views_per_chunk)
    x = random_volume(SHAPE, seed=6)
    op.adjoint(op(x))  # fills the blur cache: one entry per aligned view and per chunk here
    assert len(op._blur_cache) == len(op.aligned_views) + len(op.oblique_chunks)
    before = {name: t.data_ptr() for name, t in op.cached_tensors().items()}
    storages = {t.untyped_storage().data_ptr() for t in op.cached_tensors().values()}
    sub = op.subset(views)
    sub.adjoint(sub(x))
    after = {name: t.data_ptr() for name, t in op.cached_tensors().items()}
    assert after == before  # nothing computed, added or replaced in the parent
    used = sub.cached_tensors()
    assert any("weights" in name for name in used) and any("blur" in name for name in used)
    for name, t in used.items():
        assert t.untyped_storage().data_ptr() in storages, name
    if views == GROUPS[1]:  # a group of view_groups is made of whole chunks: the same tensors
        for name, t in used.items():
            if name.startswith("_obl") and "weights" in name:
                assert t.data_ptr() == before[name.split("[")[0]], name


def test_subset_autograd_and_dot_product():
    op = _projector("blur")
    views = [0, 2, 5, 9, 10]  # oblique runs inside chunks, and an aligned view
    sub = op.subset(views)
    x = random_volume(SHAPE, seed=7).requires_grad_(True)
    y = _projections(op, len(views), seed=8)
    (vjp,) = torch.autograd.grad(sub(x), x, y)
    torch.testing.assert_close(vjp, sub.adjoint(y), rtol=1e-12, atol=1e-12)
    lhs = torch.dot(sub(x).detach().reshape(-1), y.reshape(-1))
    rhs = torch.dot(x.detach().reshape(-1), sub.adjoint(y).reshape(-1))
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-13) and lhs.item() > 0
    y_var = y.clone().requires_grad_(True)
    (back,) = torch.autograd.grad(sub.adjoint(y_var), y_var, x.detach())
    torch.testing.assert_close(back, sub(x.detach()), rtol=1e-12, atol=1e-12)


def test_subset_of_subset_and_to():
    op = _projector("blur", dtype=torch.float32)
    sub = op.subset([1, 4, 7, 10]).subset([3, 0])
    assert sub.views == (10, 1) and sub.output_shape == (2, *op.output_shape[1:])
    op.to(torch.float64)  # the subset follows its parent
    assert sub.dtype == torch.float64
    x = random_volume(SHAPE, seed=9)
    torch.testing.assert_close(sub(x), op(x)[[10, 1]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("views", "error", "match"),
    [
        ([], ValueError, "at least one view"),
        ([0, 12], ValueError, r"within \[0, 12\), got 0..12"),
        ([-1], ValueError, "within"),
        ([2, 2], ValueError, "distinct"),
        ([1.0], TypeError, "integers"),
        ([True], TypeError, "integers"),
        (3, TypeError, "sequence of view indices"),
        (torch.tensor([0.5]), TypeError, "1D integer tensor"),
    ],
)
def test_bad_views(views, error, match):
    op = _projector("rebinned")
    with pytest.raises(error, match=match):
        op.subset(views)


@pytest.mark.parametrize(
    ("groups", "error", "match"),
    [
        ([[0, 1], [2]], ValueError, "each view 0..11 exactly once"),
        ([list(range(12)), [0]], ValueError, "exactly once"),
        ("abc", TypeError, "view_groups must be a sequence"),
    ],
)
def test_bad_view_groups(groups, error, match):
    with pytest.raises(error, match=match):
        _projector("rebinned", groups)


def test_subset_input_errors():
    sub = _projector("rebinned").subset([0, 1])
    with pytest.raises(TypeError, match="volumes only"):
        sub(lambda p: p[..., 0])
    with pytest.raises(ValueError, match=r"\[V, rows, bins\] = \[2, 3, 7\]"):
        sub.adjoint(torch.zeros(3, 3, 7, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        sub(random_volume(SHAPE, dtype=torch.float32))


def _dense(op: SPECTProjector) -> torch.Tensor:
    n = SHAPE[0] * SHAPE[1] * SHAPE[2]
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *SHAPE)
    return op(eye).reshape(n, -1).t()  # [bins, voxels]


def test_matrix_operator_is_the_projector_as_a_matrix():
    op = _projector("blur")
    dense = MatrixOperator(_dense(op), SHAPE, op.output_shape)
    sparse = MatrixOperator(_dense(op).to_sparse(), SHAPE, op.output_shape)
    x = torch.stack([random_volume(SHAPE, seed=s) for s in (10, 11)])
    y = _projections(op, len(ANGLES), seed=12)
    for m in (dense, sparse):
        torch.testing.assert_close(m.forward(x), op(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m.adjoint(y), op.adjoint(y), rtol=1e-12, atol=1e-12)
    assert dense.forward(x[0]).shape == op.output_shape and dense.adjoint(y).shape == SHAPE
    generic = subset_operator(dense, [5, 0])
    assert isinstance(generic, ViewSubset)
    torch.testing.assert_close(generic(x), op(x)[:, [5, 0]], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        generic.adjoint(y[:2]), op.subset([5, 0]).adjoint(y[:2]), rtol=1e-12, atol=1e-12
    )
    assert isinstance(subset_operator(op, [5, 0]), ProjectorSubset)


def test_operators_satisfy_the_protocol():
    op = _projector("rebinned")
    m = MatrixOperator(torch.zeros(12 * 3 * 7, 120, dtype=torch.float64), SHAPE, (12, 3, 7))
    for candidate in (op, op.subset([1]), m, ViewSubset(m, (0, 2))):
        assert isinstance(candidate, LinearOperator)
        assert tuple(candidate.input_shape) == SHAPE and candidate.dtype == torch.float64
    assert op.output_shape == (12, 3, 7) and ViewSubset(m, (0, 2)).output_shape == (2, 3, 7)
    assert not isinstance(object(), LinearOperator)
    with pytest.raises(TypeError, match="operator must be a LinearOperator"):
        ViewSubset(object(), (0,))  # type: ignore[arg-type]  # the wrong type under test


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"matrix": [[1.0]]}, TypeError, "floating-point torch.Tensor, got list"),
        ({"matrix": torch.zeros(6, 4, dtype=torch.int64)}, TypeError, "int64"),
        ({"matrix": torch.zeros(5, 4)}, ValueError, r"= \[6, 4\], got \[5, 4\]"),
        ({"input_shape": (2, 0)}, ValueError, "input_shape must be a tuple of positive"),
        ({"output_shape": "ab"}, ValueError, "output_shape must be a tuple of positive"),
    ],
)
def test_bad_matrix_operator(kwargs, error, match):
    args = {"matrix": torch.zeros(6, 4), "input_shape": (2, 2), "output_shape": (1, 2, 3)}
    with pytest.raises(error, match=match):
        MatrixOperator(**{**args, **kwargs})


def test_matrix_operator_input_errors():
    m = MatrixOperator(torch.zeros(6, 4), (2, 2), (1, 2, 3))
    with pytest.raises(ValueError, match=r"x must have shape \[2, 2\]"):
        m.forward(torch.zeros(4))
    with pytest.raises(TypeError, match=r"dtype torch\.float32, got torch\.float64"):
        m.forward(torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"y must have shape \[1, 2, 3\]"):
        m.adjoint(torch.zeros(2, 3))
