"""The Invertible Rescaling Network (Xiao et al., ECCV 2020, arXiv:2005.05650)."""

from irn.model import IRN, IRNConfig, load_authors_checkpoint, to_authors_state_dict

__all__ = ["IRN", "IRNConfig", "load_authors_checkpoint", "to_authors_state_dict"]
