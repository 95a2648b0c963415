"""Which factor rebuilds each step of each modality, and which modalities the prediction uses.

:func:`interpret` analyses a trained model on one split (``test`` by default, at most
``max_samples`` samples drawn at random with ``seed``, kept in split order), every modality
present, in evaluation mode (no dropout), in the normalised feature space the model works in.

Factor gradients
----------------
For sample ``b`` the encoders give ``F_y[b] = G_y(Z_y[b])`` (``fy`` values) and, for modality
``m``, ``F_m[b] = G_m(Z_a,m[b])`` (``f_m`` values); the decoder rebuilds
``X^_m[b] = Dec_m([F_y[b], F_m[b]])`` of shape ``(T_m, d_m)``. For step ``t``::

    g_y[b, t] = || d X^_m[b, t, :] / d F_y[b, :] ||_F     Frobenius norm of a (d_m, fy) Jacobian
    g_m[b, t] = || d X^_m[b, t, :] / d F_m[b, :] ||_F     Frobenius norm of a (d_m, f_m) Jacobian

The Jacobians are exact: forward-mode autograd (``torch.func.jvp`` vectorised with
``torch.func.vmap`` over the ``fy + f_m`` code directions), computed in chunks of samples.
For a group of samples ``G`` (all samples, one class, or one label bin) and step ``t``, only
samples whose step ``t`` is valid count, ``V_t = {b in G : t < length_m[b]}``::

    grad_fy[t]  = mean_{b in V_t} g_y[b, t]
    grad_fm[t]  = mean_{b in V_t} g_m[b, t]
    share_fy[t] = grad_fy[t] / (grad_fy[t] + grad_fm[t])

``share_fy`` is 1 where the step is rebuilt from the discriminative factor alone and 0 where
it is rebuilt from the modality-specific factor alone. It is a ratio of the group means (not a
mean of per-sample ratios). A step with ``V_t`` empty is *missing*: ``null`` in JSON, an empty
cell in CSV, a gap in the plots. The per-modality summary uses the same formulas with the
means taken over every valid ``(b, t)`` of the group. The quantities compare sensitivities, so
they depend on the scale of ``F_y`` and ``F_m`` (both are outputs of the model's own MLPs).

Models whose decoders read only one factor (``model.kind`` ``mfm-no-zy``: ``F_m``;
``mfm-zy-only``: ``F_y``) get 0 for the other factor; kinds without decoders get no factor
analysis, only the prediction reliance below. The analysed prediction is the model's first
target's.

Groups. Classification: the true class. Regression: ``bins`` quantile bins of the target over
the analysed samples (default 3: the lower, middle and upper thirds; the edges are reported).
Samples whose label is missing count in ``all`` only.

Prediction reliance
-------------------
The prediction's score ``s[b]`` is the predicted value (regression) or the logit of the
predicted class (classification). With ``X_m`` the normalised input (0 is the training mean)::

    gxi[b, m]    = || X_m[b] * d s[b] / d X_m[b] ||_F        over the valid steps
    gxi_step[m][t] = mean_{b in V_t} || X_m[b, t] * d s[b] / d X_m[b, t] ||_2
    gxi_share[m] = mean_b gxi[b, m] / sum_m' mean_b gxi[b, m']

and the removal test over the *whole* split: the metric (accuracy, or MAE for regression) with
every modality present, and with modality ``m`` absent (its length set to 0, so the model's
surrogate path infers its factors from the others; see :mod:`mfm.model.mfm`);
``metric_drop = all - without`` for accuracy and ``without - all`` for MAE, so a positive drop
always means the model is worse without ``m``. The surrogate path is only trained when the
model was fitted with ``train.modality_dropout``; the report says whether it was.

:func:`write_report` writes ``interpret.json``, ``interpret.csv`` and ``interpret.png``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mfm.data.batch import Batch, label_mask, step_mask
from mfm.data.dataset import MultimodalData
from mfm.engine import MFMModule
from mfm.metrics import TargetMetrics


@dataclass
class InterpretReport:
    """Everything :func:`interpret` measured (see the module docstring for definitions).

    Attributes:
        split: the analysed split.
        samples: number of analysed samples.
        task: ``classification`` or ``regression`` (of the analysed target).
        metric: the removal test's metric (``accuracy`` or ``MAE``).
        target: the target whose prediction is analysed (the model's first).
        grouping: how samples are grouped (true class or quantile bins with edges).
        groups: group name -> number of analysed samples in it (``all`` first).
        factors: modality -> ``{"steps": T, "summary": {group: {...}}, "per_step":
            {group: {"n_valid": [...], "grad_fy": [...], "grad_fm": [...],
            "share_fy": [...]}}}``; missing steps hold ``None``.
        reliance: modality -> gradient x input and removal results.
        surrogate_trained: modality -> whether the surrogate path was trained for it.
    """

    split: str
    samples: int
    task: str
    metric: str
    target: str
    grouping: str
    groups: dict[str, int] = field(default_factory=dict)
    factors: dict[str, dict[str, Any]] = field(default_factory=dict)
    reliance: dict[str, dict[str, Any]] = field(default_factory=dict)
    surrogate_trained: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split, "samples": self.samples, "task": self.task,
            "metric": self.metric, "target": self.target, "grouping": self.grouping,
            "groups": self.groups, "factors": self.factors, "reliance": self.reliance,
            "surrogate_trained": self.surrogate_trained,
            "definitions": {
                "grad_fy": "mean over valid samples of ||d X^_m[b,t,:] / d F_y[b,:]||_F",
                "grad_fm": "mean over valid samples of ||d X^_m[b,t,:] / d F_m[b,:]||_F",
                "share_fy": "grad_fy / (grad_fy + grad_fm)",
                "grad_x_input": "mean over samples of ||X_m[b] * d s[b] / d X_m[b]||_F, s = "
                                "prediction (regression) or predicted-class logit",
                "metric_drop": "metric with all modalities minus metric without m "
                               "(MAE: the reverse); positive = worse without m",
            },
        }


@contextlib.contextmanager
def forward_ad_friendly(decoder: nn.Module) -> Iterator[None]:
    """Run ``decoder`` on code that supports forward-mode AD: its plain ``nn.LSTM`` path
    (``fast = False``, the same computation as the hand-written scan, which has no forward
    derivative) on PyTorch's own RNN kernels (oneDNN and cuDNN have none either)."""
    fast = getattr(decoder, "fast", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oneDNN TF32 notice when toggling the backend
        with torch.backends.mkldnn.flags(enabled=False), \
                torch.backends.cudnn.flags(enabled=False):
            try:
                if fast is not None:
                    decoder.fast = False
                yield
            finally:
                if fast is not None:
                    decoder.fast = fast


def factor_jacobian_norms(decoder: nn.Module, f_y: Tensor | None, f_m: Tensor | None,
                          steps: int) -> tuple[Tensor, Tensor]:
    """Per-sample, per-step Frobenius norms of the decoder's Jacobians.

    Args:
        decoder: maps a ``(B, fy + f_m)`` code ``[F_y, F_m]`` and a number of steps to
            ``(B, T, d)``; it must treat samples independently (true of
            :class:`mfm.model.decoders.SequenceDecoder` in eval mode).
        f_y: ``(B, fy)`` discriminative factor codes, or ``None`` when the decoder does not
            read ``F_y`` (its norms are then 0).
        f_m: ``(B, f_m)`` modality-specific codes, or ``None`` likewise.
        steps: ``T``.

    Returns:
        ``(g_y, g_m)``, each ``(B, T)``: ``||d X^[b,t,:] / d F_y[b]||_F`` and
        ``||d X^[b,t,:] / d F_m[b]||_F``.
    """
    from torch.func import jvp, vmap

    parts = [p for p in (f_y, f_m) if p is not None]
    if not parts:
        raise ValueError("factor_jacobian_norms needs f_y, f_m or both")
    code = torch.cat(parts, dim=1).detach()
    size, width = code.shape
    basis = torch.eye(width, dtype=code.dtype, device=code.device)
    directions = basis.unsqueeze(1).expand(width, size, width)  # (P, B, P)

    def column(direction: Tensor) -> Tensor:
        return jvp(lambda c: decoder(c, steps), (code,), (direction,))[1]

    with forward_ad_friendly(decoder), torch.no_grad():
        columns = vmap(column)(directions)  # (P, B, T, d): d X^ / d code_j
    squared = columns.square().sum(dim=3)  # (P, B, T)
    fy = 0 if f_y is None else f_y.shape[1]
    return squared[:fy].sum(dim=0).sqrt(), squared[fy:].sum(dim=0).sqrt()


def _subset(size: int, max_samples: int, seed: int) -> Tensor:
    if size <= max_samples:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=generator)[:max_samples].sort().values


def _groups(target: Tensor | None, task: str, num_classes: int,
            bins: int) -> tuple[str, dict[str, Tensor]]:
    """Group name -> ``(B,)`` bool membership (``all`` first) and a description."""
    groups: dict[str, Tensor] = {}
    if target is None:
        return "none (the split has no labels)", groups
    labelled = label_mask(target)
    if task == "classification":
        for k in range(num_classes):
            groups[f"class {k}"] = labelled & (target == k)
        return "true class", groups
    if not bool(labelled.any()):
        return "none (no labels in the analysed samples)", groups
    y = target.double()
    edges = torch.quantile(y[labelled],
                           torch.linspace(0, 1, bins + 1, dtype=torch.float64)).tolist()
    which = torch.bucketize(y, torch.tensor(edges[1:-1], dtype=torch.float64), right=True)
    for i in range(bins):
        lo, hi = edges[i], edges[i + 1]
        closing = "]" if i == bins - 1 else ")"
        groups[f"bin {i + 1} [{lo:.3g}, {hi:.3g}{closing}"] = labelled & (which == i)
    text = ", ".join(f"{e:.4g}" for e in edges)
    return f"{bins} quantile bins of the target (edges {text})", groups


def _ratio(a: float, b: float) -> float | None:
    return a / (a + b) if a + b > 0 else None


def _mean_or_none(total: Tensor, count: Tensor) -> list[float | None]:
    return [float(s) / int(c) if int(c) > 0 else None
            for s, c in zip(total.tolist(), count.tolist(), strict=True)]


def _score(prediction: Tensor, task: str) -> Tensor:
    """``(B,)`` scalar per sample: the value, or the predicted class's logit."""
    if task == "classification":
        return prediction.gather(1, prediction.argmax(dim=1, keepdim=True)).squeeze(1)
    return prediction


def _metric(module: MFMModule, batch: Batch, batch_size: int) -> dict[str, float]:
    """The first target's metrics over ``batch`` (missing labels left out)."""
    name, spec = next(iter(module.model.targets.items()))
    metrics = TargetMetrics({name: (spec.kind, spec.size)})
    assert batch.targets is not None
    with torch.no_grad():
        for start in range(0, len(batch), batch_size):
            part = slice(start, start + batch_size)
            output = module.model({k: v[part] for k, v in batch.inputs.items()},
                                  {k: v[part] for k, v in batch.lengths.items()})
            metrics.update({name: output.predictions[name]},
                           {name: batch.targets[name][part]})
    return {k: float(v) for k, v in metrics.compute().items()}


def interpret(
    module: MFMModule,
    data: MultimodalData,
    split: str = "test",
    *,
    max_samples: int = 256,
    bins: int = 3,
    seed: int = 0,
    chunk: int = 64,
    progress: Callable[[str], None] | None = None,
) -> InterpretReport:
    """Measure factor gradients per step and the prediction's reliance on each modality.

    Args:
        module: a trained model (``mfm.run.load_trained``).
        data: data prepared with the model's normalisation statistics.
        split: which split to analyse.
        max_samples: at most this many samples (drawn with ``seed``) for the gradients.
        bins: regression only: number of quantile bins of the target.
        seed: seed of the sample draw.
        chunk: samples per Jacobian computation (bounds memory: ``chunk * (fy + f_m) * T *
            d`` values at a time).
        progress: called with a short description before each stage.

    Returns:
        An :class:`InterpretReport`.
    """
    if max_samples < 1:
        raise ValueError(f"max_samples: expected >= 1, found {max_samples}")
    if bins < 1:
        raise ValueError(f"bins: expected >= 1, found {bins}")
    module.eval()
    model = module.model
    names = model.names
    target_name, spec = next(iter(model.targets.items()))
    task = spec.kind
    metric = "accuracy" if task == "classification" else "MAE"
    full = data[split].full_batch()
    index = _subset(len(full), max_samples, seed)
    batch = data[split].collate(index.tolist())
    labels = None if batch.targets is None else batch.targets.get(target_name)
    grouping, member = _groups(labels, task, spec.size, bins)
    groups = {"all": torch.ones(len(batch), dtype=torch.bool), **member}
    report = InterpretReport(split=split, samples=len(batch), task=task, metric=metric,
                             target=target_name, grouping=grouping,
                             groups={g: int(m.sum()) for g, m in groups.items()})
    report.surrogate_trained = {n: model.parts.surrogate
                                and module.config.train.dropout_for(n) > 0 for n in names}

    # Factor gradients, chunk by chunk. What a decoder reads depends on model.kind:
    # [F_y, F_m] (mfm), F_m alone (mfm-no-zy), F_y alone (mfm-zy-only), or no decoder.
    reads = model.parts.decoder_input
    decoded = [n for n in names if n in model.decoders]
    g_y: dict[str, list[Tensor]] = {n: [] for n in decoded}
    g_m: dict[str, list[Tensor]] = {n: [] for n in decoded}
    for start in range(0, len(batch), chunk if decoded else len(batch)):
        if not decoded:
            break
        part = slice(start, start + chunk)
        inputs = {k: v[part] for k, v in batch.inputs.items()}
        lengths = {k: v[part] for k, v in batch.lengths.items()}
        if progress:
            progress(f"factor gradients, samples {start}-{start + len(index[part])}")
        with torch.no_grad():
            z_y, z = model.encode(inputs, lengths)
            steps = {n: int(inputs[n].shape[1]) for n in names}
            _, _, f, f_y = model.decode(z_y, z, steps)
        for n in decoded:
            a, b = factor_jacobian_norms(
                model.decoders[n], f_y if reads in ("joint", "shared") else None,
                f[n] if reads in ("joint", "own") else None, steps[n])
            g_y[n].append(a)
            g_m[n].append(b)
    for n in decoded:
        gy, gm = torch.cat(g_y[n]).double(), torch.cat(g_m[n]).double()  # (B, T)
        valid = step_mask(batch.lengths[n], gy.shape[1])
        per_step: dict[str, dict[str, list[Any]]] = {}
        summary: dict[str, dict[str, Any]] = {}
        for group, inside in groups.items():
            mask = (valid & inside.unsqueeze(1)).double()
            count = mask.sum(dim=0)
            mean_y = _mean_or_none((gy * mask).sum(dim=0), count)
            mean_m = _mean_or_none((gm * mask).sum(dim=0), count)
            per_step[group] = {
                "n_valid": [int(c) for c in count.tolist()],
                "grad_fy": mean_y, "grad_fm": mean_m,
                "share_fy": [None if a is None or b is None else _ratio(a, b)
                             for a, b in zip(mean_y, mean_m, strict=True)],
            }
            total = int(mask.sum())
            if total:
                a, b = float((gy * mask).sum()) / total, float((gm * mask).sum()) / total
                summary[group] = {"n_valid_steps": total, "grad_fy": a, "grad_fm": b,
                                  "share_fy": _ratio(a, b)}
            else:
                summary[group] = {"n_valid_steps": 0, "grad_fy": None, "grad_fm": None,
                                  "share_fy": None}
        report.factors[n] = {"steps": int(gy.shape[1]), "summary": summary,
                             "per_step": per_step}

    # Gradient x input of the prediction's score.
    if progress:
        progress("gradient x input")
    gxi = {n: [] for n in names}
    gxi_steps = {n: [] for n in names}
    for start in range(0, len(batch), chunk):
        part = slice(start, start + chunk)
        inputs = {k: v[part].detach().clone().requires_grad_(True)
                  for k, v in batch.inputs.items()}
        lengths = {k: v[part] for k, v in batch.lengths.items()}
        score = _score(model(inputs, lengths).predictions[target_name], task)
        grads = torch.autograd.grad(score.sum(), [inputs[n] for n in names])
        for n, grad in zip(names, grads, strict=True):
            product = (inputs[n].detach() * grad).double()  # (B, T, d)
            gxi[n].append(product.flatten(1).norm(dim=1))
            gxi_steps[n].append(product.norm(dim=2))
    means = {n: float(torch.cat(gxi[n]).mean()) for n in names}
    total = sum(means.values())

    # Removal of each modality over the whole split (surrogate path).
    if progress:
        progress("removal test")
    base = _metric(module, full, chunk * 4) if labels is not None else None
    for n in names:
        steps = torch.cat(gxi_steps[n])
        valid = step_mask(batch.lengths[n], steps.shape[1]).double()
        entry: dict[str, Any] = {
            "grad_x_input": means[n],
            "grad_x_input_share": means[n] / total if total > 0 else None,
            "grad_x_input_per_step": _mean_or_none((steps * valid).sum(dim=0), valid.sum(0)),
        }
        if base is not None and len(names) > 1:
            absent = dataclasses.replace(
                full, lengths={**full.lengths, n: torch.zeros_like(full.lengths[n])})
            without = _metric(module, absent, chunk * 4)[metric]
            drop = base[metric] - without if metric == "accuracy" else without - base[metric]
            entry.update({"metric_all": base[metric], "metric_without": without,
                          "metric_drop": drop})
        report.reliance[n] = entry
    return report


# --------------------------------------------------------------------------- writing


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _rows(report: InterpretReport) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n, entry in report.factors.items():
        for group, values in entry["summary"].items():
            rows.append({"section": "factor_summary", "modality": n, "group": group,
                         "n_valid": values["n_valid_steps"], "grad_fy": values["grad_fy"],
                         "grad_fm": values["grad_fm"], "share_fy": values["share_fy"]})
        for group, values in entry["per_step"].items():
            for t in range(entry["steps"]):
                rows.append({"section": "factor_step", "modality": n, "group": group,
                             "step": t, "n_valid": values["n_valid"][t],
                             "grad_fy": values["grad_fy"][t], "grad_fm": values["grad_fm"][t],
                             "share_fy": values["share_fy"][t]})
    for n, entry in report.reliance.items():
        rows.append({"section": "reliance", "modality": n, "group": "all",
                     "grad_x_input": entry["grad_x_input"],
                     "grad_x_input_share": entry["grad_x_input_share"],
                     "metric_all": entry.get("metric_all"),
                     "metric_without": entry.get("metric_without"),
                     "metric_drop": entry.get("metric_drop")})
        for t, value in enumerate(entry["grad_x_input_per_step"]):
            rows.append({"section": "reliance_step", "modality": n, "group": "all", "step": t,
                         "grad_x_input": value})
    return rows


CSV_COLUMNS = ("section", "modality", "group", "step", "n_valid", "grad_fy", "grad_fm",
               "share_fy", "grad_x_input", "grad_x_input_share", "metric_all",
               "metric_without", "metric_drop")

CAPTION = (
    "How to read: share of F_y = |dX^/dF_y| / (|dX^/dF_y| + |dX^/dF_m|) per step (Frobenius "
    "norms of the decoder's Jacobians, mean over samples whose step is valid); 1 = the step is "
    "rebuilt from the discriminative factor only, 0 = from the modality-specific factor only; "
    "gaps and grey cells = no valid sample. Bottom: how much the prediction uses each modality."
)


def _nan(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def plot_report(report: InterpretReport, path: Path) -> Path:
    """Draw the report: per modality the Jacobian norms, the share of F_y and its heat map
    per group over steps; then the prediction's reliance on each modality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(report.factors)
    rows = len(names) + 1
    fig, axes = plt.subplots(rows, 3, figsize=(15, 3.3 * rows), squeeze=False)
    for i, n in enumerate(names):
        entry = report.factors[n]
        steps = list(range(entry["steps"]))
        marker = "o" if len(steps) < 3 else None
        overall = entry["per_step"]["all"]
        norms, share, heat = axes[i]
        norms.plot(steps, _nan(overall["grad_fy"]), marker=marker, label="|dX^/dF_y| (F_y)")
        norms.plot(steps, _nan(overall["grad_fm"]), marker=marker, label=f"|dX^/dF_m| (F_{n})")
        norms.set_xlabel("time step t")
        norms.set_ylabel("mean Jacobian norm")
        norms.set_title(f"{n}: sensitivity of X^[t] to each factor", fontsize=10)
        norms.legend(fontsize=8)
        share.plot(steps, _nan(overall["share_fy"]), color="k", marker=marker)
        share.axhline(0.5, color="grey", ls="--", lw=0.8)
        share.set_ylim(0, 1)
        share.set_xlabel("time step t")
        share.set_ylabel("share of F_y")
        summary = entry["summary"]["all"]["share_fy"]
        share.set_title(f"{n}: share of F_y per step (all steps: "
                        f"{'-' if summary is None else f'{summary:.3f}'})", fontsize=10)
        groups = [g for g in entry["per_step"] if g != "all"]
        if groups:
            matrix = np.array([_nan(entry["per_step"][g]["share_fy"]) for g in groups])
            cmap = matplotlib.colormaps["coolwarm"].with_extremes(bad="lightgrey")
            image = heat.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap,
                                vmin=0, vmax=1, interpolation="nearest")
            heat.set_yticks(range(len(groups)), groups, fontsize=7)
            heat.set_xlabel("time step t")
            heat.set_ylabel(report.grouping.split(" (")[0])
            heat.set_title(f"{n}: share of F_y per group and step", fontsize=10)
            fig.colorbar(image, ax=heat, label="share of F_y (red: F_y, blue: F_m)")
        else:
            heat.axis("off")
    bars, removal, curve = axes[-1]
    names = list(report.reliance)
    shares = [report.reliance[n]["grad_x_input_share"] or 0.0 for n in names]
    bars.bar(names, shares, color=[f"C{i % 10}" for i in range(len(names))])
    bars.set_ylim(0, 1)
    bars.set_xlabel("modality")
    bars.set_ylabel("share of gradient x input")
    bars.set_title("Prediction: gradient x input per modality (shares sum to 1)", fontsize=10)
    if all("metric_drop" in report.reliance[n] for n in names):
        drops = [report.reliance[n]["metric_drop"] for n in names]
        removal.bar(names, drops, color=[f"C{i % 10}" for i in range(len(names))])
        removal.axhline(0, color="k", lw=0.8)
        removal.set_xlabel("modality removed (surrogate path)")
        removal.set_ylabel(f"{report.metric} drop (positive = worse)")
        base = report.reliance[names[0]]["metric_all"]
        removal.set_title(f"{report.metric} with all modalities {base:.3f}; drop without each",
                          fontsize=10)
    else:
        removal.axis("off")
    for i, n in enumerate(names):
        values = _nan(report.reliance[n]["grad_x_input_per_step"])
        curve.plot(range(len(values)), values, color=f"C{i % 10}", label=n,
                   marker="o" if len(values) < 3 else None)
    curve.set_xlabel("time step t")
    curve.set_ylabel("mean |X * dscore/dX| at step t")
    curve.set_title("Prediction: gradient x input per step", fontsize=10)
    curve.legend(fontsize=8)
    fig.suptitle(f"MFM interpretation ({report.split} split, {report.samples} samples)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.text(0.5, 0.008, CAPTION, ha="center", va="bottom", fontsize=8, wrap=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_report(report: InterpretReport, output: Path) -> dict[str, Path]:
    """Write ``interpret.json``, ``interpret.csv`` and ``interpret.png`` into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    paths = {ext: output / f"interpret.{ext}" for ext in ("json", "csv", "png")}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in _rows(report):
            writer.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})
    plot_report(report, paths["png"])
    return paths


def summary_lines(report: InterpretReport) -> list[str]:
    """A few lines for the terminal: per modality the share of F_y and the reliance."""
    lines = []
    for n, rel in report.reliance.items():
        share = report.factors[n]["summary"]["all"]["share_fy"] if n in report.factors else None
        text = (f"{n}: share of F_y {'-' if share is None else f'{share:.3f}'}, "
                f"gradient x input share {rel['grad_x_input_share'] or 0:.3f}")
        if "metric_drop" in rel:
            text += (f", {report.metric} without it {rel['metric_without']:.4f} "
                     f"(all {rel['metric_all']:.4f})")
        lines.append(text)
    return lines


def run(
    model: str | Path,
    output: str | Path,
    data_spec: str | None = None,
    *,
    split: str = "test",
    max_samples: int = 256,
    bins: int = 3,
    seed: int = 0,
    data_options: dict[str, Any] | None = None,
    verbose: bool = False,
) -> tuple[InterpretReport, dict[str, Path]]:
    """Load a checkpoint (or exported folder) and its data, interpret, write the report.

    Raises:
        RunError, DataError: before anything is written.
    """
    from mfm.run import data_for, load_trained, quiet_lightning

    with quiet_lightning(verbose):
        module = load_trained(model)
        _, data = data_for(module, data_spec, data_options)
        report = interpret(module, data, split, max_samples=max_samples, bins=bins, seed=seed)
    return report, write_report(report, Path(output))
