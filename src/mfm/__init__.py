"""mfm: the Multimodal Factorization Model (Tsai et al., ICLR 2019) for any set of modalities."""

from mfm.config import MFMConfig, ModelConfig, load_config, save_config
from mfm.model import MFM, MFMOutput

__version__ = "0.1.0"

__all__ = ["MFM", "MFMConfig", "MFMOutput", "ModelConfig", "__version__", "load_config",
           "save_config"]
