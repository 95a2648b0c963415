"""Tests for :mod:`mfm.metrics` against hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from mfm.metrics import (
    REGRESSION_METRICS,
    MFMMetrics,
    classification_metrics,
    regression_metrics,
)

TOL = 1e-6

# Example 1 (float64 so that MAE/Corr are exact to ~1e-15).
PREDS_1 = torch.tensor([1.2, -0.4, 0.0, 2.6, -3.4, 0.49], dtype=torch.float64)
TARGET_1 = torch.tensor([1.0, 0.0, -1.0, 3.0, -2.0, 0.5], dtype=torch.float64)


def _weighted_f1_reference(pred: list[int], truth: list[int]) -> float:
    """Plain-python sklearn-style weighted F1 (F1 per true class, weighted by its support)."""
    total = 0.0
    for c in sorted(set(truth)):
        tp = sum(p == c and t == c for p, t in zip(pred, truth, strict=True))
        fp = sum(p == c and t != c for p, t in zip(pred, truth, strict=True))
        fn = sum(p != c and t == c for p, t in zip(pred, truth, strict=True))
        f1 = 2 * tp / (2 * tp + fp + fn)
        total += truth.count(c) * f1
    return total / len(truth)


def test_regression_keys_and_types() -> None:
    out = regression_metrics(PREDS_1, TARGET_1)
    assert tuple(out) == REGRESSION_METRICS
    assert all(type(v) is float for v in out.values())


def test_has0_example_1() -> None:
    # Has0: truth = target >= 0, pred = preds >= 0 over all 6 samples.
    #   target >= 0 : [T, T, F, T, F, T]   (target[1] == 0.0 counts as positive)
    #   preds  >= 0 : [T, F, T, T, F, T]   (preds[2] == 0.0 counts as positive)
    #   match       : [y, n, n, y, y, y]  -> acc = 4/6 = 2/3
    # class 1: tp = {0,3,5} = 3, fp = {2} = 1, fn = {1} = 1 -> F1 = 2*3/(6+1+1) = 3/4, support 4
    # class 0: tp = {4} = 1,     fp = {1} = 1, fn = {2} = 1 -> F1 = 2*1/(2+1+1) = 1/2, support 2
    # weighted F1 = (4 * 3/4 + 2 * 1/2) / 6 = (3 + 1) / 6 = 2/3
    out = regression_metrics(PREDS_1, TARGET_1)
    assert out["Has0_acc_2"] == pytest.approx(2 / 3, abs=TOL)
    assert out["Has0_F1_score"] == pytest.approx(2 / 3, abs=TOL)


def test_non0_example_1() -> None:
    # Non0: drop sample 1 (target == 0) -> samples 0, 2, 3, 4, 5.
    #   target > 0 : [T, F, T, F, T]
    #   preds  > 0 : [T, F, T, F, T]   (preds[2] == 0.0 is now negative, truth is negative)
    #   all match -> acc = 1, weighted F1 = 1
    out = regression_metrics(PREDS_1, TARGET_1)
    assert out["Non0_acc_2"] == pytest.approx(1.0, abs=TOL)
    assert out["Non0_F1_score"] == pytest.approx(1.0, abs=TOL)


def test_mult_acc_example_1() -> None:
    # Mult_acc_5: clip to [-2, 2] then round half to even.
    #   preds  -> [1.2, -0.4, 0.0, 2.0, -2.0, 0.49] -> [1, 0, 0, 2, -2, 0]
    #   target -> [1.0,  0.0, -1.0, 2.0, -2.0, 0.5] -> [1, 0, -1, 2, -2, 0]  (0.5 -> 0)
    #   match  -> [y, y, n, y, y, y] -> 5/6
    # Mult_acc_7: clip to [-3, 3] then round.
    #   preds  -> [1.2, -0.4, 0.0, 2.6, -3.0, 0.49] -> [1, 0, 0, 3, -3, 0]
    #   target -> [1.0,  0.0, -1.0, 3.0, -2.0, 0.5] -> [1, 0, -1, 3, -2, 0]
    #   match  -> [y, y, n, y, n, y] -> 4/6 = 2/3
    out = regression_metrics(PREDS_1, TARGET_1)
    assert out["Mult_acc_5"] == pytest.approx(5 / 6, abs=TOL)
    assert out["Mult_acc_7"] == pytest.approx(2 / 3, abs=TOL)


def test_mae_and_corr_example_1() -> None:
    # |errors| = [0.2, 0.4, 1.0, 0.4, 1.4, 0.01] -> sum 3.41 -> MAE = 3.41 / 6
    out = regression_metrics(PREDS_1, TARGET_1)
    assert out["MAE"] == pytest.approx(3.41 / 6, abs=1e-9)
    expected_corr = np.corrcoef(PREDS_1.numpy(), TARGET_1.numpy())[0, 1]
    assert out["Corr"] == pytest.approx(float(expected_corr), abs=1e-9)


def test_float32_and_column_inputs_match() -> None:
    ref = regression_metrics(PREDS_1, TARGET_1)
    out = regression_metrics(PREDS_1.float()[:, None], TARGET_1.float()[:, None])
    for key in REGRESSION_METRICS:
        assert out[key] == pytest.approx(ref[key], abs=1e-5), key


def test_weighted_f1_example_2() -> None:
    # Example where weighted F1 differs from accuracy, for both splits.
    preds = torch.tensor([0.8, 1.0, 0.2, -0.3, -2.0, -0.1, 0.7])
    target = torch.tensor([1.0, 2.0, 0.5, 1.5, -1.0, -0.5, 0.0])
    out = regression_metrics(preds, target)
    # Non0: drop sample 6 (target 0).
    #   truth [T, T, T, T, F, F], pred [T, T, T, F, F, F] -> acc 5/6
    #   class 1: tp 3, fp 0, fn 1 -> F1 = 6/7, support 4
    #   class 0: tp 2, fp 1, fn 0 -> F1 = 4/5, support 2
    #   weighted = (4*6/7 + 2*4/5) / 6 = (24/7 + 8/5) / 6 = 176/210 = 88/105
    assert out["Non0_acc_2"] == pytest.approx(5 / 6, abs=TOL)
    assert out["Non0_F1_score"] == pytest.approx(88 / 105, abs=TOL)
    # Has0: all 7 samples.
    #   truth [T, T, T, T, F, F, T], pred [T, T, T, F, F, F, T] -> acc 6/7
    #   class 1: tp 4, fp 0, fn 1 -> F1 = 8/9, support 5
    #   class 0: tp 2, fp 1, fn 0 -> F1 = 4/5, support 2
    #   weighted = (5*8/9 + 2*4/5) / 7 = (40/9 + 8/5) / 7 = 272/315
    assert out["Has0_acc_2"] == pytest.approx(6 / 7, abs=TOL)
    assert out["Has0_F1_score"] == pytest.approx(272 / 315, abs=TOL)


def test_weighted_f1_matches_reference_random() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        preds = torch.randn(40, generator=gen) * 2
        target = torch.round(torch.randn(40, generator=gen) * 2)  # many exact zeros
        out = regression_metrics(preds, target)
        has0 = _weighted_f1_reference((preds >= 0).long().tolist(), (target >= 0).long().tolist())
        keep = target != 0
        non0 = _weighted_f1_reference(
            (preds[keep] > 0).long().tolist(), (target[keep] > 0).long().tolist()
        )
        assert out["Has0_F1_score"] == pytest.approx(has0, abs=1e-5)
        assert out["Non0_F1_score"] == pytest.approx(non0, abs=1e-5)


def test_rounding_is_half_to_even() -> None:
    # preds  [2.5, -0.5, 1.5, -2.5] -> round half to even -> [2, 0, 2, -2]
    # target [2.0,  0.0, 2.0, -2.0] -> all match for Mult_acc_7 (no clipping needed)
    # For Mult_acc_5 the clip to [-2, 2] happens first: 2.5 -> 2, -2.5 -> -2 -> all match too.
    preds = torch.tensor([2.5, -0.5, 1.5, -2.5])
    target = torch.tensor([2.0, 0.0, 2.0, -2.0])
    out = regression_metrics(preds, target)
    assert out["Mult_acc_7"] == pytest.approx(1.0)
    assert out["Mult_acc_5"] == pytest.approx(1.0)
    # 3.5 rounds to 4 but clipping to [-3, 3] first gives 3.
    out = regression_metrics(torch.tensor([3.5, 0.5]), torch.tensor([3.0, 1.0]))
    # sample 0: 3 == 3, sample 1: round(0.5) = 0 != 1 -> 1/2
    assert out["Mult_acc_7"] == pytest.approx(0.5)


def test_non0_all_zero_targets_is_nan() -> None:
    out = regression_metrics(torch.tensor([0.3, -0.2, 0.0]), torch.zeros(3))
    assert math.isnan(out["Non0_acc_2"])
    assert math.isnan(out["Non0_F1_score"])
    # Has0 is still defined: every target counts as positive; preds >= 0: [T, F, T] -> 2/3.
    assert out["Has0_acc_2"] == pytest.approx(2 / 3, abs=TOL)


def test_constant_preds_corr_zero_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = regression_metrics(torch.full((6,), 0.7), TARGET_1.float())
        assert out["Corr"] == 0.0
        out = regression_metrics(PREDS_1, torch.full((6,), -1.0, dtype=torch.float64))
        assert out["Corr"] == 0.0
        out = regression_metrics(torch.tensor([0.1]), torch.tensor([0.2]))
        assert out["Corr"] == 0.0


def test_regression_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        regression_metrics(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        regression_metrics(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="at least one"):
        regression_metrics(torch.zeros(0), torch.zeros(0))


# 3-class example:
#   idx    : 0  1  2  3  4  5  6  7
#   target : 0  0  0  1  1  2  2  2
#   pred   : 0  0  1  1  2  2  2  1
#   correct: y  y  n  y  n  y  y  n  -> accuracy 5/8
# class 0: tp 2 (0,1), fp 0,        fn 1 (2) -> recall 2/3, F1 = 4/(4+0+1) = 4/5, support 3
# class 1: tp 1 (3),   fp 2 (2,7),  fn 1 (4) -> recall 1/2, F1 = 2/(2+2+1) = 2/5, support 2
# class 2: tp 2 (5,6), fp 1 (4),    fn 1 (7) -> recall 2/3, F1 = 4/(4+1+1) = 2/3, support 3
# weighted F1 = (3*4/5 + 2*2/5 + 3*2/3) / 8 = (12/5 + 4/5 + 2) / 8 = (26/5) / 8 = 13/20
# macro F1    = (4/5 + 2/5 + 2/3) / 3 = (12 + 6 + 10) / 15 / 3 = 28/45
CLS_TARGET = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
CLS_PRED = torch.tensor([0, 0, 1, 1, 2, 2, 2, 1])
CLS_EXPECTED = {
    "accuracy": 5 / 8,
    "f1_weighted": 13 / 20,
    "f1_macro": 28 / 45,
    "recall_class_0": 2 / 3,
    "f1_class_0": 4 / 5,
    "recall_class_1": 1 / 2,
    "f1_class_1": 2 / 5,
    "recall_class_2": 2 / 3,
    "f1_class_2": 2 / 3,
}


def _logits_for(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Random-looking logits of shape (N, C) whose argmax is ``pred``."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(pred.shape[0], num_classes, generator=gen)
    logits[torch.arange(pred.shape[0]), pred] = 10.0
    return logits


def test_classification_hand_computed() -> None:
    out = classification_metrics(_logits_for(CLS_PRED, 3), CLS_TARGET, 3)
    assert list(out) == list(CLS_EXPECTED)
    for key, value in CLS_EXPECTED.items():
        assert out[key] == pytest.approx(value, abs=TOL), key
    # Predicted indices (N,) give the same numbers.
    assert classification_metrics(CLS_PRED, CLS_TARGET, 3) == pytest.approx(out)


def test_classification_weighted_f1_matches_reference() -> None:
    out = classification_metrics(CLS_PRED, CLS_TARGET, 3)
    ref = _weighted_f1_reference(CLS_PRED.tolist(), CLS_TARGET.tolist())
    assert out["f1_weighted"] == pytest.approx(ref, abs=TOL)


def test_classification_bad_inputs() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        classification_metrics(CLS_PRED, CLS_TARGET, 1)
    with pytest.raises(ValueError, match="columns"):
        classification_metrics(torch.randn(8, 4), CLS_TARGET, 3)
    with pytest.raises(ValueError, match="integer"):
        classification_metrics(CLS_PRED.float(), CLS_TARGET, 3)
    with pytest.raises(ValueError, match="same length"):
        classification_metrics(CLS_PRED[:5], CLS_TARGET, 3)


def test_mfm_metrics_regression_accumulates() -> None:
    metric = MFMMetrics("regression")
    assert metric.names == REGRESSION_METRICS
    metric.update(PREDS_1[:4].float(), TARGET_1[:4].float())
    metric.update(PREDS_1[4:].float()[:, None], TARGET_1[4:].float()[:, None])
    out = metric.compute()
    ref = regression_metrics(PREDS_1.float(), TARGET_1.float())
    assert tuple(out) == metric.names
    for key in REGRESSION_METRICS:
        assert out[key].ndim == 0 and out[key].is_floating_point()
        assert float(out[key]) == pytest.approx(ref[key], abs=1e-6), key


def test_mfm_metrics_classification_accumulates_and_resets() -> None:
    logits = _logits_for(CLS_PRED, 3)
    metric = MFMMetrics("classification", num_classes=3)
    metric.update(logits[:3], CLS_TARGET[:3])
    metric.update(logits[3:], CLS_TARGET[3:])
    out = metric.compute()
    assert tuple(out) == metric.names == tuple(CLS_EXPECTED)
    for key, value in CLS_EXPECTED.items():
        assert out[key].ndim == 0
        assert float(out[key]) == pytest.approx(value, abs=TOL), key
    metric.reset()
    metric.update(logits[:4], CLS_TARGET[:4])
    after_reset = metric.compute()
    ref = classification_metrics(logits[:4], CLS_TARGET[:4], 3)
    for key, value in ref.items():
        assert float(after_reset[key]) == pytest.approx(value, abs=TOL), key


def test_mfm_metrics_nan_passthrough() -> None:
    metric = MFMMetrics("regression")
    metric.update(torch.tensor([0.5, -0.5]), torch.zeros(2))
    out = metric.compute()
    assert torch.isnan(out["Non0_acc_2"]) and torch.isnan(out["Non0_F1_score"])


def test_mfm_metrics_construction_errors() -> None:
    with pytest.raises(ValueError, match="kind"):
        MFMMetrics("ranking")
    with pytest.raises(ValueError, match="required"):
        MFMMetrics("classification")
    with pytest.raises(ValueError, match=">= 2"):
        MFMMetrics("classification", num_classes=1)


def test_mfm_metrics_update_errors() -> None:
    metric = MFMMetrics("classification", num_classes=3)
    with pytest.raises(ValueError, match="columns"):
        metric.update(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch sizes"):
        metric.update(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
    reg = MFMMetrics("regression")
    with pytest.raises(ValueError, match="shape"):
        reg.update(torch.randn(4, 2), torch.randn(4, 2))


def test_mfm_metrics_compute_empty_raises() -> None:
    metric = MFMMetrics("regression")
    with warnings.catch_warnings():
        # torchmetrics itself warns that compute() was called before update().
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="no accumulated samples"):
            metric.compute()


def test_repeated_indices_count_once() -> None:
    """A distributed sampler repeats samples to even out shards; metrics must not."""
    preds = torch.tensor([1.0, -1.0, 2.0, 0.5])
    target = torch.tensor([1.0, -2.0, 1.5, -0.5])
    once = MFMMetrics("regression")
    once.update(preds, target, torch.arange(4))
    padded = MFMMetrics("regression")
    padded.update(preds[:3], target[:3], torch.tensor([0, 1, 2]))
    padded.update(torch.tensor([0.5, 1.0]), torch.tensor([-0.5, 1.0]), torch.tensor([3, 0]))
    a, b = once.compute(), padded.compute()
    assert all(torch.equal(a[k], b[k]) for k in a)
