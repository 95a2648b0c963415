"""AV-MNIST rebuilt from the Free Spoken Digit Dataset (FSDD) and the MNIST test images.

Each FSDD recording ``{digit}_{speaker}_{index}.wav`` is paired with an MNIST image of the
same digit, giving a two-modality classification task (10 classes, the digit):

* ``audio``: a log-power spectrogram of fixed size ``(frames, bins)`` (default 20 x 20) per
  recording, as ``(N, frames, bins)`` float32;
* ``image``: the 28 x 28 image scaled to ``[0, 1]``, read as a sequence of 28 rows of 28
  pixels, ``(N, 28, 28)`` float32 (or one static ``(N, 784)`` vector with
  ``image_rows_as_steps=False``).

Fixed length. Recordings last about 0.15-2.3 s; instead of padding, every spectrogram is
resampled to ``frames`` steps spanning the recording's *own* duration (see
:func:`log_spectrogram`), so all sequences have the same length and no padding. The lengths
are still written explicitly (``frames`` for audio, 28 for image rows): MNIST images have
all-zero rows at the bottom that must not be taken for padding.

Spectrogram. ``torch.stft`` with a Hann window of about 32 ms (a power of two: 256 samples
at 8 kHz), hop a quarter of it (8 ms), centred frames with zero padding; power
``|X|^2`` of the ``[-1, 1]`` signal, then ``log(1e-6 + power)``; then adaptive average
pooling of the log values to ``(frames, bins)``: output step ``i`` of ``F`` is the mean of
STFT frames ``floor(i n / F)`` .. ``ceil((i + 1) n / F) - 1`` of the ``n`` frames (frames are
repeated when ``n < F``), and likewise the ``n_fft / 2 + 1`` frequency bins (0 Hz to
Nyquist) are averaged into ``bins`` equal-width bands.

Splits (FSDD convention). Takes with index 0-4 of every speaker and digit are ``test``.
Of the other takes, ``valid_fraction`` of each *digit* (stratified by digit, chosen at
random with the seed; ``round(valid_fraction * n_digit)`` takes) go to ``valid`` and the
rest to ``train``. On the shared data: 2430 / 270 / 300. An empty split is left out.

Pairing. For each digit, the MNIST images of that digit are shuffled with the seed and
handed out, without replacement, to the recordings of that digit in (speaker, index)
order, across all splits, so no image appears twice and the images of the splits are
disjoint. Only when a digit has fewer images than recordings (never with the 10,000 MNIST
test images: about 1,000 images and 300 recordings per digit) are the images reused, in
a fresh shuffle each round. The pairing does not depend on ``valid_fraction``.

Ids are ``"<wav stem>|mnist-<image index>"``, e.g. ``"3_jackson_12|mnist-4711"``; labels
are the digit as int64 class indices ``(N,)``. MNIST is read from
``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]`` in ``mnist_dir``.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import wave
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mfm.data.errors import DataError
from mfm.data.formats.npz import write_npz
from mfm.data.raw import RawData, RawSplit

__all__ = [
    "MNIST_IMAGES",
    "MNIST_LABELS",
    "build_avmnist",
    "log_spectrogram",
    "read_idx",
    "read_wav",
    "write_avmnist",
]

MNIST_IMAGES = "t10k-images-idx3-ubyte"
MNIST_LABELS = "t10k-labels-idx1-ubyte"
TEST_INDICES = range(0, 5)
"""FSDD convention: takes with these indices are the test split."""

_WAV_NAME = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$")
_GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype.
_IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    The file starts with a magic number ``0x00 0x00 <type> <ndim>``, then ``ndim``
    big-endian uint32 dimensions, then the data in C order. Gzip is detected from the
    content, not the suffix.

    Args:
        path: the ``.idx``/``-ubyte`` file, optionally gzipped.

    Returns:
        The array with the file's dimensions, e.g. ``(N, 28, 28)`` uint8 images or
        ``(N,)`` uint8 labels, in native byte order.

    Raises:
        DataError: missing or unreadable file, bad magic number, or data shorter or
            longer than the dimensions say.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found; expected an IDX file") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable (gzipped) IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(
            f"{path}: bad IDX magic number; expected 0x0000 <type 08/09/0B/0C/0D/0E> <ndim>, "
            f"found 0x{raw[:4].hex() or 'empty'}"
        )
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated IDX header; expected {ndim} dimensions ({header} bytes), "
            f"found {len(raw)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated IDX data" if found < expected else "trailing bytes after IDX data"
        raise DataError(
            f"{path}: {what}; expected {expected} bytes for shape {tuple(dims)}, found {found}"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file as a float signal.

    8-bit (unsigned), 16-, 24- and 32-bit (signed) PCM are accepted; several channels are
    averaged into one.

    Args:
        path: the ``.wav`` file.

    Returns:
        ``(signal, sample_rate)``: ``signal`` is ``(S,)`` float32 in ``[-1, 1]``.

    Raises:
        DataError: missing, unreadable or non-PCM file, or a file without samples.
    """
    try:
        with wave.open(str(path), "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate = wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found; expected a WAV file") from exc
    except (wave.Error, EOFError, OSError, struct.error) as exc:
        raise DataError(f"{path}: not a readable PCM WAV file ({exc})") from exc
    if width not in (1, 2, 3, 4):
        raise DataError(f"{path}: sample width; expected 1-4 bytes (PCM), found {width}")
    frame_bytes = width * channels
    usable = len(data) - len(data) % frame_bytes
    if usable == 0:
        raise DataError(f"{path}: audio data; expected at least one sample, found none")
    buf = np.frombuffer(data[:usable], dtype=np.uint8)
    if width == 1:
        signal = (buf.astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        triples = buf.reshape(-1, 3).astype(np.int32)
        ints = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        signal = ints.astype(np.float32) / float(1 << 23)
    else:
        ints = np.frombuffer(data[:usable], dtype=f"<i{width}")
        signal = (ints.astype(np.float64) / float(1 << (8 * width - 1))).astype(np.float32)
    signal = signal.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    if rate <= 0:
        raise DataError(f"{path}: sample rate; expected a positive rate, found {rate}")
    return np.clip(signal, -1.0, 1.0), rate


def _window_length(sample_rate: int) -> int:
    """The power of two closest to 32 ms at ``sample_rate`` (256 at 8 kHz), at least 16."""
    return max(16, 2 ** round(math.log2(0.032 * sample_rate)))


def log_spectrogram(
    signal: np.ndarray, sample_rate: int, *, frames: int = 20, bins: int = 20
) -> np.ndarray:
    """Fixed-size log-power spectrogram of a recording.

    STFT with a Hann window of about 32 ms (a power of two, 256 samples at 8 kHz) and a
    hop of a quarter window (8 ms), centred frames (zero padded); ``log(1e-6 + |X|^2)``;
    then adaptive average pooling of the log values to ``frames`` time steps over the
    recording's own duration (step ``i`` averages STFT frames ``floor(i n / frames)`` to
    ``ceil((i + 1) n / frames) - 1``; frames repeat when there are fewer than ``frames``)
    and to ``bins`` equal-width frequency bands from 0 Hz to Nyquist.

    Args:
        signal: ``(S,)`` float samples in ``[-1, 1]``.
        sample_rate: samples per second.
        frames: time steps of the result.
        bins: frequency bands of the result.

    Returns:
        ``(frames, bins)`` float32.

    Raises:
        DataError: an empty or non-1-D signal, or non-positive sizes.
    """
    samples = np.asarray(signal, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise DataError(
            f"log_spectrogram: signal; expected a non-empty (S,) array, found shape {samples.shape}"
        )
    if frames < 1 or bins < 1 or sample_rate < 1:
        raise DataError(
            f"log_spectrogram: expected frames, bins and sample_rate >= 1, found "
            f"{frames}, {bins}, {sample_rate}"
        )
    n_fft = _window_length(sample_rate)
    x = torch.from_numpy(samples)
    if x.numel() < n_fft:  # too short for one window: zero-pad at the end
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(
        x,
        n_fft=n_fft,
        hop_length=n_fft // 4,
        window=torch.hann_window(n_fft),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # (n_fft // 2 + 1, n_frames)
    log_power = torch.log(1e-6 + spec.abs().square())
    pooled = torch.nn.functional.adaptive_avg_pool2d(log_power.T[None], (frames, bins))[0]
    return pooled.numpy().astype(np.float32, copy=False)


@dataclass(frozen=True)
class _Recording:
    path: Path
    digit: int
    speaker: str
    index: int


def _find_recordings(fsdd_dir: Path) -> list[_Recording]:
    """The FSDD recordings in ``fsdd_dir``, sorted by (digit, speaker, index)."""
    if not fsdd_dir.is_dir():
        raise DataError(f"{fsdd_dir}: FSDD folder not found; expected a folder of WAV files")
    found = []
    for path in fsdd_dir.iterdir():
        match = _WAV_NAME.match(path.name)
        if match and path.is_file():
            found.append(_Recording(path, int(match[1]), match[2], int(match[3])))
    if not found:
        raise DataError(
            f"{fsdd_dir}: no FSDD recordings; expected WAV files named "
            "{digit}_{speaker}_{index}.wav (e.g. 3_jackson_12.wav), found none"
        )
    return sorted(found, key=lambda r: (r.digit, r.speaker, r.index))


def _idx_file(mnist_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (mnist_dir / name).is_file():
            return mnist_dir / name
    raise DataError(f"{mnist_dir / (stem + '.gz')}: MNIST file not found (nor {stem})")


def _read_mnist(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """MNIST images ``(M, 28, 28)`` uint8, labels ``(M,)`` int64 and the two file names."""
    images_path = _idx_file(mnist_dir, MNIST_IMAGES)
    labels_path = _idx_file(mnist_dir, MNIST_LABELS)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images; expected shape (M, 28, 28), found {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path}: labels; expected shape ({images.shape[0]},) to match the "
            f"images, found {labels.shape}"
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"{labels_path}: labels; expected digits 0-9, found values in "
            f"[{labels.min()}, {labels.max()}]"
        )
    return images, labels, [str(images_path), str(labels_path)]


def _pair_images(
    recordings: list[_Recording], labels: np.ndarray, rng: np.random.Generator, mnist: str
) -> np.ndarray:
    """``(N,)`` MNIST image index for each recording, same digit, unique where possible."""
    paired = np.empty(len(recordings), dtype=np.int64)
    digits = np.array([r.digit for r in recordings])
    for digit in range(10):
        slots = np.flatnonzero(digits == digit)
        if slots.size == 0:
            continue
        pool = np.flatnonzero(labels == digit)
        if pool.size == 0:
            raise DataError(
                f"{mnist}: labels; expected at least one image of digit {digit} "
                f"(recordings of it exist), found none"
            )
        rounds = -(-slots.size // pool.size)
        order = np.concatenate([rng.permutation(pool) for _ in range(rounds)])
        paired[slots] = order[: slots.size]
    return paired


def _assign_splits(
    recordings: list[_Recording], valid_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """``(N,)`` split name per recording: test by index, valid stratified by digit."""
    split = np.array(["train"] * len(recordings), dtype=object)
    is_test = np.array([r.index in TEST_INDICES for r in recordings])
    split[is_test] = "test"
    digits = np.array([r.digit for r in recordings])
    for digit in range(10):
        rest = np.flatnonzero((digits == digit) & ~is_test)
        count = int(round(valid_fraction * rest.size))
        split[rng.permutation(rest)[:count]] = "valid"
    return split


def build_avmnist(
    fsdd_dir: Path,
    mnist_dir: Path,
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    image_rows_as_steps: bool = True,
    frames: int = 20,
    bins: int = 20,
    progress: bool = False,
) -> RawData:
    """Pair FSDD recordings with MNIST images of the same digit (see the module docstring).

    Args:
        fsdd_dir: folder of ``{digit}_{speaker}_{index}.wav`` files (FSDD ``recordings``).
        mnist_dir: folder holding ``t10k-images-idx3-ubyte[.gz]`` and
            ``t10k-labels-idx1-ubyte[.gz]``.
        seed: seeds the image pairing and the valid selection; same seed, same data.
        valid_fraction: share of each digit's non-test recordings put in ``valid``, in
            ``[0, 1)``.
        image_rows_as_steps: image as ``(N, 28, 28)`` rows (True) or ``(N, 784)`` (False).
        frames: spectrogram time steps.
        bins: spectrogram frequency bands.
        progress: show a progress bar over the WAV files (``rich``).

    Returns:
        :class:`RawData` named ``avmnist``, right padded, with splits ``train``, ``valid``
        and ``test`` (empty ones left out); each has features ``audio``
        ``(N, frames, bins)`` and ``image`` ``(N, 28, 28)`` (or ``(N, 784)``) float32,
        ``labels`` ``(N,)`` int64 digits, explicit lengths for the sequences, and ids.

    Raises:
        DataError: no FSDD recordings, missing or malformed MNIST files, unreadable WAV
            files, mixed sample rates, or a ``valid_fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise DataError(
            f"avmnist: valid_fraction; expected a value in [0, 1), found {valid_fraction}"
        )
    recordings = _find_recordings(fsdd_dir)
    images, image_labels, mnist_files = _read_mnist(mnist_dir)
    pair_rng, split_rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))
    paired = _pair_images(recordings, image_labels, pair_rng, mnist_files[1])
    split_of = _assign_splits(recordings, valid_fraction, split_rng)

    audio = np.empty((len(recordings), frames, bins), dtype=np.float32)
    rate: int | None = None
    items = enumerate(recordings)
    if progress:
        from rich.progress import track

        items = track(items, total=len(recordings), description="FSDD spectrograms")
    for i, rec in items:
        signal, sr = read_wav(rec.path)
        if rate is None:
            rate = sr
        elif sr != rate:
            raise DataError(
                f"{rec.path}: sample rate; expected {rate} Hz like the other recordings, "
                f"found {sr} Hz"
            )
        audio[i] = log_spectrogram(signal, sr, frames=frames, bins=bins)

    pixels = images[paired].astype(np.float32) / 255.0  # (N, 28, 28)
    if not image_rows_as_steps:
        pixels = pixels.reshape(len(recordings), 28 * 28)
    labels = np.array([r.digit for r in recordings], dtype=np.int64)
    ids = [f"{r.path.stem}|mnist-{k}" for r, k in zip(recordings, paired, strict=True)]
    origin = {
        "audio": f"{fsdd_dir}: log-spectrograms of {{digit}}_{{speaker}}_{{index}}.wav",
        "image": f"{mnist_files[0]}: images",
        "labels": f"{fsdd_dir}: digit in the WAV file names",
        "lengths/audio": f"{fsdd_dir}: all {frames} steps (fixed length)",
    }
    if image_rows_as_steps:
        origin["lengths/image"] = f"{mnist_files[0]}: all 28 rows"

    splits: dict[str, RawSplit] = {}
    for name in ("train", "valid", "test"):
        rows = np.flatnonzero(split_of == name)
        if rows.size == 0:
            continue
        lengths = {"audio": np.full(rows.size, frames, dtype=np.int64)}
        if image_rows_as_steps:
            lengths["image"] = np.full(rows.size, 28, dtype=np.int64)
        splits[name] = RawSplit(
            features={"audio": audio[rows], "image": pixels[rows]},
            labels=labels[rows],
            lengths=lengths,
            ids=[ids[i] for i in rows],
            origin=dict(origin),
        )
    source = f"{fsdd_dir} + {mnist_dir}"
    return RawData(source, splits, padding="right", name="avmnist")


def write_avmnist(
    fsdd_dir: Path,
    mnist_dir: Path,
    out: Path,
    *,
    seed: int = 0,
    valid_fraction: float = 0.1,
    progress: bool = True,
) -> dict[str, int]:
    """Build AV-MNIST (:func:`build_avmnist`) and write it as one generic ``.npz`` file.

    Args:
        fsdd_dir: folder of FSDD WAV files.
        mnist_dir: folder of the MNIST t10k IDX files.
        out: the ``.npz`` file to write (parents are created).
        seed: seeds the pairing and the valid selection.
        valid_fraction: share of each digit's non-test recordings put in ``valid``.
        progress: show a progress bar over the WAV files.

    Returns:
        Split name -> number of samples, e.g. ``{"train": 2430, "valid": 270, "test": 300}``.
    """
    data = build_avmnist(
        fsdd_dir, mnist_dir, seed=seed, valid_fraction=valid_fraction, progress=progress
    )
    write_npz(data, out)
    return {name: len(split.features["audio"]) for name, split in data.splits.items()}
