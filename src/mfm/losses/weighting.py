"""Weighting several loss terms into one scalar: fixed, uncertainty, GradNorm and DWA.

Every strategy is a :class:`Weighting`, an ``nn.Module`` whose learnable weights (if any)
are its own parameters, so they can be handed to the optimizer through
:meth:`Weighting.parameter_groups` (``weight_decay=0``, optionally their own learning rate).
Build one with :func:`make_weighting`.

Terms are the objective's named 0-d tensors (``pred``, ``recon_<m>``, ``mmd_zy``,
``mmd_za_<m>``, ``missing``, ...). A strategy covers two sets of names:

* ``names``: the terms whose weights the strategy chooses (learns or schedules);
* the keys of ``fixed`` that are not in ``names``: terms kept on a fixed weight ``lambda_n``.

The total is ``sum_{n in names} weighted_n + sum_{n in fixed} lambda_n * L_n`` over the terms
present in the step's dict. Keys of that dict in neither set are ignored (so the objective's
own ``loss`` total can be passed along without being counted twice). A name absent from the
dict (e.g. a task with no valid label in this batch) is skipped together with its
regulariser: it adds nothing, divides nothing and its parameter receives no gradient.

Why terms that can be negative or tiny must stay on fixed weights
-------------------------------------------------------------------
Only name a term in ``names`` if it is a proper, positive loss. Adaptive weights assume it:

* uncertainty: for a regression term ``0.5 exp(-s) L + 0.5 s`` the best ``s`` is ``log L``.
  As ``L -> 0`` the weight ``exp(-s)`` grows like ``1 / L``, and if ``L < 0`` (an unbiased
  MMD estimate is negative whenever the two samples look closer than chance) the expression
  is unbounded below as ``s -> -inf``: nothing (these weights carry no weight decay) stops
  the log-variance from running away to ``-inf``, the weight to ``+inf`` and the total loss
  to ``-inf``;
* GradNorm divides by the term's first value ``L_n(0)`` and DWA by last epoch's average: a
  near-zero or negative denominator gives exploding or sign-flipped rates.

So keep an unbiased MMD (and any other term that can be negative or vanish) out of
``names`` and give it a fixed lambda in ``fixed``; it is the caller's choice, made explicit.

Strategies
----------
``fixed``
    ``total = sum_n lambda_n L_n`` with ``lambda_n = fixed.get(n, 1.0)``.
``uncertainty`` (Kendall, Gal & Cipolla 2018)
    a learnable ``s_n = log sigma_n^2`` per term, initialised at 0; a regression term adds
    ``0.5 exp(-s) L + 0.5 s``, a classification term ``exp(-s) L + 0.5 s``. With
    ``positive=True`` (Liebel & Koerner 2018): ``c L / sigma^2 + log(1 + sigma^2)`` with
    ``c = 0.5`` for regression (exactly Liebel & Koerner) and ``c = 1`` for classification
    (the kind's factor, as in Kendall), where ``sigma^2 = softplus(rho)`` is kept positive by
    a free parameter ``rho`` initialised at ``log(e - 1)`` so that ``sigma^2 = 1`` at start.
``gradnorm`` (Chen et al. 2018)
    see :class:`GradNormWeighting` for what the engine must do.
``dwa`` (Dynamic Weight Average, Liu et al. 2019)
    see :class:`DWAWeighting`; needs :meth:`Weighting.on_epoch_end`.

The effective weight reported for a term is the multiplier of its ``L`` in the total
(detached), e.g. ``0.5 exp(-s)`` for an uncertainty regression term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TASK_KINDS = ("regression", "classification")
WEIGHTINGS = ("fixed", "uncertainty", "gradnorm", "dwa")


class Weighting(nn.Module):
    """Combine named 0-d loss terms into one scalar.

    Args:
        names: the terms weighted by this strategy (order fixes parameter order).
        kinds: name -> ``"regression"`` or ``"classification"`` (only uncertainty uses it;
            default regression).
        fixed: name -> lambda, for terms kept on fixed weights (for the ``fixed`` strategy,
            the lambda of a named term; default 1).
        lr: learning rate of the learnable weights' parameter group (``None``: the
            optimizer's default).

    Raises:
        ValueError: on duplicate names, an unknown kind, or a kind for an unnamed term.
    """

    kind = "base"

    def __init__(
        self,
        names: Sequence[str],
        kinds: Mapping[str, str] | None = None,
        fixed: Mapping[str, float] | None = None,
        lr: float | None = None,
    ) -> None:
        super().__init__()
        self.names: tuple[str, ...] = tuple(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate loss term names in {list(self.names)}")
        kinds = dict(kinds or {})
        for name, kind in kinds.items():
            if name not in self.names:
                raise ValueError(f"kind given for {name!r}, which is not a weighted term")
            if kind not in TASK_KINDS:
                raise ValueError(f"kind of {name!r} must be one of {TASK_KINDS}, got {kind!r}")
        self.kinds: dict[str, str] = {n: kinds.get(n, "regression") for n in self.names}
        self.fixed: dict[str, float] = {n: float(v) for n, v in (fixed or {}).items()}
        if lr is not None and lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.lr = lr
        # Gives the device and dtype of an empty total.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def forward(
        self, terms: Mapping[str, Tensor], shared: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted total of the terms present.

        Args:
            terms: name -> 0-d loss tensor; names in neither ``names`` nor ``fixed`` are
                ignored, covered names that are absent are skipped.
            shared: the last shared layer's weight (any shape); only GradNorm uses it.

        Returns:
            ``(total, weights)``: the 0-d total and, for every covered term present, its
            effective (detached, 0-d) weight this step. With no covered term present the
            total is a 0-d zero that does not require grad.
        """
        present = [i for i, n in enumerate(self.names) if n in terms]
        total, weights = self._combine(terms, present, shared)
        fixed = _constant_weights(terms, {name: lam for name, lam in self.fixed.items()
                                          if name not in self.names and name in terms})
        total = _weighted_sum(terms, fixed, total)
        weights.update(fixed)
        if total is None:
            total = self._anchor.clone()
        return total, weights

    def _combine(
        self, terms: Mapping[str, Tensor], present: list[int], shared: Tensor | None
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """The strategy's part: weighted sum over ``names[i]`` for ``i`` in ``present``."""
        raise NotImplementedError

    def on_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Receive each term's average loss over the finished epoch (only DWA uses it)."""

    def renormalise(self) -> None:
        """Call after every optimizer step (only GradNorm does anything)."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups for the learnable weights; ``[]`` when there are none.

        One group, ``weight_decay=0`` and ``lr`` when one was given. Keep these parameters
        out of any weight-decayed group (e.g. build the main group from the model only).
        """
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0}
        if self.lr is not None:
            group["lr"] = self.lr
        return [group]

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, fixed={self.fixed}"


def _add(total: Tensor | None, part: Tensor) -> Tensor:
    return part if total is None else total + part


def _constant_weights(terms: Mapping[str, Tensor], lambdas: Mapping[str, float]
                      ) -> dict[str, Tensor]:
    """Name -> 0-d tensor ``lambda`` with the dtype and device of its term."""
    return {name: torch.tensor(lam, dtype=terms[name].dtype, device=terms[name].device)
            for name, lam in lambdas.items()}


def _weighted_sum(terms: Mapping[str, Tensor], weights: Mapping[str, Tensor],
                  total: Tensor | None = None) -> Tensor | None:
    """``total + sum_n w_n L_n`` over the names of ``weights``, added in order (``None``
    when both are empty)."""
    for name, weight in weights.items():
        total = _add(total, weight * terms[name])
    return total


class FixedWeighting(Weighting):
    """``total = sum_n lambda_n L_n`` with ``lambda_n = fixed.get(n, 1.0)``."""

    kind = "fixed"

    def _combine(
        self, terms: Mapping[str, Tensor], present: list[int], shared: Tensor | None
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        weights = _constant_weights(
            terms, {self.names[i]: self.fixed.get(self.names[i], 1.0) for i in present})
        return _weighted_sum(terms, weights), weights


def _check_no_overlap(names: Sequence[str], fixed: Mapping[str, float] | None) -> None:
    both = sorted(set(names) & set(fixed or {}))
    if both:
        raise ValueError(f"terms {both} are both adaptively weighted and fixed; choose one")


class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty weighting (Kendall et al. 2018; Liebel & Koerner 2018).

    Parameters: one 0-d ``log_vars[i]`` (``s = log sigma^2``, init 0) per name, or with
    ``positive=True`` one 0-d ``raw_vars[i]`` (``rho``, ``sigma^2 = softplus(rho)``, init
    ``log(e - 1)`` so ``sigma^2 = 1``). One parameter per name, so an absent term's parameter
    gets no gradient at all (Adam then leaves it alone rather than coasting on momentum).
    Under DDP a term absent on one process leaves its parameter unused there: use
    ``find_unused_parameters=True``.
    """

    kind = "uncertainty"

    def __init__(
        self,
        names: Sequence[str],
        kinds: Mapping[str, str] | None = None,
        fixed: Mapping[str, float] | None = None,
        lr: float | None = None,
        positive: bool = False,
    ) -> None:
        _check_no_overlap(names, fixed)
        super().__init__(names, kinds, fixed, lr)
        self.positive = positive
        if positive:
            start = math.log(math.expm1(1.0))  # softplus(start) == 1
            self.raw_vars = nn.ParameterList(nn.Parameter(torch.tensor(start)) for _ in self.names)
        else:
            self.log_vars = nn.ParameterList(nn.Parameter(torch.zeros(())) for _ in self.names)

    def variances(self) -> Tensor:
        """``(K,)`` current ``sigma_n^2`` (detached)."""
        with torch.no_grad():
            if self.positive:
                return torch.stack([F.softplus(p) for p in self.raw_vars])
            return torch.stack([p.exp() for p in self.log_vars])

    def _combine(
        self, terms: Mapping[str, Tensor], present: list[int], shared: Tensor | None
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        total: Tensor | None = None
        weights: dict[str, Tensor] = {}
        for i in present:
            name = self.names[i]
            factor = 1.0 if self.kinds[name] == "classification" else 0.5
            if self.positive:
                var = F.softplus(self.raw_vars[i])
                weight = factor / var
                regulariser = torch.log1p(var)
            else:
                s = self.log_vars[i]
                weight = factor * torch.exp(-s)
                regulariser = 0.5 * s
            total = _add(total, weight * terms[name] + regulariser)
            weights[name] = weight.detach()
        return total, weights


def _world_size() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class GradNormWeighting(Weighting):
    """GradNorm (Chen et al. 2018): weights that balance the terms' gradient norms.

    Parameters: one 0-d weight ``w_n`` per name (init 1). A buffer ``initial`` holds each
    term's first loss ``L_n(0)`` (NaN until the term is first seen in training; saved in
    checkpoints). ``last_gradnorm_loss`` holds the last GradNorm loss, for logging.

    In a training step (module in training mode, grad enabled) ``forward(terms,
    shared=weight)`` needs ``shared``, the weight of the last layer shared by all terms, and:

    1. computes ``g_n = ||dL_n / d shared||`` with one ``torch.autograd.grad(L_n, shared,
       retain_graph=True)`` per present term: **one extra backward pass through the top of the
       graph per weighted term per step**, and the graph is retained until the main backward;
    2. ``G_n = w_n g_n``: this is ``||d(w_n L_n)/d shared||`` exactly, since ``w_n`` does
       not depend on ``shared`` and is positive. Because the GradNorm loss updates only
       ``w``, no second-order graph through the network is needed (``create_graph=True``
       would only add a double backward whose result is discarded);
    3. ``r_n = (L_n / L_n(0)) / mean_k(L_k / L_k(0))``, targets ``mean_k(G_k) * r_n^alpha``
       (detached), GradNorm loss ``sum_n |G_n - target_n|`` over the present terms;
    4. returns ``total = sum_n w_n.detach() L_n + (w . g_w - (w . g_w).detach())`` where
       ``g_w`` is the GradNorm loss's gradient w.r.t. ``w``: the second part is exactly 0 in
       value, so the total is the weighted loss, and a single ``total.backward()`` gives the
       network the gradient of ``sum_n w_n L_n`` (``w`` constant) and ``w.grad = g_w`` (the
       GradNorm loss's gradient, and nothing else).

    What the engine must do: return ``total`` from ``training_step`` as usual (this works
    with Lightning's automatic optimisation, where ``zero_grad`` runs between
    ``training_step`` and ``backward``, which would wipe a gradient stashed into ``w.grad``
    inside ``forward``); put :meth:`parameter_groups` into the optimizer (not weight-decayed);
    call :meth:`renormalise` after every optimizer step, which clamps the weights positive
    and rescales them to sum to the number of weighted terms. Gradient clipping by norm, if
    enabled, also sees ``w``'s gradient. In evaluation (``eval()`` or no grad) it only
    returns the weighted total.

    Not supported under DDP with more than one process (``forward`` raises): the per-term
    ``autograd.grad`` calls on a DDP-wrapped parameter inside the forward, the retained
    graph and the per-process ``L_n(0)`` are outside what DDP's reducer expects.
    """

    kind = "gradnorm"

    def __init__(
        self,
        names: Sequence[str],
        kinds: Mapping[str, str] | None = None,
        fixed: Mapping[str, float] | None = None,
        lr: float | None = None,
        alpha: float = 1.5,
    ) -> None:
        _check_no_overlap(names, fixed)
        super().__init__(names, kinds, fixed, lr)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.loss_weights = nn.ParameterList(nn.Parameter(torch.ones(())) for _ in self.names)
        self.register_buffer("initial", torch.full((len(self.names),), float("nan")))
        self.last_gradnorm_loss: Tensor | None = None

    def _combine(
        self, terms: Mapping[str, Tensor], present: list[int], shared: Tensor | None
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        weights = {self.names[i]: self.loss_weights[i].detach().clone() for i in present}
        total = _weighted_sum(terms, weights)
        if not present or not (self.training and torch.is_grad_enabled()):
            return total, weights
        if shared is None:
            raise ValueError("GradNorm needs shared= (the last shared layer's weight) in training")
        if _world_size() > 1:
            raise RuntimeError(
                "GradNorm weighting is not supported under distributed training (world size "
                f"{_world_size()}); use uncertainty, dwa or fixed weights"
            )
        tiny = torch.finfo(torch.float32).tiny
        norms, ratios = [], []
        for i in present:
            loss = terms[self.names[i]]
            if torch.isnan(self.initial[i]):
                self.initial[i] = loss.detach().to(self.initial.dtype)
            grad = None
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            norms.append(grad.norm() if grad is not None else loss.new_zeros(()))
            ratios.append(loss.detach() / self.initial[i].clamp(min=tiny))
        params = [self.loss_weights[i] for i in present]
        grad_norms = torch.stack([p * g.to(p.dtype) for p, g in zip(params, norms, strict=True)])
        ratio = torch.stack(ratios).to(grad_norms.dtype)
        rates = ratio / ratio.mean().clamp(min=tiny)
        targets = (grad_norms.mean() * rates**self.alpha).detach()
        gradnorm_loss = (grad_norms - targets).abs().sum()
        grads = torch.autograd.grad(gradnorm_loss, params)
        self.last_gradnorm_loss = gradnorm_loss.detach()
        surrogate = torch.stack([p * g for p, g in zip(params, grads, strict=True)]).sum()
        total = _add(total, surrogate - surrogate.detach())
        return total, weights

    def current_weights(self) -> Tensor:
        """``(K,)`` current weights (detached)."""
        return torch.stack([p.detach() for p in self.loss_weights])

    @torch.no_grad()
    def renormalise(self) -> None:
        """Clamp the weights positive and rescale them to sum to the number of terms."""
        if not self.names:
            return
        w = self.current_weights().clamp(min=1e-6)
        w = w * (len(self.names) / w.sum())
        for p, value in zip(self.loss_weights, w, strict=True):
            p.copy_(value)


class DWAWeighting(Weighting):
    """Dynamic Weight Average (Liu, Johns & Davison 2019).

    ``w_n = K exp(r_n / T) / sum_k exp(r_k / T)`` with ``r_n = L_n(t-1) / L_n(t-2)``, the
    ratio of the term's average loss over the last two epochs, ``K = len(names)``; all
    weights are 1 until two epochs have been reported through :meth:`on_epoch_end`. A ratio
    that cannot be formed (a term not reported in one of the two epochs, or a non-positive
    or non-finite average) is taken as 1. No learnable parameters; the history is kept in
    buffers (saved in checkpoints). A term absent from a batch is skipped; the others keep
    their epoch weights.
    """

    kind = "dwa"

    def __init__(
        self,
        names: Sequence[str],
        kinds: Mapping[str, str] | None = None,
        fixed: Mapping[str, float] | None = None,
        lr: float | None = None,
        temperature: float = 2.0,
    ) -> None:
        _check_no_overlap(names, fixed)
        super().__init__(names, kinds, fixed, lr)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        k = len(self.names)
        self.register_buffer("history", torch.full((2, k), float("nan"), dtype=torch.float64))
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))
        self.register_buffer("current", torch.ones(k, dtype=torch.float64))

    def on_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        """Record the epoch's average of each term and set the next epoch's weights."""
        row = torch.tensor(
            [float(epoch_losses.get(n, float("nan"))) for n in self.names], dtype=torch.float64
        )
        self.history.copy_(torch.stack([self.history[1], row.to(self.history.device)]))
        self.epochs += 1
        if int(self.epochs) < 2 or not self.names:
            return
        older, last = self.history[0], self.history[1]
        usable = torch.isfinite(older) & torch.isfinite(last) & (older > 0) & (last >= 0)
        ratio = torch.where(usable, last / torch.where(usable, older, 1.0), 1.0)
        self.current.copy_(len(self.names) * torch.softmax(ratio / self.temperature, dim=0))

    def _combine(
        self, terms: Mapping[str, Tensor], present: list[int], shared: Tensor | None
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        weights = {
            self.names[i]: self.current[i].to(dtype=terms[self.names[i]].dtype,
                                              device=terms[self.names[i]].device).clone()
            for i in present
        }
        return _weighted_sum(terms, weights), weights


def make_weighting(
    kind: str,
    names: Sequence[str],
    *,
    kinds: Mapping[str, str] | None = None,
    fixed: Mapping[str, float] | None = None,
    alpha: float = 1.5,
    temperature: float = 2.0,
    lr: float | None = None,
    positive: bool = False,
) -> Weighting:
    """Build a weighting strategy.

    Args:
        kind: one of ``fixed``, ``uncertainty``, ``gradnorm``, ``dwa``.
        names: the terms this strategy weights.
        kinds: name -> ``regression``/``classification`` (uncertainty only).
        fixed: name -> lambda for terms on fixed weights.
        alpha: GradNorm's asymmetry.
        temperature: DWA's softmax temperature.
        lr: learning rate of the learnable weights (``None``: the optimizer's).
        positive: uncertainty only: the Liebel & Koerner positive variant.

    Arguments that do not apply to ``kind`` are ignored.

    Raises:
        ValueError: on an unknown ``kind`` (listing the choices) or invalid settings.
    """
    if kind == "fixed":
        return FixedWeighting(names, kinds, fixed, lr)
    if kind == "uncertainty":
        return UncertaintyWeighting(names, kinds, fixed, lr, positive=positive)
    if kind == "gradnorm":
        return GradNormWeighting(names, kinds, fixed, lr, alpha=alpha)
    if kind == "dwa":
        return DWAWeighting(names, kinds, fixed, lr, temperature=temperature)
    raise ValueError(f"unknown loss weighting {kind!r}; choose one of {', '.join(WEIGHTINGS)}")
