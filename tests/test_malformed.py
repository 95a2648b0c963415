"""Malformed data through the ``mfm fit`` command, as a user meets it.

Every case writes one broken input into ``tmp_path`` and runs
``mfm fit --data <path> --output <tmp>/out --max-epochs 1 --no-progress``. Each must end
with exit status 2, exactly one ``error: `` line on standard error that names the file and
the key (``warning: `` lines may come before it), no traceback, and no output directory
(nothing is written before the data has been checked).

Each console-script call starts a Python process that imports torch and Lightning (about
3.5 s on two CPU cores; ``mfm data inspect`` costs the same, since ``import mfm`` imports
torch). To keep this file near a minute, the cases in :data:`CONSOLE_SCRIPT` (one or more
per format and family of problems), the malicious pickle and the ``--nonfinite zero`` run
go through the installed console script in a subprocess; the other cases invoke the same
Typer app (:data:`mfm.cli.app`, the same ``fit`` command and error handling) in-process.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from mfm.cli import app
from mfm.data import DataError, load

MFM = shutil.which("mfm", path=str(Path(sys.executable).parent)) or shutil.which("mfm")
SPLITS = ("train", "valid", "test")
SIZES = {"train": 6, "valid": 3, "test": 3}


def run_mfm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert MFM, "the mfm console script is not installed"
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run([MFM, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=240)


@dataclass
class Outcome:
    """Exit status and output of one ``mfm`` call (a subprocess or in-process)."""

    returncode: int
    stdout: str
    stderr: str


def fit(data: Path, tmp_path: Path, *options: str, in_process: bool = False) -> Outcome:
    """``mfm fit --data DATA --output TMP/out --max-epochs 1 --no-progress OPTIONS``."""
    args = ["fit", "--data", str(data), "--output", str(tmp_path / "out"), "--max-epochs", "1",
            "--no-progress", *options]
    if not in_process:
        result = run_mfm(*args, cwd=tmp_path)
        return Outcome(result.returncode, result.stdout, result.stderr)
    invoked = CliRunner().invoke(app, args)
    stderr = invoked.stderr
    if invoked.exc_info is not None and not isinstance(invoked.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*invoked.exc_info))  # shows "Traceback"
    return Outcome(invoked.exit_code, invoked.stdout, stderr)


def error_line(result: Outcome) -> str:
    """The one ``error:`` line; every other non-empty line must be a ``warning:``."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    others = [line for line in lines if not line.startswith(("error: ", "warning: "))]
    assert not others, result.stderr
    return errors[0]


# ------------------------------------------------------------------------------ inputs


def _arrays(**changes: Any) -> dict[str, np.ndarray]:
    """A tiny valid single-file npz: ``audio`` (N, 4, 2), ``video`` (N, 4, 3), labels.

    ``changes``: keys with ``__`` for ``/`` (``train__audio``); ``None`` removes a key.
    """
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        n = SIZES[split]
        arrays[f"{split}/audio"] = rng.uniform(0.5, 1.5, size=(n, 4, 2)).astype(np.float32)
        arrays[f"{split}/video"] = rng.uniform(0.5, 1.5, size=(n, 4, 3)).astype(np.float32)
        arrays[f"{split}/labels"] = rng.normal(size=n).astype(np.float32)
    for key, value in changes.items():
        key = key.replace("__", "/")
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return arrays


def _npz(tmp_path: Path, name: str = "bad.npz", **changes: Any) -> Path:
    path = tmp_path / name
    np.savez(path, **_arrays(**changes))
    return path


def _with_nan() -> np.ndarray:
    x = _arrays()["train/audio"].copy()
    x[1, 2, 0] = np.nan
    x[4, 0, 1] = np.nan
    return x


def _with_inf() -> np.ndarray:
    x = np.ones((3, 4, 3), np.float32)
    x[0, 1, 2] = x[1, 0, 0] = x[2, 3, 0] = np.inf
    return x


def _mmsa(**train_changes: Any) -> dict[str, Any]:
    """A tiny MMSA pickle; ``train_changes`` set train keys, ``None`` drops the key from
    the valid split."""
    rng = np.random.default_rng(1)
    data = {}
    for split in SPLITS:
        n = SIZES[split]
        data[split] = {
            "text": rng.normal(size=(n, 4, 5)).astype(np.float32),
            "audio": rng.normal(size=(n, 4, 2)).astype(np.float32),
            "vision": rng.normal(size=(n, 4, 3)).astype(np.float32),
            "regression_labels": rng.uniform(-3, 3, size=n).astype(np.float32),
        }
    for key, value in train_changes.items():
        if value is None:
            data["valid"].pop(key)
        else:
            data["train"][key] = value
    return data


def _pickle(tmp_path: Path, obj: Any, name: str = "bad.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj))
    return path


def _mfn(tmp_path: Path, *, skip: tuple[str, ...] = (), no_d1: str | None = None,
         garbage: str | None = None) -> Path:
    """An MFN folder with ``audio_<split>.h5``, ``video_<split>.h5`` and ``y_<split>.h5``.

    ``skip``: file names not written; ``no_d1``: a file whose dataset is named ``data``;
    ``garbage``: a file that holds text instead of HDF5.
    """
    folder = tmp_path / "mfn"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for split in SPLITS:
        n = SIZES[split]
        contents = {
            f"audio_{split}.h5": rng.normal(size=(n, 4, 2)),
            f"video_{split}.h5": rng.normal(size=(n, 4, 3)),
            f"y_{split}.h5": np.eye(2)[np.arange(n) % 2],
        }
        for file, value in contents.items():
            if file in skip:
                continue
            if file == garbage:
                (folder / file).write_text("not an hdf5 file\n")
                continue
            with h5py.File(folder / file, "w") as handle:
                handle.create_dataset("data" if file == no_d1 else "d1", data=value)
    return folder


class _Reduce:
    """Pickles as ``func(*args)``: the classic code-execution payload."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def _truncated_npz(tmp_path: Path) -> Path:
    whole = _npz(tmp_path, "whole.npz")
    path = tmp_path / "cut.npz"
    payload = whole.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    whole.unlink()
    return path


def _truncated_pickle(tmp_path: Path) -> Path:
    payload = pickle.dumps(_mmsa())
    path = tmp_path / "cut.pkl"
    path.write_bytes(payload[: len(payload) * 2 // 3])
    return path


def _text(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("id,label,audio\nclip1,0.5,1.0\nclip2,-1.0,2.0\n")
    return path


def _object_npz(tmp_path: Path) -> Path:
    arrays = _arrays()
    arrays["train/audio"] = np.array([np.zeros((4, 2))] * 5 + [np.zeros((3, 2))] * 1,
                                     dtype=object)
    path = tmp_path / "objects.npz"
    np.savez(path, **arrays)  # allow_pickle=True is savez's default
    return path


def _empty_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "nothing_here"
    folder.mkdir()
    (folder / "notes.txt").write_text("features will go here\n")
    (folder / "audio.npy").write_bytes(b"\x93NUMPY")
    return folder


@dataclass
class Case:
    """One malformed input: ``make(tmp_path) -> path``, extra CLI options, and fragments
    the error line must contain (besides the data path's file name)."""

    make: Callable[[Path], Path]
    fragments: tuple[str, ...]
    options: tuple[str, ...] = ()


CASES: dict[str, Case] = {
    # ----------------------------------------------------------- validation rules (npz)
    "missing split": Case(
        lambda t: _npz(t, **{"test__audio": None, "test__video": None, "test__labels": None}),
        ("missing split 'test'", "expected train, valid and test")),
    "missing labels": Case(
        lambda t: _npz(t, valid__labels=None), ("valid: no labels found",)),
    "sample count mismatch": Case(
        lambda t: _npz(t, train__video=np.ones((5, 4, 3), np.float32)),
        ("train/video", "5 samples", "have 6")),
    "4-D array": Case(
        lambda t: _npz(t, valid__audio=np.ones((3, 4, 2, 1), np.float32)),
        ("valid/audio", "found shape (3, 4, 2, 1)")),
    "string features": Case(
        lambda t: _npz(t, train__video=np.full((6, 4, 3), "x")),
        ("train/video", "expected a numeric array", "<U1")),
    "empty split": Case(
        lambda t: _npz(t, valid__audio=np.zeros((0, 4, 2), np.float32),
                       valid__video=np.zeros((0, 4, 3), np.float32),
                       valid__labels=np.zeros(0, np.float32)),
        ("valid/labels", "empty split")),
    "lengths too long": Case(
        lambda t: _npz(t, **{"train__audio.lengths": np.array([4, 4, 9, 1, 2, 3])}),
        ("train/audio.lengths", "expected lengths in [0, 4]", "found 9")),
    "negative lengths": Case(
        lambda t: _npz(t, **{"test__video.lengths": np.array([1, -1, 2])}),
        ("test/video.lengths", "found -1")),
    "lengths of the wrong shape": Case(
        lambda t: _npz(t, **{"train__audio.lengths": np.ones((6, 2), np.int64)}),
        ("train/audio.lengths", "expected shape (6,)", "found (6, 2)")),
    "NaN features": Case(
        lambda t: _npz(t, train__audio=_with_nan()),
        ("train/audio", "2 NaN and 0 infinite values", "--nonfinite zero")),
    "+inf features": Case(
        lambda t: _npz(t, test__video=_with_inf()),
        ("test/video", "0 NaN and 3 infinite values", "--nonfinite zero")),
    "feature size differs between splits": Case(
        lambda t: _npz(t, valid__audio=np.ones((3, 4, 5), np.float32)),
        ("valid/audio", "5 features per step, expected 2")),
    "infinite labels (NaN is a missing label)": Case(
        lambda t: _npz(t, train__labels=np.array([0.1, np.nan, 0.2, np.inf, 0, -np.inf],
                                                 np.float32)),
        ("train/labels", "2 infinite labels")),
    "no label at all in train": Case(
        lambda t: _npz(t, train__labels=np.full(6, np.nan, np.float32)),
        ("train/label", "no sample has a label")),
    "labels with 3 columns": Case(
        lambda t: _npz(t, **{f"{s}__labels": np.full((SIZES[s], 3), 0.5) for s in SPLITS}),
        ("train/labels", "3 columns that are not one-hot", "--target")),
    "unknown modality": Case(
        lambda t: _npz(t), ("modality 'speech' not found", "available: audio, video"),
        ("--modalities", "audio,speech")),
    "unknown target": Case(
        lambda t: _pickle(t, _mmsa(), "sims.pkl"),
        ("train/regression_labels_X: no such target",),
        ("--target", "regression_labels_X")),
    # ------------------------------------------------------------------ file problems
    "truncated npz": Case(_truncated_npz, ("not a readable .npz archive",)),
    "object arrays in npz": Case(_object_npz, ("holds object (pickled) arrays",)),
    "truncated pickle": Case(_truncated_pickle, ("not a readable pickle",)),
    "text file named .pkl": Case(lambda t: _text(t, "table.pkl"), ("not a readable pickle",)),
    "MMSA pickle without regression_labels": Case(
        lambda t: _pickle(t, _mmsa(regression_labels=None), "aligned_50.pkl"),
        ("valid/regression_labels: missing key",)),
    "MFN folder without y_train.h5": Case(
        lambda t: _mfn(t, skip=("y_train.h5",)), ("y_train.h5: missing label file",)),
    "MFN file without d1": Case(
        lambda t: _mfn(t, no_d1="audio_valid.h5"),
        ("audio_valid.h5: d1: missing dataset", "found: data")),
    "h5 file that is not HDF5": Case(
        lambda t: _mfn(t, garbage="video_test.h5"),
        ("video_test.h5: not a readable HDF5 file",)),
    "folder without data files": Case(_empty_dir, ("folder holds neither MFN h5 files",)),
    "nonexistent path": Case(lambda t: t / "no" / "such.npz", ("no such file or folder",)),
    "unknown suffix": Case(lambda t: _text(t, "features.csv"), ("unknown file type '.csv'",)),
}


# Cases run through the console script in a subprocess (at least 10; the others in-process).
CONSOLE_SCRIPT = (
    "missing split",
    "sample count mismatch",
    "NaN features",
    "labels with 3 columns",
    "unknown modality",
    "truncated npz",
    "text file named .pkl",
    "MMSA pickle without regression_labels",
    "MFN file without d1",
    "nonexistent path",
    "unknown suffix",
)


def test_corpus_size() -> None:
    assert len(CASES) >= 18
    assert len(CONSOLE_SCRIPT) >= 10 and set(CONSOLE_SCRIPT) <= set(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       case: str) -> None:
    monkeypatch.chdir(tmp_path)
    spec = CASES[case]
    path = spec.make(tmp_path)
    result = fit(path, tmp_path, *spec.options, in_process=case not in CONSOLE_SCRIPT)
    line = error_line(result)
    assert path.name in line
    for fragment in spec.fragments:
        assert fragment in line, line
    assert not (tmp_path / "out").exists()


def test_malicious_pickle_runs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    data = _mmsa()
    data["train"]["text"] = _Reduce(os.system, f"touch {target}")
    path = _pickle(tmp_path, data, "evil.pkl")
    line = error_line(fit(path, tmp_path))
    assert "evil.pkl" in line and "refused to unpickle posix.system" in line
    assert not target.exists()
    assert not (tmp_path / "out").exists()
    # Control: the same bytes do run the command under the plain unpickler.
    pickle.loads(path.read_bytes())  # the point of this control
    assert target.exists()


def test_nonfinite_zero_trains_on_the_same_file(tmp_path: Path) -> None:
    path = _npz(tmp_path, "nan.npz", train__audio=_with_nan())
    line = error_line(fit(path, tmp_path))
    assert "2 NaN and 0 infinite" in line
    result = fit(path, tmp_path, "--nonfinite", "zero", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert any("nan.npz" in w and "replaced non-finite values with 0" in w
               and "train/audio: 2 NaN, 0 inf" in w for w in warnings), result.stderr
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert (tmp_path / "out" / "checkpoints" / "best.ckpt").is_file()


# ------------------------------------------------------------------ known src defects
#
# Malformed inputs that currently escape validation: each ends in a traceback instead of
# one ``error:`` line. They are checked in-process (``load`` must raise DataError), which
# is what the CLI turns into ``error:`` lines, except the last, which needs training.


def _write(tmp_path: Path, name: str, build: Callable[[Path], None]) -> Path:
    path = tmp_path / name
    build(path)
    return path


def _npy_named_npz(path: Path) -> None:
    with path.open("wb") as file:
        np.save(file, np.zeros((6, 4, 2)))


def _mfn_d1_group(tmp_path: Path) -> Path:
    folder = _mfn(tmp_path)
    path = folder / "audio_train.h5"
    path.unlink()
    with h5py.File(path, "w") as handle:
        handle.create_group("d1")
    return folder


DEFECTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "infinite lengths": (
        lambda t: _npz(t, **{"train__audio.lengths": np.array([1, 2, np.inf, 3, 4, 4])}),
        "prepare.py _lengths_of: int(n.max()) raises OverflowError",
    ),
    "sequences with zero steps": (
        lambda t: _npz(t, **{f"{s}__audio": np.zeros((SIZES[s], 0, 2), np.float32)
                             for s in SPLITS}),
        "prepare.py _infer_spans: argmax of an empty axis raises ValueError",
    ),
    ".npy file named .npz": (
        lambda t: _write(t, "array.npz", _npy_named_npz),
        "npz.py _read_archive: np.load returns an ndarray, not usable in `with`: TypeError",
    ),
    "MFN d1 is a group": (
        _mfn_d1_group,
        "mfn_h5.py _read_d1: Group[()] raises TypeError, which is not caught",
    ),
    "MMSA id that is not a sequence": (
        lambda t: _pickle(t, _mmsa(id=np.float32(7.0)), "aligned_50.pkl"),
        "pickles.py _ids: iterating a scalar id raises TypeError",
    ),
}


@pytest.mark.parametrize("case", list(DEFECTS))
def test_edge_cases_raise_data_error(tmp_path: Path, case: str) -> None:
    make, reason = DEFECTS[case]
    path = make(tmp_path)
    try:
        load(str(path))
    except DataError as exc:
        assert path.name in str(exc)
    except Exception as exc:  # noqa: BLE001 - anything but DataError is the bug
        pytest.fail(f"{reason} ({type(exc).__name__}: {exc})")
    else:
        pytest.fail("malformed input accepted")


def test_zero_features_per_step_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _npz(tmp_path, **{f"{s}__video": np.zeros((SIZES[s], 4, 0), np.float32)
                             for s in SPLITS})
    line = error_line(fit(path, tmp_path, in_process=True))
    assert "video" in line
    assert not (tmp_path / "out").exists()


def test_truncated_npz_is_a_zip_cut_short(tmp_path: Path) -> None:
    """The truncated-archive case really is a damaged zip (guards the corpus itself)."""
    path = _truncated_npz(tmp_path)
    assert path.read_bytes()[:4] == b"PK\x03\x04"
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(path)


def test_text_file_named_npz_is_not_reported_as_object_arrays(tmp_path: Path) -> None:
    path = _text(tmp_path, "table.npz")
    with pytest.raises(DataError, match="not a readable .npz archive"):
        load(str(path))
