"""The Invertible Rescaling Network (Xiao et al., ECCV 2020, arXiv:2005.05650)."""

from irn.checkpoints import load_authors_checkpoint, load_irn, to_authors_state_dict
from irn.color import IRNColor, IRNColorConfig
from irn.model import IRN, IRNConfig

__all__ = [
    "IRN",
    "IRNConfig",
    "IRNColor",
    "IRNColorConfig",
    "load_authors_checkpoint",
    "load_irn",
    "to_authors_state_dict",
]
