"""Token level of Align3GR: SC encoders, RQ-VAEs, the two-phase training and unique SCIDs."""

from align3gr_kit.tokenizer.losses import heldout_negatives, u2i_auc, u2i_loss
from align3gr_kit.tokenizer.pipeline import Features, build_features, run_tokenize, tokenize_catalogue, training_pairs
from align3gr_kit.tokenizer.rqvae import RQVAE, ResidualQuantizer, scaled_codebook_size
from align3gr_kit.tokenizer.sc_encoder import SCEncoder, fuse_features
from align3gr_kit.tokenizer.trainer import DualTokenizer, TokenizerResult, train_dual_tokenizer
from align3gr_kit.tokenizer.unique import append_unique_level, collisions, perplexity, utilisation

__all__ = [
    "DualTokenizer", "Features", "RQVAE", "ResidualQuantizer", "SCEncoder", "TokenizerResult",
    "append_unique_level", "build_features", "collisions", "fuse_features", "heldout_negatives",
    "perplexity", "run_tokenize", "scaled_codebook_size", "tokenize_catalogue", "train_dual_tokenizer",
    "training_pairs", "u2i_auc", "u2i_loss", "utilisation",
]
