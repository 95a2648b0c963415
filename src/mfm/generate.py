"""Samples from the prior and reconstructions, drawn as image grids or sequence plots.

Generation. Factors are drawn from the prior, ``Z_y ~ N(0, I_zy)`` and ``Z_a,m ~ N(0, I_zm)``
for every modality (a ``torch.Generator`` seeded by ``seed``), and decoded in evaluation
mode: ``X^_m = Dec_m([G_y(Z_y), G_m(Z_a,m)], T_m)``. ``T_m`` comes from the data (``--data``,
or the data the model was trained on) or from ``steps``. When the model stores
normalisation statistics (``MFMModule.normalization``: modality -> ``{mean, std}`` per
feature), everything drawn is mapped back to the user's units, ``x * std + mean``.

Image modalities. A modality of ``T`` steps of ``d`` features is drawn as an ``H x W``
image when

* ``images`` names it (``--image NAME=HxW``, ``H * W == T * d``; ``--image NAME=off``
  forces sequence plots), or otherwise, automatically,
* ``T * d = k * k`` for an integer ``k >= 8`` and either ``T == 1`` (a flattened image,
  e.g. 784 = 28 x 28 pixels) or ``T == d`` (rows as steps, e.g. AV-MNIST's ``image``: 28
  rows of 28 pixels), and, when the model stores normalisation statistics, every feature's
  training mean is ``>= 0`` (pixel intensities are not negative: AV-MNIST's 20 x 20
  log-spectrogram ``audio`` has negative means and stays a sequence).

The image is the ``T * d`` values in order, row-major: step ``t`` fills the next ``d``
pixels.

Outputs (into ``output``), ``N = n``, ``C = columns``:

* image modality ``m``:

  - ``<m>-vary-za.png``: ``N`` rows x ``C`` columns; row ``i`` shares one ``Z_y`` draw,
    every cell has its own ``Z_a,m`` draw (what the modality-specific factor changes);
  - ``<m>-vary-zy.png``: row ``i`` shares one ``Z_a,m`` draw, every cell has its own
    ``Z_y`` (what the discriminative factor changes);
  - ``<m>-reconstruction.png`` (with data): 3 rows x ``N`` columns of real samples: the
    input, its reconstruction with every modality present, and the modality rebuilt from
    the others when it is absent (its length set to 0: the surrogate path); the third row
    is left out when the model has one modality;

* sequence modality ``m``: ``<m>-prior.png`` (``N`` prior samples, a few feature
  dimensions) and ``<m>-reconstruction.png`` (with data: a few samples x a few feature
  dimensions, real vs reconstructed vs rebuilt without ``m``, valid steps only);
* ``generate.json``: what was drawn, the image rule used per modality, the files, and the
  reconstruction MSE of each modality over the whole split (normalised units, valid steps)
  with every modality present and with it absent.

Image grids are tiled with numpy and placed pixel for pixel in a matplotlib figure
(``figimage``, no resampling), so a grid PNG is exactly :func:`grid_pixels` in size: each
tile is the image scaled by an integer factor ``scale = max(1, ceil(TILE / max(H, W)))``,
tiles are separated and surrounded by ``PAD`` white pixels, and the figure adds ``LEFT``,
``RIGHT``, ``TOP`` and ``BOTTOM`` pixels of margin for the titles and row labels (and is at
least ``MIN_WIDTH`` pixels wide). The grid's top-left corner is at pixel ``(TOP, LEFT)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mfm.config import ConfigError
from mfm.data.batch import Batch
from mfm.data.dataset import MultimodalData
from mfm.engine import MFMModule
from mfm.losses.objective import masked_mse

TILE = 48
"""Tiles are scaled up by an integer factor to at least about this many pixels."""
PAD = 2
LEFT, RIGHT, TOP, BOTTOM = 110, 10, 72, 10
MIN_WIDTH = 480
"""Narrow grids get a wider figure (blank on the right) so that titles fit."""
DPI = 100
MIN_SIDE = 8
SEQUENCE_FEATURES = 3
SEQUENCE_SAMPLES = 4


@dataclass(frozen=True)
class ImageSpec:
    """How a modality is drawn: ``(height, width)`` for an image, ``None`` for a sequence;
    ``rule`` says why."""

    shape: tuple[int, int] | None
    rule: str


@dataclass
class GenerateResult:
    """What :func:`generate` wrote."""

    output: Path
    files: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def parse_images(values: Sequence[str]) -> dict[str, tuple[int, int] | None]:
    """Parse ``NAME=HxW`` (or ``NAME=off``) options into name -> shape (``None`` = off).

    Raises:
        ConfigError: a value is not of that form.
    """
    result: dict[str, tuple[int, int] | None] = {}
    for value in values:
        name, sep, shape = value.partition("=")
        name, shape = name.strip(), shape.strip().lower()
        if not sep or not name:
            raise ConfigError(f"--image: expected NAME=HxW or NAME=off, found {value!r}")
        if shape == "off":
            result[name] = None
            continue
        height, x, width = shape.partition("x")
        if not x or not height.isdigit() or not width.isdigit() or int(height) < 1 \
                or int(width) < 1:
            raise ConfigError(f"--image: expected NAME=HxW with positive integers (e.g. "
                              f"image=28x28) or NAME=off, found {value!r}")
        result[name] = (int(height), int(width))
    return result


def parse_steps(values: Sequence[str]) -> dict[str, int]:
    """Parse ``NAME=T`` options.

    Raises:
        ConfigError: a value is not of that form.
    """
    result: dict[str, int] = {}
    for value in values:
        name, sep, steps = value.partition("=")
        if not sep or not name.strip() or not steps.strip().isdigit() or int(steps) < 1:
            raise ConfigError(f"--steps: expected NAME=T with a positive integer T, found "
                              f"{value!r}")
        result[name.strip()] = int(steps)
    return result


def image_spec(name: str, steps: int, size: int,
               stats: dict[str, list[float]] | None,
               forced: dict[str, tuple[int, int] | None] | None = None) -> ImageSpec:
    """Decide whether modality ``name`` (``steps`` x ``size`` values) is an image.

    See the module docstring for the rule.

    Raises:
        ConfigError: a forced shape does not hold ``steps * size`` values.
    """
    forced = forced or {}
    if name in forced:
        shape = forced[name]
        if shape is None:
            return ImageSpec(None, "--image off")
        if shape[0] * shape[1] != steps * size:
            raise ConfigError(f"--image {name}={shape[0]}x{shape[1]}: {shape[0] * shape[1]} "
                              f"pixels, but {name!r} has {steps} steps x {size} features = "
                              f"{steps * size} values")
        return ImageSpec(shape, "--image")
    side = math.isqrt(steps * size)
    if side * side != steps * size or side < MIN_SIDE:
        return ImageSpec(None, "auto: steps x features is not a square of side >= 8")
    if steps != 1 and steps != size:
        return ImageSpec(None, "auto: neither one step nor as many steps as features")
    if stats is not None and min(stats["mean"]) < 0:
        return ImageSpec(None, "auto: negative training means (not pixel intensities)")
    layout = "one step (flattened)" if steps == 1 else "rows as steps"
    return ImageSpec((side, side), f"auto: {layout}")


def _scale(height: int, width: int) -> int:
    return max(1, math.ceil(TILE / max(height, width)))


def grid_pixels(rows: int, columns: int, height: int, width: int) -> tuple[int, int]:
    """``(pixel height, pixel width)`` of the PNG of a ``rows x columns`` grid of
    ``height x width`` images (see the module docstring)."""
    s = _scale(height, width)
    grid_h = rows * height * s + (rows + 1) * PAD
    grid_w = columns * width * s + (columns + 1) * PAD
    return TOP + grid_h + BOTTOM, max(MIN_WIDTH, LEFT + grid_w + RIGHT)


def _tile(images: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(R, C, H, W)`` values -> an RGB grid (grey scale in ``[low, high]``, white pads)."""
    rows, columns, height, width = images.shape
    s = _scale(height, width)
    scaled = np.clip((images - low) / (high - low if high > low else 1.0), 0.0, 1.0)
    scaled = scaled.repeat(s, axis=2).repeat(s, axis=3)
    th, tw = height * s, width * s
    grid = np.ones((rows * th + (rows + 1) * PAD, columns * tw + (columns + 1) * PAD))
    for r in range(rows):
        for c in range(columns):
            top, left = PAD + r * (th + PAD), PAD + c * (tw + PAD)
            grid[top:top + th, left:left + tw] = scaled[r, c]
    return np.repeat(grid[:, :, None], 3, axis=2)


def save_grid(images: np.ndarray, path: Path, title: str, row_labels: Sequence[str],
              column_note: str) -> Path:
    """Write a titled ``(R, C, H, W)`` image grid, pixel for pixel (see :func:`grid_pixels`).

    Grey levels span the 0.5th to 99.5th percentile of ``images``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, columns, height, width = images.shape
    finite = images[np.isfinite(images)]
    low, high = (float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))) \
        if finite.size else (0.0, 1.0)
    grid = _tile(np.nan_to_num(images, nan=low), low, high)
    px_h, px_w = grid_pixels(rows, columns, height, width)
    fig = plt.figure(figsize=(px_w / DPI, px_h / DPI), dpi=DPI)
    fig.figimage(grid, xo=LEFT, yo=BOTTOM, origin="upper")
    fig.text(4 / px_w, 1 - 4 / px_h, title, ha="left", va="top", fontsize=9,
             fontweight="bold")
    fig.text(4 / px_w, 1 - 22 / px_h, column_note, ha="left", va="top", fontsize=8,
             wrap=True)
    s = _scale(height, width)
    for r, label in enumerate(row_labels[:rows]):
        centre = BOTTOM + grid.shape[0] - (PAD + r * (height * s + PAD) + height * s / 2)
        fig.text(4 / px_w, centre / px_h, label, ha="left", va="center", fontsize=7)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _raw(x: Tensor, stats: dict[str, list[float]] | None) -> np.ndarray:
    """Normalised ``(..., d)`` values back in the user's units (as float64 numpy)."""
    values = x.detach().double()
    if stats is not None:
        values = values * torch.tensor(stats["std"], dtype=torch.float64) \
            + torch.tensor(stats["mean"], dtype=torch.float64)
    return values.numpy()


def _as_images(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(..., T, d)`` -> ``(..., H, W)``, the ``T * d`` values row-major."""
    return x.reshape(*x.shape[:-2], *shape)


def _decode(module: MFMModule, z_y: Tensor, z: dict[str, Tensor],
            steps: dict[str, int]) -> tuple[dict[str, Tensor], Tensor]:
    """Reconstructions (modality -> ``(B, T_m, d_m)``) and the prediction from ``F_y``."""
    with torch.no_grad():
        prediction, recon, _, _ = module.model.decode(z_y, z, steps)
    if isinstance(prediction, dict):  # several named targets: the first one
        prediction = next(iter(prediction.values()))
    return recon, prediction


def _label_text(prediction: Tensor, task: str) -> list[str]:
    if task == "classification":
        return [f"class {int(k)}" for k in prediction.argmax(dim=-1)]
    return [f"y^ {float(v):+.2f}" for v in prediction.reshape(prediction.shape[0], -1)[:, 0]]


def _prior(generator: torch.Generator, count: int, size: int) -> Tensor:
    return torch.randn(count, size, generator=generator)


def _sequence_prior_plot(values: np.ndarray, path: Path, name: str) -> Path:
    """``values``: ``(N, T, d)`` raw prior samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features = min(SEQUENCE_FEATURES, values.shape[2])
    fig, axes = plt.subplots(1, features, figsize=(4.2 * features, 3.2), squeeze=False)
    steps = np.arange(values.shape[1])
    marker = "o" if values.shape[1] < 3 else None
    for k, ax in enumerate(axes[0]):
        for i in range(values.shape[0]):
            ax.plot(steps, values[i, :, k], lw=0.9, marker=marker, color=f"C{i % 10}")
        ax.set_xlabel("time step")
        ax.set_ylabel(f"feature {k} (data units)")
        ax.set_title(f"{name}, feature {k}", fontsize=10)
    fig.suptitle(f"{name}: {values.shape[0]} samples from the prior (Z_y, Z_a ~ N(0, I)), "
                 "one colour per sample", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _sequence_recon_plot(real: np.ndarray, recon: np.ndarray, rebuilt: np.ndarray | None,
                         lengths: list[int], path: Path, name: str) -> Path:
    """Arrays ``(S, T, d)`` in data units; only each sample's valid steps are drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = real.shape[0]
    features = min(SEQUENCE_FEATURES, real.shape[2])
    fig, axes = plt.subplots(samples, features, figsize=(4.2 * features, 2.4 * samples),
                             squeeze=False)
    for i in range(samples):
        n = lengths[i]
        steps = np.arange(n)
        marker = "o" if n < 3 else None
        for k in range(features):
            ax = axes[i, k]
            ax.plot(steps, real[i, :n, k], color="k", marker=marker, label="real")
            ax.plot(steps, recon[i, :n, k], "--", color="C0", marker=marker,
                    label="reconstructed (all present)")
            if rebuilt is not None:
                ax.plot(steps, rebuilt[i, :n, k], ":", color="C3", marker=marker,
                        label=f"rebuilt without {name}")
            ax.set_title(f"sample {i}, feature {k}", fontsize=9)
            ax.set_xlabel("time step")
            ax.set_ylabel("data units")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{name}: real (black) vs reconstructed (dashed) vs rebuilt from the other "
                 "modalities (dotted)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _split_mse(module: MFMModule, batch: Batch, batch_size: int = 256) -> dict[str, Any]:
    """Reconstruction MSE per modality over the split, present and absent."""
    names = module.model.names
    decoded = [n for n in names if n in module.model.decoders]
    sums = {n: {"present": 0.0, "absent": 0.0} for n in decoded}
    weight = {n: 0.0 for n in decoded}
    with torch.no_grad():
        for start in range(0, len(batch), batch_size):
            part = slice(start, start + batch_size)
            inputs = {k: v[part] for k, v in batch.inputs.items()}
            lengths = {k: v[part] for k, v in batch.lengths.items()}
            full = module.model(inputs, lengths).reconstructions
            for n in decoded:
                valid = float(lengths[n].sum())
                if valid == 0:
                    continue
                weight[n] += valid
                sums[n]["present"] += float(masked_mse(full[n], inputs[n], lengths[n])) * valid
                if len(names) > 1:
                    gone = module.model(inputs, {**lengths, n: torch.zeros_like(lengths[n])})
                    sums[n]["absent"] += float(masked_mse(gone.reconstructions[n], inputs[n],
                                                          lengths[n])) * valid
    return {n: {"present": sums[n]["present"] / weight[n] if weight[n] else None,
                "absent": sums[n]["absent"] / weight[n] if weight[n] and len(names) > 1
                else None} for n in decoded}


def generate(
    module: MFMModule,
    output: str | Path,
    data: MultimodalData | None = None,
    *,
    n: int = 8,
    columns: int = 8,
    split: str = "test",
    steps: dict[str, int] | None = None,
    images: dict[str, tuple[int, int] | None] | None = None,
    seed: int = 0,
) -> GenerateResult:
    """Draw prior samples and (with ``data``) reconstructions of every modality.

    Args:
        module: a trained model.
        output: folder for the files (see the module docstring).
        data: data prepared with the model's statistics; gives the steps per modality and
            the real samples; ``None`` draws prior samples only (``steps`` needed).
        n: rows of the prior grids, samples of the reconstruction figures.
        columns: columns of the prior grids.
        split: the split real samples come from.
        steps: modality -> ``T_m`` (overrides the data's).
        images: forced image shapes (``None`` = never an image), see :func:`parse_images`.
        seed: seed of the prior draws and of the choice of real samples.

    Raises:
        ConfigError: bad options (unknown modality, missing steps, shape mismatch), before
            anything is written.
    """
    if n < 1 or columns < 1:
        raise ConfigError(f"--n and --columns: expected >= 1, found {n} and {columns}")
    module.eval()
    model = module.model
    if not model.decoders:
        raise ConfigError(f"model.kind {model.config.kind!r} has no decoders: nothing to "
                          "generate (generation needs an MFM with its generative part)")
    names = [n for n in model.names if n in model.decoders]
    images = images or {}
    steps = dict(steps or {})
    for name in list(images) + list(steps):
        if name not in model.names:
            raise ConfigError(f"unknown modality {name!r}; the model has "
                              f"{', '.join(model.names)}")
    for name in model.names:
        if name not in steps:
            if data is None:
                raise ConfigError(f"steps of modality {name!r} unknown: pass --data or "
                                  f"--steps {name}=T")
            steps[name] = int(data.info.steps[name])
    stats_all = module.normalization or {}
    specs = {name: image_spec(name, steps[name], model.input_sizes[name],
                              stats_all.get(name), images) for name in names}
    task = next(iter(model.targets.values())).kind
    joint = model.parts.decoder_input == "joint"
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    result = GenerateResult(out)
    generator = torch.Generator().manual_seed(seed)
    zy_size = model.config.zy if model.parts.zy_encoder is not None else 0
    z_sizes = {name: model.config.modality(name).z for name in model.g}
    summary: dict[str, Any] = {"n": n, "columns": columns, "seed": seed, "split": split,
                               "normalization_undone": bool(stats_all), "modalities": {}}

    # Prior: one set of draws for the "rows share Z_y" and one for the "rows share Z_a" grids.
    cells = n * columns
    # (Without both factors, model.kind mfm-no-zy or mfm-zy-only, the first set is simply
    # n x columns independent prior samples.)
    zy_rows = _prior(generator, n, zy_size).repeat_interleave(columns, dim=0)
    za_cells = {m: _prior(generator, cells, z_sizes[m]) for m in z_sizes}
    shared_zy, shared_zy_pred = _decode(module, zy_rows, za_cells, steps)
    za_rows = {m: _prior(generator, n, z_sizes[m]).repeat_interleave(columns, dim=0)
               for m in z_sizes}
    zy_cells = _prior(generator, cells, zy_size)
    shared_za, shared_za_pred = _decode(module, zy_cells, za_rows, steps)
    row_predictions = _label_text(shared_zy_pred[::columns], task)

    # Real samples.
    batch = None
    absent_recon: dict[str, Tensor] = {}
    full_recon: dict[str, Tensor] = {}
    if data is not None:
        chosen = torch.randperm(len(data[split]), generator=generator)[:n].sort().values
        batch = data[split].collate(chosen.tolist())
        with torch.no_grad():
            full_recon = model(batch.inputs, batch.lengths).reconstructions
            if len(names) > 1:
                for m in names:
                    lengths = {**batch.lengths, m: torch.zeros_like(batch.lengths[m])}
                    absent_recon[m] = model(batch.inputs, lengths).reconstructions[m]
        targets = None
        if batch.target is not None:
            targets = [None if v != v else v for v in batch.target.tolist()]  # NaN: missing
        summary["samples"] = {"indices": chosen.tolist(),
                              "ids": [data[split].ids[i] for i in chosen.tolist()]
                              if data[split].ids is not None else None,
                              "targets": targets}
        summary["reconstruction_mse"] = _split_mse(module, data[split].full_batch())
    untrained = {m: not model.parts.surrogate or module.config.train.dropout_for(m) <= 0
                 for m in names}

    for m in names:
        spec = specs[m]
        stats = stats_all.get(m)
        files: list[Path] = []
        if spec.shape is not None and not joint:
            h, w = spec.shape
            grid = _as_images(_raw(shared_zy[m], stats), spec.shape).reshape(n, columns, h, w)
            files.append(save_grid(
                grid, out / f"{m}-prior.png", f"{m}: samples from the prior",
                [f"row {i + 1}" for i in range(n)],
                f"every cell its own draw (model.kind {model.config.kind}: one factor only)"))
        if spec.shape is not None and joint:
            h, w = spec.shape
            grid = _as_images(_raw(shared_zy[m], stats), spec.shape).reshape(n, columns, h, w)
            files.append(save_grid(
                grid, out / f"{m}-vary-za.png",
                f"{m}: samples from the prior; each row shares one Z_y draw",
                [f"Z_y #{i + 1}" + (f" ({row_predictions[i]})" if row_predictions else "")
                 for i in range(n)],
                f"columns: a new Z_a,{m} draw in every cell (rows: the predicted label is "
                "fixed by Z_y)"))
            grid = _as_images(_raw(shared_za[m], stats), spec.shape).reshape(n, columns, h, w)
            files.append(save_grid(
                grid, out / f"{m}-vary-zy.png",
                f"{m}: samples from the prior; each row shares one Z_a,{m} draw",
                [f"Z_a #{i + 1}" for i in range(n)],
                "columns: a new Z_y draw in every cell"))
        if spec.shape is not None:
            if batch is not None:
                rows = [_raw(batch.inputs[m], stats), _raw(full_recon[m], stats)]
                labels = ["input", "reconstructed"]
                if m in absent_recon:
                    rows.append(_raw(absent_recon[m], stats))
                    labels.append(f"without {m}")
                grid = np.stack([_as_images(r, spec.shape) for r in rows])
                note = (f"columns: {len(batch)} {split} samples"
                        + (f" (labels {', '.join(str(int(t)) for t in batch.target)})"
                           if batch.target is not None and task == "classification" else ""))
                if m in absent_recon:
                    note += (f"; 'without {m}': rebuilt from the other modalities "
                             "(surrogate path"
                             + (", untrained: no modality dropout)" if untrained[m] else ")"))
                files.append(save_grid(
                    grid, out / f"{m}-reconstruction.png",
                    f"{m}: inputs, reconstructions"
                    + (f", and rebuilt with {m} absent" if m in absent_recon else ""),
                    labels, note))
        else:
            files.append(_sequence_prior_plot(_raw(shared_zy[m], stats)[::columns][:n],
                                              out / f"{m}-prior.png", m))
            if batch is not None:
                count = min(SEQUENCE_SAMPLES, len(batch))
                rebuilt = _raw(absent_recon[m], stats)[:count] if m in absent_recon else None
                lengths = [int(v) for v in batch.lengths[m][:count]]
                files.append(_sequence_recon_plot(
                    _raw(batch.inputs[m], stats)[:count], _raw(full_recon[m], stats)[:count],
                    rebuilt, lengths, out / f"{m}-reconstruction.png", m))
        result.files.extend(files)
        summary["modalities"][m] = {
            "steps": steps[m], "features": model.input_sizes[m],
            "kind": "image" if spec.shape is not None else "sequence",
            "image_shape": list(spec.shape) if spec.shape is not None else None,
            "rule": spec.rule, "surrogate_trained": not untrained[m],
            "files": [f.name for f in files],
        }
    summary["prior_row_predictions"] = row_predictions
    path = out / "generate.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    result.files.append(path)
    result.summary = summary
    return result


def run(
    model: str | Path,
    output: str | Path,
    data_spec: str | None = None,
    *,
    n: int = 8,
    columns: int = 8,
    split: str = "test",
    steps: dict[str, int] | None = None,
    images: dict[str, tuple[int, int] | None] | None = None,
    seed: int = 0,
    data_options: dict[str, Any] | None = None,
    verbose: bool = False,
) -> GenerateResult:
    """Load a checkpoint (or exported folder) and its data, then :func:`generate`.

    Data: ``data_spec`` when given; otherwise none when ``steps`` names every modality
    (prior samples only); otherwise the data the model was trained on.

    Raises:
        RunError, DataError, ConfigError: before anything is written.
    """
    from mfm.run import data_for, load_trained, quiet_lightning

    with quiet_lightning(verbose):
        module = load_trained(model)
        names = module.model.names
        data = None
        if data_spec is not None or not all(name in (steps or {}) for name in names):
            _, data = data_for(module, data_spec, data_options)
            if split not in data.splits:
                raise ConfigError(f"--split: expected train, valid or test, found {split!r}")
        return generate(module, output, data, n=n, columns=columns, split=split, steps=steps,
                        images=images, seed=seed)
