"""The Invertible Rescaling Network (Xiao et al., ECCV 2020, arXiv:2005.05650)."""

from irn.color import IRNColor, IRNColorConfig
from irn.model import IRN, IRNConfig, load_authors_checkpoint, to_authors_state_dict

__all__ = [
    "IRN",
    "IRNConfig",
    "IRNColor",
    "IRNColorConfig",
    "load_authors_checkpoint",
    "to_authors_state_dict",
]
