"""Several named targets and missing labels: data, loss, weighting, metrics and outputs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mfm.config import DataConfig, MFMConfig
from mfm.data import DataError, load
from mfm.data.batch import Batch
from mfm.data.prepare import prepare
from mfm.data.raw import RawData, RawSplit
from mfm.engine import MFMModule
from mfm.losses.objective import objective_terms, prediction_loss
from mfm.metrics import MFMMetrics, TargetMetrics, classification_metrics, regression_metrics
from mfm.model import MFM
from mfm.run import evaluate, export, fit, predict
from mfm.run import prepare as prepare_run
from tests.test_engine import TINY

MULTI = "synthetic:n_train=64,n_valid=16,n_test=16,steps=6,dims=3/2,modalities=2,targets=3," \
        "noise_targets=1,missing_labels=0.25"


def multi_config(**loss: object) -> MFMConfig:
    return MFMConfig.from_dict({**TINY, "data": {"spec": MULTI}, "loss": loss})


def raw_with_labels(labels: np.ndarray, targets: dict[str, np.ndarray] | None = None) -> RawData:
    rng = np.random.default_rng(0)
    n = labels.shape[0]
    split = RawSplit(features={"a": rng.standard_normal((n, 4, 2)).astype(np.float32)},
                     labels=labels, targets=targets or {})
    return RawData(source="toy.npz", splits={"train": split, "valid": split, "test": split})


# --- data -------------------------------------------------------------------------------


def test_synthetic_targets_are_named_and_missing_labels_are_nan() -> None:
    data = load(MULTI)
    assert list(data.info.targets) == ["y1", "y2", "noise1"]
    assert all(kind == ("regression", 1) for kind in data.info.targets.values())
    train = data["train"]
    assert train.targets is not None
    for values in train.targets.values():
        missing = torch.isnan(values).float().mean()
        assert 0.05 < float(missing) < 0.5
    batch = train.collate(range(16))
    assert batch.label_counts == {k: int((~torch.isnan(v)).sum())
                                  for k, v in batch.targets.items()}  # type: ignore[union-attr]


def test_target_selection_names_columns_sources_and_aliases() -> None:
    labels = np.array([[0.5, 1.0, -1.0], [1.5, np.nan, 2.0], [0.0, 3.0, 1.0]], np.float32)
    extra = {"regression_labels_T": np.array([1.0, 2.0, np.nan], np.float32)}
    data = prepare(raw_with_labels(labels, extra),
                   DataConfig(target="all", normalize=False))
    assert list(data.info.targets) == ["y0", "y1", "y2"]
    assert torch.isnan(data["train"].targets["y1"][1])  # type: ignore[index]
    data = prepare(raw_with_labels(labels, extra),
                   DataConfig(target="M=0,T=regression_labels_T", normalize=False))
    assert list(data.info.targets) == ["M", "T"]
    np.testing.assert_allclose(data["train"].targets["M"].numpy(),  # type: ignore[index]
                               labels[:, 0])
    with pytest.raises(DataError, match="no such target"):
        prepare(raw_with_labels(labels), DataConfig(target="regression_labels_V"))
    with pytest.raises(DataError, match="repeat"):
        prepare(raw_with_labels(labels), DataConfig(target="a=0,a=1"))


def test_missing_class_labels_are_minus_one_and_infinite_labels_refused() -> None:
    labels = np.array([0.0, 2.0, np.nan, 1.0])
    data = prepare(raw_with_labels(labels), DataConfig(label="classes", normalize=False))
    assert data["train"].target.tolist() == [0, 2, -1, 1]  # type: ignore[union-attr]
    assert data.info.targets["label"] == ("classification", 3)
    onehot = np.array([[1, 0], [np.nan, np.nan], [0, 1]], np.float64)
    data = prepare(raw_with_labels(onehot), DataConfig(normalize=False))
    assert data["train"].target.tolist() == [0, -1, 1]  # type: ignore[union-attr]
    with pytest.raises(DataError, match=r"toy.npz: train/labels: 1 infinite labels"):
        prepare(raw_with_labels(np.array([0.0, np.inf, 1.0])), DataConfig())
    with pytest.raises(DataError, match="no sample has a label"):
        prepare(raw_with_labels(np.array([np.nan, np.nan])), DataConfig())


# --- loss -------------------------------------------------------------------------------


def test_masked_prediction_loss_is_the_mean_over_valid_labels() -> None:
    prediction = torch.tensor([0.0, 1.0, 2.0, 4.0])
    target = torch.tensor([1.0, float("nan"), 2.5, float("nan")])
    spec = MFMConfig().model.output
    assert float(prediction_loss(prediction, target, spec)) == pytest.approx((1.0 + 0.5) / 2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    classes = torch.tensor([0, -1, 1])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], classes[[0, 2]])
    spec_c = MFMConfig().model.output.__class__(kind="classification", size=2)
    assert float(prediction_loss(logits, classes, spec_c)) == pytest.approx(float(expected))
    # No valid label at all: 0, finite, and zero gradient.
    prediction.requires_grad_(True)
    loss = prediction_loss(prediction, torch.full((4,), float("nan")), spec)
    loss.backward()
    assert float(loss.detach()) == 0.0 and prediction.grad is not None
    assert torch.equal(prediction.grad, torch.zeros(4))


def _module_and_data(**loss: object) -> tuple[MFMModule, object]:
    config, data = prepare_run(multi_config(**loss))
    torch.manual_seed(0)
    return MFMModule(config.to_dict(), data.info.input_sizes), data


def test_a_batch_without_labels_for_a_target_leaves_its_uncertainty_parameter_alone() -> None:
    module, data = _module_and_data(weighting="uncertainty", weighted_terms=["pred"])
    weighting = module.weighting
    assert weighting.names == ("pred_y1", "pred_y2", "pred_noise1")
    optimizer = module.configure_optimizers()["optimizer"]
    batch = data["train"].collate(range(16))  # type: ignore[attr-defined]

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        output = module(batch)
        terms = objective_terms(output, batch.inputs, batch.lengths, batch.targets,
                                module.config.loss, module.targets, counts=batch.counts())
        total, _ = module.weighting({k: v for k, v in terms.items() if k != "loss"})
        total.backward()
        optimizer.step()
        return terms

    step(batch)  # every target has labels: Adam now has momentum for every parameter
    batch.targets["y2"] = torch.full_like(batch.targets["y2"], float("nan"))
    batch.label_counts = None  # counted again from the labels
    before = [p.detach().clone() for p in weighting.log_vars]
    terms = step(batch)
    assert "pred_y2" not in terms and "pred_y1" in terms
    assert all(torch.isfinite(v) for v in terms.values())
    grads = [p.grad for p in module.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    after = list(weighting.log_vars)
    assert torch.equal(after[1].detach(), before[1])  # y2: untouched
    assert not torch.equal(after[0].detach(), before[0])  # y1: trained


def test_objective_names_one_term_per_target_and_skips_empty_ones() -> None:
    module, data = _module_and_data()
    batch = data["train"].collate(range(16))  # type: ignore[attr-defined]
    output = module(batch)
    counts = dict(batch.counts(), noise1=0)
    terms = objective_terms(output, batch.inputs, batch.lengths, batch.targets,
                            module.config.loss, module.targets, counts=counts)
    assert {"pred_y1", "pred_y2"} <= set(terms) and "pred_noise1" not in terms
    assert module.term_names()[:3] == ["pred_y1", "pred_y2", "pred_noise1"]


# --- metrics ----------------------------------------------------------------------------


def test_masked_metrics_equal_metrics_on_the_valid_subset() -> None:
    generator = torch.Generator().manual_seed(0)
    preds = torch.randn(40, generator=generator)
    target = (preds + 0.5 * torch.randn(40, generator=generator)).clamp(-3, 3)
    missing = torch.rand(40, generator=generator) < 0.3
    metric = MFMMetrics("regression")
    metric.update(preds[:20], torch.where(missing, float("nan"), target)[:20])
    metric.update(preds[20:], torch.where(missing, float("nan"), target)[20:])
    got = {k: float(v) for k, v in metric.compute().items()}
    expected = regression_metrics(preds[~missing], target[~missing])
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)

    logits = torch.randn(30, 3, generator=generator)
    classes = torch.randint(0, 3, (30,), generator=generator)
    gone = torch.rand(30, generator=generator) < 0.3
    metric = MFMMetrics("classification", 3)
    metric.update(logits, torch.where(gone, -1, classes))
    got = {k: float(v) for k, v in metric.compute().items()}
    expected = classification_metrics(logits[~gone], classes[~gone], 3)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_target_metrics_report_each_target_and_their_mean() -> None:
    metrics = TargetMetrics({"a": ("regression", 1), "b": ("regression", 1)})
    pred = {"a": torch.tensor([0.0, 1.0, 2.0]), "b": torch.tensor([1.0, 1.0, 1.0])}
    truth = {"a": torch.tensor([0.5, 1.0, float("nan")]), "b": torch.tensor([0.0, 2.0, 1.0])}
    metrics.update(pred, truth)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["a/MAE"] == pytest.approx(0.25)
    assert values["b/MAE"] == pytest.approx(2 / 3)
    assert values["MAE"] == pytest.approx((0.25 + 2 / 3) / 2)
    assert set(metrics.names) == set(values)
    # A target with no label at all reports NaN and is left out of the mean.
    empty = TargetMetrics({"a": ("regression", 1), "b": ("regression", 1)})
    empty.update(pred, {"a": truth["a"], "b": torch.full((3,), float("nan"))})
    values = {k: float(v) for k, v in empty.compute().items()}
    assert math.isnan(values["b/MAE"]) and values["MAE"] == pytest.approx(0.25)


# --- whole runs -------------------------------------------------------------------------


def test_fit_and_predict_with_several_targets(tmp_path: Path) -> None:
    result = fit(multi_config(weighting="uncertainty"), tmp_path / "run", progress=False)
    for key in ("y1/MAE", "y2/MAE", "noise1/MAE", "MAE", "valid/y1/Corr"):
        assert key in result.metrics and result.metrics[key] == result.metrics[key]
    assert result.metrics["MAE"] == pytest.approx(
        (result.metrics["y1/MAE"] + result.metrics["y2/MAE"] + result.metrics["noise1/MAE"]) / 3)
    with (tmp_path / "run" / "logs" / "metrics.csv").open() as handle:
        header = next(csv.reader(handle))
    assert {"weight/pred_y1", "train/pred_noise1", "valid/pred"} <= set(header)
    folder = export(result.best_checkpoint, tmp_path / "model")
    restored = MFM.from_pretrained(folder)
    assert list(restored.heads) == ["y1", "y2", "noise1"]
    assert evaluate(folder) == pytest.approx(evaluate(result.best_checkpoint), abs=1e-6)
    out = predict(result.best_checkpoint, tmp_path / "p.csv", progress=False)
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16
    assert {"y1:target", "y1:prediction", "noise1:prediction"} <= set(rows[0])
    assert any(r["y1:target"] == "" for r in rows)  # missing labels are empty cells
