"""Model components: encoders, the Memory Fusion Network, decoders and the MFM."""

from mfm.model.decoders import SequenceDecoder
from mfm.model.encoders import MLP, SequenceEncoder
from mfm.model.mfm import MFM, MFMOutput
from mfm.model.mfn import MemoryFusionNetwork, aligned_view, resample_segments

__all__ = [
    "MFM",
    "MLP",
    "MFMOutput",
    "MemoryFusionNetwork",
    "SequenceDecoder",
    "SequenceEncoder",
    "aligned_view",
    "resample_segments",
]
