"""The MFM objective (Wasserstein-autoencoder form), term by term.

    L = pred(Y, Y^) + sum_m lambda_m * recon_m(X_m, X^_m) + lambda_mmd * sum_z MMD(q(z), N(0, I))

* ``pred``: L1 (default) or MSE for regression, cross-entropy for classification; with
  several targets one ``pred_<target>`` per target, each averaged over the samples that
  have that label;
* ``recon_m``: mean squared error over the valid steps of modality ``m`` only;
* one MMD term per factor: ``Z_y`` and every ``Z_a,m``.

:func:`objective_terms` returns every raw term and the weighted total, so each can be
logged on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mfm.config import LossConfig, OutputConfig, TargetConfig
from mfm.data.batch import label_mask
from mfm.losses.mmd import mmd
from mfm.model.decoders import masked_mse
from mfm.model.mfm import MFMOutput

__all__ = ["masked_mse", "missing_terms", "objective_terms", "prediction_loss",
           "prediction_term_names", "removed_lengths"]


def prediction_loss(prediction: Tensor, target: Tensor, spec: TargetConfig | OutputConfig,
                    valid: Tensor | None = None) -> Tensor:
    """Loss of one head over the samples that have a label.

    Per-sample losses are multiplied by the validity mask and divided by
    ``max(1, number of valid labels)``, so missing labels contribute nothing (and a batch
    without any gives 0 with zero gradients, never NaN).

    Args:
        prediction: ``(B,)`` values or ``(B, C)`` logits.
        target: ``(B,)`` floats (NaN = missing) or class indices (negative = missing).
        spec: the target's kind and regression loss (l1/mse).
        valid: ``(B,)`` bool mask of present labels; computed from ``target`` if omitted.
    """
    if valid is None:
        valid = label_mask(target)
    if spec.kind == "classification":
        safe = torch.where(valid, target.long(), torch.zeros_like(target, dtype=torch.long))
        per_sample = F.cross_entropy(prediction, safe, reduction="none")
    else:
        values = target.to(prediction.dtype).view_as(prediction)
        safe = torch.where(valid.view_as(prediction), values, prediction.detach())
        error = prediction - safe
        per_sample = error.square() if spec.loss == "mse" else error.abs()
    weights = valid.view_as(per_sample).to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp(min=1.0)


def prediction_term_names(targets: Sequence[str]) -> dict[str, str]:
    """Target name -> the name of its prediction term: ``pred`` for a single target,
    ``pred_<target>`` for each of several."""
    if len(targets) == 1:
        return {targets[0]: "pred"}
    return {name: f"pred_{name}" for name in targets}


def objective_terms(
    output: MFMOutput,
    inputs: dict[str, Tensor],
    lengths: dict[str, Tensor],
    target: Tensor | Mapping[str, Tensor],
    loss: LossConfig,
    head: OutputConfig | Mapping[str, TargetConfig],
    counts: Mapping[str, int] | None = None,
) -> dict[str, Tensor]:
    """Compute every term of the objective and the weighted total.

    Args:
        output: the model's forward output.
        inputs: modality -> ``(B, T_m, d_m)`` the features that were encoded.
        lengths: modality -> ``(B,)`` valid lengths.
        target: target name -> ``(B,)`` labels (missing ones NaN or -1), or one ``(B,)``
            tensor for a single-target model.
        loss: weights and MMD settings.
        head: target name -> its :class:`TargetConfig`, or the single head's settings.
        counts: target name -> number of present labels in the batch (counted on the
            host); a target with 0 gets no term at all. ``None``: every target gets a term.

    Returns:
        Ordered dict of 0-d tensors: ``loss`` (weighted total with the fixed lambdas),
        the prediction term(s) (``pred``, or ``pred_<target>`` per target when there are
        several), ``recon_<m>`` per modality, ``mmd_zy`` and ``mmd_za_<m>`` per modality
        (raw, unweighted).
    """
    targets = dict(target) if isinstance(target, Mapping) else {
        next(iter(output.predictions)): target}
    specs = dict(head) if isinstance(head, Mapping) else {name: head for name in targets}
    names = prediction_term_names(list(output.predictions))
    terms: dict[str, Tensor] = {}
    total = None
    for name, prediction in output.predictions.items():
        if counts is not None and counts.get(name, 1) == 0:
            continue
        term = prediction_loss(prediction, targets[name], specs[name])
        terms[names[name]] = term
        total = term if total is None else total + term
    if total is None:
        total = output.z_y.new_zeros(())
    if output.reconstruction_errors is not None:  # computed by the model (errors=True)
        recon = dict(output.reconstruction_errors)
    else:
        recon = {name: masked_mse(x_hat, inputs[name], lengths[name])
                 for name, x_hat in output.reconstructions.items()}
    for name, term in recon.items():
        terms[f"recon_{name}"] = term
        total = total + loss.recon_weight(name) * term
    # Only the factors the model has, and none for kinds without MMD (mfm.model.baselines).
    factors = {"zy": output.z_y} if output.z_y.shape[1] > 0 else {}
    factors.update({f"za_{n}": z for n, z in output.z.items()})
    if not output.mmd:
        factors = {}
    mmd_sum = torch.zeros((), dtype=total.dtype, device=total.device)
    for name, z in factors.items():
        term = mmd(z, kernel=loss.mmd_kernel, estimator=loss.mmd_estimator)
        terms[f"mmd_{name}"] = term
        mmd_sum = mmd_sum + term
    total = total + loss.lambda_mmd * mmd_sum
    return {"loss": total, **terms}


def removed_lengths(removed: Mapping[str, Tensor], lengths: Mapping[str, Tensor]
                    ) -> dict[str, Tensor]:
    """The steps a missing-modality pass scores: modality -> ``(B,)`` lengths, the real
    length where the modality was removed, else 0 (pass it as ``MFM.forward``'s
    ``errors`` to get :func:`missing_terms`'s reconstruction errors directly)."""
    return {name: torch.where(mask, lengths[name], 0) for name, mask in removed.items()}


def missing_terms(
    full: MFMOutput,
    dropped: MFMOutput,
    removed: dict[str, Tensor],
    inputs: dict[str, Tensor],
    lengths: dict[str, Tensor],
    loss: LossConfig,
) -> dict[str, Tensor]:
    """Surrogate-inference terms (see :mod:`mfm.model.mfm` for the design).

    Args:
        full: output of the pass with the modalities the data has.
        dropped: output of the pass with ``removed`` modalities taken away.
        removed: modality -> ``(B,)`` bool, True where the modality was present in the data
            and removed for the second pass.
        inputs: modality -> ``(B, T_m, d_m)`` the real features.
        lengths: modality -> ``(B,)`` the real lengths.
        loss: ``detach_missing_targets`` and the reconstruction weights.

    Returns:
        ``missing`` (MSE of the surrogate Z_y and Z_a,m against the full-pass latents) and
        ``recon_missing`` (weighted reconstruction error of each removed modality rebuilt
        from its surrogate factors); 0-d tensors, 0 when nothing was removed.
    """
    def target(t: Tensor) -> Tensor:
        return t.detach() if loss.detach_missing_targets else t

    def masked_rows_mse(pred: Tensor, truth: Tensor, rows: Tensor) -> Tensor:
        # Mean squared error over the selected rows; 0 when none (no host synchronisation).
        weights = rows.to(pred.dtype).unsqueeze(1)
        total = (((pred - truth) ** 2) * weights).sum()
        return total / (weights.sum() * pred.shape[1]).clamp(min=1.0)

    lost = torch.stack(list(removed.values()), dim=1).any(dim=1)  # (B,)
    missing = masked_rows_mse(dropped.z_y, target(full.z_y), lost)
    recon = full.z_y.new_zeros(())
    for name, mask in removed.items():
        # Kinds without Z_a,m or decoders (mfm.model.baselines) skip those parts.
        if name in dropped.z:
            missing = missing + masked_rows_mse(dropped.z[name], target(full.z[name]), mask)
        if dropped.reconstruction_errors is not None:
            # The model scored only the removed samples' steps (errors=removed_lengths).
            if name in dropped.reconstruction_errors:
                term = dropped.reconstruction_errors[name]
                recon = recon + loss.recon_weight(name) * term
        elif name in dropped.reconstructions:
            kept_lengths = torch.where(mask, lengths[name], 0)  # only removed samples count
            term = masked_mse(dropped.reconstructions[name], inputs[name], kept_lengths)
            recon = recon + loss.recon_weight(name) * term
    return {"missing": missing, "recon_missing": recon}
