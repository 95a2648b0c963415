"""AV-MNIST from FSDD + MNIST: IDX and WAV readers, spectrograms, pairing, splits."""

from __future__ import annotations

import gzip
import re
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from mfm.data.avmnist import (
    build_avmnist,
    log_spectrogram,
    read_idx,
    read_wav,
    write_avmnist,
)
from mfm.data.errors import DataError
from mfm.data.formats.npz import read_npz, write_npz
from mfm.data.raw import RawData

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FSDD = SHARED / "fsdd" / "recordings"
MNIST = SHARED / "mnist"
ID_PATTERN = re.compile(r"^(\d)_([a-z]+)_(\d+)\|mnist-(\d+)$")

DIGITS = (0, 1, 2)
SPEAKERS = ("alice", "bob")
TAKES = range(7)  # 0-4 test, 5-6 train/valid


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    """Write a uint8 array ``array`` (any shape) as an IDX file, gzipped by default."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_wav(
    path: Path, samples: np.ndarray, rate: int = 8000, *, width: int = 2, channels: int = 1
) -> None:
    """Write ``samples`` ``(S,)`` or ``(S, channels)`` in [-1, 1] as PCM of ``width`` bytes."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1, channels)
    if width == 1:
        data = np.round(x * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:  # 24-bit: the low three bytes of little-endian int32
        ints = np.round(x * float(2**23 - 1)).astype("<i4")
        data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        scale = float(2 ** (8 * width - 1) - 1)
        data = np.round(x * scale).astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(data)


def tone(freq: float, seconds: float, rate: int = 8000) -> np.ndarray:
    """``(S,)`` sine tone at half amplitude."""
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def make_fsdd(folder: Path) -> Path:
    """3 digits x 2 speakers x 7 takes of tones of varying pitch and length (42 files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for digit in DIGITS:
        for s, speaker in enumerate(SPEAKERS):
            for take in TAKES:
                seconds = 0.01 + 0.05 * take  # the first is shorter than one window
                signal = tone(300 + 500 * digit + s, seconds)
                write_wav(folder / f"{digit}_{speaker}_{take}.wav", signal)
    (folder / "README.md").write_text("not a recording")
    (folder / "x_alice_1.wav").write_bytes(b"ignored: name does not match")
    return folder


def make_mnist(folder: Path, labels: np.ndarray, seed: int = 0) -> Path:
    """Random ``(M, 28, 28)`` images with the given ``(M,)`` labels, gzipped IDX."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return folder


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny FSDD folder (42 files) and MNIST (60 images, 15 per digit 0-3)."""
    return make_fsdd(tmp_path / "fsdd"), make_mnist(tmp_path / "mnist", np.arange(60) % 4)


def parse_ids(data: RawData) -> list[tuple[str, int, str, int, int]]:
    """(split, digit, speaker, take, image index) of every sample."""
    rows = []
    for name, split in data.splits.items():
        assert split.ids is not None
        for sample_id in split.ids:
            match = ID_PATTERN.match(sample_id)
            assert match, sample_id
            rows.append((name, int(match[1]), match[2], int(match[3]), int(match[4])))
    return rows


# --------------------------------------------------------------------------- read_idx


def test_read_idx_gzipped_and_plain(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "a", array, compress=False)
    for path in (tmp_path / "a.gz", tmp_path / "a"):
        got = read_idx(path)
        assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
        np.testing.assert_array_equal(got, array)


def test_read_idx_big_endian_int32(tmp_path: Path) -> None:
    values = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "i").write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + values.tobytes())
    got = read_idx(tmp_path / "i")
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, [1, -2, 70000])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x02\x08\x01\x00\x00\x00\x01\x00", "magic"),
        (b"", "magic"),
        (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 2), "truncated IDX header"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + b"\x00\x01", "truncated IDX data"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 1) + b"\x00\x01", "trailing bytes"),
    ],
)
def test_read_idx_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_idx_truncated_gzip_and_missing(tmp_path: Path) -> None:
    data = gzip.compress(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 100) + bytes(100))
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "absent.gz")


# --------------------------------------------------------------------------- read_wav


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_widths(tmp_path: Path, width: int) -> None:
    signal = tone(440, 0.1)
    write_wav(tmp_path / "a.wav", signal, rate=8000, width=width)
    got, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and got.dtype == np.float32 and got.shape == signal.shape
    assert np.abs(got).max() <= 1.0
    np.testing.assert_allclose(got, signal, atol=2.0 / 2 ** (8 * width - 1) + 1e-6)


def test_read_wav_averages_channels(tmp_path: Path) -> None:
    left, right = tone(440, 0.05), np.zeros(400)
    write_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), channels=2)
    got, _ = read_wav(tmp_path / "s.wav")
    np.testing.assert_allclose(got, left / 2, atol=1e-4)


def test_read_wav_bad_files(tmp_path: Path) -> None:
    (tmp_path / "text.wav").write_text("hello")
    with pytest.raises(DataError, match="text.wav: not a readable PCM WAV"):
        read_wav(tmp_path / "text.wav")
    write_wav(tmp_path / "empty.wav", np.zeros(0))
    with pytest.raises(DataError, match="empty.wav: audio data"):
        read_wav(tmp_path / "empty.wav")
    with pytest.raises(DataError, match="not found"):
        read_wav(tmp_path / "absent.wav")


# --------------------------------------------------------------------------- spectrogram


def test_log_spectrogram_shape_for_short_and_long() -> None:
    for seconds in (0.005, 0.2, 2.3):
        spec = log_spectrogram(tone(1000, seconds), 8000)
        assert spec.shape == (20, 20) and spec.dtype == np.float32
        assert np.isfinite(spec).all() and spec.min() >= np.log(1e-6) - 1e-3
    assert log_spectrogram(tone(1000, 0.3), 8000, frames=7, bins=11).shape == (7, 11)
    assert log_spectrogram(tone(1000, 0.3), 16000).shape == (20, 20)


def test_log_spectrogram_puts_energy_in_the_right_band() -> None:
    # 20 bands over 0-4000 Hz: 200 Hz each; 500 Hz -> band 2, 3100 Hz -> band 15.
    low = log_spectrogram(tone(500, 0.5), 8000).mean(axis=0)
    high = log_spectrogram(tone(3100, 0.5), 8000).mean(axis=0)
    assert int(np.argmax(low)) == 2 and int(np.argmax(high)) == 15


def test_log_spectrogram_follows_time() -> None:
    # silence then a tone: the second half of the steps holds the energy
    signal = np.concatenate([np.zeros(4000), tone(1000, 0.5)])
    energy = log_spectrogram(signal, 8000).mean(axis=1)
    assert energy[:8].max() < energy[12:].min()


def test_log_spectrogram_bad_input() -> None:
    with pytest.raises(DataError, match="signal"):
        log_spectrogram(np.zeros(0), 8000)
    with pytest.raises(DataError, match="signal"):
        log_spectrogram(np.zeros((10, 2)), 8000)
    with pytest.raises(DataError, match="frames"):
        log_spectrogram(np.zeros(100), 8000, frames=0)


# --------------------------------------------------------------------------- build


def test_build_shapes_and_metadata(tiny: tuple[Path, Path]) -> None:
    fsdd, mnist = tiny
    data = build_avmnist(fsdd, mnist, valid_fraction=0.5)
    assert data.name == "avmnist" and data.padding == "right"
    assert list(data.splits) == ["train", "valid", "test"]
    sizes = {k: len(v.ids or []) for k, v in data.splits.items()}
    # 3 digits x 2 speakers: 5 test takes each; 2 others each, half of each digit's -> valid
    assert sizes == {"train": 6, "valid": 6, "test": 30}
    for split in data.splits.values():
        n = len(split.ids or [])
        assert split.features["audio"].shape == (n, 20, 20)
        assert split.features["audio"].dtype == np.float32
        assert split.features["image"].shape == (n, 28, 28)
        assert split.features["image"].dtype == np.float32
        assert 0.0 <= split.features["image"].min() and split.features["image"].max() <= 1.0
        assert split.labels is not None and split.labels.dtype == np.int64
        assert split.labels.shape == (n,)
        np.testing.assert_array_equal(split.lengths["audio"], np.full(n, 20))
        np.testing.assert_array_equal(split.lengths["image"], np.full(n, 28))
        assert str(fsdd) in split.origin["audio"]
        assert "t10k-images-idx3-ubyte.gz" in split.origin["image"]


def test_build_pairs_same_digit_unique_images(tiny: tuple[Path, Path]) -> None:
    fsdd, mnist = tiny
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(mnist / "t10k-images-idx3-ubyte.gz")
    data = build_avmnist(fsdd, mnist, valid_fraction=0.5)
    rows = parse_ids(data)
    assert len(rows) == len(DIGITS) * len(SPEAKERS) * len(TAKES)
    assert len({r[4] for r in rows}) == len(rows)  # every image used once
    for name, split in data.splits.items():
        assert split.labels is not None and split.ids is not None
        for i, (_, digit, _, _, image) in enumerate(r for r in rows if r[0] == name):
            assert split.labels[i] == digit == labels[image]
            np.testing.assert_allclose(split.features["image"][i], images[image] / 255.0)


def test_build_split_rule(tiny: tuple[Path, Path]) -> None:
    data = build_avmnist(*tiny, valid_fraction=0.5)
    rows = parse_ids(data)
    for split, _, _, take, _ in rows:
        assert (split == "test") == (take <= 4)
    valid_digits = sorted(r[1] for r in rows if r[0] == "valid")
    assert valid_digits == [0, 0, 1, 1, 2, 2]  # stratified by digit
    # default fraction: round(0.1 * 4) = 0 valid per digit -> no valid split
    assert list(build_avmnist(*tiny).splits) == ["train", "test"]


def test_build_is_deterministic(tiny: tuple[Path, Path]) -> None:
    a = build_avmnist(*tiny, seed=3, valid_fraction=0.5)
    b = build_avmnist(*tiny, seed=3, valid_fraction=0.5)
    c = build_avmnist(*tiny, seed=4, valid_fraction=0.5)
    for name in a.splits:
        assert a.splits[name].ids == b.splits[name].ids
        for modality in ("audio", "image"):
            np.testing.assert_array_equal(
                a.splits[name].features[modality], b.splits[name].features[modality]
            )
    assert sorted(parse_ids(a)) != sorted(parse_ids(c))
    # the pairing does not depend on valid_fraction
    pairs = {(r[1], r[2], r[3], r[4]) for r in parse_ids(a)}
    other = {(r[1], r[2], r[3], r[4]) for r in parse_ids(build_avmnist(*tiny, seed=3))}
    assert pairs == other


def test_build_reuses_images_only_when_too_few(tmp_path: Path) -> None:
    fsdd = make_fsdd(tmp_path / "fsdd")
    labels = np.array([0, 0, 0, 1, 2] + [1, 2] * 20)  # digit 0: 3 images for 14 recordings
    mnist = make_mnist(tmp_path / "mnist", labels)
    rows = parse_ids(build_avmnist(fsdd, mnist))
    zero = [r[4] for r in rows if r[1] == 0]
    assert sorted(set(zero)) == [0, 1, 2] and len(zero) == 14
    others = [r[4] for r in rows if r[1] != 0]
    assert len(set(others)) == len(others)
    assert all(labels[r[4]] == r[1] for r in rows)


def test_build_flat_images(tiny: tuple[Path, Path]) -> None:
    data = build_avmnist(*tiny, image_rows_as_steps=False, frames=5, bins=3)
    test = data.splits["test"]
    assert test.features["image"].shape == (30, 784)
    assert test.features["audio"].shape == (30, 5, 3)
    assert "image" not in test.lengths


def test_write_avmnist_round_trip(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "avmnist.npz"
    sizes = write_avmnist(*tiny, out, seed=1, valid_fraction=0.5, progress=False)
    assert sizes == {"train": 6, "valid": 6, "test": 30}
    back = read_npz(out)
    built = build_avmnist(*tiny, seed=1, valid_fraction=0.5)
    for name, split in built.splits.items():
        assert back.splits[name].ids == split.ids
        np.testing.assert_array_equal(back.splits[name].labels, split.labels)
        np.testing.assert_array_equal(back.splits[name].lengths["image"], split.lengths["image"])
        for modality, x in split.features.items():
            np.testing.assert_array_equal(back.splits[name].features[modality], x)


# --------------------------------------------------------------------------- bad inputs


def test_build_without_recordings(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    _, mnist = tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "song.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"no FSDD recordings.*\{digit\}_\{speaker\}_\{index\}"):
        build_avmnist(empty, mnist)
    with pytest.raises(DataError, match="FSDD folder not found"):
        build_avmnist(tmp_path / "nowhere", mnist)


def test_build_without_mnist(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    fsdd, mnist = tiny
    (mnist / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: MNIST file not found"):
        build_avmnist(fsdd, mnist)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: MNIST file not found"):
        build_avmnist(fsdd, tmp_path / "nowhere")


def test_build_bad_mnist(tmp_path: Path) -> None:
    fsdd = make_fsdd(tmp_path / "fsdd")
    mnist = make_mnist(tmp_path / "mnist", np.array([0, 1, 1]))  # no image of digit 2
    with pytest.raises(DataError, match="digit 2"):
        build_avmnist(fsdd, mnist)
    write_idx(mnist / "t10k-labels-idx1-ubyte.gz", np.array([0, 1], dtype=np.uint8))
    with pytest.raises(DataError, match=r"labels; expected shape \(3,\)"):
        build_avmnist(fsdd, mnist)


def test_build_bad_recordings(tiny: tuple[Path, Path]) -> None:
    fsdd, mnist = tiny
    with pytest.raises(DataError, match="valid_fraction"):
        build_avmnist(fsdd, mnist, valid_fraction=1.0)
    write_wav(fsdd / "2_bob_6.wav", tone(440, 0.1, rate=16000), rate=16000)
    with pytest.raises(DataError, match="2_bob_6.wav: sample rate; expected 8000 Hz"):
        build_avmnist(fsdd, mnist)
    (fsdd / "1_alice_3.wav").write_bytes(b"RIFF....")
    with pytest.raises(DataError, match="1_alice_3.wav: not a readable PCM WAV"):
        build_avmnist(fsdd, mnist)


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real() -> RawData:
    if not FSDD.is_dir() or not MNIST.is_dir():
        pytest.skip(f"shared FSDD/MNIST data not found at {SHARED.resolve()}")
    return build_avmnist(FSDD, MNIST, seed=0)


def test_real_sizes_and_splits(real: RawData) -> None:
    sizes = {k: len(v.ids or []) for k, v in real.splits.items()}
    assert sizes == {"train": 2430, "valid": 270, "test": 300}
    for split, _, _, take, _ in parse_ids(real):
        assert (split == "test") == (take <= 4)
    for split in real.splits.values():
        assert split.features["audio"].shape[1:] == (20, 20)
        assert split.features["image"].shape[1:] == (28, 28)
        assert np.isfinite(split.features["audio"]).all()


def test_real_pairs_match_and_images_unique(real: RawData) -> None:
    mnist_labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")
    rows = parse_ids(real)
    assert len(rows) == 3000
    assert all(mnist_labels[image] == digit for _, digit, _, _, image in rows)
    images = [r[4] for r in rows]
    assert len(set(images)) == len(images)
    for split in real.splits.values():
        assert split.labels is not None and split.ids is not None
        np.testing.assert_array_equal(split.labels, [int(i[0]) for i in split.ids])


def test_real_round_trip(real: RawData, tmp_path: Path) -> None:
    path = tmp_path / "avmnist.npz"
    write_npz(real, path)
    back = read_npz(path)
    assert back.padding == "right" and list(back.splits) == list(real.splits)
    for name, split in real.splits.items():
        got = back.splits[name]
        assert got.ids == split.ids
        np.testing.assert_array_equal(got.labels, split.labels)
        for modality, x in split.features.items():
            np.testing.assert_array_equal(got.features[modality], x)
            np.testing.assert_array_equal(got.lengths[modality], split.lengths[modality])
