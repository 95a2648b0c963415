"""Tests for ``mfm.losses.weighting``: arithmetic against hand-computed values, optimizer
wiring of the learnable weights, GradNorm's renormalisation, DWA's schedule, missing terms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from mfm.losses.weighting import (
    DWAWeighting,
    GradNormWeighting,
    UncertaintyWeighting,
    make_weighting,
)


def t(value: float, grad: bool = False) -> Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=grad)


def adam_step(weighting: nn.Module, total: Tensor, lr: float = 0.1) -> None:
    groups = weighting.parameter_groups()
    assert groups and groups[0]["weight_decay"] == 0.0
    optimizer = torch.optim.Adam(groups, lr=lr)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()


# --------------------------------------------------------------------------------------------
# fixed
# --------------------------------------------------------------------------------------------


def test_fixed_arithmetic() -> None:
    w = make_weighting("fixed", ["a", "b"], fixed={"a": 2.0, "m": 0.5})
    # 2 * 3 + 1 * 5 + 0.5 * (-0.2) = 10.9; "loss" is in neither set and is ignored.
    total, weights = w({"a": t(3.0), "b": t(5.0), "m": t(-0.2), "loss": t(100.0)})
    assert total.item() == pytest.approx(10.9)
    assert {k: v.item() for k, v in weights.items()} == {"a": 2.0, "b": 1.0, "m": 0.5}
    assert w.parameter_groups() == []


def test_fixed_part_of_adaptive_strategy() -> None:
    w = make_weighting("uncertainty", ["a"], fixed={"mmd": 10.0})
    # 0.5 * exp(0) * 2 + 0 + 10 * (-0.01) = 0.9: the MMD stays on its fixed lambda.
    total, weights = w({"a": t(2.0), "mmd": t(-0.01)})
    assert total.item() == pytest.approx(0.9)
    assert weights["mmd"].item() == 10.0
    with pytest.raises(ValueError, match="both"):
        make_weighting("uncertainty", ["a"], fixed={"a": 1.0})


# --------------------------------------------------------------------------------------------
# uncertainty
# --------------------------------------------------------------------------------------------


def test_uncertainty_arithmetic_at_init() -> None:
    w = make_weighting("uncertainty", ["a", "b"], kinds={"b": "classification"})
    # s = 0: regression 0.5 * 1 * 2 + 0 = 1; classification 1 * 3 + 0 = 3; total 4.
    total, weights = w({"a": t(2.0), "b": t(3.0)})
    assert total.item() == pytest.approx(4.0)
    assert weights["a"].item() == pytest.approx(0.5)
    assert weights["b"].item() == pytest.approx(1.0)
    # d/ds_a (0.5 e^-s 2 + 0.5 s) = -1 + 0.5 = -0.5; d/ds_b (e^-s 3 + 0.5 s) = -3 + 0.5 = -2.5.
    total.backward()
    assert isinstance(w, UncertaintyWeighting)
    assert w.log_vars[0].grad.item() == pytest.approx(-0.5)
    assert w.log_vars[1].grad.item() == pytest.approx(-2.5)


def test_uncertainty_arithmetic_nonzero_s() -> None:
    w = make_weighting("uncertainty", ["a"])
    assert isinstance(w, UncertaintyWeighting)
    with torch.no_grad():
        w.log_vars[0].fill_(math.log(2.0))
    # 0.5 * exp(-log 2) * 2 + 0.5 * log 2 = 0.5 + 0.34657... = 0.84657...
    total, weights = w({"a": t(2.0)})
    assert total.item() == pytest.approx(0.5 + 0.5 * math.log(2.0))
    assert weights["a"].item() == pytest.approx(0.25)


def test_uncertainty_positive_arithmetic() -> None:
    w = make_weighting("uncertainty", ["a", "b"], kinds={"b": "classification"}, positive=True)
    assert isinstance(w, UncertaintyWeighting)
    assert torch.allclose(w.variances(), torch.ones(2))
    # sigma^2 = 1: regression 0.5 * 2 / 1 + log 2 = 1.6931...; classification 3 / 1 + log 2.
    total, weights = w({"a": t(2.0), "b": t(3.0)})
    assert total.item() == pytest.approx(1.0 + 3.0 + 2 * math.log(2.0))
    assert weights["a"].item() == pytest.approx(0.5)
    assert weights["b"].item() == pytest.approx(1.0)
    # d/dv (0.5 * 2 / v + log(1 + v)) at v = 1: -1 + 0.5 = -0.5; times softplus'(rho) =
    # sigmoid(log(e - 1)) = (e - 1) / e.
    total.backward()
    assert w.raw_vars[0].grad.item() == pytest.approx(-0.5 * (math.e - 1) / math.e)
    assert w.raw_vars[1].grad.item() == pytest.approx(-2.5 * (math.e - 1) / math.e)


@pytest.mark.parametrize("positive", [False, True])
def test_uncertainty_parameters_move_under_adam(positive: bool) -> None:
    w = make_weighting(
        "uncertainty",
        ["a", "b", "c"],
        kinds={"b": "classification"},
        positive=positive,
        lr=0.05,
    )
    assert w.parameter_groups()[0]["lr"] == 0.05
    before = [p.detach().clone() for p in w.parameters()]
    # a: large regression loss -> variance grows; b: classification, grows faster;
    # c: small regression loss (0.5 e^-s 0.2 + 0.5 s: slope +0.4 at s=0) -> variance shrinks.
    total, _ = w({"a": t(2.0), "b": t(3.0), "c": t(0.2)})
    adam_step(w, total)
    after = [p.detach() for p in w.parameters()]
    # Adam's first step moves each parameter by ~lr * sign(grad), here lr = 0.05.
    assert after[0] - before[0] == pytest.approx(0.05, rel=1e-3)
    assert after[1] - before[1] == pytest.approx(0.05, rel=1e-3)
    assert after[2] - before[2] == pytest.approx(-0.05, rel=1e-3)


def test_uncertainty_missing_term_skips_regulariser() -> None:
    w = make_weighting("uncertainty", ["a", "b"])
    assert isinstance(w, UncertaintyWeighting)
    with torch.no_grad():
        w.log_vars[1].fill_(3.0)  # its 0.5 * s = 1.5 must not appear
    total, weights = w({"a": t(2.0)})
    assert total.item() == pytest.approx(1.0)
    assert set(weights) == {"a"}
    total.backward()
    assert w.log_vars[1].grad is None  # Adam will not touch it


def test_missing_everything_gives_finite_zero() -> None:
    for kind in ("fixed", "uncertainty", "gradnorm", "dwa"):
        w = make_weighting(kind, ["a", "b"])
        total, weights = w({}, shared=nn.Parameter(torch.ones(2)))
        assert total.item() == 0.0 and torch.isfinite(total)
        assert weights == {}


# --------------------------------------------------------------------------------------------
# GradNorm
# --------------------------------------------------------------------------------------------


def test_gradnorm_arithmetic() -> None:
    w = make_weighting("gradnorm", ["a", "b"], alpha=1.0)
    assert isinstance(w, GradNormWeighting)
    shared = nn.Parameter(torch.ones(1, dtype=torch.float64))
    # Step 0: L_a = 2 x (grad 2), L_b = 4 x (grad 4), x = 1, w = (1, 1).
    # G = (2, 4), G_bar = 3, ratios L/L(0) = (1, 1) -> r = (1, 1), targets (3, 3);
    # GradNorm loss |2-3| + |4-3| = 2; dL/dw_a = sign(-1) * 2 = -2, dL/dw_b = sign(1) * 4 = 4.
    total, weights = w({"a": 2 * shared.sum(), "b": 4 * shared.sum()}, shared=shared)
    assert total.item() == pytest.approx(6.0)  # 1 * 2 + 1 * 4; the surrogate adds exactly 0
    assert w.last_gradnorm_loss.item() == pytest.approx(2.0)
    assert {k: v.item() for k, v in weights.items()} == {"a": 1.0, "b": 1.0}
    total.backward()
    assert shared.grad.item() == pytest.approx(6.0)  # network sees sum w_n dL_n, w constant
    assert w.loss_weights[0].grad.item() == pytest.approx(-2.0)
    assert w.loss_weights[1].grad.item() == pytest.approx(4.0)
    assert w.initial.tolist() == [2.0, 4.0]
    # Step 1: L_a = 1 x (grad 1), L_b = 4 x; L/L(0) = (0.5, 1), mean 0.75 -> r = (2/3, 4/3).
    # G = (1, 4), G_bar = 2.5, targets (5/3, 10/3); loss |1 - 5/3| + |4 - 10/3| = 4/3;
    # dL/dw_a = -1, dL/dw_b = +4.
    shared.grad = None
    for p in w.parameters():
        p.grad = None
    total, _ = w({"a": shared.sum(), "b": 4 * shared.sum()}, shared=shared)
    assert total.item() == pytest.approx(5.0)
    assert w.last_gradnorm_loss.item() == pytest.approx(4.0 / 3.0)
    total.backward()
    assert w.loss_weights[0].grad.item() == pytest.approx(-1.0)
    assert w.loss_weights[1].grad.item() == pytest.approx(4.0)


def test_gradnorm_renormalise() -> None:
    w = make_weighting("gradnorm", ["a", "b", "c"])
    assert isinstance(w, GradNormWeighting)
    with torch.no_grad():
        for p, v in zip(w.loss_weights, (2.0, -1.0, 4.0), strict=True):
            p.fill_(v)
    w.renormalise()
    weights = w.current_weights()
    # clamp -> (2, 1e-6, 4), rescaled by 3 / 6.000001.
    assert torch.all(weights > 0)
    assert weights.sum().item() == pytest.approx(3.0)
    assert weights[0].item() == pytest.approx(1.0, rel=1e-5)


class TwoTask(nn.Module):
    """``(B, 4) -> two (B,)`` outputs through a shared layer."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 8)
        self.head_a = nn.Linear(8, 1)
        self.head_b = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.shared(x))
        return self.head_a(h).squeeze(-1), self.head_b(h).squeeze(-1)


def test_gradnorm_trains_tiny_model() -> None:
    torch.manual_seed(0)
    model = TwoTask()
    w = make_weighting("gradnorm", ["a", "b"], alpha=1.5, lr=0.05)
    assert isinstance(w, GradNormWeighting)
    optimizer = torch.optim.Adam([{"params": model.parameters()}, *w.parameter_groups()], lr=0.01)
    x = torch.randn(32, 4)
    y_a, y_b = x.sum(-1), 10 * x[:, 0]  # task b's loss is ~100x larger
    history = []
    for _ in range(10):
        out_a, out_b = model(x)
        terms = {"a": ((out_a - y_a) ** 2).mean(), "b": ((out_b - y_b) ** 2).mean()}
        optimizer.zero_grad()
        total, weights = w(terms, shared=model.shared.weight)
        assert torch.isfinite(total)
        total.backward()
        assert all(p.grad is not None for p in w.parameters())
        optimizer.step()
        w.renormalise()
        current = w.current_weights()
        assert torch.all(current > 0)
        assert current.sum().item() == pytest.approx(2.0)
        history.append(current.clone())
    assert not torch.allclose(history[-1], torch.ones(2))  # the weights did move
    # In eval mode it only weights (no shared needed, no GradNorm loss).
    w.eval()
    with torch.no_grad():
        total, weights = w(terms)
    assert total.item() == pytest.approx(
        float(sum(weights[n] * terms[n].detach() for n in ("a", "b")))
    )


def test_gradnorm_matches_create_graph_reference() -> None:
    """The factored G_n = w_n ||dL_n/dW|| gives the same w-gradient as differentiating
    ||d(w_n L_n)/dW|| built with create_graph=True (Chen et al.'s formulation)."""
    torch.manual_seed(1)
    model = TwoTask()
    w = make_weighting("gradnorm", ["a", "b"], alpha=1.5)
    assert isinstance(w, GradNormWeighting)
    with torch.no_grad():
        w.loss_weights[0].fill_(0.7)
        w.loss_weights[1].fill_(1.3)
        w.initial.copy_(torch.tensor([3.0, 0.5]))
    x = torch.randn(16, 4)
    out_a, out_b = model(x)
    terms = {"a": (out_a - x.sum(-1)).pow(2).mean(), "b": (out_b - x[:, 1]).pow(2).mean()}
    total, _ = w(terms, shared=model.shared.weight)
    total.backward(retain_graph=True)
    got = torch.stack([p.grad for p in w.loss_weights])

    weights = [nn.Parameter(torch.tensor(0.7)), nn.Parameter(torch.tensor(1.3))]
    norms = []
    for wn, name in zip(weights, ("a", "b"), strict=True):
        (g,) = torch.autograd.grad(
            wn * terms[name], model.shared.weight, retain_graph=True, create_graph=True
        )
        norms.append(g.norm())
    grad_norms = torch.stack(norms)
    ratio = torch.stack([terms["a"].detach() / 3.0, terms["b"].detach() / 0.5])
    targets = (grad_norms.mean() * (ratio / ratio.mean()) ** 1.5).detach()
    expected = torch.stack(torch.autograd.grad((grad_norms - targets).abs().sum(), weights))
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_gradnorm_missing_term_and_zero_initial() -> None:
    w = make_weighting("gradnorm", ["a", "b"])
    assert isinstance(w, GradNormWeighting)
    shared = nn.Parameter(torch.ones(2))
    # Only "a" present, and its first loss is 0: L/L(0) uses a clamped denominator, a single
    # term has r = 1 and G = target, so the GradNorm loss is 0 and nothing is NaN.
    total, weights = w({"a": (shared * 0).sum()}, shared=shared)
    assert set(weights) == {"a"}
    assert w.last_gradnorm_loss.item() == 0.0
    total.backward()
    assert torch.isfinite(w.loss_weights[0].grad)
    assert w.loss_weights[1].grad is None
    assert math.isnan(w.initial[1].item())  # "b" not seen yet
    total, _ = w({"a": shared.sum(), "b": 2 * shared.sum()}, shared=shared)
    assert torch.isfinite(total) and torch.isfinite(w.last_gradnorm_loss)
    assert w.initial[1].item() == pytest.approx(4.0)


def test_gradnorm_needs_shared_in_training() -> None:
    w = make_weighting("gradnorm", ["a"])
    with pytest.raises(ValueError, match="shared"):
        w({"a": t(1.0, grad=True)})


def test_gradnorm_refuses_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    w = make_weighting("gradnorm", ["a"])
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    shared = nn.Parameter(torch.ones(1))
    with pytest.raises(RuntimeError, match="distributed"):
        w({"a": shared.sum()}, shared=shared)


# --------------------------------------------------------------------------------------------
# DWA
# --------------------------------------------------------------------------------------------


def test_dwa_schedule() -> None:
    w = make_weighting("dwa", ["a", "b"], temperature=2.0)
    assert isinstance(w, DWAWeighting)
    assert w.parameter_groups() == []
    terms = {"a": t(2.0), "b": t(3.0)}
    # Epoch 0 and 1: equal weights 1.
    total, weights = w(terms)
    assert total.item() == pytest.approx(5.0)
    w.on_epoch_end({"a": 1.0, "b": 1.0})
    total, weights = w(terms)
    assert {k: v.item() for k, v in weights.items()} == {"a": 1.0, "b": 1.0}
    w.on_epoch_end({"a": 0.5, "b": 1.0})
    # r = (0.5 / 1, 1 / 1) = (0.5, 1); w_a = 2 e^0.25 / (e^0.25 + e^0.5) = 0.875647,
    # w_b = 2 e^0.5 / (e^0.25 + e^0.5) = 1.124353; total = 0.875647*2 + 1.124353*3 = 5.124353.
    total, weights = w(terms)
    assert weights["a"].item() == pytest.approx(0.8756469982)
    assert weights["b"].item() == pytest.approx(1.1243530018)
    assert total.item() == pytest.approx(5.1243530018)
    # Next epoch: r = (0.25 / 0.5, 2 / 1) = (0.5, 2): w_a = 2 e^0.25 / (e^0.25 + e^1).
    w.on_epoch_end({"a": 0.25, "b": 2.0})
    expected = 2 * math.exp(0.25) / (math.exp(0.25) + math.exp(1.0))
    assert w(terms)[1]["a"].item() == pytest.approx(expected)
    # State survives a checkpoint round trip.
    fresh = make_weighting("dwa", ["a", "b"])
    fresh.load_state_dict(w.state_dict())
    assert fresh(terms)[1]["a"].item() == pytest.approx(expected)


def test_dwa_unformable_ratio_and_missing_term() -> None:
    w = make_weighting("dwa", ["a", "b"])
    w.on_epoch_end({"a": 0.0, "b": 1.0})  # a's denominator will be 0
    w.on_epoch_end({"a": 1.0})  # b not reported this epoch
    # Both ratios fall back to 1 -> equal weights, nothing divides by zero.
    total, weights = w({"a": t(2.0)})
    assert set(weights) == {"a"}
    assert weights["a"].item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------------


def test_unknown_kind_lists_choices() -> None:
    with pytest.raises(ValueError, match="fixed, uncertainty, gradnorm, dwa"):
        make_weighting("softmax", ["a"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"names": ["a", "a"]}, "duplicate"),
        ({"names": ["a"], "kinds": {"a": "ordinal"}}, "kind"),
        ({"names": ["a"], "kinds": {"b": "regression"}}, "not a weighted term"),
    ],
)
def test_invalid_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_weighting("uncertainty", **kwargs)
    with pytest.raises(ValueError, match="temperature"):
        make_weighting("dwa", ["a"], temperature=0.0)
