"""Tests for ``mfm.losses.mmd``.

The reference is the original MFM ("seed") implementation, written out below with the prior
sample passed in explicitly so both sides see the same sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mfm.losses.mmd import DEFAULT_SCALES, kernel_matrix, mmd, squared_distances

# --------------------------------------------------------------------------------------------
# Reference implementations
# --------------------------------------------------------------------------------------------


def seed_compute_kernel(x: Tensor, y: Tensor) -> Tensor:
    """The seed's kernel: ``(n, d), (m, d) -> (n, m)`` through an ``(n, m, d)`` tensor."""
    x_size = x.size(0)
    y_size = y.size(0)
    dim = x.size(1)
    x = x.unsqueeze(1)
    y = y.unsqueeze(0)
    tiled_x = x.expand(x_size, y_size, dim)
    tiled_y = y.expand(x_size, y_size, dim)
    kernel_input = (tiled_x - tiled_y).pow(2).mean(2) / float(dim)
    return torch.exp(-kernel_input)


def seed_loss_mmd(zy: Tensor, zy_real_gauss: Tensor) -> Tensor:
    """The seed's ``loss_MMD`` with the prior sample ``(m, d)`` given instead of drawn."""
    zy_real_kernel = seed_compute_kernel(zy_real_gauss, zy_real_gauss)
    zy_fake_kernel = seed_compute_kernel(zy, zy)
    zy_kernel = seed_compute_kernel(zy_real_gauss, zy)
    return zy_real_kernel.mean() + zy_fake_kernel.mean() - 2.0 * zy_kernel.mean()


def brute_sqdist(x: Tensor, y: Tensor) -> Tensor:
    """Squared distances by explicit differences, ``(n, d), (m, d) -> (n, m)``."""
    return (x[:, None, :] - y[None, :, :]).pow(2).sum(dim=-1)


def brute_kernel(x: Tensor, y: Tensor, kernel: str, scales: tuple[float, ...]) -> Tensor:
    """Direct multi-scale kernel: ``(n, d), (m, d) -> (n, m)``."""
    dist = brute_sqdist(x, y)
    d = x.shape[1]
    if kernel == "imq":
        return sum(2 * d * s / (2 * d * s + dist) for s in scales)  # type: ignore[return-value]
    if kernel == "rbf":
        return sum(torch.exp(-dist / (2 * d * s)) for s in scales)  # type: ignore[return-value]
    raise AssertionError(kernel)


def brute_mmd(
    z: Tensor, p: Tensor, kernel: str, scales: tuple[float, ...], unbiased: bool
) -> Tensor:
    """Direct MMD estimate with explicit loops over the definition."""

    def within(a: Tensor) -> Tensor:
        k = brute_kernel(a, a, kernel, scales)
        n = a.shape[0]
        if not unbiased:
            return k.mean()
        off = ~torch.eye(n, dtype=torch.bool)
        return k[off].sum() / (n * (n - 1))

    return within(p) + within(z) - 2.0 * brute_kernel(p, z, kernel, scales).mean()


def sample_z(n: int, d: int, dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor]:
    """``z ~ N(0.3, 1.2^2)`` and a prior sample ``N(0, I)``, both of shape ``(n, d)``."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, d, generator=g, dtype=torch.float64) * 1.2 + 0.3).to(dtype)
    p = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    return z, p


def grad_wrt_z(fn: Callable[[Tensor, Tensor], Tensor], z: Tensor, p: Tensor) -> Tensor:
    """Gradient of ``fn(z, p)`` with respect to ``z``: ``(n, d)``."""
    z = z.detach().clone().requires_grad_(True)
    fn(z, p).backward()
    assert z.grad is not None
    return z.grad


# --------------------------------------------------------------------------------------------
# Agreement with the seed
# --------------------------------------------------------------------------------------------

SHAPES = [(2, 1), (3, 7), (17, 5), (64, 16), (100, 33), (128, 64), (256, 128)]


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_seed_kernel_matches_reference_float64(n: int, d: int) -> None:
    z, p = sample_z(n, d, torch.float64, seed=n * 1000 + d)
    expected = seed_loss_mmd(z, p)
    got = mmd(z, p)
    assert got.shape == ()
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0.0)

    g_ref = grad_wrt_z(seed_loss_mmd, z, p)
    g_got = grad_wrt_z(lambda a, b: mmd(a, b), z, p)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-6, atol=1e-9 * g_ref.abs().max().item())


def test_seed_kernel_matrix_matches_reference() -> None:
    x, y = sample_z(40, 24, torch.float64, seed=1)
    y = y[:31]
    torch.testing.assert_close(kernel_matrix(x, y), seed_compute_kernel(x, y), rtol=1e-12, atol=0)
    torch.testing.assert_close(kernel_matrix(x, x), seed_compute_kernel(x, x), rtol=1e-12, atol=0)


def test_seed_kernel_prior_with_other_row_count() -> None:
    z, _ = sample_z(50, 12, torch.float64, seed=2)
    p = torch.randn(73, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(mmd(z, p), seed_loss_mmd(z, p), rtol=1e-6, atol=0.0)


# Measured float32 errors relative to the float64 value (z ~ N(0.3, 1.2), n = 64..1024,
# d = 16..128, 5 draws each):
#   * this module:       <= 6e-8  (<= 2.2e-7 for z ~ N(0, 1), where the MMD is ~1e-5..1e-3)
#   * the seed's code:   <= 1.2e-4 (up to 6.4e-3 for z ~ N(0, 1))
# The seed loses digits summing kernel values that are all ~1; mmd() sums k - 1 (expm1) in
# float64 instead.  So float32 mmd() is checked against the float64 value with rtol 2e-6 (about
# 10x the worst measured error), and against the float32 seed with rtol 1e-3, a bound on the
# seed's own error.  Gradients: both float32 implementations are within 4e-6 * max|grad| of
# the float64 gradient (measured up to n=512, d=128); checked with 3e-5 * max|grad|.
F32_VALUE_RTOL = 2e-6
F32_VS_SEED32_RTOL = 1e-3
F32_GRAD_ATOL_FRACTION = 3e-5


@pytest.mark.parametrize(("n", "d"), [(64, 16), (64, 128), (128, 64), (256, 32), (256, 128)])
def test_seed_kernel_matches_reference_float32(n: int, d: int) -> None:
    z32, p32 = sample_z(n, d, torch.float32, seed=7 * n + d)
    z64, p64 = z32.double(), p32.double()  # the same numbers, exactly
    exact = seed_loss_mmd(z64, p64)

    got = mmd(z32, p32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), exact, rtol=F32_VALUE_RTOL, atol=0.0)
    torch.testing.assert_close(got, seed_loss_mmd(z32, p32), rtol=F32_VS_SEED32_RTOL, atol=0.0)

    g_exact = grad_wrt_z(seed_loss_mmd, z64, p64)
    g_got = grad_wrt_z(lambda a, b: mmd(a, b), z32, p32)
    assert g_got.dtype == torch.float32
    atol = F32_GRAD_ATOL_FRACTION * g_exact.abs().max().item()
    torch.testing.assert_close(g_got.double(), g_exact, rtol=0.0, atol=atol)


@pytest.mark.parametrize("mean", [0.0, 0.3, 3.0])
@pytest.mark.parametrize(("n", "d"), [(1024, 16), (1024, 128)])
def test_float32_close_to_float64_at_large_n(n: int, d: int, mean: float) -> None:
    # The float64 value comes from mmd() itself, validated against the seed above; the seed
    # would need an n*n*d tensor here.
    g = torch.Generator().manual_seed(n + d)
    z = (torch.randn(n, d, generator=g) + mean).float()
    p = torch.randn(n, d, generator=g)
    exact = mmd(z.double(), p.double())
    torch.testing.assert_close(mmd(z, p).double(), exact, rtol=F32_VALUE_RTOL, atol=0.0)


# --------------------------------------------------------------------------------------------
# Memory: no n x n x d intermediate
# --------------------------------------------------------------------------------------------


class _MaxNumel(TorchDispatchMode):
    """Records the element count of every tensor an ATen op returns (views included)."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0
        self.n_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.n_ops += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def _max_numel(fn: Callable[[Tensor, Tensor], Tensor], n: int, d: int) -> tuple[int, int]:
    """Largest tensor (elements) created in the forward and in the backward of ``fn``."""
    z = torch.randn(n, d).requires_grad_(True)
    p = torch.randn(n, d)
    with _MaxNumel() as fwd:
        loss = fn(z, p)
    with _MaxNumel() as bwd:
        loss.backward()
    assert fwd.n_ops > 0 and bwd.n_ops > 0  # the mode really sees both passes
    assert z.grad is not None
    return fwd.max_numel, bwd.max_numel


def test_memory_probe_detects_the_seed() -> None:
    n, d = 32, 48
    fwd, bwd = _max_numel(seed_loss_mmd, n, d)
    assert fwd >= n * n * d
    assert bwd >= n * n * d


@pytest.mark.parametrize(
    ("kernel", "estimator"),
    [("seed", "biased"), ("seed", "unbiased"), ("imq", "biased"), ("rbf", "unbiased")],
)
def test_no_n_n_d_intermediate(kernel: str, estimator: str) -> None:
    n = 256

    def loss(z: Tensor, p: Tensor) -> Tensor:
        return mmd(z, p, kernel=kernel, estimator=estimator)  # type: ignore[arg-type]

    peaks = {}
    for d in (64, 512):
        fwd, bwd = _max_numel(loss, n, d)
        peak = max(fwd, bwd)
        # Bounded by the Gram matrix or the input, never their product.
        assert peak <= 2 * max(n * n, n * d), (d, peak)
        # n*n*d / peak = 64 at d=64 and 256 at d=512 (seed: 1).
        assert peak * 32 <= n * n * d, (d, peak)
        peaks[d] = peak
    # d grows 8x; an n*n*d intermediate would grow 8x too.  Here 65536 (n*n) -> 131072 (n*d).
    assert peaks[512] <= 2 * peaks[64]


def test_squared_distances_memory() -> None:
    x = torch.randn(100, 300, requires_grad=True)
    y = torch.randn(80, 300, requires_grad=True)
    with _MaxNumel() as rec:
        squared_distances(x, y).sum().backward()
    assert rec.max_numel <= max(100 * 80, 100 * 300)


# --------------------------------------------------------------------------------------------
# Hand-checked estimators
# --------------------------------------------------------------------------------------------

# n = m = 3, d = 1:  z = (0, 1, 3),  prior p = (0, 2, 4).
# Squared distances:
#   z-z off-diagonal pairs: (0,1) 1, (0,3) 9, (1,3) 4
#   p-p off-diagonal pairs: (0,2) 4, (0,4) 16, (2,4) 4
#   p-z (rows p = 0, 2, 4; columns z = 0, 1, 3):
#       [[0, 1, 9],
#        [4, 1, 1],
#        [16, 9, 1]]
HAND_Z = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
HAND_P = torch.tensor([[0.0], [2.0], [4.0]], dtype=torch.float64)


def test_unbiased_hand_check_imq() -> None:
    # imq with one scale s = 0.5 and d = 1: C = 2 * 1 * 0.5 = 1, k = 1 / (1 + D), so
    #   D = 0, 1, 4, 9, 16  ->  k = 1, 1/2, 1/5, 1/10, 1/17.
    # mean_{i != j} Kzz = (1/2 + 1/10 + 1/5) / 3 = (8/10) / 3 = 4/15  = 68/255
    # mean_{i != j} Kpp = (1/5 + 1/17 + 1/5) / 3 = (39/85) / 3 = 13/85 = 39/255
    # mean Kpz = (1 + 1/2 + 1/10 + 1/5 + 1/2 + 1/2 + 1/17 + 1/10 + 1/2) / 9
    #          = (3.4 + 1/17) / 9 = (294/85) / 9 = 98/255
    # unbiased MMD = 68/255 + 39/255 - 2 * 98/255 = -89/255 ~ -0.349  (it can be negative)
    got = mmd(HAND_Z, HAND_P, kernel="imq", estimator="unbiased", scales=[0.5])
    assert got.item() == pytest.approx(-89 / 255, rel=1e-12)
    # biased: the diagonals (k = 1) join the within-sample means:
    #   mean Kzz = (3 + 2 * 4/5) / 9 = 4.6 / 9,   mean Kpp = (3 + 2 * 39/85) / 9 = (333/85) / 9
    #   MMD = (4.6 + 333/85 - 2 * 294/85) / 9 = (391/85 + 333/85 - 588/85) / 9 = 136/765 = 8/45
    got_b = mmd(HAND_Z, HAND_P, kernel="imq", estimator="biased", scales=[0.5])
    assert got_b.item() == pytest.approx(8 / 45, rel=1e-12)


def test_unbiased_hand_check_seed_kernel() -> None:
    # seed kernel with d = 1: k = exp(-D / 1^2) = exp(-D).  Writing e_k = exp(-k):
    # mean_{i != j} Kzz = (e_1 + e_9 + e_4) / 3
    # mean_{i != j} Kpp = (e_4 + e_16 + e_4) / 3
    # mean Kpz = (1 + e_1 + e_9 + e_4 + e_1 + e_1 + e_16 + e_9 + e_1) / 9
    #          = (1 + 4 e_1 + e_4 + 2 e_9 + e_16) / 9
    #   = 0.128773 + 0.012210 - 2 * 0.276676 = -0.412368 (4 e_1 = 1.471518, e_4 = 0.018316,
    #     e_9 = 0.000123, e_16 = 1.1e-7)
    e = {k: math.exp(-k) for k in (1, 4, 9, 16)}
    kzz = (e[1] + e[9] + e[4]) / 3
    kpp = (2 * e[4] + e[16]) / 3
    kpz = (1 + 4 * e[1] + e[4] + 2 * e[9] + e[16]) / 9
    expected = kzz + kpp - 2 * kpz
    assert expected == pytest.approx(-0.412368, abs=1e-6)
    got = mmd(HAND_Z, HAND_P, estimator="unbiased")
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # The biased estimator is exactly the seed's formula.
    assert mmd(HAND_Z, HAND_P).item() == pytest.approx(seed_loss_mmd(HAND_Z, HAND_P).item())


# --------------------------------------------------------------------------------------------
# imq / rbf against brute force
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
@pytest.mark.parametrize("scales", [None, (0.3,), (1.0, 4.0)])
def test_multiscale_kernel_matrix_brute_force(
    kernel: str, scales: tuple[float, ...] | None
) -> None:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(30, 9, generator=g, dtype=torch.float64) * 2 + 1
    y = torch.randn(21, 9, generator=g, dtype=torch.float64)
    resolved = DEFAULT_SCALES if scales is None else scales
    got = kernel_matrix(x, y, kernel=kernel, scales=scales)  # type: ignore[arg-type]
    assert got.shape == (30, 21)
    torch.testing.assert_close(got, brute_kernel(x, y, kernel, resolved), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("scales", [None, [0.5, 2.0]])
def test_multiscale_mmd_brute_force(
    kernel: str, estimator: str, scales: list[float] | None
) -> None:
    g = torch.Generator().manual_seed(5)
    z = torch.randn(40, 6, generator=g, dtype=torch.float64) * 1.5 + 0.5
    p = torch.randn(27, 6, generator=g, dtype=torch.float64)
    resolved = DEFAULT_SCALES if scales is None else tuple(scales)
    expected = brute_mmd(z, p, kernel, resolved, unbiased=estimator == "unbiased")
    got = mmd(z, p, kernel=kernel, estimator=estimator, scales=scales)  # type: ignore[arg-type]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)


def test_default_scales() -> None:
    assert DEFAULT_SCALES == (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


# --------------------------------------------------------------------------------------------
# Statistical behaviour
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["seed", "imq", "rbf"])
def test_unbiased_near_zero_under_prior_and_positive_otherwise(kernel: str) -> None:
    # Over 20 seeds (n = 2000, d = 8) the null values had |mmd| <= 1.7e-3 (std ~6e-4 for the
    # 7-scale kernels, ~8e-5 for seed), while z ~ N(3, 1) gave >= 1.0 (seed), >= 3.8 (imq/rbf).
    g = torch.Generator().manual_seed(0)
    n, d = 2000, 8
    z_null = torch.randn(n, d, generator=g, dtype=torch.float64)
    z_alt = torch.randn(n, d, generator=g, dtype=torch.float64) + 3.0
    null = mmd(z_null, kernel=kernel, estimator="unbiased", generator=g).item()  # type: ignore[arg-type]
    alt = mmd(z_alt, kernel=kernel, estimator="unbiased", generator=g).item()  # type: ignore[arg-type]
    assert abs(null) < 5e-3
    assert alt > 0.5
    assert abs(null) < 0.01 * alt


def test_biased_estimate_is_non_negative() -> None:
    z, p = sample_z(50, 4, torch.float64, seed=9)
    for kernel in ("seed", "imq", "rbf"):
        assert mmd(z, p, kernel=kernel).item() >= 0.0  # type: ignore[arg-type]
        # identical samples: exactly zero
        assert mmd(p, p.clone(), kernel=kernel).item() == pytest.approx(0.0, abs=1e-12)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Prior sampling, dtype, autograd
# --------------------------------------------------------------------------------------------


def test_default_prior_uses_generator_and_matches_explicit_sample() -> None:
    z, _ = sample_z(20, 5, torch.float32, seed=4)
    a = mmd(z, generator=torch.Generator().manual_seed(123))
    b = mmd(z, generator=torch.Generator().manual_seed(123))
    p = torch.randn(20, 5, generator=torch.Generator().manual_seed(123))
    assert a.dtype == torch.float32
    assert a.item() == b.item()
    assert a.item() == mmd(z, p).item()
    c = mmd(z, generator=torch.Generator().manual_seed(124))
    assert c.item() != a.item()


def test_prior_sample_is_cast_to_z_dtype() -> None:
    z, p = sample_z(10, 3, torch.float64, seed=8)
    got = mmd(z, p.float())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, mmd(z, p.float().double()))


@pytest.mark.parametrize("kernel", ["seed", "imq", "rbf"])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_gradcheck(kernel: str, estimator: str) -> None:
    g = torch.Generator().manual_seed(21)
    z = (torch.randn(6, 3, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    p = torch.randn(5, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: mmd(t, p, kernel=kernel, estimator=estimator),  # type: ignore[arg-type]
        (z,),
    )


# --------------------------------------------------------------------------------------------
# squared_distances
# --------------------------------------------------------------------------------------------


def test_squared_distances_brute_force_and_diagonal() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(25, 10, generator=g, dtype=torch.float64) * 3 - 2
    y = torch.randn(12, 10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(squared_distances(x, y), brute_sqdist(x, y), rtol=1e-12, atol=1e-12)
    dxx = squared_distances(x, x)
    assert torch.all(dxx.diagonal() == 0)
    assert torch.all(dxx >= 0)
    torch.testing.assert_close(dxx, brute_sqdist(x, x), rtol=1e-12, atol=1e-12)


def test_squared_distances_far_from_origin_float32() -> None:
    # Centring keeps float32 accurate when the points sit far from the origin (offset 1e3,
    # spread ~1): without it ||x||^2 ~ 1e7 would swamp distances ~20.
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(50, 10, generator=g) + 1e3).float()
    y = (torch.randn(40, 10, generator=g) + 1e3).float()
    exact = brute_sqdist(x.double(), y.double())
    got = squared_distances(x, y).double()
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_z_must_be_2d() -> None:
    with pytest.raises(ValueError, match=r"z must be a 2-D tensor.*\(5,\)"):
        mmd(torch.randn(5))
    with pytest.raises(ValueError, match=r"z must be a 2-D tensor.*\(2, 3, 4\)"):
        mmd(torch.randn(2, 3, 4))


def test_prior_width_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        mmd(torch.randn(4, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"prior_sample must be a 2-D"):
        mmd(torch.randn(4, 2), torch.randn(4))


def test_unknown_kernel_and_estimator_list_choices() -> None:
    z = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"unknown kernel 'gauss'.*'seed', 'imq', 'rbf'"):
        mmd(z, kernel="gauss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown estimator 'u'.*'biased', 'unbiased'"):
        mmd(z, estimator="u")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown kernel 'x'.*'seed', 'imq', 'rbf'"):
        kernel_matrix(z, z, kernel="x")  # type: ignore[arg-type]


def test_unbiased_needs_two_rows() -> None:
    with pytest.raises(ValueError, match=r"at least 2 row"):
        mmd(torch.randn(1, 3), estimator="unbiased")
    with pytest.raises(ValueError, match=r"at least 2 row"):
        mmd(torch.randn(5, 3), torch.randn(1, 3), estimator="unbiased")
    # the biased estimator is defined for a single row
    assert torch.isfinite(mmd(torch.randn(1, 3)))


def test_empty_z_rejected() -> None:
    with pytest.raises(ValueError, match=r"at least 1 row"):
        mmd(torch.randn(0, 3))


def test_scales_validation() -> None:
    z = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"kernel='seed' has no scales"):
        mmd(z, kernel="seed", scales=[1.0])
    with pytest.raises(ValueError, match=r"positive"):
        mmd(z, kernel="imq", scales=[1.0, 0.0])
    with pytest.raises(ValueError, match=r"at least one"):
        kernel_matrix(z, z, kernel="rbf", scales=[])


def test_kernel_matrix_width_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(3, 4\)"):
        kernel_matrix(torch.randn(3, 2), torch.randn(3, 4))
