"""Losses: the MMD penalty and the MFM objective."""

from mfm.losses.mmd import mmd
from mfm.losses.objective import masked_mse, objective_terms, prediction_loss

__all__ = ["masked_mse", "mmd", "objective_terms", "prediction_loss"]
