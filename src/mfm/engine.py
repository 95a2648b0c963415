"""The Lightning module: the MFM, its objective, optimisation and epoch-level metrics.

The science lives here; devices, checkpoints, early stopping, progress and logging are
the Trainer's (see :mod:`mfm.run`). Every term of the objective is logged separately
per epoch under ``train/``, ``valid/`` and ``test/``; the metrics of
:mod:`mfm.metrics` are logged under ``valid/`` and ``test/`` after each pass over the
whole split.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from mfm.config import MFMConfig, TargetConfig
from mfm.data.batch import Batch
from mfm.losses.objective import (
    missing_terms,
    objective_terms,
    prediction_term_names,
    removed_lengths,
)
from mfm.losses.weighting import Weighting, make_weighting
from mfm.metrics import TargetMetrics
from mfm.model.mfm import MFM, MFMOutput


def _detached(values: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in values.items()}


class EpochMeans:
    """Batch-size-weighted means of per-step values over an epoch (what
    ``self.log(..., on_epoch=True, batch_size=n)`` computes), accumulated on the values'
    device without host synchronisation and without Lightning's per-call bookkeeping,
    which costs about 0.5 ms per logged value and step on CPU.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def reset(self) -> None:
        """Forget everything (start of an epoch)."""
        self.sums.clear()
        self.counts.clear()

    def add(self, values: dict[str, Tensor], n: int) -> None:
        """Add one step's 0-d values, each the mean over a batch of ``n`` samples."""
        for key, value in values.items():
            weighted = value.detach() * n
            if key in self.sums:
                self.sums[key] = self.sums[key] + weighted
                self.counts[key] += n
            else:
                self.sums[key] = weighted
                self.counts[key] = n

    def means(self, keys: list[str], reduce: Any, device: torch.device) -> dict[str, Tensor]:
        """The mean of each of ``keys`` over the epoch and over every process.

        Args:
            keys: the same list, in the same order, on every process (not empty).
            reduce: sums a tensor over processes (the identity on one).
            device: where the reduction runs (the module's device: a process that saw
                no step still takes part).

        Returns:
            key -> 0-d mean, for the keys some process saw.
        """
        zero = torch.zeros((), device=device)
        sums = torch.stack([self.sums.get(k, zero).to(device).float() for k in keys])
        counts = torch.tensor([float(self.counts.get(k, 0)) for k in keys], device=device)
        total = reduce(torch.cat([sums, counts]))
        sums, counts = total[: len(keys)], total[len(keys):]
        seen = (counts > 0).tolist()  # one host read per epoch
        return {k: sums[i] / counts[i] for i, k in enumerate(keys) if seen[i]}


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite during training (one-line message)."""


class RngState(L.Callback):
    """Saves the global torch RNG in checkpoints and restores it on resume.

    Dropout masks and the MMD's prior draws come from that generator: restoring it makes a
    resumed run continue exactly as the uninterrupted run would have.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])


class MFMModule(L.LightningModule):
    """Trains and evaluates an :class:`~mfm.model.MFM`.

    Args:
        config: the resolved run configuration as plain data (``MFMConfig.to_dict()``);
            plain data keeps checkpoints loadable with ``weights_only=True``.
        input_sizes: modality name -> features per step.
        normalization: the data's normalisation statistics (modality ->
            ``{"mean": [...], "std": [...]}``), kept in the checkpoint so evaluation
            applies the same.
    """

    def __init__(
        self,
        config: dict[str, Any],
        input_sizes: dict[str, int],
        normalization: dict[str, dict[str, list[float]]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = MFMConfig.from_dict(config, source="checkpoint configuration")
        self.model = MFM(self.config.model, input_sizes)
        self.normalization = normalization
        self.pred_terms = prediction_term_names(list(self.targets))
        self.metrics = nn.ModuleDict(
            {stage: TargetMetrics(self.target_kinds) for stage in ("valid", "test")}
        )
        self.weighting = self._make_weighting()
        # Per-step terms and weights, averaged and logged at each epoch's end.
        self.epoch_means = {stage: EpochMeans() for stage in ("train", "weight", "valid", "test")}

    @property
    def targets(self) -> dict[str, TargetConfig]:
        """Target name -> its resolved :class:`~mfm.config.TargetConfig` (the model's)."""
        return self.model.targets

    @property
    def target_kinds(self) -> dict[str, tuple[str, int]]:
        """Target name -> ``(kind, size)``, as :class:`~mfm.metrics.TargetMetrics` takes."""
        return {name: (t.kind, t.size) for name, t in self.targets.items()}

    def term_names(self) -> list[str]:
        """Every term the objective can produce, in a fixed order."""
        names = self.model.names
        terms = [*self.pred_terms.values(), *self.model.generative_term_names()]
        if any(self.config.train.dropout_for(n) > 0 for n in names):
            terms += ["missing", "recon_missing"]
        return terms

    def _make_weighting(self) -> Weighting:
        """The loss weighting strategy over the objective's terms (``loss.weighting``)."""
        loss = self.config.loss
        fixed: dict[str, float] = {}
        for term in self.term_names():
            if term.startswith("recon_") and term != "recon_missing":
                fixed[term] = loss.recon_weight(term[len("recon_"):])
            elif term.startswith("mmd_"):
                fixed[term] = loss.lambda_mmd
            elif term in ("missing", "recon_missing"):
                fixed[term] = loss.lambda_missing
            else:
                fixed[term] = 1.0
        if loss.weighting == "fixed":
            return make_weighting("fixed", [], fixed=fixed)
        weighted = [t for t in fixed if any(t.startswith(p) for p in loss.weighted_terms)]
        kinds = {term: self.targets[target].kind for target, term in self.pred_terms.items()
                 if term in weighted}
        return make_weighting(
            loss.weighting, weighted, kinds=kinds,
            fixed={k: v for k, v in fixed.items() if k not in weighted},
            alpha=loss.gradnorm_alpha, temperature=loss.dwa_temperature,
            lr=loss.weighting_lr, positive=loss.uncertainty_positive,
        )

    def forward(self, batch: Batch) -> MFMOutput:
        """Run the model on a batch."""
        return self.model(batch.inputs, batch.lengths)

    def removal_mask(self, batch: Batch) -> dict[str, Tensor] | None:
        """Draw which present modalities to remove per sample (``train.modality_dropout``).

        Returns:
            modality -> ``(B,)`` bool, or ``None`` when no modality has a dropout
            probability. Every sample keeps at least one of its present modalities.
        """
        train = self.config.train
        names = self.model.names
        probs = [train.dropout_for(n) for n in names]
        if not any(p > 0 for p in probs):
            return None
        present = torch.stack([batch.lengths[n] > 0 for n in names], dim=1)  # (B, M)
        p = torch.tensor(probs, device=present.device).expand_as(present)
        remove = (torch.rand(present.shape, device=present.device) < p) & present
        emptied = ~(present & ~remove).any(dim=1)
        # Keep one random present modality of the samples that would have none left
        # (computed for every batch: testing emptied.any() would synchronise a device).
        scores = torch.rand(present.shape, device=present.device) * present
        keep = torch.nn.functional.one_hot(scores.argmax(dim=1), len(names)).bool()
        remove = remove & ~(keep & emptied.unsqueeze(1))
        return {n: remove[:, i] for i, n in enumerate(names)}

    def _shared_step(self, batch: Batch, stage: str) -> tuple[MFMOutput, dict[str, Tensor]]:
        if batch.targets is None:
            raise ValueError(f"{stage} data has no labels")
        # The objective needs the reconstruction errors, not the reconstructions: the model
        # scores the valid steps without building any (B, T, d) tensor.
        output = self.model(batch.inputs, batch.lengths, errors=True)
        # A target without any label in this batch gets no term (nor a regulariser). Under
        # DDP a term must be logged by every process at least once per epoch (its epoch
        # value is synchronised); a target without a single label on one process for a
        # whole epoch is not supported.
        terms = objective_terms(
            output, batch.inputs, batch.lengths, batch.targets,
            self.config.loss, self.targets, counts=batch.counts(),
        )
        removed = self.removal_mask(batch) if stage == "train" else None
        if removed is not None:
            kept = {n: torch.where(removed[n], 0, batch.lengths[n]) for n in batch.lengths}
            dropped = self.model(batch.inputs, kept,
                                 errors=removed_lengths(removed, batch.lengths))
            terms.update(missing_terms(output, dropped, removed, batch.inputs, batch.lengths,
                                       self.config.loss))
        shared = None
        if stage == "train" and self.config.loss.weighting == "gradnorm":
            shared = self.model.g_y[-1].weight  # the last layer every term depends on
        raw = {k: v for k, v in terms.items() if k != "loss"}
        terms["loss"], weights = self.weighting(raw, shared=shared)
        if len(self.pred_terms) > 1:
            # With several targets, ``pred`` (what train.monitor may select on) is the mean
            # of the prediction terms present in the batch.
            present = [terms[t] for t in self.pred_terms.values() if t in terms]
            if present:
                terms["pred"] = torch.stack(present).mean()
        if stage == "train":
            self.epoch_means["weight"].add(weights, len(batch))
        self.epoch_means[stage].add(terms, len(batch))
        return output, terms

    def _logged_keys(self, stage: str) -> list[str]:
        """What a stage's epoch log can hold, in one order on every process: every term,
        the total and the multi-target ``pred``; locally seen extras on one process."""
        keys = [*self.term_names(), "loss", "pred"]
        keys = list(dict.fromkeys(keys))
        if self.trainer.world_size == 1:
            keys += sorted(k for k in self.epoch_means[stage].sums if k not in keys)
        return keys

    def _log_epoch_means(self, stage: str) -> dict[str, Tensor]:
        """Log ``<stage>/<term>`` (``weight/<term>`` for the weights): each term's mean over
        the epoch's samples on every process, as ``self.log(on_epoch=True)`` would."""
        means = self.epoch_means[stage].means(
            self._logged_keys(stage),
            lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"), self.device)
        self.epoch_means[stage].reset()
        if means:
            # Already reduced over processes: sync_dist averages equal values (and keeps
            # Lightning from warning about epoch-level logging without it).
            self.log_dict({f"{stage}/{k}": v for k, v in means.items()}, on_step=False,
                          on_epoch=True, sync_dist=True, prog_bar=False)
        return means

    def on_train_epoch_start(self) -> None:
        self.epoch_means["train"].reset()
        self.epoch_means["weight"].reset()

    def on_validation_epoch_start(self) -> None:
        self.epoch_means["valid"].reset()

    def on_test_epoch_start(self) -> None:
        self.epoch_means["test"].reset()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        _, terms = self._shared_step(batch, "train")
        self._check_finite(terms)
        return terms["loss"]

    def _check_finite(self, terms: dict[str, Tensor]) -> None:
        """Stop with a message naming the first non-finite term (all ranks stop together).

        One host synchronisation per step (on the total); terms are inspected only when
        the total is not finite.
        """
        finite = bool(torch.isfinite(terms["loss"]))
        if self.trainer.world_size > 1:
            stop = self.trainer.strategy.reduce_boolean_decision(not finite, all=False)
        else:
            stop = not finite
        if not stop:
            return
        bad = [name for name, value in terms.items() if not torch.isfinite(value)]
        named = [b for b in bad if b != "loss"] or bad or ["loss (on another process)"]
        value = terms[named[0]].item() if named[0] in terms else float("nan")
        raise NonFiniteLossError(
            f"training stopped: loss term {named[0]} is {value} at epoch {self.current_epoch}, "
            f"step {self.global_step}; the last good checkpoint is kept (set "
            "train.gradient_clip, lower the learning rate, or check the data)"
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.weighting.renormalise()

    def on_train_epoch_end(self) -> None:
        # Every process reduces the same keys in the same order here.
        self._log_epoch_means("weight")
        means = self._log_epoch_means("train")
        losses = {name: float(means[name]) for name in self.term_names() if name in means}
        if losses:
            self.weighting.on_epoch_end(losses)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        output, _ = self._shared_step(batch, "valid")
        self.metrics["valid"].update(_detached(output.predictions), batch.targets, batch.index)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        output, _ = self._shared_step(batch, "test")
        self.metrics["test"].update(_detached(output.predictions), batch.targets, batch.index)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Target name -> ``(B,)`` predictions (regression) or ``(B, C)`` class
        probabilities."""
        predictions = self.model.predict(batch.inputs, batch.lengths)  # no decoders
        return {name: torch.softmax(value, dim=-1)
                if self.targets[name].kind == "classification" else value
                for name, value in predictions.items()}

    def _log_metrics(self, stage: str) -> None:
        metric = self.metrics[stage]
        values = metric.compute()
        metric.reset()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=False)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_means("valid")
        self._log_metrics("valid")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_means("test")
        self._log_metrics("test")

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam at the configured learning rate and ReduceLROnPlateau on the monitor.

        Adam runs as PyTorch's fused kernel where every parameter allows it (float
        parameters on CPU or CUDA): the same update, one pass over all parameters instead
        of several operations per tensor (on CPU about 7x faster for a MOSI-sized model).
        """
        train = self.config.train
        groups = [{"params": list(self.model.parameters()), "weight_decay": train.weight_decay},
                  *self.weighting.parameter_groups()]
        params = [p for g in groups for p in g["params"]]
        fused = bool(params) and all(p.device.type in ("cpu", "cuda")
                                     and p.dtype in (torch.float32, torch.float64)
                                     for p in params)
        optimizer = torch.optim.Adam(groups, lr=train.learning_rate, fused=fused or None)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=train.lr_factor, patience=train.lr_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": f"valid/{train.monitor}",
                "interval": "epoch",
            },
        }
