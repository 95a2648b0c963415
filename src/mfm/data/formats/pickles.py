"""Third-party pickles: the MMSA and MultiBench layouts of CMU-MOSI, CMU-MOSEI and CH-SIMS.

Unpickling runs code named by the file, so :func:`safe_load_pickle` resolves only an
allow-list of globals: plain builtin containers and scalars, ``collections.OrderedDict``
and what NumPy needs to rebuild arrays, dtypes and scalars. Anything else (``os.system``,
``builtins.eval``, ``subprocess.Popen``, classes of other packages) is refused with a
:class:`~mfm.data.errors.DataError` before it can be called. Object arrays are rebuilt
through the same resolver, so their elements obey the same list.

Both layouts are a dict ``{"train": split, "valid": split, "test": split}``; a split
missing from the file is left out of :attr:`RawData.splits` (the pipeline reports it).

* **MMSA** (``aligned_50.pkl``, ``unaligned_50.pkl``): a split holds ``text``
  ``(N, T, 768)`` BERT or ``(N, T, 300)`` GloVe features, optionally ``text_bert``
  ``(N, 3, T)`` token ids, ``audio`` ``(N, T_a, d_a)``, ``vision`` ``(N, T_v, d_v)``,
  ``audio_lengths`` / ``vision_lengths`` ``(N,)``, ``regression_labels`` ``(N,)``,
  ``id`` ``(N,)`` ``"video$_$clip"`` strings, ``raw_text``, and optionally
  ``annotations``, ``classification_labels`` and (CH-SIMS) ``regression_labels_T``,
  ``regression_labels_A``, ``regression_labels_V``. Padding sits on the right.
* **MultiBench** (``mosi_raw.pkl``, ``mosei_senti_data.pkl``): a split holds ``vision``,
  ``audio``, ``text`` ``(N, T, d)``, ``labels`` ``(N, 1, 1)``, ``(N, 1)`` or ``(N,)``
  and ``id``. Padding is leading zeros (left).

Readers only map keys to :class:`~mfm.data.raw.RawSplit` fields; ranks, dtypes and
non-finite values are checked by the pipeline, which names the origin recorded here.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import importlib
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mfm.data.errors import DataError
from mfm.data.raw import RawData, RawSplit

SPLIT_NAMES = ("train", "valid", "test")
FLAVOURS = ("auto", "mmsa", "multibench")

_MMSA_TARGETS = (
    "regression_labels_T",
    "regression_labels_A",
    "regression_labels_V",
    "classification_labels",
)
_MULTIBENCH_MODALITIES = ("vision", "audio", "text")


# --------------------------------------------------------------------------- unpickling


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocols 0-2 use to store ``bytes``.

    Only the ``latin1`` round trip that pickle itself writes is accepted.
    """
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, ...)")
    return text.encode("latin1")


def _numpy_core_attr(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` (NumPy 2) or ``numpy.core.<submodule>.<name>``."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    return None


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """``(module, name) -> object`` for every global a plain-data pickle may reference."""
    allowed: dict[tuple[str, str], Any] = {}
    for name in (
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "str",
        "bytes",
        "bytearray",
        "int",
        "float",
        "complex",
        "bool",
        "slice",
        "range",
    ):
        allowed["builtins", name] = getattr(builtins, name)
    allowed["collections", "OrderedDict"] = collections.OrderedDict
    allowed["_codecs", "encode"] = _latin1_encode
    allowed["numpy", "ndarray"] = np.ndarray
    allowed["numpy", "dtype"] = np.dtype
    # Arrays, scalars and protocol-5 buffers; NumPy 1 wrote ``numpy.core``, NumPy 2
    # writes ``numpy._core``. Both names map to the objects of the installed NumPy
    # (without importing the deprecated ``numpy.core`` shim).
    for submodule, name in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
        ("_internal", "_convert_to_stringdtype_kwargs"),  # StringDType arrays
    ):
        target = _numpy_core_attr(submodule, name)
        if target is not None:
            allowed[f"numpy.core.{submodule}", name] = target
            allowed[f"numpy._core.{submodule}", name] = target
    # The DType classes (``numpy.dtypes.Float64DType``, ...) of NumPy >= 1.25.
    try:
        dtypes = importlib.import_module("numpy.dtypes")
    except ImportError:
        return allowed
    for name in dir(dtypes):
        value = getattr(dtypes, name)
        if name.endswith("DType") and isinstance(value, type) and issubclass(value, np.dtype):
            allowed["numpy.dtypes", name] = value
    return allowed


_ALLOWED = _allowed_globals()


def _is_dotted_name(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


class _NotAPickle(Exception):
    """Raised inside the unpickler when the bytes cannot be a real pickle."""


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :func:`_allowed_globals`."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed global ``module.name``, or refuse it."""
        # Python 2 names (``__builtin__.xrange``, ...), as the default unpickler maps them.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[module, name]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if not (_is_dotted_name(module) and _is_dotted_name(name)):
            # Text or binary noise decoded as a GLOBAL/INST opcode.
            raise _NotAPickle
        raise DataError(
            f"{self._path}: refused to unpickle {module}.{name}: only plain containers, "
            "numbers, strings and numpy arrays are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids need a host application; plain data files have none."""
        raise _NotAPickle


def safe_load_pickle(path: Path) -> object:
    """Unpickle ``path`` allowing only plain data.

    Allowed: builtin ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``str``,
    ``bytes``, ``bytearray``, ``int``, ``float``, ``complex``, ``bool``, ``slice``,
    ``range``, ``None``, ``collections.OrderedDict``, and NumPy arrays of any shape,
    dtypes and scalars (numeric, string and object arrays whose elements are allowed).

    Raises:
        DataError: the file references any other global (nothing is called), or is
            truncated or not a pickle, or cannot be read.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            return _PlainDataUnpickler(file, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from exc
    except MemoryError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, KeyError, ...
        raise DataError(f"{path}: not a readable pickle (truncated or not a pickle file)") from exc


# ----------------------------------------------------------------------------- mapping


def _keys(split: Mapping[Any, Any]) -> str:
    return ", ".join(sorted(str(k) for k in split)) or "none"


def _as_array(value: Any, where: str) -> np.ndarray:
    """``np.asarray(value)``; a ragged nested list becomes a :class:`DataError`."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{where}: expected a rectangular array, found a ragged nested {type(value).__name__}"
        ) from exc


def _squeeze_labels(labels: np.ndarray) -> np.ndarray:
    """Drop singleton axes after the first: ``(N, 1, 1)`` / ``(N, 1)`` -> ``(N,)``.

    ``(N, k)`` with ``k > 1`` (and ``(N, 1, k)`` -> ``(N, k)``) keeps its values per row.
    """
    axes = tuple(axis for axis in range(1, labels.ndim) if labels.shape[axis] == 1)
    return np.squeeze(labels, axis=axes) if axes else labels


def _id_str(value: Any) -> str:
    """One sample id as ``str``: bytes are decoded, several parts joined with ``$_$``."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.reshape(-1).tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return "$_$".join(_id_str(part) for part in value)
    return str(value)


def _ids(value: Any, where: str = "id") -> list[str]:
    """Per-sample ids ``(N,)`` (or ``(N, k)`` parts per sample) as ``N`` strings."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = [value.item()]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise DataError(f"{where}: expected one id per sample, found {type(value).__name__}")
    return [_id_str(v) for v in value]


def _is_token_ids(x: np.ndarray) -> bool:
    """Whether ``x`` looks like MMSA's ``text_bert``: ``(N, 3, T)`` integer-valued."""
    if x.ndim != 3 or x.shape[1] != 3:
        return False
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.bool_):
        return True
    if np.issubdtype(x.dtype, np.floating):
        return bool(np.all(np.isfinite(x)) and np.array_equal(x, np.trunc(x)))
    return False


def _mmsa_split(
    split: Mapping[str, Any], path: Path, name: str, text_feature: str | None
) -> RawSplit:
    """Map one MMSA split dict onto a :class:`RawSplit` (padding on either side)."""
    text_key = text_feature or "text"
    if text_feature is not None and text_feature not in split:
        text_like = [str(k) for k in split if str(k).startswith("text")]
        raise DataError(
            f"{path}: {name}/{text_feature}: no such text feature (expected one of the "
            f"text features present: {', '.join(sorted(text_like)) or 'none'})"
        )
    for key in (text_key, "audio", "vision", "regression_labels"):
        if key not in split:
            raise DataError(
                f"{path}: {name}/{key}: missing key (expected an MMSA split with "
                f"{text_key}, audio, vision, regression_labels; found keys: {_keys(split)})"
            )
    out = RawSplit(features={})
    for modality, key in (("text", text_key), ("audio", "audio"), ("vision", "vision")):
        where = f"{path}: {name}/{key}"
        out.features[modality] = _as_array(split[key], where)
        out.origin[modality] = where
    if _is_token_ids(out.features["text"]):
        raise DataError(
            f"{path}: {name}/{text_key}: holds token ids {out.features['text'].shape} "
            "(input ids, attention mask, segment ids), not features; token ids need a text "
            "encoder, which this loader does not run: choose text_feature='text' "
            "(precomputed features) instead"
        )
    for modality in ("text", "audio", "vision"):
        key = f"{modality}_lengths"
        if key in split:
            where = f"{path}: {name}/{key}"
            out.lengths[modality] = _as_array(split[key], where)
            out.origin[f"lengths/{modality}"] = where
    where = f"{path}: {name}/regression_labels"
    out.labels = _squeeze_labels(_as_array(split["regression_labels"], where))
    out.origin["labels"] = where
    # Also selectable by name, next to the CH-SIMS unimodal labels (--target).
    out.targets["regression_labels"] = out.labels
    out.origin["targets/regression_labels"] = where
    for key in _MMSA_TARGETS:
        if key in split:
            where = f"{path}: {name}/{key}"
            out.targets[key] = _squeeze_labels(_as_array(split[key], where))
            out.origin[f"targets/{key}"] = where
    if "id" in split:
        out.ids = _ids(split["id"], f"{path}: {name}/id")
        out.origin["ids"] = f"{path}: {name}/id"
    return out


def _multibench_split(split: Mapping[str, Any], path: Path, name: str) -> RawSplit:
    """Map one MultiBench split dict onto a :class:`RawSplit` (leading zero padding)."""
    for key in (*_MULTIBENCH_MODALITIES, "labels"):
        if key not in split:
            raise DataError(
                f"{path}: {name}/{key}: missing key (expected a MultiBench split with "
                f"vision, audio, text, labels; found keys: {_keys(split)})"
            )
    out = RawSplit(features={})
    for modality in _MULTIBENCH_MODALITIES:
        where = f"{path}: {name}/{modality}"
        out.features[modality] = _as_array(split[modality], where)
        out.origin[modality] = where
    where = f"{path}: {name}/labels"
    out.labels = _squeeze_labels(_as_array(split["labels"], where))
    out.origin["labels"] = where
    if "id" in split:
        out.ids = _ids(split["id"], f"{path}: {name}/id")
        out.origin["ids"] = f"{path}: {name}/id"
    return out


def _detect_flavour(split: Mapping[str, Any], path: Path, name: str) -> str:
    """``mmsa`` or ``multibench`` from the keys of one split."""
    if "regression_labels" in split:
        return "mmsa"
    if "labels" in split:
        return "multibench"
    raise DataError(
        f"{path}: {name}: cannot tell the layout (expected an MMSA split with "
        f"regression_labels or a MultiBench split with labels; found keys: {_keys(split)})"
    )


def read_pickle(path: Path, *, flavour: str = "auto", text_feature: str | None = None) -> RawData:
    """Read an MMSA or MultiBench pickle into :class:`RawData`.

    Args:
        path: the ``.pkl`` file; unpickled with :func:`safe_load_pickle`.
        flavour: ``"mmsa"``, ``"multibench"``, or ``"auto"`` to tell them apart by the
            keys of the train split (the first split present if train is missing).
        text_feature: MMSA only: the split key that feeds the ``text`` modality
            (default ``"text"``: ``(N, T, 768)`` BERT or ``(N, T, 300)`` GloVe features).

    Returns:
        ``RawData`` with modalities ``text``, ``audio``, ``vision`` (arrays as stored,
        e.g. ``(N, T, d)``), labels ``(N,)`` (or ``(N, k)``), the splits present in the
        file, padding ``auto`` (MMSA: either side) or ``left`` (MultiBench) and ``name`` the
        stem.

    Raises:
        DataError: unsafe or unreadable pickle, wrong top level, missing key, unknown
            text feature, or token ids chosen as text features.
    """
    path = Path(path)
    if flavour not in FLAVOURS:
        raise DataError(
            f"{path}: flavour: expected one of {', '.join(FLAVOURS)}; found {flavour!r}"
        )
    top = safe_load_pickle(path)
    if not isinstance(top, Mapping):
        raise DataError(
            f"{path}: expected a dict with train/valid/test splits at the top level, "
            f"found {type(top).__name__}"
        )
    names = [name for name in SPLIT_NAMES if name in top]
    if not names:
        raise DataError(
            f"{path}: expected a dict with train/valid/test splits at the top level, "
            f"found keys: {_keys(top)}"
        )
    for name in names:
        if not isinstance(top[name], Mapping):
            raise DataError(
                f"{path}: {name}: expected a dict of arrays, found {type(top[name]).__name__}"
            )
    if flavour == "auto":
        flavour = _detect_flavour(top[names[0]], path, names[0])
    if text_feature is not None and flavour != "mmsa":
        raise DataError(
            f"{path}: text_feature={text_feature!r} applies to MMSA pickles only; "
            f"this file is {flavour}"
        )
    mappers: dict[str, Callable[[Mapping[str, Any], str], RawSplit]] = {
        "mmsa": lambda split, name: _mmsa_split(split, path, name, text_feature),
        "multibench": lambda split, name: _multibench_split(split, path, name),
    }
    splits = {name: mappers[flavour](top[name], name) for name in names}
    # MMSA releases pad at the end, but MMSA-layout files padded at the front exist (and
    # MMSA's own model only works on those): "auto" finds each sample's span either way.
    padding = "auto" if flavour == "mmsa" else "left"
    return RawData(str(path), splits, padding, name=path.stem)  # type: ignore[arg-type]
