"""What a model's forward and attention accept: the checks and mask conventions that tree attention
needs, shared by the trie beam search (:mod:`align3gr_kit.decoding.beam`) and shared-prompt DPO
scoring (:mod:`align3gr_kit.dpo.shared_prompt`), and the ``logits_to_keep`` probe of SFT and DPO.

Why hand-written: transformers has no public "does this model apply my 4D mask as given" query;
these three small checks encode what its attention implementations do with a custom mask.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

# attention implementations that apply a custom 4D mask as given (bool for sdpa, additive for eager)
TREE_ATTENTION = ("sdpa", "eager")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DistributedDataParallel and peft wrappers."""
    base = getattr(model, "module", model)  # DistributedDataParallel
    if hasattr(base, "get_base_model"):  # peft forwards **kwargs to the wrapped model
        base = base.get_base_model()
    return base


def forward_accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether the (possibly DDP- or peft-wrapped) model's ``forward`` takes keyword ``name``."""
    try:
        return name in inspect.signature(unwrap(model).forward).parameters
    except (TypeError, ValueError):
        return False


def attention_impl(model: torch.nn.Module) -> str:
    """The model's attention implementation (``sdpa``, ``eager``, ``flash_attention_2``...)."""
    return getattr(unwrap(model).config, "_attn_implementation", None) or "eager"


def tree_attention_supported(model: torch.nn.Module) -> bool:
    """Whether a custom 4D mask reaches every layer as given: an implementation of
    :data:`TREE_ATTENTION` and full-attention layers only (sliding-window caches are cut)."""
    try:
        full = all(type(layer) is DynamicLayer for layer in DynamicCache(config=unwrap(model).config).layers)
    except (TypeError, ValueError, AttributeError):
        return False
    return attention_impl(model) in TREE_ATTENTION and full


def as_model_mask(allowed: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """Boolean ``[B, 1, Q, K]`` (True = attend) in the form the attention implementation uses:
    the boolean itself for sdpa, an additive float mask (0 / dtype min) for eager."""
    if impl == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )
