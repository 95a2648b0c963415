"""How a trained model holds up when modalities go missing or get noisy.

:func:`evaluate` scores one split (``test`` by default) under:

* **every non-empty subset of modalities**, the others removed, two ways:
  ``surrogate`` (the removed modalities are absent: the model infers their factors from
  the present ones, see :mod:`mfm.model.mfm`) and ``zeros`` (the paper's simple baseline:
  the removed modalities' features are set to 0 in the user's feature space, i.e. before
  normalisation, and fed as if present); for ``surrogate``
  also the reconstruction error (MSE over valid steps) of each removed modality rebuilt
  from the others;
* **per modality, time-step drop** at levels 0.0, 0.1, ..., 0.9: that fraction of each
  sample's valid steps is dropped, ``zeros`` (the steps' features set to a raw 0) or
  ``surrogate`` (the steps removed from the sequence, which the model handles as a shorter
  sequence);
* **per modality, Gaussian noise** at the same levels: noise of standard deviation
  ``level`` times the feature's training standard deviation.

Curves are summarised by their area under the metric-versus-level curve divided by the
level range (the mean metric over levels): accuracy for classification, MAE for regression
(for MAE, lower is better). Random draws use a generator seeded by ``seed``.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mfm.data.batch import Batch, step_mask
from mfm.data.dataset import MultimodalData
from mfm.engine import MFMModule
from mfm.losses.objective import masked_mse
from mfm.metrics import TargetMetrics

LEVELS = tuple(round(0.1 * i, 1) for i in range(10))


@dataclass
class RobustnessReport:
    """Everything :func:`evaluate` measured.

    Attributes:
        metric: the metric summarised in curves (``accuracy`` or ``MAE``).
        subsets: one row per (subset, variant): present modalities, variant, all metrics,
            and ``recon_<m>`` for removed modalities (surrogate rows).
        curves: one row per (kind, modality, variant, level) with all metrics.
        areas: ``(kind, modality, variant)`` -> normalised area under the curve.
    """

    metric: str
    modalities: list[str]
    subsets: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    areas: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "modalities": self.modalities, "subsets": self.subsets,
                "curves": self.curves, "areas": self.areas}


def _scores(module: MFMModule, batch: Batch) -> tuple[dict[str, float], Any]:
    with torch.no_grad():
        output = module.model(batch.inputs, batch.lengths)
    assert batch.targets is not None
    # Every target's metrics; with several, the plain names are the means over targets.
    metrics = TargetMetrics(module.target_kinds)
    metrics.update(output.predictions, batch.targets)
    return {k: float(v) for k, v in metrics.compute().items()}, output


def _with(batch: Batch, inputs: dict[str, Tensor] | None = None,
          lengths: dict[str, Tensor] | None = None) -> Batch:
    return Batch({**batch.inputs, **(inputs or {})}, {**batch.lengths, **(lengths or {})},
                 batch.targets, batch.index, batch.label_counts)


def _drop_steps(x: Tensor, n: Tensor, level: float, generator: torch.Generator,
                fill: Tensor, compact: bool) -> tuple[Tensor, Tensor]:
    """Drop ``level`` of each sample's valid steps: set them to ``fill`` (a raw zero), or
    remove them from the sequence (compact)."""
    steps = x.shape[1]
    valid = step_mask(n, steps)
    drop = (torch.rand(valid.shape, generator=generator) < level) & valid
    if not compact:
        return torch.where(drop.unsqueeze(-1), fill.to(x.dtype), x), n
    keep = valid & ~drop
    # Stable order of kept steps first; samples that lose every step keep their first one.
    none_left = ~keep.any(dim=1) & (n > 0)
    keep[none_left, 0] = True
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    moved = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))
    new_n = keep.sum(dim=1)
    return moved * step_mask(new_n, steps).unsqueeze(-1), new_n


def _area(values: list[float]) -> float:
    """Trapezoid area over LEVELS divided by the level range (a mean over levels)."""
    total = sum((a + b) / 2 * (LEVELS[i + 1] - LEVELS[i])
                for i, (a, b) in enumerate(itertools.pairwise(values)))
    return total / (LEVELS[-1] - LEVELS[0])


def evaluate(
    module: MFMModule,
    data: MultimodalData,
    split: str = "test",
    *,
    seed: int = 0,
    levels: tuple[float, ...] = LEVELS,
    progress: Callable[[str], None] | None = None,
) -> RobustnessReport:
    """Score ``module`` on ``data[split]`` under missing modalities, step drop and noise.

    Args:
        module: a trained model (``mfm.run.load_trained``).
        data: data prepared with the model's normalisation statistics.
        split: which split to score.
        seed: seed of the random step drops and noise.
        progress: called with a short description before each scenario.

    Returns:
        A :class:`RobustnessReport`.
    """
    module.eval()
    batch = data[split].full_batch()
    names = module.model.names
    kind = module.config.model.output.kind
    metric = "accuracy" if kind == "classification" else "MAE"
    report = RobustnessReport(metric=metric, modalities=list(names))
    train = data["train"]
    # Zero filling happens in the user's feature space: a raw 0 is (0 - mean) / std after
    # the normalisation the model was trained with.
    fill = {}
    for n in names:
        stats = (data.normalization or {}).get(n)
        fill[n] = (-torch.tensor(stats["mean"]) / torch.tensor(stats["std"])).float() \
            if stats else torch.zeros(batch.inputs[n].shape[2])

    for size in range(len(names), 0, -1):
        for subset in itertools.combinations(names, size):
            removed = [n for n in names if n not in subset]
            label = "+".join(subset)
            if progress:
                progress(f"subset {label}")
            absent = _with(batch, lengths={n: torch.zeros_like(batch.lengths[n])
                                           for n in removed})
            values, output = _scores(module, absent)
            row: dict[str, Any] = {"present": label, "variant": "surrogate", **values}
            for n in removed:
                if n not in output.reconstructions:
                    continue  # a model.kind without decoders rebuilds nothing
                real = batch.lengths[n]
                row[f"recon_{n}"] = float(masked_mse(output.reconstructions[n],
                                                     batch.inputs[n], real))
            report.subsets.append(row)
            if removed:
                zeroed = _with(batch, inputs={
                    n: fill[n].expand_as(batch.inputs[n]) * step_mask(
                        batch.lengths[n], batch.inputs[n].shape[1]).unsqueeze(-1)
                    for n in removed})
                values, _ = _scores(module, zeroed)
                report.subsets.append({"present": label, "variant": "zeros", **values})

    for name in names:
        # Training standard deviation per feature over valid steps (1 after normalisation).
        x_train, n_train = train.features[name], train.lengths[name]
        valid = x_train[step_mask(n_train, x_train.shape[1])]
        std = valid.std(dim=0) if valid.shape[0] > 1 else torch.ones(x_train.shape[2])
        for kind_name, variant in (("step_drop", "zeros"), ("step_drop", "surrogate"),
                                   ("noise", "gaussian")):
            if progress:
                progress(f"{kind_name} {name} {variant}")
            curve = []
            for level in levels:
                generator = torch.Generator().manual_seed(seed)
                x, n = batch.inputs[name], batch.lengths[name]
                if kind_name == "step_drop":
                    x2, n2 = _drop_steps(x, n, level, generator, fill[name],
                                         compact=variant == "surrogate")
                else:
                    noise = torch.randn(x.shape, generator=generator) * std * level
                    x2, n2 = (x + noise) * step_mask(n, x.shape[1]).unsqueeze(-1), n
                values, _ = _scores(module, _with(batch, {name: x2}, {name: n2}))
                report.curves.append({"kind": kind_name, "modality": name, "variant": variant,
                                      "level": level, **values})
                curve.append(values[metric])
            report.areas[f"{kind_name}/{name}/{variant}"] = _area(curve)
    return report


def _markdown(report: RobustnessReport) -> str:
    metric = report.metric
    key = "Non0_acc_2" if metric == "MAE" else "f1_weighted"
    recon_cols = [f"recon_{n}" for n in report.modalities]
    lines = [f"### Missing modalities ({metric}, {key})", "",
             f"| present | surrogate {metric} | zeros {metric} | surrogate {key} | zeros {key} | "
             + " | ".join(f"rebuilt {c[6:]} MSE" for c in recon_cols) + " |",
             "|" + " --- |" * (5 + len(recon_cols))]
    by_subset: dict[str, dict[str, dict[str, Any]]] = {}
    for row in report.subsets:
        by_subset.setdefault(row["present"], {})[row["variant"]] = row
    for present, rows in by_subset.items():
        sur, zer = rows["surrogate"], rows.get("zeros", rows["surrogate"])
        recon = [f"{sur[c]:.3f}" if c in sur else "-" for c in recon_cols]
        lines.append(f"| {present} | {sur[metric]:.4f} | {zer[metric]:.4f} | {sur[key]:.4f} | "
                     f"{zer[key]:.4f} | " + " | ".join(recon) + " |")
    lines += ["", f"### Area under {metric} vs level (0.0-0.9, normalised)", "",
              "| modality | step drop, zeros | step drop, surrogate | Gaussian noise |",
              "| --- | --- | --- | --- |"]
    for name in report.modalities:
        a = report.areas
        lines.append(f"| {name} | {a[f'step_drop/{name}/zeros']:.4f} | "
                     f"{a[f'step_drop/{name}/surrogate']:.4f} | "
                     f"{a[f'noise/{name}/gaussian']:.4f} |")
    return "\n".join(lines) + "\n"


def _plot(report: RobustnessReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = report.metric
    fig, (bars, drop, noise) = plt.subplots(1, 3, figsize=(16, 4.8))
    by_subset: dict[str, dict[str, float]] = {}
    for row in report.subsets:
        by_subset.setdefault(row["present"], {})[row["variant"]] = row[metric]
    labels = list(by_subset)
    xs = range(len(labels))
    bars.bar([x - 0.2 for x in xs], [by_subset[k]["surrogate"] for k in labels], 0.4,
             label="surrogate inference")
    bars.bar([x + 0.2 for x in xs], [by_subset[k].get("zeros", by_subset[k]["surrogate"])
                                     for k in labels], 0.4, label="zero filling")
    bars.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    bars.set_ylabel(metric)
    bars.set_title("Present modalities (others missing)")
    bars.legend(fontsize=8)
    for i, name in enumerate(report.modalities):
        colour = f"C{i % 10}"
        for variant, style in (("surrogate", "-"), ("zeros", "--")):
            rows = [r for r in report.curves if r["kind"] == "step_drop"
                    and r["modality"] == name and r["variant"] == variant]
            drop.plot([r["level"] for r in rows], [r[metric] for r in rows], style,
                      color=colour, label=f"{name} ({variant})")
        rows = [r for r in report.curves if r["kind"] == "noise" and r["modality"] == name]
        noise.plot([r["level"] for r in rows], [r[metric] for r in rows], color=colour,
                   label=name)
    drop.set_xlabel("fraction of time steps dropped")
    drop.set_ylabel(metric)
    drop.set_title("Step drop: solid = surrogate (removed), dashed = zeros")
    drop.legend(fontsize=7)
    noise.set_xlabel("noise std / training std")
    noise.set_ylabel(metric)
    noise.set_title("Gaussian noise per modality")
    noise.legend(fontsize=7)
    better = "lower is better" if metric == "MAE" else "higher is better"
    fig.suptitle(f"Robustness ({metric}, {better})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: RobustnessReport, output: Path) -> dict[str, Path]:
    """Write ``robustness.json``, ``robustness.csv``, ``robustness.md`` and
    ``robustness.png`` into ``output``; return their paths."""
    output.mkdir(parents=True, exist_ok=True)
    paths = {ext: output / f"robustness.{ext}" for ext in ("json", "csv", "md", "png")}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    rows = ([{"section": "subset", **r} for r in report.subsets]
            + [{"section": "curve", **r} for r in report.curves])
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    paths["md"].write_text(_markdown(report))
    _plot(report, paths["png"])
    return paths
