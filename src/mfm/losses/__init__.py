"""Losses: the MMD penalty and the MFM objective."""

from mfm.losses.mmd import mmd
from mfm.losses.objective import masked_mse, missing_terms, objective_terms, prediction_loss

__all__ = ["masked_mse", "missing_terms", "mmd", "objective_terms", "prediction_loss"]
