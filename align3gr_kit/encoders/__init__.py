"""Frozen encoders of the token level: semantic (sentence-transformers) and collaborative (SASRec)."""

from align3gr_kit.config import SASRecParams
from align3gr_kit.encoders.sasrec import SASRec, SASRecResult, load_item_cf, train_sasrec
from align3gr_kit.encoders.semantic import encode_texts, resolve_model, semantic_features

__all__ = ["SASRec", "SASRecParams", "SASRecResult", "encode_texts", "load_item_cf", "resolve_model",
           "semantic_features", "train_sasrec"]
