"""A generated multimodal data set with known structure (the default data of ``mfm fit``).

Generative story, for sample ``i`` and modality ``m`` of ``M``:

* a shared factor ``s_i ~ N(0, I_k)`` drives the label and appears in every modality;
* a private factor ``p_{i,m} ~ N(0, I_j)`` appears in modality ``m`` only and never in
  the label;
* step ``t`` of modality ``m`` is
  ``x_{i,m}[t] = a_m(t) * (A_m s_i) + b_m(t) * (B_m p_{i,m}) + noise * e``,
  with fixed random loadings ``A_m`` (``d_m x k``), ``B_m`` (``d_m x j``), smooth temporal
  profiles ``a_m``, ``b_m`` (sinusoids of modality-specific frequency and phase) and
  white noise ``e``;
* regression label ``y_i = clip(w . s_i + 0.1 * n_i, -3, 3)`` with ``||w|| = 1.5`` (so it
  looks like a sentiment score); classification label ``argmax(W s_i)`` over
  ``num_classes`` columns;
* with ``targets = K > 1``: targets ``y1 .. yK`` as above, each with its own ``w`` (or
  ``W``); the last ``noise_targets`` of them are instead pure noise, independent of
  everything (regression ``noise_scale * n_i``, classification a uniform class), and
  are named ``noise1 ..``; ``missing_labels`` removes that fraction of every target's
  labels at random (NaN), independently per target.

Each modality alone carries ``s`` under its own noise and private nuisance, so fusing
modalities predicts better than any one; a good factorisation puts ``s`` in Z_y and the
``p_m`` in the Z_a,m. Lengths can be ragged (drawn per sample in ``[min_fraction * T, T]``;
shared by all modalities when their padded lengths agree) and are stored with trailing
padding, the layout of a :class:`~mfm.data.batch.Batch`. Everything is drawn from one
``numpy.random.Generator`` seeded by ``seed``: the same options give the same data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mfm.data.raw import RawData, RawSplit


@dataclass(frozen=True)
class SyntheticOptions:
    """Options of the synthetic data set (``--data synthetic:key=value,...``).

    Attributes:
        modalities: number of modalities ``M``; they are named ``m1`` .. ``mM``.
        dims: features per step; one value for all, or ``M`` values joined by ``/``.
        steps: padded length; one value for all, or ``M`` values joined by ``/``
            (different lengths make the data unaligned).
        n_train, n_valid, n_test: split sizes.
        task: ``regression`` or ``classification``.
        num_classes: classes of the classification task.
        shared_dim: size ``k`` of the shared factor.
        private_dim: size ``j`` of each private factor.
        noise: standard deviation of the white noise.
        private_scale: scale of the private (label-irrelevant) signal.
        offset: a constant added to every feature at valid steps (real features are rarely
            centred; with an offset, a raw 0 is far from the data).
        targets: number of targets ``K`` (one head each when ``K > 1``).
        noise_targets: how many of the ``K`` targets are pure noise.
        noise_scale: standard deviation of a regression noise target (not clipped; a
            target on another scale than the others).
        missing_labels: fraction of each target's labels removed (NaN).
        ragged: draw per-sample lengths instead of using full length.
        min_fraction: shortest ragged length as a fraction of ``T``.
        seed: seed of the generator.
    """

    modalities: int = 3
    dims: str = "16/8/12"
    steps: str = "20"
    n_train: int = 1500
    n_valid: int = 300
    n_test: int = 300
    task: Literal["regression", "classification"] = "regression"
    num_classes: int = 3
    shared_dim: int = 4
    private_dim: int = 4
    noise: float = 1.0
    private_scale: float = 1.0
    offset: float = 0.0
    targets: int = 1
    noise_targets: int = 0
    noise_scale: float = 1.5
    missing_labels: float = 0.0
    ragged: bool = True
    min_fraction: float = 0.5
    seed: int = 0

    def per_modality(self, value: str, what: str) -> list[int]:
        """Expand a ``/``-joined option into one positive integer per modality."""
        try:
            parts = [int(v) for v in str(value).split("/")]
        except ValueError as exc:
            raise ValueError(f"synthetic data: {what}: expected integers joined by '/', "
                             f"found {value!r}") from exc
        if len(parts) == 1:
            parts = parts * self.modalities
        default = next(f.default for f in dataclasses.fields(self) if f.name == what)
        if value == default:
            # The default list repeats cyclically for any number of modalities.
            parts = [parts[i % len(parts)] for i in range(self.modalities)]
        if len(parts) != self.modalities or min(parts) < 1:
            raise ValueError(
                f"synthetic data: {what}: expected 1 or {self.modalities} positive integers, "
                f"found {value!r}"
            )
        return parts

    def validate(self) -> None:
        """Raise ValueError with the option's name if a value is out of range."""
        checks = [
            ("modalities", self.modalities >= 1, ">= 1"),
            ("n_train", self.n_train >= 2, ">= 2"),
            ("n_valid", self.n_valid >= 1, ">= 1"),
            ("n_test", self.n_test >= 1, ">= 1"),
            ("num_classes", self.num_classes >= 2, ">= 2"),
            ("shared_dim", self.shared_dim >= 1, ">= 1"),
            ("private_dim", self.private_dim >= 1, ">= 1"),
            ("noise", self.noise >= 0, ">= 0"),
            ("min_fraction", 0 < self.min_fraction <= 1, "in (0, 1]"),
            ("targets", self.targets >= 1, ">= 1"),
            ("noise_targets", 0 <= self.noise_targets <= self.targets, "in [0, targets]"),
            ("missing_labels", 0 <= self.missing_labels < 1, "in [0, 1)"),
            ("noise_scale", self.noise_scale > 0, "> 0"),
            ("task", self.task in ("regression", "classification"),
             "'regression' or 'classification'"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"synthetic data: {name}: expected {expected}, found {getattr(self, name)!r}"
                )
        self.per_modality(self.dims, "dims")
        self.per_modality(self.steps, "steps")

    @classmethod
    def from_strings(cls, options: dict[str, str]) -> SyntheticOptions:
        """Parse ``key=value`` strings, converting each to its field's type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, object] = {}
        for key, raw in options.items():
            if key not in fields:
                raise ValueError(
                    f"synthetic data: unknown option {key!r} (expected one of: "
                    f"{', '.join(fields)})"
                )
            default = fields[key].default
            try:
                if isinstance(default, bool):
                    if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(raw)
                    kwargs[key] = raw.lower() in ("true", "1", "yes")
                elif isinstance(default, int):
                    kwargs[key] = int(raw)
                elif isinstance(default, float):
                    kwargs[key] = float(raw)
                else:
                    kwargs[key] = raw
            except ValueError as exc:
                kind = {bool: "true or false", int: "an integer", float: "a number"}
                raise ValueError(
                    f"synthetic data: {key}: expected {kind.get(type(default), 'text')}, "
                    f"found {raw!r}"
                ) from exc
        options_ = cls(**kwargs)  # type: ignore[arg-type]
        options_.validate()
        return options_


def generate_synthetic(options: SyntheticOptions | None = None) -> RawData:
    """Generate the synthetic train/valid/test splits described in the module docstring."""
    opt = options or SyntheticOptions()
    opt.validate()
    rng = np.random.default_rng(opt.seed)
    names = [f"m{i + 1}" for i in range(opt.modalities)]
    dims = opt.per_modality(opt.dims, "dims")
    steps = opt.per_modality(opt.steps, "steps")
    sizes = {"train": opt.n_train, "valid": opt.n_valid, "test": opt.n_test}
    total = sum(sizes.values())
    k, j = opt.shared_dim, opt.private_dim

    shared = rng.standard_normal((total, k))
    target = _target(opt, rng, shared, noise=False)
    named: dict[str, np.ndarray] = {}
    if opt.targets > 1:
        clean = opt.targets - opt.noise_targets
        named["y1" if clean else "noise1"] = target
        for i in range(1, opt.targets):
            noise = i >= clean
            name = f"noise{i - clean + 1}" if noise else f"y{i + 1}"
            named[name] = _target(opt, rng, shared, noise=noise)
    if opt.missing_labels > 0:
        for name, values in (named or {"label": target}).items():
            gone = rng.random(total) < opt.missing_labels
            values = values.astype(np.float32)
            values[gone] = np.nan
            if named:
                named[name] = values
            else:
                target = values
    if named:
        target = next(iter(named.values()))

    aligned = len(set(steps)) == 1
    common_fraction = rng.uniform(opt.min_fraction, 1.0, size=total)
    features: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    for m, (name, d, t_m) in enumerate(zip(names, dims, steps, strict=True)):
        load_shared = rng.standard_normal((d, k)) / np.sqrt(k)
        load_private = opt.private_scale * rng.standard_normal((d, j)) / np.sqrt(j)
        private = rng.standard_normal((total, j))
        t = np.arange(t_m) / max(t_m, 1)
        freq = 1.0 + 0.5 * m
        a = 1.0 + 0.5 * np.sin(2 * np.pi * freq * t + 0.3 * m)  # (T,)
        b = 1.0 + 0.5 * np.cos(2 * np.pi * (freq + 0.25) * t + 0.7 * m)
        signal = (
            a[None, :, None] * (shared @ load_shared.T)[:, None, :]
            + b[None, :, None] * (private @ load_private.T)[:, None, :]
        )
        x = signal + opt.noise * rng.standard_normal((total, t_m, d))
        fraction = common_fraction if aligned else rng.uniform(opt.min_fraction, 1.0, total)
        if opt.ragged:
            n = np.maximum(1, np.round(fraction * t_m)).astype(np.int64)
        else:
            n = np.full(total, t_m, dtype=np.int64)
        x += opt.offset
        x[np.arange(t_m)[None, :] >= n[:, None]] = 0.0  # trailing padding
        features[name] = x.astype(np.float32)
        lengths[name] = n

    splits: dict[str, RawSplit] = {}
    start = 0
    for split, size in sizes.items():
        sl = slice(start, start + size)
        splits[split] = RawSplit(
            features={k_: v[sl] for k_, v in features.items()},
            labels=target[sl],
            lengths={k_: v[sl] for k_, v in lengths.items()},
            ids=[f"{split}-{i}" for i in range(size)],
            targets={k_: v[sl] for k_, v in named.items()},
        )
        start += size
    return RawData(source="synthetic", splits=splits, padding="right", name="synthetic",
                   default_target=",".join(named) or None)


def _target(opt: SyntheticOptions, rng: np.random.Generator, shared: np.ndarray,
            noise: bool) -> np.ndarray:
    """One target for every sample: driven by the ``(N, k)`` shared factor, or pure noise.

    Returns:
        ``(N,)`` float32 regression values or int64 class indices.
    """
    total, k = shared.shape
    if noise:
        if opt.task == "regression":
            return (opt.noise_scale * rng.standard_normal(total)).astype(np.float32)
        return rng.integers(0, opt.num_classes, total).astype(np.int64)
    w = rng.standard_normal(k)
    if opt.task == "regression":
        w *= 1.5 / np.linalg.norm(w)
        values = shared @ w + 0.1 * rng.standard_normal(total)
        return np.clip(values, -3.0, 3.0).astype(np.float32)
    logits = shared @ rng.standard_normal((k, opt.num_classes))
    return logits.argmax(axis=1).astype(np.int64)
