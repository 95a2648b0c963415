"""Model components: encoders, the Memory Fusion Network, decoders and the MFM."""

from mfm.model.baselines import KINDS, EarlyFusionEncoder, LateFusionEncoder
from mfm.model.decoders import SequenceDecoder
from mfm.model.encoders import MLP, SequenceEncoder
from mfm.model.mfm import MFM, MFMOutput
from mfm.model.mfn import MemoryFusionNetwork, aligned_view, resample_segments

__all__ = [
    "KINDS",
    "MFM",
    "MLP",
    "MFMOutput",
    "EarlyFusionEncoder",
    "LateFusionEncoder",
    "MemoryFusionNetwork",
    "SequenceDecoder",
    "SequenceEncoder",
    "aligned_view",
    "resample_segments",
]
