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

from mfm.config import MFMConfig
from mfm.data.batch import Batch
from mfm.losses.objective import missing_terms, objective_terms
from mfm.metrics import MFMMetrics
from mfm.model.mfm import MFM, MFMOutput


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
        out = self.config.model.output
        num_classes = out.size if out.kind == "classification" else None
        self.metrics = nn.ModuleDict(
            {stage: MFMMetrics(out.kind, num_classes) for stage in ("valid", "test")}
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
        if emptied.any():
            # Keep one random present modality of the samples that would have none left.
            scores = torch.rand(present.shape, device=present.device) * present
            keep = torch.nn.functional.one_hot(scores.argmax(dim=1), len(names)).bool()
            remove = remove & ~(keep & emptied.unsqueeze(1))
        return {n: remove[:, i] for i, n in enumerate(names)}

    def _shared_step(self, batch: Batch, stage: str) -> tuple[MFMOutput, dict[str, Tensor]]:
        if batch.target is None:
            raise ValueError(f"{stage} data has no labels")
        output = self(batch)
        terms = objective_terms(
            output, batch.inputs, batch.lengths, batch.target,
            self.config.loss, self.config.model.output,
        )
        removed = self.removal_mask(batch) if stage == "train" else None
        if removed is not None:
            kept = {n: torch.where(removed[n], 0, batch.lengths[n]) for n in batch.lengths}
            dropped = self.model(batch.inputs, kept)
            extra = missing_terms(output, dropped, removed, batch.inputs, batch.lengths,
                                  self.config.loss)
            terms.update(extra)
            terms["loss"] = terms["loss"] + self.config.loss.lambda_missing * (
                extra["missing"] + extra["recon_missing"])
        self.log_dict(
            {f"{stage}/{name}": value.detach() for name, value in terms.items()},
            on_step=False, on_epoch=True, batch_size=len(batch), sync_dist=True,
            prog_bar=False,
        )
        return output, terms

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        _, terms = self._shared_step(batch, "train")
        self._check_finite(terms)
        return terms["loss"]

    def _check_finite(self, terms: dict[str, Tensor]) -> None:
        """Stop with a message naming the first non-finite term (all ranks stop together)."""
        bad = [name for name, value in terms.items() if not torch.isfinite(value)]
        if self.trainer.world_size > 1:
            stop = self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False)
        else:
            stop = bool(bad)
        if not stop:
            return
        named = [b for b in bad if b != "loss"] or bad or ["loss (on another process)"]
        value = terms[named[0]].item() if named[0] in terms else float("nan")
        raise NonFiniteLossError(
            f"training stopped: loss term {named[0]} is {value} at epoch {self.current_epoch}, "
            f"step {self.global_step}; the last good checkpoint is kept (set "
            "train.gradient_clip, lower the learning rate, or check the data)"
        )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        output, _ = self._shared_step(batch, "valid")
        self.metrics["valid"].update(output.prediction.detach(), batch.target, batch.index)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        output, _ = self._shared_step(batch, "test")
        self.metrics["test"].update(output.prediction.detach(), batch.target, batch.index)

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Return ``(B,)`` predictions (regression) or ``(B, C)`` class probabilities."""
        prediction = self(batch).prediction
        if self.config.model.output.kind == "classification":
            return torch.softmax(prediction, dim=-1)
        return prediction

    def _log_metrics(self, stage: str) -> None:
        metric = self.metrics[stage]
        values = metric.compute()
        metric.reset()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("valid")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam at the configured learning rate and ReduceLROnPlateau on the monitor."""
        train = self.config.train
        optimizer = torch.optim.Adam(
            self.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay
        )
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
