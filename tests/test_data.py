"""Synthetic data, specs and padding helpers."""

from __future__ import annotations

import pytest
import torch

from mfm.data import (
    Batch,
    DataError,
    MFMDataModule,
    lengths_from_padding,
    load,
    parse_spec,
    to_right_padded,
)


def test_synthetic_is_deterministic_and_shaped() -> None:
    a = load("synthetic:n_train=20,n_valid=5,n_test=5,seed=3")
    b = load("synthetic:n_train=20,n_valid=5,n_test=5,seed=3")
    c = load("synthetic:n_train=20,n_valid=5,n_test=5,seed=4")
    for name in a.info.input_sizes:
        assert torch.equal(a["train"].features[name], b["train"].features[name])
    assert not torch.equal(a["train"].features["m1"], c["train"].features["m1"])
    assert a.info.input_sizes == {"m1": 16, "m2": 8, "m3": 12}
    assert len(a["train"]) == 20 and len(a["test"]) == 5


def test_synthetic_options() -> None:
    data = load("synthetic:modalities=5,dims=3,steps=7/7/7/7/30,task=classification,"
                "num_classes=4,n_train=10,n_valid=4,n_test=4,ragged=false")
    assert list(data.info.input_sizes) == ["m1", "m2", "m3", "m4", "m5"]
    assert data.info.steps["m5"] == 30
    assert data.info.kind == "classification" and data.info.num_classes == 4
    assert data["train"].target.dtype == torch.long
    assert int(data["train"].lengths["m1"].min()) == 7


def test_synthetic_ragged_padding_is_zero() -> None:
    data = load("synthetic:n_train=30,n_valid=2,n_test=2")
    split = data["train"]
    for name, x in split.features.items():
        n = split.lengths[name]
        assert int(n.min()) < x.shape[1]  # some are ragged
        for b in range(len(split)):
            assert x[b, int(n[b]):].abs().sum() == 0
    # Aligned modalities share the per-sample length.
    assert torch.equal(split.lengths["m1"], split.lengths["m2"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nothing", "nothing: no such file or folder"),
        ("synthetic:modalities", "not of the form key=value"),
        ("synthetic:colour=red", "unknown option 'colour'"),
        ("synthetic:modalities=two", "modalities: expected an integer"),
        ("synthetic:dims=4/5", "dims: expected 1 or 3 positive integers"),
        ("synthetic:noise=-1", "noise: expected >= 0"),
        ("synthetic:task=ranking", "task: expected 'regression' or 'classification'"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load(spec)


def test_parse_spec() -> None:
    assert parse_spec("synthetic") == ("synthetic", {})
    assert parse_spec("synthetic: a=1, b=x ") == ("synthetic", {"a": "1", "b": "x"})


def test_padding_helpers() -> None:
    x = torch.tensor([[[0.0], [0.0], [1.0], [2.0]], [[3.0], [4.0], [5.0], [6.0]]])
    lengths = lengths_from_padding(x, "left")
    assert lengths.tolist() == [2, 4]
    right = to_right_padded(x, lengths, "left")
    assert right[:, :, 0].tolist() == [[1.0, 2.0, 0.0, 0.0], [3.0, 4.0, 5.0, 6.0]]
    assert lengths_from_padding(right, "right").tolist() == [2, 4]
    batch = Batch.from_padded({"a": x}, {"a": lengths}, padding="left")
    assert torch.equal(batch.inputs["a"], right)
    assert Batch.from_padded({"a": x}).lengths["a"].tolist() == [4, 4]


def test_datamodule_shuffles_by_seed() -> None:
    data = load("synthetic:n_train=40,n_valid=4,n_test=4")

    def order(seed: int) -> list[int]:
        loader = MFMDataModule(data, batch_size=8, seed=seed).train_dataloader()
        return torch.cat([b.index for b in loader]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(40))
