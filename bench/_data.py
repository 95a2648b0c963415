"""A synthetic MMSA-layout pickle shaped like the aligned CMU-MOSI (or CMU-MOSEI) release.

Layout (what MMSA's ``MMDataLoader`` reads for aligned data, and what ``mfm`` reads as an
MMSA pickle): ``{"train" | "valid" | "test": split}``, each split a dict with

* ``text`` ``(N, T, 768)``, ``audio`` ``(N, T, d_a)``, ``vision`` ``(N, T, d_v)`` float32,
  word-aligned (one timeline, one length per sample), padded with zeros on the chosen
  side (``front``: leading zeros, as MMSA's last-state encoders need; ``end``: trailing);
* ``audio_lengths`` / ``vision_lengths`` ``(N,)`` int64 valid lengths;
* ``regression_labels`` ``(N,)`` float32 in ``[-3, 3]`` (multiples of 0.2, so some are
  exactly 0 and ``Non0_acc_2`` differs from ``Has0_acc_2``);
* ``id`` ``(N,)`` strings ``"video$_$clip"`` and ``raw_text`` ``(N,)`` strings.

Generative story for sample ``i``: a shared factor ``s_i ~ N(0, I_4)`` sets the label
``y_i = clip(round5(w . s_i + 0.5 e_i), -3, 3)`` (``||w|| = 1.5``) and appears in every
modality; a private factor ``p_{i,m} ~ N(0, I_4)`` appears in modality ``m`` only. Valid
step ``t`` of modality ``m`` is ``a_m(t) A_m s_i + b_m(t) B_m p_{i,m} + sigma_m e``, with
fixed random loadings and slowly varying sinusoidal profiles ``a_m``, ``b_m`` whose phase
differs per sample. Every modality therefore carries the label's signal at every valid
step, under its own noise and nuisance.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODALITIES = ("text", "audio", "vision")
MOSI_SIZES = {"train": 1284, "valid": 229, "test": 686}
MOSI_DIMS = (768, 5, 20)
MOSEI_DIMS = (768, 74, 35)
STEPS = 50


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate."""

    sizes: dict[str, int]
    dims: tuple[int, int, int] = MOSI_DIMS
    steps: int = STEPS
    padding: str = "front"  # "front" (leading zeros) or "end" (trailing zeros)
    min_length: int = 8
    seed: int = 1234


# Per-modality scale of the shared signal, of the private nuisance, and of the noise.
_SIGNAL = {"text": 0.04, "audio": 0.45, "vision": 0.3}
_PRIVATE = {"text": 0.06, "audio": 0.45, "vision": 0.3}
_NOISE = {"text": 0.5, "audio": 1.0, "vision": 1.0}
_SHARED = 4
_CHUNK = 512


def _split(spec: SyntheticSpec, name: str, n: int, rng: np.random.Generator,
           loadings: dict[str, tuple[np.ndarray, np.ndarray]], w: np.ndarray) -> dict:
    t_steps = spec.steps
    s = rng.standard_normal((n, _SHARED))
    labels = s @ w + 0.5 * rng.standard_normal(n)
    labels = np.clip(np.round(labels * 5.0) / 5.0, -3.0, 3.0).astype(np.float32)
    lengths = rng.integers(spec.min_length, t_steps + 1, size=n).astype(np.int64)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, 1))
    t = np.arange(t_steps)[None, :]
    out: dict[str, object] = {}
    for m, (name_m, dim) in enumerate(zip(MODALITIES, spec.dims, strict=True)):
        a_mat, b_mat = loadings[name_m]
        x = np.zeros((n, t_steps, dim), dtype=np.float32)
        # Profiles over the *valid* steps, so front and end padding hold the same values.
        a_prof = 1.0 + 0.5 * np.sin(2 * np.pi * t / (9.0 + 4 * m) + phase)  # (n, T)
        b_prof = 1.0 + 0.5 * np.cos(2 * np.pi * t / (7.0 + 3 * m) + 2 * phase)
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            shared = (s[lo:hi] @ a_mat.T).astype(np.float32)  # (c, d)
            private = (rng.standard_normal((hi - lo, _SHARED)) @ b_mat.T).astype(np.float32)
            block = (a_prof[lo:hi, :, None].astype(np.float32) * shared[:, None, :]
                     + b_prof[lo:hi, :, None].astype(np.float32) * private[:, None, :])
            block += _NOISE[name_m] * rng.standard_normal((hi - lo, t_steps, dim),
                                                          dtype=np.float32)
            for i in range(lo, hi):
                length = int(lengths[i])
                valid = block[i - lo, :length]
                if spec.padding == "front":
                    x[i, t_steps - length:] = valid
                else:
                    x[i, :length] = valid
        out[name_m] = x
    out["audio_lengths"] = lengths.copy()
    out["vision_lengths"] = lengths.copy()
    out["regression_labels"] = labels
    out["id"] = np.array([f"{name}{i // 8:04d}$_${i % 8}" for i in range(n)])
    out["raw_text"] = np.array([f"synthetic {name} clip {i}" for i in range(n)])
    return out


def make_dataset(spec: SyntheticSpec) -> dict[str, dict]:
    """Generate all splits (same loadings in every split)."""
    if spec.padding not in ("front", "end"):
        raise ValueError(f"padding must be 'front' or 'end', got {spec.padding!r}")
    rng = np.random.default_rng(spec.seed)
    w = rng.standard_normal(_SHARED)
    w *= 1.5 / np.linalg.norm(w)
    loadings = {}
    for name_m, dim in zip(MODALITIES, spec.dims, strict=True):
        loadings[name_m] = (
            _SIGNAL[name_m] * rng.standard_normal((dim, _SHARED)),
            _PRIVATE[name_m] * rng.standard_normal((dim, _SHARED)),
        )
    # Each split has its own generator stream, derived from the seed.
    return {
        name: _split(spec, name, n, np.random.default_rng([spec.seed, k]), loadings, w)
        for k, (name, n) in enumerate(spec.sizes.items())
    }


def write_pickle(spec: SyntheticSpec, path: Path) -> Path:
    """Generate the data set and pickle it (protocol 4) to ``path``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = make_dataset(spec)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        pickle.dump(data, handle, protocol=4)
    tmp.replace(path)
    return path
