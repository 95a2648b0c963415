"""Round trips through :func:`mfm.data.load` (reader + validation pipeline) for every format.

Each test writes a small data set the way its producer writes it (generic ``.npz``, an MFN
h5 folder, MMSA and MultiBench pickles), loads it and checks every array that comes out:

* features are right-padded (each sample's valid steps first, in order, zeros after) and,
  with ``normalize=False``, equal to the input values at valid steps;
* lengths (given or inferred from zero padding), labels (``long`` for classes, ``float``
  for regression), ids, the modality selection and order, ``target`` selection;
* normalisation: statistics fitted on the training split's valid steps only, applied to
  every split, and given statistics applied instead of refitting.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from mfm.config import DataConfig
from mfm.data import DataError, DataWarning, MultimodalData, MultimodalSplit, load
from mfm.data.formats.npz import write_npz
from mfm.data.raw import RawData, RawSplit

SPLITS = ("train", "valid", "test")
SIZES = {"train": 7, "valid": 4, "test": 5}


# ----------------------------------------------------------------------------- helpers


def _values(rng: np.random.Generator, shape: tuple[int, ...], offset: float = 0.0) -> np.ndarray:
    """Random float32 values that are never zero (a zero step would look like padding)."""
    magnitude = rng.uniform(0.5, 2.0, size=shape)
    sign = rng.choice([-1.0, 1.0], size=shape)
    return (offset + magnitude * sign).astype(np.float32)


def _lengths(
    rng: np.random.Generator, n: int, steps: int, *, allow_zero: bool = True
) -> np.ndarray:
    """Ragged lengths in ``[0 or 1, steps]``; the first sample is full, the second empty."""
    low = 0 if allow_zero else 1
    lengths = rng.integers(low, steps + 1, size=n)
    lengths[0] = steps
    if allow_zero and n > 1:
        lengths[1] = 0
    return lengths.astype(np.int64)


def _pad(valid: list[np.ndarray], steps: int, side: str, fill: Any = 0.0) -> np.ndarray:
    """Stack per-sample valid steps ``(n_i, d)`` into ``(N, steps, d)`` padded on ``side``.

    ``fill``: ``0.0`` for zero padding, or a generator to fill padding with garbage.
    """
    dim = valid[0].shape[1]
    out = np.zeros((len(valid), steps, dim), dtype=np.float32)
    for i, v in enumerate(valid):
        if isinstance(fill, np.random.Generator):
            out[i] = _values(fill, (steps, dim), offset=50.0)
        n = v.shape[0]
        if side == "left":
            out[i, steps - n:] = v
            if not isinstance(fill, np.random.Generator):
                out[i, : steps - n] = 0.0
        else:
            out[i, :n] = v
    return out


def _right_padded(valid: list[np.ndarray], steps: int) -> np.ndarray:
    """What the pipeline must return: valid steps first, zeros after."""
    return _pad(valid, steps, "right")


def _ragged(rng: np.random.Generator, lengths: np.ndarray, dim: int,
            offset: float = 0.0) -> list[np.ndarray]:
    return [_values(rng, (int(n), dim), offset) for n in lengths]


def _assert_features(split: MultimodalSplit, name: str, valid: list[np.ndarray],
                     steps: int) -> None:
    """Features of ``name`` are right-padded and equal the valid input steps."""
    x = split.features[name]
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (len(valid), steps, valid[0].shape[1])
    np.testing.assert_array_equal(x.numpy(), _right_padded(valid, steps))
    n = split.lengths[name]
    assert n.dtype == torch.int64
    assert n.tolist() == [v.shape[0] for v in valid]


def _assert_regression(split: MultimodalSplit, labels: np.ndarray) -> None:
    assert split.target is not None
    assert split.target.dtype == torch.float32
    np.testing.assert_allclose(split.target.numpy(), labels.reshape(-1).astype(np.float32))


def _assert_classes(split: MultimodalSplit, classes: np.ndarray) -> None:
    assert split.target is not None
    assert split.target.dtype == torch.int64
    assert split.target.tolist() == classes.tolist()


def _raw_cfg(path: Path, **options: Any) -> DataConfig:
    return DataConfig(spec=str(path), normalize=False, **options)


# ------------------------------------------------------------------- generic npz format


def _npz_data(rng: np.random.Generator, side: str, explicit: bool) -> dict[str, Any]:
    """Per split: ``audio`` (N, 6, 3) and ``video`` (N, 4, 2) ragged sequences padded on
    ``side`` (different padded lengths, so lengths are inferred per modality), a static
    ``static`` (N, 5) modality, regression labels and string ids.

    ``explicit``: store ``<modality>.lengths`` and fill the padding with garbage (which
    the given lengths must exclude); otherwise pad with zeros.
    """
    data: dict[str, Any] = {}
    for split in SPLITS:
        n = SIZES[split]
        entry: dict[str, Any] = {"valid": {}, "arrays": {}}
        for name, steps, dim in (("audio", 6, 3), ("video", 4, 2)):
            lengths = _lengths(rng, n, steps)
            valid = _ragged(rng, lengths, dim)
            entry["valid"][name] = (valid, steps)
            fill: Any = rng if explicit else 0.0
            entry["arrays"][name] = _pad(valid, steps, side, fill)
            if explicit:
                entry["arrays"][f"{name}.lengths"] = lengths
        static = _values(rng, (n, 5))
        entry["valid"]["static"] = ([row[None, :] for row in static], 1)
        entry["arrays"]["static"] = static
        entry["arrays"]["labels"] = rng.normal(size=n).astype(np.float32)
        entry["arrays"]["ids"] = np.array([f"{split}-clip-{i:02d}" for i in range(n)])
        data[split] = entry
    return data


def _check_npz(data: MultimodalData, expected: dict[str, Any]) -> None:
    assert list(data.info.input_sizes) == ["audio", "video", "static"]
    assert data.info.input_sizes == {"audio": 3, "video": 2, "static": 5}
    assert data.info.steps == {"audio": 6, "video": 4, "static": 1}
    assert data.info.kind == "regression" and data.info.num_classes == 1
    assert data.normalization is None
    for split_name in SPLITS:
        split = data[split_name]
        entry = expected[split_name]
        assert len(split) == SIZES[split_name]
        assert list(split.features) == ["audio", "video", "static"]
        for name, (valid, steps) in entry["valid"].items():
            _assert_features(split, name, valid, steps)
        _assert_regression(split, entry["arrays"]["labels"])
        assert split.ids == [str(s) for s in entry["arrays"]["ids"]]


@pytest.mark.parametrize("explicit", [True, False], ids=["lengths", "inferred"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_npz_single_file(tmp_path: Path, side: str, explicit: bool) -> None:
    expected = _npz_data(np.random.default_rng(0), side, explicit)
    arrays = {f"{s}/{k}": v for s in SPLITS for k, v in expected[s]["arrays"].items()}
    if side == "left":
        arrays["padding"] = np.array("left")  # right is the default
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    data = load(_raw_cfg(path))
    assert data.info.name == "mine"
    _check_npz(data, expected)


@pytest.mark.parametrize("explicit", [True, False], ids=["lengths", "inferred"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_npz_folder(tmp_path: Path, side: str, explicit: bool) -> None:
    expected = _npz_data(np.random.default_rng(1), side, explicit)
    folder = tmp_path / "features"
    folder.mkdir()
    for split in SPLITS:
        arrays = dict(expected[split]["arrays"])
        arrays["padding"] = np.array(side)
        np.savez_compressed(folder / f"{split}.npz", **arrays)
    data = load(_raw_cfg(folder))
    assert data.info.name == "features"
    _check_npz(data, expected)
    # A bare string spec reads the same (with normalisation on by default).
    assert load(str(folder)).normalization is not None


def test_npz_written_by_write_npz(tmp_path: Path) -> None:
    """``write_npz`` (used by ``mfm data build-avmnist``) writes what ``load`` reads back."""
    rng = np.random.default_rng(2)
    splits = {}
    valid_steps = {}
    for split in SPLITS:
        n = SIZES[split]
        lengths = _lengths(rng, n, 5)
        valid = _ragged(rng, lengths, 2)
        valid_steps[split] = valid
        splits[split] = RawSplit(
            features={"seq": _pad(valid, 5, "left", rng)},
            lengths={"seq": lengths},
            labels=rng.integers(0, 4, size=n),
            ids=[f"id{i}" for i in range(n)],
        )
    path = tmp_path / "sub" / "written.npz"
    write_npz(RawData("memory", splits, padding="left", name="x"), path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["written.npz"]  # no temp file
    data = load(_raw_cfg(path))
    assert data.info.kind == "classification"
    for split in SPLITS:
        _assert_features(data[split], "seq", valid_steps[split], 5)
        _assert_classes(data[split], np.asarray(splits[split].labels))
        assert data[split].ids == splits[split].ids


def test_npz_shared_padded_length_keeps_one_timeline(tmp_path: Path) -> None:
    """Modalities with the same padded length (word-aligned) share inferred lengths: a step
    is padding only where every modality is zero."""
    rng = np.random.default_rng(3)
    arrays: dict[str, np.ndarray] = {}
    expected: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        n = SIZES[split]
        lengths = _lengths(rng, n, 6)
        a = _pad(_ragged(rng, lengths, 3), 6, "right")
        b = _pad(_ragged(rng, lengths, 2), 6, "right")
        # Sample 0: b is zero on its last two steps, where a is not; they stay valid.
        b[0, 4:] = 0.0
        arrays.update({f"{split}/a": a, f"{split}/b": b,
                       f"{split}/labels": rng.normal(size=n).astype(np.float32)})
        expected[split] = (a, b, lengths)
    path = tmp_path / "aligned.npz"
    np.savez(path, **arrays)
    data = load(_raw_cfg(path))
    for split in SPLITS:
        a, b, lengths = expected[split]
        assert data[split].lengths["a"].tolist() == lengths.tolist()
        assert data[split].lengths["b"].tolist() == lengths.tolist()
        np.testing.assert_array_equal(data[split].features["a"].numpy(), a)
        np.testing.assert_array_equal(data[split].features["b"].numpy(), b)


def test_npz_modalities_subset_and_order(tmp_path: Path) -> None:
    expected = _npz_data(np.random.default_rng(4), "right", True)
    path = tmp_path / "mine.npz"
    np.savez(path, **{f"{s}/{k}": v for s in SPLITS for k, v in expected[s]["arrays"].items()})
    data = load(_raw_cfg(path, modalities=["static", "audio"]))
    assert list(data.info.input_sizes) == ["static", "audio"]
    assert data.info.input_sizes == {"static": 5, "audio": 3}
    for split in SPLITS:
        assert list(data[split].features) == ["static", "audio"]
        assert list(data[split].lengths) == ["static", "audio"]
        for name in ("static", "audio"):
            valid, steps = expected[split]["valid"][name]
            _assert_features(data[split], name, valid, steps)


def test_npz_label_column_and_integer_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        n = SIZES[split]
        arrays[f"{split}/x"] = _values(rng, (n, 3, 2))
        arrays[f"{split}/labels"] = rng.normal(size=(n, 3)).astype(np.float64)
    path = tmp_path / "multi.npz"
    np.savez(path, **arrays)
    data = load(_raw_cfg(path, target="2"))
    assert data.info.kind == "regression"
    for split in SPLITS:
        _assert_regression(data[split], arrays[f"{split}/labels"][:, 2])
    # Integer labels -> classes; the class count covers every split.
    for split in SPLITS:
        arrays[f"{split}/labels"] = np.arange(SIZES[split]) % 3
    arrays["test/labels"][-1] = 4
    np.savez(path, **arrays)
    data = load(_raw_cfg(path))
    assert data.info.kind == "classification" and data.info.num_classes == 5
    for split in SPLITS:
        _assert_classes(data[split], arrays[f"{split}/labels"])


# ---------------------------------------------------------------------------- MFN h5


MFN_MODALITIES = {"audio": 3, "video": 4, "text": 5}
MFN_STEPS = 6


def _write_d1(path: Path, value: np.ndarray) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("d1", data=value)


def _mfn_folder(
    folder: Path,
    rng: np.random.Generator,
    *,
    side: str = "left",
    labels: str = "onehot",
    skip: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Write an MFN release folder: word-aligned ``audio``, ``video`` and text embeddings
    (``text_<split>_emb.h5``) sharing per-sample lengths, padded with zero steps on
    ``side``; labels ``onehot`` (N, 3) or a ``scale`` (N, 1) in [1, 5].

    ``skip``: ``(modality, split)`` whose file is not written.
    """
    folder.mkdir()
    expected: dict[str, Any] = {}
    for split in SPLITS:
        n = SIZES[split]
        lengths = _lengths(rng, n, MFN_STEPS, allow_zero=False)
        entry: dict[str, Any] = {"lengths": lengths, "valid": {}}
        for name, dim in MFN_MODALITIES.items():
            valid = _ragged(rng, lengths, dim)
            entry["valid"][name] = valid
            if skip == (name, split):
                continue
            file = f"text_{split}_emb.h5" if name == "text" else f"{name}_{split}.h5"
            _write_d1(folder / file, _pad(valid, MFN_STEPS, side))
        if labels == "onehot":
            classes = np.arange(n) % 3
            rng.shuffle(classes)
            y = np.eye(3, dtype=np.float32)[classes]
            entry["classes"] = classes
        else:
            y = rng.uniform(1.0, 5.0, size=(n, 1))
            y[0, 0] = 3.5  # the threshold itself is class 1
            y[1, 0] = 3.4999
            entry["scale"] = y
        _write_d1(folder / f"y_{split}.h5", y)
        expected[split] = entry
    return expected


def test_mfn_leading_zeros_and_onehot_labels(tmp_path: Path) -> None:
    folder = tmp_path / "youtube"
    expected = _mfn_folder(folder, np.random.default_rng(10))
    data = load(_raw_cfg(folder))
    assert data.info.name == "youtube"
    assert data.info.kind == "classification" and data.info.num_classes == 3
    assert data.info.input_sizes == MFN_MODALITIES
    assert data.info.steps == dict.fromkeys(MFN_MODALITIES, MFN_STEPS)
    for split in SPLITS:
        for name in MFN_MODALITIES:
            _assert_features(data[split], name, expected[split]["valid"][name], MFN_STEPS)
        _assert_classes(data[split], expected[split]["classes"])


def test_mfn_modalities_subset_and_order(tmp_path: Path) -> None:
    folder = tmp_path / "mmmo"
    expected = _mfn_folder(folder, np.random.default_rng(11))
    data = load(_raw_cfg(folder, modalities=["text", "audio"]))
    assert list(data.info.input_sizes) == ["text", "audio"]
    for split in SPLITS:
        assert list(data[split].features) == ["text", "audio"]
        for name in ("text", "audio"):
            _assert_features(data[split], name, expected[split]["valid"][name], MFN_STEPS)


def test_mfn_scale_with_threshold(tmp_path: Path) -> None:
    folder = tmp_path / "mmmo"
    expected = _mfn_folder(folder, np.random.default_rng(12), labels="scale")
    data = load(_raw_cfg(folder, threshold=3.5))
    assert data.info.kind == "classification" and data.info.num_classes == 2
    for split in SPLITS:
        scale = expected[split]["scale"].reshape(-1)
        _assert_classes(data[split], (scale >= 3.5).astype(np.int64))
        assert data[split].target.tolist()[:2] == [1, 0]
    # Without the threshold the same file is a regression target.
    data = load(_raw_cfg(folder))
    assert data.info.kind == "regression"
    for split in SPLITS:
        _assert_regression(data[split], expected[split]["scale"])


def test_mfn_text_missing_for_train(tmp_path: Path) -> None:
    folder = tmp_path / "moud"
    expected = _mfn_folder(folder, np.random.default_rng(13), skip=("text", "train"))
    assert not (folder / "text_train_emb.h5").exists()
    with pytest.warns(DataWarning, match=r"text missing from the train split") as record:
        data = load(_raw_cfg(folder))
    assert any(str(folder) in str(w.message) for w in record)
    assert data.info.input_sizes == MFN_MODALITIES  # text's size from the other splits
    train = data["train"]
    assert train.lengths["text"].tolist() == [0] * SIZES["train"]
    assert train.features["text"].shape == (SIZES["train"], MFN_STEPS, 5)
    assert not train.features["text"].any()
    assert data.report.absent == {"train": ["text"]}
    for name in ("audio", "video"):
        _assert_features(train, name, expected["train"]["valid"][name], MFN_STEPS)
    for split in ("valid", "test"):
        for name in MFN_MODALITIES:
            _assert_features(data[split], name, expected[split]["valid"][name], MFN_STEPS)


def test_mfn_trailing_zeros_match_leading_zeros(tmp_path: Path) -> None:
    """MFN folders are read with ``padding="auto"``: either side is recognised."""
    leading = load(_raw_cfg(_folder_of(tmp_path / "leading", "left")))
    trailing = load(_raw_cfg(_folder_of(tmp_path / "trailing", "right")))
    for split in SPLITS:
        for name in MFN_MODALITIES:
            assert torch.equal(leading[split].lengths[name], trailing[split].lengths[name])
            assert torch.equal(leading[split].features[name], trailing[split].features[name])
        assert torch.equal(leading[split].target, trailing[split].target)
    # And both are the valid steps, right-padded.
    expected = _mfn_folder(tmp_path / "again", np.random.default_rng(14), side="right")
    for split in SPLITS:
        for name in MFN_MODALITIES:
            _assert_features(trailing[split], name, expected[split]["valid"][name], MFN_STEPS)


def _folder_of(folder: Path, side: str) -> Path:
    _mfn_folder(folder, np.random.default_rng(14), side=side)
    return folder


# ----------------------------------------------------------------------------- pickles


def _dump(obj: Any, path: Path) -> Path:
    with path.open("wb") as file:
        pickle.dump(obj, file)
    return path


def _mmsa(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    """An unaligned CH-SIMS-like MMSA pickle: ``text`` (N, 5, 8) with trailing zero
    padding and no lengths, ``audio`` (N, 7, 3) and ``vision`` (N, 6, 4) with
    ``*_lengths`` and garbage (not zeros) after each sample's length."""
    data: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    for split in SPLITS:
        n = SIZES[split]
        text_lengths = _lengths(rng, n, 5, allow_zero=False)
        text = _ragged(rng, text_lengths, 8)
        audio_lengths = _lengths(rng, n, 7)
        audio = _ragged(rng, audio_lengths, 3)
        vision_lengths = _lengths(rng, n, 6)
        vision = _ragged(rng, vision_lengths, 4)
        data[split] = {
            "raw_text": np.array([f"sentence {i}" for i in range(n)]),
            "text": _pad(text, 5, "right"),
            "audio": _pad(audio, 7, "right", rng),
            "vision": _pad(vision, 6, "right", rng),
            "audio_lengths": audio_lengths,
            "vision_lengths": vision_lengths,
            "regression_labels": rng.uniform(-1, 1, size=n).astype(np.float32),
            "regression_labels_T": rng.uniform(-1, 1, size=n),
            "regression_labels_A": rng.uniform(-1, 1, size=n),
            "regression_labels_V": rng.uniform(-1, 1, size=n),
            "classification_labels": rng.integers(0, 3, size=n).astype(np.float32),
            "id": np.array([f"video_{i // 2}$_${i % 2}" for i in range(n)], dtype=object),
        }
        expected[split] = {"text": (text, 5), "audio": (audio, 7), "vision": (vision, 6)}
    return data, expected


def test_mmsa_pickle_lengths_honoured(tmp_path: Path) -> None:
    raw, expected = _mmsa(np.random.default_rng(20))
    path = _dump(raw, tmp_path / "unaligned_39.pkl")
    data = load(_raw_cfg(path))
    assert data.info.name == "unaligned_39"
    assert list(data.info.input_sizes) == ["text", "audio", "vision"]
    assert data.info.input_sizes == {"text": 8, "audio": 3, "vision": 4}
    assert data.info.steps == {"text": 5, "audio": 7, "vision": 6}
    assert data.info.kind == "regression"
    for split in SPLITS:
        for name, (valid, steps) in expected[split].items():
            _assert_features(data[split], name, valid, steps)
        assert data[split].lengths["audio"].tolist() == raw[split]["audio_lengths"].tolist()
        _assert_regression(data[split], raw[split]["regression_labels"])
        assert data[split].ids == [str(i) for i in raw[split]["id"]]


def test_mmsa_target_selection(tmp_path: Path) -> None:
    raw, expected = _mmsa(np.random.default_rng(21))
    path = _dump(raw, tmp_path / "sims.pkl")
    data = load(_raw_cfg(path, target="regression_labels_T", modalities=["vision", "text"]))
    assert data.info.kind == "regression"
    assert list(data.info.input_sizes) == ["vision", "text"]
    for split in SPLITS:
        _assert_regression(data[split], raw[split]["regression_labels_T"])
        assert not np.allclose(raw[split]["regression_labels_T"], raw[split]["regression_labels"])
        for name in ("vision", "text"):
            _assert_features(data[split], name, *expected[split][name])
    # A float-coded class target reads as regression unless asked for classes.
    data = load(_raw_cfg(path, target="classification_labels", label="classes"))
    assert data.info.kind == "classification"
    for split in SPLITS:
        _assert_classes(data[split], raw[split]["classification_labels"].astype(np.int64))


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
def test_multibench_pickle_leading_zeros(tmp_path: Path, aligned: bool) -> None:
    """MultiBench pads with leading zeros; lengths come from the padding (one timeline per
    sample when the modalities are word-aligned)."""
    rng = np.random.default_rng(22)
    dims = {"vision": 4, "audio": 3, "text": 6}
    steps = dict.fromkeys(dims, 6) if aligned else {"vision": 6, "audio": 9, "text": 4}
    raw: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    for split in SPLITS:
        n = SIZES[split]
        shared = _lengths(rng, n, 6, allow_zero=False)
        entry: dict[str, Any] = {}
        valid: dict[str, list[np.ndarray]] = {}
        for name, dim in dims.items():
            lengths = shared if aligned else _lengths(rng, n, steps[name], allow_zero=False)
            valid[name] = _ragged(rng, lengths, dim)
            entry[name] = _pad(valid[name], steps[name], "left").astype(np.float64)
        entry["labels"] = rng.uniform(-3, 3, size=(n, 1, 1)).astype(np.float32)
        entry["id"] = np.array([[f"vid{i}".encode(), str(i).encode()] for i in range(n)])
        raw[split] = entry
        expected[split] = valid
    data = load(_raw_cfg(_dump(raw, tmp_path / "mosi_raw.pkl")))
    assert data.info.kind == "regression"
    assert data.info.steps == steps
    for split in SPLITS:
        for name in dims:
            _assert_features(data[split], name, expected[split][name], steps[name])
        if aligned:
            assert torch.equal(data[split].lengths["vision"], data[split].lengths["text"])
        _assert_regression(data[split], raw[split]["labels"])
        assert data[split].ids == [f"vid{i}$_${i}" for i in range(SIZES[split])]


# ------------------------------------------------------------------------ normalisation


def _norm_npz(path: Path, rng: np.random.Generator, offset: float) -> dict[str, Any]:
    """Ragged ``seq`` (N, 5, 3) with given lengths and garbage padding, and a static
    ``vec`` (N, 2) whose second feature is constant."""
    expected: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        n = SIZES[split] * 3
        lengths = _lengths(rng, n, 5)
        valid = _ragged(rng, lengths, 3, offset=offset)
        vec = _values(rng, (n, 2), offset=offset)
        vec[:, 1] = 7.0
        arrays[f"{split}/seq"] = _pad(valid, 5, "right", rng)
        arrays[f"{split}/seq.lengths"] = lengths
        arrays[f"{split}/vec"] = vec
        arrays[f"{split}/labels"] = rng.normal(size=n).astype(np.float32)
        expected[split] = {"seq": valid, "vec": [row[None, :] for row in vec]}
    np.savez(path, **arrays)
    return expected


def _normalised(valid: list[np.ndarray], steps: int, mean: np.ndarray,
                std: np.ndarray) -> np.ndarray:
    return _right_padded([((v - mean) / std).astype(np.float32) for v in valid], steps)


def test_normalisation_fitted_on_train_valid_steps(tmp_path: Path) -> None:
    path = tmp_path / "norm.npz"
    expected = _norm_npz(path, np.random.default_rng(30), offset=5.0)
    data = load(DataConfig(spec=str(path)))  # normalize=True is the default
    stats = data.normalization
    assert stats is not None and list(stats) == ["seq", "vec"]
    for name, steps in (("seq", 5), ("vec", 1)):
        train_steps = np.concatenate(expected["train"][name]).astype(np.float64)
        mean = train_steps.mean(axis=0)
        std = train_steps.std(axis=0)  # population std, as documented
        if name == "vec":
            assert std[1] == 0.0
            std[1] = 1.0  # a constant feature is only centred
        np.testing.assert_allclose(stats[name]["mean"], mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(stats[name]["std"], std, rtol=1e-10)
        # Train: valid steps have mean ~0 and std ~1 (except the constant feature).
        train = data["train"]
        x = train.features[name].double()
        n = train.lengths[name]
        mask = torch.arange(steps)[None, :] < n[:, None]
        on = x[mask]
        np.testing.assert_allclose(on.mean(0).numpy(), 0.0, atol=1e-6)
        expected_std = [1.0, 1.0, 1.0] if name == "seq" else [1.0, 0.0]
        np.testing.assert_allclose(on.std(0, unbiased=False).numpy(), expected_std, atol=1e-5)
        assert not x[~mask].any()  # padding stays zero
        # Every split uses the train statistics (checked against a hand computation).
        for split in SPLITS:
            got = data[split].features[name].numpy()
            want = _normalised(expected[split][name], steps, mean, std)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            assert data[split].lengths[name].tolist() == [
                v.shape[0] for v in expected[split][name]
            ]


def test_given_statistics_are_applied_not_refitted(tmp_path: Path) -> None:
    _norm_npz(tmp_path / "a.npz", np.random.default_rng(31), offset=5.0)
    fitted = load(DataConfig(spec=str(tmp_path / "a.npz")))
    stats = fitted.normalization
    assert stats is not None
    other = tmp_path / "b.npz"
    expected = _norm_npz(other, np.random.default_rng(32), offset=-20.0)
    data = load(DataConfig(spec=str(other)), stats=stats)
    assert data.normalization == stats
    for name, steps in (("seq", 5), ("vec", 1)):
        mean = np.asarray(stats[name]["mean"])
        std = np.asarray(stats[name]["std"])
        for split in SPLITS:
            got = data[split].features[name].numpy()
            want = _normalised(expected[split][name], steps, mean, std)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        # Refitting would centre the train split; the given statistics leave it far off.
        train = data["train"]
        mask = torch.arange(steps)[None, :] < train.lengths[name][:, None]
        assert float(train.features[name][mask][:, 0].mean()) < -5.0
    # The given statistics also apply when normalize=False asks for no fitting.
    unfitted = load(DataConfig(spec=str(other), normalize=False), stats=stats)
    assert torch.equal(unfitted["test"].features["seq"], data["test"].features["seq"])


# ------------------------------------------------------------------ edge cases
#
# Inputs an earlier version read silently wrong; each test states the expected behaviour.


def test_npz_folder_padding_key_is_not_overridden_by_another_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(40)
    folder = tmp_path / "features"
    folder.mkdir()
    expected = {}
    for split in SPLITS:
        n = SIZES[split]
        lengths = _lengths(rng, n, 4, allow_zero=False)
        valid = _ragged(rng, lengths, 2)
        expected[split] = valid
        extra = {} if split == "test" else {"padding": np.array("left")}
        np.savez(folder / f"{split}.npz", x=_pad(valid, 4, "left", rng),
                 **{"x.lengths": lengths}, labels=np.zeros(n, np.float32), **extra)
    try:
        data = load(_raw_cfg(folder))
    except DataError as exc:  # refusing the disagreement (naming padding) is also right
        assert "padding" in str(exc)
        return
    for split in ("train", "valid"):
        _assert_features(data[split], "x", expected[split], 4)


def test_npz_ids_of_the_wrong_length_are_refused(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(41)
    for split in SPLITS:
        arrays[f"{split}/x"] = _values(rng, (SIZES[split], 3, 2))
        arrays[f"{split}/labels"] = np.zeros(SIZES[split], np.float32)
    arrays["train/ids"] = np.array(["a", "b"])
    path = tmp_path / "ids.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="ids"):
        load(_raw_cfg(path))


def test_column_target_on_single_column_labels_is_refused(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(42)
    for split in SPLITS:
        arrays[f"{split}/x"] = _values(rng, (SIZES[split], 3, 2))
        arrays[f"{split}/labels"] = rng.normal(size=SIZES[split]).astype(np.float32)
    path = tmp_path / "one.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="5"):
        load(_raw_cfg(path, target="5"))


def test_mmsa_pickle_padded_at_the_front_is_read_from_its_first_valid_step(
    tmp_path: Path,
) -> None:
    """MMSA-layout files padded at the front (with audio_lengths) keep their valid steps."""
    import pickle

    rng = np.random.default_rng(7)
    splits = {}
    for split in ("train", "valid", "test"):
        n, steps = 4, 6
        lengths = np.array([6, 3, 2, 5])
        audio = np.zeros((n, steps, 2), np.float32)
        text = np.zeros((n, steps, 3), np.float32)
        for i, length in enumerate(lengths):
            audio[i, steps - length:] = rng.standard_normal((length, 2)) + 5
            text[i, steps - length:] = rng.standard_normal((length, 3)) + 5
        splits[split] = {"text": text, "audio": audio, "vision": audio.copy(),
                         "audio_lengths": lengths, "vision_lengths": lengths,
                         "regression_labels": rng.standard_normal(n).astype(np.float32)}
    path = tmp_path / "front.pkl"
    path.write_bytes(pickle.dumps(splits))
    data = load(DataConfig(spec=str(path), normalize=False))
    split = data["train"]
    assert split.lengths["audio"].tolist() == [6, 3, 2, 5]
    assert split.lengths["text"].tolist() == [6, 3, 2, 5]
    original = splits["train"]["audio"]
    for i, length in enumerate([6, 3, 2, 5]):
        assert np.allclose(split.features["audio"][i, :length].numpy(), original[i, 6 - length:])
        assert split.features["audio"][i, length:].abs().sum() == 0


def test_mmsa_chsims_unimodal_labels_map_onto_several_targets(tmp_path: Path) -> None:
    raw, _ = _mmsa(np.random.default_rng(22))
    path = _dump(raw, tmp_path / "sims.pkl")
    spec = ("M=regression_labels,T=regression_labels_T,A=regression_labels_A,"
            "V=regression_labels_V")
    data = load(_raw_cfg(path, target=spec))
    assert data.info.targets == {k: ("regression", 1) for k in "MTAV"}
    for split in SPLITS:
        targets = data[split].targets
        assert targets is not None
        for name, key in zip("MTAV", ["regression_labels", "regression_labels_T",
                                      "regression_labels_A", "regression_labels_V"],
                             strict=True):
            np.testing.assert_allclose(targets[name].numpy(),
                                       raw[split][key].astype(np.float32))


def test_mfn_label_columns_map_onto_several_targets(tmp_path: Path) -> None:
    folder = tmp_path / "mfn"
    _mfn_folder(folder, np.random.default_rng(23))
    rng = np.random.default_rng(24)
    columns = {}
    for split in SPLITS:
        columns[split] = rng.normal(size=(SIZES[split], 3)).astype(np.float32)
        _write_d1(folder / f"y_{split}.h5", columns[split])
    data = load(_raw_cfg(folder, target="all"))
    assert list(data.info.targets) == ["y0", "y1", "y2"]
    for split in SPLITS:
        for k in range(3):
            np.testing.assert_allclose(data[split].targets[f"y{k}"].numpy(),  # type: ignore[index]
                                       columns[split][:, k])
    with pytest.raises(DataError, match="choose one with --target COLUMN"):
        load(_raw_cfg(folder))


@pytest.mark.parametrize("padding", ["left", "right", "auto"])
def test_prepare_consume_gives_the_same_data_in_place(padding: str) -> None:
    """``consume=True`` (what ``load`` uses for data it has just read) converts the arrays
    in place and drops them from the raw data; the result is the same as with copies, and
    without it the input arrays are left as they were."""
    from mfm.data.prepare import prepare

    rng = np.random.default_rng(3)

    def make() -> RawData:
        splits = {}
        for k, split in enumerate(SPLITS):
            n, steps = 6 + k, 7
            lengths = rng.integers(0, steps + 1, n)
            lengths[0] = steps
            x = rng.normal(size=(n, steps, 3)).astype(np.float32)
            audio = rng.normal(size=(n, steps, 2)).astype(np.float32)
            for i, m in enumerate(lengths):  # zero padding on the chosen side
                pad = slice(0, steps - m) if padding == "left" else slice(m, steps)
                x[i, pad] = 0
                audio[i, pad] = 0
            splits[split] = RawSplit({"text": x, "audio": audio}, labels=rng.normal(size=n),
                                     lengths={"audio": lengths})
        return RawData("memory", splits, padding=padding)  # type: ignore[arg-type]

    seed_state = rng.bit_generator.state
    kept = make()
    originals = {s: {k: v.copy() for k, v in kept.splits[s].features.items()} for s in SPLITS}
    cfg = DataConfig(spec="memory")
    copied = prepare(kept, cfg)
    for split in SPLITS:  # consume=False leaves the input alone
        for name, array in kept.splits[split].features.items():
            np.testing.assert_array_equal(array, originals[split][name])
    rng.bit_generator.state = seed_state
    consumed_raw = make()
    arrays = {s: dict(consumed_raw.splits[s].features) for s in SPLITS}
    consumed = prepare(consumed_raw, cfg, consume=True)
    for split in SPLITS:
        assert consumed_raw.splits[split].features == {}
        for name in ("text", "audio"):
            torch.testing.assert_close(consumed[split].features[name],
                                       copied[split].features[name], rtol=0, atol=0)
            assert torch.equal(consumed[split].lengths[name], copied[split].lengths[name])
            # converted where they were: no copy of the array was made
            assert np.shares_memory(consumed[split].features[name].numpy(),
                                    arrays[split][name])
