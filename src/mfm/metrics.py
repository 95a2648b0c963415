"""Evaluation metrics of the Multimodal Factorization Model.

Two families of metrics are provided:

* **Regression** (sentiment intensity, e.g. CMU-MOSI / CMU-MOSEI in ``[-3, 3]``), following the
  conventions of the MMSA toolkit: binary accuracy / weighted F1 with and without the neutral
  (zero) samples, 5- and 7-class accuracy after clipping and rounding, mean absolute error and
  Pearson correlation. See :func:`regression_metrics`.
* **Classification** (e.g. emotion or dialogue-act labels): accuracy, weighted and macro F1,
  per-class recall and F1. See :func:`classification_metrics`.

All numbers come from :mod:`torchmetrics` functionals; this module only arranges the inputs
(thresholding, dropping zero targets, clipping and rounding) and handles the degenerate cases.
:class:`MFMMetrics` wraps both families into an epoch-level :class:`torchmetrics.Metric` whose
states are concatenated across processes, so distributed evaluation sees the full dataset.

All accuracies and F1 scores are fractions in ``[0, 1]`` (not percentages).
"""

from __future__ import annotations

import math
import warnings

import torch
import torchmetrics
from torch import Tensor
from torchmetrics.functional import mean_absolute_error, pearson_corrcoef
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_recall,
)
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "REGRESSION_METRICS",
    "MFMMetrics",
    "TargetMetrics",
    "classification_metrics",
    "regression_metrics",
]

REGRESSION_METRICS: tuple[str, ...] = (
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
)
"""Keys returned by :func:`regression_metrics`, in this order."""

_KINDS: tuple[str, ...] = ("regression", "classification")

# Message prefix of the warning torchmetrics emits when a side of the Pearson correlation has
# (near) zero variance; we turn that case into a documented 0.0 instead.
_PEARSON_ZERO_VAR_MSG = "The variance of predictions or target is close to zero"


def _as_vector(x: Tensor, name: str) -> Tensor:
    """Return ``x`` as a 1-D tensor.

    Args:
        x: tensor of shape ``(N,)`` or ``(N, 1)``.
        name: argument name used in error messages.

    Returns:
        Tensor of shape ``(N,)`` (a view when possible).

    Raises:
        ValueError: if ``x`` has any other shape.
    """
    if x.ndim == 2 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"`{name}` must have shape (N,) or (N, 1), got {tuple(x.shape)}")
    return x


def _classification_names(num_classes: int) -> tuple[str, ...]:
    """Keys returned by :func:`classification_metrics` for ``num_classes`` classes."""
    per_class = tuple(
        name for k in range(num_classes) for name in (f"recall_class_{k}", f"f1_class_{k}")
    )
    return ("accuracy", "f1_weighted", "f1_macro", *per_class)


def _binary_acc_and_weighted_f1(pred: Tensor, truth: Tensor) -> tuple[float, float]:
    """Binary accuracy and support-weighted F1 over the two classes.

    The weighted F1 matches ``sklearn.metrics.f1_score(truth, pred, average="weighted")``: the
    F1 of class 0 and of class 1, each weighted by its number of true samples.

    Args:
        pred: predicted labels, bool tensor of shape ``(N,)`` with ``N >= 1``.
        truth: true labels, bool tensor of shape ``(N,)``.

    Returns:
        ``(accuracy, weighted_f1)`` as python floats in ``[0, 1]``.
    """
    pred_i = pred.long()
    truth_i = truth.long()
    acc = multiclass_accuracy(pred_i, truth_i, num_classes=2, average="micro")
    f1 = multiclass_f1_score(pred_i, truth_i, num_classes=2, average="weighted")
    return float(acc), float(f1)


def _rounded_class_accuracy(preds: Tensor, target: Tensor, bound: int) -> float:
    """Accuracy after clipping to ``[-bound, bound]`` and rounding to the nearest integer.

    Rounding is half to even (``torch.round``), as in numpy, so ``0.5 -> 0`` and ``1.5 -> 2``.

    Args:
        preds: predictions, float tensor of shape ``(N,)``.
        target: targets, float tensor of shape ``(N,)``.
        bound: clipping bound; there are ``2 * bound + 1`` classes.

    Returns:
        Fraction of samples whose rounded prediction equals the rounded target.
    """
    pred_cls = torch.round(preds.clamp(-bound, bound)).long() + bound
    true_cls = torch.round(target.clamp(-bound, bound)).long() + bound
    acc = multiclass_accuracy(pred_cls, true_cls, num_classes=2 * bound + 1, average="micro")
    return float(acc)


def _safe_pearson(preds: Tensor, target: Tensor) -> float:
    """Pearson correlation that returns ``0.0`` instead of ``nan`` for degenerate inputs.

    torchmetrics returns ``nan`` (with a ``UserWarning``) when either side has (near) zero
    variance, e.g. a model that predicts a constant. Such a prediction carries no linear
    information about the target, so we report a correlation of ``0.0`` and emit no warning.
    Fewer than two samples are treated the same way.

    Args:
        preds: float tensor of shape ``(N,)``.
        target: float tensor of shape ``(N,)``.

    Returns:
        Correlation in ``[-1, 1]`` as a python float.
    """
    if preds.numel() < 2:
        return 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEARSON_ZERO_VAR_MSG, category=UserWarning)
        corr = float(pearson_corrcoef(preds, target))
    return 0.0 if math.isnan(corr) else corr


def regression_metrics(preds: Tensor, target: Tensor) -> dict[str, float]:
    """Sentiment-regression metrics, as the MMSA toolkit computes them.

    Definitions (all over the given samples):

    * ``Has0_acc_2`` / ``Has0_F1_score``: truth ``target >= 0``, prediction ``preds >= 0``, over
      all samples (a zero target or prediction counts as positive); accuracy and
      support-weighted F1 over the two classes (sklearn ``average="weighted"``).
    * ``Non0_acc_2`` / ``Non0_F1_score``: samples with ``target == 0`` exactly are dropped;
      truth ``target > 0``, prediction ``preds > 0`` (a zero prediction counts as negative).
      Both are ``nan`` when every target is zero.
    * ``Mult_acc_5`` / ``Mult_acc_7``: predictions and targets clipped to ``[-2, 2]`` /
      ``[-3, 3]`` and rounded to the nearest integer (half to even); exact-match accuracy.
    * ``MAE``: mean absolute error.
    * ``Corr``: Pearson correlation; ``0.0`` (not ``nan``) when either side is constant.

    Computation is done in float64 whatever the input dtype.

    Args:
        preds: predicted scores, shape ``(N,)`` or ``(N, 1)``.
        target: true scores, shape ``(N,)`` or ``(N, 1)``.

    Returns:
        Mapping from each name in :data:`REGRESSION_METRICS` to a python float; accuracies and
        F1 scores are fractions in ``[0, 1]``.

    Raises:
        ValueError: on bad shapes, mismatched lengths or empty inputs.
    """
    p = _as_vector(preds, "preds").detach().to(torch.float64)
    t = _as_vector(target, "target").detach().to(torch.float64)
    if p.shape != t.shape:
        raise ValueError(
            f"`preds` and `target` must have the same length, got {p.shape[0]} and {t.shape[0]}"
        )
    if p.numel() == 0:
        raise ValueError("regression_metrics needs at least one sample, got none")

    has0_acc, has0_f1 = _binary_acc_and_weighted_f1(p >= 0, t >= 0)

    nonzero = t != 0
    if bool(nonzero.any()):
        non0_acc, non0_f1 = _binary_acc_and_weighted_f1(p[nonzero] > 0, t[nonzero] > 0)
    else:
        non0_acc, non0_f1 = math.nan, math.nan

    return {
        "Has0_acc_2": has0_acc,
        "Has0_F1_score": has0_f1,
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": _rounded_class_accuracy(p, t, 2),
        "Mult_acc_7": _rounded_class_accuracy(p, t, 3),
        "MAE": float(mean_absolute_error(p, t)),
        "Corr": _safe_pearson(p, t),
    }


def classification_metrics(logits: Tensor, target: Tensor, num_classes: int) -> dict[str, float]:
    """Multiclass classification metrics.

    The predicted class is ``logits.argmax(-1)`` (or ``logits`` itself when it already holds
    class indices). Macro and weighted F1 follow torchmetrics: the weighted F1 weights each class
    by its number of true samples; the macro F1 averages over the classes that occur in
    ``target`` or in the predictions (like sklearn without an explicit ``labels`` argument).
    Per-class recall / F1 of a class that never occurs is ``0.0``.

    Args:
        logits: class scores of shape ``(N, C)`` with ``C == num_classes``, or predicted class
            indices of shape ``(N,)`` (integer dtype).
        target: true class indices, integer tensor of shape ``(N,)`` in ``[0, num_classes)``.
        num_classes: number of classes ``C`` (at least 2).

    Returns:
        Python floats under the keys ``"accuracy"``, ``"f1_weighted"``, ``"f1_macro"`` and, for
        every class ``k``, ``f"recall_class_{k}"`` and ``f"f1_class_{k}"``.

    Raises:
        ValueError: on bad shapes, dtypes, ``num_classes < 2`` or empty inputs.
    """
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
    if target.ndim != 1:
        raise ValueError(f"`target` must have shape (N,), got {tuple(target.shape)}")
    if logits.ndim == 2:
        if logits.shape[1] != num_classes:
            raise ValueError(
                f"`logits` has {logits.shape[1]} columns but num_classes={num_classes}"
            )
        pred = logits.detach().argmax(dim=-1)
    elif logits.ndim == 1:
        if logits.is_floating_point() or logits.is_complex():
            raise ValueError("1-D `logits` must hold integer class indices, got a float tensor")
        pred = logits.detach()
    else:
        raise ValueError(f"`logits` must have shape (N, C) or (N,), got {tuple(logits.shape)}")
    if pred.shape[0] != target.shape[0]:
        raise ValueError(
            f"`logits` and `target` must have the same length, got {pred.shape[0]} and "
            f"{target.shape[0]}"
        )
    if target.numel() == 0:
        raise ValueError("classification_metrics needs at least one sample, got none")
    pred = pred.long()
    tgt = target.detach().long()

    common = {"num_classes": num_classes}
    out: dict[str, float] = {
        "accuracy": float(multiclass_accuracy(pred, tgt, average="micro", **common)),
        "f1_weighted": float(multiclass_f1_score(pred, tgt, average="weighted", **common)),
        "f1_macro": float(multiclass_f1_score(pred, tgt, average="macro", **common)),
    }
    recall = multiclass_recall(pred, tgt, average="none", **common)  # (C,)
    f1 = multiclass_f1_score(pred, tgt, average="none", **common)  # (C,)
    for k in range(num_classes):
        out[f"recall_class_{k}"] = float(recall[k])
        out[f"f1_class_{k}"] = float(f1[k])
    return out


def _first_occurrences(index: Tensor) -> Tensor:
    """Boolean ``(N,)`` mask keeping the first sample of each non-negative index value.

    Entries with index ``-1`` (unknown) are always kept.
    """
    keep = torch.ones_like(index, dtype=torch.bool)
    known = index >= 0
    if known.any():
        order = torch.argsort(index, stable=True)
        sorted_index = index[order]
        repeat = torch.zeros_like(keep)
        repeat[1:] = sorted_index[1:] == sorted_index[:-1]
        duplicate = torch.zeros_like(keep)
        duplicate[order] = repeat
        keep = ~(duplicate & known)
    return keep


class MFMMetrics(torchmetrics.Metric):
    """Epoch-level metric: accumulates predictions and targets and computes all metrics at once.

    States are lists concatenated with ``dist_reduce_fx="cat"``, so under DDP ``compute()`` sees
    the predictions of every process. For regression the states hold the raw scores (shape
    ``(N,)``); for classification they hold the predicted class indices (``argmax`` of the
    logits) and the targets, both ``(N,)`` long, which keeps memory at one number per sample.

    ``compute()`` returns ``dict[str, Tensor]`` of 0-d float tensors with the keys of
    :func:`regression_metrics` or :func:`classification_metrics` (see :attr:`names`); log it
    with ``LightningModule.log_dict(metric.compute())`` and call ``metric.reset()`` afterwards.
    Calling ``compute()`` before any sample was seen raises :class:`RuntimeError`.

    Args:
        kind: ``"regression"`` or ``"classification"``.
        num_classes: number of classes (>= 2); required for classification, ignored (may be
            ``None``) for regression.
    """

    is_differentiable = False
    higher_is_better = None  # mixed: MAE is lower-is-better, the rest higher-is-better
    full_state_update = False

    preds: list[Tensor]
    target: list[Tensor]
    index: list[Tensor]

    def __init__(self, kind: str, num_classes: int | None = None) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}")
        if kind == "classification":
            if num_classes is None:
                raise ValueError("`num_classes` is required when kind='classification'")
            if isinstance(num_classes, bool) or not isinstance(num_classes, int):
                raise ValueError(f"`num_classes` must be an int, got {num_classes!r}")
            if num_classes < 2:
                raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
        self.kind = kind
        self.num_classes = num_classes
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    @property
    def names(self) -> tuple[str, ...]:
        """Keys of the dictionary returned by :meth:`compute`, in order."""
        if self.kind == "regression":
            return REGRESSION_METRICS
        assert self.num_classes is not None
        return _classification_names(self.num_classes)

    def update(self, preds: Tensor, target: Tensor, index: Tensor | None = None) -> None:
        """Add one batch.

        Args:
            preds: regression scores of shape ``(B,)`` or ``(B, 1)``; for classification,
                logits of shape ``(B, C)`` (or predicted class indices of shape ``(B,)``).
            target: regression targets of shape ``(B,)`` or ``(B, 1)``; for classification,
                class indices of shape ``(B,)``. Missing labels (NaN, or a negative class
                index) are accepted and left out of every metric.
            index: ``(B,)`` positions of the samples in their split. When given, a sample
                seen twice counts once: a distributed sampler pads the last shard with
                repeated samples, and metrics must cover the split exactly.

        Raises:
            ValueError: on bad shapes or mismatched batch sizes.
        """
        if self.kind == "regression":
            p = _as_vector(preds, "preds").detach().float()
            t = _as_vector(target, "target").detach().float()
        else:
            assert self.num_classes is not None
            if preds.ndim == 2:
                if preds.shape[1] != self.num_classes:
                    raise ValueError(
                        f"`preds` has {preds.shape[1]} columns but num_classes={self.num_classes}"
                    )
                p = preds.detach().argmax(dim=-1)
            elif preds.ndim == 1 and not (preds.is_floating_point() or preds.is_complex()):
                p = preds.detach().long()
            else:
                raise ValueError(
                    "classification `preds` must be logits (B, C) or integer indices (B,), "
                    f"got {tuple(preds.shape)} {preds.dtype}"
                )
            if target.ndim != 1:
                raise ValueError(f"`target` must have shape (B,), got {tuple(target.shape)}")
            t = target.detach().long()
        if p.shape[0] != t.shape[0]:
            raise ValueError(
                f"`preds` and `target` batch sizes differ: {p.shape[0]} vs {t.shape[0]}"
            )
        self.preds.append(p)
        self.target.append(t)
        if index is None:
            index = torch.full((p.shape[0],), -1, dtype=torch.long, device=p.device)
        self.index.append(index.detach().long().view(-1))

    def compute(self) -> dict[str, Tensor]:
        """Compute every metric over all accumulated samples.

        Returns:
            Mapping from each name in :attr:`names` to a 0-d float tensor on the metric's
            device (``nan`` where the function returns ``nan``, e.g. Non0 metrics when every
            target is zero).

        Raises:
            RuntimeError: if no sample has been accumulated.
        """
        # After a distributed sync the states are already concatenated tensors, not lists.
        if isinstance(self.preds, list) and not self.preds:
            raise RuntimeError(
                "MFMMetrics.compute() called with no accumulated samples; call update() first"
            )
        preds = dim_zero_cat(self.preds)
        target = dim_zero_cat(self.target)
        index = dim_zero_cat(self.index)
        keep = _first_occurrences(index)
        preds, target = preds[keep], target[keep]
        if preds.numel() == 0:
            raise RuntimeError(
                "MFMMetrics.compute() called with no accumulated samples; call update() first"
            )
        # Missing labels (NaN regression targets, negative class indices) are left out.
        present = ~torch.isnan(target) if target.is_floating_point() else target >= 0
        if not bool(present.all()):
            preds, target = preds[present], target[present]
        if preds.shape[0] == 0:
            return {k: torch.tensor(math.nan, dtype=torch.get_default_dtype(),
                                    device=self.device) for k in self.names}
        if self.kind == "regression":
            values = regression_metrics(preds, target)
        else:
            assert self.num_classes is not None
            values = classification_metrics(preds, target, self.num_classes)
        return {
            k: torch.tensor(v, dtype=torch.get_default_dtype(), device=self.device)
            for k, v in values.items()
        }


class TargetMetrics(torch.nn.Module):
    """Epoch-level metrics of every named target, and their mean.

    One :class:`MFMMetrics` per target. :meth:`compute` returns, for a single target, its
    metrics under their own names (``MAE``, ``accuracy``, ...); for several targets,
    ``<target>/<metric>`` for each and, under the plain metric name, the mean over the
    targets that have that metric (NaN values left out of the mean).

    Args:
        targets: target name -> ``(kind, num_classes)``.
    """

    def __init__(self, targets: dict[str, tuple[str, int]]) -> None:
        super().__init__()
        if not targets:
            raise ValueError("TargetMetrics needs at least one target")
        self.metrics = torch.nn.ModuleDict({
            name: MFMMetrics(kind, num_classes if kind == "classification" else None)
            for name, (kind, num_classes) in targets.items()
        })

    @property
    def names(self) -> tuple[str, ...]:
        """Keys of the dictionary returned by :meth:`compute`, in order."""
        if len(self.metrics) == 1:
            return next(iter(self.metrics.values())).names
        prefixed = [f"{t}/{k}" for t, m in self.metrics.items() for k in m.names]
        pooled = dict.fromkeys(k for m in self.metrics.values() for k in m.names)
        return (*prefixed, *pooled)

    def update(self, preds: dict[str, Tensor], target: dict[str, Tensor],
               index: Tensor | None = None) -> None:
        """Add one batch: per target ``(B,)`` or ``(B, C)`` predictions and ``(B,)`` labels."""
        for name, metric in self.metrics.items():
            metric.update(preds[name], target[name], index)

    def compute(self) -> dict[str, Tensor]:
        """Every target's metrics (and their mean, for several targets); see the class."""
        if len(self.metrics) == 1:
            return next(iter(self.metrics.values())).compute()
        values: dict[str, Tensor] = {}
        pooled: dict[str, list[Tensor]] = {}
        for name, metric in self.metrics.items():
            for key, value in metric.compute().items():
                values[f"{name}/{key}"] = value
                pooled.setdefault(key, []).append(value)
        for key, group in pooled.items():
            stacked = torch.stack(group)
            finite = stacked[~torch.isnan(stacked)]
            values[key] = finite.mean() if finite.numel() else stacked[0]
        return values

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
