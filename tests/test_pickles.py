"""Tests of :mod:`mfm.data.formats.pickles`: safe unpickling and the MMSA/MultiBench layouts."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mfm.data.errors import DataError
from mfm.data.formats.pickles import read_pickle, safe_load_pickle

PROTOCOLS = [4, 5, None]  # None: pickle's default protocol
SPLITS = ("train", "valid", "test")
SIZES = {"train": 6, "valid": 3, "test": 4}


def _dump(obj: Any, path: Path, protocol: int | None = None) -> Path:
    with path.open("wb") as file:
        pickle.dump(obj, file, protocol=protocol)
    return path


def _mmsa_split(
    n: int,
    rng: np.random.Generator,
    *,
    lengths: bool = True,
    bert: bool = False,
    sims: bool = False,
) -> dict[str, Any]:
    """An MMSA split: text (n, 5, 8), audio (n, 7, 3), vision (n, 6, 4), labels (n,)."""
    split: dict[str, Any] = {
        "raw_text": np.array([f"sentence {i}" for i in range(n)]),
        "text": rng.normal(size=(n, 5, 8)).astype(np.float32),
        "audio": rng.normal(size=(n, 7, 3)).astype(np.float32),
        "vision": rng.normal(size=(n, 6, 4)).astype(np.float32),
        "regression_labels": rng.uniform(-3, 3, size=n).astype(np.float32),
        "classification_labels": rng.integers(0, 3, size=n).astype(np.float32),
        "id": np.array([f"vid{i // 2}$_${i % 2}" for i in range(n)], dtype=object),
        "annotations": np.array(["Positive"] * n),
    }
    if lengths:
        split["audio_lengths"] = rng.integers(1, 8, size=n)
        split["vision_lengths"] = rng.integers(1, 7, size=n)
    if bert:
        ids = rng.integers(0, 30000, size=(n, 3, 5)).astype(np.float32)
        split["text_bert"] = ids
        split["text_glove"] = rng.normal(size=(n, 5, 3)).astype(np.float64)
    if sims:
        for modality in "TAV":
            split[f"regression_labels_{modality}"] = rng.uniform(-1, 1, size=n)
    return split


def _mmsa(rng: np.random.Generator, **options: bool) -> dict[str, dict[str, Any]]:
    return {name: _mmsa_split(SIZES[name], rng, **options) for name in SPLITS}


def _multibench_split(n: int, rng: np.random.Generator, labels_shape: tuple[int, ...]) -> dict:
    """A MultiBench split: vision (n, 5, 4), audio (n, 5, 3), text (n, 5, 6), labels."""
    vision = rng.normal(size=(n, 5, 4))
    vision[:, :2] = 0.0  # leading zero padding
    return {
        "vision": vision,
        "audio": rng.normal(size=(n, 5, 3)).astype(np.float32),
        "text": rng.normal(size=(n, 5, 6)).astype(np.float32),
        "labels": rng.uniform(-3, 3, size=(n, *labels_shape)).astype(np.float32),
        "id": np.array([[f"vid{i}".encode(), str(i).encode()] for i in range(n)]),
    }


def _multibench(
    rng: np.random.Generator, labels_shape: tuple[int, ...] = (1, 1)
) -> dict[str, dict[str, Any]]:
    return {name: _multibench_split(SIZES[name], rng, labels_shape) for name in SPLITS}


# ------------------------------------------------------------------------------ MMSA


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mmsa_round_trip(tmp_path: Path, protocol: int | None) -> None:
    data = _mmsa(np.random.default_rng(0))
    path = _dump(data, tmp_path / "aligned_50.pkl", protocol)
    raw = read_pickle(path)
    assert raw.name == "aligned_50"
    assert raw.source == str(path)
    assert raw.padding == "auto"
    assert list(raw.splits) == list(SPLITS)
    for name, split in raw.splits.items():
        src = data[name]
        assert set(split.features) == {"text", "audio", "vision"}
        for modality in ("text", "audio", "vision"):
            np.testing.assert_array_equal(split.features[modality], src[modality])
            assert split.features[modality].dtype == src[modality].dtype
            assert split.origin[modality] == f"{path}: {name}/{modality}"
        assert split.labels is not None
        np.testing.assert_array_equal(split.labels, src["regression_labels"])
        assert split.origin["labels"] == f"{path}: {name}/regression_labels"
        assert set(split.lengths) == {"audio", "vision"}
        for modality in ("audio", "vision"):
            np.testing.assert_array_equal(split.lengths[modality], src[f"{modality}_lengths"])
            key = f"{modality}_lengths"
            assert split.origin[f"lengths/{modality}"] == f"{path}: {name}/{key}"
        assert set(split.targets) == {"regression_labels", "classification_labels"}
        np.testing.assert_array_equal(
            split.targets["classification_labels"], src["classification_labels"]
        )
        assert split.origin["targets/classification_labels"] == (
            f"{path}: {name}/classification_labels"
        )
        assert split.ids == [str(x) for x in src["id"]]
        assert split.ids[1] == "vid0$_$1"


def test_mmsa_without_lengths_or_ids(tmp_path: Path) -> None:
    data = _mmsa(np.random.default_rng(1), lengths=False)
    for split in data.values():
        del split["id"]
    raw = read_pickle(_dump(data, tmp_path / "unaligned_50.pkl"))
    for split in raw.splits.values():
        assert split.lengths == {}
        assert split.ids is None
        assert not any(key.startswith("lengths/") for key in split.origin)


def test_mmsa_ch_sims_targets(tmp_path: Path) -> None:
    data = _mmsa(np.random.default_rng(2), sims=True)
    path = _dump(data, tmp_path / "sims.pkl", 5)
    raw = read_pickle(path)
    for name, split in raw.splits.items():
        assert set(split.targets) == {
            "regression_labels_T",
            "regression_labels_A",
            "regression_labels_V",
            "classification_labels",
            "regression_labels",
        }
        for key, value in split.targets.items():
            np.testing.assert_array_equal(value, data[name][key])
            assert value.shape == (SIZES[name],)
            assert split.origin[f"targets/{key}"] == f"{path}: {name}/{key}"


def test_mmsa_text_feature_choice(tmp_path: Path) -> None:
    data = _mmsa(np.random.default_rng(3), bert=True)
    path = _dump(data, tmp_path / "aligned_50.pkl")
    raw = read_pickle(path, text_feature="text_glove")
    for name, split in raw.splits.items():
        np.testing.assert_array_equal(split.features["text"], data[name]["text_glove"])
        assert split.origin["text"] == f"{path}: {name}/text_glove"
    # The default is the ``text`` features, even when ``text_bert`` is present.
    raw = read_pickle(path)
    np.testing.assert_array_equal(raw.splits["train"].features["text"], data["train"]["text"])


def test_mmsa_text_bert_token_ids_are_refused(tmp_path: Path) -> None:
    path = _dump(_mmsa(np.random.default_rng(4), bert=True), tmp_path / "aligned_50.pkl")
    with pytest.raises(DataError, match="token ids") as info:
        read_pickle(path, text_feature="text_bert")
    message = str(info.value)
    assert "\n" not in message
    assert f"{path}: train/text_bert" in message
    assert "text_feature='text'" in message


def test_mmsa_text_bert_features_are_accepted(tmp_path: Path) -> None:
    """A ``text_bert`` that holds real (N, T, 768)-like features is not token ids."""
    data = _mmsa(np.random.default_rng(5))
    for split in data.values():
        split["text_bert"] = np.random.default_rng(6).normal(size=(len(split["id"]), 3, 8))
    raw = read_pickle(_dump(data, tmp_path / "a.pkl"), text_feature="text_bert")
    np.testing.assert_array_equal(raw.splits["test"].features["text"], data["test"]["text_bert"])


def test_mmsa_unknown_text_feature_lists_text_keys(tmp_path: Path) -> None:
    path = _dump(_mmsa(np.random.default_rng(7), bert=True), tmp_path / "aligned_50.pkl")
    with pytest.raises(DataError, match=r"train/text_w2v: no such text feature") as info:
        read_pickle(path, text_feature="text_w2v")
    assert "text, text_bert, text_glove" in str(info.value)


def test_mmsa_missing_regression_labels(tmp_path: Path) -> None:
    data = _mmsa(np.random.default_rng(8))
    del data["valid"]["regression_labels"]
    path = _dump(data, tmp_path / "aligned_50.pkl")
    with pytest.raises(DataError) as info:
        read_pickle(path, flavour="mmsa")
    message = str(info.value)
    assert message.startswith(f"{path}: valid/regression_labels: missing key")
    assert "expected an MMSA split with text, audio, vision, regression_labels" in message
    assert "found keys: " in message and "audio_lengths" in message
    assert "\n" not in message


@pytest.mark.parametrize("key", ["audio", "vision", "text"])
def test_mmsa_missing_modality(tmp_path: Path, key: str) -> None:
    data = _mmsa(np.random.default_rng(9))
    del data["train"][key]
    with pytest.raises(DataError, match=f"train/{key}: missing key"):
        read_pickle(_dump(data, tmp_path / "aligned_50.pkl"))


def test_mmsa_missing_split_is_left_out(tmp_path: Path) -> None:
    data = _mmsa(np.random.default_rng(10))
    del data["valid"]
    raw = read_pickle(_dump(data, tmp_path / "aligned_50.pkl"))
    assert list(raw.splits) == ["train", "test"]


def test_mmsa_labels_one_per_sample_are_squeezed(tmp_path: Path) -> None:
    data = _mmsa(np.random.default_rng(11))
    for split in data.values():
        split["regression_labels"] = split["regression_labels"].reshape(-1, 1)
    raw = read_pickle(_dump(data, tmp_path / "a.pkl"))
    assert raw.splits["train"].labels is not None
    assert raw.splits["train"].labels.shape == (SIZES["train"],)


# ------------------------------------------------------------------------ MultiBench


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_multibench_round_trip(tmp_path: Path, protocol: int | None) -> None:
    data = _multibench(np.random.default_rng(20))
    path = _dump(data, tmp_path / "mosi_raw.pkl", protocol)
    raw = read_pickle(path)
    assert raw.name == "mosi_raw"
    assert raw.padding == "left"
    assert list(raw.splits) == list(SPLITS)
    for name, split in raw.splits.items():
        src = data[name]
        for modality in ("vision", "audio", "text"):
            np.testing.assert_array_equal(split.features[modality], src[modality])
            assert split.features[modality].shape == src[modality].shape
            assert split.origin[modality] == f"{path}: {name}/{modality}"
        assert split.labels is not None
        assert split.labels.shape == (SIZES[name],)
        np.testing.assert_array_equal(split.labels, src["labels"].reshape(-1))
        assert split.origin["labels"] == f"{path}: {name}/labels"
        assert split.lengths == {}
        assert split.targets == {}
        assert split.ids == [f"vid{i}$_${i}" for i in range(SIZES[name])]


@pytest.mark.parametrize(
    ("labels_shape", "expected"),
    [((1, 1), ()), ((1,), ()), ((), ()), ((3,), (3,)), ((1, 2), (2,))],
)
def test_multibench_label_shapes(
    tmp_path: Path, labels_shape: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    data = _multibench(np.random.default_rng(21), labels_shape)
    raw = read_pickle(_dump(data, tmp_path / "mosei_senti_data.pkl"))
    for name, split in raw.splits.items():
        assert split.labels is not None
        assert split.labels.shape == (SIZES[name], *expected)
        np.testing.assert_array_equal(split.labels.reshape(-1), data[name]["labels"].reshape(-1))


def test_multibench_nested_lists_and_string_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(22)
    data = _multibench(rng)
    for split in data.values():
        for key in ("vision", "audio", "text", "labels"):
            split[key] = split[key].tolist()
        split["id"] = [b"clip-a", np.str_("clip-b"), np.array([b"clip-c"])] + [
            f"x{i}" for i in range(len(split["labels"]) - 3)
        ]
    raw = read_pickle(_dump(data, tmp_path / "lists.pkl"))
    split = raw.splits["train"]
    assert isinstance(split.features["audio"], np.ndarray)
    np.testing.assert_allclose(split.features["audio"], np.asarray(data["train"]["audio"]))
    assert split.labels is not None and split.labels.shape == (SIZES["train"],)
    assert split.ids is not None and split.ids[:4] == ["clip-a", "clip-b", "clip-c", "x0"]


def test_ragged_lists_name_the_origin(tmp_path: Path) -> None:
    data = _multibench(np.random.default_rng(23))
    data["test"]["audio"] = [np.zeros((5, 3)), np.zeros((4, 3))]
    path = _dump(data, tmp_path / "ragged.pkl")
    with pytest.raises(DataError, match=rf"{path}: test/audio: expected a rectangular array"):
        read_pickle(path)


def test_multibench_missing_labels(tmp_path: Path) -> None:
    data = _multibench(np.random.default_rng(24))
    del data["test"]["labels"]
    with pytest.raises(DataError, match="test/labels: missing key .*MultiBench"):
        read_pickle(_dump(data, tmp_path / "m.pkl"), flavour="multibench")


# ------------------------------------------------------------------ flavour, top level


def test_auto_detection_and_explicit_flavour(tmp_path: Path) -> None:
    rng = np.random.default_rng(30)
    mmsa = _dump(_mmsa(rng), tmp_path / "mmsa.pkl")
    multibench = _dump(_multibench(rng), tmp_path / "mb.pkl")
    assert read_pickle(mmsa).padding == "auto"
    assert read_pickle(mmsa, flavour="mmsa").padding == "auto"
    assert read_pickle(multibench).padding == "left"
    assert read_pickle(multibench, flavour="multibench").padding == "left"
    # A layout forced onto the other one's file reports the missing key.
    with pytest.raises(DataError, match="train/regression_labels: missing key"):
        read_pickle(multibench, flavour="mmsa")
    with pytest.raises(DataError, match="train/labels: missing key"):
        read_pickle(mmsa, flavour="multibench")
    with pytest.raises(DataError, match="applies to MMSA pickles only"):
        read_pickle(multibench, text_feature="text")


def test_auto_detection_without_train(tmp_path: Path) -> None:
    data = _multibench(np.random.default_rng(31))
    del data["train"]
    raw = read_pickle(_dump(data, tmp_path / "mb.pkl"))
    assert raw.padding == "left" and list(raw.splits) == ["valid", "test"]


def test_unknown_layout_and_flavour(tmp_path: Path) -> None:
    path = _dump({"train": {"x": np.zeros(3)}}, tmp_path / "odd.pkl")
    with pytest.raises(DataError, match="train: cannot tell the layout .*found keys: x"):
        read_pickle(path)
    with pytest.raises(DataError, match="flavour: expected one of auto, mmsa, multibench"):
        read_pickle(path, flavour="hdf5")


def test_top_level_list_is_refused(tmp_path: Path) -> None:
    path = _dump([np.zeros(3)], tmp_path / "list.pkl")
    with pytest.raises(DataError, match=rf"{path}: expected a dict .*found list"):
        read_pickle(path)


def test_top_level_without_splits(tmp_path: Path) -> None:
    path = _dump({"training": {}, "dev": {}}, tmp_path / "nosplits.pkl")
    with pytest.raises(DataError, match="train/valid/test .*found keys: dev, training"):
        read_pickle(path)


def test_split_not_a_dict(tmp_path: Path) -> None:
    path = _dump({"train": [1, 2]}, tmp_path / "s.pkl")
    with pytest.raises(DataError, match="train: expected a dict of arrays, found list"):
        read_pickle(path)


def test_ordered_dict_top_level(tmp_path: Path) -> None:
    data = collections.OrderedDict(_multibench(np.random.default_rng(32)))
    assert list(read_pickle(_dump(data, tmp_path / "od.pkl", 2)).splits) == list(SPLITS)


# ------------------------------------------------------------------------ safe loading


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_safe_load_plain_data_all_protocols(tmp_path: Path, protocol: int) -> None:
    arrays = [
        np.zeros(3),
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.arange(4, dtype=np.int64),
        np.array([True, False]),
        np.array(["a", "bc"]),
        np.array([b"x", b"yz"]),
        np.arange(6.0).reshape(2, 3).T,  # not C-contiguous
        np.zeros(2, dtype=[("a", "f4"), ("b", "i8")]),
        np.array(["s", 1, None, (1.5, b"b"), {"k": [1]}], dtype=object),
    ]
    if hasattr(np, "dtypes") and hasattr(np.dtypes, "StringDType"):  # NumPy >= 2
        arrays.append(np.array(["a", "b"], dtype=np.dtypes.StringDType()))
    scalars = [np.float32(1.5), np.float64(2.5), np.int64(3), np.bool_(True), np.str_("s")]
    plain = {
        "dict": {"a": 1},
        "ordered": collections.OrderedDict(b=2),
        "containers": ([1, 2], (3,), {4}, frozenset({5})),
        "scalars": (1.5, 10**30, 2 + 3j, True, None, "é", b"\x00\xff", bytearray(b"ab")),
        "ranges": (range(3), slice(1, 5, 2)),
        "dtype": np.dtype("<f4"),
        "dtype_class": type(np.dtype("f8")),  # numpy.dtypes.Float64DType on NumPy >= 1.25
    }
    path = _dump(
        {"arrays": arrays, "scalars": scalars, "plain": plain}, tmp_path / "p.pkl", protocol
    )
    loaded = safe_load_pickle(path)
    assert isinstance(loaded, dict)
    for got, want in zip(loaded["arrays"], arrays, strict=True):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype
        assert got.shape == want.shape
        assert got.tolist() == want.tolist()
    for got, want in zip(loaded["scalars"], scalars, strict=True):
        assert type(got) is type(want) and got == want
    assert loaded["plain"] == plain


def test_safe_load_numpy1_module_names(tmp_path: Path) -> None:
    """Pickles written by NumPy 1 reference ``numpy.core.multiarray``."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    payload = pickle.dumps({"x": x, "s": np.float64(1.5)}, protocol=2)
    assert b"numpy._core.multiarray" in payload
    old = payload.replace(b"numpy._core.", b"numpy.core.")
    path = tmp_path / "old.pkl"
    path.write_bytes(old)
    loaded = safe_load_pickle(path)
    assert isinstance(loaded, dict)
    np.testing.assert_array_equal(loaded["x"], x)
    assert loaded["s"] == np.float64(1.5)


class _Touch:
    """A class of this module: unpickling it would create ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target
        Path(target).touch()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Touch, (self.target,))


class _Reduce:
    """Pickles as ``func(*args)``: the classic code-execution payload."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def _global_call(module: str, name: str, *args: str) -> bytes:
    """A protocol-0 pickle that calls ``module.name(*args)`` (text args)."""
    text = "".join(f"V{arg}\n" for arg in args)
    return f"c{module}\n{name}\n({text}tR.".encode()


ATTACKS: dict[str, Callable[[Path], bytes]] = {
    "os.system": lambda t: pickle.dumps(_Reduce(os.system, f"touch {t}")),
    "builtins.eval": lambda t: pickle.dumps(_Reduce(eval, f"open({str(t)!r}, 'w')")),
    "builtins.exec": lambda t: pickle.dumps(_Reduce(exec, f"open({str(t)!r}, 'w').close()")),
    "builtins.open": lambda t: pickle.dumps(_Reduce(builtins.open, str(t), "w")),
    "subprocess.Popen": lambda t: pickle.dumps(_Reduce(subprocess.Popen, ["touch", str(t)])),
    "pathlib.Path.touch": lambda t: pickle.dumps(_Reduce(Path.touch, Path(t))),
    "test module class": lambda t: pickle.dumps(_Reduce(_Touch, str(t))),
    "getattr(pathlib)": lambda t: (
        b"cbuiltins\ngetattr\n(cpathlib\nPath\n(V" + str(t).encode() + b"\ntRVtouch\ntR)R."
    ),
    "__import__": lambda t: _global_call("builtins", "__import__", "os"),
    "nested in data": lambda t: pickle.dumps(
        {"train": {"audio": np.zeros(2), "text": _Reduce(os.system, f"touch {t}")}}
    ),
    "object array element": lambda t: pickle.dumps(
        np.array([1.0, _Reduce(os.system, f"touch {t}")], dtype=object)
    ),
    "numpy.load": lambda t: _global_call("numpy", "load", str(t)),
    "posix.system (proto 0)": lambda t: _global_call("posix", "system", f"touch {t}"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_malicious_pickles_are_refused(tmp_path: Path, attack: str) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(ATTACKS[attack](target))
    for load in (safe_load_pickle, read_pickle):
        with pytest.raises(DataError, match="refused to unpickle") as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path}: refused to unpickle ")
        assert "only plain containers, numbers, strings and numpy arrays are allowed" in message
        assert "\n" not in message
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pkl"]


@pytest.mark.parametrize("attack", ["os.system", "builtins.open", "test module class"])
def test_attacks_work_with_plain_pickle(tmp_path: Path, attack: str) -> None:
    """Control: the same payloads do create the file under ``pickle.loads``."""
    target = tmp_path / "pwned"
    pickle.loads(ATTACKS[attack](target))  # the point of this control
    assert target.exists()


def test_refusal_names_the_global(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(_global_call("subprocess", "Popen", "true"))
    with pytest.raises(DataError, match=r"refused to unpickle subprocess\.Popen"):
        safe_load_pickle(path)


# ---------------------------------------------------------------------- broken files


def _assert_unreadable(path: Path) -> None:
    for load in (safe_load_pickle, read_pickle):
        with pytest.raises(DataError) as info:
            load(path)
        message = str(info.value)
        assert message == f"{path}: not a readable pickle (truncated or not a pickle file)"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_truncated_pickle(tmp_path: Path, protocol: int) -> None:
    payload = pickle.dumps(_mmsa(np.random.default_rng(40)), protocol=protocol)
    for cut in (len(payload) // 2, len(payload) - 1, 1):
        path = tmp_path / f"cut{cut}.pkl"
        path.write_bytes(payload[:cut])
        _assert_unreadable(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"id,label\n1,0.5\n", b"hello world\n", b"cat,dog\n", b"\x89PNG\r\n\x1a\n\x00\x00"],
)
def test_not_a_pickle(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data.pkl"
    path.write_bytes(content)
    _assert_unreadable(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_pickle(tmp_path / "absent.pkl")
