"""`recon.nerf.encodings`: the vectorised hash grid against a straightforward reference (same
corner rows, same values and gradients), its chunking, shapes and devices; the frequency
encoding; and the opt-in CPU bfloat16 autocast of `fit` (``TrainConfig.cpu_bf16``)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from recon.data.phantoms.torso import default_grid, make_torso
from recon.data.simulate import simulate_acquisition
from recon.nerf import encodings
from recon.nerf.config import TrainConfig
from recon.nerf.encodings import FrequencyEncoding, HashGridEncoding
from recon.nerf.export import to_result
from recon.nerf.field import EmissionField, FieldConfig
from recon.nerf.training import fit
from spectproj import ParallelGeometry

_PRIMES = (1, 2654435761, 805459861)


def reference_hashgrid(
    enc: HashGridEncoding, p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The straightforward evaluation (one level at a time, int64 [N, 8, 3] corners).

    Returns the features ``[..., L·F]``, the table rows ``[N, L, 8]`` and the weights
    ``[N, L, 8]``. This is the implementation the vectorised one replaced.
    """
    batch = p.shape[:-1]
    unit = ((p.reshape(-1, 3).float() + 1.0) * 0.5).clamp(0.0, 1.0)
    corners = torch.tensor([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)])
    outs, rows, weights = [], [], []
    for res, size, start in zip(enc.resolutions, enc.sizes, enc.offsets, strict=False):
        pos = unit * res
        base = torch.floor(pos).clamp_max(res - 1).long()
        frac = pos - base
        idx = base[:, None, :] + corners[None]  # [N, 8, 3]
        if (res + 1) ** 3 <= size:
            flat = idx[..., 0] + (res + 1) * (idx[..., 1] + (res + 1) * idx[..., 2])
        else:
            flat = (idx[..., 0] * _PRIMES[0]) ^ (idx[..., 1] * _PRIMES[1])
            flat = (flat ^ (idx[..., 2] * _PRIMES[2])) % size
        feats = enc.table[start + flat]  # [N, 8, F]
        w = torch.where(corners[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)
        outs.append((feats * w[..., None]).sum(1))
        rows.append(start + flat)
        weights.append(w)
    out = torch.cat(outs, dim=-1).reshape(*batch, -1).to(p.dtype)
    return out, torch.stack(rows, 1), torch.stack(weights, 1)


#: (levels, features, log2_size, base, finest): dense only, mixed, hashed only, odd features,
#: one level, coordinates past 2^12 (int64 products near 2^43).
CONFIGS = [
    (4, 2, 12, 2, 12),
    (6, 2, 15, 8, 64),
    (8, 3, 10, 16, 300),
    (3, 1, 6, 1, 40),
    (1, 4, 8, 5, 5),
    (2, 2, 20, 2048, 4096),
]


def _encoding(config: tuple[int, int, int, int, int], seed: int = 0) -> HashGridEncoding:
    torch.manual_seed(seed)
    enc = HashGridEncoding(*config)
    with torch.no_grad():
        enc.table.uniform_(-1.0, 1.0)  # large values, so differences show
    return enc


def _points(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, 3, generator=g) * 2.4 - 1.2  # some outside [-1, 1]³ (clamped)
    special = torch.tensor(
        [
            [-1.0, -1.0, -1.0],
            [1.0, 1.0, 1.0],
            [0.0, 0.0, 0.0],
            [1.0, -1.0, 0.5],
            [0.5, 0.25, -0.125],
        ]
    )
    return torch.cat([special, p])


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_corner_rows_and_weights_match_the_reference(config) -> None:
    enc = _encoding(config)
    p = _points(3000)
    _, rows_ref, w_ref = reference_hashgrid(enc, p)
    rows, w = enc.corner_indices(p)
    assert rows.dtype == torch.int64 and rows.shape == rows_ref.shape
    assert torch.equal(rows, rows_ref)  # the same table rows, exactly
    assert torch.equal(w, w_ref)  # the same products, in the same order
    assert int(rows.min()) >= 0 and int(rows.max()) < enc.table.shape[0]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_values_and_gradients_match_the_reference(config) -> None:
    enc = _encoding(config)
    p = _points(5000)
    out = enc(p)
    ref, _, _ = reference_hashgrid(enc, p)
    assert out.shape == (p.shape[0], enc.out_features) and out.dtype == torch.float32
    # Equal up to the order of the 8-term sums (measured: ≤ 2.4e-7 for values of order 1).
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    g = torch.randn_like(ref)
    (grad,) = torch.autograd.grad(out, enc.table, g)
    (grad_ref,) = torch.autograd.grad(ref, enc.table, g)
    scale = float(grad_ref.abs().max())
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=1e-5 * scale)


def test_point_gradients_match_the_reference() -> None:
    """Points that need a gradient take the autograd path: same values, same gradients."""
    enc = _encoding((6, 2, 15, 8, 64))
    p = _points(2000)[5:].double().requires_grad_(True)  # away from the clamped corners
    out = enc(p)
    assert out.dtype == torch.float64
    q = p.detach().clone().requires_grad_(True)
    ref, _, _ = reference_hashgrid(enc, q)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    g = torch.randn_like(ref)
    gp, gt = torch.autograd.grad(out, (p, enc.table), g)
    gq, gt_ref = torch.autograd.grad(ref, (q, enc.table), g)
    torch.testing.assert_close(gp, gq, rtol=1e-5, atol=1e-5 * float(gq.abs().max()))
    torch.testing.assert_close(gt, gt_ref, rtol=0, atol=1e-5 * float(gt_ref.abs().max()))


def test_chunks_do_not_change_the_result(monkeypatch) -> None:
    enc = _encoding((6, 2, 15, 8, 64))
    p = _points(3000)
    g = torch.randn(p.shape[0], enc.out_features)
    out = enc(p)
    (grad,) = torch.autograd.grad(out, enc.table, g)
    monkeypatch.setattr(encodings, "_CPU_CHUNK_ENTRIES", 8 * enc.levels * 7)  # 7 points
    out7 = enc(p)
    (grad7,) = torch.autograd.grad(out7, enc.table, g)
    torch.testing.assert_close(out7, out, rtol=0, atol=1e-6)  # up to the order of the sums
    torch.testing.assert_close(grad7, grad, rtol=0, atol=1e-5 * float(grad.abs().max()))


def test_gradients_are_reproducible() -> None:
    enc = _encoding((8, 3, 10, 16, 300))
    p = _points(20000)
    g = torch.randn(p.shape[0], enc.out_features)
    first = torch.autograd.grad(enc(p), enc.table, g)[0]
    second = torch.autograd.grad(enc(p), enc.table, g)[0]
    assert torch.equal(first, second)


def test_shapes_dtypes_and_modes() -> None:
    enc = _encoding((4, 2, 12, 2, 12))
    p = _points(24)[:24].reshape(2, 3, 4, 3)
    out = enc(p)
    assert out.shape == (2, 3, 4, enc.out_features)
    torch.testing.assert_close(out.reshape(-1, enc.out_features), enc(p.reshape(-1, 3)))
    assert enc(p.double()).dtype == torch.float64
    assert enc(torch.zeros(0, 3)).shape == (0, enc.out_features)
    with torch.no_grad():
        assert not enc(p).requires_grad
    assert enc(p).requires_grad
    # Only the table is saved: checkpoints of the previous implementation still load.
    assert list(enc.state_dict()) == ["table"]
    fresh = HashGridEncoding(4, 2, 12, 2, 12)
    fresh.load_state_dict(enc.state_dict())
    assert torch.equal(fresh(p), out)


def test_hash_table_layout() -> None:
    enc = HashGridEncoding(levels=6, features=2, log2_size=15, base_resolution=8,
                           finest_resolution=64)  # fmt: skip
    assert enc.resolutions == [8, 12, 18, 27, 42, 63]  # floor(8 · (64/8)^(k/5))
    assert enc.n_dense == 4 and enc.hash_start == 9**3 + 13**3 + 19**3 + 28**3
    assert enc.sizes[4:] == [2**15] * 2
    assert enc.table.shape == (enc.offsets[-1], 2)
    with pytest.raises(ValueError, match="log2_size"):
        HashGridEncoding(log2_size=3)
    with pytest.raises(ValueError, match="base_resolution"):
        HashGridEncoding(base_resolution=8, finest_resolution=4)


def test_emission_field_with_hash_grid_trains_its_table() -> None:
    grid = default_grid(8)
    config = FieldConfig(
        encoding="hashgrid", latent_dim=4, hash_levels=3, hash_log2_size=8,
        hash_base_resolution=4, hash_finest_resolution=16, hash_mlp_width=16,
    )  # fmt: skip
    torch.manual_seed(0)
    field = EmissionField(grid, config)
    points = (torch.rand(500, 3) - 0.5) * 100.0
    field(points).sum().backward()
    table = field.encoding.table  # type: ignore[union-attr]
    assert table.grad is not None and bool(table.grad.abs().sum() > 0)


def test_frequency_encoding() -> None:
    enc = FrequencyEncoding(3)
    p = torch.tensor([[0.5, -0.25, 1.0]])
    out = enc(p)
    assert out.shape == (1, enc.out_features) == (1, 21)
    bands = math.pi * 2.0 ** torch.arange(3.0)
    scaled = (p[:, None, :] * bands[:, None]).flatten(1)
    torch.testing.assert_close(out, torch.cat([p, scaled.sin(), scaled.cos()], 1))
    with pytest.raises(ValueError):
        FrequencyEncoding(-1)


# -- the CPU bfloat16 option ------------------------------------------------------------------

TINY = TrainConfig(
    steps=40, rays_per_step=256, n_samples=16, lr=1e-2, val_every=20, log_every=10,
    preview_every=0, checkpoint_every=0,
    field=FieldConfig(encoding="hashgrid", latent_dim=4, hash_levels=4, hash_log2_size=10,
                      hash_base_resolution=4, hash_finest_resolution=32, hash_mlp_width=16),
)  # fmt: skip


@pytest.fixture(scope="module")
def study():
    grid = default_grid(16)
    phantom = make_torso(grid, supersample=2)
    return simulate_acquisition(phantom, ParallelGeometry.ap_pa(grid), total_counts=2e5, seed=3)


@pytest.fixture
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cpu_bf16_is_off_by_default_and_validated() -> None:
    assert TrainConfig().cpu_bf16 is False
    assert TrainConfig.cpu_default().cpu_bf16 is False
    assert TrainConfig.gpu_default().cpu_bf16 is False
    assert TrainConfig.from_dict({"cpu_bf16": True}).cpu_bf16 is True
    with pytest.raises(ValueError, match="cpu_bf16"):
        TrainConfig(cpu_bf16=1)  # type: ignore[arg-type]


@pytest.mark.usefixtures("_one_thread")
def test_cpu_bf16_trains_in_bfloat16_and_is_recorded(study) -> None:
    seen: set[torch.dtype] = set()

    def run(config: TrainConfig):
        torch.manual_seed(0)
        field = EmissionField(study.grid, config.field)
        hook = field.layers[0].register_forward_hook(lambda m, i, o: seen.add(o.dtype))
        result = fit(field, study, config)
        hook.remove()
        return result

    fp32 = run(TINY)
    assert seen == {torch.float32} and fp32.amp == "off"
    seen.clear()
    bf16 = run(dataclasses.replace(TINY, cpu_bf16=True))
    assert torch.bfloat16 in seen  # the MLP ran under bfloat16 autocast
    assert bf16.amp == "bf16"
    assert all(math.isfinite(v) for v in bf16.losses)
    # It trains: the loss falls by as much as in float32 (measured: both ≈ 10× from step 1).
    first, last = bf16.losses[0], float(np.mean(bf16.losses[-5:]))
    assert last < first / 3, (first, last)
    assert abs(math.log(last / float(np.mean(fp32.losses[-5:])))) < math.log(2.0)
    # Parameters stay float32; the result records the option and the precision used.
    assert all(p.dtype == torch.float32 for p in bf16.representation.parameters())
    result = to_result(bf16, study)
    assert result.parameters["amp"] == "bf16"
    assert result.parameters["config"]["cpu_bf16"] is True
    assert to_result(fp32, study).parameters["amp"] == "off"


@pytest.mark.usefixtures("_one_thread")
def test_cpu_bf16_is_not_used_with_lbfgs(study) -> None:
    from recon.nerf.representations import VoxelActivity

    config = dataclasses.replace(TINY, steps=2, optimizer="lbfgs", cpu_bf16=True, lr=1.0)
    result = fit(VoxelActivity(study.grid), study, config)
    assert result.amp == "off"
